//! The state machine driven by hand, step by step, with explicit times.

use std::time::{Duration, Instant};

use membership::{Config, Input, Membership, Message, Output, State};

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn drain(m: &mut Membership<u32>) -> Vec<Output<u32>> {
    std::iter::from_fn(|| m.poll_output()).collect()
}

fn sends(out: &[Output<u32>], to: u32) -> Vec<Message<u32>> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { to: t, msg } if *t == to => Some(msg.clone()),
            _ => None,
        })
        .collect()
}

/// A link whose beats go over QUIC (one side beats, acknowledgements answer).
fn up(m: &mut Membership<u32>, peer: u32, now: Instant) {
    link_up(m, peer, now, false);
}

fn link_up(m: &mut Membership<u32>, peer: u32, now: Instant, datagram: bool) {
    m.handle_input(
        Input::LinkUp {
            peer,
            rtt: ms(2),
            addr: None,
            datagram,
        },
        now,
    );
}

/// A heartbeat of `peer` read at `now`, dated `at`.
fn heard_beat(m: &mut Membership<u32>, peer: u32, at: Instant, now: Instant) {
    m.handle_input(
        Input::Beat {
            peer,
            at,
            digest: None,
        },
        now,
    );
}

/// Run the timer loop until `until`, answering nothing.
fn silent_until(m: &mut Membership<u32>, until: Instant) -> Vec<Output<u32>> {
    let mut all = Vec::new();
    while let Some(t) = m.poll_timeout() {
        if t > until {
            break;
        }
        m.handle_timeout(t);
        all.extend(drain(m));
    }
    all
}

/// The timers these tests are written for (faster than the default): 250 ms beats,
/// unreachable after 1.3 s of silence.
fn cfg() -> Config {
    Config {
        probe_interval: ms(250),
        unreachable_after: ms(1300),
        ..Config::default()
    }
}

#[test]
fn silent_peer_goes_suspect_then_unreachable_and_recovers() {
    let t0 = Instant::now();
    let cfg = cfg();
    let mut m = Membership::new(1u32, 1, cfg.clone(), t0);
    m.set_members([1, 2]);
    up(&mut m, 2, t0);
    assert_eq!(m.peer(&2).unwrap().state, State::Active);
    assert_eq!(m.next_hop(&2), Some(2));
    drain(&mut m);

    // The lower id beats first, one interval after the link came up.
    let out = silent_until(&mut m, t0 + ms(260));
    assert!(
        sends(&out, 2)
            .iter()
            .any(|msg| matches!(msg, Message::Beat { .. })),
        "beat"
    );
    // Nothing heard for two intervals plus the probe timeout (700 ms): suspect.
    let out = silent_until(&mut m, t0 + ms(690));
    assert_eq!(m.peer(&2).unwrap().state, State::Active);
    assert!(!sends(&out, 2)
        .iter()
        .any(|msg| matches!(msg, Message::Ping { .. })));
    let out = silent_until(&mut m, t0 + ms(1000));
    assert_eq!(m.peer(&2).unwrap().state, State::Suspect);
    assert!(sends(&out, 2)
        .iter()
        .any(|msg| matches!(msg, Message::Ping { suspect: true, .. })));
    assert_eq!(m.next_hop(&2), Some(2));
    silent_until(&mut m, t0 + cfg.unreachable_after + ms(50));
    assert_eq!(m.peer(&2).unwrap().state, State::Unreachable);
    assert_eq!(m.next_hop(&2), None);

    // It speaks again: active.
    let now = t0 + ms(2000);
    m.handle_input(
        Input::Message {
            from: 2,
            msg: Message::Ping {
                nonce: 9,
                suspect: false,
            },
        },
        now,
    );
    let out = drain(&mut m);
    assert!(sends(&out, 2).contains(&Message::Ack { nonce: 9 }));
    assert_eq!(m.peer(&2).unwrap().state, State::Active);
}

