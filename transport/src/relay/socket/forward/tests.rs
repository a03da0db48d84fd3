//! Tests of passing on what members ask this device to forward, through the socket's
//! receive path with a socket that records what it is asked to send.

use std::collections::VecDeque;

use super::super::tests::{entry, forward_request, roster_of};
use super::super::*;

/// A socket that hands out the entries queued in `inbox` (source, bytes, stride) and
/// records every send (destination, contents, segment size).
#[derive(Debug, Default)]
struct Recorder {
    inbox: Mutex<VecDeque<(SocketAddr, Vec<u8>, usize)>>,
    sent: Mutex<Vec<Sent>>,
}

/// A send: destination, contents, segment size.
type Sent = (SocketAddr, Vec<u8>, Option<usize>);

#[derive(Debug)]
struct Writable;

impl UdpPoller for Writable {
    fn poll_writable(self: Pin<&mut Self>, _: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncUdpSocket for Recorder {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Writable)
    }

    fn try_send(&self, t: &Transmit<'_>) -> io::Result<()> {
        let sent = (t.destination, t.contents.to_vec(), t.segment_size);
        lock(&self.sent).push(sent);
        Ok(())
    }

    fn poll_recv(
        &self,
        _: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut inbox = lock(&self.inbox);
        let mut n = 0;
        while n < bufs.len() {
            let Some((addr, bytes, stride)) = inbox.pop_front() else {
                break;
            };
            bufs[n][..bytes.len()].copy_from_slice(&bytes);
            meta[n] = entry(&addr.to_string(), bytes.len(), stride);
            n += 1;
        }
        if n == 0 {
            Poll::Pending
        } else {
            Poll::Ready(Ok(n))
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok("127.0.0.1:7373".parse().unwrap())
    }

    fn max_transmit_segments(&self) -> usize {
        64
    }
}

/// A member, the forwarding device's socket, and its inner socket's record.
struct Forwarder {
    ids: [DeviceId; 3],
    addrs: [SocketAddr; 3],
    inner: Arc<Recorder>,
    relays: Arc<Relays>,
    sock: Arc<RelaySocket>,
}

impl Forwarder {
    /// Members a, b and c, connected directly to this device.
    fn new() -> Forwarder {
        let ids = [DeviceId([1; 32]), DeviceId([2; 32]), DeviceId([3; 32])];
        let addrs = ["192.0.2.1:1", "192.0.2.2:2", "192.0.2.3:3"].map(|a| a.parse().unwrap());
        let inner = Arc::new(Recorder::default());
        let relays = Relays::new(false, roster_of(&ids));
        relays.set_members(ids.into_iter().zip(addrs));
        let sock = RelaySocket::new(inner.clone(), relays.clone());
        Forwarder {
            ids,
            addrs,
            inner,
            relays,
            sock,
        }
    }

