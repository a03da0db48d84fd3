//! Atomic batches between devices: a batch written on one device shows on the others
//! whole or not at all, while they watch and read it, when its writer is killed during
//! the commit, and when the link is cut while it syncs.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{kv_watch, wait_until, Node};
use serde_json::{json, Value};

const OPS: usize = 1000;

/// The batch text: `OPS` puts under `prefix`, values of `size` bytes.
fn batch_text(prefix: &str, size: usize) -> String {
    (0..OPS)
        .map(|i| format!("put {prefix}{i:04} {}\n", "v".repeat(size)))
        .collect()
}

/// How many keys under `prefix` one `kv.list` shows (one snapshot of the store).
fn count(socket: &Path, prefix: &str) -> Option<usize> {
    let mut s = UnixStream::connect(socket).ok()?;
    let req = json!({"id": 1, "cmd": "kv.list", "prefix": prefix, "limit": 10_000});
    s.write_all(format!("{req}\n").as_bytes()).ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    let v: Value = serde_json::from_str(&line).ok()?;
    Some(v["result"]["entries"].as_array()?.len())
}

/// Reads `prefixes` on `socket` over and over until stopped; records every count seen.
struct Observer {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeMap<String, Vec<usize>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Observer {
    fn start(socket: PathBuf, prefixes: Vec<String>) -> Observer {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(BTreeMap::<String, Vec<usize>>::new()));
        let (s2, seen2) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                for p in &prefixes {
                    if let Some(n) = count(&socket, p) {
                        seen2.lock().unwrap().entry(p.clone()).or_default().push(n);
                    }
                }
            }
        });
        Observer {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Stops; panics if a read ever showed part of a batch. Returns how many reads were made.
    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        let seen = self.seen.lock().unwrap();
        for (prefix, counts) in seen.iter() {
            assert!(
                counts.iter().all(|n| *n == 0 || *n == OPS),
                "a read showed part of the batch {prefix}: {:?}",
                counts
                    .iter()
                    .filter(|n| **n != 0 && **n != OPS)
                    .collect::<Vec<_>>()
            );
        }
        seen.values().map(Vec::len).sum()
    }
}

/// The watch events collected so far: each batch's events are consecutive in the feed,
/// `OPS` of them, the last (only) marked as its end. Returns the number of batches.
fn check_watched(events: &[Value]) -> usize {
    let mut by_batch: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for e in events {
        let id = e["batch"]
            .as_str()
            .expect("every change here is in a batch");
        by_batch.entry(id.to_string()).or_default().push(e);
    }
    for (id, evs) in &by_batch {
        assert_eq!(evs.len(), OPS, "batch {id}");
        let seqs: Vec<u64> = evs
            .iter()
            .map(|e| e["feed_seq"].as_u64().unwrap())
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "batch {id} is not consecutive in the feed"
        );
        let ends: Vec<bool> = evs.iter().map(|e| e["batch_end"] == true).collect();
        assert_eq!(
            ends.iter().filter(|e| **e).count(),
            1,
            "batch {id}: one end"
        );
        assert!(ends[OPS - 1], "batch {id}: the end is its last change");
    }
    by_batch.len()
}

fn collect(rx: &std::sync::mpsc::Receiver<Value>, into: &mut Vec<Value>, want: usize) {
    let deadline = Instant::now() + common::DEADLINE;
    while into.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(v) => into.push(v),
            Err(_) => panic!("only {} of {want} watch events arrived", into.len()),
        }
    }
}

#[test]
fn a_batch_shows_whole_on_the_other_devices_even_when_the_link_is_cut_during_sync() {
    let Some(lab) = common::lab::Lab::new("bt", 3) else {
        return;
    };
    let mut nodes = vec![lab.node(0, "a"), lab.node(1, "b"), lab.node(2, "c")];
    for n in nodes.iter_mut() {
        n.start();
    }
    lab.trust_all(&nodes);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    a.wait_state("b", "active");
    a.wait_state("c", "active");
    b.wait_state("c", "active");
    let prefixes: Vec<String> = (1..=4).map(|i| format!("bt{i}/")).collect();
    let observers = [
        Observer::start(b.socket(), prefixes.clone()),
        Observer::start(c.socket(), prefixes.clone()),
    ];
    let (mut wb, rb) = kv_watch(b, "bt");
    let (mut wc, rc) = kv_watch(c, "bt");

    // One batch while everyone is connected.
    let out = a.cli_stdin(&["kv", "batch"], batch_text("bt1/", 100).as_bytes());
    assert!(out.status.success(), "{}", common::stderr(&out));
    let (mut eb, mut ec) = (Vec::new(), Vec::new());
    collect(&rb, &mut eb, OPS);
    collect(&rc, &mut ec, OPS);
    assert_eq!(
        eb[0]["batch"], ec[0]["batch"],
        "the same name on every device"
    );

    // Three more while c is cut off (7 MB each: a delta ends at 16 MiB, inside the third), then c comes
    // back and is cut again as soon as it has the first of them, twice.
    lab.cut(2);
    wait_until("a to see c gone", || {
        a.peer("c").is_some_and(|p| p["state"] == "unreachable")
    });
    for p in &prefixes[1..] {
        let out = a.cli_stdin(&["kv", "batch"], batch_text(p, 7000).as_bytes());
        assert!(out.status.success(), "{}", common::stderr(&out));
    }
    collect(&rb, &mut eb, 4 * OPS);
    for _ in 0..2 {
        lab.heal(2);
        let have = ec.len();
        let deadline = Instant::now() + common::DEADLINE;
        while ec.len() == have && ec.len() < 4 * OPS {
            let left = deadline.saturating_duration_since(Instant::now());
            ec.push(rc.recv_timeout(left).expect("c syncs once healed"));
        }
        lab.cut(2);
        std::thread::sleep(Duration::from_millis(300)); // the cut lasts a moment
    }
    lab.heal(2);
    collect(&rc, &mut ec, 4 * OPS);
    for o in observers {
        let reads = o.finish();
        assert!(reads > 0);
    }
    assert_eq!(check_watched(&eb), 4);
    assert_eq!(check_watched(&ec), 4);
    for w in [&mut wb, &mut wc] {
        let _ = w.kill();
        let _ = w.wait();
    }
}

