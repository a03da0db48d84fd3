//! The replicated store between real daemons on loopback: replication, live push,
//! concurrent writes while apart, deletes while a device is offline, tombstone collection,
//! the reconciliation fallback, and a peer sending garbage on a sync stream.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// The value of `key` on `n`, or `None` when absent.
fn get(n: &Node, key: &str) -> Option<Vec<u8>> {
    let o = n.cli(&["kv", "get", key]);
    o.status.success().then_some(o.stdout)
}

fn put(n: &Node, key: &str, value: &str) {
    let o = n.cli(&["kv", "put", key, value]);
    assert!(o.status.success(), "put on {}: {}", n.name, stderr(&o));
}

fn wait_value(n: &Node, key: &str, value: Option<&[u8]>) {
    wait_until(
        &format!(
            "{key} to be {:?} on {}",
            value.map(String::from_utf8_lossy),
            n.name
        ),
        || get(n, key).as_deref() == value,
    );
}

/// Many puts over one socket connection (pipelined), for tests that need many keys.
fn put_many(n: &Node, keys: impl Iterator<Item = (String, String)>) {
    let mut s = UnixStream::connect(n.socket()).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut sent = 0;
    let mut buf = Vec::new();
    for (i, (k, v)) in keys.enumerate() {
        let line = json!({"id": i, "cmd": "kv.put", "key": k, "value": v});
        buf.extend_from_slice(line.to_string().as_bytes());
        buf.push(b'\n');
        sent += 1;
    }
    // Replies are read while the requests are written (the socket buffers are bounded).
    let replies = std::thread::spawn(move || {
        for _ in 0..sent {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let v: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["ok"], true, "{line}");
        }
    });
    s.write_all(&buf).unwrap();
    replies.join().unwrap();
}

fn count(n: &Node, prefix: &str) -> usize {
    let o = n.cli(&["kv", "list", prefix]);
    String::from_utf8_lossy(&o.stdout).lines().count()
}

/// Waits until every node sees every other one active.
fn wait_connected(nodes: &[Node]) {
    for a in nodes {
        for b in nodes {
            if a.id != b.id {
                a.wait_state(&b.name, "active");
            }
        }
    }
}

#[test]
fn a_put_on_one_device_reaches_the_other_two() {
    let nodes = mesh(&["a", "b", "c"], "");
    let value = noise(100_000, 3);
    let o = nodes[0].cli_stdin(&["kv", "put", "doc/1"], &value);
    assert!(o.status.success(), "{}", stderr(&o));
    for n in &nodes[1..] {
        wait_value(n, "doc/1", Some(&value));
        let j = n.json(&["kv", "get", "doc/1"]);
        assert_eq!(j["origin"], nodes[0].id.as_str(), "origin is the writer");
    }
    // Writes from every device meet everywhere.
    put(&nodes[1], "doc/2", "from b");
    put(&nodes[2], "doc/3", "from c");
    for n in &nodes {
        wait_value(n, "doc/2", Some(b"from b"));
        wait_value(n, "doc/3", Some(b"from c"));
    }
}

#[test]
fn a_watcher_on_one_device_sees_a_put_on_the_other() {
    let nodes = mesh(&["a", "b"], "");
    let (mut w, rx) = kv_watch(&nodes[1], "live/");
    // The watch is live once a local write shows.
    put(&nodes[1], "live/local", "x");
    let first = rx.recv_timeout(DEADLINE).expect("local change");
    assert_eq!(first["key"], "live/local");
    put(&nodes[0], "live/remote", "from a");
    let ev = rx
        .recv_timeout(DEADLINE)
        .expect("remote change pushed to the watcher");
    assert_eq!(ev["key"], "live/remote");
    assert_eq!(ev["origin"], nodes[0].id.as_str());
    assert_eq!(ev["value_b64"], "ZnJvbSBh");
    let _ = w.kill();
    let _ = w.wait();
}

