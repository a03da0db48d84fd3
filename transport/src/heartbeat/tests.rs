use super::*;

fn pair() -> (LinkKeys, LinkKeys) {
    let mut m = [0u8; 80];
    for (i, b) in m.iter_mut().enumerate() {
        *b = i as u8 ^ 0x5a;
    }
    (
        LinkKeys::from_material(&m, true),
        LinkKeys::from_material(&m, false),
    )
}

#[test]
fn a_heartbeat_opens_once_on_the_other_side_only() {
    let (dialer, acceptor) = pair();
    let pkt = dialer.seal(Some(42));
    assert_eq!(key_id(&pkt), Some(acceptor.rx_id()));
    assert_eq!(acceptor.open(&pkt), Some(Some(42)));
    assert_eq!(acceptor.open(&pkt), None, "a replay is refused");
    assert_eq!(dialer.open(&pkt), None, "reflected back, it is refused");
    let pkt = acceptor.seal(None);
    assert_eq!(dialer.open(&pkt), Some(None));
}

#[test]
fn a_changed_byte_or_an_older_counter_is_refused() {
    let (dialer, acceptor) = pair();
    let first = dialer.seal(Some(1));
    let second = dialer.seal(Some(2));
    for i in 9..LEN {
        let mut bad = second;
        bad[i] ^= 0x01;
        assert_eq!(acceptor.open(&bad), None, "byte {i} flipped");
    }
    assert_eq!(acceptor.open(&second), Some(Some(2)));
    assert_eq!(acceptor.open(&first), None, "older than the last accepted");
    assert_eq!(acceptor.open(&second[..LEN - 1]), None);
}

#[test]
fn the_kernel_hands_heartbeats_to_the_twin_and_quic_packets_to_the_quic_socket() {
    routes("127.0.0.1:0", "127.0.0.1:0", None);
}

#[test]
fn a_dual_stack_socket_routes_ipv4_datagrams_the_same_way() {
    // The daemon's default: `[::]:7373`, which also serves IPv4.
    if UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 on this host");
        return;
    }
    routes("[::]:0", "127.0.0.1:0", Some("127.0.0.1"));
    routes("[::]:0", "[::1]:0", Some("::1"));
}

/// Binds a QUIC socket at `bind` and its twin, sends from `from` to the port (at
/// `host`, or the bound address), and checks where each datagram lands.
fn routes(bind: &str, from: &str, host: Option<&str>) {
    let quic = crate::socket::bind_udp(bind.parse().unwrap(), 0).unwrap();
    let twin = Twin::bind(&quic).expect("twin binds and passes its self-test");
    let mut to = quic.local_addr().unwrap();
    if let Some(h) = host {
        to = SocketAddr::new(h.parse().unwrap(), to.port());
    }
    let (dialer, acceptor) = pair();
    twin.accept_only(&[acceptor.rx_id()]).unwrap();
    let beat = dialer.seal(Some(7));
    let sender = UdpSocket::bind(from).unwrap();
    sender.send_to(&[0x41, 1, 2, 3], to).unwrap(); // a QUIC short header
    sender.send_to(&[0xc3, 9], to).unwrap(); // a QUIC long header
    sender.send_to(&beat, to).unwrap();
    quic.set_nonblocking(false).unwrap();
    quic.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    let (n, _) = quic.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], &[0x41, 1, 2, 3]);
    let (n, _) = quic.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], &[0xc3, 9]);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    while got.is_empty() && Instant::now() < deadline {
        twin.drain(Instant::now(), |d, _| got.push(d.to_vec()));
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(got, vec![beat.to_vec()]);
    quic.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    assert!(
        quic.recv_from(&mut buf).is_err(),
        "the heartbeat did not also reach QUIC"
    );
}

#[test]
fn send_all_and_drain_carry_batches_larger_than_one_system_call() {
    let (dialer, acceptor) = pair();
    let qa = crate::socket::bind_udp("127.0.0.1:0".parse().unwrap(), 0).unwrap();
    let qb = crate::socket::bind_udp("127.0.0.1:0".parse().unwrap(), 0).unwrap();
    let (a, b) = (Twin::bind(&qa).unwrap(), Twin::bind(&qb).unwrap());
    b.accept_only(&[acceptor.rx_id()]).unwrap();
    let to = b.local_addr().unwrap();
    let out: Vec<_> = (0..70u64).map(|i| (to, dialer.seal(Some(i)))).collect();
    assert_eq!(a.send_all(&out), 70);
    assert_eq!(a.stats.sent.load(Ordering::Relaxed), 70);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    while got.len() < 70 && Instant::now() < deadline {
        b.drain(Instant::now(), |d, _| got.push(acceptor.open(d)));
        std::thread::sleep(Duration::from_millis(5));
    }
    let want: Vec<_> = (0..70u64).map(|i| Some(Some(i))).collect();
    assert_eq!(got, want, "in order, each opened once");
}

