//! Tests of the relay socket's datagram handling.

use super::*;

/// A roster that trusts `ids`.
pub(super) fn roster_of(ids: &[DeviceId]) -> Roster {
    let r = Roster::new();
    for id in ids {
        r.insert(*id);
    }
    r
}

pub(super) fn entry(addr: &str, len: usize, stride: usize) -> RecvMeta {
    RecvMeta {
        addr: addr.parse().unwrap(),
        len,
        stride,
        ecn: None,
        dst_ip: None,
    }
}

#[test]
fn frames_are_taken_out_and_the_rest_moves_together() {
    let mut b0 = vec![0u8; 64];
    let mut b1 = vec![0u8; 64];
    let mut b2 = vec![0u8; 64];
    // Entry 0: one QUIC packet. Entry 1: GRO of three 10-byte datagrams, the middle
    // one relayed. Entry 2: a relayed datagram alone.
    b0[..5].copy_from_slice(&[0x41; 5]);
    b1[..10].fill(0x42);
    b1[10] = MARKER;
    b1[20..28].fill(0x43);
    b2[0] = MARKER;
    let mut bufs = [
        IoSliceMut::new(&mut b0),
        IoSliceMut::new(&mut b1),
        IoSliceMut::new(&mut b2),
    ];
    let mut meta = [
        entry("1.2.3.4:5", 5, 5),
        entry("1.2.3.4:6", 28, 10),
        entry("1.2.3.4:7", 40, 40),
    ];
    let mut taken = Vec::new();
    let n = take_frames(&mut bufs, &mut meta, 3, |from, f| {
        taken.push((from.port(), f.len()));
        true
    });
    assert_eq!(n, 2);
    assert_eq!(taken, vec![(6, 10), (7, 40)]);
    assert_eq!(meta[1].len, 18);
    assert_eq!(&bufs[1][..10], &[0x42; 10]);
    assert_eq!(&bufs[1][10..18], &[0x43; 8]);
    assert_eq!(&bufs[0][..5], &[0x41; 5]);
}

#[test]
fn an_emptied_entry_is_dropped_and_later_ones_move_up() {
    let mut b0 = vec![MARKER; 8];
    let mut b1 = vec![0x40u8; 8];
    let mut bufs = [IoSliceMut::new(&mut b0), IoSliceMut::new(&mut b1)];
    let mut meta = [entry("1.1.1.1:1", 8, 8), entry("2.2.2.2:2", 8, 8)];
    let n = take_frames(&mut bufs, &mut meta, 2, |_, _| true);
    assert_eq!(n, 1);
    assert_eq!(meta[0].addr.port(), 2);
    assert_eq!(&bufs[0][..8], &[0x40u8; 8]);
    // Not consumed: left in place.
    let mut c0 = vec![MARKER; 8];
    let mut bufs = [IoSliceMut::new(&mut c0)];
    let mut meta = [entry("1.1.1.1:1", 8, 8)];
    assert_eq!(take_frames(&mut bufs, &mut meta, 1, |_, _| false), 1);
}

#[test]
fn a_burst_from_one_sender_is_unwrapped_in_place() {
    let sender = DeviceId([5u8; 32]);
    let relays = Relays::new(false, roster_of(&[sender]));
    relays.add_link(Link {
        label: "r".into(),
        path: LinkPath::Udp("1.2.3.4:5".parse().unwrap()),
        observed: "9.9.9.9:9".parse().unwrap(),
        serial: 1,
    });
    let mut buf = Vec::new();
    for (i, len) in [(1u8, 10usize), (2, 10), (3, 4)] {
        buf.push(MARKER);
        buf.extend_from_slice(&sender.0);
        buf.extend(std::iter::repeat_n(0x40 | i, len));
    }
    let mut m = entry("1.2.3.4:5", buf.len(), HEADER + 10);
    assert!(relays.unwrap_in_place(&mut buf, &mut m));
    assert_eq!((m.len, m.stride), (24, 10));
    assert_eq!(m.addr, virtual_addr(&sender, false));
    assert_eq!(&buf[..10], &[0x41; 10]);
    assert_eq!(&buf[20..24], &[0x43; 4]);
    // From elsewhere, or two senders in one entry: left for the slow path.
    let mut other = vec![MARKER; 80];
    let mut m2 = entry("5.6.7.8:9", 80, 40);
    assert!(!relays.unwrap_in_place(&mut other, &mut m2));
    let mut mixed = Vec::new();
    for id in [1u8, 2] {
        mixed.push(MARKER);
        mixed.extend_from_slice(&[id; 32]);
        mixed.extend_from_slice(&[0x40; 7]);
    }
    let mut m3 = entry("1.2.3.4:5", 80, 40);
    assert!(!relays.unwrap_in_place(&mut mixed, &mut m3));
}

