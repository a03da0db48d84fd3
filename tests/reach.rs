//! Reach beyond the LAN (network namespaces, root or a user namespace): devices behind
//! home routers that translate addresses meet through a member with a public address and
//! then reach each other directly where the routers allow it.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::nat::*;
use common::*;
use serde_json::Value;

/// A public member `m` and devices `a`, `b`, each behind its own router.
struct World {
    nodes: Vec<Node>,
    routers: Vec<usize>,
    net: Internet,
}

fn world(tag: &str, nat_a: Nat, nat_b: Nat) -> Option<World> {
    let mut net = Internet::new(tag)?;
    let hm = net.public_host(10);
    let (ra, ha) = net.home(1, nat_a);
    let (rb, hb) = net.home(2, nat_b);
    net.delay(ra, 20);
    net.delay(rb, 20);
    let mut nodes = vec![net.node(hm, "m"), net.node(ha, "a"), net.node(hb, "b")];
    for n in nodes.iter_mut() {
        n.start();
    }
    let (m, a, b) = (&nodes[0], &nodes[1], &nodes[2]);
    for (x, y, addr) in [
        (a, m, Some("203.0.113.10:7373")),
        (b, m, Some("203.0.113.10:7373")),
        (m, a, None),
        (m, b, None),
        (a, b, None),
        (b, a, None),
    ] {
        let mut args = vec!["trust", y.id.as_str()];
        if let Some(addr) = addr {
            args.extend(["--addr", addr]);
        }
        let out = x.cli(&args);
        assert!(out.status.success(), "trust: {}", stderr(&out));
    }
    Some(World {
        nodes,
        routers: vec![ra, rb],
        net,
    })
}

fn path_kind(p: &Value) -> Option<&str> {
    p["path"]["kind"].as_str()
}

/// Waits until `n` reaches `peer` directly.
fn wait_direct(n: &Node, peer: &str, within: Duration) {
    let start = Instant::now();
    loop {
        if n
            .peer(peer)
            .is_some_and(|p| p["state"] == "active" && path_kind(&p) == Some("direct"))
        {
            return;
        }
        assert!(
            start.elapsed() < within,
            "{} did not reach {peer} directly within {within:?}: {:?}\n{}",
            n.name,
            n.peer(peer),
            n.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_cone_nats_meet_through_a_public_member_then_go_direct() {
    let Some(w) = world("rc", Nat::Cone, Nat::Cone) else {
        return;
    };
    let (m, a, b) = (&w.nodes[0], &w.nodes[1], &w.nodes[2]);
    wait_until("a and b to see m", || {
        a.peer("m").is_some_and(|p| p["state"] == "active")
            && b.peer("m").is_some_and(|p| p["state"] == "active")
    });
    // Both know their public address, as m saw it.
    let status = a.json(&["status"]);
    let cands = status["candidates"].as_array().cloned().unwrap_or_default();
    assert!(
        cands
            .iter()
            .any(|c| c["addr"].as_str().is_some_and(|s| s.starts_with("203.0.113.1:"))
                && c["kind"] == "observed"),
        "a's candidates lack its public address: {status}"
    );
    let t0 = Instant::now();
    wait_until("a to see b active", || a.peer("b").is_some_and(|p| p["state"] == "active"));
    eprintln!("ACTIVE after {:?} {:?}", t0.elapsed(), a.peer("b"));
    wait_direct(a, "b", Duration::from_secs(20));
    wait_direct(b, "a", Duration::from_secs(20));
    let p = a.peer("b").unwrap();
    assert_eq!(p["path"]["via"], Value::Null, "{p}");
    // The direct path is to b's router, not to b's private address.
    assert!(
        p["addresses"][0]
            .as_str()
            .is_some_and(|s| s.starts_with("203.0.113.2:")),
        "{p}"
    );
    let _ = m;
    let _ = w.routers.len();
    let _ = w.net.ns(0);
    let _ = (Read::bytes(&[][..]).count(), std::io::sink().flush());
}
