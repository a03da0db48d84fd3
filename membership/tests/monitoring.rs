//! Monitoring in the simulator (seeded, virtual time): idle traffic flat in N, crash
//! detection at N = 10, 30, 100, 1 s freezes, partitions, monitors leaving and dying.

use std::collections::BTreeSet;
use std::time::Duration;

use membership::sim::{quantile, Sim, SimConfig};
use membership::{Config, State};

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn mesh(n: u32, seed: u64) -> Sim {
    let mut sim = Sim::full_mesh(n, SimConfig::default(), seed);
    sim.run_for(ms(2500));
    assert!(sim.all_active(), "mesh of {n} converges to all active");
    sim
}

fn k() -> usize {
    Config::default().monitors
}

/// Members that vouch for `x` in their record (they watch it and heard it lately).
fn watchers(sim: &Sim, x: u32) -> BTreeSet<u32> {
    (0..sim.len())
        .filter(|o| sim.is_alive(*o) && sim.node(*o).vouched().contains(&x))
        .collect()
}

/// The latest a crash may be seen everywhere: the suspicion deadline after the victim's
/// last heartbeat, plus delivery and gossip.
fn detection_bound() -> Duration {
    Config::default().unreachable_after + ms(100)
}

/// Kill `victim`; the time until every other member shows it unreachable, checking that
/// nobody else changes state meanwhile.
fn crash(sim: &mut Sim, victim: u32) -> Duration {
    let t0 = sim.now();
    sim.kill(victim);
    sim.run_for(ms(2500));
    let d = sim
        .all_see(victim, State::Unreachable, t0)
        .expect("everyone sees the crash");
    let others = sim.transitions_since(t0, |t| t.peer != victim);
    assert!(others.is_empty(), "collateral transitions: {others:?}");
    d
}

#[test]
fn idle_traffic_per_member_is_flat_in_n() {
    // A window of whole beat intervals: exactly one beat per monitor and interval.
    let intervals = 20u32;
    let window = Config::default().probe_interval * intervals;
    for n in [3u32, 4, 5, 10, 30, 100] {
        let mut sim = mesh(n, 21);
        let before = sim.stats.clone();
        sim.run_for(window);
        assert!(sim.transitions_since(ms(2500), |_| true).is_empty());
        let expected = u64::from(intervals) * k().min(n as usize - 1) as u64;
        for (i, (now, then)) in sim.stats.sent.iter().zip(&before.sent).enumerate() {
            let sent = now.0 - then.0;
            let rate = sent as f64 / window.as_secs_f64();
            assert!(rate <= 6.0, "n={n}: member {i} sends {rate}/s");
            assert_eq!(sent, expected, "n={n}: member {i}");
        }
        let kinds: BTreeSet<&str> = sim
            .stats
            .by_kind
            .iter()
            .filter(|(k, v)| before.by_kind.get(*k) != Some(v))
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(
            kinds,
            BTreeSet::from(["beat"]),
            "n={n}: only beats while idle"
        );
        // Every member has k monitors and is watched by k members (all others in a
        // small mesh).
        for x in 0..n {
            assert_eq!(sim.node(x).monitors().len(), k().min(n as usize - 1));
            let w = watchers(&sim, x);
            let m: BTreeSet<u32> = sim.node(x).monitors().into_iter().collect();
            assert_eq!(w, m, "n={n}: the watchers of {x} are its monitors");
        }
    }
}

#[test]
fn small_mesh_everyone_watches_everyone() {
    let sim = mesh(4, 22);
    for x in 0..4u32 {
        let others: BTreeSet<u32> = (0..4).filter(|y| *y != x).collect();
        let m: BTreeSet<u32> = sim.node(x).monitors().into_iter().collect();
        let s: BTreeSet<u32> = sim.node(x).subjects().into_iter().collect();
        assert_eq!((m, s), (others.clone(), others));
    }
}

#[test]
fn crash_detection_at_10_30_100() {
    // Detection is the suspicion deadline minus the time from the victim's last beat to
    // its crash: crashes at points spread evenly over the beat interval. At N = 10 and
    // 30 the victim is restarted after each; at N = 100 the five crashes hit five
    // different members in turn (a restart there has every member publish a new record,
    // 30,000 messages and half a minute of the simulator each; restarts at N = 100 are
    // tested in sim.rs).
    let p = Config::default().probe_interval;
    for (n, trials, restart) in [(10u32, 10u32, true), (30, 10, true), (100, 5, false)] {
        let mut sim = mesh(n, 300 + u64::from(n));
        let mut times = Vec::new();
        for t in 0..trials {
            let victim = (t * 7 + 3) % n;
            sim.run_until_sends(victim);
            sim.run_for(p * (2 * t + 1) / (2 * trials) - ms(1));
            times.push(crash(&mut sim, victim));
            if restart {
                sim.restart(victim);
                sim.run_for(ms(2500));
                assert!(
                    sim.all_active(),
                    "n={n}: restarted {victim} is active again"
                );
            }
        }
        let (p50, max) = (quantile(&times, 0.5), quantile(&times, 1.0));
        eprintln!("n={n}: crash seen everywhere p50 {p50:?} max {max:?} of {times:?}");
        assert!(p50 <= ms(1500), "n={n}: p50 {p50:?} of {times:?}");
        assert!(max <= ms(2000), "n={n}: max {max:?} of {times:?}");
        assert!(max < detection_bound());
        // Not before the suspicion period: a member freezing ~1 s must survive.
        assert!(times.iter().all(|d| *d > ms(1000)), "n={n}: {times:?}");
    }
}

