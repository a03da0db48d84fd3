//! Sync benchmark. Prints figures and their ratio to the targets of the store issue:
//!
//! 1. Bytes on the wire and round trips to sync 1 changed key between two stores of
//!    1,000,000 keys, in process on two real stores: with common history (vector pull:
//!    hello + one delta; target < 2 KiB, one round trip) and without it (range-based
//!    reconciliation; target < 16 KiB). Frames are encoded exactly as `src/daemon/sync.rs`
//!    puts them on the stream (4-byte length + bincode), so the byte counts are the
//!    stream's payload (QUIC/UDP headers not included).
//! 2. The apply rate of received changes (the 1,000,000-key setup, applied in batches).
//! 3. Two real daemons: one writes 10,000 keys while the other does not trust it yet; the
//!    time from the trust (heal: the connection comes up) until every watcher on the other
//!    device has seen all 10,000 changes (target < 2 s).
//!
//! Run: `cargo bench --bench sync`. `CNSPR_BENCH_KEYS` (default 1,000,000) sets the store
//! size, `CNSPR_BENCH_HEAL_KEYS` (default 10,000) the keys of the heal run.

use cnspr::store;

use cnspr_lab as common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::Node;
use serde::{Deserialize, Serialize};
use serde_json::json;
use store::reconcile::{Initiator, ReconMsg, ReconReply, Responder};
use store::{Change, Delta, Hlc, Origin, Store, Version, VersionVector};

const TARGET_HISTORY_BYTES: f64 = 2048.0;
const TARGET_RECON_BYTES: f64 = 16384.0;
const TARGET_HEAL_S: f64 = 2.0;
const CR_SQLITE_CHANGES_PER_S: f64 = 100_000.0 / 5.0;
const SETUP_BATCH: usize = 50_000;

/// The frames of `src/daemon/sync.rs`, same variants in the same order (same encoding).
#[derive(Serialize, Deserialize)]
enum Up {
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

#[derive(Serialize, Deserialize)]
enum Down {
    Delta(Delta),
    Recon(ReconMsg),
    ReconChanges(Vec<Change>),
}

fn frame_len<T: Serialize>(v: &T) -> usize {
    4 + bincode::serde::encode_to_vec(v, bincode::config::standard())
        .expect("encode")
        .len()
}

/// Changes `from..to` of one remote device, one new key each.
fn generated(from: u64, to: u64) -> Vec<Change> {
    let origin = Origin::new([9u8; 32], 1);
    (from..to)
        .map(|seq| Change {
            key: format!("k/{seq:07}"),
            value: Some(seq.to_le_bytes().repeat(2)),
            version: Version {
                hlc: Hlc::new(1_700_000_000_000 + seq, 0),
                origin,
                seq,
            },
            supersedes: vec![],
        })
        .collect()
}

async fn fill(store: &Store, keys: u64) -> f64 {
    let start = Instant::now();
    let mut seq = 1;
    while seq <= keys {
        let to = (seq + SETUP_BATCH as u64).min(keys + 1);
        let delta = Delta {
            changes: generated(seq, to),
            through: VersionVector::from_iter([(Origin::new([9u8; 32], 1), to - 1)]),
            more: false,
            batches: vec![],
        };
        store.apply_delta(delta, [9u8; 32]).await.expect("apply");
        seq = to;
    }
    start.elapsed().as_secs_f64()
}

/// Vector pull from `a` to `b`: hello, then deltas until none is left.
async fn with_history(a: &Store, b: &Store) -> (usize, u32) {
    let vv = b.version_vector().expect("vv");
    let mut bytes = frame_len(&Up::Hello {
        version: 1,
        vv: vv.clone(),
        items: b.item_count().expect("items"),
    });
    let delta = a.changes_since(&vv, 4096).expect("delta");
    assert!(!delta.more && delta.changes.len() == 1);
    bytes += frame_len(&Down::Delta(delta.clone()));
    b.apply_delta(delta, [1; 32]).await.expect("apply");
    (bytes, 1)
}

/// Reconciliation from `a` to `b` without using the vectors.
async fn without_history(a: &Store, b: &Store) -> (usize, u32, usize, f64) {
    let start = Instant::now();
    let mut bytes = frame_len(&Up::Hello {
        version: 1,
        vv: b.version_vector().expect("vv"),
        items: b.item_count().expect("items"),
    });
    let snap = a.snapshot().expect("snapshot");
    let through = snap.version_vector().expect("vv");
    let (mut responder, mut msg) = Responder::start(&snap).expect("start");
    let mut initiator = Initiator::new(u64::MAX);
    let mut round_trips = 1; // hello -> first message
    let mut sent = 0;
    loop {
        bytes += frame_len(&Down::Recon(msg.clone()));
        let reply = initiator
            .on_msg(&b.snapshot().expect("snapshot"), msg)
            .expect("read")
            .expect("valid");
        bytes += frame_len(&Up::Recon(reply.clone()));
        round_trips += 1;
        let step = responder
            .on_reply(&snap, reply)
            .expect("read")
            .expect("valid");
        let changes = snap.changes_at(&step.send).expect("changes");
        if !changes.is_empty() {
            bytes += frame_len(&Down::ReconChanges(changes.clone()));
            sent += changes.len();
            b.apply_reconciled(changes, Vec::new())
                .await
                .expect("apply");
        }
        match step.msg {
            Some(m) => msg = m,
            None => break,
        }
    }
    let last = Delta {
        changes: vec![],
        through,
        more: false,
        batches: vec![],
    };
    bytes += frame_len(&Down::Delta(last.clone()));
    b.apply_delta(last, [1; 32]).await.expect("apply");
    (bytes, round_trips, sent, start.elapsed().as_secs_f64())
}

fn in_process(dir: &Path, keys: u64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let a = Store::open(dir.join("a.redb"), [1; 32]).expect("open");
        let b = Store::open(dir.join("b.redb"), [2; 32]).expect("open");
        let (ta, tb) = tokio::join!(fill(&a, keys), fill(&b, keys));
        let rate = keys as f64 / ta.max(tb);
        println!(
            "apply received changes:   {rate:>9.0} changes/s ({keys} new keys into each of two stores at once, {:.1} s; {:.1}x cr-sqlite's best reported 5 s per 100,000)",
            ta.max(tb),
            rate / CR_SQLITE_CHANGES_PER_S
        );
        // One key changes on a; b catches up by its vector.
        a.put("k/0500000", b"changed".to_vec()).await.expect("put");
        let (bytes, rts) = with_history(&a, &b).await;
        println!(
            "1 changed key, {keys} keys, with history:    {bytes:>6} bytes, {rts} round trip ({:.3}x the 2 KiB target)",
            bytes as f64 / TARGET_HISTORY_BYTES
        );
        // Another change on a; b reconciles without looking at the vectors.
        a.put("k/0700000", b"changed again".to_vec()).await.expect("put");
        let (bytes, rts, sent, secs) = without_history(&a, &b).await;
        println!(
            "1 changed key, {keys} keys, no history:      {bytes:>6} bytes, {rts} round trips, {sent} change(s) sent, {:.0} ms of computing ({:.3}x the 16 KiB target)",
            secs * 1e3,
            bytes as f64 / TARGET_RECON_BYTES
        );
        assert_eq!(b.get("k/0700000").expect("get").expect("present").value, b"changed again");
    });
}

