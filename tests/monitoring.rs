//! Monitoring on a real 10-host network (network namespaces on one bridge, root only):
//! each member beats only its 3 monitors. A member frozen for 1 s is never declared
//! unreachable, a crash is seen by every member, a partition on both sides, and a member
//! whose monitor died is still watched.

mod common;

use std::time::{Duration, Instant};

use common::lab::*;
use common::*;

/// Events logged after `t0` that show `name` in `state`: (observer, when).
fn logged(log: &EventLog, name: &str, state: &str, t0: Instant) -> Vec<(usize, Duration)> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|(t, _, v)| *t >= t0 && v["peer"]["name"] == name && v["state"] == state)
        .map(|(t, i, _)| (*i, *t - t0))
        .collect()
}

fn wait_all_see(nodes: &[Node], observers: &[usize], who: usize, state: &str) {
    for &i in observers {
        let (a, b) = (&nodes[i], &nodes[who].name);
        let t0 = Instant::now();
        while !a.peer(b).is_some_and(|p| p["state"] == state) {
            assert!(
                t0.elapsed() < DEADLINE,
                "timed out after {DEADLINE:?} waiting for {} to see {b} {state}; its peers:\n{}\nlog:\n{}",
                a.name,
                String::from_utf8_lossy(&a.cli(&["peers"]).stdout),
                a.log().lines().rev().take(30).collect::<Vec<_>>().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn a_ten_host_mesh_sees_crashes_and_partitions_and_never_a_one_second_freeze() {
    let n = 10;
    let Some(lab) = Lab::new("mon", n) else {
        return;
    };
    let mut nodes: Vec<Node> = (0..n).map(|i| lab.node(i, &format!("n{i}"))).collect();
    for node in nodes.iter_mut() {
        node.start();
    }
    lab.trust_all(&nodes);
    let all: Vec<usize> = (0..n).collect();
    for who in 0..n {
        let others: Vec<usize> = all.iter().copied().filter(|i| *i != who).collect();
        wait_all_see(&nodes, &others, who, "active");
    }
    let (log, mut monitors) = monitor_all(&nodes);
    // Let the monitors subscribe.
    std::thread::sleep(Duration::from_millis(500));

    // A freeze of 1 s (SIGSTOP, then SIGCONT): at most its monitors doubt, nobody
    // declares it unreachable.
    let frozen = 4;
    let t0 = Instant::now();
    let pid = nodes[frozen].pid().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(Duration::from_secs(1));
    assert!(std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    // Longer than the suspicion deadline after the freeze: a false alarm would show.
    std::thread::sleep(Duration::from_secs(4));
    let false_alarms: Vec<_> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _, v)| *t >= t0 && v["state"] == "unreachable")
        .map(|(_, i, v)| format!("n{i} saw {} unreachable", v["peer"]["name"]))
        .collect();
    assert!(
        false_alarms.is_empty(),
        "after a 1 s freeze: {false_alarms:?}"
    );
    let doubts = logged(&log, &nodes[frozen].name, "suspect", t0);
    println!(
        "1 s freeze of n{frozen}: {} members showed it suspect for a moment, none unreachable",
        doubts.len()
    );

    // A crash: every other member sees it, nobody else changes.
    let victim = 9;
    let t0 = Instant::now();
    nodes[victim].kill9();
    let others: Vec<usize> = (0..n).filter(|i| *i != victim).collect();
    wait_all_see(&nodes, &others, victim, "unreachable");
    let seen = logged(&log, &nodes[victim].name, "unreachable", t0);
    let latest = seen.iter().map(|(_, d)| *d).max().unwrap_or_default();
    println!(
        "kill -9 of n{victim}: unreachable on {} members, the last after {latest:?}",
        seen.len()
    );
    let collateral: Vec<_> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _, v)| *t >= t0 && v["peer"]["name"] != nodes[victim].name.as_str())
        .filter(|(_, _, v)| v["state"] == "unreachable")
        .map(|(_, i, v)| format!("n{i} saw {}", v["peer"]["name"]))
        .collect();
    assert!(collateral.is_empty(), "collateral: {collateral:?}");

    // A partition: n8 cut off the bridge, its daemon running on. Both sides see it.
    let cut = 8;
    let t0 = Instant::now();
    lab.cut(cut);
    let rest: Vec<usize> = (0..n).filter(|i| *i != cut && *i != victim).collect();
    wait_all_see(&nodes, &rest, cut, "unreachable");
    for &i in &rest {
        nodes[cut].wait_state(&nodes[i].name, "unreachable");
    }
    println!(
        "partition of n{cut}: both sides agree after {:?}",
        t0.elapsed()
    );
    // The majority still sees itself whole.
    for &who in &rest {
        let others: Vec<usize> = rest.iter().copied().filter(|i| *i != who).collect();
        wait_all_see(&nodes, &others, who, "active");
    }
    lab.heal(cut);
    let members: Vec<usize> = (0..n).filter(|i| *i != victim).collect();
    for &who in &members {
        let others: Vec<usize> = members.iter().copied().filter(|i| *i != who).collect();
        wait_all_see(&nodes, &others, who, "active");
    }

    // The dead member's subjects got other monitors: another crash is still seen.
    let second = 0;
    nodes[second].kill9();
    let others: Vec<usize> = members.iter().copied().filter(|i| *i != second).collect();
    wait_all_see(&nodes, &others, second, "unreachable");
    for m in monitors.iter_mut() {
        let _ = m.kill();
        let _ = m.wait();
    }
}
