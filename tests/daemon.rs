//! End-to-end tests of `cnspr serve` and its CLI: real daemons on loopback, temp dirs.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[test]
fn two_daemons_trust_each_other_and_run_handlers_with_exact_input() {
    let nodes = mesh(&["alpha", "beta"], "");
    let (a, b) = (&nodes[0], &nodes[1]);
    let peers = a.json(&["peers"]);
    let beta = &peers[0];
    assert_eq!(beta["name"], "beta");
    assert_eq!(beta["state"], "active");
    assert_eq!(beta["id"], b.id.as_str());
    assert!(beta["rtt_ms"].as_f64().unwrap() > 0.0, "{beta}");
    assert_eq!(beta["addresses"][0], b.addr().as_str());
    assert!(beta["last_seen"].as_u64().is_some());
    assert_eq!(beta["via"], Value::Null, "direct: no hop, {beta}");
    let table = String::from_utf8(a.cli(&["peers"]).stdout).unwrap();
    // SPEC's columns, in order.
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "ID", "STATE", "ADDRESS", "RTT", "LAST", "SEEN", "VIA"],
        "{table}"
    );
    assert!(table.contains("direct"), "{table}");
    assert_eq!(beta["path"]["kind"], "direct", "{beta}");
    assert_eq!(beta["path"]["via"], serde_json::Value::Null, "{beta}");

    let out = b.out();
    let out_s = out.display().to_string();
    b.handler(
        "util/store.sh",
        &format!("cat > {out_s}/body.bin\nenv | grep ^CNSPR_ | sort > {out_s}/env.txt"),
    );
    // A 16 MiB binary body through standard input.
    let body = noise(16 << 20, 7);
    let res = a.cli_stdin(&["send", "beta", "util.store"], &body);
    assert!(res.status.success(), "{}", stderr(&res));
    wait_until("handler output", || {
        file(&out.join("env.txt")).is_some_and(|e| !e.is_empty())
    });
    wait_until("the whole body", || {
        file(&out.join("body.bin")).is_some_and(|f| f.len() == body.len())
    });
    assert!(
        file(&out.join("body.bin")).unwrap() == body,
        "body bytes differ"
    );
    let env = String::from_utf8(file(&out.join("env.txt")).unwrap()).unwrap();
    for want in [
        "CNSPR_EVENT=message".to_string(),
        "CNSPR_TAG=util.store".to_string(),
        "CNSPR_FROM=alpha".to_string(),
        format!("CNSPR_FROM_ID={}", a.id),
        "CNSPR_SELF_NAME=beta".to_string(),
        format!("CNSPR_SELF_ID={}", b.id),
    ] {
        assert!(env.lines().any(|l| l == want), "missing {want} in\n{env}");
    }
    assert!(env.contains("CNSPR_MESSAGE_ID="));

    // --reply: stdout and exit codes of the handlers that matched.
    b.handler("q/hostname", "echo \"I am $CNSPR_SELF_NAME\"; cat; exit 3");
    let r = a.cli(&["send", "--reply", "beta", "q.hostname", "ping"]);
    assert_eq!(
        r.status.code(),
        Some(3),
        "a failing handler makes --reply exit 3: {}",
        stderr(&r)
    );
    assert_eq!(String::from_utf8_lossy(&r.stdout), "I am beta\nping");
    let r = a.cli(&["--json", "send", "--reply", "beta", "q.hostname", "x"]);
    assert_eq!(r.status.code(), Some(3));
    // SPEC's shape: an array, one object per handler reply (extra fields allowed).
    let j: Value = serde_json::from_slice(&r.stdout).unwrap();
    let [x] = j.as_array().expect("an array").as_slice() else {
        panic!("one reply expected: {j}");
    };
    assert_eq!(x["message_id"].as_str().map(str::len), Some(16), "{j}");
    assert_eq!(x["id"], b.id.as_str(), "{j}");
    for (k, v) in [
        ("peer", json!("beta")),
        ("handler", json!("q/hostname")),
        ("exit_code", json!(3)),
        ("stdout", json!("I am beta\nx")),
        ("stdout_b64", json!("SSBhbSBiZXRhCng=")),
        ("timed_out", json!(false)),
    ] {
        assert_eq!(x[k], v, "{k} in {j}");
    }
}

