//! Membership on a real multi-host network (network namespaces on one bridge, root only):
//! a crash, a partition and its heal, a graceful stop and a restart, each seen by every
//! member without any command.

mod common;

use common::lab::*;
use common::*;

/// Starts `names` on hosts 0.. of a fresh lab, every pair trusting each other by ID and
/// address; waits until all see all `active`.
fn lab_mesh(tag: &str, names: &[&str]) -> Option<(Lab, Vec<Node>)> {
    let lab = Lab::new(tag, names.len())?;
    let mut nodes: Vec<Node> = names
        .iter()
        .enumerate()
        .map(|(i, n)| lab.node(i, n))
        .collect();
    for n in nodes.iter_mut() {
        n.start();
    }
    lab.trust_all(&nodes);
    all_see(&nodes, |_| true, "active");
    Some((lab, nodes))
}

/// Waits until every node `i` with `watcher(i)` sees every other node in `state`
/// (`state` of a node about itself is never asked).
fn all_see(nodes: &[Node], watcher: impl Fn(usize) -> bool, state: &str) {
    for (i, a) in nodes.iter().enumerate() {
        if !watcher(i) {
            continue;
        }
        for (j, b) in nodes.iter().enumerate() {
            if i != j {
                a.wait_state(&b.name, state);
            }
        }
    }
}

/// Waits until every node except `who` sees `who` in `state`.
fn others_see(nodes: &[Node], who: usize, state: &str) {
    for (i, a) in nodes.iter().enumerate() {
        if i != who {
            a.wait_state(&nodes[who].name, state);
        }
    }
}

#[test]
fn crash_then_restart_is_seen_by_every_member() {
    let Some((_lab, mut nodes)) = lab_mesh("k", &["alpha", "beta", "gamma", "delta"]) else {
        return;
    };
    let started = std::time::Instant::now();
    nodes[3].kill9();
    others_see(&nodes, 3, "unreachable");
    println!(
        "kill -9 of delta: unreachable on all 3 members after {:?}",
        started.elapsed()
    );
    // Nothing else is disturbed by the crash.
    all_see(&nodes[..3], |_| true, "active");
    nodes[3].start();
    let started = std::time::Instant::now();
    others_see(&nodes, 3, "active");
    all_see(&nodes, |i| i == 3, "active");
    println!(
        "restart of delta: active everywhere after {:?}",
        started.elapsed()
    );
}

#[test]
fn partition_and_heal_converge_both_ways() {
    let Some((lab, nodes)) = lab_mesh("q", &["alpha", "beta", "gamma", "delta"]) else {
        return;
    };
    // delta's bridge port goes down: it is cut off, but its daemon runs on.
    let started = std::time::Instant::now();
    lab.cut(3);
    others_see(&nodes, 3, "unreachable");
    all_see(&nodes, |i| i == 3, "unreachable");
    println!("partition: both sides agree after {:?}", started.elapsed());
    // The majority side still sees itself whole.
    all_see(&nodes[..3], |_| true, "active");
    let started = std::time::Instant::now();
    lab.heal(3);
    all_see(&nodes, |_| true, "active");
    println!("heal: all active both ways after {:?}", started.elapsed());
    // Messages flow across the healed partition both ways.
    for (from, to) in [(0, 3), (3, 0)] {
        let r = nodes[from].cli(&["ping", &nodes[to].name]);
        assert!(r.status.success(), "{}", stderr(&r));
    }
}

#[test]
fn graceful_stop_is_left_everywhere_and_restart_active() {
    let Some((_lab, mut nodes)) = lab_mesh("g", &["alpha", "beta", "gamma"]) else {
        return;
    };
    nodes[2].stop();
    others_see(&nodes, 2, "left");
    nodes[2].start();
    others_see(&nodes, 2, "active");
    all_see(&nodes, |i| i == 2, "active");
}

