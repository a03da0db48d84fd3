//! Dedicated streams relayed through a member: A — B — C on two bridges (network
//! namespaces, root only), A has no path of its own to C, so `cnspr connect gamma` on A
//! goes through B.

mod common;

use std::io::{Read, Write};
use std::process::Child;
use std::time::{Duration, Instant};

use common::lab::*;
use common::*;

/// The three nodes, dropped (killed) before the namespaces go.
struct Line {
    nodes: Vec<Node>,
    _lab: Lab,
}

/// Starts alpha, beta, gamma on the line, all trusting each other by ID, and waits until
/// alpha sees gamma `indirect` via beta (and gamma sees alpha the same way).
fn line(tag: &str, setup: impl FnOnce(&mut [Node])) -> Option<Line> {
    let lab = line_lab(tag)?;
    let mut nodes = vec![
        lab.node(0, "alpha"),
        lab.node(1, "beta"),
        lab.node(2, "gamma"),
    ];
    // These tests are about streams that beta joins: no connection of alpha and gamma
    // through beta (docs/reach.md, "Members relay packets"; tests/reach.rs).
    for n in &nodes {
        std::fs::write(n.path("config.toml"), "relay_packets = false\n").unwrap();
    }
    setup(&mut nodes);
    for n in nodes.iter_mut() {
        n.start();
    }
    for x in &nodes {
        for y in &nodes {
            if x.id != y.id {
                assert!(x.cli(&["trust", &y.id]).status.success());
            }
        }
    }
    let (a, c) = (&nodes[0], &nodes[2]);
    wait_until("alpha to see gamma indirect via beta", || {
        a.peer("gamma")
            .is_some_and(|p| p["state"] == "indirect" && p["via"][0] == "beta")
    });
    wait_until("gamma to see alpha indirect via beta", || {
        c.peer("alpha")
            .is_some_and(|p| p["state"] == "indirect" && p["via"][0] == "beta")
    });
    Some(Line { nodes, _lab: lab })
}

/// Streams relayed by `n` so far: (started, ended or broken), from its log.
fn relay_counts(n: &Node) -> (usize, usize) {
    let log = n.log();
    (
        log.matches("relaying a stream").count(),
        log.matches("relayed stream ended").count() + log.matches("relayed stream broken").count(),
    )
}

