//! Tagged messages: sent on their own QUIC stream each, acknowledged by the receiving
//! daemon, run through the handlers there.
//!
//! Wire, large messages: a `StreamKind::Message` stream carries one [`MsgHeader`] frame,
//! `body_len` raw body bytes, end of stream; the receiver answers one [`MsgResult`] frame.
//!
//! Small messages (body up to [`LANE_MAX_BODY`]) share one long-lived `StreamKind::Messages`
//! stream per connection (a "lane"): the sender writes [`LaneMsg`] frames, each followed by
//! its raw body, without waiting; the receiver answers [`LaneResult`] frames in completion
//! order, matched by sequence number. A large transfer never delays them: it has its own
//! stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, warn};
use transport::frame::{read_frame, write_frame};
use transport::{DeviceId, IncomingStream, PeerConn, StreamKind};

use super::budget::{Held, LANE_TASKS};
use super::context::Daemon;
use super::errors::MessageError;
use super::lanes::{LANE_QUEUE, MAX_HEADER, MAX_RESULT};
use super::peers::PeerState;
use super::wire::{LaneMsg, LaneResult, MsgHeader, MsgResult, WireReply};
use crate::api::{code, Code, ErrorBody, Event, HandlerReply, PeerRef, SendOutcome, MAX_BODY};
use crate::handlers::{self, EventKind, Invocation, Origin};

/// Largest body sent inline in a socket `message` event.
const EVENT_BODY_INLINE: usize = 64 * 1024;

/// Largest body sent on a lane.
pub const LANE_MAX_BODY: usize = 64 * 1024;
pub fn new_message_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Whether `id` has the form [`new_message_id`] gives: 16 lowercase hexadecimal digits.
/// Nothing else reaches a handler's `CNSPR_MESSAGE_ID` (a member may be stolen).
pub fn valid_message_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The checks every received header passes before its message is delivered or relayed.
fn check_header(h: &MsgHeader) -> Result<(), MsgResult> {
    if !valid_message_id(&h.id) {
        return Err(nack(
            code::BAD_REQUEST,
            "malformed message ID (16 lowercase hexadecimal digits expected)",
        ));
    }
    handlers::validate_user_tag(&h.tag).map_err(|e| nack(code::INVALID_TAG, e.to_string()))
}

/// Waits (until `deadline`) for a live connection to `peer`, dialling it.
pub async fn connection_to(
    d: &Arc<Daemon>,
    peer: DeviceId,
    deadline: Instant,
) -> Result<PeerConn, ErrorBody> {
    let mut last = String::from("no address known for it");
    loop {
        if let Some(c) = d.endpoint.connection(&peer) {
            return Ok(c);
        }
        let addrs = d
            .peers()
            .peers
            .get(&peer)
            .map(|p| p.addrs.clone())
            .unwrap_or_default();
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorBody::new(
                code::UNREACHABLE,
                format!("peer is unreachable ({last})"),
            ));
        }
        if !addrs.is_empty() {
            match tokio::time::timeout(left, d.endpoint.connect(peer, &addrs)).await {
                Ok(Ok(c)) => return Ok(c),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "timed out".into(),
            }
        }
        tokio::time::sleep(
            Duration::from_millis(100).min(deadline.saturating_duration_since(Instant::now())),
        )
        .await;
    }
}

/// The connection to use for `peer`: the direct one, or (when the membership core says
/// the peer is reached through another member) the relay's, with the final recipient.
pub async fn route(
    d: &Arc<Daemon>,
    peer: DeviceId,
    deadline: Instant,
) -> Result<(PeerConn, Option<DeviceId>), ErrorBody> {
    // A peer the core holds `indirect` is not answering on its connection, even while
    // that connection waits out its silence timeout: go through the member.
    let relayed = d
        .peers()
        .peers
        .get(&peer)
        .is_some_and(|p| p.state == PeerState::Indirect);
    let direct = d.endpoint.connection(&peer);
    if let Some(c) = direct.clone().filter(|_| !relayed) {
        return Ok((c, None));
    }
    if let Some(via) = d.member.next_hop(&peer).filter(|v| *v != peer) {
        if let Some(c) = d.endpoint.connection(&via) {
            return Ok((c, Some(peer)));
        }
    }
    if let Some(c) = direct {
        return Ok((c, None));
    }
    Ok((connection_to(d, peer, deadline).await?, None))
}

