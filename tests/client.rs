//! The typed Rust clients (`cnspr::client::blocking`, `cnspr::client::asynchronous`)
//! against real daemons on loopback.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use cnspr::client::{asynchronous, blocking, BatchOp, Code, Condition, Error, Event, KvValue};
use common::*;

/// Every byte value, a newline and a NUL among them.
fn binary() -> Vec<u8> {
    (0..=255u8).rev().chain(0..=255u8).collect()
}

fn api_code<T: std::fmt::Debug>(r: Result<T, Error>) -> Code {
    match r {
        Err(Error::Api { code, .. }) => code,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// A TCP server that echoes one connection back, then closes it.
fn echo_server() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let mut r = s.try_clone().unwrap();
            let _ = std::io::copy(&mut r, &mut s);
        }
    });
    addr
}

/// Awaits `f`, failing the test after the harness's deadline.
async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(DEADLINE, f).await.expect("timed out")
}

#[test]
fn blocking_store_status_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    match blocking::Client::connect(dir.path().join("none.sock")) {
        Err(Error::NoDaemon { path }) => assert!(path.ends_with("none.sock")),
        other => panic!("{other:?}"),
    }
    let mut n = Node::new("solo", "");
    n.start();
    let mut c = blocking::Client::connect(n.socket()).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();

    let st = c.status().unwrap();
    assert_eq!(st.name, "solo");
    assert_eq!(st.id, n.id);
    assert_eq!(st.peers, 0);

    // Binary-safe values, and absent keys.
    let bin = binary();
    let w = c.kv_put("bin/a", &bin).unwrap();
    assert_eq!(w.key, "bin/a");
    assert_eq!(w.origin, n.id);
    let got = c.kv_get("bin/a").unwrap().unwrap();
    assert_eq!(&got.bytes()[..], &bin[..]);
    assert_eq!(got.version(), Some(w.version.as_str()));
    assert!(c.kv_get("bin/none").unwrap().is_none());
    // A batch against the daemon: binary values, a delete of nothing, all or nothing.
    let r = c
        .kv_batch(&[
            BatchOp::Put {
                key: "bt/a",
                value: &bin,
                cond: None,
            },
            BatchOp::Put {
                key: "bt/b",
                value: b"two",
                cond: Some(Condition::IfAbsent),
            },
            BatchOp::Del {
                key: "bt/none",
                if_version: None,
            },
        ])
        .unwrap();
    assert!(r.batch.is_some());
    assert!(r.ops[2].unchanged && !r.ops[0].unchanged);
    assert_eq!(&c.kv_get("bt/a").unwrap().unwrap().bytes()[..], &bin[..]);
    let again = c.kv_batch(&[
        BatchOp::Put {
            key: "bt/c",
            value: b"3",
            cond: None,
        },
        BatchOp::Put {
            key: "bt/b",
            value: b"x",
            cond: Some(Condition::IfAbsent),
        },
    ]);
    assert_eq!(api_code(again), Code::Conflict);
    assert!(
        c.kv_get("bt/c").unwrap().is_none(),
        "nothing of a failed batch is written"
    );
    let empty = c.kv_put("bin/empty", b"").unwrap();
    assert!(!empty.version.is_empty());
    assert_eq!(c.kv_get("bin/empty").unwrap().unwrap().bytes().len(), 0);

    // Conditional writes: a conflict names the current version, and nothing changes.
    let e = c
        .kv_put_if("bin/a", b"other", Condition::IfAbsent)
        .unwrap_err();
    assert!(e.is_conflict(), "{e}");
    let cur = e.conflict_current().unwrap();
    assert_eq!(cur.len(), 1);
    assert_eq!(cur[0].version, w.version);
    let w2 = c
        .kv_put_if("bin/a", b"second", Condition::IfVersion(w.version.clone()))
        .unwrap();
    let e = c
        .kv_put_if("bin/a", b"third", Condition::IfVersion(w.version.clone()))
        .unwrap_err();
    assert_eq!(e.conflict_current().unwrap()[0].version, w2.version);
    assert_eq!(&c.kv_get("bin/a").unwrap().unwrap().bytes()[..], b"second");
    c.kv_put_if("bin/new", b"n", Condition::IfAbsent).unwrap();

    // Listing pages with `after`, only under the prefix.
    for i in 0..7 {
        c.kv_put(&format!("list/{i:02}"), format!("v{i}").as_bytes())
            .unwrap();
    }
    c.kv_put("lisu", b"outside").unwrap();
    let page = c.kv_list_page("list/", None, 3).unwrap();
    assert_eq!(page.entries.len(), 3);
    assert!(page.more);
    let keys: Vec<String> = c
        .kv_list_paged("list/", 3)
        .map(|e| e.unwrap().key)
        .collect();
    let want: Vec<String> = (0..7).map(|i| format!("list/{i:02}")).collect();
    assert_eq!(keys, want);
    let all = c.kv_list("list/").collect::<Result<Vec<_>, _>>().unwrap();
    assert_eq!(all.len(), 7);
    assert_eq!(all[6].value, b"v6");

    // Delete, then delete again.
    let d = c.kv_del("list/00").unwrap().unwrap();
    assert_eq!(d.key, "list/00");
    assert!(c.kv_del("list/00").unwrap().is_none());
    assert!(c.kv_get("list/00").unwrap().is_none());

    // Counters.
    assert_eq!(c.kv_incr("visits", 5).unwrap().value, 5);
    let n3 = c.kv_incr("visits", -2).unwrap();
    assert_eq!(n3.value, 3);
    assert_eq!(n3.parts.get(&n.id), Some(&3));
    match c.kv_get("visits").unwrap().unwrap() {
        KvValue::Counter(k) => assert_eq!(k.value, 3),
        v => panic!("{v:?}"),
    }

    // Errors come typed.
    assert_eq!(api_code(c.kv_incr("bin/a", 1)), Code::BadRequest);
    assert_eq!(api_code(c.kv_put("bad\u{1}key", b"x")), Code::BadRequest);
    assert_eq!(api_code(c.ping("nosuch")), Code::UnknownPeer);
    assert_eq!(api_code(c.send("nosuch", "a.b", b"")), Code::UnknownPeer);

    // A reply over the limit is refused, and the connection stays in step.
    c.kv_put("big", &noise(100_000, 3)).unwrap();
    c.set_max_reply(10_000);
    assert!(matches!(c.kv_get("big"), Err(Error::Protocol(_))));
    c.set_max_reply(cnspr::client::DEFAULT_MAX_REPLY);
    assert_eq!(c.kv_get("big").unwrap().unwrap().bytes().len(), 100_000);
    assert_eq!(c.status().unwrap().name, "solo");
}