/// Roster gossip ends once the members agree: every connection starts with an exchange,
/// then nothing until the roster changes (a loop here would cost bandwidth and CPU forever).
#[test]
fn roster_gossip_goes_quiet_once_members_agree() {
    let nodes = mesh(&["alpha", "beta", "gamma"], "");
    let counts = || -> Vec<(u64, u64)> {
        nodes
            .iter()
            .map(|n| {
                let s = n.json(&["status"]);
                (
                    s["gossip"]["roster_sent"].as_u64().unwrap(),
                    s["gossip"]["roster_received"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let quiet_for = std::time::Duration::from_secs(2);
    let mut last = (counts(), std::time::Instant::now());
    wait_until("roster gossip to stay quiet for 2 s", || {
        let now = counts();
        if now != last.0 {
            last = (now, std::time::Instant::now());
            return false;
        }
        last.1.elapsed() >= quiet_for
    });
    // A change still spreads: a new member joins and everyone gossips again.
    let before: u64 = last.0.iter().map(|c| c.1).sum();
    let mut delta = Node::new("delta", "");
    delta.start();
    nodes[0].trust(&delta);
    delta.trust(&nodes[0]);
    for n in &nodes[1..] {
        n.wait_state("delta", "active");
    }
    let after: u64 = counts().iter().map(|c| c.1).sum();
    assert!(after > before, "the new member's entry travelled by gossip");
}

/// A trusted device sending garbage on mesh streams (undecodable frames, a frame claiming
/// 4 GiB, membership bytes that are not a membership message) loses that stream only: the
/// daemon keeps running, keeps its real peer and answers.
#[test]
fn garbage_on_a_mesh_stream_ends_that_stream_only() {
    let nodes = mesh(&["a", "b"], "");
    let (rt, ep, pc, _dir) = rogue_connection(&nodes[0]);
    rt.block_on(async {
        let cases: [&[u8]; 4] = [
            // Variant 0xff of a 3-byte frame: no such mesh frame.
            &[0, 0, 0, 3, 0xff, 0xfe, 0xfd],
            // A frame claiming 4 GiB.
            &[0xff, 0xff, 0xff, 0xff, 1, 2, 3],
            // A membership frame (variant 2) carrying 5 bytes that are no message, then
            // an undecodable frame.
            &[0, 0, 0, 7, 2, 5, 9, 9, 9, 9, 9, 0, 0, 0, 1, 0xee],
            &[0xab; 64],
        ];
        for bytes in cases {
            let (mut send, mut recv) = pc.open(transport::StreamKind::Mesh).await.unwrap();
            send.write_all(bytes).await.unwrap();
            let _ = send.finish();
            // The daemon ends the stream: reading finishes (end or reset) without hanging.
            let _ = tokio::time::timeout(DEADLINE, recv.read_to_end(1 << 20))
                .await
                .expect("the daemon ended the bad stream");
        }
        ep.shutdown(0, "done", std::time::Duration::from_millis(100))
            .await;
    });
    // The daemon is fine: its real peer is still active and answers through it.
    nodes[0].wait_state("b", "active");
    let r = nodes[0].cli(&["ping", "b"]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(
        nodes[0].log().contains("bad mesh frame"),
        "{}",
        nodes[0].log()
    );
}

/// A member that sends a message whose ID is not of the documented form (here a path, as
/// a stolen device might, to reach scripts through `CNSPR_MESSAGE_ID`) is refused with
/// `bad_request`; no handler runs; a proper ID on the same kind of stream is delivered.
#[test]
fn a_message_with_a_malformed_id_is_refused() {
    let nodes = mesh(&["a", "b"], "");
    let out = nodes[0].out().display().to_string();
    nodes[0].handler("x/y", &format!("echo \"$CNSPR_MESSAGE_ID\" >> {out}/ids"));
    let (rt, ep, pc, _dir) = rogue_connection(&nodes[0]);
    // A message header as bincode writes it: id, tag, body_len, reply, relay_to, origin,
    // ping; after a 4-byte big-endian length.
    let header = |id: &str| {
        let mut p = vec![id.len() as u8];
        p.extend_from_slice(id.as_bytes());
        p.extend_from_slice(&[3, b'x', b'.', b'y', 0, 0, 0, 0, 0]);
        let mut f = (p.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(&p);
        f
    };
    let answers: Vec<Vec<u8>> = rt.block_on(async {
        let mut answers = Vec::new();
        for id in ["../../bin/sh\0xyz", "00000000000000ab"] {
            let (mut send, mut recv) = pc.open(transport::StreamKind::Message).await.unwrap();
            send.write_all(&header(id)).await.unwrap();
            let _ = send.finish();
            let a = tokio::time::timeout(DEADLINE, recv.read_to_end(1 << 16))
                .await
                .expect("an answer")
                .unwrap_or_default();
            answers.push(a);
        }
        ep.shutdown(0, "done", std::time::Duration::from_millis(100))
            .await;
        answers
    });
    let refused = String::from_utf8_lossy(&answers[0]).into_owned();
    assert!(
        refused.contains("bad_request") && refused.contains("message ID"),
        "{refused:?}"
    );
    wait_until("the proper message's handler", || {
        file(&nodes[0].out().join("ids")).is_some()
    });
    assert_eq!(
        String::from_utf8(file(&nodes[0].out().join("ids")).unwrap()).unwrap(),
        "00000000000000ab\n",
        "only the proper message ran a handler"
    );
}