/// Sends a batch on a raw connection and returns once it is written (not answered).
fn send_batch(socket: &Path, prefix: &str) -> UnixStream {
    let mut s = UnixStream::connect(socket).unwrap();
    let ops: Vec<Value> = (0..OPS)
        .map(|i| json!({"op": "put", "key": format!("{prefix}{i:04}"), "value_len": 8000}))
        .collect();
    let req = json!({"id": 1, "cmd": "kv.batch", "ops": ops});
    s.write_all(format!("{req}\n").as_bytes()).unwrap();
    s.write_all(&vec![b'x'; 8000 * OPS]).unwrap();
    s
}

#[test]
fn a_batch_survives_its_writer_killed_during_the_commit_whole_or_not_at_all() {
    let mut a = Node::new("kb", "");
    a.start();
    let store = a.path("state").join("store.redb");
    // Size and modification time: the file changes as soon as the commit writes pages.
    let size = || {
        std::fs::metadata(&store)
            .map(|m| (m.len(), m.modified().ok()))
            .ok()
    };
    let mut whole = 0;
    for round in 0..8u32 {
        let prefix = format!("k{round}/");
        let before = size();
        let mut conn = send_batch(&a.socket(), &prefix);
        // Round 0 is killed as soon as the request is sent; the others once the store
        // file changes (the commit is writing its pages), then 40 ms later each round
        // (so the kill falls before, during and after the commit's fsync), or when the
        // answer comes, whichever is first.
        if round > 0 {
            conn.set_nonblocking(true).unwrap();
            let mut reply = [0u8; 1];
            let mut answered = || std::io::Read::read(&mut conn, &mut reply).is_ok();
            let start = Instant::now();
            while size() == before && !answered() && start.elapsed() < common::DEADLINE {
                std::hint::spin_loop();
            }
            let changed = Instant::now();
            let extra = Duration::from_millis(40 * u64::from(round - 1));
            while changed.elapsed() < extra && !answered() {
                std::hint::spin_loop();
            }
        }
        a.kill9();
        a.start();
        let n = count(&a.socket(), &prefix).expect("the restarted daemon answers");
        assert!(
            n == 0 || n == OPS,
            "round {round}: {n} of {OPS} keys after the kill"
        );
        whole += usize::from(n == OPS);
    }
    eprintln!("{whole} of 8 batches were committed before the kill");
}

/// Bad batches on the socket are answered with a clear error, nothing is written, and
/// the connection stays usable (the raw values of a refused batch are skipped).
#[test]
fn bad_batches_on_the_socket_are_refused_clearly() {
    let mut a = Node::new("bb", "");
    a.start();
    let mut s = UnixStream::connect(a.socket()).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut ask = |req: Value, body: &[u8]| -> Value {
        s.write_all(format!("{req}\n").as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    };
    let put = |k: &str| json!({"op": "put", "key": k, "value": "v"});
    let cases = [
        (
            json!({"id": 1, "cmd": "kv.batch", "ops": []}),
            "bad_request",
            "1 to 1000",
        ),
        (
            json!({"id": 2, "cmd": "kv.batch", "ops": (0..1001).map(|i| put(&format!("k{i}"))).collect::<Vec<_>>()}),
            "bad_request",
            "not 1001",
        ),
        (
            json!({"id": 3, "cmd": "kv.batch", "ops": [put("d"), put("d")]}),
            "bad_request",
            "again",
        ),
        (
            json!({"id": 4, "cmd": "kv.batch", "ops": [{"op": "put", "key": "x"}]}),
            "bad_request",
            "operation 1",
        ),
        (
            json!({"id": 5, "cmd": "kv.batch", "ops": [{"op": "bump", "key": "x"}]}),
            "bad_request",
            "kv.batch",
        ),
        (
            json!({"id": 6, "cmd": "kv.batch", "ops": [put(".cnspr/counter/x")]}),
            "bad_request",
            "operation 1",
        ),
        (
            json!({"id": 7, "cmd": "kv.batch", "ops": [{"op": "put", "key": "b", "value_b64": "!!"}]}),
            "bad_request",
            "base64",
        ),
    ];
    for (req, code, words) in cases {
        let v = ask(req.clone(), b"");
        assert_eq!(v["ok"], false, "{req}: {v}");
        assert_eq!(v["error"]["code"], code, "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(words), "{msg}");
    }
    // A batch over 8 MiB (its values raw after the line) is too_large, and its bytes
    // are skipped: the next request on the connection is answered.
    let big: Vec<Value> = (0..3)
        .map(|i| json!({"op": "put", "key": format!("big{i}"), "value_len": 3 * 1024 * 1024}))
        .collect();
    let v = ask(
        json!({"id": 8, "cmd": "kv.batch", "ops": big}),
        &vec![0u8; 9 * 1024 * 1024],
    );
    assert_eq!(v["error"]["code"], "too_large", "{v}");
    let v = ask(json!({"id": 9, "cmd": "kv.list", "prefix": ""}), b"");
    assert_eq!(
        v["result"]["entries"],
        json!([]),
        "nothing was written: {v}"
    );
}
