//! No member can speak as another (issue #17, item 5): the origin of a message or a
//! stream that a member passes on is proven end to end by the origin's signature.
//!
//! Three members: the daemons `a` and `b`, and a rogue member `m` that speaks the wire
//! protocol itself (`rogue_connection`), connected to `b`. `m` tries to deliver messages
//! and open streams on `b` in `a`'s name: directly, as a relay that makes the origin up,
//! and as a relay that holds a real proof signed by `a` (the test signs with `a`'s key,
//! as `a`'s daemon would for a message to `b` through `m`) but changes what it covers.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use serde::{Deserialize, Serialize};
use transport::frame::{read_frame, write_frame};
use transport::{DeviceId, Identity, PeerConn, StreamKind};

/// The daemon's message header (`MsgHeader`, docs/protocol.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MsgHeader {
    id: String,
    tag: String,
    body_len: u64,
    reply: bool,
    relay_to: Option<DeviceId>,
    origin: Option<DeviceId>,
    ping: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct WireReply {
    handler: String,
    exit_code: Option<i32>,
    stdout: Vec<u8>,
    timed_out: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum MsgResult {
    Ack,
    Nack { code: String, message: String },
    Replies(Vec<WireReply>),
}

/// The origin's proof (`OriginProof`, docs/protocol.md, "Origin proofs").
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OriginProof {
    key: [u8; 32],
    time_ms: u64,
    nonce: u64,
    sig: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum AppFrame {
    Open {
        service: String,
    },
    Ok,
    Err {
        code: String,
        message: String,
    },
    Relay {
        service: String,
        to: DeviceId,
    },
    Relayed {
        service: String,
        origin: DeviceId,
    },
    SignedRelay {
        service: String,
        to: DeviceId,
        proof: OriginProof,
    },
    SignedRelayed {
        service: String,
        origin: DeviceId,
        proof: OriginProof,
    },
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

/// The bytes an origin signs for a relayed message (docs/protocol.md, "Origin proofs").
fn message_binding(
    origin: DeviceId,
    to: DeviceId,
    h: &MsgHeader,
    body: &[u8],
    p: &OriginProof,
) -> Vec<u8> {
    let mut m = b"cnspr relayed message v1\0".to_vec();
    m.extend_from_slice(&origin.0);
    m.extend_from_slice(&to.0);
    put_bytes(&mut m, h.id.as_bytes());
    put_bytes(&mut m, h.tag.as_bytes());
    m.push(u8::from(h.reply) | (u8::from(h.ping) << 1));
    m.extend_from_slice(&h.body_len.to_be_bytes());
    m.extend_from_slice(ring::digest::digest(&ring::digest::SHA256, body).as_ref());
    m.extend_from_slice(&p.time_ms.to_be_bytes());
    m.extend_from_slice(&p.nonce.to_be_bytes());
    m
}

/// The bytes an origin signs for a relayed stream.
fn stream_binding(origin: DeviceId, to: DeviceId, service: &str, p: &OriginProof) -> Vec<u8> {
    let mut m = b"cnspr relayed stream v1\0".to_vec();
    m.extend_from_slice(&origin.0);
    m.extend_from_slice(&to.0);
    put_bytes(&mut m, service.as_bytes());
    m.extend_from_slice(&p.time_ms.to_be_bytes());
    m.extend_from_slice(&p.nonce.to_be_bytes());
    m
}

fn unsigned(who: &Identity, time_ms: u64) -> OriginProof {
    OriginProof {
        key: who.public_key(),
        time_ms,
        nonce: rand::random(),
        sig: Vec::new(),
    }
}

/// `who`'s proof for a message to `to` (as its daemon makes it when the message goes
/// through a relay).
fn sign_message(
    who: &Identity,
    to: DeviceId,
    h: &MsgHeader,
    body: &[u8],
    time_ms: u64,
) -> OriginProof {
    let mut p = unsigned(who, time_ms);
    p.sig = who.sign(&message_binding(who.id, to, h, body, &p));
    p
}

fn sign_stream(who: &Identity, to: DeviceId, service: &str) -> OriginProof {
    let mut p = unsigned(who, now_ms());
    p.sig = who.sign(&stream_binding(who.id, to, service, &p));
    p
}

fn header(tag: &str, body: &[u8], origin: Option<DeviceId>) -> MsgHeader {
    MsgHeader {
        id: format!("{:016x}", rand::random::<u64>()),
        tag: tag.into(),
        body_len: body.len() as u64,
        reply: true,
        relay_to: None,
        origin,
        ping: false,
    }
}

/// One message on a Message stream of its own: header, the proof frame if any, body.
async fn message(
    pc: &PeerConn,
    h: &MsgHeader,
    proof: Option<&OriginProof>,
    body: &[u8],
) -> MsgResult {
    let (mut send, mut recv) = pc.open(StreamKind::Message).await.unwrap();
    write_frame(&mut send, h, 1 << 16).await.unwrap();
    if let Some(p) = proof {
        write_frame(&mut send, p, 1 << 16).await.unwrap();
    }
    let _ = send.write_all(body).await;
    let _ = send.finish();
    tokio::time::timeout(DEADLINE, read_frame::<MsgResult, _>(&mut recv, 32 << 20))
        .await
        .expect("an answer in time")
        .expect("a result frame")
        .expect("a result, not the end of the stream")
}

/// Opens an App stream with `first`; the answer (`Ok` or `Err`).
async fn stream(pc: &PeerConn, first: &AppFrame) -> AppFrame {
    let (mut send, mut recv) = pc.open(StreamKind::App).await.unwrap();
    write_frame(&mut send, first, 4096).await.unwrap();
    let answer = tokio::time::timeout(DEADLINE, read_frame::<AppFrame, _>(&mut recv, 4096))
        .await
        .expect("an answer in time")
        .ok()
        .flatten();
    let _ = send.finish();
    answer.expect("an answer frame")
}

/// The handlers that ran for a message answered with `reply`: (handler, output).
fn ran(r: &MsgResult) -> Vec<(String, String)> {
    match r {
        MsgResult::Replies(rs) => rs
            .iter()
            .map(|r| {
                (
                    r.handler.clone(),
                    String::from_utf8_lossy(&r.stdout).trim().to_string(),
                )
            })
            .collect(),
        other => panic!("expected handler replies, got {other:?}"),
    }
}

fn refused_as_bad_origin(r: &MsgResult, what: &str) {
    match r {
        MsgResult::Nack { code, message } => {
            assert_eq!(code, "bad_origin", "{what}: {message}");
        }
        other => panic!("{what}: delivered ({other:?})"),
    }
}

fn stream_refused_as_bad_origin(r: &AppFrame, what: &str) {
    match r {
        AppFrame::Err { code, message } => assert_eq!(code, "bad_origin", "{what}: {message}"),
        other => panic!("{what}: accepted ({other:?})"),
    }
}

/// `a` and `b` (daemons), and the rogue member `m` connected to `b`. On `b`, every
/// message `x.y` runs `x/y` (prints `CNSPR_FROM`), and one from `a` also `x/@a/y`.
fn setup() -> (
    Vec<Node>,
    tokio::runtime::Runtime,
    transport::Endpoint,
    PeerConn,
    tempfile::TempDir,
) {
    let nodes = mesh(&["a", "b"], "");
    nodes[1].handler("x/y", "echo \"any $CNSPR_FROM\"");
    nodes[1].handler("x/@a/y", "echo \"only-a $CNSPR_FROM\"");
    let (rt, ep, pc, dir) = rogue_connection(&nodes[1]);
    (nodes, rt, ep, pc, dir)
}

/// `m` sends `b` a message on its own connection with `origin` set to `a`, and opens a
/// stream saying it relays it from `a`: neither is taken as `a`'s. What `m` sends in its
/// own name still goes through, as `m`'s.
#[test]
fn a_member_cannot_claim_another_s_origin_on_its_own_connection() {
    let (nodes, rt, ep, pc, _dir) = setup();
    let (a, b) = (&nodes[0], &nodes[1]);
    let a_id: DeviceId = a.id.parse().unwrap();
    let mut lis = listen(b, "svc", Some("echo \"$CNSPR_PEER\"; cat >/dev/null"));
    let (spoofed, own, spoofed_stream, own_stream) = rt.block_on(async {
        let body = b"hi";
        let spoofed = message(&pc, &header("x.y", body, Some(a_id)), None, body).await;
        let own = message(&pc, &header("x.y", body, None), None, body).await;
        let relayed = AppFrame::Relayed {
            service: "svc".into(),
            origin: a_id,
        };
        let spoofed_stream = stream(&pc, &relayed).await;
        let own_stream = stream(
            &pc,
            &AppFrame::Open {
                service: "svc".into(),
            },
        )
        .await;
        ep.shutdown(0, "done", Duration::from_millis(100)).await;
        (spoofed, own, spoofed_stream, own_stream)
    });
    let _ = lis.kill();
    let _ = lis.wait();
    refused_as_bad_origin(&spoofed, "a message with origin a on m's own connection");
    assert_eq!(
        ran(&own),
        vec![("x/y".to_string(), "any rogue".to_string())]
    );
    stream_refused_as_bad_origin(&spoofed_stream, "a stream m says it relays from a");
    assert!(matches!(own_stream, AppFrame::Ok), "{own_stream:?}");
    assert!(b.log().contains("bad origin"), "the refusal is logged");
}

/// `m` as a relay holding a real proof signed by `a` for a message to `b`: passed on
/// unchanged it is delivered as `a`'s (the `@a` handler runs); with the body changed, the
/// origin changed, for another recipient, too old, or a second time, it is refused. The
/// same for a relayed stream: unchanged it reaches the listener as `a`'s; replayed or for
/// another service it is refused. The daemon keeps serving throughout.
#[test]
fn a_relay_cannot_change_what_the_origin_signed() {
    let (nodes, rt, ep, pc, _dir) = setup();
    let (a, b) = (&nodes[0], &nodes[1]);
    let a_key = Identity::load(&a.path("state")).expect("a's identity");
    let (a_id, b_id): (DeviceId, DeviceId) = (a.id.parse().unwrap(), b.id.parse().unwrap());
    let m_id = ep.id();
    let mut lis = listen(b, "svc", Some("echo \"$CNSPR_PEER\"; cat >/dev/null"));
    let results = rt.block_on(async {
        let mut results = Vec::new();
        let body = b"pay 10".to_vec();
        let h = header("x.y", &body, Some(a_id));
        let p = sign_message(&a_key, b_id, &h, &body, now_ms());
        results.push(("unchanged", message(&pc, &h, Some(&p), &body).await));
        // The very same message again: a replay.
        results.push(("replayed", message(&pc, &h, Some(&p), &body).await));
        // A body of the same length with other bytes.
        let h = header("x.y", &body, Some(a_id));
        let p = sign_message(&a_key, b_id, &h, &body, now_ms());
        results.push(("other body", message(&pc, &h, Some(&p), b"pay 99").await));
        // Another tag under the same proof.
        let mut other_tag = h.clone();
        other_tag.tag = "x.z".into();
        results.push(("other tag", message(&pc, &other_tag, Some(&p), &body).await));
        // The origin rewritten (to the relay itself), with a's proof.
        let mut rewritten = h.clone();
        rewritten.origin = Some(m_id);
        results.push((
            "origin rewritten",
            message(&pc, &rewritten, Some(&p), &body).await,
        ));
        // a's proof for a message to m, passed on to b.
        let h = header("x.y", &body, Some(a_id));
        let p = sign_message(&a_key, m_id, &h, &body, now_ms());
        results.push((
            "for another recipient",
            message(&pc, &h, Some(&p), &body).await,
        ));
        // Signed an hour ago.
        let h = header("x.y", &body, Some(a_id));
        let p = sign_message(&a_key, b_id, &h, &body, now_ms() - 3_600_000);
        results.push(("an hour old", message(&pc, &h, Some(&p), &body).await));
        // No proof at all.
        let h = header("x.y", &body, Some(a_id));
        results.push(("no proof", message(&pc, &h, None, &body).await));

        let p = sign_stream(&a_key, b_id, "svc");
        let relayed = |service: &str| AppFrame::SignedRelayed {
            service: service.into(),
            origin: a_id,
            proof: p.clone(),
        };
        let streams = vec![
            ("stream unchanged", stream(&pc, &relayed("svc")).await),
            ("stream replayed", stream(&pc, &relayed("svc")).await),
            (
                "stream for another service",
                stream(&pc, &relayed("svc2")).await,
            ),
        ];
        ep.shutdown(0, "done", Duration::from_millis(100)).await;
        (results, streams)
    });
    let _ = lis.kill();
    let _ = lis.wait();
    let (results, streams) = results;
    let mut got = ran(&results[0].1);
    got.sort();
    assert_eq!(
        got,
        vec![
            ("x/@a/y".to_string(), "only-a a".to_string()),
            ("x/y".to_string(), "any a".to_string())
        ],
        "a's message passed on unchanged is a's"
    );
    for (what, r) in &results[1..] {
        refused_as_bad_origin(r, what);
    }
    assert!(matches!(streams[0].1, AppFrame::Ok), "{:?}", streams[0].1);
    for (what, r) in &streams[1..] {
        stream_refused_as_bad_origin(r, what);
    }
    // Still serving: a's own message reaches b.
    let o = a.cli(&["send", "b", "x.y", "still here"]);
    assert!(o.status.success(), "{}", stderr(&o));
}
