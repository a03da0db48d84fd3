//! The key-value store through the daemon: local, durable, watchable.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::Value;

#[test]
fn put_get_del_list_and_bad_input() {
    let mut n = Node::new("solo", "");
    n.start();
    let value = noise(300_000, 5);
    let o = n.cli_stdin(&["kv", "put", "photos/1"], &value);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = n.cli(&["kv", "get", "photos/1"]);
    assert!(o.status.success());
    assert!(o.stdout == value, "value bytes differ");
    assert!(n.cli(&["kv", "put", "photos/2", "two"]).status.success());
    assert!(n.cli(&["kv", "put", "notes/a", "x"]).status.success());
    let j = n.json(&["kv", "get", "photos/2"]);
    assert_eq!(j["key"], "photos/2");
    assert_eq!(j["value_b64"], "dHdv");
    assert_eq!(j["origin"], n.id.as_str());
    assert!(j["hlc"].as_str().is_some());
    let o = n.cli(&["kv", "list", "photos/"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "photos/1\nphotos/2\n");
    assert!(n.cli(&["kv", "del", "photos/2"]).status.success());
    let o = n.cli(&["kv", "get", "photos/2"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    // Bad input: clear errors, nothing stored.
    let long = "k".repeat(1025);
    let o = n.cli(&["kv", "put", &long, "x"]);
    assert_eq!(o.status.code(), Some(1));
    let o = n.cli(&["kv", "put", "bad\u{1}key", "x"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let big = vec![0u8; 8 * 1024 * 1024 + 1];
    let o = n.cli_stdin(&["kv", "put", "big"], &big);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("8"), "{}", stderr(&o));
    assert_eq!(n.cli(&["kv", "get", "big"]).status.code(), Some(1));
    let o = n.cli(&["kv", "list"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "notes/a\nphotos/1\n");
}

/// Values at the store's limit (8 MiB) go through the CLI both ways byte for byte, and
/// `kv list` and `kv watch` keep working with several stored: replies of more than 4 MiB
/// are read, and a page of `kv.list` ends by size as well as by count.
#[test]
fn values_of_8_mib_through_the_cli() {
    const MAX: usize = 8 * 1024 * 1024;
    let mut n = Node::new("solo", "");
    n.start();
    let (mut w, rx) = kv_watch(&n, "big/");
    let values: Vec<Vec<u8>> = (0..3).map(|i| noise(MAX, 40 + i)).collect();
    for (i, v) in values.iter().enumerate() {
        let o = n.cli_stdin(&["kv", "put", &format!("big/{i}"), "-"], v);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    for (i, v) in values.iter().enumerate() {
        let o = n.cli(&["kv", "get", &format!("big/{i}")]);
        assert!(o.status.success(), "kv get big/{i}: {}", stderr(&o));
        assert!(o.stdout == *v, "big/{i}: the bytes read back differ");
    }
    let o = n.cli(&["kv", "list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "big/0\nbig/1\nbig/2\n");
    let all = n.json(&["kv", "list", "big/"]);
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 3);
    for (e, v) in all.iter().zip(&values) {
        let got = data_encoding::BASE64
            .decode(e["value_b64"].as_str().unwrap().as_bytes())
            .unwrap();
        assert!(got == *v, "{}: the listed bytes differ", e["key"]);
    }
    // One page asked for 1000 keys ends early, with `more`, and the next goes on.
    let mut c = cnspr::client::blocking::Client::connect(n.socket()).unwrap();
    let first = c.kv_list_page("big/", None, 1000).unwrap();
    assert!(first.more && first.entries.len() < 3, "{:?}", first.more);
    let after = first.entries.last().map(|e| e.key.as_str());
    let rest = c.kv_list_page("big/", after, 1000).unwrap();
    let keys: Vec<&str> = first
        .entries
        .iter()
        .chain(&rest.entries)
        .map(|e| e.key.as_str())
        .collect();
    assert_eq!(keys, ["big/0", "big/1", "big/2"]);
    // The watcher saw each value whole.
    for (i, v) in values.iter().enumerate() {
        let e = rx.recv_timeout(DEADLINE).expect("watch event");
        assert_eq!(e["key"], format!("big/{i}"));
        let got = data_encoding::BASE64
            .decode(e["value_b64"].as_str().unwrap().as_bytes())
            .unwrap();
        assert!(got == *v, "big/{i}: the watched bytes differ");
    }
    let _ = w.kill();
    let _ = w.wait();
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let mut n = Node::new("solo", "");
    for round in 0..5 {
        n.start();
        for i in 0..10 {
            let k = format!("k{round}-{i}");
            let o = n.cli(&["kv", "put", &k, &k]);
            assert!(o.status.success(), "{}", stderr(&o));
        }
        n.kill9();
    }
    n.start();
    for round in 0..5 {
        for i in 0..10 {
            let k = format!("k{round}-{i}");
            let o = n.cli(&["kv", "get", &k]);
            assert_eq!(
                String::from_utf8_lossy(&o.stdout),
                k,
                "acknowledged write {k} lost"
            );
        }
    }
    // A corrupted store is an error, never a silent empty store.
    n.kill9();
    let db = n.path("state/store.redb");
    let len = std::fs::metadata(&db).unwrap().len();
    std::fs::write(&db, vec![0xAB; len as usize]).unwrap();
    let out = n.command().args(SERVE_LOOPBACK).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("store.redb"), "{}", stderr(&out));
}

#[test]
fn a_watcher_sees_each_change_once_and_resumes_after_a_restart() {
    let mut n = Node::new("solo", "");
    n.start();
    let (mut w, rx) = kv_watch(&n, "app/");
    // Wait until the watch is live (a write made now is seen).
    assert!(n.cli(&["kv", "put", "app/0", "v"]).status.success());
    let first = rx.recv_timeout(DEADLINE).expect("first change");
    assert_eq!(first["key"], "app/0");
    for i in 1..20 {
        assert!(n
            .cli(&["kv", "put", &format!("app/{i}"), "v"])
            .status
            .success());
    }
    assert!(n.cli(&["kv", "put", "other/x", "v"]).status.success());
    let mut seen = vec![first];
    while seen.len() < 20 {
        seen.push(rx.recv_timeout(DEADLINE).expect("change"));
    }
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "an extra event arrived"
    );
    let keys: Vec<&str> = seen.iter().map(|v| v["key"].as_str().unwrap()).collect();
    assert_eq!(
        keys,
        (0..20).map(|i| format!("app/{i}")).collect::<Vec<_>>()
    );
    let last_seq = seen[9]["feed_seq"].as_u64().unwrap();
    let _ = w.kill();
    let _ = w.wait();
    // Restart, then resume from the tenth change: exactly the ten after it.
    n.stop();
    n.start();
    let out = n
        .command()
        .args([
            "--json",
            "kv",
            "watch",
            "app/",
            "--from",
            &last_seq.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = out;
    let reader = BufReader::new(child.stdout.take().unwrap());
    let resumed: Vec<Value> = reader
        .lines()
        .take(10)
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    let keys: Vec<&str> = resumed.iter().map(|v| v["key"].as_str().unwrap()).collect();
    assert_eq!(
        keys,
        (10..20).map(|i| format!("app/{i}")).collect::<Vec<_>>()
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn conditional_writes_on_one_device() {
    let mut n = Node::new("solo", "");
    n.start();
    // --if-absent: the first writes, the second is a conflict (exit 3), nothing written.
    assert!(n
        .cli(&["kv", "put", "k", "one", "--if-absent"])
        .status
        .success());
    let o = n.cli(&["kv", "put", "k", "two", "--if-absent"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("already has a value"), "{}", stderr(&o));
    let v1 = n.json(&["kv", "get", "k"])["version"]
        .as_str()
        .unwrap()
        .to_string();
    // --if-version with what was read writes; the stale version then conflicts, and the
    // JSON error carries the current version.
    let o = n.cli(&["kv", "put", "k", "three", "--if-version", &v1]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v2 = n.json(&["kv", "get", "k"])["version"]
        .as_str()
        .unwrap()
        .to_string();
    let o = n.cli(&["--json", "kv", "put", "k", "four", "--if-version", &v1]);
    assert_eq!(o.status.code(), Some(3));
    let e: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(e["error"]["code"], "conflict", "{e}");
    assert_eq!(e["error"]["key"], "k", "{e}");
    assert_eq!(e["error"]["current"][0]["version"], v2.as_str(), "{e}");
    assert_eq!(
        String::from_utf8(n.cli(&["kv", "get", "k"]).stdout).unwrap(),
        "three"
    );
    // A conditional delete; a malformed version is a bad request, not a conflict.
    let o = n.cli(&["kv", "del", "k", "--if-version", &v1]);
    assert_eq!(o.status.code(), Some(3));
    let o = n.cli(&["kv", "del", "k", "--if-version", "nonsense"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("HLC:SEQ:ORIGIN"), "{}", stderr(&o));
    assert!(n
        .cli(&["kv", "del", "k", "--if-version", &v2])
        .status
        .success());
    assert_eq!(n.cli(&["kv", "get", "k"]).status.code(), Some(1));
}

/// Two devices apart both write a key conditionally on the version they both read: each
/// succeeds on its own device (the condition is checked where the write is made), and
/// once they meet the key has both versions, the same winner on each (docs/store.md).
#[test]
fn conditional_writes_on_devices_apart_become_siblings() {
    let Some(lab) = common::lab::Lab::new("kc", 2) else {
        return;
    };
    let mut nodes = vec![lab.node(0, "a"), lab.node(1, "b")];
    for n in nodes.iter_mut() {
        n.start();
    }
    lab.trust_all(&nodes);
    let (a, b) = (&nodes[0], &nodes[1]);
    a.wait_state("b", "active");
    assert!(a.cli(&["kv", "put", "k", "base"]).status.success());
    wait_until("b to have the key", || {
        b.cli(&["kv", "get", "k"]).stdout == b"base"
    });
    let v = b.json(&["kv", "get", "k"])["version"]
        .as_str()
        .unwrap()
        .to_string();
    lab.cut(1);
    wait_until("a and b apart", || {
        a.peer("b").is_some_and(|p| p["state"] == "unreachable")
    });
    assert!(a
        .cli(&["kv", "put", "k", "from-a", "--if-version", &v])
        .status
        .success());
    assert!(b
        .cli(&["kv", "put", "k", "from-b", "--if-version", &v])
        .status
        .success());
    lab.heal(1);
    let both = |n: &Node| {
        n.try_json(&["kv", "get", "k", "--all-versions"])
            .filter(|j| j["siblings"].as_array().is_some_and(|s| s.len() == 1))
    };
    wait_until("both versions on both devices", || {
        both(a).is_some() && both(b).is_some()
    });
    assert_eq!(both(a).unwrap()["version"], both(b).unwrap()["version"]);
}

/// A watcher that falls far behind (it does not read while 30,000 puts are made) still
/// gets every change exactly once, in feed order.
#[test]
fn a_slow_watcher_gets_every_change_once_in_order() {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    const N: usize = 30_000;
    let mut n = Node::new("solo", "");
    n.start();
    assert!(n.cli(&["kv", "put", "w/first", "x"]).status.success());
    let mut w = n
        .command()
        .args(["--json", "kv", "watch", "w/"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(w.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["key"], "w/first");
    // The watcher is live; now it stops reading while the puts go in, pipelined.
    let mut s = UnixStream::connect(n.socket()).unwrap();
    let reader = {
        let s = s.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut ok = 0;
            for l in BufReader::new(s).lines().take(N) {
                let v: Value = serde_json::from_str(&l.unwrap()).unwrap();
                if v["ok"] == true {
                    ok += 1;
                } else {
                    eprintln!("put failed: {v}");
                }
            }
            ok
        })
    };
    let mut batch = String::new();
    for i in 0..N {
        batch.push_str(&format!(
            "{{\"id\":{i},\"cmd\":\"kv.put\",\"key\":\"w/{i}\",\"value\":\"v\"}}\n"
        ));
    }
    s.write_all(batch.as_bytes()).unwrap();
    assert_eq!(reader.join().unwrap(), N, "every put acknowledged");
    // Read on a thread; a change skipped shows as a watcher that stops short.
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            if tx.send(serde_json::from_str(&l).unwrap()).is_err() {
                return;
            }
        }
    });
    let mut seen = std::collections::HashSet::new();
    let mut last = first["feed_seq"].as_u64().unwrap();
    while seen.len() < N {
        let Ok(v) = rx.recv_timeout(DEADLINE) else {
            panic!("the watcher stopped after {} of {N} changes", seen.len());
        };
        let seq = v["feed_seq"].as_u64().unwrap();
        assert!(seq > last, "out of order or repeated: {seq} after {last}");
        last = seq;
        assert!(seen.insert(v["key"].as_str().unwrap().to_string()), "{v}");
    }
    let _ = w.kill();
    let _ = w.wait();
}

/// `kv watch` (like `monitor`) ends with exit 1 and a reason when the daemon stops, not
/// silently with success.
#[test]
fn a_watch_says_so_when_the_daemon_stops() {
    let mut n = Node::new("solo", "");
    n.start();
    assert!(n.cli(&["kv", "put", "s/a", "x"]).status.success());
    let mut w = n
        .command()
        .args(["--json", "kv", "watch", "s/"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(w.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["key"], "s/a");
    n.stop();
    let (code, err) = finish(w);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("it stopped"), "{err}");
}
