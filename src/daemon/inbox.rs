//! Messages that arrive: read from a Message stream or a lane, checked, then relayed on
//! (when this device is the member in between) or delivered to the handlers here.
//!
//! A message whose header names an `origin` other than the connection's peer came
//! through a relay; it is taken as the origin's only with the origin's proof
//! (`origin.rs`), checked before any handler runs. Everything else is the peer's own.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, warn};
use transport::frame::{read_frame, write_frame};
use transport::identity::ed25519_id;
use transport::{DeviceId, IncomingStream};

use super::budget::{Held, LANE_TASKS};
use super::context::Daemon;
use super::lanes::{LANE_QUEUE, MAX_HEADER, MAX_RESULT};
use super::messages::{check_header, message_exchange, nack, LANE_MAX_BODY};
use super::origin::{now_ms, verify_message, Refusal, MAX_PROOF};
use super::wire::{LaneMsg, LaneResult, MsgHeader, MsgResult, OriginProof, WireReply};
use crate::api::{code, Event, PeerRef, MAX_BODY};
use crate::handlers::{self, EventKind, Invocation, Origin};

/// Largest body sent inline in a socket `message` event.
const EVENT_BODY_INLINE: usize = 64 * 1024;

/// A message read from a Message stream.
struct Received {
    header: MsgHeader,
    /// The origin's proof, present when the header has `relay_to` or `origin`.
    proof: Option<OriginProof>,
    body: Vec<u8>,
    /// The body's SHA-256, when the header names an origin.
    hash: Option<[u8; 32]>,
    /// The body's share of the peer's budget.
    held: Held,
}

pub async fn receive(d: Arc<Daemon>, mut s: IncomingStream) {
    // A few of a peer's message streams are read at once; one more is refused at once
    // (unread, its bytes would hold the connection's flow-control window).
    let Some(_turn) = d.budgets.try_stream(s.peer) else {
        let _ = s.recv.stop(1u32.into());
        busy(&mut s).await;
        return;
    };
    let result = match tokio::time::timeout(Duration::from_secs(30), read_message(&d, &mut s)).await
    {
        Ok(Ok(m)) => match m.header.relay_to {
            Some(dst) if dst != d.id() => forward(&d, s.peer, dst, m).await,
            _ => match origin_of(&d, s.peer, &m) {
                Err(refused) => refused,
                Ok(_) if m.header.ping => MsgResult::Ack,
                Ok(from) => deliver(&d, from, m.header, m.body, m.held).await,
            },
        },
        Ok(Err(nack)) => nack,
        Err(_) => MsgResult::Nack {
            code: code::TIMEOUT.as_str().into(),
            message: "message not received completely within 30 s".into(),
        },
    };
    if let Err(e) = write_frame(&mut s.send, &result, MAX_RESULT).await {
        debug!(error = %e, "could not answer a message");
    }
    let _ = s.send.finish();
    let _ = s.send.stopped().await;
}

/// Who a message comes from: the peer, or the origin a relay names if its proof holds
/// (a member other than this device, who signed this header and body for this device,
/// recently, and not seen before).
fn origin_of(d: &Daemon, peer: DeviceId, m: &Received) -> Result<DeviceId, MsgResult> {
    let Some(origin) = m.header.origin else {
        return Ok(peer);
    };
    let checked = (|| {
        if origin == d.id() {
            return Err(Refusal::OwnDevice);
        }
        if !d.members.is_member(&origin) {
            return Err(Refusal::NotMember);
        }
        let (Some(p), Some(hash)) = (&m.proof, &m.hash) else {
            return Err(Refusal::Missing);
        };
        let now = now_ms();
        verify_message(origin, d.id(), &m.header, hash, p, now)?;
        d.origins.admit(origin, p, now)
    })();
    checked
        .map(|()| origin)
        .map_err(|why| refuse_origin(d, peer, origin, why))
}

/// Logs and answers a message whose origin does not hold.
fn refuse_origin(d: &Daemon, peer: DeviceId, origin: DeviceId, why: Refusal) -> MsgResult {
    let name = |id: &DeviceId| d.peers().name_of(id).unwrap_or_else(|| id.short());
    warn!(
        peer = %name(&peer),
        claimed = %name(&origin),
        reason = %why,
        "bad origin: refused a message passed on as another member's"
    );
    nack(
        code::BAD_ORIGIN,
        format!(
            "{} refused a message passed on by {} as from {}: {why}",
            d.identity.name,
            name(&peer),
            name(&origin)
        ),
    )
}