#[test]
fn concurrent_writes_while_apart_converge_and_show_the_other_version() {
    let mut nodes = mesh(&["a", "b"], "");
    put(&nodes[0], "todo", "milk");
    wait_value(&nodes[1], "todo", Some(b"milk"));
    // Apart: each writes while the other is stopped.
    nodes[1].stop();
    put(&nodes[0], "todo", "milk, eggs");
    nodes[0].stop();
    nodes[1].start();
    put(&nodes[1], "todo", "bread");
    nodes[0].start();
    wait_connected(&nodes);
    // Both converge to the same winner, and each shows the other write as a sibling.
    let mut winner = Vec::new();
    wait_until("both devices to agree on todo", || {
        let (a, b) = (get(&nodes[0], "todo"), get(&nodes[1], "todo"));
        let agreed = a.is_some() && a == b;
        if agreed {
            winner = a.unwrap();
        }
        agreed && {
            let j = nodes[0].json(&["kv", "get", "todo", "--all-versions"]);
            j["siblings"].as_array().is_some_and(|s| s.len() == 1)
        }
    });
    assert!(
        winner == b"bread" || winner == b"milk, eggs",
        "winner {:?}",
        String::from_utf8_lossy(&winner)
    );
    let loser = if winner == b"bread" {
        "milk, eggs"
    } else {
        "bread"
    };
    for n in &nodes {
        wait_until(&format!("{} to list the other version", n.name), || {
            let j = n.json(&["kv", "get", "todo", "--all-versions"]);
            let s = &j["siblings"];
            s.as_array().is_some_and(|s| s.len() == 1)
                && s[0]["value_b64"] == data_b64(loser.as_bytes())
                && j["value_b64"] == data_b64(&winner)
        });
        // The human form prints the winner and shows both versions readably on stderr:
        // each value as text, and who wrote it.
        let o = n.cli(&["kv", "get", "todo", "--all-versions"]);
        assert_eq!(o.stdout, winner);
        let text = stderr(&o);
        let winner_text = format!("{:?}", String::from_utf8_lossy(&winner));
        assert!(text.contains("2 version(s)"), "{text}");
        assert!(
            text.contains(&format!("wins: {winner_text} from ")),
            "{text}"
        );
        assert!(text.contains(&format!("lost: {loser:?} from ")), "{text}");
    }
    // A later write on either device resolves the conflict everywhere.
    put(&nodes[1], "todo", "done");
    for n in &nodes {
        wait_until(&format!("{} to see the resolution", n.name), || {
            let j = n.json(&["kv", "get", "todo", "--all-versions"]);
            j["value_b64"] == data_b64(b"done")
                && j["siblings"].as_array().is_some_and(|s| s.is_empty())
        });
    }
}

fn data_b64(b: &[u8]) -> String {
    data_encoding::BASE64.encode(b)
}

#[test]
fn a_key_deleted_while_a_device_was_offline_stays_deleted() {
    let mut nodes = mesh(&["a", "b", "c"], "");
    put(&nodes[2], "gone", "old value from c");
    put(&nodes[0], "kept", "v");
    for n in &nodes {
        wait_value(n, "gone", Some(b"old value from c"));
        wait_value(n, "kept", Some(b"v"));
    }
    nodes[2].stop();
    let o = nodes[0].cli(&["kv", "del", "gone"]);
    assert!(o.status.success(), "{}", stderr(&o));
    wait_value(&nodes[1], "gone", None);
    // While c is away nobody may collect the tombstone: c still holds the old value.
    nodes[2].start();
    wait_connected(&nodes);
    wait_value(&nodes[2], "gone", None);
    for n in &nodes {
        assert_eq!(get(n, "gone"), None, "{} resurrected the key", n.name);
        assert_eq!(get(n, "kept").as_deref(), Some(&b"v"[..]));
    }
    // Once every member has reported the tombstone, it is collected everywhere.
    for n in &nodes {
        wait_until(&format!("{} to collect the tombstone", n.name), || {
            n.log()
                .contains("collected tombstones every member has seen")
        });
    }
    // And the key still does not come back after restarts and a new sync round.
    nodes[1].stop();
    nodes[1].start();
    wait_connected(&nodes);
    put(&nodes[1], "after", "x");
    for n in &nodes {
        wait_value(n, "after", Some(b"x"));
        assert_eq!(get(n, "gone"), None, "{} resurrected the key", n.name);
    }
    // A new write to the key after the collection is an ordinary put.
    put(&nodes[2], "gone", "new");
    for n in &nodes {
        wait_value(n, "gone", Some(b"new"));
    }
}

