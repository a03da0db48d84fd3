//! Membership figures from the seeded simulator (1 ms one-way link latency) at N = 10,
//! 30 and 100, each with its ratio to the target or to the Serf reference measured on a
//! namespace mesh. Run: `cargo bench -p membership --bench sim`.

use std::time::Duration;

use membership::sim::{quantile, Sim, SimConfig};
use membership::{Config, State};

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn mesh(n: u32, seed: u64) -> Sim {
    let mut sim = Sim::full_mesh(n, SimConfig::default(), seed);
    sim.run_for(ms(2500));
    assert!(sim.all_active(), "mesh of {n} converged");
    sim
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn line(name: &str, value: String, ratio: String) {
    println!("{name:<52} {value:>16}   {ratio}");
}

/// Crash -> unreachable everywhere: a crash comes at any point of the victim's beat
/// interval (detection is the suspicion deadline minus the time since its last beat):
/// the crashes fall at pseudo-random points after a beat; the victim is restarted after
/// each.
fn detection(sim: &mut Sim, trials: u64) -> Vec<Duration> {
    let n = sim.len();
    let p = Config::default().probe_interval;
    let mut out = Vec::new();
    for t in 0..trials {
        let victim = (t as u32 * 7 + 3) % n;
        sim.run_until_sends(victim);
        let spread = (t.wrapping_mul(2_654_435_761) >> 7) % 1000;
        sim.run_for(p * spread as u32 / 1000);
        let t0 = sim.now();
        sim.kill(victim);
        sim.run_for(ms(2500));
        out.push(
            sim.all_see(victim, State::Unreachable, t0)
                .expect("crash seen everywhere"),
        );
        sim.restart(victim);
        sim.run_for(ms(2500));
    }
    out
}

fn figures(n: u32, crashes: u64) {
    println!("N = {n}");
    let mut sim = mesh(n, 7 + u64::from(n));

    // Idle traffic.
    let before = sim.stats.clone();
    sim.run_for(ms(10_000));
    let rates: Vec<f64> = sim
        .stats
        .sent
        .iter()
        .zip(&before.sent)
        .map(|(a, b)| (a.0 - b.0) as f64 / 10.0)
        .collect();
    let avg = rates.iter().sum::<f64>() / f64::from(n);
    let max = rates.iter().copied().fold(0.0, f64::max);
    let bytes = (sim.stats.bytes - before.bytes) as f64 / f64::from(n) / 10.0;
    line(
        "  idle: messages sent per member per s, avg / max",
        format!("{avg:.2} / {max:.2}"),
        format!(
            "target <= 6: {:.2}x; all-pairs 2(N-1) = {}: {:.3}x",
            max / 6.0,
            2 * (n - 1),
            avg / f64::from(2 * (n - 1))
        ),
    );
    line(
        "  idle: bytes sent per member per s",
        format!("{bytes:.0} B"),
        String::new(),
    );

    // Crashes.
    let d = detection(&mut sim, crashes);
    let (p50, p90, max) = (quantile(&d, 0.5), quantile(&d, 0.9), quantile(&d, 1.0));
    line(
        &format!("  crash -> unreachable everywhere, p50 ({crashes} crashes)"),
        format!("{:.3} s", secs(p50)),
        format!(
            "target 1.5 s: {:.2}x; Serf ~5.5 s: {:.2}x",
            secs(p50) / 1.5,
            secs(p50) / 5.5
        ),
    );
    line(
        "  crash -> unreachable everywhere, p90 / max",
        format!("{:.3} / {:.3} s", secs(p90), secs(max)),
        format!("target p99 2 s: {:.2}x", secs(max) / 2.0),
    );

    // Freezes of 1 s and 1.05 s at points spread over the interval.
    let t0 = sim.now();
    let p = Config::default().probe_interval;
    for i in 0..8u32 {
        let x = (i * 11 + 5) % n;
        sim.run_until_sends(x);
        sim.run_for(p * i / 8);
        sim.stall(x, if i % 2 == 0 { ms(1000) } else { ms(1050) });
        sim.run_for(ms(2500));
    }
    let unreachable = sim
        .transitions_since(t0, |t| t.state == State::Unreachable)
        .len();
    let doubted = sim
        .transitions_since(t0, |t| t.state != State::Active)
        .iter()
        .map(|t| (t.observer, t.peer))
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    line(
        "  8 freezes of 1-1.05 s: unreachable / pairs not active",
        format!("{unreachable} / {doubted}"),
        "target 0 unreachable".into(),
    );

    // Broadcasts.
    let mut lat = Vec::new();
    let mut tx = Vec::new();
    for i in 0..20u32 {
        let id = sim.broadcast((i * 17) % n, vec![0; 100]);
        sim.run_for(ms(100));
        lat.push(sim.broadcast_latency(id).expect("delivered everywhere"));
        tx.push(sim.stats.event_tx[&id]);
    }
    let p50 = quantile(&lat, 0.5);
    let avg_tx = tx.iter().sum::<u64>() as f64 / tx.len() as f64;
    line(
        "  broadcast delivered everywhere, p50 / messages",
        format!("{:.1} ms / {avg_tx:.1}", p50.as_secs_f64() * 1e3),
        format!("target 20 ms: {:.2}x; N-1 = {}", secs(p50) / 0.020, n - 1),
    );

    // Leave.
    let mut leave = Vec::new();
    for i in 0..5u32 {
        let v = (i * 13 + 2) % n;
        let t0 = sim.now();
        sim.leave(v);
        sim.run_for(ms(500));
        leave.push(sim.all_see(v, State::Left, t0).expect("left everywhere"));
        sim.restart(v);
        sim.run_for(ms(2500));
    }
    let p50 = quantile(&leave, 0.5);
    line(
        "  leave -> left everywhere, p50",
        format!("{:.1} ms", p50.as_secs_f64() * 1e3),
        format!("target 100 ms: {:.2}x; Serf ~0.7 s", secs(p50) / 0.1),
    );

    // A partition in halves, seen on both sides.
    let left: Vec<u32> = (0..n / 2).collect();
    let right: Vec<u32> = (n / 2..n).collect();
    sim.run_for(ms(1000));
    let t0 = sim.now();
    sim.split(&left, &right);
    let mut seen = None;
    for step in 1..=60u32 {
        sim.run_until(t0 + ms(50) * step);
        let across = |a: &[u32], b: &[u32]| {
            a.iter().all(|&o| {
                b.iter()
                    .all(|&q| sim.state(o, q) == Some(State::Unreachable))
            })
        };
        if across(&left, &right) && across(&right, &left) {
            seen = Some(sim.now() - t0);
            break;
        }
    }
    let inside = sim
        .transitions_since(t0, |t| (t.observer < n / 2) == (t.peer < n / 2))
        .len();
    line(
        "  partition in halves: seen on both sides (50 ms steps)",
        seen.map_or("no".into(), |d| format!("{:.2} s", secs(d))),
        format!("{inside} state changes within a side"),
    );
    println!();
}

fn main() {
    println!("membership simulator figures (default LAN config, 1 ms one-way latency)\n");
    figures(10, 40);
    figures(30, 20);
    figures(100, 10);
}