#[test]
fn suspected_member_refutes_with_higher_incarnation() {
    let t0 = Instant::now();
    let mut m = Membership::new(1u32, 500, cfg(), t0);
    m.set_members([1, 2]);
    up(&mut m, 2, t0);
    drain(&mut m);
    m.handle_input(
        Input::Message {
            from: 2,
            msg: Message::Ping {
                nonce: 1,
                suspect: true,
            },
        },
        t0 + ms(10),
    );
    let out = drain(&mut m);
    assert_eq!(m.incarnation(), 501);
    let refuted = sends(&out, 2).iter().any(|msg| match msg {
        Message::Gossip { items } => items.iter().any(
            |i| matches!(i, membership::Item::Record(r) if r.origin == 1 && r.incarnation == 501),
        ),
        _ => false,
    });
    assert!(refuted, "{out:?}");
}

#[test]
fn leaving_link_down_marks_left_and_restart_supersedes() {
    let t0 = Instant::now();
    let mut m = Membership::new(1u32, 1, cfg(), t0);
    m.set_members([1, 2]);
    up(&mut m, 2, t0);
    m.handle_input(
        Input::LinkDown {
            peer: 2,
            leaving: true,
        },
        t0 + ms(5),
    );
    assert_eq!(m.peer(&2).unwrap().state, State::Left);
    assert_eq!(m.next_hop(&2), None);
    // Member 2 restarts with a higher incarnation: its record supersedes the mark.
    let mut other = Membership::new(2u32, 1000, cfg(), t0 + ms(100));
    other.set_members([1, 2]);
    up(&mut other, 1, t0 + ms(100));
    let out = drain(&mut other);
    up(&mut m, 2, t0 + ms(100));
    // Let the two exchange digests and records for a while.
    let mut to_m = sends(&out, 1);
    let mut now = t0 + ms(101);
    for _ in 0..10 {
        let mut to_other = Vec::new();
        for msg in to_m.drain(..) {
            m.handle_input(Input::Message { from: 2, msg }, now);
        }
        m.handle_timeout(now);
        to_other.extend(sends(&drain(&mut m), 2));
        for msg in to_other {
            other.handle_input(Input::Message { from: 1, msg }, now);
        }
        other.handle_timeout(now);
        to_m = sends(&drain(&mut other), 1);
        now += ms(30);
    }
    assert_eq!(m.peer(&2).unwrap().state, State::Active);
}

#[test]
fn strangers_are_ignored_and_removed_members_forgotten() {
    let t0 = Instant::now();
    let mut m = Membership::new(1u32, 1, cfg(), t0);
    m.set_members([1, 2, 3]);
    up(&mut m, 9, t0);
    m.handle_input(
        Input::Message {
            from: 9,
            msg: Message::Ping {
                nonce: 1,
                suspect: false,
            },
        },
        t0,
    );
    assert!(m.peer(&9).is_none());
    assert!(drain(&mut m)
        .iter()
        .all(|o| !matches!(o, Output::Send { to: 9, .. })));
    up(&mut m, 3, t0);
    assert_eq!(m.peer(&3).unwrap().state, State::Active);
    m.remove_member(3);
    assert!(m.peer(&3).is_none());
    assert_eq!(m.next_hop(&3), None);
    m.handle_input(
        Input::Message {
            from: 3,
            msg: Message::Ping {
                nonce: 2,
                suspect: false,
            },
        },
        t0,
    );
    assert!(drain(&mut m)
        .iter()
        .all(|o| !matches!(o, Output::Send { to: 3, .. })));
    assert_eq!(m.peers().map(|p| p.id).collect::<Vec<_>>(), vec![2]);
}

