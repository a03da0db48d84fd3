//! Large datagrams on a socket that segments: a transmit quinn builds holds up to ten
//! datagrams of the path's MTU, and with path MTU discovery above Ethernet's (a jumbo-frame
//! LAN, loopback) that is more than one system call can carry: the kernel refuses a
//! segmented send over 64 KiB as too large (`EMSGSIZE`), which quinn's UDP layer takes for
//! a lost MTU probe and drops in silence. [`SplitSocket`] sends such a transmit as several
//! segmented sends, each within the limit.
//!
//! It also gives back the pages of quinn's receive buffers when the daemon has gone quiet
//! ([`SplitSocket::release_receive_buffers`]): quinn allocates them once per endpoint (the
//! largest datagram × the GRO segments × the datagrams per system call, 32 MiB of address
//! space at 16 KiB datagrams) and reuses them for good, so a burst of GRO batches left up
//! to 2 MiB resident in an idle daemon.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

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
    /// Set by [`SplitSocket::release_receive_buffers`], taken by the next receive.
    release: AtomicBool,
    /// Whom to wake for that receive: the task that last found nothing to read (quinn's
    /// endpoint driver).
    waiting: Mutex<Option<Waker>>,
}

impl SplitSocket {
    pub fn new(inner: Arc<dyn AsyncUdpSocket>) -> Arc<SplitSocket> {
        Arc::new(SplitSocket {
            inner,
            release: AtomicBool::new(false),
            waiting: Mutex::new(None),
        })
    }

    /// Makes the next receive hand the pages of the buffers quinn passes it back to the
    /// system before it reads (only what that receive writes comes back), and wakes the
    /// receiving task for it: an idle connection may receive nothing for minutes. The
    /// buffers are the receiver's alone during the call, and what they held is never read
    /// again, so it is done there rather than from another task.
    pub fn release_receive_buffers(&self) {
        self.release.store(true, Ordering::Relaxed);
        if let Some(w) = self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            w.wake_by_ref();
        }
    }
}

/// Hands the whole pages inside `buf` back to the system; returns how many bytes. The
/// buffer then reads as zeros (private anonymous memory, the heap) or as some other bytes
/// (any other mapping): its contents are not kept, as with any output buffer.
pub fn release_pages(buf: &mut [u8]) -> usize {
    // SAFETY: sysconf has no preconditions.
    #[allow(unsafe_code)]
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(0);
    if page == 0 {
        return 0;
    }
    let start = buf.as_mut_ptr() as usize;
    let first = start.next_multiple_of(page);
    let end = (start + buf.len()) / page * page;
    if end <= first {
        return 0;
    }
    // SAFETY: [first, end) lies inside `buf`, which is borrowed mutably for this call, so
    // nothing else reads or writes those bytes meanwhile. MADV_DONTNEED only replaces their
    // contents (with zeros on private anonymous memory), and any byte is a valid u8; no
    // allocator metadata lies inside an allocation's own bytes.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_DONTNEED) };
    if rc == 0 {
        end - first
    } else {
        0
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
        if self.release.swap(false, Ordering::Relaxed) {
            let released: usize = bufs.iter_mut().map(|b| release_pages(b)).sum();
            tracing::debug!(kib = released / 1024, "released receive buffers");
        }
        let got = self.inner.poll_recv(cx, bufs, meta);
        if got.is_pending() {
            let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            if !waiting.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waiting = Some(cx.waker().clone());
            }
        }
        got
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
    fn released_pages_read_as_zeros_and_the_edges_are_kept() {
        let mut buf = vec![0xabu8; 1 << 20];
        // Start inside a page, so that the first and last pages are partly outside.
        let part = &mut buf[100..(1 << 20) - 100];
        let released = release_pages(part);
        assert!(released >= (1 << 20) - 2 * 4096 * 4, "{released}");
        assert_eq!(released % 4096, 0);
        let zeros = part.iter().filter(|b| **b == 0).count();
        assert_eq!(zeros, released, "exactly the released bytes read as zeros");
        assert!(part[..1]
            .iter()
            .chain(&part[part.len() - 1..])
            .all(|b| *b == 0xab));
        assert!(buf[..100].iter().all(|b| *b == 0xab));
        // Smaller than a page: nothing to release, nothing changed.
        let mut small = vec![7u8; 1000];
        assert_eq!(release_pages(&mut small), 0);
        assert!(small.iter().all(|b| *b == 7));
    }

    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_release_wakes_the_waiting_receiver_which_clears_its_buffers_once() {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let inner = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, udp).unwrap();
        let split = SplitSocket::new(inner);
        let wakes = Arc::new(Wakes(std::sync::atomic::AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut storage = vec![0xabu8; 1 << 20];
        let mut meta = [RecvMeta::default(); 1];
        let mut receive = |storage: &mut Vec<u8>| {
            let mut bufs = [IoSliceMut::new(storage)];
            assert!(split.poll_recv(&mut cx, &mut bufs, &mut meta).is_pending());
        };
        receive(&mut storage);
        assert!(
            storage.iter().all(|b| *b == 0xab),
            "nothing released unasked"
        );
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
        split.release_receive_buffers();
        assert!(wakes.0.load(Ordering::SeqCst) >= 1, "the receiver is woken");
        receive(&mut storage);
        let zeros = storage.iter().filter(|b| **b == 0).count();
        assert!(zeros >= (1 << 20) - 2 * 65_536, "released: {zeros} bytes");
        storage.fill(0xab);
        receive(&mut storage);
        assert!(
            storage.iter().all(|b| *b == 0xab),
            "released once per request"
        );
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