#[test]
fn delivered_frames_come_out_from_the_senders_virtual_address() {
    let sender = DeviceId([3u8; 32]);
    let relays = Relays::new(true, roster_of(&[sender]));
    let mut f = vec![MARKER];
    f.extend_from_slice(&sender.0);
    f.extend_from_slice(b"packet");
    assert!(relays.deliver(&f));
    assert!(!relays.deliver(b"\x40quic"));
    let mut b = vec![0u8; 64];
    let mut bufs = [IoSliceMut::new(&mut b)];
    let mut meta = [entry("1.1.1.1:1", 0, 0)];
    assert_eq!(relays.drain(&mut bufs, &mut meta), 1);
    assert_eq!(meta[0].addr, virtual_addr(&sender, true));
    assert_eq!(&bufs[0][..6], b"packet");
    assert_eq!(relays.peer_at(&meta[0].addr), Some(sender));
}

/// A request to pass `body` on to `target` (`FORWARD | target | body`).
pub(super) fn forward_request(target: &DeviceId, body: &[u8]) -> Vec<u8> {
    let mut f = vec![FORWARD];
    f.extend_from_slice(&target.0);
    f.extend_from_slice(body);
    f
}

/// Passes on one entry as the endpoint does.
fn forward_entry(sock: &RelaySocket, buf: &mut [u8], m: &mut RecvMeta) {
    if let Some(pass) = sock.forward_target(buf, m) {
        sock.send_on(pass, &buf[..pass.len]);
    }
}

#[tokio::test]
async fn a_member_passes_on_only_between_two_members_connected_directly() {
    use quinn::Runtime;
    let here = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let to_b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    to_b.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let inner = quinn::TokioRuntime.wrap_udp_socket(here).unwrap();
    let (a, b) = (DeviceId([1; 32]), DeviceId([2; 32]));
    let relays = Relays::new(false, roster_of(&[a, b]));
    let sock = RelaySocket::new(inner, relays.clone());
    // The socket is known writable (as in the endpoint, where quinn polls it first).
    let mut poller = sock.clone().create_io_poller();
    std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx))
        .await
        .unwrap();
    let a_addr: SocketAddr = "127.0.0.1:40001".parse().unwrap();
    relays.set_members([(a, a_addr), (b, to_b.local_addr().unwrap())]);

    // From a, for b: rewritten to `MARKER | a | packet` and sent to b, the entry used up.
    let mut f = forward_request(&b, b"packet");
    let mut m = entry("127.0.0.1:40001", f.len(), f.len());
    forward_entry(&sock, &mut f, &mut m);
    assert_eq!(m.len, 0);
    let mut got = [0u8; 64];
    let n = to_b.recv(&mut got).unwrap();
    assert_eq!(got[0], MARKER);
    assert_eq!(&got[1..HEADER], &a.0);
    assert_eq!(&got[HEADER..n], b"packet");
    assert_eq!(relays.stats.forwarded.load(Ordering::Relaxed), 1);

    // From an address that is no member: left alone (quinn drops what is not QUIC).
    let mut f = forward_request(&b, b"packet");
    let mut m = entry("127.0.0.1:40002", f.len(), f.len());
    forward_entry(&sock, &mut f, &mut m);
    assert_eq!(m.len, f.len());
    assert_eq!(f[0], FORWARD);
    // For a stranger, or back to the sender: used up, passed on to nobody.
    for target in [DeviceId([9; 32]), a] {
        let mut f = forward_request(&target, b"packet");
        let mut m = entry("127.0.0.1:40001", f.len(), f.len());
        forward_entry(&sock, &mut f, &mut m);
        assert_eq!(m.len, 0);
    }
    assert_eq!(relays.stats.unroutable.load(Ordering::Relaxed), 2);
    assert_eq!(relays.stats.forwarded.load(Ordering::Relaxed), 1);
    // A header with nothing after it is no request.
    let mut f = forward_request(&b, b"");
    let mut m = entry("127.0.0.1:40001", f.len(), f.len());
    forward_entry(&sock, &mut f, &mut m);
    assert_eq!(m.len, HEADER);
}