#[test]
fn oversize_broadcast_is_refused_and_idle_wakeups_are_few() {
    let t0 = Instant::now();
    let mut m = Membership::new(1u32, 1, cfg(), t0);
    m.set_members([1, 2]);
    up(&mut m, 2, t0);
    drain(&mut m);
    assert!(m
        .try_broadcast(vec![0; membership::message::MAX_PAYLOAD + 1], t0)
        .is_err());
    assert!(drain(&mut m).is_empty());
    // The beating side: its transport hears the peer's acknowledgement of each beat, and
    // the daemon reports it at the next wake-up, dated at the one before (as
    // src/daemon/membership.rs does). One wake-up per beat plus anti-entropy; no probe.
    let mut wakeups = 0;
    let mut last_check = t0;
    while let Some(t) = m.poll_timeout() {
        if t > t0 + ms(10_000) {
            break;
        }
        m.handle_input(
            Input::Heard {
                peer: 2,
                at: last_check,
            },
            t,
        );
        last_check = t;
        m.handle_timeout(t);
        wakeups += 1;
        let out = sends(&drain(&mut m), 2);
        assert!(
            !out.iter().any(|msg| matches!(msg, Message::Ping { .. })),
            "no probe on a healthy link"
        );
        assert_eq!(m.peer(&2).unwrap().state, State::Active);
    }
    assert!(wakeups <= 4 * 10 + 10 + 2, "{wakeups} wake-ups in 10 s");
    assert!(
        wakeups >= 4 * 10 - 2,
        "{wakeups} wake-ups in 10 s: beats missing"
    );
}

#[test]
fn the_side_that_receives_beats_sleeps() {
    // Member 2 receives a beat from member 1 (the lower id) every interval: it sends no
    // beat and wakes up only for anti-entropy, about once a second.
    let t0 = Instant::now();
    let mut m = Membership::new(2u32, 1, cfg(), t0);
    m.set_members([1, 2]);
    up(&mut m, 1, t0);
    drain(&mut m);
    let mut wakeups = 0;
    let mut beats_sent = 0;
    let mut next_beat = t0 + ms(250);
    let end = t0 + ms(10_000);
    loop {
        let timer = m.poll_timeout().expect("a timer");
        if timer.min(next_beat) > end {
            break;
        }
        if next_beat <= timer {
            m.handle_input(
                Input::Message {
                    from: 1,
                    msg: Message::Beat { digest: None },
                },
                next_beat,
            );
            next_beat += ms(250);
        } else {
            m.handle_timeout(timer);
            wakeups += 1;
        }
        for msg in sends(&drain(&mut m), 1) {
            assert!(!matches!(msg, Message::Ping { .. }), "no probe");
            beats_sent += usize::from(matches!(msg, Message::Beat { .. }));
        }
        assert_eq!(m.peer(&1).unwrap().state, State::Active);
    }
    assert_eq!(beats_sent, 0);
    assert!(wakeups <= 10 + 2, "{wakeups} wake-ups in 10 s");
}

#[test]
fn with_heartbeats_both_sides_beat_once_per_interval_and_silence_is_noticed() {
    // Member 2 (the higher id, which would only answer over QUIC) beats every interval
    // although member 1's heartbeats keep arriving; one wake-up per interval.
    let t0 = Instant::now();
    let mut m = Membership::new(2u32, 1, cfg(), t0);
    m.set_members([1, 2]);
    link_up(&mut m, 1, t0, true);
    drain(&mut m);
    let mut wakeups = 0;
    let mut beats_sent = 0;
    let mut last_wake = t0;
    let end = t0 + ms(10_000);
    while let Some(timer) = m.poll_timeout().filter(|t| *t <= end) {
        // The heartbeats that came since the last wake-up, dated then at the earliest
        // (the daemon dates each by its arrival).
        heard_beat(&mut m, 1, last_wake, timer);
        m.handle_timeout(timer);
        last_wake = timer;
        wakeups += 1;
        for msg in sends(&drain(&mut m), 1) {
            assert!(!matches!(msg, Message::Ping { .. }), "no probe");
            beats_sent += usize::from(matches!(msg, Message::Beat { .. }));
        }
        assert_eq!(m.peer(&1).unwrap().state, State::Active);
        assert!(m.silence(&1, timer).unwrap() <= ms(500));
    }
    assert!(
        (39..=41).contains(&beats_sent),
        "{beats_sent} beats in 10 s"
    );
    assert!(wakeups <= 41, "{wakeups} wake-ups in 10 s");

    // The heartbeats stop: suspect (with a ping over QUIC), then unreachable.
    let quiet = last_wake;
    let out = silent_until(&mut m, quiet + ms(1000));
    assert!(sends(&out, 1)
        .iter()
        .any(|x| matches!(x, Message::Ping { .. })));
    assert_eq!(m.peer(&1).unwrap().state, State::Suspect);
    silent_until(&mut m, quiet + ms(1400));
    assert_eq!(m.peer(&1).unwrap().state, State::Unreachable);
    assert!(m.silence(&1, quiet + ms(1400)).unwrap() >= ms(1300));

    // A heartbeat again: active at once.
    let back = quiet + ms(1500);
    heard_beat(&mut m, 1, back, back);
    assert_eq!(m.peer(&1).unwrap().state, State::Active);
}

