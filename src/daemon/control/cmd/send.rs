//! `send`: a tagged message to one peer or to all of them.

use std::sync::Arc;
use std::time::{Instant, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::Value;
use transport::DeviceId;

use super::super::framing::{err, timeout_of};
use crate::api::{code, ErrorBody, SendOutcome, SendRequest, SendResult};
use crate::daemon::context::Daemon;
use crate::daemon::messages::{new_message_id, send_one};
use crate::daemon::peers::PeerState;
use crate::handlers;

/// The outcome for `peer` when it left (stopped its daemon gracefully) and has no
/// connection now: nothing can be delivered until it comes back.
fn left(d: &Daemon, peer: &DeviceId) -> Option<SendOutcome> {
    if d.endpoint.connection(peer).is_some() {
        return None;
    }
    let table = d.peers();
    let p = table
        .peers
        .get(peer)
        .filter(|p| p.state == PeerState::Left)?;
    let when = p
        .last_seen
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|t| t.as_secs());
    Some(SendOutcome {
        peer: p.name.clone(),
        id: peer.to_string(),
        ok: false,
        error: Some(err(
            code::UNREACHABLE,
            format!(
                "{} left {} (its daemon stopped); nothing was sent",
                p.name,
                crate::output::ago(when)
            ),
        )),
        replies: Vec::new(),
    })
}

pub async fn send(d: &Arc<Daemon>, s: SendRequest, body: Bytes) -> Result<Value, ErrorBody> {
    handlers::validate_user_tag(&s.tag)
        .map_err(|e| err(code::INVALID_TAG, format!("invalid tag {:?}: {e}", s.tag)))?;
    if let Some(e) = d.removed_refusal() {
        return Err(e);
    }
    let targets: Vec<DeviceId> = match (&s.peer, s.all) {
        (Some(_), true) => return Err(err(code::BAD_REQUEST, "give either peer or all, not both")),
        (None, false) => return Err(err(code::BAD_REQUEST, "missing peer (or all: true)")),
        (Some(p), false) => vec![d.peers().resolve(p)?],
        (None, true) => d.peers().peers.keys().copied().collect(),
    };
    let deadline = Instant::now() + timeout_of(s.timeout_ms);
    let message_id = new_message_id();
    // Peers that stopped their daemon fail at once instead of after the timeout.
    let mut outcomes: Vec<SendOutcome> = targets.iter().filter_map(|p| left(d, p)).collect();
    let targets: Vec<DeviceId> = targets
        .into_iter()
        .filter(|p| !outcomes.iter().any(|o| o.id == p.to_string()))
        .collect();
    if let [peer] = targets[..] {
        outcomes.push(send_one(d, peer, &message_id, &s.tag, body, s.reply, deadline).await);
    } else if !targets.is_empty() {
        let mut set = tokio::task::JoinSet::new();
        for peer in targets {
            let (d, id, tag, body) = (d.clone(), message_id.clone(), s.tag.clone(), body.clone());
            let reply = s.reply;
            set.spawn(async move { send_one(&d, peer, &id, &tag, body, reply, deadline).await });
        }
        while let Some(r) = set.join_next().await {
            match r {
                Ok(o) => outcomes.push(o),
                Err(e) => return Err(err(code::INTERNAL, e.to_string())),
            }
        }
    }
    outcomes.sort_by(|a, b| a.peer.cmp(&b.peer));
    if !s.all {
        if let Some(e) = outcomes.first().and_then(|o| o.error.clone()) {
            return Err(e);
        }
    }
    Ok(serde_json::to_value(SendResult {
        message_id,
        outcomes,
    })
    .unwrap_or(Value::Null))
}