/// `MARKER | sender | body`.
fn relayed(sender: &DeviceId, body: &[u8]) -> Vec<u8> {
    let mut f = vec![MARKER];
    f.extend_from_slice(&sender.0);
    f.extend_from_slice(body);
    f
}

fn random_id() -> DeviceId {
    let mut id = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id).unwrap();
    DeviceId(id)
}

fn remembered(relays: &Relays) -> (usize, usize) {
    (lock(&relays.names).len(), lock(&relays.via).len())
}

#[test]
fn strangers_are_dropped_at_every_entrance_and_leave_nothing_behind() {
    let (m, x, told) = (DeviceId([7; 32]), DeviceId([9; 32]), DeviceId([8; 32]));
    let roster = roster_of(&[m, x]);
    // A removed device that is to be told so: the endpoint still takes its packets.
    roster.set_notice(told, Some("removed".into()));
    let relays = Relays::new(false, roster.clone());
    relays.add_link(Link {
        label: "r".into(),
        path: LinkPath::Udp("1.2.3.4:5".parse().unwrap()),
        observed: "9.9.9.9:9".parse().unwrap(),
        serial: 1,
    });
    let member: SocketAddr = "5.6.7.8:9".parse().unwrap();
    relays.set_members([(x, member)]);
    let burst = |id: &DeviceId| {
        let mut b = Vec::new();
        for _ in 0..3 {
            b.extend_from_slice(&relayed(id, &[0x40; 10]));
        }
        b
    };
    for _ in 0..1000 {
        let id = random_id();
        // Over a relay's TCP link; a GRO burst from the relay; one datagram from a member.
        assert!(!relays.deliver(&relayed(&id, b"packet")));
        let mut b = burst(&id);
        let mut e = entry("1.2.3.4:5", b.len(), HEADER + 10);
        assert!(relays.unwrap_in_place(&mut b, &mut e));
        assert_eq!(e.len, 0, "an emptied entry goes nowhere");
        assert_eq!(
            relays.take(Some(&member), &relayed(&id, b"packet")),
            Some(false)
        );
    }
    assert_eq!(remembered(&relays), (0, 0));
    assert!(lock(&relays.inbox).is_empty());
    assert_eq!(relays.stats.strangers.load(Ordering::Relaxed), 5000);
    assert_eq!(relays.stats.received.load(Ordering::Relaxed), 0);

    // Members, and the removed device to be told, get through every way.
    assert!(relays.deliver(&relayed(&m, b"packet")));
    assert!(relays.deliver(&relayed(&told, b"packet")));
    let mut b = burst(&m);
    let mut e = entry("5.6.7.8:9", b.len(), HEADER + 10);
    assert!(relays.unwrap_in_place(&mut b, &mut e));
    assert_eq!((e.len, e.addr), (30, virtual_addr(&m, false)));
    assert_eq!(
        relays.via_of(&m),
        Some(x),
        "answers go back through the member"
    );
    assert_eq!(remembered(&relays), (2, 1));

    // Removed, and no longer to be told: forgotten.
    roster.remove(&m);
    roster.set_notice(told, None);
    relays.forget(|id| relays.accepts(id));
    assert_eq!(remembered(&relays), (0, 0));
}