#[test]
fn freezes_of_one_second_are_never_unreachable_and_only_monitors_suspect() {
    let mut sim = mesh(30, 23);
    let t0 = sim.now();
    let p = Config::default().probe_interval;
    // Members freeze at different points of their beat interval, one of them together
    // with one of its monitors.
    for (i, x) in [3u32, 11, 19, 27].into_iter().enumerate() {
        sim.run_for(p * i as u32 / 4);
        sim.stall(x, ms(1000));
        if x == 11 {
            let m = sim.node(11).monitors()[0];
            sim.stall(m, ms(1000));
        }
        sim.run_for(ms(2500));
        sim.stall(x, ms(1050));
        sim.run_for(ms(2500));
    }
    let bad = sim.transitions_since(t0, |t| t.state == State::Unreachable);
    assert!(bad.is_empty(), "{:?}", &bad[..bad.len().min(5)]);
    assert!(sim.all_active());
    // Only a member's monitors look at its silence; the others never doubt it.
    for t in sim.transitions_since(t0, |t| t.state != State::Active) {
        assert!(
            sim.node(t.peer).monitors().contains(&t.observer),
            "{t:?}: not a monitor"
        );
    }
    // Detection still works afterwards.
    let d = crash(&mut sim, 19);
    assert!(d < detection_bound(), "{d:?}");
}

#[test]
fn partitions_are_seen_on_both_sides_and_heal() {
    let cfg = Config::default();
    // Members whose monitors are all across the cut get monitors on their side within an
    // interval; members whose watchers all went out of sight are taken for such members
    // that long.
    let bound = detection_bound() + cfg.probe_interval;
    let mut sim = mesh(30, 24);
    for split in [15u32, 5, 24] {
        let left: Vec<u32> = (0..split).collect();
        let right: Vec<u32> = (split..30).collect();
        let t0 = sim.now();
        sim.split(&left, &right);
        sim.run_for(bound);
        assert!(
            sim.split_seen(&left, &right),
            "split {split}: seen within {bound:?}"
        );
        let inside = sim.transitions_since(t0, |t| (t.observer < split) == (t.peer < split));
        assert!(inside.is_empty(), "split {split}: {inside:?}");
        assert!(
            sim.transitions_since(t0, |t| t.state == State::Indirect)
                .is_empty(),
            "no stale relays"
        );
        // Each side monitors itself now.
        for x in 0..30u32 {
            let side = |y: &u32| (*y < split) == (x < split);
            assert!(sim.node(x).monitors().iter().all(side), "{x}");
            assert!(watchers(&sim, x).iter().all(side), "{x}");
        }
        // Healed before the connections time out.
        sim.run_for(ms(1000));
        let t1 = sim.now();
        sim.join(&left, &right);
        sim.run_for(ms(1500));
        assert!(sim.all_active(), "split {split}: healed");
        for p in 0..30 {
            assert!(sim.all_see(p, State::Active, t1).unwrap() < ms(1000));
        }
        // Connections closed during the split come back one by one: a member may be
        // reached through another for a moment, never doubted.
        let after =
            sim.transitions_since(t1, |t| !matches!(t.state, State::Active | State::Indirect));
        assert!(
            after.is_empty(),
            "split {split}: {:?}",
            &after[..after.len().min(6)]
        );
        sim.run_for(ms(2000));
    }
    // The rings span the whole mesh again.
    for x in 0..30u32 {
        assert_eq!(watchers(&sim, x).len(), k());
    }
}

