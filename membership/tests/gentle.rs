//! Gentle members (a device on battery) in the simulator (seeded, virtual time): one
//! beat per `gentle_interval` and nothing else while idle, shown `active` meanwhile,
//! absence seen within a minute, monitors that fail replaced, back to the LAN profile
//! when plugged in.

use std::time::Duration;

use membership::sim::{Sim, SimConfig};
use membership::{Config, State};

fn secs(v: u64) -> Duration {
    Duration::from_secs(v)
}

/// Links without keep-alive or QUIC idle timeout (a private path): a connection closes
/// only when the daemon finds its peer silent.
fn mesh(n: u32, seed: u64) -> Sim {
    let cfg = SimConfig {
        idle_timeout: Duration::from_secs(3600),
        ..SimConfig::default()
    };
    let mut sim = Sim::full_mesh(n, cfg, seed);
    sim.run_for(secs(3));
    assert!(sim.all_active(), "mesh of {n} converges to all active");
    sim
}

/// `g`'s sends, receptions and wake-ups over `d`, with every member seeing every other
/// `active` all along.
fn idle(sim: &mut Sim, g: u32, d: Duration) -> (u64, u64, u64) {
    let before = sim.stats.clone();
    let t0 = sim.now();
    sim.run_for(d);
    let moves = sim.transitions_since(t0, |_| true);
    assert!(moves.is_empty(), "state changes while idle: {moves:?}");
    assert!(sim.all_active());
    let i = g as usize;
    (
        sim.stats.sent[i].0 - before.sent[i].0,
        sim.stats.received[i] - before.received[i],
        sim.stats.wakeups[i] - before.wakeups[i],
    )
}

#[test]
fn a_gentle_member_sends_one_beat_per_interval_and_wakes_only_for_it() {
    let gi = Config::default().gentle_interval;
    for n in [3u32, 10, 30, 100] {
        let mut sim = mesh(n, 7);
        let g = n - 1;
        sim.set_gentle(g, true);
        // The switch: a new record, the monitors settle.
        sim.run_for(secs(60));
        assert!(sim.node(g).is_gentle());
        assert_eq!(sim.node(g).monitors().len(), 1, "n={n}: one monitor");
        assert!(sim.node(g).subjects().is_empty(), "n={n}: watches nobody");
        let window = secs(200);
        let (sent, received, wakeups) = idle(&mut sim, g, window);
        let intervals = (window.as_secs_f64() / gi.as_secs_f64()).ceil() as u64;
        assert!(
            sent <= intervals,
            "n={n}: {sent} sent in {window:?} (one per {gi:?} is {intervals})"
        );
        assert!(sent >= intervals - 1, "n={n}: it still beats ({sent})");
        assert_eq!(received, 0, "n={n}: nothing comes to it while idle");
        assert!(
            wakeups <= intervals + 1,
            "n={n}: {wakeups} wake-ups in {window:?}"
        );
        // The others are watched as before: its monitor does not count its silence.
        for o in 0..n - 1 {
            assert_eq!(sim.state(o, g), Some(State::Active), "n={n}: {o} sees it");
        }
    }
}

#[test]
fn a_gentle_member_s_absence_is_seen_within_a_minute_and_not_before_its_allowance() {
    let cfg = Config::default();
    for (n, seed) in [(10u32, 3u64), (30, 4), (100, 5)] {
        let mut sim = mesh(n, seed);
        let g = 1;
        sim.set_gentle(g, true);
        sim.run_for(secs(50));
        let t0 = sim.now();
        sim.kill(g);
        sim.run_for(secs(61));
        let d = sim
            .all_see(g, State::Unreachable, t0)
            .expect("everyone sees the gentle member gone");
        assert!(d <= secs(60), "n={n}: seen after {d:?}");
        // Its monitor waits out the allowance from its last beat (up to an interval
        // before the kill).
        assert!(
            d + cfg.gentle_interval >= cfg.gentle_unreachable_after,
            "n={n}: seen after only {d:?}"
        );
        let others = sim.transitions_since(t0, |t| t.peer != g);
        assert!(others.is_empty(), "collateral transitions: {others:?}");
    }
}

#[test]
fn a_gentle_member_whose_monitor_dies_gets_another_and_stays_active() {
    let mut sim = mesh(10, 11);
    let g = 4;
    sim.set_gentle(g, true);
    sim.run_for(secs(60));
    let m = sim.node(g).monitors()[0];
    let t0 = sim.now();
    sim.kill(m);
    sim.run_for(secs(120));
    assert!(sim.all_see(m, State::Unreachable, t0).is_some());
    for o in (0..10).filter(|o| *o != g && *o != m) {
        let moved = sim.transitions_since(t0, |t| t.peer == g && t.observer == o);
        assert!(moved.is_empty(), "{o} changed its view of {g}: {moved:?}");
        assert_eq!(sim.state(o, g), Some(State::Active));
    }
    let now_m = sim.node(g).monitors();
    assert_eq!(now_m.len(), 1);
    assert_ne!(now_m[0], m, "a new monitor");
    // And the new monitor does watch it: its absence is still seen.
    let t1 = sim.now();
    sim.kill(g);
    sim.run_for(secs(61));
    assert!(sim.all_see(g, State::Unreachable, t1).is_some());
}

