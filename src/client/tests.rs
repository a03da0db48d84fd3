//! The typed clients' protocol code, without a daemon: request lines, reply and event
//! parsing (shapes as the daemon writes them), line limits, paging.

use serde_json::{json, Value};

use crate::api::Code;
use crate::client::error::Error;
use crate::client::proto::{self, Lines, Pager};
use crate::client::types::{Condition, Event, KvEntry, KvPage, KvValue, Message};

fn request(line: &[u8]) -> Value {
    assert_eq!(line.last(), Some(&b'\n'));
    serde_json::from_slice(line).unwrap()
}

const ORIGIN: &str = "Q2DO-FJEN-G3RY-3W5K-SVR5-K4IY-SHXK-VENO-DWHG-L23Y-W6L2-ENAL-W6ZA";

fn ok(id: u64, result: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({"id": id, "ok": true, "result": result})).unwrap()
}

#[test]
fn requests_carry_the_id_and_raw_bytes_follow() {
    let value = [0u8, 159, 146, 150, b'\n'];
    let c = proto::kv_put("a/b", &value, Some(Condition::IfAbsent)).unwrap();
    let v = request(&c.line(7).unwrap());
    assert_eq!(v["id"], 7);
    assert_eq!(v["cmd"], "kv.put");
    assert_eq!(v["value_len"], 5);
    assert_eq!(v["if_absent"], true);
    assert_eq!(&c.body[..], &value);
    // The line parses as the daemon parses it.
    let req: crate::api::Request = serde_json::from_value({
        let mut v = v;
        v.as_object_mut().unwrap().remove("id");
        v
    })
    .unwrap();
    assert!(matches!(req, crate::api::Request::KvPut { .. }));

    let m = Message::to_all("x.y", b"hi").reply();
    let c = proto::send(&m).unwrap();
    let v = request(&c.line(1).unwrap());
    assert_eq!(v["cmd"], "send");
    assert_eq!(v["all"], true);
    assert_eq!(v["reply"], true);
    assert_eq!(v["body_len"], 2);

    let big = vec![0u8; crate::api::MAX_BODY + 1];
    assert!(matches!(
        proto::kv_put("k", &big, None),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn replies_are_matched_by_id() {
    assert!(proto::reply_to(&ok(2, json!({})), 1).is_none());
    assert!(proto::reply_to(br#"{"event":"kv","feed_seq":1}"#, 1).is_none());
    let r = proto::reply_to(&ok(1, json!({"x": 1})), 1)
        .unwrap()
        .unwrap();
    assert_eq!(r["x"], 1);
    // An error about a line the daemon could not read has a null id: it is ours.
    let e = proto::reply_to(
        br#"{"id":null,"ok":false,"error":{"code":"bad_json","message":"malformed"}}"#,
        5,
    )
    .unwrap()
    .unwrap_err();
    assert_eq!(e.code(), Some(Code::BadJson));
    assert!(matches!(
        proto::reply_to(b"not json", 1),
        Some(Err(Error::Protocol(_)))
    ));
}

#[test]
fn errors_are_typed_with_conflict_versions_and_unknown_codes() {
    let line = json!({"id": 3, "ok": false, "error": {
        "code": "conflict", "message": "changed",
        "current": [{"hlc": "h", "origin": ORIGIN, "seq": 4, "version": "h:4:x"}]}});
    let e = proto::reply_to(&serde_json::to_vec(&line).unwrap(), 3)
        .unwrap()
        .unwrap_err();
    assert!(e.is_conflict());
    let cur = e.conflict_current().unwrap();
    assert_eq!(cur.len(), 1);
    assert_eq!(cur[0].seq, 4);
    assert_eq!(cur[0].version, "h:4:x");

    let line = br#"{"id":1,"ok":false,"error":{"code":"brand_new","message":"m","extra":1}}"#;
    match proto::reply_to(line, 1).unwrap().unwrap_err() {
        Error::Api {
            code, code_name, ..
        } => {
            assert_eq!(code, Code::Unknown);
            assert_eq!(code_name, "brand_new");
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn kv_get_reads_values_counters_and_absence() {
    let c = proto::kv_get("k", true);
    let entry = json!({"key": "k", "value_b64": "AP8=", "deleted": false, "hlc": "h",
        "origin": ORIGIN, "seq": 3, "version": "h:3:o", "new_field": [1, 2],
        "siblings": [{"key": "k", "value_b64": null, "deleted": true, "hlc": "g",
            "origin": ORIGIN, "seq": 2, "version": "g:2:o"}]});
    let v = (c.parse)(Ok(entry)).unwrap().unwrap();
    let e = v.as_entry().unwrap();
    assert_eq!(e.value, vec![0, 255]);
    assert_eq!(v.version(), Some("h:3:o"));
    assert_eq!(e.siblings.len(), 1);
    assert!(e.siblings[0].deleted && e.siblings[0].value.is_none());

    let counter = json!({"key": "visits", "counter": true, "value": "-170141183460469231731687303715884105728",
        "value_b64": "", "deleted": false, "parts": {ORIGIN: 42}});
    let v = (c.parse)(Ok(counter)).unwrap().unwrap();
    let KvValue::Counter(n) = &v else {
        panic!("{v:?}")
    };
    assert_eq!(n.value, i128::MIN);
    assert_eq!(n.parts[ORIGIN], 42);
    assert!(v.version().is_none());

    let absent = Err(Error::Api {
        code: Code::NotFound,
        code_name: "not_found".into(),
        message: "no key".into(),
        current: Vec::new(),
    });
    assert!((c.parse)(absent).unwrap().is_none());
    // A reply of another shape is a protocol error, not a panic.
    assert!(matches!(
        (c.parse)(Ok(json!({"key": 5}))),
        Err(Error::Protocol(_))
    ));
    assert!(matches!(
        (c.parse)(Ok(
            json!({"key": "k", "value_b64": "not base64!", "hlc": "h",
            "origin": "o", "seq": 1, "version": "v"})
        )),
        Err(Error::Protocol(_))
    ));
}

#[test]
fn events_parse_and_unknown_kinds_pass_through() {
    let m = br#"{"event":"message","tag":"a.b","from":{"id":"I","name":"desk"},"message_id":"m","body_len":3,"body_b64":"cmF3"}"#;
    match proto::event_line(m).unwrap().unwrap() {
        Event::Message(m) => assert_eq!(m.body.as_deref(), Some(&b"raw"[..])),
        e => panic!("{e:?}"),
    }
    let lag = br#"{"event":"lagged","missed":9}"#;
    assert_eq!(
        proto::event_line(lag).unwrap(),
        Some(Event::Lagged { missed: 9 })
    );
    assert!(matches!(
        proto::event_line(br#"{"event":"future","x":1}"#).unwrap(),
        Some(Event::Other(_))
    ));
    // A late reply among the events is no event.
    assert!(proto::event_line(&ok(1, json!({}))).unwrap().is_none());

    let change = br#"{"event":"kv","feed_seq":7,"key":"k","value_b64":null,"deleted":true,"hlc":"h","origin":"o","seq":2,"version":"v","wins":true}"#;
    let c = proto::watch_line(change).unwrap().unwrap();
    assert_eq!(c.feed_seq, 7);
    assert!(c.deleted && c.value.is_none() && c.wins);
    let e = proto::watch_line(br#"{"event":"error","message":"resume from 12"}"#).unwrap_err();
    assert_eq!(e.code(), Some(Code::Store));
}

#[test]
fn lines_are_bounded_and_stay_in_step() {
    let mut l = Lines::new(4);
    let input = b"abc\ntoolong\nxy";
    let (used, done) = l.feed(input);
    assert!(done);
    assert_eq!(l.take().unwrap(), b"abc");
    let rest = &input[used..];
    let (used2, done) = l.feed(&rest[..3]);
    assert!(!done && used2 == 3);
    let (used3, done) = l.feed(&rest[3..]);
    assert!(done);
    assert!(matches!(l.take(), Err(Error::Protocol(_))));
    let tail = &rest[3 + used3..];
    assert_eq!(l.feed(tail), (2, false));
    assert_eq!(l.eof().unwrap().unwrap(), b"xy");
    assert!(l.eof().unwrap().is_none());
}

fn entry(key: &str) -> KvEntry {
    KvEntry {
        key: key.into(),
        value: Vec::new(),
        hlc: "h".into(),
        origin: "o".into(),
        seq: 1,
        version: "v".into(),
        siblings: Vec::new(),
    }
}

#[test]
fn the_pager_asks_after_the_last_key_until_no_more() {
    let mut p = Pager::new("p/", 2);
    let first = request(&p.next_call().unwrap().line(1).unwrap());
    assert_eq!(first["after"], Value::Null);
    assert_eq!(first["limit"], 2);
    p.feed(Ok(KvPage {
        entries: vec![entry("p/a"), entry("p/b")],
        more: true,
    }))
    .unwrap();
    assert_eq!(p.pop().unwrap().key, "p/a");
    assert_eq!(p.pop().unwrap().key, "p/b");
    let second = request(&p.next_call().unwrap().line(2).unwrap());
    assert_eq!(second["after"], "p/b");
    p.feed(Ok(KvPage {
        entries: vec![entry("p/c")],
        more: false,
    }))
    .unwrap();
    assert_eq!(p.pop().unwrap().key, "p/c");
    assert!(p.pop().is_none());
    assert!(p.next_call().is_none());
}

#[test]
fn a_batch_sends_its_values_in_order_after_the_line() {
    use crate::client::types::BatchOp;
    let c = proto::kv_batch(&[
        BatchOp::Put {
            key: "a",
            value: b"12",
            cond: Some(Condition::IfAbsent),
        },
        BatchOp::Del {
            key: "b",
            if_version: Some("v".into()),
        },
        BatchOp::Put {
            key: "c",
            value: b"345",
            cond: Some(Condition::IfVersion("w".into())),
        },
    ])
    .unwrap();
    let v = request(&c.line(1).unwrap());
    assert_eq!(v["cmd"], "kv.batch");
    assert_eq!(
        v["ops"],
        json!([
            {"op": "put", "key": "a", "value_len": 2, "if_absent": true},
            {"op": "del", "key": "b", "if_version": "v"},
            {"op": "put", "key": "c", "value_len": 3, "if_version": "w"},
        ])
    );
    assert_eq!(&c.body[..], b"12345");
    let r = (c.parse)(Ok(json!({"batch": "9", "ops": [
        {"key": "a", "hlc": "h", "origin": "o", "seq": 1, "version": "v1"},
        {"key": "b", "unchanged": true},
        {"key": "c", "hlc": "h", "origin": "o", "seq": 2, "version": "v2", "deleted": false},
    ]})))
    .unwrap();
    assert_eq!(r.batch.as_deref(), Some("9"));
    assert!(r.ops[1].unchanged && r.ops[1].version.is_none());
    assert_eq!(r.ops[2].seq, Some(2));
}
