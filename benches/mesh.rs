//! Membership benchmark on a real multi-host network: N daemons (default 10), one per
//! network namespace on one bridge (root only; skips with a reason otherwise).
//!
//! Prints, each with its ratio to the target and to Serf's figures measured on the same
//! kind of namespace mesh (`bench/serf.sh` runs Serf itself when it is installed):
//! - failure detection: kill -9 of a member until every other member shows it
//!   `unreachable` (p50/max over `CNSPR_BENCH_ROUNDS`, default 5);
//! - broadcast latency: `cnspr send --all` until every other member's handler ran
//!   (p50/p90 over 20 broadcasts);
//! - graceful leave: `cnspr stop` until every other member shows it `left`;
//! - idle traffic per member (packets and bytes per second on its interface, over
//!   `CNSPR_BENCH_IDLE_S`, default 10).
//!
//! Event times come from `cnspr monitor --json` on every member, read as they arrive.
//!
//! Run: `cargo bench --bench mesh`

use cnspr_lab as common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::lab::*;
use common::*;
use serde_json::Value;

/// Serf on the same kind of namespace mesh (see bench/serf.sh).
const SERF_DETECT_S: f64 = 5.5;
const SERF_EVENT_MS: f64 = 90.0;
const SERF_LEAVE_S: f64 = 0.7;

type Log = Arc<Mutex<Vec<(Instant, usize, Value)>>>;

/// `cnspr monitor --json --event peer` of node `i`, its lines stamped on arrival.
fn monitor(node: &Node, i: usize, log: &Log) -> Child {
    let mut child = node
        .command()
        .args(["--json", "monitor", "--event", "peer"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let log = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                log.lock().unwrap().push((Instant::now(), i, v));
            }
        }
    });
    child
}

/// Waits until every node but `who` logged `who` in `state` after `t0`; returns the
/// latest of those times, measured from `t0`.
fn all_logged(log: &Log, nodes: &[Node], who: usize, state: &str, t0: Instant) -> Duration {
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
    let log: Log = Arc::default();
    let mut monitors: Vec<Child> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| monitor(node, i, &log))
        .collect();
    // Idle traffic, whole mesh quiet (this also leaves the monitors seconds to subscribe
    // before the first measured event).
    let before: Vec<(u64, u64)> = lab.hosts.iter().map(|h| counters(h)).collect();
    std::thread::sleep(Duration::from_secs(idle_s as u64));
    let after: Vec<(u64, u64)> = lab.hosts.iter().map(|h| counters(h)).collect();
    let (mut pk, mut by) = (0f64, 0f64);
    for (b, a) in before.iter().zip(&after) {
        pk += (a.0 - b.0) as f64;
        by += (a.1 - b.1) as f64;
    }
    let per = (n as f64) * idle_s as f64;
    println!(
        "idle traffic per member: {:.1} packets/s, {:.0} bytes/s sent ({} peers each)",
        pk / per,
        by / per,
        n - 1
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
         (target < 20 ms: {:.2}x; Serf {SERF_EVENT_MS} ms: {:.1}x faster)",
        n - 1,
        pct(&mut lat, 0.9),
        20.0 / p50,
        SERF_EVENT_MS / p50
    );

    // Failure detection: kill -9, then restart and wait for the mesh to be whole again.
    let mut det = Vec::new();
    for r in 0..rounds {
        let k = 1 + r % (n - 1);
        let t0 = Instant::now();
        nodes[k].kill9();
        det.push(all_logged(&log, &nodes, k, "unreachable", t0).as_secs_f64());
        nodes[k].start();
        let _ = monitors[k].kill();
        let _ = monitors[k].wait();
        monitors[k] = monitor(&nodes[k], k, &log);
        wait_mesh_active(&nodes);
    }
    let p50 = pct(&mut det, 0.5);
    println!(
        "failure detection (kill -9 until all {} others show unreachable): p50 {p50:.2} s, \
         max {:.2} s over {rounds} (target < 1.5 s: {:.2}x; Serf {SERF_DETECT_S} s: {:.1}x faster)",
        n - 1,
        det.iter().cloned().fold(0.0, f64::max),
        1.5 / p50,
        SERF_DETECT_S / p50
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
        monitors[k] = monitor(&nodes[k], k, &log);
        wait_mesh_active(&nodes);
    }
    let p50 = pct(&mut lv, 0.5);
    println!(
        "graceful leave (cnspr stop until all {} others show left): p50 {p50:.1} ms, \
         max {:.1} ms (target < 100 ms: {:.2}x; Serf {SERF_LEAVE_S} s: {:.1}x faster)",
        n - 1,
        lv.iter().cloned().fold(0.0, f64::max),
        100.0 / p50,
        SERF_LEAVE_S * 1e3 / p50
    );
    for mut m in monitors {
        let _ = m.kill();
        let _ = m.wait();
    }
}