#[test]
fn heartbeat_links_that_came_up_apart_beat_in_the_same_wake_up() {
    // Links to 2 and 3 come up 150 ms apart (more than the batching window of a quarter
    // interval); after the first beats, every wake-up beats both.
    let t0 = Instant::now();
    let mut m = Membership::new(1u32, 1, cfg(), t0);
    m.set_members([1, 2, 3]);
    link_up(&mut m, 2, t0, true);
    link_up(&mut m, 3, t0 + ms(150), true);
    drain(&mut m);
    let mut wakeups = 0;
    let mut last_wake = t0;
    let end = t0 + ms(10_000);
    while let Some(timer) = m.poll_timeout().filter(|t| *t <= end) {
        for peer in [2, 3] {
            heard_beat(&mut m, peer, last_wake, timer);
        }
        m.handle_timeout(timer);
        last_wake = timer;
        wakeups += 1;
        let out = drain(&mut m);
        let beats = |to| {
            sends(&out, to)
                .iter()
                .filter(|x| matches!(x, Message::Beat { .. }))
                .count()
        };
        if timer > t0 + ms(600) {
            assert_eq!((beats(2), beats(3)), (1, 1), "both links beat together");
        }
    }
    assert!(wakeups <= 42, "{wakeups} wake-ups in 10 s");
}

/// Member 1's broadcast as member 2 receives it from 1, and what 2 then does with it
/// (3 is linked to 2 only).
fn broadcast_through(events: bool) -> Vec<Output<u32>> {
    let t0 = Instant::now();
    let (mut a, mut b) = (
        Membership::new(1u32, 1, cfg(), t0),
        Membership::new(2u32, 1, Config { events, ..cfg() }, t0),
    );
    a.set_members([1, 2, 3]);
    b.set_members([1, 2, 3]);
    // 1 reaches 3 only through 2.
    up(&mut a, 2, t0);
    for peer in [1, 3] {
        up(&mut b, peer, t0);
    }
    // Their link records go out (at most one per 50 ms), each to the other.
    let mut t = t0;
    for _ in 0..4 {
        t += ms(60);
        a.handle_timeout(t);
        b.handle_timeout(t);
        for msg in sends(&drain(&mut a), 2) {
            b.handle_input(Input::Message { from: 1, msg }, t);
        }
        for msg in sends(&drain(&mut b), 1) {
            a.handle_input(Input::Message { from: 2, msg }, t);
        }
    }
    drain(&mut a);
    drain(&mut b);
    a.broadcast(b"hello".to_vec(), t);
    let to_b = sends(&drain(&mut a), 2);
    assert!(
        to_b.iter().any(|m| matches!(m, Message::Gossip { .. })),
        "{to_b:?}"
    );
    for msg in to_b {
        b.handle_input(Input::Message { from: 1, msg }, t);
    }
    // Repairs too: what anti-entropy would hand out over the next seconds.
    let mut out = drain(&mut b);
    out.extend(silent_until(&mut b, t + ms(3000)));
    out
}

