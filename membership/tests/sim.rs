//! Simulator scenarios (seeded, deterministic, virtual time).

use std::time::Duration;

use membership::sim::{quantile, Sim, SimConfig};
use membership::State;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn mesh(n: u32, seed: u64) -> Sim {
    let mut sim = Sim::full_mesh(n, SimConfig::default(), seed);
    sim.run_for(ms(2000));
    assert!(sim.all_active(), "mesh of {n} converges to all active");
    sim
}

/// Kill one member at a random phase; time until every other member shows it unreachable.
fn crash_detection(sim: &mut Sim, victim: u32) -> Duration {
    let t0 = sim.now();
    sim.kill(victim);
    sim.run_for(ms(3000));
    let d = sim.all_see(victim, State::Unreachable, t0).expect("everyone sees the crash");
    // Nobody else was suspected on the way.
    let others = sim.transitions_since(t0, |t| t.peer != victim && t.state != State::Active);
    assert!(others.is_empty(), "collateral transitions: {others:?}");
    d
}

#[test]
fn mesh_of_100_converges_and_idles_quietly() {
    let mut sim = mesh(100, 1);
    let before = sim.stats.clone();
    sim.run_for(ms(10_000));
    assert!(sim.all_active());
    let msgs = sim.stats.messages - before.messages;
    let per_member_per_s = msgs as f64 / 100.0 / 10.0;
    // One ping or ack per link and probe interval (250 ms), plus one digest per second.
    assert!(per_member_per_s < 99.0 * 4.0 * 1.1 + 2.0, "idle {per_member_per_s} msgs/member/s");
    let transitions = sim.transitions_since(ms(2000), |_| true);
    assert!(transitions.is_empty(), "idle mesh changes state: {:?}", &transitions[..transitions.len().min(5)]);
}

#[test]
fn crash_is_detected_everywhere_within_target() {
    let mut times = Vec::new();
    for seed in 0..6u64 {
        let mut sim = mesh(30, 100 + seed);
        sim.run_for(ms(seed * 37));
        times.push(crash_detection(&mut sim, (seed as u32 * 7) % 30));
    }
    let p50 = quantile(&times, 0.5);
    assert!(p50 < ms(1500), "p50 {p50:?} of {times:?}");
    // Not before the suspicion period: a member stalling ~1 s must survive.
    assert!(times.iter().all(|t| *t > ms(1000)), "{times:?}");
}

#[test]
fn crash_in_mesh_of_100() {
    let mut sim = mesh(100, 7);
    let d = crash_detection(&mut sim, 42);
    assert!(d < ms(1500), "{d:?}");
    // Restart with a new incarnation: active everywhere again.
    let t1 = sim.now();
    sim.restart(42);
    sim.run_for(ms(1500));
    assert!(sim.all_active(), "restarted member is active again");
    assert!(sim.all_see(42, State::Active, t1).unwrap() < ms(1000));
}
