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
    let out = n
        .command()
        .args([
            "serve",
            "--no-mdns",
            "--no-port-mapping",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
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
