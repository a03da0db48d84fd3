//! LAN figures on real network namespaces (root only), printed with their ratio to the
//! target of issue #4:
//!
//! - (a) `cnspr serve` started on two trusted hosts -> both see each other `active`;
//! - (b) an address change on one host -> its peer reaches it at the new address;
//! - (c) pairing end to end once the code is entered (`cnspr pair CODE`, found by mDNS);
//! - (d) multicast packets sent per minute per device in steady state (the kernel's
//!   `IpExt OutMcastPkts` counter of each host's namespace; IPv6 is off in the lab, so
//!   that is mDNS plus the rare IGMP report).
//!
//! `cargo bench --bench lan`; `CNSPR_BENCH_RUNS` (default 5) and `CNSPR_BENCH_MDNS_SECS`
//! (default 60) change the run count and the traffic window.

use cnspr_lab as common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::lab::*;
use common::*;

fn env_num(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn p50(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s[s.len() / 2]
}

fn show(v: &[Duration]) -> String {
    v.iter()
        .map(|d| format!("{:.0}", d.as_secs_f64() * 1e3))
        .collect::<Vec<_>>()
        .join(", ")
}

fn report(what: &str, runs: &[Duration], target: Duration) {
    let m = p50(runs);
    println!(
        "{what}: p50 {:.0} ms over {} runs [{} ms]; target < {:.1} s: {:.2}x",
        m.as_secs_f64() * 1e3,
        runs.len(),
        show(runs),
        target.as_secs_f64(),
        m.as_secs_f64() / target.as_secs_f64()
    );
}

/// Polls `cond` every 5 ms; the time it took, or `None` after 20 s.
fn time_until(start: Instant, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    while start.elapsed() < DEADLINE {
        if cond() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

fn active(n: &Node, peer: &str) -> bool {
    n.peer(peer).is_some_and(|p| p["state"] == "active")
}

fn count(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

/// `IpExt OutMcastPkts` of a namespace.
fn out_mcast(ns: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "cat", "/proc/net/netstat"])
        .output()
        .expect("ip netns exec");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().filter(|l| l.starts_with("IpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "OutMcastPkts")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    if !is_root() {
        println!("lan bench skipped: network namespaces need root");
        return;
    }
    let runs = env_num("CNSPR_BENCH_RUNS", 5).max(1) as usize;
    let window = Duration::from_secs(env_num("CNSPR_BENCH_MDNS_SECS", 60).max(5));
    let Some(lab) = Lab::new("b", 2 + runs) else {
        println!("lan bench skipped: cannot create network namespaces");
        return;
    };
    let mut a = lab.node(0, "alpha");
    let mut b = lab.node(1, "beta");
    a.start();
    b.start();
    assert!(a.cli(&["trust", &b.id]).status.success());
    assert!(b.cli(&["trust", &a.id]).status.success());
    a.wait_state("beta", "active");
    b.wait_state("alpha", "active");

    // (a) Both daemons stopped, then started: until each sees the other active. Each knows
    // the other's address from before and mDNS finds it too.
    let mut start_runs = Vec::new();
    for _ in 0..runs {
        a.stop();
        b.stop();
        let t0 = Instant::now();
        a.start();
        b.start();
        match time_until(t0, || active(&a, "beta") && active(&b, "alpha")) {
            Some(d) => start_runs.push(d),
            None => println!("(a) a run never reached active within {DEADLINE:?}"),
        }
    }
    if !start_runs.is_empty() {
        report(
            "(a) serve start on two trusted hosts -> both active",
            &start_runs,
            Duration::from_millis(1500),
        );
    }

    // (b) One host's address goes and another comes (break before make), back and forth:
    // until the other host's ping reaches it at the new address. First the host that
    // dialled the connection moves (it migrates), then the one that was dialled (it dials
    // back from the new address, at least the first time).
    let mut addrs = ["10.77.0.1".to_string(), "10.77.0.2".to_string()];
    for mover in [1, 0] {
        let (moving, other) = if mover == 1 { (&b, &a) } else { (&a, &b) };
        let mut change_runs = Vec::new();
        let mut modes = Vec::new();
        for _ in 0..runs {
            let cur = addrs[mover].clone();
            let next = if cur.starts_with("10.77.0.1") && cur.len() > 9 {
                format!("10.77.0.{}", mover + 1)
            } else {
                format!("10.77.0.1{}", mover + 1)
            };
            let moved_before = count(&other.log(), "the peer moved");
            let ups_before = count(&other.log(), "connection up");
            let t0 = Instant::now();
            lab.move_host(mover, &cur, &next);
            let needle = format!("\"{next}:");
            let took = time_until(t0, || {
                let r = other.cli(&["--json", "ping", &moving.name, "--timeout", "1"]);
                r.status.success() && String::from_utf8_lossy(&r.stdout).contains(&needle)
            });
            addrs[mover] = next.clone();
            let log = other.log();
            let mode = if count(&log, "the peer moved") > moved_before {
                "redial"
            } else if count(&log, "connection up") > ups_before {
                "new connection"
            } else {
                "migrated"
            };
            if mode == "new connection" {
                let why: Vec<String> = moving
                    .log()
                    .lines()
                    .filter(|l| l.contains("redial") || l.contains("vanished"))
                    .map(|l| l.to_string())
                    .collect();
                println!(
                    "    {} made a new connection: {}",
                    moving.name,
                    why.join(" | ")
                );
            }
            match took {
                Some(d) => {
                    change_runs.push(d);
                    modes.push(mode);
                }
                None => println!(
                    "(b) a run never reached {} at {next} within {DEADLINE:?}",
                    moving.name
                ),
            }
            // Let the links settle before the next change.
            wait_until("both active", || active(&a, "beta") && active(&b, "alpha"));
        }
        if !change_runs.is_empty() {
            report(
                &format!(
                    "(b) address change of {} -> its peer reaches the new address",
                    moving.name
                ),
                &change_runs,
                Duration::from_secs(2),
            );
            println!("    how each run recovered: {}", modes.join(", "));
        }
    }

    // (c) A fresh device on its own host pairs with alpha by code, window found by mDNS.
    let mut pair_runs = Vec::new();
    for k in 0..runs {
        let mut c = lab.node(2 + k, &format!("gamma{k}"));
        c.start();
        let mut window = a
            .command()
            .args(["--json", "pair", "--timeout", "60"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(window.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let first: serde_json::Value = serde_json::from_str(&first).unwrap();
        let code = first["code"].as_str().unwrap().to_string();
        let t0 = Instant::now();
        let out = c.cli(&["--json", "pair", &code, "--timeout", "20"]);
        let took = t0.elapsed();
        let _ = window.wait();
        if out.status.success() {
            pair_runs.push(took);
        } else {
            println!("(c) pairing failed: {}", stderr(&out));
        }
        c.stop();
    }
    if !pair_runs.is_empty() {
        report(
            "(c) pairing end to end once the code is entered",
            &pair_runs,
            Duration::from_secs(1),
        );
    }

    // (d) Steady state: alpha and beta connected and idle.
    std::thread::sleep(Duration::from_secs(10));
    let before: Vec<u64> = lab.hosts[..2].iter().map(|h| out_mcast(h)).collect();
    std::thread::sleep(window);
    let after: Vec<u64> = lab.hosts[..2].iter().map(|h| out_mcast(h)).collect();
    let per_min: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(x, y)| (y - x) as f64 * 60.0 / window.as_secs_f64())
        .collect();
    let mean = per_min.iter().sum::<f64>() / per_min.len() as f64;
    println!(
        "(d) multicast packets sent per device in steady state: {mean:.1}/min (alpha {:.1}, beta {:.1}; over {} s); target a few per minute (5): {:.2}x",
        per_min[0],
        per_min[1],
        window.as_secs(),
        mean / 5.0
    );
}
