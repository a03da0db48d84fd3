//! A removed device stays removed whatever state file lags: the roster is the one source
//! of membership, and a restored `peers.json` (or `roster.json`) from before the removal
//! never lets the removed device back in.

mod common;

use common::{mesh, stderr, wait_until};

/// alpha removes beta, stops, gets `file` back from before the removal, restarts: beta
/// is refused (its messages fail, alpha never runs a handler for it, its writes never
/// reach alpha's store) and alpha shows it `removed`.
fn restored_file_keeps_removed_device_out(file: &str) {
    let mut nodes = mesh(&["alpha", "beta"], "");
    nodes[0].handler("probe.sh", "#!/bin/sh\ntouch \"$0.ran\"\n");
    nodes[0].stop();
    let before = std::fs::read(nodes[0].path(&format!("state/{file}"))).unwrap();
    nodes[0].start();
    nodes[0].wait_state("beta", "active");
    let out = nodes[0].cli(&["remove", "beta"]);
    assert!(out.status.success(), "{}", stderr(&out));
    nodes[0].wait_state("beta", "removed");
    nodes[0].stop();
    std::fs::write(nodes[0].path(&format!("state/{file}")), before).unwrap();
    nodes[0].start();
    nodes[0].wait_state("beta", "removed");
    // beta tries for itself: a message to alpha and a write that sync would carry.
    let o = nodes[1].cli(&["kv", "put", "stolen", "data"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = nodes[1].cli(&["send", "alpha", "probe", "x", "--timeout", "3"]);
    assert!(
        !o.status.success(),
        "a removed device delivered a message after alpha restarted with an old {file}"
    );
    assert!(!nodes[0].path("handlers/probe.sh.ran").exists());
    // Once beta has dialled the restarted alpha (it did, for the send), alpha has not
    // taken its write either.
    let o = nodes[0].cli(&["kv", "get", "stolen"]);
    assert!(!o.status.success(), "beta's write reached alpha's store");
    let peers = nodes[0].json(&["peers"]);
    let beta = peers
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["id"] == nodes[1].id.as_str())
        .collect::<Vec<_>>();
    assert_eq!(beta.len(), 1, "{peers}");
    assert_eq!(beta[0]["state"], "removed", "{peers}");
    wait_until("beta to see alpha not active", || {
        nodes[1]
            .peer("alpha")
            .is_some_and(|p| p["state"] != "active")
    });
}

#[test]
fn restored_peers_file_keeps_a_removed_device_out() {
    restored_file_keeps_removed_device_out("peers.json");
}

#[test]
fn restored_roster_file_keeps_a_removed_device_out() {
    restored_file_keeps_removed_device_out("roster.json");
}

/// Every other file of the state directory, each restored on its own.
#[test]
fn any_other_restored_state_file_keeps_a_removed_device_out() {
    let probe = mesh(&["probe"], "");
    let mut files: Vec<String> = std::fs::read_dir(probe[0].path("state"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f != "peers.json" && f != "roster.json")
        .collect();
    drop(probe);
    files.sort();
    assert!(files.iter().any(|f| f == "store.redb"), "{files:?}");
    for f in files {
        eprintln!("restoring {f}");
        restored_file_keeps_removed_device_out(&f);
    }
}

/// The sequence of the report: desk, laptop and phone trust each other (the phone signs
/// the laptop's entry last, so the entry everyone keeps for the laptop is the phone's);
/// desk removes the phone, and a new phone (a fresh identity) is trusted by desk alone.
/// It learns the laptop from desk's roster and reaches it: the laptop's membership did not
/// go with the phone that had signed for it.
#[test]
fn removing_a_device_keeps_the_members_it_had_signed_for() {
    let nodes = mesh(&["desk", "laptop", "phone"], "");
    let (desk, laptop) = (&nodes[0], &nodes[1]);
    let out = desk.cli(&["remove", "phone"]);
    assert!(out.status.success(), "{}", stderr(&out));
    desk.wait_state("phone", "removed");
    laptop.wait_state("phone", "removed");
    let mut phone = common::Node::new("phone", "");
    phone.start();
    desk.trust(&phone);
    phone.trust(desk);
    phone.wait_state("desk", "active");
    phone.wait_state("laptop", "active");
    // The old phone keeps its `removed` row: look the new one up by its ID.
    wait_until("the laptop to see the new phone active", || {
        laptop
            .json(&["peers"])
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == phone.id.as_str() && p["state"] == "active")
    });
    let o = phone.cli(&["ping", "laptop", "--timeout", "5"]);
    assert!(o.status.success(), "{}", stderr(&o));
}