#[test]
fn a_store_started_again_from_empty_loses_no_write() {
    // The store file is moved aside (damaged, say) and the device writes before it meets
    // the others again: its new store numbers those writes in a new epoch, so the others
    // take them, and it gets its earlier writes back.
    let mut nodes = mesh(&["a", "b"], "");
    put(&nodes[0], "old/1", "written before");
    wait_value(&nodes[1], "old/1", Some(b"written before"));
    nodes[1].stop();
    nodes[0].stop();
    let db = nodes[0].path("state/store.redb");
    std::fs::rename(&db, nodes[0].path("state/store.redb.aside")).unwrap();
    nodes[0].start();
    assert_eq!(get(&nodes[0], "old/1"), None, "a new, empty store");
    put(&nodes[0], "new/1", "written while alone");
    nodes[1].start();
    wait_connected(&nodes);
    wait_value(&nodes[1], "new/1", Some(b"written while alone"));
    wait_value(&nodes[0], "old/1", Some(b"written before"));
    put(&nodes[0], "new/2", "and later");
    wait_value(&nodes[1], "new/2", Some(b"and later"));
    let j = nodes[1].json(&["kv", "get", "new/1"]);
    assert_eq!(
        j["origin"],
        nodes[0].id.as_str(),
        "origin is still the device"
    );
}

#[test]
fn stores_without_common_history_reconcile() {
    // Two devices fill their stores before they know each other: their vectors share no
    // origin, so the first sync reconciles ranges instead of trusting the vectors.
    let mut a = Node::new("a", "");
    let mut b = Node::new("b", "");
    a.start();
    b.start();
    put_many(
        &a,
        (0..400).map(|i| (format!("a/{i:04}"), format!("va{i}"))),
    );
    put_many(
        &b,
        (0..400).map(|i| (format!("b/{i:04}"), format!("vb{i}"))),
    );
    put(&a, "both", "from a");
    put(&b, "both", "from b");
    a.trust(&b);
    b.trust(&a);
    a.wait_state("b", "active");
    b.wait_state("a", "active");
    for n in [&a, &b] {
        wait_until(&format!("{} to hold every key", n.name), || {
            count(n, "a/") == 400 && count(n, "b/") == 400
        });
        assert!(
            n.log().contains("no common history: reconciling"),
            "{} did not reconcile",
            n.name
        );
    }
    wait_until("both to agree on the concurrent key", || {
        let (x, y) = (get(&a, "both"), get(&b, "both"));
        x.is_some() && x == y
    });
    let j = a.json(&["kv", "get", "both", "--all-versions"]);
    assert_eq!(j["siblings"].as_array().map(Vec::len), Some(1));
    // After reconciling, the vectors carry the history: a new write goes over as usual.
    put(&a, "later", "x");
    wait_value(&b, "later", Some(b"x"));
}