#[test]
fn handler_layout_filters_and_comments() {
    let nodes = mesh(&["alpha", "beta", "gamma"], "");
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let out = c.out().display().to_string();
    // Four layouts of the same tag, a peer filter for each sender, a comment segment, and a
    // file that is not executable.
    c.handler("a/b/c", &format!("echo 1 >> {out}/layout"));
    c.handler("a/b/c.sh", &format!("echo 2 >> {out}/layout"));
    c.handler("a/b.c.py", &format!("echo 3 >> {out}/layout"));
    c.handler("a.b.c", &format!("echo 4 >> {out}/layout"));
    c.handler(
        "x/@alpha/y.sh",
        &format!("echo \"$CNSPR_FROM\" >> {out}/from-alpha"),
    );
    c.handler(
        "x/@beta/y.sh",
        &format!("echo \"$CNSPR_FROM\" >> {out}/from-beta"),
    );
    c.handler("#disabled/x/y.sh", &format!("echo c >> {out}/comment"));
    let plain = c.path("handlers").join("x/y.txt");
    std::fs::write(&plain, format!("#!/bin/sh\necho bad >> {out}/nonexec\n")).unwrap();
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();

    let r = a.cli(&["send", "--reply", "gamma", "a.b.c", ""]);
    assert!(r.status.success(), "{}", stderr(&r));
    let mut got: Vec<String> = String::from_utf8(file(&c.out().join("layout")).unwrap())
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    got.sort();
    assert_eq!(got, ["1", "2", "3", "4"]);

    for sender in [a, b] {
        let r = sender.cli(&["send", "--reply", "gamma", "x.y", "m"]);
        assert!(r.status.success(), "{}", stderr(&r));
    }
    assert_eq!(file(&c.out().join("from-alpha")).unwrap(), b"alpha\n");
    assert_eq!(file(&c.out().join("from-beta")).unwrap(), b"beta\n");
    // The comment segment is dropped from the tag: #disabled/x/y.sh also answers x.y,
    // once per message.
    assert_eq!(file(&c.out().join("comment")).unwrap(), b"c\nc\n");
    assert!(
        file(&c.out().join("nonexec")).is_none(),
        "a non-executable file ran"
    );

    let listing = c.json(&["handlers"]);
    let paths: Vec<&str> = listing["handlers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&"x/@alpha/y.sh") && !paths.contains(&"x/y.txt"),
        "{listing}"
    );
    assert!(
        listing["warnings"].to_string().contains("y.txt"),
        "{listing}"
    );
}

#[test]
fn send_all_reaches_every_member_once() {
    let mut nodes = mesh(&["alpha", "beta", "gamma"], "");
    for n in &nodes[1..] {
        let out = n.out().display().to_string();
        n.handler("note", &format!("cat >> {out}/notes"));
    }
    let r = nodes[0].cli(&["send", "--all", "note", "hello-all"]);
    assert!(r.status.success(), "{}", stderr(&r));
    for n in &nodes[1..] {
        wait_until("note delivered", || {
            file(&n.out().join("notes")).is_some_and(|f| !f.is_empty())
        });
        assert_eq!(file(&n.out().join("notes")).unwrap(), b"hello-all");
    }
    let j = nodes[0].json(&["send", "--all", "--reply", "note", "2"]);
    let peers: Vec<&Value> = j.as_array().unwrap().iter().map(|x| &x["peer"]).collect();
    assert_eq!(peers, [&json!("beta"), &json!("gamma")], "{j}");
    assert!(
        j.as_array()
            .unwrap()
            .iter()
            .all(|x| x["handler"] == "note" && x["exit_code"] == 0 && x["error"].is_null()),
        "{j}"
    );
    // A peer the message cannot reach has an entry with its error; the command exits 1.
    nodes[2].stop();
    nodes[0].wait_state("gamma", "left");
    let r = nodes[0].cli(&["--json", "send", "--all", "--reply", "note", "3"]);
    assert_eq!(r.status.code(), Some(1), "{}", stderr(&r));
    let j: Value = serde_json::from_slice(&r.stdout).unwrap();
    let [ok, failed] = j.as_array().expect("an array").as_slice() else {
        panic!("two entries expected: {j}");
    };
    assert_eq!(
        (&ok["peer"], &ok["exit_code"]),
        (&json!("beta"), &json!(0)),
        "{j}"
    );
    assert_eq!(failed["peer"], "gamma", "{j}");
    assert_eq!(failed["error"]["code"], "unreachable", "{j}");
    assert!(
        failed["handler"].is_null() && failed["exit_code"].is_null(),
        "{j}"
    );
}