    /// Reads what was queued in one call: the entries left for quinn, by length.
    fn read(&self, queue: Vec<(SocketAddr, Vec<u8>, usize)>) -> Option<Vec<Vec<u8>>> {
        lock(&self.inner.inbox).extend(queue);
        let mut store = vec![vec![0u8; 4096]; 8];
        let mut bufs: Vec<IoSliceMut> = store.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let mut meta = vec![entry("0.0.0.0:0", 0, 0); 8];
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.sock.poll_recv(&mut cx, &mut bufs, &mut meta) {
            Poll::Ready(Ok(n)) => Some((0..n).map(|i| bufs[i][..meta[i].len].to_vec()).collect()),
            _ => None,
        }
    }
}

/// `FORWARD | target | body` datagrams, one per body.
fn requests(target: &DeviceId, bodies: &[&[u8]]) -> Vec<u8> {
    bodies
        .iter()
        .flat_map(|b| forward_request(target, b))
        .collect()
}

/// The bodies of a segmented send, each checked to be `MARKER | from | body`.
fn bodies_of(contents: &[u8], segment: Option<usize>, from: &DeviceId) -> Vec<Vec<u8>> {
    contents
        .chunks(segment.unwrap_or(contents.len()))
        .map(|d| {
            assert_eq!(d[0], MARKER);
            assert_eq!(&d[1..HEADER], &from.0);
            d[HEADER..].to_vec()
        })
        .collect()
}

#[test]
fn a_burst_read_as_several_entries_is_passed_on_in_one_send() {
    let f = Forwarder::new();
    let ([a, b, c], [a_at, b_at, c_at]) = (f.ids, f.addrs);
    // Datagrams of 40 bytes (a 33-byte header and 7), the last of a burst maybe shorter.
    let full = |k: u8| [k; 7];
    let queue = vec![
        // A QUIC packet for this device itself: left for quinn.
        (a_at, vec![0x40; 30], 30),
        // From a for b: two whole entries, then one that ends short.
        (a_at, requests(&b, &[&full(1), &full(2), &full(3)]), 40),
        (a_at, requests(&b, &[&full(4), &full(5)]), 40),
        // From b for a in between: an acknowledgement on its own.
        (b_at, requests(&a, &[&[9, 9]]), 35),
        (a_at, requests(&b, &[&full(6), &[7; 3]]), 40),
        // After the short datagram, a's next entry for b starts a new send, and a lone
        // shorter datagram read as an entry of its own ends it.
        (a_at, requests(&b, &[&full(8)]), 40),
        (a_at, requests(&b, &[&[10]]), 34),
        // From a for c: its own send.
        (a_at, requests(&c, &[&full(11), &full(12)]), 40),
    ];
    let left = f.read(queue).expect("the QUIC packet");
    assert_eq!(left, vec![vec![0x40; 30]]);
    let sent = lock(&f.inner.sent).clone();
    let shape: Vec<_> = sent.iter().map(|s| (s.0, s.1.len(), s.2)).collect();
    assert_eq!(
        shape,
        vec![
            (b_at, 7 * 40 - 4, Some(40)),
            (a_at, 35, None),
            (b_at, 40 + 34, Some(40)),
            (c_at, 80, Some(40)),
        ]
    );
    let to_b: Vec<Vec<u8>> = [&sent[0], &sent[2]]
        .iter()
        .flat_map(|s| bodies_of(&s.1, s.2, &a))
        .collect();
    let mut want: Vec<Vec<u8>> = [1, 2, 3, 4, 5, 6].map(|k| full(k).to_vec()).into();
    want.extend([vec![7; 3], full(8).to_vec(), vec![10]]);
    assert_eq!(to_b, want, "b gets a's datagrams whole and in order");
    assert_eq!(bodies_of(&sent[1].1, sent[1].2, &b), vec![vec![9, 9]]);
    assert_eq!(
        bodies_of(&sent[3].1, sent[3].2, &a),
        vec![full(11).to_vec(), full(12).to_vec()]
    );
    assert_eq!(f.relays.stats.forwarded.load(Ordering::Relaxed), 12);
}

#[test]
fn oversized_or_spoofed_requests_are_passed_on_to_nobody() {
    let f = Forwarder::new();
    let ([a, b, _], [a_at, _, _]) = (f.ids, f.addrs);
    // Two entries of datagrams larger than any relayed one (MAX_DATAGRAM): joined, they
    // would make a segmented send the kernel refuses (and quinn then stops segmenting).
    let big = [0x40; MAX_DATAGRAM];
    let spoofed = virtual_addr(&a, false);
    let (at_most, one_more) = (
        [0x41; MAX_DATAGRAM - HEADER],
        [0x42; MAX_DATAGRAM - HEADER + 1],
    );
    let queue = vec![
        (a_at, requests(&b, &[&big]), MAX_DATAGRAM + HEADER),
        (a_at, requests(&b, &[&big]), MAX_DATAGRAM + HEADER),
        // At the bound: passed on; one byte over: not.
        (a_at, requests(&b, &[&at_most]), MAX_DATAGRAM),
        (a_at, requests(&b, &[&one_more]), MAX_DATAGRAM + 1),
        // From a virtual address (only relayed datagrams have one): a request, and a
        // QUIC packet behind it, both dropped.
        (spoofed, requests(&b, &[&[1; 7]]), 40),
        (
            spoofed,
            [requests(&b, &[&[1; 7]]), vec![0x40; 40]].concat(),
            40,
        ),
    ];
    assert_eq!(f.read(queue), None, "nothing is left for quinn");
    let sent = lock(&f.inner.sent).clone();
    assert_eq!(sent.len(), 1);
    assert_eq!(bodies_of(&sent[0].1, sent[0].2, &a), vec![at_most.to_vec()]);
    let stats = &f.relays.stats;
    assert_eq!(stats.unroutable.load(Ordering::Relaxed), 3);
    assert_eq!(stats.strangers.load(Ordering::Relaxed), 3);
    assert_eq!(stats.forwarded.load(Ordering::Relaxed), 1);
}

#[test]
fn requests_mixed_with_other_datagrams_keep_their_order_per_address() {
    let f = Forwarder::new();
    let ([a, b, c], [a_at, b_at, c_at]) = (f.ids, f.addrs);
    let full = |k: u8| [k; 7];
    // GRO put a request for b, a QUIC packet for this device and a request for c in one
    // entry; the next entry is a whole burst for b.
    let mixed = [
        forward_request(&b, &full(1)),
        vec![0x40; 40],
        forward_request(&c, &full(2)),
    ]
    .concat();
    let queue = vec![
        (a_at, mixed, 40),
        (a_at, requests(&b, &[&full(3), &full(4)]), 40),
    ];
    let left = f.read(queue).expect("the QUIC packet");
    assert_eq!(left, vec![vec![0x40; 40]]);
    let sent = lock(&f.inner.sent).clone();
    let to: Vec<SocketAddr> = sent.iter().map(|s| s.0).collect();
    assert_eq!(to, vec![b_at, c_at, b_at]);
    let to_b: Vec<Vec<u8>> = [&sent[0], &sent[2]]
        .iter()
        .flat_map(|s| bodies_of(&s.1, s.2, &a))
        .collect();
    assert_eq!(
        to_b,
        [1, 3, 4].map(|k| full(k).to_vec()),
        "b gets the mixed entry's datagram before the next entry's"
    );
    assert_eq!(bodies_of(&sent[1].1, sent[1].2, &a), vec![full(2).to_vec()]);
    assert_eq!(f.relays.stats.forwarded.load(Ordering::Relaxed), 4);
}

#[test]
fn a_burst_before_a_mixed_entry_leaves_first_and_once() {
    let f = Forwarder::new();
    let ([a, b, c], [a_at, b_at, c_at]) = (f.ids, f.addrs);
    let full = |k: u8| [k; 7];
    // A whole burst for b, then an entry of requests for b and c alone (no datagram for
    // this device in it).
    let mixed = [forward_request(&b, &full(3)), forward_request(&c, &full(4))].concat();
    let queue = vec![
        (a_at, requests(&b, &[&full(1), &full(2)]), 40),
        (a_at, mixed, 40),
    ];
    assert_eq!(f.read(queue), None, "nothing is left for quinn");
    let sent = lock(&f.inner.sent).clone();
    let to: Vec<SocketAddr> = sent.iter().map(|s| s.0).collect();
    assert_eq!(to, vec![b_at, b_at, c_at]);
    let bodies: Vec<Vec<u8>> = sent.iter().flat_map(|s| bodies_of(&s.1, s.2, &a)).collect();
    assert_eq!(bodies, [1, 2, 3, 4].map(|k| full(k).to_vec()));
    assert_eq!(f.relays.stats.forwarded.load(Ordering::Relaxed), 4);
}

#[test]
fn routes_through_a_member_follow_its_connection() {
    let f = Forwarder::new();
    let ([a, b, c], [a_at, _, c_at]) = (f.ids, f.addrs);
    let send = |to: &DeviceId| {
        let t = Transmit {
            destination: f.relays.address_of(to),
            ecn: None,
            contents: &[0x40; 20],
            segment_size: None,
            src_ip: None,
        };
        f.sock.try_send(&t).unwrap();
        lock(&f.inner.sent).pop().map(|s| s.0)
    };
    f.relays.set_via(b, Some(a));
    assert_eq!(send(&b), Some(a_at));
    // a connects from another address: b's datagrams follow it there.
    let moved: SocketAddr = "192.0.2.9:9".parse().unwrap();
    f.relays.set_members([(a, moved), (c, c_at)]);
    assert_eq!(f.relays.via_of(&b), Some(a));
    assert_eq!(send(&b), Some(moved));
    // a is no longer connected directly: the route is gone, nothing is sent.
    f.relays.set_members([(c, c_at)]);
    assert_eq!(f.relays.via_of(&b), None);
    assert_eq!(send(&b), None);
}
