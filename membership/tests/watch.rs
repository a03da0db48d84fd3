//! Monitoring in the state machine driven by hand: whom a member beats, how a member it
//! does not watch follows that member's monitors, orphans of a partition, a monitor our
//! beats do not reach, the first ping to a new subject, the silence the daemon reads.

use std::time::{Duration, Instant};

use membership::{
    Config, Input, Item, LinkEntry, Membership, Message, Output, Record, State, Watch,
};

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn drain(m: &mut Membership<u32>) -> Vec<Output<u32>> {
    std::iter::from_fn(|| m.poll_output()).collect()
}

fn sent(out: &[Output<u32>]) -> Vec<(u32, Message<u32>)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { to, msg } => Some((*to, msg.clone())),
            _ => None,
        })
        .collect()
}

/// Member 0 of `n`, with a heartbeat link to every other member.
fn member(n: u32, t0: Instant) -> Membership<u32> {
    let mut m = Membership::new(0u32, 1, Config::default(), t0);
    m.set_members(0..n);
    for p in 1..n {
        m.handle_input(
            Input::LinkUp {
                peer: p,
                rtt: ms(2),
                addr: None,
                datagram: true,
            },
            t0,
        );
    }
    drain(&mut m);
    m
}

/// `origin`'s record (version `v`) as it reaches member 0 from `origin` itself.
fn record(m: &mut Membership<u32>, origin: u32, v: u64, links: &[(u32, Watch)], now: Instant) {
    let rec = Record {
        origin,
        incarnation: 1,
        version: v,
        left: false,
        gentle: false,
        links: links
            .iter()
            .map(|&(peer, watch)| LinkEntry {
                peer,
                rtt_us: 2000,
                addr: None,
                watch,
            })
            .collect(),
        seal: Vec::new(),
    };
    m.handle_input(
        Input::Message {
            from: origin,
            msg: Message::Gossip {
                items: vec![Item::Record(rec)],
            },
        },
        now,
    );
}

/// Every member `y` of `1..n` announces a link to every other member, and says of each
/// what `watch(y, peer)` says.
fn records(
    m: &mut Membership<u32>,
    n: u32,
    v: u64,
    watch: impl Fn(u32, u32) -> Watch,
    now: Instant,
) {
    records_of(m, n, 1..n, v, watch, now)
}

/// [`records`] from the members `from` only (the others are silent).
fn records_of(
    m: &mut Membership<u32>,
    n: u32,
    from: impl IntoIterator<Item = u32>,
    v: u64,
    watch: impl Fn(u32, u32) -> Watch,
    now: Instant,
) {
    for y in from {
        let links: Vec<(u32, Watch)> = (0..n)
            .filter(|p| *p != y)
            .map(|p| (p, watch(y, p)))
            .collect();
        record(m, y, v, &links, now);
    }
}

/// Runs the timer until `until`; at each wake-up the heartbeats of our subjects (but
/// those in `silent`) are read.
fn run(m: &mut Membership<u32>, until: Instant, silent: &[u32]) -> Vec<Output<u32>> {
    let mut all = Vec::new();
    while let Some(t) = m.poll_timeout().filter(|t| *t <= until) {
        for p in m.subjects() {
            if !silent.contains(&p) {
                m.handle_input(
                    Input::Beat {
                        peer: p,
                        at: t,
                        digest: None,
                    },
                    t,
                );
            }
        }
        m.handle_timeout(t);
        all.extend(drain(m));
    }
    all
}

/// Everyone vouches for everyone (a mesh where every member is watched).
fn all_alive(_: u32, _: u32) -> Watch {
    Watch::Alive
}

#[test]
fn beats_go_to_the_monitors_only_whatever_the_mesh_size() {
    for n in [3u32, 4, 10, 50] {
        let t0 = Instant::now();
        let mut m = member(n, t0);
        records(&mut m, n, 1, all_alive, t0);
        let monitors = m.monitors();
        assert_eq!(monitors.len(), 3.min(n as usize - 1), "n={n}");
        let out = run(&mut m, t0 + ms(5000), &[]);
        let beats: Vec<u32> = sent(&out)
            .into_iter()
            .filter(|(_, msg)| matches!(msg, Message::Beat { .. }))
            .map(|(to, _)| to)
            .collect();
        for p in &monitors {
            let c = beats.iter().filter(|b| *b == p).count();
            assert!(
                (9..=11).contains(&c),
                "n={n}: {c} beats to monitor {p} in 5 s"
            );
        }
        assert!(
            beats.iter().all(|b| monitors.contains(b)),
            "n={n}: {beats:?}"
        );
        for p in 1..n {
            assert_eq!(m.peer(&p).unwrap().state, State::Active, "n={n}: {p}");
        }
    }
}