fn stop_child(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

const MIB: usize = 1 << 20;

#[test]
fn relayed_stream_carries_bytes_both_ways_and_half_closes() {
    let Some(l) = line("rb", |_| {}) else { return };
    let (a, b, c) = (&l.nodes[0], &l.nodes[1], &l.nodes[2]);
    let out = c.out().display().to_string();

    // 8 MiB each way at once: gamma sends its file while it stores what it receives.
    let up = noise(8 * MIB + 5, 7);
    let down = noise(8 * MIB + 11, 8);
    std::fs::write(c.out().join("down"), &down).unwrap();
    let mut lis = listen(
        c,
        "bulk",
        Some(&format!(
            "echo \"$CNSPR_PEER $CNSPR_PEER_ID\" > {out}/who; cat {out}/down & cat > {out}/got; wait"
        )),
    );
    let started = Instant::now();
    let mut cl = connect(a, "gamma", "bulk");
    let mut stdin = cl.stdin.take().unwrap();
    let mut stdout = cl.stdout.take().unwrap();
    let data = up.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&data).is_ok());
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let _ = stdout.read_to_end(&mut got);
        got
    });
    assert!(writer.join().unwrap(), "upload failed");
    let got = reader.join().unwrap();
    let (code, err) = finish(cl);
    let took = started.elapsed();
    assert_eq!(code, Some(0), "{err}\nBETA LOG\n{}", b.log());
    assert_eq!(got.len(), down.len());
    assert!(got == down, "download corrupted through the relay");
    wait_until("gamma to store the upload", || {
        file(&c.out().join("got")).is_some_and(|f| f.len() == up.len())
    });
    assert!(
        file(&c.out().join("got")).unwrap() == up,
        "upload corrupted through the relay"
    );
    eprintln!(
        "relayed stream: {:.1} MiB each way at once in {:.0} ms ({:.1} MiB/s each way)",
        up.len() as f64 / MIB as f64,
        took.as_secs_f64() * 1000.0,
        up.len() as f64 / MIB as f64 / took.as_secs_f64()
    );
    // gamma's listener sees the true origin, not the relay.
    let who = String::from_utf8(file(&c.out().join("who")).unwrap()).unwrap();
    assert_eq!(
        who.trim(),
        format!("alpha {}", a.id),
        "origin seen by the listener"
    );

    // Half-close: alpha ends its direction after a question; gamma reads to EOF, then
    // sends 8 MiB back on the direction that stayed open.
    let mut lis2 = listen(
        c,
        "half",
        Some(&format!("cat > {out}/question; cat {out}/down")),
    );
    let o = a.cli_stdin(&["connect", "gamma", "half"], b"question");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(o.stdout == down, "reply after EOF corrupted");
    assert_eq!(file(&c.out().join("question")).unwrap(), b"question");

    // The reverse: gamma ends its direction at once, alpha keeps sending 8 MiB.
    let mut lis3 = listen(c, "sink", Some(&format!("exec 1>&-; cat > {out}/sunk")));
    let o = a.cli_stdin(&["connect", "gamma", "sink"], &up);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    wait_until("gamma to store what alpha sent after gamma's EOF", || {
        file(&c.out().join("sunk")).is_some_and(|f| f.len() == up.len())
    });
    assert!(file(&c.out().join("sunk")).unwrap() == up);

    // A service the target does not have: the target's error comes back through beta.
    let o = a.cli_stdin(&["connect", "gamma", "nothing-here"], b"");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no service \"nothing-here\" on gamma"),
        "{}",
        stderr(&o)
    );

    // For comparison, 64 MiB one way: direct to beta, then through beta to gamma.
    let big = noise(64 * MIB, 9);
    let mut lis4 = listen(b, "count", Some("wc -c"));
    let mut lis5 = listen(c, "count", Some("wc -c"));
    let mut times = Vec::new();
    for peer in ["beta", "gamma"] {
        let t = Instant::now();
        let o = a.cli_stdin(&["connect", peer, "count"], &big);
        times.push(t.elapsed().as_secs_f64());
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            big.len().to_string()
        );
    }
    eprintln!(
        "64 MiB one way: direct to beta {:.0} ms ({:.0} MiB/s), through beta to gamma {:.0} ms ({:.0} MiB/s); relayed/direct throughput {:.2}",
        times[0] * 1000.0,
        64.0 / times[0],
        times[1] * 1000.0,
        64.0 / times[1],
        times[0] / times[1]
    );

    // Every stream the relay carried has ended there too.
    wait_until("beta's relayed streams to end", || {
        let (s, e) = relay_counts(b);
        s == 4 && e == 4
    });
    for lis in [&mut lis, &mut lis2, &mut lis3, &mut lis4, &mut lis5] {
        let _ = lis.kill();
        let _ = lis.wait();
    }
}

#[test]
fn relayed_stream_failures_reach_the_other_end() {
    let Some(mut l) = line("rf", |_| {}) else {
        return;
    };
    // The listening application dies in the middle of the stream.
    let mut lis = listen(&l.nodes[2], "fragile", None);
    let mut cl = connect(&l.nodes[0], "gamma", "fragile");
    let mut stdin = cl.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let blk = vec![7u8; 64 * 1024];
        while stdin.write_all(&blk).is_ok() {}
    });
    let mut lout = lis.stdout.take().unwrap();
    let mut first = [0u8; 1024];
    lout.read_exact(&mut first).unwrap(); // data is flowing through beta
    stop_child(lis);
    let t = Instant::now();
    let (code, err) = finish(cl);
    eprintln!(
        "listener killed: client exited {code:?} after {:.0} ms: {}",
        t.elapsed().as_secs_f64() * 1000.0,
        err.trim()
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("stream broken"), "{err}");
    let _ = feeder.join();
    wait_until("beta to end the broken relayed stream", || {
        relay_counts(&l.nodes[1]) == (1, 1)
    });
    assert!(
        l.nodes[1].log().contains("relayed stream broken"),
        "the relay saw a clean end"
    );

    // The alpha side dies: gamma's end of the stream breaks too.
    let lis = listen(&l.nodes[2], "other-end", None);
    let mut cl = connect(&l.nodes[0], "gamma", "other-end");
    let mut cin = cl.stdin.take().unwrap();
    cin.write_all(b"hello").unwrap();
    let mut lis = lis;
    let mut lout = lis.stdout.take().unwrap();
    let mut got = [0u8; 5];
    lout.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");
    // Killing the client closes its socket connection without a half-close of the
    // reverse direction failing: its daemon's write to the socket fails on the next byte.
    stop_child(cl);
    drop(cin);
    let mut lin = lis.stdin.take().unwrap();
    // gamma keeps writing until the broken stream stops it.
    let w = std::thread::spawn(move || {
        let blk = vec![1u8; 64 * 1024];
        while lin.write_all(&blk).is_ok() {}
    });
    let t = Instant::now();
    let (code, err) = finish(lis);
    eprintln!(
        "client killed: gamma's listener exited {code:?} after {:.0} ms: {}",
        t.elapsed().as_secs_f64() * 1000.0,
        err.trim()
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("stream broken"), "{err}");
    let _ = w.join();
    wait_until("beta to end the second relayed stream", || {
        relay_counts(&l.nodes[1]) == (2, 2)
    });

    // The relay is killed in the middle of a stream: alpha's client fails within seconds.
    let lis = listen(&l.nodes[2], "doomed", Some("cat"));
    let mut cl = connect(&l.nodes[0], "gamma", "doomed");
    let mut stdin = cl.stdin.take().unwrap();
    let mut cout = cl.stdout.take().unwrap();
    stdin.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    cout.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    l.nodes[1].kill9();
    let t = Instant::now();
    let (code, err) = finish(cl);
    eprintln!(
        "relay killed: client exited {code:?} after {:.0} ms: {}",
        t.elapsed().as_secs_f64() * 1000.0,
        err.trim()
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("stream broken"), "{err}");
    drop(stdin);
    stop_child(lis);
}