#[test]
fn blocking_watch_resumes_from_a_seq() {
    let mut n = Node::new("solo", "");
    n.start();
    let mut c = blocking::Client::connect(n.socket()).unwrap();
    c.kv_put("other/x", b"not watched").unwrap();
    let mut w = c.kv_watch("w/", None).unwrap();
    w.set_read_timeout(Some(DEADLINE)).unwrap();
    c.kv_put("w/1", b"one").unwrap();
    c.kv_put("w/2", &binary()).unwrap();
    c.kv_del("w/1").unwrap().unwrap();
    let seen: Vec<_> = (0..3).map(|_| w.next().unwrap().unwrap()).collect();
    assert_eq!(seen[0].key, "w/1");
    assert_eq!(seen[0].value.as_deref(), Some(&b"one"[..]));
    assert_eq!(seen[1].value.as_deref(), Some(&binary()[..]));
    assert!(seen[2].deleted && seen[2].value.is_none() && seen[2].key == "w/1");
    assert!(seen[0].feed_seq < seen[1].feed_seq && seen[1].feed_seq < seen[2].feed_seq);

    // Resuming after the first change gives the two others, then live ones.
    let mut again = c.kv_watch("w/", Some(seen[0].feed_seq)).unwrap();
    again.set_read_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(again.next().unwrap().unwrap(), seen[1]);
    assert_eq!(again.next().unwrap().unwrap(), seen[2]);
    c.kv_put("w/3", b"three").unwrap();
    let live = again.next().unwrap().unwrap();
    assert_eq!(live.key, "w/3");
    assert_eq!(w.next().unwrap().unwrap(), live);

    // The watch ends when the daemon goes away.
    drop(c);
    n.stop();
    for r in again {
        assert!(r.is_ok(), "{r:?}");
    }
}