#[test]
fn bad_sends_fail_with_a_clear_message() {
    let nodes = mesh(&["alpha", "beta"], "");
    let a = &nodes[0];
    for tag in [
        "",
        "a..b",
        "a/b",
        "a.@b",
        "a#b",
        "a b",
        "a.\u{7}",
        "daemon.start",
        &"x".repeat(256),
    ] {
        let r = a.cli(&["send", "beta", tag, "x"]);
        assert_eq!(r.status.code(), Some(1), "tag {tag:?} accepted");
        assert!(
            stderr(&r).contains("invalid tag"),
            "{tag:?}: {}",
            stderr(&r)
        );
    }
    // The daemon checks too, for clients other than the CLI.
    let v = raw_request(
        a,
        &json!({"id": 9, "cmd": "send", "peer": "beta", "tag": "a..b", "body": "x"}),
    );
    assert_eq!(v["error"]["code"], "invalid_tag", "{v}");
    let r = a.cli(&["send", "nobody", "t", "x"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(
        stderr(&r).contains("no peer named \"nobody\""),
        "{}",
        stderr(&r)
    );

    // A slip with --all: the tag names a peer (it would have sent the tag "beta").
    let r = a.cli(&["send", "--all", "beta", "note.x"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(stderr(&r).contains("is a peer's name"), "{}", stderr(&r));
    // --timeout 0 is refused with what it takes.
    let r = a.cli(&["send", "--timeout", "0", "beta", "t", "x"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(stderr(&r).contains("more than 0"), "{}", stderr(&r));
    // Delivered, but no handler there matches the tag: said, with its own exit code.
    let r = a.cli(&["send", "--reply", "beta", "nohandler.here", "x"]);
    assert_eq!(r.status.code(), Some(4), "{}", stderr(&r));
    assert!(
        stderr(&r).contains("no handler for nohandler.here on beta"),
        "{}",
        stderr(&r)
    );

    // A message on standard input that never ends: the send gives up at its timeout.
    let mut open_stdin = a
        .command()
        .args(["send", "--timeout", "1", "beta", "t"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _writer = open_stdin.stdin.take();
    let (code, err) = finish(open_stdin);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("did not end within --timeout"), "{err}");
    // A value over the store's limit says the limit.
    let big = vec![b'x'; 9 * 1024 * 1024];
    let r = a.cli_stdin(&["kv", "put", "big"], &big);
    assert_eq!(r.status.code(), Some(1));
    assert!(stderr(&r).contains("limit of 8 MiB"), "{}", stderr(&r));

    // A trusted peer that is not running: unreachable after --timeout.
    let ghost = Node::new("ghost", "");
    let r = a.cli(&["trust", &ghost.id, "--addr", "127.0.0.1:9"]);
    assert!(r.status.success());
    let short = &ghost.id[..9];
    let r = a.cli(&["send", "--timeout", "1", short, "t", "x"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(stderr(&r).contains("unreachable"), "{}", stderr(&r));

    // No daemon at all.
    let lonely = Node::new("lonely", "");
    let r = lonely.cli(&["peers"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(
        stderr(&r).contains("no cnspr daemon is running") && stderr(&r).contains("cnspr serve"),
        "{}",
        stderr(&r)
    );
    // `id` works without one.
    assert_eq!(lonely.json(&["id"])["name"], "lonely");
}

fn raw_request(n: &Node, req: &Value) -> Value {
    let s = UnixStream::connect(n.socket()).unwrap();
    let mut w = s.try_clone().unwrap();
    w.write_all(format!("{req}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

#[test]
fn the_socket_survives_bad_clients() {
    let mut n = Node::new("solo", "");
    n.start();
    let mode = std::fs::metadata(n.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let s = UnixStream::connect(n.socket()).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut ask = |line: &[u8]| -> Value {
        w.write_all(line).unwrap();
        w.write_all(b"\n").unwrap();
        let mut reply = String::new();
        r.read_line(&mut reply).unwrap();
        serde_json::from_str(&reply).unwrap()
    };
    let v = ask(b"{not json");
    assert_eq!(v["ok"], false);
    assert_eq!(v["error"]["code"], "bad_json");
    let v = ask(br#"{"id": 1, "cmd": "fly"}"#);
    assert_eq!(
        (v["id"].clone(), v["error"]["code"].clone()),
        (json!(1), json!("unknown_command"))
    );
    let v = ask(br#"{"id": "x", "cmd": "ping", "peer": 42}"#);
    assert_eq!(
        (v["id"].clone(), v["error"]["code"].clone()),
        (json!("x"), json!("bad_request"))
    );
    let v = ask(br#"[1, 2]"#);
    assert_eq!(v["error"]["code"], "bad_request");
    // A `cmd` of the wrong type is named as such, not as missing.
    let v = ask(br#"{"id": 5, "cmd": 5}"#);
    assert_eq!(v["error"]["code"], "bad_request");
    let why = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        why.contains("must be a string") && why.contains("a number"),
        "{v}"
    );
    let v = ask(br#"{"id": 6}"#);
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("missing")),
        "{v}"
    );
    let v = ask(br#"{"id": 2, "cmd": "status", "extra": true}"#);
    assert_eq!(v["error"]["code"], "bad_request");
    let big = vec![b'a'; 10 * 1000 * 1000];
    let v = ask(&big);
    assert_eq!(v["error"]["code"], "line_too_long");
    // The same connection still works.
    let v = ask(br#"{"id": 3, "cmd": "status"}"#);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["result"]["name"], "solo");

    // A client that disconnects in the middle of a request (and of a raw body).
    for partial in [
        &br#"{"id": 4, "cmd": "sta"#[..],
        br#"{"id":5,"cmd":"send","peer":"x","tag":"t","body_len":1000}"#,
    ] {
        let mut s = UnixStream::connect(n.socket()).unwrap();
        s.write_all(partial).unwrap();
        if partial.ends_with(b"}") {
            s.write_all(b"\nabc").unwrap();
        }
        drop(s);
    }
    assert_eq!(
        raw_request(&n, &json!({"id": 6, "cmd": "status"}))["ok"],
        true
    );
    assert!(n.alive());

    // A second daemon on the same socket is refused; the first one keeps running.
    let second = n.command().args(SERVE_LOOPBACK).output().unwrap();
    assert_eq!(second.status.code(), Some(1));
    assert!(
        stderr(&second).contains("already running"),
        "{}",
        stderr(&second)
    );
    assert!(n.alive());

    // A crashed daemon leaves a stale socket file: the next start replaces it.
    n.kill9();
    assert!(n.socket().exists());
    n.start();
    assert_eq!(
        raw_request(&n, &json!({"id": 7, "cmd": "status"}))["ok"],
        true
    );
}

#[test]
fn a_hanging_handler_is_killed_with_its_children() {
    let nodes = mesh(&["alpha", "beta"], "handler_timeout_s = 1.0\n");
    let b = &nodes[1];
    let out = b.out().display().to_string();
    b.handler(
        "hang",
        &format!("sleep 1000 &\necho $! > {out}/child.pid\nsleep 1000"),
    );
    let r = nodes[0].cli(&["send", "--reply", "beta", "hang", "x"]);
    assert_eq!(r.status.code(), Some(3), "{}", stderr(&r));
    assert!(stderr(&r).contains("timed out"), "{}", stderr(&r));
    let pid = String::from_utf8(file(&b.out().join("child.pid")).unwrap()).unwrap();
    let proc_dir = format!("/proc/{}", pid.trim());
    wait_until("the handler's child to be killed", || {
        // Gone, or a zombie waiting for its parent (init) to reap it.
        std::fs::read_to_string(format!("{proc_dir}/stat")).map_or(true, |s| s.contains(") Z "))
    });
}

#[test]
fn a_flood_beyond_the_handler_queue_is_refused_not_buffered() {
    let nodes = mesh(
        &["alpha", "beta"],
        "handler_concurrency = 1\nhandler_queue = 8\nhandler_timeout_s = 5.0\n",
    );
    let b = &nodes[1];
    let out = b.out().display().to_string();
    b.handler(
        "slow",
        &format!("while [ ! -e {out}/release ]; do sleep 0.05; done"),
    );
    // Two admitted (a peer's share of a queue of 8), the rest refused at once with
    // queue_full.
    let mut results = Vec::new();
    for _ in 0..6 {
        results.push(nodes[0].cli(&["send", "beta", "slow", "x"]));
    }
    let refused = results
        .iter()
        .filter(|r| stderr(r).contains("queue"))
        .count();
    let ok = results.iter().filter(|r| r.status.success()).count();
    assert_eq!(
        (ok, refused),
        (2, 4),
        "{:?}",
        results.iter().map(stderr).collect::<Vec<_>>()
    );
    std::fs::write(b.out().join("release"), b"").unwrap();
    // After the queue drains, messages are accepted again.
    wait_until("queue to drain", || {
        nodes[0]
            .cli(&["send", "beta", "slow", "x"])
            .status
            .success()
    });
}

#[test]
fn idle_peers_stay_active_and_freshly_seen_on_both_sides() {
    // On an idle link both sides send heartbeats, read only when the receiver wakes up
    // anyway. Both sides must keep seeing each other: `last_seen` moves on, the state
    // stays `active`.
    idle_peers_stay_fresh(&mesh(&["alpha", "beta"], ""));
}

#[test]
fn idle_peers_stay_fresh_with_beats_over_quic() {
    // Heartbeats off on both sides: one side beats over QUIC and hears the other through
    // QUIC's acknowledgements.
    let nodes = mesh(&["alpha", "beta"], "heartbeats = false\n");
    for n in &nodes {
        assert!(n.json(&["status"])["heartbeats"].is_null(), "{}", n.name);
    }
    idle_peers_stay_fresh(&nodes);
}

#[test]
fn a_peer_without_heartbeats_gets_beats_over_quic() {
    // Only alpha reads heartbeats: their link has no heartbeat keys, so alpha sends none
    // and the link beats over QUIC.
    let mut nodes = vec![
        Node::new("alpha", ""),
        Node::new("beta", "heartbeats = false\n"),
    ];
    for n in nodes.iter_mut() {
        n.start();
    }
    nodes[0].trust(&nodes[1]);
    nodes[1].trust(&nodes[0]);
    nodes[0].wait_state("beta", "active");
    nodes[1].wait_state("alpha", "active");
    idle_peers_stay_fresh(&nodes);
    assert_eq!(nodes[0].json(&["status"])["heartbeats"]["sent"], 0);
}

/// Both sides keep a fresh `last_seen` of each other for a few seconds of idling, stay
/// `active` and never log a suspicion.
fn idle_peers_stay_fresh(nodes: &[Node]) {
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let fresh_from = now() + 4;
    for (me, other) in [(&nodes[0], &nodes[1]), (&nodes[1], &nodes[0])] {
        wait_until(
            &format!("{} to see {} after {fresh_from}", me.name, other.name),
            || {
                me.peer(&other.name)
                    .is_some_and(|p| p["last_seen"].as_u64().is_some_and(|t| t >= fresh_from))
            },
        );
        assert_eq!(me.peer(&other.name).unwrap()["state"], "active");
    }
    // Neither side went through `suspect` on the way.
    for n in nodes {
        let log = n.log();
        assert!(log.contains("peer state"), "state changes are logged");
        assert!(
            !log.lines()
                .any(|l| l.contains("peer state") && l.contains("suspect")),
            "{} logged a suspicion:\n{}",
            n.name,
            n.log()
        );
    }
}

#[test]
fn heartbeats_carry_liveness_and_forged_ones_are_refused() {
    let nodes = mesh(&["alpha", "beta"], "");
    let beats = |n: &Node| n.json(&["status"])["heartbeats"].clone();
    for n in &nodes {
        wait_until(&format!("{} to accept heartbeats", n.name), || {
            beats(n)["received"].as_u64().is_some_and(|r| r >= 8)
        });
        assert_eq!(beats(n)["rejected"], 0, "{}", n.name);
    }
    // Datagrams with QUIC's fixed bit clear reach the heartbeat socket: an unknown key
    // id, a valid-looking length with a bad key, a short one, an empty-ish one.
    let alpha = &nodes[0];
    let to = alpha.addr();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut forged = vec![0x21u8; 42];
    forged[9..17].copy_from_slice(&u64::MAX.to_be_bytes());
    let junk: Vec<Vec<u8>> = vec![forged, noise(42, 7), vec![0x21, 1, 2], vec![0x00]];
    let mut sent = 0;
    for round in 0..50 {
        for (i, j) in junk.iter().enumerate() {
            let mut j = j.clone();
            j[0] &= 0x3f;
            if round > 0 && i == 1 {
                j = noise(42, round);
                j[0] &= 0x3f;
            }
            udp.send_to(&j, &to).unwrap();
            sent += 1;
        }
    }
    // None of them carries the key id of a live link: the heartbeat socket's kernel
    // filter drops them before they take room in its buffer, so the daemon never reads
    // one (a datagram with a live key id and a bad tag would be read and rejected).
    // Nothing else changed: both still see each other active and keep beating; the
    // heartbeats read after the junk was sent came after it on the wire.
    assert_eq!(sent, 200);
    let before = beats(alpha)["received"].as_u64().unwrap();
    wait_until("alpha to accept more heartbeats", || {
        beats(alpha)["received"].as_u64().unwrap() >= before + 4
    });
    assert_eq!(beats(alpha)["rejected"], 0, "junk reached the daemon");
    for (me, other) in [(&nodes[0], &nodes[1]), (&nodes[1], &nodes[0])] {
        assert_eq!(me.peer(&other.name).unwrap()["state"], "active");
        assert!(
            !me.log()
                .lines()
                .any(|l| l.contains("peer state") && l.contains("suspect")),
            "{} logged a suspicion:\n{}",
            me.name,
            me.log()
        );
    }
}

#[test]
fn peer_states_follow_crashes_restarts_and_graceful_stops() {
    let mut nodes = mesh(&["alpha", "beta"], "");
    // kill -9: suspect, then unreachable, with no command.
    nodes[1].kill9();
    nodes[0].wait_state("beta", "suspect");
    nodes[0].wait_state("beta", "unreachable");
    // Restart on the same port: active again.
    nodes[1].start();
    nodes[0].wait_state("beta", "active");
    nodes[1].wait_state("alpha", "active");
    // Graceful stop: left, not unreachable.
    nodes[1].stop();
    nodes[0].wait_state("beta", "left");
    // A send to a peer that left fails at once (not after the 30 s timeout) and says so.
    let r = nodes[0].cli(&["send", "--timeout", "30", "beta", "t", "x"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(stderr(&r).contains("beta left"), "{}", stderr(&r));
    nodes[1].start();
    nodes[0].wait_state("beta", "active");
    // remove: the peer is dropped and can no longer connect.
    let r = nodes[0].cli(&["remove", "beta"]);
    assert!(r.status.success(), "{}", stderr(&r));
    nodes[0].wait_state("beta", "removed");
    // Removing it again, or this device itself, says what is the matter.
    let r = nodes[0].cli(&["remove", &nodes[1].id]);
    assert_eq!(r.status.code(), Some(1));
    assert!(stderr(&r).contains("already removed"), "{}", stderr(&r));
    let r = nodes[0].cli(&["remove", "alpha"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(stderr(&r).contains("is this device"), "{}", stderr(&r));
    nodes[1].wait_state("alpha", "unreachable");
    // beta is told, by alpha, the next time it dials: status, peers and commands say so.
    wait_until("beta to learn it was removed", || {
        nodes[1].json(&["status"])["removed"]["by"] == "alpha"
    });
    let r = nodes[1].cli(&["send", "--timeout", "1", "alpha", "t", "x"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(
        stderr(&r).contains("this device was removed from the mesh by alpha"),
        "{}",
        stderr(&r)
    );
    let r = nodes[1].cli(&["peers"]);
    assert!(
        stderr(&r).contains("removed from the mesh by alpha"),
        "{}",
        stderr(&r)
    );
}

/// Membership records go out sealed by their origin and are taken: through a restart
/// (the new run's records supersede the old ones everywhere) and a graceful stop (the
/// `left` record), no member refuses a record of another (docs/protocol.md, "Record
/// seals"; a forged record is refused: `src/daemon/record_gate_tests.rs`).
#[test]
fn members_take_each_other_s_sealed_records() {
    let mut nodes = mesh(&["alpha", "beta", "gamma"], "");
    nodes[2].kill9();
    nodes[0].wait_state("gamma", "unreachable");
    nodes[2].start();
    for (i, a) in nodes.iter().enumerate() {
        for (j, b) in nodes.iter().enumerate() {
            if i != j {
                a.wait_state(&b.name, "active");
            }
        }
    }
    nodes[2].stop();
    nodes[0].wait_state("gamma", "left");
    nodes[1].wait_state("gamma", "left");
    for n in &nodes {
        let log = n.log();
        assert!(
            !log.contains("membership record refused") && !log.contains("bad membership message"),
            "{}:\n{log}",
            n.name
        );
    }
    nodes[2].start();
    nodes[0].wait_state("gamma", "active");
    for n in &nodes[..2] {
        let r = &n.json(&["status"])["records"];
        assert!(r["verified"].as_u64().unwrap() > 0, "{}: {r}", n.name);
        assert_eq!(
            (&r["refused"], &r["unchecked"]),
            (&json!(0), &json!(0)),
            "{}: {r}",
            n.name
        );
    }
}

#[test]
fn subscribers_see_peer_and_message_events() {
    let nodes = mesh(&["alpha", "beta"], "");
    let mut mon = nodes[1]
        .command()
        .args(["--json", "monitor"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = mon.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The subscription is live once a message sent afterwards shows up.
    let mut seen = Vec::new();
    wait_until("message event", || {
        let _ = nodes[0].cli(&["send", "beta", "app.event", "payload"]);
        while let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(l);
        }
        seen.iter().any(|l| l.contains("\"message\""))
    });
    let ev: Value =
        serde_json::from_str(seen.iter().find(|l| l.contains("\"message\"")).unwrap()).unwrap();
    assert_eq!(ev["tag"], "app.event");
    assert_eq!(ev["from"]["name"], "alpha");
    assert_eq!(ev["body_b64"], "cGF5bG9hZA==");
    let mut nodes = nodes;
    nodes[0].stop();
    wait_until("peer event", || {
        while let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.push(l);
        }
        seen.iter()
            .any(|l| l.contains("peer.status_changed") && l.contains("\"left\""))
    });
    let _ = mon.kill();
    let _ = mon.wait();
}

#[test]
fn manual_peer_addresses_and_config_errors() {
    // b trusts a, a trusts b, neither knows the other's address: a is told `--peer`.
    let mut b = Node::new("beta", "");
    b.start();
    let mut a = Node::new("alpha", "");
    a.start();
    assert!(a.cli(&["trust", &b.id]).status.success());
    assert!(b.cli(&["trust", &a.id]).status.success());
    a.stop();
    let log = std::fs::File::create(a.path("daemon2.log")).unwrap();
    let mut child = a
        .command()
        .args(SERVE_LOOPBACK)
        .arg("--handlers")
        .arg(a.path("handlers"))
        .args(["--peer", &b.addr()])
        .stderr(log)
        .spawn()
        .unwrap();
    wait_until("alpha to reach beta through --peer", || {
        a.peer("beta").is_some_and(|p| p["state"] == "active")
    });
    b.wait_state("alpha", "active");
    let _ = child.kill();
    let _ = child.wait();

    // Unknown config keys are refused, naming the key; bad values too.
    std::fs::write(a.path("config.toml"), "handler_timout_s = 3\n").unwrap();
    let out = a
        .command()
        .args(["serve", "--no-mdns", "--no-port-mapping"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("handler_timout_s"),
        "{}",
        stderr(&out)
    );
    std::fs::write(a.path("config.toml"), "handler_concurrency = 0\n").unwrap();
    let out = a
        .command()
        .args(["serve", "--no-mdns", "--no-port-mapping"])
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("handler_concurrency"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn init_is_idempotent_and_completions_print() {
    let n = Node::new("desk", "");
    let first = n.json(&["id"]);
    let again = n.json(&["init"]);
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["created"], false);
    assert_eq!(n.json(&["id"]), json!({"id": first["id"], "name": "desk"}));
    // A bad name is refused with the rule.
    let out = n.cli(&["init", "--name", "bad name"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("invalid device name"),
        "{}",
        stderr(&out)
    );
    let out = n.cli(&["completions", "bash"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("cnspr"));
}

/// The control socket is created 0600, and even with its mode widened by hand a client of
/// another user (not root) is refused with a clear message (root only: it runs the client
/// as `nobody`).
#[test]
fn the_control_socket_serves_only_its_own_user() {
    use std::os::unix::fs::PermissionsExt;
    let mut n = Node::new("solo", "");
    n.start();
    let mode = std::fs::metadata(n.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    let root = common::lab::is_root();
    let runuser = std::path::Path::new("/usr/sbin/runuser").exists();
    if !root || !runuser {
        eprintln!("skipping the other-user half: needs root and runuser");
        return;
    }
    std::fs::set_permissions(n.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(n.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let out = std::process::Command::new("/usr/sbin/runuser")
        .args(["-u", "nobody", "--", bin(), "--socket"])
        .arg(n.socket())
        .arg("status")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "another user was served: {err}");
    assert!(err.contains("serves only its own user"), "{err}");
    // The daemon goes on serving its own user.
    assert!(n.cli(&["status"]).status.success());
}

/// `--socket` given as a bare relative name works for the daemon and its clients (in the
/// same directory); a path too long for a UNIX socket fails at once with a clear message.
#[test]
fn a_relative_socket_path_works_and_a_long_one_is_refused_clearly() {
    let n = Node::new("rel", "");
    let dir = n.dir.path();
    let mut daemon = std::process::Command::new(bin())
        .current_dir(dir)
        .args([
            "--state-dir",
            "state",
            "--socket",
            "rel.sock",
            "--config",
            "config.toml",
        ])
        .args(SERVE_LOOPBACK)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the daemon on a relative socket", || {
        std::process::Command::new(bin())
            .current_dir(dir)
            .args(["--socket", "rel.sock", "status"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let _ = daemon.kill();
    let _ = daemon.wait();
    let long = format!("{}/{}", dir.display(), "s".repeat(120));
    let out = std::process::Command::new(bin())
        .args(["--state-dir"])
        .arg(dir.join("state"))
        .args(["--socket", &long, "--config"])
        .arg(dir.join("config.toml"))
        .args(SERVE_LOOPBACK)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at most 107"), "{err}");
}

/// `cnspr stop` returns once the daemon has exited, so a new one can start at once on
/// the same port and socket (`cnspr stop && cnspr serve`).
#[test]
fn stop_returns_once_the_daemon_has_exited() {
    let mut n = Node::new("solo", "");
    n.start();
    let port = n.port;
    let out = n.cli(&["--json", "stop"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["stopped"], true, "{v}");
    let child = n.child.as_mut().unwrap();
    assert!(
        child.try_wait().unwrap().is_some(),
        "stop returned while the daemon was still running"
    );
    n.child = None;
    n.start();
    assert_eq!(n.port, port, "restarted on the same port");
}

#[test]
fn request_bodies_in_flight_are_bounded_for_all_clients_together() {
    let mut n = Node::new("solo", "");
    n.start();
    const MAX_BODY: usize = 20 * 1024 * 1024;
    let half = vec![0u8; MAX_BODY / 2];
    let send = json!({"id": 1, "cmd": "send", "peer": "nobody", "tag": "t", "body_len": MAX_BODY});
    // Every reply line of every connection, as (connection, reply).
    let (tx, replies) = std::sync::mpsc::channel();
    let mut conns = Vec::new();
    // 256 MiB (control::BODY_BYTES) hold 12 bodies of 20 MiB, not 13.
    for i in 0..13 {
        let mut s = UnixStream::connect(n.socket()).unwrap();
        writeln!(s, "{send}").unwrap();
        // Half a body: the daemon waits for the rest, holding the room taken for it.
        s.write_all(&half).unwrap();
        let tx = tx.clone();
        let r = BufReader::new(s.try_clone().unwrap());
        std::thread::spawn(move || {
            for line in r.lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line).unwrap();
                let _ = tx.send((i, v));
            }
        });
        conns.push(s);
    }
    let next = || replies.recv_timeout(DEADLINE).expect("a reply");
    // Exactly one is refused at once (whichever the daemon read last), with `busy`.
    let (refused, v) = next();
    assert_eq!(v["error"]["code"], "busy", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("256 MiB"),
        "{v}"
    );
    // Its raw bytes are skipped: the connection stays in step and is served.
    conns[refused].write_all(&half).unwrap();
    writeln!(conns[refused], "{}", json!({"id": 2, "cmd": "status"})).unwrap();
    let (i, v) = next();
    assert_eq!(
        (i, v["id"].clone(), v["ok"].clone()),
        (refused, json!(2), json!(true)),
        "{v}"
    );
    // A body that arrived whole is handled and gives its room back.
    let done = (refused + 1) % conns.len();
    conns[done].write_all(&half).unwrap();
    let (i, v) = next();
    assert_eq!(
        (i, v["error"]["code"].clone()),
        (done, json!("unknown_peer")),
        "{v}"
    );
    conns[refused]
        .write_all(format!("{send}\n").as_bytes())
        .unwrap();
    conns[refused].write_all(&half).unwrap();
    conns[refused].write_all(&half).unwrap();
    let (i, v) = next();
    assert_eq!(
        (i, v["error"]["code"].clone()),
        (refused, json!("unknown_peer")),
        "{v}"
    );
}