#[test]
fn a_member_we_do_not_watch_follows_its_monitors_reports() {
    let n = 10;
    let t0 = Instant::now();
    let mut m = member(n, t0);
    records(&mut m, n, 1, all_alive, t0);
    let x = (1..n)
        .find(|x| !m.monitors().contains(x) && !m.subjects().contains(x))
        .unwrap();
    let watchers: Vec<u32> = (1..n).filter(|y| *y != x).take(3).collect();
    let watchers = &watchers;
    let report = |w: Watch| {
        move |y: u32, p: u32| {
            if p != x {
                Watch::Alive
            } else if watchers.contains(&y) {
                w
            } else {
                Watch::Unwatched
            }
        }
    };
    // `x` says nothing more (the test is about what others say of it).
    let others: Vec<u32> = (1..n).filter(|y| *y != x).collect();
    let mut now = t0 + ms(100);
    records_of(&mut m, n, others.clone(), 2, report(Watch::Alive), now);
    assert_eq!(m.peer(&x).unwrap().state, State::Active);
    // Long after the link stopped being fresh, the monitors still vouch for it.
    drain(&mut m);
    let out = run(&mut m, t0 + ms(4000), &[]);
    assert_eq!(m.peer(&x).unwrap().state, State::Active);
    // Its monitors suspect it: a member that does not watch it does not doubt it yet.
    now = t0 + ms(4000);
    records_of(&mut m, n, others.clone(), 3, report(Watch::Suspect), now);
    assert_eq!(m.peer(&x).unwrap().state, State::Active);
    assert_eq!(m.silence(&x, now), Some(Duration::ZERO));
    // They report it lost: unreachable at once.
    now += ms(400);
    records_of(&mut m, n, others, 4, report(Watch::Lost), now);
    assert_eq!(m.peer(&x).unwrap().state, State::Unreachable);
    assert_eq!(m.next_hop(&x), None);
    let pinged_before = sent(&out)
        .iter()
        .any(|(to, msg)| *to == x && matches!(msg, Message::Ping { .. }));
    assert!(
        !pinged_before,
        "nobody here probes a member it does not watch"
    );
    // The daemon closes the connection once the suspicion deadline plus its idle
    // allowance have passed since the peer was last known up.
    let s = m.silence(&x, now + ms(1000)).unwrap();
    assert_eq!(s, Config::default().unreachable_after + ms(1000));
    // A link to an unreachable member is pinged now and then: it answers, it is back.
    let out = run(&mut m, now + ms(600), &[]);
    let (_, ping) = sent(&out)
        .into_iter()
        .find(|(to, msg)| *to == x && matches!(msg, Message::Ping { .. }))
        .expect("a ping to the unreachable member");
    let Message::Ping { nonce, suspect } = ping else {
        unreachable!()
    };
    assert!(!suspect);
    m.handle_input(
        Input::Message {
            from: x,
            msg: Message::Ack { nonce },
        },
        now + ms(610),
    );
    assert_eq!(m.peer(&x).unwrap().state, State::Active);
}

#[test]
fn an_orphan_keeps_its_state_one_interval_then_is_down() {
    // `w1` and `w2` watch `x`; the members on our side report `w1` and `w2` lost (a
    // partition puts `w1`, `w2`, `x` out of our sight). Nobody we reach reports `x` lost:
    // it may be on our side with all its monitors on the other, so it keeps its state
    // for an interval, the time to get monitors here.
    let n = 12;
    let t0 = Instant::now();
    let setup = |t0: Instant| {
        let mut m = member(n, t0);
        records(&mut m, n, 1, all_alive, t0);
        let now = t0 + ms(3000);
        run(&mut m, now, &[]);
        let free: Vec<u32> = (1..n)
            .filter(|y| !m.subjects().contains(y) && !m.monitors().contains(y))
            .collect();
        let (w1, w2, x) = (free[0], free[1], free[2]);
        let ours: Vec<u32> = (1..n).filter(|y| ![w1, w2, x].contains(y)).collect();
        (m, now, w1, w2, x, ours)
    };
    let (mut m, mut now, w1, w2, x, ours) = setup(t0);
    assert_eq!(m.peer(&x).unwrap().state, State::Active);
    let cut = move |_: u32, p: u32| {
        if p == w1 || p == w2 {
            Watch::Lost
        } else if p == x {
            Watch::Unwatched
        } else {
            Watch::Alive
        }
    };
    records_of(&mut m, n, ours.clone(), 2, cut, now);
    assert_eq!(m.peer(&w1).unwrap().state, State::Unreachable);
    assert_eq!(m.peer(&x).unwrap().state, State::Active, "orphan grace");
    let grace = Config::default().probe_interval;
    run(&mut m, now + grace - ms(1), &[]);
    assert_eq!(m.peer(&x).unwrap().state, State::Active);
    now += grace + ms(1);
    run(&mut m, now, &[]);
    assert_eq!(m.peer(&x).unwrap().state, State::Unreachable);

    // Again: within the grace a member on our side starts watching it; it never changes
    // state.
    let (mut m, now, _, _, x, ours) = setup(t0);
    drain(&mut m);
    records_of(&mut m, n, ours.clone(), 2, cut, now);
    let mut outputs = drain(&mut m);
    let first = ours[0];
    let rehomed = move |y: u32, p: u32| {
        if y == first && p == x {
            Watch::Alive
        } else {
            cut(y, p)
        }
    };
    records_of(&mut m, n, [first], 3, rehomed, now + ms(60));
    outputs.extend(drain(&mut m));
    outputs.extend(run(&mut m, now + ms(2000), &[]));
    assert_eq!(m.peer(&x).unwrap().state, State::Active);
    let changes: Vec<Output<u32>> = outputs
        .into_iter()
        .filter(|o| matches!(o, Output::State { peer, .. } if *peer == x))
        .collect();
    assert!(changes.is_empty(), "{changes:?}");
}