#[test]
fn a_slow_reader_behind_the_relay_slows_the_writer() {
    let Some(l) = line("rs", |_| {}) else { return };
    let (a, b, c) = (&l.nodes[0], &l.nodes[1], &l.nodes[2]);
    let out = c.out().display().to_string();
    // gamma's reader does not read at all until told to.
    let mut lis = listen(
        c,
        "slow",
        Some(&format!(
            "while [ ! -e {out}/go ]; do sleep 0.05; done; wc -c"
        )),
    );
    let mut cl = connect(a, "gamma", "slow");
    let mut stdin = cl.stdin.take().unwrap();
    let total = 256u64 << 20;
    let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let w2 = written.clone();
    let writer = std::thread::spawn(move || {
        let blk = vec![1u8; MIB];
        for _ in 0..(total >> 20) {
            stdin.write_all(&blk).unwrap();
            w2.fetch_add(MIB as u64, std::sync::atomic::Ordering::SeqCst);
        }
    });
    // The writer stalls far short of the total: flow control holds it back across both
    // hops, and the relay does not buffer the difference.
    let mut last = 0;
    wait_until("the writer to stall", || {
        std::thread::sleep(Duration::from_millis(300));
        let now = written.load(std::sync::atomic::Ordering::SeqCst);
        let stalled = now == last && now > 0;
        last = now;
        stalled
    });
    let stalled_at = written.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        stalled_at < total / 2,
        "writer was not slowed: {stalled_at} bytes accepted"
    );
    let rss: Vec<(String, u64)> = [a, b, c]
        .iter()
        .map(|n| (n.name.clone(), rss_kib(n.pid())))
        .collect();
    eprintln!(
        "stalled after {} MiB accepted; daemons' RSS while stalled (KiB): {rss:?}",
        stalled_at >> 20
    );
    for (name, kib) in &rss {
        assert!(
            *kib < 96 * 1024,
            "{name} holds {kib} KiB while the reader is stalled"
        );
    }
    let released = Instant::now();
    std::fs::write(c.out().join("go"), b"").unwrap();
    writer.join().unwrap();
    let o = cl.wait_with_output().unwrap();
    let took = released.elapsed();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), total.to_string());
    eprintln!(
        "after the release: {} MiB through the relay in {:.0} ms ({:.0} MiB/s)",
        (total - stalled_at) >> 20,
        took.as_secs_f64() * 1000.0,
        (total - stalled_at) as f64 / MIB as f64 / took.as_secs_f64()
    );
    let _ = lis.kill();
    let _ = lis.wait();
}