#[test]
fn blocking_messages_replies_events_and_streams() {
    let nodes = mesh(&["alpha", "beta"], "");
    let (a, b) = (&nodes[0], &nodes[1]);
    b.handler("t/echo", "printf 'got:'; cat; exit 2");
    let mut ca = blocking::Client::connect(a.socket()).unwrap();
    ca.set_read_timeout(Some(DEADLINE)).unwrap();
    let cb = blocking::Client::connect(b.socket()).unwrap();

    let peers = ca.peers().unwrap();
    // Direct: no hop, `via` null.
    assert!(
        peers
            .iter()
            .any(|p| p.name == "beta" && p.id == b.id && p.via.is_none()),
        "{peers:?}"
    );
    let p = ca.ping("beta").unwrap();
    assert_eq!(p.id, b.id);
    assert!(p.via.is_empty());

    // A handler's output, and its exit code.
    let r = ca.send_reply("beta", "t.echo", b"hi\0there").unwrap();
    assert_eq!(r.outcomes.len(), 1);
    let o = &r.outcomes[0];
    assert!(o.ok && o.peer == "beta");
    assert_eq!(o.replies.len(), 1);
    assert_eq!(o.replies[0].handler, "t/echo");
    assert_eq!(o.replies[0].stdout, "got:hi\0there");
    assert_eq!(o.replies[0].exit_code, Some(2));
    assert_eq!(api_code(ca.send("beta", "t/echo", b"")), Code::InvalidTag);

    // A subscriber sees a message with its body.
    let mut events = cb.subscribe_to(&["message"]).unwrap();
    events.set_read_timeout(Some(DEADLINE)).unwrap();
    let body = noise(1000, 9);
    let sent = ca.send("beta", "note.x", &body).unwrap();
    let m = loop {
        match events.next().unwrap().unwrap() {
            Event::Message(m) if m.message_id == sent.message_id => break m,
            _ => {}
        }
    };
    assert_eq!(m.tag, "note.x");
    assert_eq!(m.from.name, "alpha");
    assert_eq!(m.body_len, 1000);
    assert_eq!(m.body.as_deref(), Some(&body[..]));

    // A byte stream to an exposed service, half-closed, reported closed.
    let o = b.cli(&["expose", "echo", &echo_server()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut cb = cb;
    let services = cb.services().unwrap();
    assert!(services
        .iter()
        .any(|s| s.service == "echo" && s.kind == "expose"));
    let mut s = ca.connect_stream("beta", "echo").unwrap();
    s.get_ref().set_read_timeout(Some(DEADLINE)).unwrap();
    let data = noise(300_000, 4);
    let mut w = s.get_ref().try_clone().unwrap();
    let up = {
        let data = data.clone();
        std::thread::spawn(move || {
            w.write_all(&data).unwrap();
            w.shutdown(std::net::Shutdown::Write).unwrap();
        })
    };
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    up.join().unwrap();
    assert!(back == data, "echoed bytes differ");
    let st = ca
        .stream_status(s.token(), Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(st, "closed");
    assert_eq!(
        api_code(ca.connect_stream("beta", "nosuch")),
        Code::UnknownService
    );
}

#[test]
fn async_client() {
    let nodes = mesh(&["alpha", "beta"], "");
    let (a, b) = (&nodes[0], &nodes[1]);
    b.handler("t/upper", "tr a-z A-Z");
    let echo = echo_server();
    let o = b.cli(&["expose", "echo", &echo]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = within(asynchronous::Client::connect(a.socket()))
            .await
            .unwrap();
        let st = within(c.status()).await.unwrap();
        assert_eq!(st.name, "alpha");
        assert_eq!(st.peers, 1);

        // Store: binary values, conditions, paging, counters, deletes.
        let bin = binary();
        let w = within(c.kv_put("k/bin", &bin)).await.unwrap();
        let got = within(c.kv_get("k/bin")).await.unwrap().unwrap();
        assert_eq!(&got.bytes()[..], &bin[..]);
        let e = within(c.kv_put_if("k/bin", b"x", Condition::IfAbsent))
            .await
            .unwrap_err();
        assert_eq!(e.conflict_current().unwrap()[0].version, w.version);
        within(c.kv_put_if("k/bin", b"y", Condition::IfVersion(w.version)))
            .await
            .unwrap();
        let v = within(c.kv_get_all_versions("k/bin"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&v.bytes()[..], b"y");
        assert!(v.as_entry().unwrap().siblings.is_empty());
        for i in 0..5 {
            within(c.kv_put(&format!("k/list/{i}"), b"v"))
                .await
                .unwrap();
        }
        let mut list = c.kv_list_paged("k/list/", 2);
        let mut keys = Vec::new();
        while let Some(e) = within(list.next()).await {
            keys.push(e.unwrap().key);
        }
        assert_eq!(
            keys,
            (0..5).map(|i| format!("k/list/{i}")).collect::<Vec<_>>()
        );
        assert_eq!(within(c.kv_incr("n", 7)).await.unwrap().value, 7);
        assert!(within(c.kv_del("k/list/0")).await.unwrap().is_some());
        assert!(within(c.kv_del("k/list/0")).await.unwrap().is_none());
        assert!(within(c.kv_get("k/list/0")).await.unwrap().is_none());
        assert_eq!(
            api_code(within(c.kv_incr("k/bin", 1)).await),
            Code::BadRequest
        );

        // Watch, then resume from a seq.
        let mut watch = within(c.kv_watch("k/list/", None)).await.unwrap();
        let mut seen = Vec::new();
        while seen.len() < 6 {
            seen.push(within(watch.next()).await.unwrap().unwrap());
        }
        assert!(seen[5].deleted && seen[5].key == "k/list/0");
        let mut again = within(c.kv_watch("k/list/", Some(seen[3].feed_seq)))
            .await
            .unwrap();
        assert_eq!(within(again.next()).await.unwrap().unwrap(), seen[4]);
        assert_eq!(within(again.next()).await.unwrap().unwrap(), seen[5]);

        // A message with the handler's reply, and a subscriber on the other side.
        let cb = within(asynchronous::Client::connect(b.socket()))
            .await
            .unwrap();
        let mut events = within(cb.subscribe_to(&["message"])).await.unwrap();
        let r = within(c.send_reply("beta", "t.upper", b"shout"))
            .await
            .unwrap();
        assert_eq!(r.outcomes[0].replies[0].stdout, "SHOUT");
        let ev = loop {
            if let Event::Message(m) = within(events.next()).await.unwrap().unwrap() {
                break m;
            }
        };
        assert_eq!(ev.message_id, r.message_id);
        assert_eq!(ev.body.as_deref(), Some(&b"shout"[..]));
        assert_eq!(api_code(within(c.ping("nosuch")).await), Code::UnknownPeer);

        // A byte stream.
        let mut s = within(c.connect_stream("beta", "echo")).await.unwrap();
        s.write_all(b"over the mesh").await.unwrap();
        s.shutdown().await.unwrap();
        let mut back = Vec::new();
        within(s.read_to_end(&mut back)).await.unwrap();
        assert_eq!(back, b"over the mesh");
        let token = s.token().to_string();
        let st = within(c.stream_status(&token, Some(Duration::from_secs(10))))
            .await
            .unwrap();
        assert_eq!(st, "closed");
    });
}