#[test]
fn garbage_on_a_sync_stream_ends_that_stream_only() {
    let nodes = mesh(&["a", "b"], "");
    let (rt, ep, pc, _dir) = rogue_connection(&nodes[0]);
    rt.block_on(async {
        // A frame that is not a sync frame, a frame claiming 4 GiB, then raw junk.
        let cases: [&[u8]; 3] = [
            &[0, 0, 0, 3, 0xff, 0xfe, 0xfd],
            &[0xff, 0xff, 0xff, 0xff, 1, 2, 3],
            &[0; 64],
        ];
        for bytes in cases {
            let (mut send, mut recv) = pc.open(transport::StreamKind::Sync).await.unwrap();
            send.write_all(bytes).await.unwrap();
            let _ = send.finish();
            // The daemon ends the stream: reading finishes (end or reset) without hanging.
            let _ = tokio::time::timeout(DEADLINE, recv.read_to_end(1 << 20))
                .await
                .expect("the daemon ended the bad stream");
        }
        // A hello with a wrong version is refused the same way.
        let (mut send, mut recv) = pc.open(transport::StreamKind::Sync).await.unwrap();
        let mut body = vec![0u8]; // Up::Hello
        body.extend_from_slice(&[251, 0x39, 0x05]); // version 1337 (varint u16)
        body.extend_from_slice(&[0, 0]); // empty vector, 0 items
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        send.write_all(&frame).await.unwrap();
        let _ = tokio::time::timeout(DEADLINE, recv.read_to_end(1 << 20))
            .await
            .expect("the daemon ended the stream with the wrong version");
        ep.shutdown(0, "done", Duration::from_millis(100)).await;
    });
    // The daemon is fine and keeps syncing with its real peer.
    put(&nodes[0], "still", "works");
    wait_value(&nodes[1], "still", Some(b"works"));
    assert!(nodes[0].log().contains("sync stream from the peer ended"));
}

/// Copies the directory `from` to `to` (files and subdirectories).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn a_restored_state_directory_loses_no_write_made_before_it_syncs() {
    // The whole state directory is put back from a copy (a backup, a cloned VM image) and
    // the device writes before it meets the others: those writes must reach them, and the
    // writes the copy lacks come back.
    let mut nodes = mesh(&["a", "b"], "");
    put(&nodes[0], "k/1", "before the copy");
    wait_value(&nodes[1], "k/1", Some(b"before the copy"));
    nodes[0].stop();
    let state = nodes[0].path("state");
    let backup = nodes[0].path("state.backup");
    copy_dir(&state, &backup);
    nodes[0].start();
    wait_connected(&nodes);
    put(&nodes[0], "k/2", "after the copy");
    wait_value(&nodes[1], "k/2", Some(b"after the copy"));
    nodes[1].stop();
    nodes[0].stop();
    std::fs::remove_dir_all(&state).unwrap();
    std::fs::rename(&backup, &state).unwrap();
    nodes[0].start();
    assert_eq!(get(&nodes[0], "k/2"), None, "the copy lacks k/2");
    put(&nodes[0], "k/3", "written by the restored copy");
    nodes[1].start();
    wait_connected(&nodes);
    wait_value(&nodes[1], "k/3", Some(b"written by the restored copy"));
    wait_value(&nodes[0], "k/2", Some(b"after the copy"));
    // And it goes on: a later write reaches the other device too.
    put(&nodes[0], "k/4", "later");
    wait_value(&nodes[1], "k/4", Some(b"later"));
}

/// The daemon's sync frames (`cnspr::daemon`'s `Up` and `Down`, which are not public):
/// bincode encodes an enum as its variant's index and then its fields, so these mirrors
/// (same variants, same order) encode exactly like them.
mod frames {
    use cnspr::store::reconcile::ReconReply;
    use cnspr::store::{Delta, VersionVector};
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    pub enum Up {
        Hello {
            version: u16,
            vv: VersionVector,
            items: u64,
        },
        Seen {
            vv: VersionVector,
        },
        Recon(ReconReply),
    }

    #[derive(Debug, Serialize)]
    pub enum Down {
        Delta(Delta),
    }
}