#[test]
fn a_monitor_that_does_not_hear_our_beats_is_replaced() {
    let n = 10;
    let t0 = Instant::now();
    let mut m = member(n, t0);
    records(&mut m, n, 1, all_alive, t0);
    let monitors = m.monitors();
    let deaf = monitors[0];
    // `deaf` never lists us as heard; the others do.
    let says = |y: u32, p: u32| {
        if y == deaf && p == 0 {
            Watch::Unwatched
        } else {
            Watch::Alive
        }
    };
    records(&mut m, n, 2, says, t0 + ms(10));
    // Judged a suspicion deadline and an interval after the beats began.
    let judge = Config::default().unreachable_after + Config::default().probe_interval;
    run(&mut m, t0 + judge - ms(100), &[]);
    assert_eq!(m.monitors(), monitors);
    let out = run(&mut m, t0 + judge + ms(600), &[]);
    let now_monitors = m.monitors();
    assert!(!now_monitors.contains(&deaf), "{now_monitors:?}");
    assert_eq!(now_monitors.len(), 3);
    assert!(monitors[1..].iter().all(|p| now_monitors.contains(p)));
    // Our record no longer offers the link as a path; our view goes through others.
    let own = sent(&out).into_iter().find_map(|(_, msg)| match msg {
        Message::Gossip { items } => items.into_iter().find_map(|i| match i {
            Item::Record(r) if r.origin == 0 => Some(r),
            _ => None,
        }),
        _ => None,
    });
    assert!(own
        .expect("our record")
        .links
        .iter()
        .all(|e| e.peer != deaf));
    assert_eq!(m.peer(&deaf).unwrap().state, State::Indirect);
    // Its record says something new of us: tried again.
    let t = t0 + judge + ms(700);
    records(&mut m, n, 3, all_alive, t);
    assert_eq!(m.monitors(), monitors);
    assert_eq!(m.peer(&deaf).unwrap().state, State::Active);
}

#[test]
fn a_new_subject_is_pinged_once_and_released_quietly_without_beats() {
    let n = 10;
    let t0 = Instant::now();
    let later = t0 + ms(3000);
    // A member that leaves moves the rings: find one that gives us a new subject.
    let (mut m, new, out) = (1..n)
        .find_map(|gone| {
            let mut m = member(n, t0);
            records(&mut m, n, 1, all_alive, t0);
            let subjects = m.subjects();
            // The links are fresh: our subjects' beats will come, no ping needed.
            run(&mut m, later, &[]);
            m.handle_input(
                Input::LinkDown {
                    peer: gone,
                    leaving: true,
                },
                later,
            );
            let out = drain(&mut m);
            let new = m.subjects().into_iter().find(|s| !subjects.contains(s))?;
            Some((m, new, out))
        })
        .expect("some departure gives member 0 a new subject");
    let (nonce, suspect) = sent(&out)
        .into_iter()
        .find_map(|(to, msg)| match msg {
            Message::Ping { nonce, suspect } if to == new => Some((nonce, suspect)),
            _ => None,
        })
        .expect("a first ping to the new subject");
    assert!(!suspect, "not a suspicion");
    m.handle_input(
        Input::Message {
            from: new,
            msg: Message::Ack { nonce },
        },
        later + ms(2),
    );
    assert!(m.vouched().contains(&new), "watched at once");
    // No beat comes from it: at the active limit it is let go, without a suspicion.
    let out = run(&mut m, later + ms(3000), &[new]);
    assert!(!m.vouched().contains(&new));
    assert!(!sent(&out)
        .iter()
        .any(|(to, msg)| *to == new && matches!(msg, Message::Ping { suspect: true, .. })));
    assert_eq!(m.peer(&new).unwrap().state, State::Active);
}

#[test]
fn a_subject_that_dies_right_after_connecting_is_suspected_then_unreachable() {
    // As before monitoring: a link to a member we monitor is watched from the moment it
    // comes up, so a crash before its first beat still shows `suspect`, then
    // `unreachable`.
    let t0 = Instant::now();
    let mut m = member(2, t0);
    assert_eq!(m.subjects(), vec![1]);
    // Its record, published before our link came up, lists no link: still our subject.
    record(&mut m, 1, 1, &[], t0 + ms(5));
    assert_eq!(m.subjects(), vec![1]);
    drain(&mut m);
    let mut states = Vec::new();
    while let Some(t) = m.poll_timeout().filter(|t| *t <= t0 + ms(2000)) {
        m.handle_timeout(t);
        for o in drain(&mut m) {
            if let Output::State { peer: 1, view } = o {
                states.push(view.state);
            }
        }
    }
    assert_eq!(states, vec![State::Suspect, State::Unreachable]);
}
