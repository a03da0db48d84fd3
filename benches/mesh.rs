//! Membership benchmark on a real multi-host network: N daemons (default 10), one per
//! network namespace on one bridge (root only; skips with a reason otherwise).
//!
//! Prints, each with its ratio to the target and, when `bench/serf.sh` runs it, to Serf's
//! figures measured on the same kind of namespace mesh in the same run (passed in
//! `CNSPR_BENCH_SERF_*`):
//! - failure detection: kill -9 of a member until every other member shows it
//!   `unreachable` (p50/max over `CNSPR_BENCH_ROUNDS`, default 5). The kills are spread
//!   evenly over the victim's heartbeat interval (timed from its heartbeats leaving its
//!   host), and each prints how long after the suspicion period ran out all others saw it:
//!   what the daemons add to what the protocol itself must wait;
//! - broadcast latency: `cnspr send --all` until every other member's handler ran
//!   (p50/p90 over 20 broadcasts);
//! - graceful leave: `cnspr stop` until every other member shows it `left`;
//! - idle traffic per member (packets and bytes per second on its interface, over
//!   `CNSPR_BENCH_IDLE_S`, default 10, after `CNSPR_BENCH_SETTLE_S`, default 20), by kind:
//!   heartbeats, mDNS, other IP packets, ARP.
//!
//! Event times come from `cnspr monitor --json` on every member, read as they arrive.
//!
//! Run: `cargo bench --bench mesh`

use cnspr_lab as common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::lab::*;
use common::*;

/// Serf's figure `key` (bench/serf.sh measures Serf on the same kind of namespace mesh
/// in the same run and passes them); without it the ratio is not printed.
fn serf(key: &str) -> Option<f64> {
    std::env::var(key).ok()?.parse().ok()
}

/// ", Serf X: Yx faster" when Serf was measured in this run (`ours` and `theirs` in
/// the same unit).
fn vs_serf(key: &str, unit: &str, scale: f64, ours: f64) -> String {
    match serf(key) {
        Some(t) => format!(
            "; Serf in this run {:.1} {unit}: {:.1}x faster",
            t * scale,
            t / ours
        ),
        None => "; Serf not measured in this run (bench/serf.sh does)".into(),
    }
}