#[tokio::test]
async fn nothing_from_an_unknown_sender_reaches_quinn() {
    use quinn::Runtime;
    use std::time::Duration;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let here = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = here.local_addr().unwrap();
    let relay = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let member = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (m, x) = (DeviceId([7; 32]), DeviceId([9; 32]));
    let relays = Relays::new(false, roster_of(&[m, x]));
    relays.add_link(Link {
        label: "r".into(),
        path: LinkPath::Udp(relay.local_addr().unwrap()),
        observed: "9.9.9.9:9".parse().unwrap(),
        serial: 1,
    });
    relays.set_members([(x, member.local_addr().unwrap())]);
    let sock = RelaySocket::new(
        quinn::TokioRuntime.wrap_udp_socket(here).unwrap(),
        relays.clone(),
    );
    // Quinn's side: everything the socket gives it, as (source, bytes).
    let got = Arc::new(Mutex::new(Vec::<(SocketAddr, Vec<u8>)>::new()));
    let reader = tokio::spawn({
        let (sock, got) = (sock.clone(), got.clone());
        async move {
            let mut store = vec![vec![0u8; 65536]; 4];
            let mut meta = [RecvMeta::default(); 4];
            loop {
                let mut bufs: Vec<IoSliceMut<'_>> =
                    store.iter_mut().map(|b| IoSliceMut::new(b)).collect();
                let n = std::future::poll_fn(|cx| sock.poll_recv(cx, &mut bufs, &mut meta))
                    .await
                    .unwrap();
                for (b, m) in bufs.iter().zip(&meta).take(n) {
                    lock(&got).push((m.addr, b[..m.len].to_vec()));
                }
            }
        }
    });
    let until = |what: &str, cond: &dyn Fn() -> bool| {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        cond()
    };
    // Batches small enough for the socket's receive buffer, from the relay and from the
    // member, each sender a new random ID.
    let mut sent = 0u64;
    for round in 0..20 {
        for i in 0..50 {
            let from = if i % 2 == 0 { &relay } else { &member };
            let body = vec![0x40u8; 1 + (round + i) % 40];
            from.send_to(&relayed(&random_id(), &body), to).unwrap();
            sent += 1;
        }
        while !until("strangers counted", &|| {
            relays.stats.strangers.load(Ordering::Relaxed) == sent
        }) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(remembered(&relays), (0, 0));
    // A member's packets, through the relay and through the other member, do come out.
    relay
        .send_to(&relayed(&m, b"through the relay"), to)
        .unwrap();
    member.send_to(&relayed(&m, b"through x"), to).unwrap();
    while !until("the member's packets", &|| lock(&got).len() >= 2) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    reader.abort();
    let got = lock(&got).clone();
    let from_m = virtual_addr(&m, false);
    assert_eq!(
        got,
        vec![
            (from_m, b"through the relay".to_vec()),
            (from_m, b"through x".to_vec())
        ]
    );
    assert_eq!(remembered(&relays), (1, 1));
    assert_eq!(relays.stats.strangers.load(Ordering::Relaxed), 1000);
}

#[tokio::test]
async fn datagrams_from_the_network_with_a_virtual_source_are_dropped() {
    use quinn::Runtime;
    let here = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let inner = quinn::TokioRuntime.wrap_udp_socket(here).unwrap();
    let relays = Relays::new(false, roster_of(&[DeviceId([1; 32])]));
    let sock = RelaySocket::new(inner, relays.clone());
    // A QUIC Initial's first byte, from a spoofed source in either virtual range: dropped
    // (it would pass for a relayed peer's, validated and a source of its own).
    for spoofed in [
        "240.1.2.3:9",
        "[fd63:6e73:7072::1]:9",
        "[::ffff:240.1.2.3]:9",
    ] {
        let mut b = vec![0xc3; 1200];
        let mut m = entry(spoofed, 1200, 1200);
        sock.screen_entry(&mut b, &mut m);
        assert_eq!(m.len, 0, "{spoofed}");
    }
    assert_eq!(relays.stats.strangers.load(Ordering::Relaxed), 3);
    // The same from a real address goes on to quinn.
    let mut b = vec![0xc3; 1200];
    let mut m = entry("192.0.2.7:9", 1200, 1200);
    sock.screen_entry(&mut b, &mut m);
    assert_eq!(m.len, 1200);
}
