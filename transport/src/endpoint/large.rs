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

/// The upper bound of path MTU discovery towards `addr`: what the route carries
/// ([`route_payload`]), or what a relay passes for a peer behind one. Probing above what
/// the first link carries only loses the probes (the kernel refuses them), and a lost probe
/// holds its size of the congestion window until it is declared lost: a connection's first
/// exchange (the hello) then waited a probe timeout (about 27 ms) for it.
pub fn path_payload(addr: SocketAddr) -> Option<u16> {
    if crate::relay::is_virtual(&addr) {
        let relayed = crate::relay::MAX_DATAGRAM - crate::relay::HEADER;
        return Some(u16::try_from(relayed).unwrap_or(u16::MAX));
    }
    route_payload(addr)
}

/// The largest UDP payload the route to `addr` carries as this host sees it: the MTU of
/// the interface it leaves by (or a smaller path MTU the kernel learned) less the IP and
/// UDP headers; `None` if the kernel has no route or does not say. Costs a socket and a
/// route lookup; sends nothing.
pub fn route_payload(addr: SocketAddr) -> Option<u16> {
    let addr = crate::relay::canonical(addr);
    let (any, level, name, headers): (SocketAddr, _, _, u32) = match addr {
        SocketAddr::V4(_) => (([0, 0, 0, 0], 0).into(), libc::IPPROTO_IP, libc::IP_MTU, 28),
        SocketAddr::V6(_) => (
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU,
            48,
        ),
    };
    let socket = std::net::UdpSocket::bind(any).ok()?;
    socket.connect(addr).ok()?;
    let mut mtu: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `mtu`, a live c_int, on a
    // descriptor borrowed for the call's duration.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            level,
            name,
            (&mut mtu as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return None;
    }
    let payload = u32::try_from(mtu).ok()?.checked_sub(headers)?;
    Some(u16::try_from(payload).unwrap_or(u16::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_to_loopback_is_told() {
        // Loopback's MTU is 65,536 on Linux (anything from Ethernet's up, elsewhere).
        let p = route_payload("127.0.0.1:9".parse().unwrap()).expect("a route to loopback");
        assert!(p >= 1472, "{p}");
        let mapped = route_payload("[::ffff:127.0.0.1]:9".parse().unwrap());
        assert_eq!(mapped, Some(p), "a mapped address is routed as IPv4");
    }

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