/// The relay carries a bounded number of one member's streams at once: one more is
/// refused at once with a clear error, and a stream that ends gives its place back.
#[test]
fn the_relay_carries_a_bounded_number_of_one_member_s_streams() {
    use serde_json::json;
    const BOUND: usize = 64; // budget::PEER_RELAYED
    let Some(l) = line("rb", |_| {}) else { return };
    let (a, c) = (&l.nodes[0], &l.nodes[2]);
    // gamma exposes a UNIX socket whose server keeps each connection open until the
    // other end has closed it.
    let sock = c.out().join("held.sock");
    let server = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    std::thread::spawn(move || {
        for s in server.incoming() {
            let Ok(mut s) = s else { break };
            std::thread::spawn(move || std::io::copy(&mut s, &mut std::io::sink()));
        }
    });
    let target = format!("unix:{}", sock.display());
    assert!(c.cli(&["expose", "held", &target]).status.success());
    let open = |i: usize| {
        a.request(json!({"id": i, "cmd": "connect", "peer": "gamma", "service": "held"}))
    };
    let mut held = Vec::new();
    for i in 0..BOUND {
        let (s, v) = open(i);
        assert_eq!(v["ok"], true, "stream {i}: {v}");
        held.push(s);
    }
    let (_s, v) = open(99);
    assert_eq!(v["error"]["code"], "queue_full", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("relay beta") && msg.contains("64 streams from alpha"),
        "{msg}"
    );
    drop(held.pop());
    wait_until("a place came back", || {
        let (s, v) = open(100);
        if v["ok"] == true {
            held.push(s);
            return true;
        }
        assert_eq!(v["error"]["code"], "queue_full", "{v}");
        false
    });
}

/// A stream relayed by beta takes at gamma one of beta's places and one of alpha's share
/// of streams relayed by members (half of them): alpha, which opened it (and signed its
/// origin), cannot take all of beta's places, so beta's own streams keep theirs, and
/// alpha's next one past its share is refused naming alpha.
#[test]
fn relayed_streams_take_their_origin_s_share_of_the_relay_s_places() {
    use serde_json::json;
    const SHARE: usize = 16; // budget::relayed_share(PEER_LISTENED)
    let Some(l) = line("ro", |_| {}) else { return };
    let (a, b, c) = (&l.nodes[0], &l.nodes[1], &l.nodes[2]);
    let accepted = c.accept_all("held");
    let open = |n: &Node, i: usize| {
        n.request(json!({"id": i, "cmd": "connect", "peer": "gamma", "service": "held"}))
    };
    let mut held = Vec::new();
    for i in 0..SHARE {
        let (s, v) = open(a, i);
        assert_eq!(v["ok"], true, "alpha's stream {i}: {v}");
        held.push((s, accepted.recv_timeout(DEADLINE).expect("accepted")));
    }
    wait_until("beta to have relayed alpha's streams", || {
        relay_counts(b).0 >= SHARE
    });
    // alpha's next is refused, naming alpha.
    let (_s, v) = open(a, 99);
    assert_eq!(v["error"]["code"], "queue_full", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("16 streams from alpha relayed by members"),
        "{msg}"
    );
    // beta's own streams still have their places: the rest of its 32.
    for i in SHARE..32 {
        let (s, v) = open(b, i);
        assert_eq!(v["ok"], true, "beta's own stream {i}: {v}");
        held.push((s, accepted.recv_timeout(DEADLINE).expect("accepted")));
    }
    let (_s, v) = open(b, 98);
    assert_eq!(v["error"]["code"], "queue_full", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("32 streams from beta"), "{msg}");
    // Places come back as streams end. One of alpha's ends, beta takes its place: alpha's
    // next is refused at beta's bound, and keeps none of its own share for that.
    type Held = Vec<(
        std::os::unix::net::UnixStream,
        std::os::unix::net::UnixStream,
    )>;
    let take = |n: &Node, held: &mut Held, what: &str| {
        wait_until(what, || {
            let (s, v) = open(n, 97);
            if v["ok"] == true {
                held.push((s, accepted.recv_timeout(DEADLINE).expect("accepted")));
                return true;
            }
            assert_eq!(v["error"]["code"], "queue_full", "{v}");
            let msg = v["error"]["message"].as_str().unwrap();
            assert!(!msg.contains("relayed by members"), "{msg}");
            false
        })
    };
    drop(held.remove(0));
    take(
        b,
        &mut held,
        "a place for beta once one of alpha's streams ended",
    );
    let (_s, v) = open(a, 100);
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("32 streams from beta") && msg.contains("those it relays"),
        "{msg}"
    );
    drop(held.pop());
    take(
        a,
        &mut held,
        "a place for alpha once one of beta's streams ended",
    );
}