#[test]
fn plugged_in_again_a_member_is_watched_closely_again() {
    let cfg = Config::default();
    let mut sim = mesh(10, 13);
    let g = 2;
    sim.set_gentle(g, true);
    sim.run_for(secs(60));
    sim.set_gentle(g, false);
    sim.run_for(secs(5));
    assert_eq!(sim.node(g).monitors().len(), cfg.monitors);
    let before = sim.stats.clone();
    sim.run_for(secs(10));
    let sent = sim.stats.sent[g as usize].0 - before.sent[g as usize].0;
    // One beat per monitor and interval (within one per monitor at the window's edges).
    let expected = cfg.monitors as f64 * 10.0 / cfg.probe_interval.as_secs_f64();
    assert!(
        (sent as f64 - expected).abs() <= cfg.monitors as f64,
        "beats its {} monitors again: {sent} in 10 s",
        cfg.monitors
    );
    let t0 = sim.now();
    sim.kill(g);
    sim.run_for(secs(3));
    let d = sim.all_see(g, State::Unreachable, t0).expect("seen");
    assert!(
        d <= cfg.unreachable_after + Duration::from_millis(100),
        "{d:?}"
    );
}

#[test]
fn a_mesh_of_gentle_members_still_watches_itself() {
    let mut sim = mesh(3, 17);
    for g in 0..3 {
        sim.set_gentle(g, true);
    }
    sim.run_for(secs(60));
    let (sent, _, _) = idle(&mut sim, 0, secs(200));
    assert!(sent <= 11, "{sent} sent in 200 s");
    let t0 = sim.now();
    sim.kill(2);
    sim.run_for(secs(61));
    assert!(sim.all_see(2, State::Unreachable, t0).is_some());
}

#[test]
fn others_round_trip_news_waits_for_the_gentle_member_s_own_beat() {
    let gi = Config::default().gentle_interval;
    let n = 10u32;
    let mut sim = mesh(n, 17);
    let g = n - 1;
    sim.set_gentle(g, true);
    // One link cut: routes go through others, so round-trip times are announced (in a
    // full mesh they decide no route and are not).
    sim.partition(0, 5);
    sim.run_for(secs(60));
    let before = sim.stats.clone();
    let applied = sim.node(g).stats().records_applied;
    let published =
        |sim: &Sim| -> u64 { (0..g).map(|o| sim.node(o).stats().records_published).sum() };
    let published0 = published(&sim);
    // On a busy machine the others' round-trip times jump about: each jump (over 2 ms
    // and a quarter) is re-announced in a new record.
    let window = secs(200);
    let steps = 100u32;
    for step in 0..steps {
        let a = step % g;
        let b = (a + 1) % g;
        let rtt = Duration::from_millis(if step % 2 == 0 { 20 } else { 1 });
        sim.set_rtt(a, b, rtt);
        sim.run_for(window / steps);
    }
    let i = g as usize;
    let sent = sim.stats.sent[i].0 - before.sent[i].0;
    let received = sim.stats.received[i] - before.received[i];
    let wakeups = sim.stats.wakeups[i] - before.wakeups[i];
    let intervals = (window.as_secs_f64() / gi.as_secs_f64()).ceil() as u64;
    let news = published(&sim) - published0;
    assert!(news >= 50, "the others re-announced ({news} records)");
    println!(
        "gentle member, others re-announcing: {sent} sent, {received} received, \
         {wakeups} wake-ups in {window:?} ({intervals} beats, {news} records published)"
    );
    // Each of its beats carries the anti-entropy digest: when it differs, its monitor
    // answers with its own, the gentle member with its (2 sent per beat), and the monitor
    // sends what it lacks (2 received): one exchange within a round trip of the beat,
    // instead of a wake-up for every record published.
    assert!(sent <= 2 * intervals, "{sent} sent in {window:?}");
    assert!(
        received <= 2 * intervals,
        "{received} received in {window:?}"
    );
    assert!(
        wakeups <= 4 * intervals + 1,
        "{wakeups} wake-ups in {window:?}"
    );
    // It does catch up, at its beats.
    let caught_up = sim.node(g).stats().records_applied - applied;
    assert!(
        caught_up >= intervals / 2,
        "{caught_up} records applied in {window:?}"
    );
}