#[test]
fn a_monitor_that_leaves_or_dies_is_replaced() {
    let mut sim = mesh(30, 25);
    let x = 4;
    let before = sim.node(x).monitors();
    assert_eq!(before.len(), k());
    // A monitor leaves: left everywhere at once, and another member watches `x`.
    let gone = before[1];
    let t0 = sim.now();
    sim.leave(gone);
    sim.run_for(Config::default().probe_interval * 2);
    assert!(sim.all_see(gone, State::Left, t0).unwrap() < ms(100));
    let now = sim.node(x).monitors();
    assert_eq!(now.len(), k());
    assert!(!now.contains(&gone));
    assert!(before
        .iter()
        .filter(|m| **m != gone)
        .all(|m| now.contains(m)));
    let w = watchers(&sim, x);
    assert_eq!(
        w,
        now.iter().copied().collect(),
        "the new monitor watches {x}"
    );
    // Another monitor dies: once it is seen down, it is replaced as well.
    let dead = now[0];
    let d = crash(&mut sim, dead);
    assert!(d < detection_bound());
    sim.run_for(Config::default().probe_interval * 2);
    let after = sim.node(x).monitors();
    assert_eq!(after.len(), k());
    assert!(!after.contains(&dead) && !after.contains(&gone));
    assert_eq!(watchers(&sim, x), after.iter().copied().collect());
    assert!(sim
        .transitions_since(t0, |t| t.peer != gone && t.peer != dead)
        .is_empty());
    // And `x`'s crash is still seen everywhere in time.
    let d = crash(&mut sim, x);
    assert!(d < detection_bound(), "{d:?}");
}

#[test]
fn a_member_nobody_here_watches_follows_its_monitors() {
    // Member 0 watches neither 7 nor is watched by it: it shows 7 active on the word of
    // 7's monitors, and unreachable as soon as they report it lost, at the same moment
    // as everyone else.
    let mut sim = mesh(30, 26);
    let x = (1..30u32)
        .find(|x| !sim.node(0).monitors().contains(x) && !sim.node(0).subjects().contains(x))
        .unwrap();
    assert_eq!(sim.state(0, x), Some(State::Active));
    let t0 = sim.now();
    sim.kill(x);
    sim.run_for(ms(2500));
    let seen: Vec<Duration> = sim
        .observers_of(x)
        .iter()
        .map(|o| {
            sim.transitions_since(t0, |t| {
                t.observer == *o && t.peer == x && t.state == State::Unreachable
            })[0]
                .at
                - t0
        })
        .collect();
    let (first, last) = (quantile(&seen, 0.0), quantile(&seen, 1.0));
    assert!(last - first < ms(20), "{first:?}..{last:?}");
    // Member 0 never doubted it before: straight from active to unreachable.
    let mine = sim.transitions_since(t0, |t| t.observer == 0 && t.peer == x);
    assert_eq!(mine.len(), 1, "{mine:?}");
}

#[test]
fn a_restarted_member_is_reached_again_once_its_old_connections_are_closed() {
    // As in the daemon: a connection is closed once the core reports its peer silent for
    // the idle timeout (3 s), QUIC's own idle timeout is a minute, and the peers of a
    // restarted process keep their connections to the old one (and refuse a new one)
    // until they close them. A link nobody watched carries nothing, so its silence must
    // count from when the peer went down until the link is heard again.
    let cfg = SimConfig {
        idle_timeout: ms(60_000),
        close_silent: Some(ms(3000)),
        ..SimConfig::default()
    };
    let mut sim = Sim::full_mesh(10, cfg, 27);
    sim.run_for(ms(2500));
    assert!(sim.all_active());
    let t0 = sim.now();
    sim.kill(1);
    sim.run_for(ms(1700));
    assert!(sim.all_see(1, State::Unreachable, t0).is_some());
    sim.restart_new_process(1);
    sim.run_for(ms(5000));
    assert!(
        sim.all_active(),
        "{:?}",
        (0..10).map(|p| sim.state(1, p)).collect::<Vec<_>>()
    );
    // Idle again: the links nobody watches stay open.
    let t1 = sim.now();
    sim.run_for(ms(10_000));
    assert!(sim.transitions_since(t1, |_| true).is_empty());
}

/// Round-trip times that change (a busy machine, a transfer) are announced only where
/// they can choose a route: in a full mesh no member publishes a record for them; once a
/// link is cut (routes go through others) they are.
#[test]
fn round_trip_news_is_announced_only_where_routes_go_through_others() {
    let n = 10u32;
    let mut sim = mesh(n, 23);
    sim.run_for(ms(5000));
    let published =
        |sim: &Sim| -> u64 { (0..n).map(|o| sim.node(o).stats().records_published).sum() };
    let jumps = |sim: &mut Sim| {
        for step in 0..40u64 {
            let a = (step % u64::from(n)) as u32;
            let b = (a + 1) % n;
            let high = (step / u64::from(n)) % 2 == 0;
            sim.set_rtt(a, b, ms(if high { 20 } else { 1 }));
            sim.run_for(ms(1000));
        }
    };
    let before = published(&sim);
    jumps(&mut sim);
    assert_eq!(
        published(&sim),
        before,
        "full mesh: no record for round-trip times"
    );
    // Its connection closes after the idle timeout (whether or not the two watch each
    // other): from then on routes between them go through others.
    sim.partition(3, 7);
    sim.run_for(ms(15000));
    let before = published(&sim);
    jumps(&mut sim);
    let news = published(&sim) - before;
    println!("a link cut: {news} records for round-trip times");
    assert!(
        news >= 20,
        "a link cut: round-trip times announced ({news} records)"
    );
}