#[test]
fn a_member_cannot_raise_this_device_s_origin_nor_flood_it_with_origins() {
    use cnspr::store::{Delta, Origin, VersionVector};
    use frames::{Down, Up};
    use transport::frame::{read_frame, write_frame, MAX_FRAME};

    let mut nodes = mesh(&["a", "b"], "");
    put(&nodes[0], "before", "1");
    wait_value(&nodes[1], "before", Some(b"1"));
    let a_dev = nodes[0].id.parse::<transport::DeviceId>().unwrap().0;
    let (rt, ep, _pc, _dir) = rogue_connection(&nodes[0]);
    let mut incoming = ep.take_incoming().expect("the rogue's incoming streams");
    // The daemon pulls from every connection: its sessions arrive as incoming sync
    // streams. Each attack is one delta; after each, the daemon either goes on (it reports
    // its raised vector with `Seen`: it took the delta) or ends the stream (refused).
    let outcomes = rt.block_on(async {
        let mut outcomes = Vec::new();
        let mut hellos = Vec::new();
        let mut attacks = vec!["own origin", "100,000 origins"].into_iter().peekable();
        while attacks.peek().is_some() {
            let s = tokio::time::timeout(DEADLINE, async {
                loop {
                    let s = incoming.recv().await.expect("the rogue's endpoint runs");
                    if s.kind == transport::StreamKind::Sync {
                        return s;
                    }
                }
            })
            .await
            .expect("a sync session from the daemon");
            let transport::IncomingStream {
                mut send, mut recv, ..
            } = s;
            let Some(Up::Hello { vv, .. }) = read_frame::<Up, _>(&mut recv, 4 << 20)
                .await
                .expect("a hello")
            else {
                panic!("the session did not start with a hello");
            };
            hellos.push(vv.len());
            let own = vv
                .iter()
                .map(|(o, _)| o)
                .find(|o| o.device == a_dev)
                .expect("the daemon's own origin in its hello");
            for attack in attacks.by_ref() {
                let through: VersionVector = if attack == "own origin" {
                    vv.iter().chain([(own, u64::MAX)]).collect()
                } else {
                    (0..100_000u64)
                        .map(|i| {
                            let mut dev = [0x5a; 32];
                            dev[..8].copy_from_slice(&i.to_le_bytes());
                            (Origin::new(dev, i + 1), 1)
                        })
                        .chain(vv.iter())
                        .collect()
                };
                let delta = Down::Delta(Delta {
                    changes: vec![],
                    through,
                    more: false,
                    batches: vec![],
                });
                let sent = write_frame(&mut send, &delta, MAX_FRAME).await.is_ok();
                let next = tokio::time::timeout(DEADLINE, read_frame::<Up, _>(&mut recv, 64 << 20))
                    .await
                    .expect("the daemon answers or ends the stream");
                let took = sent && matches!(next, Ok(Some(Up::Seen { .. })));
                outcomes.push((attack, took));
                if !took {
                    break; // the next attack goes to the next session
                }
            }
        }
        ep.shutdown(0, "done", Duration::from_millis(100)).await;
        (outcomes, hellos)
    });
    let (outcomes, hellos) = outcomes;
    for (attack, took) in &outcomes {
        assert!(!took, "the daemon took a delta with {attack}");
    }
    assert!(
        hellos.iter().all(|n| *n < 100),
        "hello vectors of {hellos:?} origins"
    );
    assert!(nodes[0].log().contains("refused"), "the refusal is logged");
    // The daemon writes and syncs as before, also in new sessions.
    put(&nodes[0], "after", "2");
    wait_value(&nodes[1], "after", Some(b"2"));
    nodes[1].stop();
    nodes[1].start();
    wait_connected(&nodes);
    put(&nodes[1], "from b", "3");
    wait_value(&nodes[0], "from b", Some(b"3"));
    put(&nodes[0], "from a", "4");
    wait_value(&nodes[1], "from a", Some(b"4"));
}
