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
//!
//! A message to a peer reached through another member goes to that relay on a Message
//! stream, with the final recipient in `relay_to` and this device's [`OriginProof`]
//! between the header and the body (`origin.rs`). This file is the sending side; what
//! arrives is read, relayed or delivered in `inbox.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use transport::frame::{read_frame, write_frame};
use transport::{DeviceId, PeerConn, StreamKind};

use super::context::Daemon;
use super::errors::MessageError;
use super::lanes::{MAX_HEADER, MAX_RESULT};
use super::origin::{sign_message, MAX_PROOF};
use super::peers::PeerState;
use super::wire::{MsgHeader, MsgResult, OriginProof};
use crate::api::{code, Code, ErrorBody, HandlerReply, SendOutcome};
use crate::handlers;

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
pub fn check_header(h: &MsgHeader) -> Result<(), MsgResult> {
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
    if let Some(c) = direct.clone().filter(|c| {
        // A connection a member relays packet by packet is end to end through it.
        !relayed || d.endpoint.relaying_member(c).is_some()
    }) {
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
        // Through a member that passes the packets on: that member is the relay.
        let member = d.endpoint.relaying_member(&pc);
        return match super::links::ping_once(&pc, left).await {
            Ok(rtt) => Ok((rtt, member, pc)),
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
    let proof = sign_message(&d.identity, peer, &header, &[]);
    let start = Instant::now();
    let exchange = message_exchange(&pc, &header, Some(&proof), Bytes::new(), "the relay");
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
            // Through a relay: this device's proof that the message is its own.
            let proof = relay_to.map(|to| sign_message(&d.identity, to, &header, &body));
            message_exchange(&pc, &header, proof.as_ref(), body.clone(), "the peer").await
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

/// One message on a `Message` stream of its own: header, the origin's proof (when the
/// header has `relay_to` or `origin`), body, end; then the answer. `who` names the other
/// end in the error when it closes without answering.
pub async fn message_exchange(
    pc: &PeerConn,
    header: &MsgHeader,
    proof: Option<&OriginProof>,
    body: Bytes,
    who: &'static str,
) -> Result<MsgResult, MessageError> {
    let (mut send, mut recv) = pc.open(StreamKind::Message).await?;
    write_frame(&mut send, header, MAX_HEADER).await?;
    if let Some(p) = proof {
        write_frame(&mut send, p, MAX_PROOF).await?;
    }
    if !body.is_empty() {
        send.write_chunk(body).await?;
    }
    let _ = send.finish();
    read_frame::<MsgResult, _>(&mut recv, MAX_RESULT)
        .await?
        .ok_or(MessageError::NoAnswer(who))
}

pub fn nack(code: Code, message: impl Into<String>) -> MsgResult {
    MsgResult::Nack {
        code: code.as_str().to_string(),
        message: message.into(),
    }
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
