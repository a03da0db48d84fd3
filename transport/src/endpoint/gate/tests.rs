use std::time::{Duration, Instant};

use super::*;

fn limits() -> HandshakeLimits {
    HandshakeLimits {
        max: 6,
        per_source: 2,
        retry_above: 3,
    }
}

fn at(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

fn accept(a: Admission) -> (Ticket, oneshot::Receiver<()>) {
    match a {
        Admission::Accept(t, evicted) => (t, evicted),
        other => panic!("not accepted: {other:?}"),
    }
}

fn evicted(rx: &mut oneshot::Receiver<()>) -> bool {
    rx.try_recv() == Err(oneshot::error::TryRecvError::Closed)
}

#[test]
fn unvalidated_addresses_are_retried_under_load_and_at_their_source_s_limit() {
    let gate = Gate::new(limits());
    let a = accept(gate.admit(&at("10.0.0.1", 1), false));
    let _b = accept(gate.admit(&at("10.0.0.1", 2), false));
    // The source has its two.
    assert!(matches!(
        gate.admit(&at("10.0.0.1", 3), false),
        Admission::Retry
    ));
    let _c = accept(gate.admit(&at("10.0.0.2", 1), false));
    // Three under way: the threshold.
    assert!(matches!(
        gate.admit(&at("10.0.0.3", 1), false),
        Admission::Retry
    ));
    let c = gate.counters();
    assert_eq!((c.under_way, c.accepted, c.retried), (3, 3, 2));
    // A validated one is still taken.
    let _d = accept(gate.admit(&at("10.0.0.3", 1), true));
    drop(a);
    assert_eq!(gate.counters().under_way, 3);
    assert_eq!(gate.counters().peak, 4);
}

#[test]
fn at_its_source_s_bound_a_validated_newcomer_displaces_the_longest_waiting_answered_handshake_of_the_source(
) {
    let gate = Gate::new(limits());
    let (spoofed, mut lost) = accept(gate.admit(&at("10.0.0.1", 1), false));
    let _real = accept(gate.admit(&at("10.0.0.1", 2), true));
    // Not answered yet: it is kept, the newcomer refused.
    assert!(matches!(
        gate.admit(&at("10.0.0.1", 3), true),
        Admission::Refuse
    ));
    spoofed.answered(Instant::now());
    let mut member = accept(gate.admit(&at("10.0.0.1", 3), true));
    assert!(evicted(&mut lost));
    // Two validated ones from the source, neither answered: the next is refused.
    assert!(matches!(
        gate.admit(&at("10.0.0.1", 4), true),
        Admission::Refuse
    ));
    let c = gate.counters();
    assert_eq!((c.under_way, c.evicted, c.refused), (2, 1, 2));
    // The displaced ticket's end changes nothing more.
    drop(spoofed);
    assert_eq!(gate.counters().under_way, 2);
    // A validated one that stalls after the answer (a neighbour behind the same address)
    // gives way too: it cannot keep the source's places until the handshake timeout.
    member.0.answered(Instant::now());
    let _next = accept(gate.admit(&at("10.0.0.1", 5), true));
    assert!(evicted(&mut member.1));
    assert_eq!(gate.counters().evicted, 2);
}

#[test]
fn at_the_bound_the_longest_waiting_answered_handshake_gives_way_and_unanswered_ones_are_kept() {
    let gate = Gate::new(limits());
    let mut held: Vec<_> = (0..6)
        .map(|i| accept(gate.admit(&at(&format!("10.0.1.{i}"), 1), i > 0)))
        .collect();
    assert_eq!(gate.counters().under_way, 6);
    // None answered yet (being worked on): refused.
    assert!(matches!(
        gate.admit(&at("10.0.2.1", 1), true),
        Admission::Refuse
    ));
    // Three are answered and wait for their clients: the one that waited longest goes,
    // validated or not.
    let t0 = Instant::now();
    held[0].0.answered(t0 + Duration::from_millis(9));
    held[3].0.answered(t0 + Duration::from_millis(5));
    held[2].0.answered(t0);
    let _a = accept(gate.admit(&at("10.0.2.1", 1), true));
    assert!(evicted(&mut held[2].1));
    let _b = accept(gate.admit(&at("10.0.2.2", 1), true));
    assert!(evicted(&mut held[3].1));
    assert!(!evicted(&mut held[0].1) && !evicted(&mut held[1].1));
    let c = gate.counters();
    assert_eq!((c.under_way, c.peak, c.evicted, c.refused), (6, 6, 2, 1));
    held.clear();
    assert_eq!(gate.counters().under_way, 2);
}

#[test]
fn relayed_peers_are_validated_sources_of_their_own_and_ipv6_counts_by_prefix() {
    use crate::relay::virtual_addr;
    use crate::DeviceId;
    let gate = Gate::new(HandshakeLimits {
        max: 64,
        per_source: 1,
        retry_above: 0,
    });
    // Two relayed devices whose IDs share their first two bytes (so their IPv6 virtual
    // addresses share a /64): distinct sources, no Retry.
    let (mut x, mut y) = ([7u8; 32], [7u8; 32]);
    x[2] = 1;
    y[2] = 2;
    for v6 in [true, false] {
        let _a = accept(gate.admit(&virtual_addr(&DeviceId(x), v6), false));
        let _b = accept(gate.admit(&virtual_addr(&DeviceId(y), v6), false));
    }
    assert_eq!(
        source(&at("2001:db8:1:2:3:4:5:6", 1)),
        source(&at("2001:db8:1:2:ff::1", 9))
    );
    assert_ne!(
        source(&at("2001:db8:1:2::1", 1)),
        source(&at("2001:db8:1:3::1", 1))
    );
    assert_eq!(
        source(&at("::ffff:10.0.0.1", 1)),
        source(&at("10.0.0.1", 2))
    );
}

#[test]
fn a_member_s_source_takes_a_stranger_s_place_and_never_the_reverse() {
    let gate = Gate::new(limits());
    gate.member_from(&at("10.0.0.9", 40));
    // The bound filled by strangers' handshakes not answered yet (this side short of
    // CPU): a stranger's newcomer is refused, a member's takes the newest's place.
    let mut held: Vec<_> = (1..=6)
        .map(|i| accept(gate.admit(&at(&format!("10.0.1.{i}"), 1), true)))
        .collect();
    assert!(matches!(
        gate.admit(&at("10.0.2.1", 1), true),
        Admission::Refuse
    ));
    let mut member = accept(gate.admit(&at("10.0.0.9", 41), true));
    assert!(evicted(&mut held[5].1));
    assert!(held[..5].iter_mut().all(|h| !evicted(&mut h.1)));
    // All answered, the member's first: a stranger's newcomer takes the place of the
    // stranger that waited longest, not the member's.
    let t = Instant::now();
    member.0.answered(t);
    for (i, h) in held[..5].iter().enumerate() {
        h.0.answered(t + Duration::from_millis(1 + i as u64));
    }
    let _newcomer = accept(gate.admit(&at("10.0.2.2", 1), true));
    assert!(evicted(&mut held[0].1));
    assert!(!evicted(&mut member.1));
    let c = gate.counters();
    assert_eq!((c.under_way, c.evicted, c.refused), (6, 2, 1));
    // Only the last `FAMILIAR` sources are remembered.
    for i in 0..FAMILIAR {
        gate.member_from(&at(&format!("10.1.{}.{}", i / 200, i % 200 + 1), 1));
    }
    assert!(!gate
        .lock()
        .familiar
        .contains(&"10.0.0.9".parse::<IpAddr>().unwrap()));
    assert_eq!(gate.lock().familiar.len(), FAMILIAR);
}
