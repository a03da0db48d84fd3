//! Large datagrams on a socket that segments: a transmit quinn builds holds up to ten
//! datagrams of the path's MTU, and with path MTU discovery above Ethernet's (a jumbo-frame
//! LAN, loopback) that is more than one system call can carry: the kernel refuses a
//! segmented send over 64 KiB as too large (`EMSGSIZE`), which quinn's UDP layer takes for
//! a lost MTU probe and drops in silence. [`SplitSocket`] sends such a transmit as several
//! segmented sends, each within the limit.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// Most bytes one segmented send may carry: an IPv4 datagram's 65,535 less its IP and UDP
/// headers (the kernel checks the whole before it segments).
pub const MAX_SEND: usize = 65_535 - 20 - 8;

/// The socket quinn sees: everything goes to `inner`, transmits over [`MAX_SEND`] bytes
/// in pieces.
#[derive(Debug)]
pub struct SplitSocket {
    inner: Arc<dyn AsyncUdpSocket>,
}

impl SplitSocket {
    pub fn new(inner: Arc<dyn AsyncUdpSocket>) -> Arc<SplitSocket> {
        Arc::new(SplitSocket { inner })
    }
}

/// The pieces of a transmit of `len` bytes in datagrams of `segment` bytes (the last may be
/// shorter): byte ranges, each a whole number of datagrams and at most [`MAX_SEND`] bytes
/// unless one datagram alone is larger.
pub fn pieces(len: usize, segment: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let segment = segment.max(1);
    let step = segment * (MAX_SEND / segment).max(1);
    (0..len)
        .step_by(step)
        .map(move |at| at..(at + step).min(len))
}

impl AsyncUdpSocket for SplitSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, t: &Transmit<'_>) -> io::Result<()> {
        let segment = match t.segment_size {
            Some(s) if t.contents.len() > MAX_SEND && s < t.contents.len() => s,
            _ => return self.inner.try_send(t),
        };
        // A piece refused as would-block after others went out makes quinn send the whole
        // transmit again: the receiver drops the duplicates by packet number.
        for r in pieces(t.contents.len(), segment) {
            let contents = &t.contents[r];
            self.inner.try_send(&Transmit {
                destination: t.destination,
                ecn: t.ecn,
                contents,
                segment_size: (contents.len() > segment).then_some(segment),
                src_ip: t.src_ip,
            })?;
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_whole_datagrams_within_the_limit() {
        // Ten jumbo datagrams: seven per send (62,664 bytes), then three.
        let v: Vec<_> = pieces(10 * 8952, 8952).collect();
        assert_eq!(v, vec![0..7 * 8952, 7 * 8952..10 * 8952]);
        // A short last datagram stays in the last piece.
        let v: Vec<_> = pieces(9 * 8952 + 100, 8952).collect();
        assert_eq!(v, vec![0..7 * 8952, 7 * 8952..9 * 8952 + 100]);
        // Datagrams near 64 KiB: one per send.
        let v: Vec<_> = pieces(3 * 65_000, 65_000).collect();
        assert_eq!(v, vec![0..65_000, 65_000..130_000, 130_000..195_000]);
        // Small datagrams: one send for all (what quinn already sends at once).
        assert_eq!(pieces(10 * 1452, 1452).count(), 1);
        for r in pieces(10 * 8952, 8952) {
            assert!(r.len() <= MAX_SEND && r.len() % 8952 == 0);
        }
    }
}
