//! What `ping`, `peers` and `pair` show on a LAN of namespaces (root only): a relayed
//! peer's address and last-seen time, removed devices not offered.

mod common;

use common::lab::*;
use common::*;
use serde_json::Value;

/// Line A — B — C: `ping` from A to C (relayed by B) does not give B's address as C's,
/// and C's last-seen time on A moves on while C is heard through B.
#[test]
fn a_relayed_peer_is_pinged_and_seen_through_its_member() {
    let Some(lab) = line_lab("v") else { return };
    let mut a = lab.node(0, "alpha");
    let mut b = lab.node(1, "beta");
    let mut c = lab.node(2, "gamma");
    for n in [&mut a, &mut b, &mut c] {
        n.start();
    }
    for x in [&a, &b, &c] {
        for y in [&a, &b, &c] {
            if x.id != y.id {
                assert!(x.cli(&["trust", &y.id]).status.success());
            }
        }
    }
    wait_until("alpha to see gamma indirect via beta", || {
        a.peer("gamma")
            .is_some_and(|p| p["state"] == "indirect" && p["via"][0] == "beta")
    });
    let beta_addrs: Vec<String> = a.peer("beta").unwrap()["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    let p = a.json(&["ping", "gamma"]);
    assert_eq!(p["via"][0], "beta", "{p}");
    let address = p["address"].as_str().unwrap();
    assert!(
        !beta_addrs.iter().any(|b| b == address),
        "ping gave beta's address {address} as gamma's: {p}"
    );
    let out = a.cli(&["ping", "gamma"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("via beta"), "{text}");
    assert!(
        !beta_addrs.iter().any(|b| text.contains(b.as_str())),
        "{text}"
    );
    // Last seen moves on while gamma stays reachable through beta.
    let seen = |n: &Node| n.peer("gamma").and_then(|p| p["last_seen"].as_u64());
    let first = seen(&a).expect("a last-seen time for an indirect peer");
    wait_until("gamma's last-seen time on alpha to move on", || {
        a.peer("gamma").is_some_and(|p| {
            p["state"] == "indirect" && p["last_seen"].as_u64().is_some_and(|t| t > first + 1)
        })
    });
}

/// The first line of `cnspr pair --json --timeout 1` on `n`.
fn pair_first(n: &Node) -> Value {
    let out = n.cli(&["--json", "pair", "--timeout", "1"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    serde_json::from_str(text.lines().next().unwrap_or("")).unwrap_or(Value::Null)
}

/// A device removed from the mesh is not offered under "Nearby devices" any more.
#[test]
fn a_removed_device_is_not_offered_as_nearby() {
    let Some(lab) = Lab::new("n", 3) else { return };
    let mut a = lab.node(0, "alpha");
    let mut b = lab.node(1, "beta");
    let mut c = lab.node(2, "gamma");
    for n in [&mut a, &mut b, &mut c] {
        n.start();
    }
    assert!(a.cli(&["trust", &b.id]).status.success());
    assert!(b.cli(&["trust", &a.id]).status.success());
    a.wait_state("beta", "active");
    // gamma (a stranger) is offered: mDNS works here.
    wait_until("alpha to offer gamma as nearby", || {
        pair_first(&a)["nearby"]
            .as_array()
            .is_some_and(|n| n.iter().any(|d| d["name"] == "gamma"))
    });
    let out = a.cli(&["remove", "beta"]);
    assert!(out.status.success(), "{}", stderr(&out));
    a.wait_state("beta", "removed");
    // beta keeps announcing itself by mDNS; alpha offers gamma but never beta.
    for _ in 0..3 {
        let first = pair_first(&a);
        let nearby = first["nearby"].as_array().cloned().unwrap_or_default();
        assert!(nearby.iter().any(|d| d["name"] == "gamma"), "{first}");
        assert!(
            !nearby.iter().any(|d| d["id"] == b.id.as_str()),
            "a removed device offered: {first}"
        );
    }
}