/// Waits until every node but `who` logged `who` in `state` after `t0`; returns the
/// latest of those times, measured from `t0`.
fn all_logged(log: &EventLog, nodes: &[Node], who: usize, state: &str, t0: Instant) -> Duration {
    let name = nodes[who].name.clone();
    let deadline = t0 + Duration::from_secs(30);
    loop {
        let mut worst = Duration::ZERO;
        let mut seen = 0;
        {
            let log = log.lock().unwrap();
            for i in (0..nodes.len()).filter(|&i| i != who) {
                if let Some((t, _, _)) = log.iter().find(|(t, w, v)| {
                    *w == i && *t >= t0 && v["peer"]["name"] == name && v["state"] == state
                }) {
                    seen += 1;
                    worst = worst.max(*t - t0);
                }
            }
        }
        if seen == nodes.len() - 1 {
            return worst;
        }
        assert!(
            Instant::now() < deadline,
            "only {seen} members saw {name} {state} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn wait_mesh_active(nodes: &[Node]) {
    for a in nodes {
        for b in nodes {
            if a.id != b.id {
                a.wait_state(&b.name, "active");
            }
        }
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn counters(host: &str) -> (u64, u64) {
    let read = |what: &str| -> u64 {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", host, "cat"])
            .arg(format!("/sys/class/net/eth0/statistics/{what}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (read("tx_packets"), read("tx_bytes"))
}

/// nftables counters on `host`'s output, by kind: heartbeats (42-byte UDP datagrams),
/// mDNS (UDP port 5353), everything else sent by IP (QUIC mostly). ARP is not IP.
fn count_kinds(host: &str) {
    for rule in [
        "add table ip cnsprbench",
        "add chain ip cnsprbench out { type filter hook output priority 0 ; }",
        "add rule ip cnsprbench out udp length 50 counter accept",
        "add rule ip cnsprbench out udp dport 5353 counter accept",
        "add rule ip cnsprbench out counter",
    ] {
        let ok = std::process::Command::new("ip")
            .args(["netns", "exec", host, "nft"])
            .args(rule.split(' '))
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "nft {rule}");
    }
}

fn kinds(host: &str) -> Vec<u64> {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            host,
            "nft",
            "list",
            "chain",
            "ip",
            "cnsprbench",
            "out",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == "packets")
        .map(|w| w[1].parse().unwrap())
        .collect()
}

/// Waits for `host`'s next burst of heartbeats (its nftables heartbeat counter moves, see
/// `count_kinds`). It left between the start of the reading before (which still saw the
/// old count) and the end of the one that saw it (each reading starts `nft`, a few
/// milliseconds): returns the middle of that span and half its width.
fn next_beat(host: &str) -> (Instant, Duration) {
    let first = kinds(host)[0];
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut before = Instant::now();
    loop {
        let start = Instant::now();
        let moved = kinds(host)[0] != first;
        let end = Instant::now();
        if moved {
            let half = (end - before) / 2;
            return (before + half, half);
        }
        assert!(end < deadline, "no heartbeat from {host} within 10 s");
        before = start;
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n = env_usize("CNSPR_BENCH_HOSTS", 10).clamp(3, 200);
    let rounds = env_usize("CNSPR_BENCH_ROUNDS", 5).max(1);
    let idle_s = env_usize("CNSPR_BENCH_IDLE_S", 10).max(1);
    // Quiet time before the idle reading: a new mesh signs names, gossips records and
    // probes path MTUs for its first seconds.
    let settle_s = env_usize("CNSPR_BENCH_SETTLE_S", 20);
    let Some(lab) = Lab::new("b", n) else { return };
    let names: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
    let mut nodes: Vec<Node> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut node = lab.node(i, name);
            node.rust_log = "warn".into();
            let out = node.out().display().to_string();
            node.handler("bench/b", &format!("date +%s%N >> {out}/b"));
            node
        })
        .collect();
    for node in nodes.iter_mut() {
        node.start();
    }
    lab.trust_all(&nodes);
    let t = Instant::now();
    wait_mesh_active(&nodes);
    println!(
        "mesh of {n} hosts: all {} links active {:?} after the last trust",
        n * (n - 1),
        t.elapsed()
    );
    let (log, mut monitors) = monitor_all(&nodes);
    // Idle traffic, whole mesh quiet (this also leaves the monitors seconds to subscribe
    // before the first measured event).
    std::thread::sleep(Duration::from_secs(settle_s as u64));
    for h in &lab.hosts {
        count_kinds(h);
    }
    let before: Vec<(u64, u64)> = lab.hosts.iter().map(|h| counters(h)).collect();
    std::thread::sleep(Duration::from_secs(idle_s as u64));
    let after: Vec<(u64, u64)> = lab.hosts.iter().map(|h| counters(h)).collect();
    let by_kind: Vec<Vec<u64>> = lab.hosts.iter().map(|h| kinds(h)).collect();
    let (mut pk, mut by) = (0f64, 0f64);
    for (b, a) in before.iter().zip(&after) {
        pk += (a.0 - b.0) as f64;
        by += (a.1 - b.1) as f64;
    }
    let per = (n as f64) * idle_s as f64;
    let kind = |k: usize| by_kind.iter().map(|v| v[k]).sum::<u64>() as f64 / per;
    let max_member = by_kind
        .iter()
        .zip(before.iter().zip(&after))
        .map(|(_, (b, a))| (a.0 - b.0) as f64 / idle_s as f64)
        .fold(0f64, f64::max);
    println!(
        "idle traffic per member (after {settle_s} s settling, over {idle_s} s): {:.1} \
         packets/s (max {max_member:.1}), {:.0} bytes/s sent ({} peers each): heartbeats \
         {:.2}/s, mDNS {:.2}/s, other IP {:.2}/s, the rest (ARP) {:.2}/s (target: <= 6 \
         per member at any N{})",
        pk / per,
        by / per,
        n - 1,
        kind(0),
        kind(1),
        kind(2),
        pk / per - kind(0) - kind(1) - kind(2),
        match serf("CNSPR_BENCH_SERF_IDLE") {
            Some(t) => format!(
                "; Serf in this run {t:.1} packets/s: {:.1}x",
                (pk / per) / t
            ),
            None => "; Serf not measured in this run (bench/serf.sh does)".into(),
        }
    );

    // Broadcast latency: send --all until every other member's handler wrote its time.
    let mut lat = Vec::new();
    for round in 1..=20usize {
        let t0 = now_ns();
        let out = nodes[0].cli(&["send", "--all", "bench.b"]);
        assert!(out.status.success(), "send --all: {}", stderr(&out));
        let mut worst = 0u128;
        for node in &nodes[1..] {
            let path = node.out().join("b");
            let mut last = 0u128;
            wait_until("broadcast handler", || {
                let Some(f) = file(&path) else { return false };
                let text = String::from_utf8_lossy(&f).to_string();
                let lines: Vec<&str> = text.lines().collect();
                if lines.len() < round || !text.ends_with('\n') {
                    return false;
                }
                last = lines[round - 1].trim().parse().unwrap_or(0);
                true
            });
            worst = worst.max(last.saturating_sub(t0));
        }
        lat.push(worst as f64 / 1e6);
    }
    let p50 = pct(&mut lat, 0.5);
    println!(
        "broadcast (send --all) until all {} handlers ran: p50 {p50:.1} ms, p90 {:.1} ms \
         (target < 20 ms: {:.2}x{})",
        n - 1,
        pct(&mut lat, 0.9),
        20.0 / p50,
        vs_serf("CNSPR_BENCH_SERF_EVENT_MS", "ms", 1.0, p50)
    );

    // Failure detection: kill -9, then restart and wait for the mesh to be whole again.
    let mut det = Vec::new();
    // Each kill falls at a different point of the victim's beat interval, spread evenly
    // over it (a crash comes at any moment, and detection is the suspicion period minus
    // the time since the victim's last heartbeat): the bench waits for the victim's
    // heartbeats to leave its host (nftables counter), then for that point.
    let beat = Duration::from_millis(cnspr::config::DEFAULT_PROBE_INTERVAL_MS);
    let suspicion = Duration::from_millis(cnspr::config::DEFAULT_SUSPECT_AFTER_MS);
    let mut late = Vec::new();
    for r in 0..rounds {
        let k = 1 + r % (n - 1);
        let phase = beat.mul_f64((r as f64 + 0.5) / rounds as f64);
        let (sent, within) = next_beat(&lab.hosts[k]);
        std::thread::sleep(phase.saturating_sub(sent.elapsed()));
        let t0 = Instant::now();
        nodes[k].kill9();
        let took = all_logged(&log, &nodes, k, "unreachable", t0);
        // What the protocol itself takes: the suspicion period after the last heartbeat.
        let floor = suspicion.saturating_sub(t0 - sent);
        println!(
            "  kill {}: {:.0} ms (±{:.0}) after its heartbeats, seen by all in {:.3} s \
             ({:.0} ms after the suspicion period ran out)",
            r + 1,
            (t0 - sent).as_secs_f64() * 1e3,
            within.as_secs_f64() * 1e3,
            took.as_secs_f64(),
            (took.as_secs_f64() - floor.as_secs_f64()) * 1e3
        );
        late.push((took.as_secs_f64() - floor.as_secs_f64()) * 1e3);
        det.push(took.as_secs_f64());
        nodes[k].start();
        let _ = monitors[k].kill();
        let _ = monitors[k].wait();
        monitors[k] = monitor_peers(&nodes[k], k, &log);
        wait_mesh_active(&nodes);
    }
    let p50 = pct(&mut det, 0.5);
    println!(
        "failure detection (kill -9 until all {} others show unreachable): p50 {p50:.2} s, \
         max {:.2} s over {rounds}, p50 {:.0} ms after the suspicion period (target < 1.5 s: \
         {:.2}x{})",
        n - 1,
        det.iter().cloned().fold(0.0, f64::max),
        pct(&mut late, 0.5),
        1.5 / p50,
        vs_serf("CNSPR_BENCH_SERF_DETECT_MS", "s", 1e-3, p50 * 1e3)
    );

    // Graceful leave.
    let mut lv = Vec::new();
    for r in 0..rounds {
        let k = 1 + r % (n - 1);
        let t0 = Instant::now();
        nodes[k].stop();
        lv.push(all_logged(&log, &nodes, k, "left", t0).as_secs_f64() * 1e3);
        nodes[k].start();
        let _ = monitors[k].kill();
        let _ = monitors[k].wait();
        monitors[k] = monitor_peers(&nodes[k], k, &log);
        wait_mesh_active(&nodes);
    }
    let p50 = pct(&mut lv, 0.5);
    println!(
        "graceful leave (cnspr stop until all {} others show left): p50 {p50:.1} ms, \
         max {:.1} ms (target < 100 ms: {:.2}x{})",
        n - 1,
        lv.iter().cloned().fold(0.0, f64::max),
        100.0 / p50,
        vs_serf("CNSPR_BENCH_SERF_LEAVE_MS", "s", 1e-3, p50)
    );
    for mut m in monitors {
        let _ = m.kill();
        let _ = m.wait();
    }
}