/// Relays a message from `from` to `dst` over our direct connection (one hop: a relay
/// never relays again, so no loops), with `from`'s proof unchanged, and passes the
/// recipient's answer back.
async fn forward(d: &Arc<Daemon>, from: DeviceId, dst: DeviceId, m: Received) -> MsgResult {
    let Received {
        mut header,
        proof,
        body,
        held: _held,
        ..
    } = m;
    if header.origin.is_some() {
        return nack(
            code::BAD_REQUEST,
            "a relayed message cannot be relayed again",
        );
    }
    // The recipient checks the proof; a proof that is not the sender's fails here already.
    let Some(proof) = proof.filter(|p| ed25519_id(&p.key) == from) else {
        return refuse_origin(d, from, from, Refusal::WrongKey);
    };
    let Some(pc) = d.endpoint.connection(&dst) else {
        return nack(
            code::UNREACHABLE,
            "the relay has no direct link to the recipient any more",
        );
    };
    header.relay_to = None;
    header.origin = Some(from);
    let exchange = message_exchange(
        &pc,
        &header,
        Some(&proof),
        Bytes::from(body),
        "the recipient",
    );
    match tokio::time::timeout(Duration::from_secs(60), exchange).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => nack(code::UNREACHABLE, format!("relayed delivery failed: {e}")),
        Err(_) => nack(
            code::TIMEOUT,
            "the recipient did not answer the relay in time",
        ),
    }
}

fn busy_nack() -> MsgResult {
    nack(
        code::QUEUE_FULL,
        "the receiving device is busy with this device's messages (at most 40 MiB of \
         bodies, 32 message streams and a quarter of its handler_queue at once); retry later",
    )
}

/// Answers a message stream that is refused before it is read.
async fn busy(s: &mut IncomingStream) {
    let _ = write_frame(&mut s.send, &busy_nack(), MAX_RESULT).await;
    let _ = s.send.finish();
}

async fn read_message(d: &Arc<Daemon>, s: &mut IncomingStream) -> Result<Received, MsgResult> {
    let header: MsgHeader = match read_frame(&mut s.recv, MAX_HEADER).await {
        Ok(Some(h)) => h,
        Ok(None) => return Err(nack(code::BAD_REQUEST, "empty message stream")),
        Err(e) => return Err(nack(code::BAD_REQUEST, format!("bad message header: {e}"))),
    };
    if header.body_len > MAX_BODY as u64 {
        let _ = s.recv.stop(1u32.into());
        return Err(nack(
            code::TOO_LARGE,
            format!("body of {} bytes exceeds {MAX_BODY}", header.body_len),
        ));
    }
    if let Err(nack) = check_header(&header) {
        let _ = s.recv.stop(1u32.into());
        return Err(nack);
    }
    // Relayed (to a relay, or from one): the origin's proof comes before the body.
    let proof = if header.relay_to.is_some() || header.origin.is_some() {
        let proof = read_frame::<OriginProof, _>(&mut s.recv, MAX_PROOF).await;
        match proof {
            Ok(Some(p)) if p.sig.len() == 64 => Some(p),
            other => {
                let why = match other {
                    Err(e) => e.to_string(),
                    _ => "missing or malformed".into(),
                };
                warn!(peer = %s.peer.short(), %why, "bad origin: a relayed message without its origin's proof");
                let _ = s.recv.stop(1u32.into());
                return Err(nack(
                    code::BAD_ORIGIN,
                    format!("no valid origin proof after the message header ({why})"),
                ));
            }
        }
    } else {
        None
    };
    // Room for the body in this peer's budget first (it is held until the handlers ran).
    let Some(held) = d.budgets.try_bytes(s.peer, header.body_len) else {
        let _ = s.recv.stop(1u32.into());
        return Err(busy_nack());
    };
    // Read into a buffer of the announced size (no growth, no copies), hashed as it
    // arrives when an origin's proof must cover it; then the stream must end.
    let mut body = vec![0u8; header.body_len as usize];
    let mut hasher = header
        .origin
        .map(|_| ring::digest::Context::new(&ring::digest::SHA256));
    let mut at = 0;
    while at < body.len() {
        match s.recv.read(&mut body[at..]).await {
            Ok(Some(n)) => {
                if let Some(h) = hasher.as_mut() {
                    h.update(&body[at..at + n]);
                }
                at += n;
            }
            Ok(None) => return Err(nack(code::BAD_REQUEST, "body shorter than announced")),
            Err(e) => return Err(nack(code::BAD_REQUEST, format!("body not received: {e}"))),
        }
    }
    let hash = hasher.map(|h| {
        let mut out = [0u8; 32];
        out.copy_from_slice(h.finish().as_ref());
        out
    });
    match s.recv.read_to_end(0).await {
        Ok(_) => Ok(Received {
            header,
            proof,
            body,
            hash,
            held,
        }),
        Err(_) => Err(nack(code::BAD_REQUEST, "body longer than announced")),
    }
}