#[test]
fn drained_heartbeats_are_dated_when_they_arrived() {
    let quic = crate::socket::bind_udp("127.0.0.1:0".parse().unwrap(), 0).unwrap();
    let twin = Twin::bind(&quic).unwrap();
    let to = twin.local_addr().unwrap();
    let (dialer, acceptor) = pair();
    twin.accept_only(&[acceptor.rx_id()]).unwrap();
    let beat = dialer.seal(None);
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    twin.drain(Instant::now(), |_, _| {});
    // Gaps on both sides, so the previous drain and this one are both far from the
    // arrival: loopback delivers during the send call itself.
    std::thread::sleep(Duration::from_millis(30));
    let before = Instant::now();
    sender.send_to(&beat, to).unwrap();
    let after = Instant::now();
    std::thread::sleep(Duration::from_millis(30));
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.is_empty() && Instant::now() < deadline {
        twin.drain(Instant::now(), |d, at| got.push((d.to_vec(), at)));
    }
    let (bytes, at) = got.pop().expect("the datagram arrived");
    assert_eq!(bytes, beat);
    let slack = Duration::from_millis(2);
    assert!(
        at + slack >= before && at <= after + slack,
        "dated {:?} after the send began, which took {:?}",
        at.saturating_duration_since(before),
        after - before
    );
}

#[test]
fn a_port_taken_by_another_socket_is_not_shared() {
    let quic = crate::socket::bind_udp("127.0.0.1:0".parse().unwrap(), 0).unwrap();
    let _twin = Twin::bind(&quic).unwrap();
    let port = quic.local_addr().unwrap();
    assert!(
        crate::socket::bind_udp(port, 0).is_err(),
        "a plain bind of the same port still fails"
    );
}

/// Reads `twin` until `last` (sent after everything else) came, or for 5 s.
fn read_until(twin: &Twin, last: &[u8]) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got: Vec<Vec<u8>> = Vec::new();
    while got.last().map(Vec::as_slice) != Some(last) && Instant::now() < deadline {
        twin.drain(Instant::now(), |d, _| got.push(d.to_vec()));
        std::thread::sleep(Duration::from_millis(5));
    }
    got
}

#[test]
fn the_kernel_drops_what_is_not_a_heartbeat_of_a_listed_key() {
    let quic = crate::socket::bind_udp("127.0.0.1:0".parse().unwrap(), 0).unwrap();
    let twin = Twin::bind(&quic).unwrap();
    let to = twin.local_addr().unwrap();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (dialer, acceptor) = pair();
    let other = LinkKeys::from_material(&[1u8; 80], true);
    // Nothing listed yet: even a real heartbeat is dropped.
    let early = dialer.seal(Some(1));
    sender.send_to(&early, to).unwrap();
    twin.accept_only(&[acceptor.rx_id()]).unwrap();
    let good = dialer.seal(Some(2));
    let mut short = good.to_vec();
    short.pop();
    let mut long = good.to_vec();
    long.push(0);
    let mut unmarked = good;
    unmarked[0] = 0x22;
    let mut near = good;
    near[8] ^= 1; // the last byte of the key id
    let mut near_hi = good;
    near_hi[1] ^= 0x80; // the first byte of the key id
    for bad in [
        &short[..],
        &long[..],
        &unmarked[..],
        &near[..],
        &near_hi[..],
        &other.seal(None)[..],
        &[MARKER][..],
    ] {
        sender.send_to(bad, to).unwrap();
    }
    sender.send_to(&good, to).unwrap();
    let got = read_until(&twin, &good);
    assert_eq!(got, vec![good.to_vec()], "only the listed key's heartbeat");
    // Six refused by the filter, plus the early one; the datagram without the marker
    // (a relayed datagram's first byte) went to the QUIC socket instead.
    assert!(twin.dropped() >= 7, "dropped {}", twin.dropped());
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 64];
    loop {
        match quic.recv_from(&mut buf) {
            Ok((n, _)) if buf[..n] == unmarked[..] => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "the unmarked datagram never reached the QUIC socket"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("{e}"),
        }
    }
    // An emptied list drops it again; a list of several keys keeps each.
    twin.accept_only(&[]).unwrap();
    let late = dialer.seal(Some(3));
    sender.send_to(&late, to).unwrap();
    twin.accept_only(&[other.rx_id(), acceptor.rx_id()])
        .unwrap();
    let last = dialer.seal(Some(4));
    sender.send_to(&last, to).unwrap();
    assert_eq!(read_until(&twin, &last), vec![last.to_vec()]);
}

#[test]
fn with_more_keys_than_a_filter_lists_the_length_and_marker_are_still_checked() {
    let quic = crate::socket::bind_udp("127.0.0.1:0".parse().unwrap(), 0).unwrap();
    let twin = Twin::bind(&quic).unwrap();
    let to = twin.local_addr().unwrap();
    let ids: Vec<[u8; 8]> = (0..=filter::MAX_IDS as u64)
        .map(|i| i.to_be_bytes())
        .collect();
    twin.accept_only(&ids).unwrap();
    let (dialer, _) = pair();
    let beat = dialer.seal(None);
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    sender.send_to(&beat[..LEN - 1], to).unwrap();
    sender.send_to(&beat, to).unwrap();
    assert_eq!(read_until(&twin, &beat), vec![beat.to_vec()]);
}