/// Pings `peer` end to end (relayed if need be): the round-trip time and the relay.
pub async fn ping(
    d: &Arc<Daemon>,
    peer: DeviceId,
    deadline: Instant,
) -> Result<(Duration, Option<DeviceId>, PeerConn), ErrorBody> {
    let (pc, relay_to) = route(d, peer, deadline).await?;
    if relay_to.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        return match super::links::ping_once(&pc, left).await {
            Ok(rtt) => Ok((rtt, None, pc)),
            Err(e) => Err(e.ping_body()),
        };
    }
    let header = MsgHeader {
        id: new_message_id(),
        tag: "ping".into(),
        body_len: 0,
        reply: false,
        relay_to,
        origin: None,
        ping: true,
    };
    let start = Instant::now();
    let exchange = message_exchange(&pc, &header, Bytes::new(), "the relay");
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, exchange).await {
        Ok(Ok(MsgResult::Ack)) => Ok((start.elapsed(), Some(pc.peer), pc)),
        Ok(Ok(MsgResult::Nack { code, message })) => Err(ErrorBody::from_wire(&code, message)),
        Ok(Ok(_)) => Err(ErrorBody::new(
            code::INTERNAL,
            "unexpected answer to a ping",
        )),
        Ok(Err(e)) => Err(ErrorBody::new(
            code::UNREACHABLE,
            format!("ping failed: {e}"),
        )),
        Err(_) => Err(ErrorBody::new(
            code::TIMEOUT,
            "no answer before the timeout",
        )),
    }
}

/// Sends one message to one peer and waits for its acknowledgement (or handler replies).
pub async fn send_one(
    d: &Arc<Daemon>,
    peer: DeviceId,
    id: &str,
    tag: &str,
    body: Bytes,
    reply: bool,
    deadline: Instant,
) -> SendOutcome {
    let name = d.peers().name_of(&peer).unwrap_or_default();
    let mut outcome = SendOutcome {
        peer: name.clone(),
        id: peer.to_string(),
        ok: false,
        error: None,
        replies: Vec::new(),
    };
    let delivered = std::sync::atomic::AtomicBool::new(false);
    let res = async {
        let (pc, relay_to) = route(d, peer, deadline).await?;
        let left = deadline.saturating_duration_since(Instant::now());
        let header = MsgHeader {
            id: id.to_string(),
            tag: tag.to_string(),
            body_len: body.len() as u64,
            reply,
            relay_to,
            origin: None,
            ping: false,
        };
        // With `reply`, on a stream of its own: its delivery is seen apart from the reply.
        let exchange = async {
            if reply && relay_to.is_none() {
                return super::reply_wait::exchange(&pc, &header, body.clone(), &delivered).await;
            }
            if body.len() <= LANE_MAX_BODY && relay_to.is_none() {
                return d.lanes.send(&pc, header, body.clone()).await;
            }
            message_exchange(&pc, &header, body.clone(), "the peer").await
        };
        match tokio::time::timeout(left, exchange).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(ErrorBody::new(
                code::UNREACHABLE,
                format!("delivery failed: {e}"),
            )),
            Err(_) if super::reply_wait::seen(&delivered) => Err(super::reply_wait::late(&name)),
            Err(_) => Err(ErrorBody::new(
                code::TIMEOUT,
                "no acknowledgement before the timeout",
            )),
        }
    }
    .await;
    match res {
        Ok(MsgResult::Ack) => outcome.ok = true,
        Ok(MsgResult::Replies(rs)) => {
            outcome.ok = true;
            outcome.replies = rs
                .into_iter()
                .map(|r| HandlerReply {
                    peer: name.clone(),
                    handler: r.handler,
                    exit_code: r.exit_code,
                    stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
                    stdout_b64: data_encoding::BASE64.encode(&r.stdout),
                    timed_out: r.timed_out,
                })
                .collect();
        }
        Ok(MsgResult::Nack { code, message }) => {
            outcome.error = Some(ErrorBody::from_wire(&code, message))
        }
        Err(e) => outcome.error = Some(e),
    }
    outcome
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
        Ok(Ok((header, body, held))) => match header.relay_to {
            Some(dst) if dst != d.id() => forward(&d, s.peer, dst, header, body).await,
            _ => {
                // A relay vouches for the origin; only members count as origins.
                let from = match header.origin {
                    Some(o) if o != s.peer && d.members.is_member(&o) => o,
                    _ => s.peer,
                };
                if header.ping {
                    MsgResult::Ack
                } else {
                    deliver(&d, from, header, body, held).await
                }
            }
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

/// Relays a message from `from` to `dst` over our direct connection (one hop: a relay
/// never relays again, so no loops), and passes the recipient's answer back.
async fn forward(
    d: &Arc<Daemon>,
    from: DeviceId,
    dst: DeviceId,
    mut header: MsgHeader,
    body: Vec<u8>,
) -> MsgResult {
    if header.origin.is_some() {
        return nack(
            code::BAD_REQUEST,
            "a relayed message cannot be relayed again",
        );
    }
    let Some(pc) = d.endpoint.connection(&dst) else {
        return nack(
            code::UNREACHABLE,
            "the relay has no direct link to the recipient any more",
        );
    };
    header.relay_to = None;
    header.origin = Some(from);
    let exchange = message_exchange(&pc, &header, Bytes::from(body), "the recipient");
    match tokio::time::timeout(Duration::from_secs(60), exchange).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => nack(code::UNREACHABLE, format!("relayed delivery failed: {e}")),
        Err(_) => nack(
            code::TIMEOUT,
            "the recipient did not answer the relay in time",
        ),
    }
}