/// Runs the handlers for a message; `held` is the body's budget, given back once they
/// ran (or it was refused).
async fn deliver(
    d: &Arc<Daemon>,
    from: DeviceId,
    header: MsgHeader,
    body: Vec<u8>,
    held: Held,
) -> MsgResult {
    let (from_name, name_unique) = {
        let table = d.peers();
        let name = table.name_of(&from).unwrap_or_default();
        (name, table.name_unique(&from, &d.identity.name))
    };
    let from_plain = from.to_plain();
    d.emit(Event::Message {
        tag: header.tag.clone(),
        from: PeerRef {
            id: from.to_string(),
            name: from_name.clone(),
        },
        message_id: header.id.clone(),
        body_len: body.len(),
        body_b64: (body.len() <= EVENT_BODY_INLINE).then(|| data_encoding::BASE64.encode(&body)),
    });
    let origin = Origin {
        name: &from_name,
        id: &from_plain,
        name_unique,
    };
    let set = d.handlers.current();
    let matched: Vec<_> = set
        .matching(EventKind::Message, &header.tag, Some(&origin))
        .into_iter()
        .cloned()
        .collect();
    let env = handlers::message_env(
        &d.identity.name,
        &d.id().to_plain(),
        &header.tag,
        &origin,
        &header.id,
    );
    let inv = Invocation {
        kind: EventKind::Message,
        tag: header.tag.clone(),
        env,
        body: Bytes::from(body),
        handlers: matched,
    };
    if inv.handlers.is_empty() {
        return if header.reply {
            MsgResult::Replies(Vec::new())
        } else {
            MsgResult::Ack
        };
    }
    let fut = match d.runner.submit(inv) {
        Ok(f) => f,
        Err(e) => {
            return nack(
                code::QUEUE_FULL,
                format!("the receiving device is busy: {e}"),
            )
        }
    };
    if !header.reply {
        let tag = header.tag.clone();
        tokio::spawn(async move {
            let _held = held;
            for o in fut.await {
                if !o.success() {
                    warn!(%tag, handler = %o.handler, exit = ?o.exit_code, timed_out = o.timed_out, error = ?o.error, "handler failed");
                }
            }
        });
        return MsgResult::Ack;
    }
    // Keep the answer within one result frame: later handlers' output is cut if the
    // outputs together would not fit.
    let mut budget = MAX_RESULT - 64 * 1024;
    let outcomes = fut.await;
    drop(held);
    MsgResult::Replies(
        outcomes
            .into_iter()
            .map(|mut o| {
                let room = budget.saturating_sub(o.handler.len() + 64);
                o.stdout.truncate(room);
                budget = budget.saturating_sub(o.stdout.len() + o.handler.len() + 64);
                WireReply {
                    handler: o.handler,
                    exit_code: o.exit_code,
                    stdout: o.stdout,
                    timed_out: o.timed_out,
                }
            })
            .collect(),
    )
}

/// Receives a lane: reads messages one after another, answers each when delivered.
pub async fn serve_lane(d: Arc<Daemon>, s: IncomingStream) {
    let IncomingStream {
        peer,
        mut send,
        mut recv,
        ..
    } = s;
    let (tx, mut results) = mpsc::channel::<LaneResult>(LANE_QUEUE);
    // Messages with `reply` wait for their handlers in tasks of their own: at most
    // LANE_TASKS at once; then the lane is not read until one ends.
    let tasks = Arc::new(Semaphore::new(LANE_TASKS));
    let writer = tokio::spawn(async move {
        let mut buf = Vec::new();
        while let Some(first) = results.recv().await {
            buf.clear();
            let mut next = Some(first);
            while let Some(r) = next {
                if let Ok(f) = transport::frame::encode(&r, MAX_RESULT) {
                    buf.extend_from_slice(&f);
                }
                next = if buf.len() < 256 * 1024 {
                    results.try_recv().ok()
                } else {
                    None
                };
            }
            if send.write_all(&buf).await.is_err() {
                return;
            }
        }
        let _ = send.finish();
    });
    loop {
        let msg: LaneMsg = match read_frame(&mut recv, MAX_HEADER).await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                debug!(error = %e, "bad frame on a message lane; closing it");
                let _ = recv.stop(1u32.into());
                break;
            }
        };
        if msg.header.body_len > LANE_MAX_BODY as u64 {
            debug!("oversized body on a message lane; closing it");
            let _ = recv.stop(1u32.into());
            break;
        }
        let held = d.budgets.bytes(peer, msg.header.body_len).await;
        let mut body = vec![0u8; msg.header.body_len as usize];
        if recv.read_exact(&mut body).await.is_err() {
            break;
        }
        let seq = msg.seq;
        let Some(held) = held else {
            // This peer holds its share of the handler queue: refused, not buffered.
            if tx
                .send(LaneResult {
                    seq,
                    result: busy_nack(),
                })
                .await
                .is_err()
            {
                break;
            }
            continue;
        };
        let result = if let Err(nack) = check_header(&msg.header) {
            Some(nack)
        } else if msg.header.origin.is_some_and(|o| o != peer) {
            // A lane carries only its sender's own messages (relayed ones have streams
            // of their own, with the origin's proof).
            Some(refuse_origin(
                &d,
                peer,
                msg.header.origin.unwrap(),
                Refusal::Missing,
            ))
        } else if msg.header.reply {
            let Ok(task) = tasks.clone().acquire_owned().await else {
                break;
            };
            let (d, tx) = (d.clone(), tx.clone());
            tokio::spawn(async move {
                let _task = task;
                let result = deliver(&d, peer, msg.header, body, held).await;
                let _ = tx.send(LaneResult { seq, result }).await;
            });
            None
        } else {
            Some(deliver(&d, peer, msg.header, body, held).await)
        };
        if let Some(result) = result {
            if tx.send(LaneResult { seq, result }).await.is_err() {
                break;
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}