#[test]
fn a_member_that_takes_no_events_neither_delivers_nor_passes_them_on() {
    let carries_event = |out: &[Output<u32>]| {
        sends(out, 3).iter().any(|m| {
            matches!(m, Message::Gossip { items } if items.iter().any(|i| matches!(i, membership::Item::Event(_))))
        })
    };
    let delivered = |out: &[Output<u32>]| out.iter().any(|o| matches!(o, Output::Deliver { .. }));
    let on = broadcast_through(true);
    assert!(delivered(&on) && carries_event(&on), "{on:?}");
    let off = broadcast_through(false);
    assert!(!delivered(&off) && !carries_event(&off), "{off:?}");
}

/// The records member 1 sent to `to` in `out`.
fn own_records(out: &[Output<u32>], to: u32) -> Vec<membership::Record<u32>> {
    sends(out, to)
        .into_iter()
        .flat_map(|msg| match msg {
            Message::Gossip { items } => items,
            _ => Vec::new(),
        })
        .filter_map(|i| match i {
            membership::Item::Record(r) if r.origin == 1 => Some(r),
            _ => None,
        })
        .collect()
}

#[test]
fn own_current_record_sent_back_is_not_refuted_but_a_newer_one_is() {
    let t0 = Instant::now();
    let mut m = Membership::new(1u32, 500, cfg(), t0);
    m.set_members([1, 2]);
    up(&mut m, 2, t0);
    let mut out = drain(&mut m);
    let t1 = t0 + ms(5000);
    m.handle_timeout(t1);
    out.extend(drain(&mut m));
    let mut ours = own_records(&out, 2).pop().expect("our record went to 2");
    assert!(
        ours.seal.is_empty(),
        "the core leaves its own records unsealed"
    );
    // The sender sealed it; a member sends it back with that seal: nothing to refute.
    ours.seal = vec![1; 96];
    let gossip = |rec: membership::Record<u32>| Input::Message {
        from: 2,
        msg: Message::Gossip {
            items: vec![membership::Item::Record(rec)],
        },
    };
    m.handle_input(gossip(ours.clone()), t1 + ms(10));
    drain(&mut m);
    assert_eq!(m.incarnation(), 500);
    // A record of ours from an earlier run, newer than this one's: refuted above it.
    let mut earlier = ours.clone();
    earlier.incarnation = 700;
    earlier.left = true;
    m.handle_input(gossip(earlier), t1 + ms(20));
    drain(&mut m);
    assert_eq!(m.incarnation(), 701);
    // Even a record at the very top leaves the core standing (the daemon takes only the
    // ones its own key sealed).
    let mut top = ours;
    top.incarnation = u64::MAX;
    m.handle_input(gossip(top), t1 + ms(30));
    assert_eq!(m.incarnation(), u64::MAX);
}

#[test]
fn seals_of_others_records_are_passed_on_unchanged() {
    let t0 = Instant::now();
    let mut m = Membership::new(1u32, 500, cfg(), t0);
    m.set_members([1, 2, 3]);
    up(&mut m, 2, t0);
    up(&mut m, 3, t0);
    drain(&mut m);
    let rec = membership::Record {
        origin: 2,
        incarnation: 9,
        version: 1,
        left: false,
        gentle: false,
        links: vec![membership::LinkEntry {
            peer: 1,
            rtt_us: 2000,
            addr: None,
            watch: membership::Watch::Unwatched,
        }],
        seal: vec![42; 96],
    };
    m.handle_input(
        Input::Message {
            from: 2,
            msg: Message::Gossip {
                items: vec![membership::Item::Record(rec.clone())],
            },
        },
        t0 + ms(10),
    );
    let out = drain(&mut m);
    let passed: Vec<_> = sends(&out, 3)
        .into_iter()
        .flat_map(|msg| match msg {
            Message::Gossip { items } => items,
            _ => Vec::new(),
        })
        .collect();
    assert!(
        passed.contains(&membership::Item::Record(rec)),
        "{passed:?}"
    );
}