/// One message on a `Message` stream of its own: header, body, end; then the answer.
/// `who` names the other end in the error when it closes without answering.
async fn message_exchange(
    pc: &PeerConn,
    header: &MsgHeader,
    body: Bytes,
    who: &'static str,
) -> Result<MsgResult, MessageError> {
    let (mut send, mut recv) = pc.open(StreamKind::Message).await?;
    write_frame(&mut send, header, MAX_HEADER).await?;
    if !body.is_empty() {
        send.write_chunk(body).await?;
    }
    let _ = send.finish();
    read_frame::<MsgResult, _>(&mut recv, MAX_RESULT)
        .await?
        .ok_or(MessageError::NoAnswer(who))
}

fn busy_nack() -> MsgResult {
    nack(
        code::QUEUE_FULL,
        "the receiving device is busy with this device's messages (at most 40 MiB of \
         bodies and 32 messages at once); retry later",
    )
}

/// Answers a message stream that is refused before it is read.
async fn busy(s: &mut IncomingStream) {
    let _ = write_frame(&mut s.send, &busy_nack(), MAX_RESULT).await;
    let _ = s.send.finish();
}

fn nack(code: Code, message: impl Into<String>) -> MsgResult {
    MsgResult::Nack {
        code: code.as_str().to_string(),
        message: message.into(),
    }
}

async fn read_message(
    d: &Arc<Daemon>,
    s: &mut IncomingStream,
) -> Result<(MsgHeader, Vec<u8>, Held), MsgResult> {
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
    // Room for the body in this peer's budget first (it is held until the handlers ran).
    let Some(held) = d.budgets.try_bytes(s.peer, header.body_len) else {
        let _ = s.recv.stop(1u32.into());
        return Err(busy_nack());
    };
    // Read into a buffer of the announced size (no growth, no copies), then the stream
    // must end.
    let mut body = vec![0u8; header.body_len as usize];
    s.recv.read_exact(&mut body).await.map_err(|e| match e {
        transport::quinn::ReadExactError::FinishedEarly(_) => {
            nack(code::BAD_REQUEST, "body shorter than announced")
        }
        e => nack(code::BAD_REQUEST, format!("body not received: {e}")),
    })?;
    match s.recv.read_to_end(0).await {
        Ok(_) => Ok((header, body, held)),
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
    let from_name = d.peers().name_of(&from).unwrap_or_default();
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
        let result = if let Err(nack) = check_header(&msg.header) {
            Some(nack)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_documented_message_id_form_is_accepted() {
        assert!(valid_message_id(&new_message_id()));
        assert!(valid_message_id("00000000000000ab"));
        for bad in [
            "",
            "00000000000000AB",
            "0000000000000ab",
            "../../../etc/pa",
            "00000000000000a\0",
            "00000000000000abc",
        ] {
            assert!(!valid_message_id(bad), "{bad:?}");
        }
    }
}