// ---------------------------------------------------------------------------------------
// Two daemons

/// A daemon of the test harness with its logging turned down.
fn daemon(name: &str) -> Node {
    let mut n = Node::new(name, "");
    n.rust_log = "warn".into();
    n.start();
    n
}

fn heal(keys: usize, watchers: usize) {
    let a = daemon("a");
    let b = daemon("b");
    // b trusts a; a does not trust b yet: they cannot connect.
    let ok = b.cli(&["trust", &a.id, "--addr", &a.addr()]);
    assert!(ok.status.success());
    // a writes while apart (pipelined over one socket connection).
    let mut s = UnixStream::connect(a.socket()).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut buf = Vec::new();
    for i in 0..keys {
        let line = json!({"id": i, "cmd": "kv.put", "key": format!("heal/{i:06}"), "value": "v".repeat(100)});
        buf.extend_from_slice(line.to_string().as_bytes());
        buf.push(b'\n');
    }
    // Replies are read while the requests are written (the socket buffers are bounded).
    let replies = std::thread::spawn(move || {
        for _ in 0..keys {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("\"ok\":true"), "{line}");
        }
    });
    s.write_all(&buf).unwrap();
    replies.join().unwrap();
    // Watchers on b, each live before the heal: each must first see a local marker write.
    let (tx, rx) = std::sync::mpsc::channel::<(usize, Instant)>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let mut children = Vec::new();
    for w in 0..watchers {
        let mut child = b
            .command()
            .args(["--json", "kv", "watch", "heal/"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, ready_tx) = (tx.clone(), ready_tx.clone());
        std::thread::spawn(move || {
            let (mut seen, mut marked) = (0, false);
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if !l.contains("\"feed_seq\"") {
                    continue;
                }
                if l.contains("heal/marker") {
                    if !marked {
                        marked = true;
                        let _ = ready_tx.send(());
                    }
                    continue;
                }
                seen += 1;
                if seen == 1 {
                    let _ = tx.send((usize::MAX, Instant::now()));
                }
                if seen == keys {
                    let _ = tx.send((w, Instant::now()));
                    return;
                }
            }
        });
        children.push(child);
    }
    let mut ready = 0;
    let start_marker = Instant::now();
    while ready < watchers {
        let ok = b.cli(&["kv", "put", "heal/marker", "m"]);
        assert!(ok.status.success());
        while ready_rx.recv_timeout(Duration::from_millis(200)).is_ok() {
            ready += 1;
        }
        assert!(
            start_marker.elapsed() < Duration::from_secs(60),
            "watchers not live"
        );
    }
    let t0 = Instant::now();
    let ok = a.cli(&["trust", &b.id, "--addr", &b.addr()]);
    assert!(ok.status.success());
    let mut first = None;
    let mut done = 0;
    let mut last = t0;
    while done < watchers {
        let (w, at) = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("watchers finish");
        if w == usize::MAX {
            first.get_or_insert(at);
        } else {
            done += 1;
            last = last.max(at);
        }
    }
    let secs = (last - t0).as_secs_f64();
    let first = first.map_or(0.0, |f| (f - t0).as_secs_f64());
    println!(
        "heal -> {watchers} watchers notified of {keys} changed keys: {secs:.2} s (first change after {:.0} ms; {:.2}x the 2 s target; {:.0} changes/s end to end)",
        first * 1e3,
        secs / TARGET_HEAL_S,
        keys as f64 / secs
    );
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn main() {
    let keys: u64 = std::env::var("CNSPR_BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let heal_keys: usize = std::env::var("CNSPR_BENCH_HEAL_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let tmp = tempfile::tempdir().expect("temp dir");
    in_process(tmp.path(), keys);
    heal(heal_keys, 4);
}
