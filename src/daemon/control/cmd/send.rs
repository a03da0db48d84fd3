//! `send`: a tagged message to one peer or to all of them.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde_json::Value;
use transport::DeviceId;

use super::super::framing::{err, timeout_of};
use crate::api::{code, ErrorBody, SendRequest, SendResult};
use crate::daemon::context::Daemon;
use crate::daemon::messages::{new_message_id, send_one};
use crate::handlers;

pub async fn send(d: &Arc<Daemon>, s: SendRequest, body: Bytes) -> Result<Value, ErrorBody> {
    handlers::validate_user_tag(&s.tag)
        .map_err(|e| err(code::INVALID_TAG, format!("invalid tag {:?}: {e}", s.tag)))?;
    let targets: Vec<DeviceId> = match (&s.peer, s.all) {
        (Some(_), true) => return Err(err(code::BAD_REQUEST, "give either peer or all, not both")),
        (None, false) => return Err(err(code::BAD_REQUEST, "missing peer (or all: true)")),
        (Some(p), false) => vec![d.peers().resolve(p)?],
        (None, true) => d.peers().peers.keys().copied().collect(),
    };
    let deadline = Instant::now() + timeout_of(s.timeout_ms);
    let message_id = new_message_id();
    let mut outcomes = Vec::new();
    if let [peer] = targets[..] {
        outcomes.push(send_one(d, peer, &message_id, &s.tag, body, s.reply, deadline).await);
    } else {
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
