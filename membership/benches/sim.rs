//! Membership figures from the seeded simulator (1 ms one-way link latency), each with
//! its ratio to the target or to the Serf reference measured on a namespace mesh.
//! Run: `cargo bench -p membership --bench sim`.

use std::time::Duration;

use membership::sim::{quantile, Sim, SimConfig};
use membership::State;

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
    println!("{name:<48} {value:>14}   {ratio}");
}

fn detection(n: u32, trials: u64) -> Vec<Duration> {
    let mut sim = mesh(n, 1000 + u64::from(n));
    let mut out = Vec::new();
    // A crash comes at any point of the victim's beat interval, and detection is the
    // suspicion period minus the time since the victim's last heartbeat: the waits
    // before the crashes are spread over an interval (a fixed pseudo-random sequence).
    let p = membership::Config::default().probe_interval;
    for t in 0..trials {
        let victim = (t as u32 * 7 + 3) % n;
        let spread = (t.wrapping_mul(2_654_435_761) >> 7) % 1000;
        sim.run_for(ms(113) + p * spread as u32 / 1000);
        let t0 = sim.now();
        sim.kill(victim);
        sim.run_for(ms(3000));
        out.push(
            sim.all_see(victim, State::Unreachable, t0)
                .expect("crash seen everywhere"),
        );
        sim.restart(victim);
        sim.run_for(ms(2000));
    }
    out
}

fn main() {
    println!("membership simulator figures (default LAN config, 1 ms one-way latency)\n");
    for (n, trials) in [(10u32, 40u64), (100, 8)] {
        let d = detection(n, trials);
        let (p50, p90) = (quantile(&d, 0.5), quantile(&d, 0.9));
        line(
            &format!("crash -> unreachable everywhere, N={n}: p50"),
            format!("{:.3} s", secs(p50)),
            format!(
                "target 1.5 s: {:.2}x; Serf ~5.5 s: {:.2}x",
                secs(p50) / 1.5,
                secs(p50) / 5.5
            ),
        );
        line(
            &format!("crash -> unreachable everywhere, N={n}: p90"),
            format!("{:.3} s", secs(p90)),
            String::new(),
        );
    }

    let mut sim = mesh(100, 7);
    // Idle traffic.
    let (m0, b0) = (sim.stats.messages, sim.stats.bytes);
    sim.run_for(ms(10_000));
    let msgs = (sim.stats.messages - m0) as f64 / 100.0 / 10.0;
    let bytes = (sim.stats.bytes - b0) as f64 / 100.0 / 10.0;
    line(
        "idle, N=100: messages sent per member per s",
        format!("{msgs:.1}"),
        format!("= {:.2} per direct link", msgs / 99.0),
    );
    line(
        "idle, N=100: payload bytes sent per member per s",
        format!("{bytes:.0} B"),
        String::new(),
    );

    // Broadcasts.
    let mut lat = Vec::new();
    let mut tx = Vec::new();
    for i in 0..30u32 {
        let id = sim.broadcast((i * 17) % 100, vec![0; 100]);
        sim.run_for(ms(100));
        lat.push(sim.broadcast_latency(id).expect("delivered everywhere"));
        tx.push(sim.stats.event_tx[&id]);
    }
    let p50 = quantile(&lat, 0.5);
    line(
        "broadcast delivered everywhere, N=100: p50",
        format!("{:.1} ms", p50.as_secs_f64() * 1e3),
        format!(
            "target 20 ms: {:.2}x; Serf 90 ms: {:.2}x",
            secs(p50) / 0.020,
            secs(p50) / 0.090
        ),
    );
    let avg_tx = tx.iter().sum::<u64>() as f64 / tx.len() as f64;
    line(
        "messages per broadcast, N=100",
        format!("{avg_tx:.1}"),
        format!("N-1 = 99: {:.2}x", avg_tx / 99.0),
    );

    // Leave.
    let mut leave = Vec::new();
    for v in [11u32, 23, 35, 47, 59] {
        let t0 = sim.now();
        sim.leave(v);
        sim.run_for(ms(500));
        leave.push(sim.all_see(v, State::Left, t0).expect("left everywhere"));
        sim.restart(v);
        sim.run_for(ms(1500));
    }
    let p50 = quantile(&leave, 0.5);
    line(
        "leave -> left everywhere, N=100: p50",
        format!("{:.1} ms", p50.as_secs_f64() * 1e3),
        format!(
            "target 100 ms: {:.2}x; Serf ~0.7 s: {:.3}x",
            secs(p50) / 0.1,
            secs(p50) / 0.7
        ),
    );

    // Growth with N.
    println!();
    for n in [10u32, 30, 100] {
        let mut sim = if n == 100 {
            sim_take(&mut sim)
        } else {
            mesh(n, 5)
        };
        let m0 = sim.stats.messages;
        sim.run_for(ms(4000));
        let idle = (sim.stats.messages - m0) as f64 / f64::from(n) / 4.0;
        let id = sim.broadcast(1, vec![1; 10]);
        sim.run_for(ms(100));
        line(
            &format!("N={n}: msgs per broadcast / idle msgs per member per s"),
            format!("{} / {idle:.1}", sim.stats.event_tx[&id]),
            format!("(N-1 = {})", n - 1),
        );
    }
}

fn sim_take(sim: &mut Sim) -> Sim {
    std::mem::replace(sim, Sim::full_mesh(1, SimConfig::default(), 0))
}
