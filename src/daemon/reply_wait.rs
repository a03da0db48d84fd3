//! A message sent with `reply` on a stream of its own, watching for its delivery: the
//! peer's QUIC stack acknowledging every byte of it (header and body) tells the sender
//! the message arrived, so a reply that does not come before the timeout can be told
//! apart from a message that never got there.

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use transport::frame::{read_frame, write_frame};
use transport::{PeerConn, StreamKind};

use super::errors::MessageError;
use super::lanes::{MAX_HEADER, MAX_RESULT};
use super::wire::{MsgHeader, MsgResult};
use crate::api::{code, ErrorBody};

/// Sends the message on its own `Message` stream and waits for the answer; sets
/// `delivered` once the peer has acknowledged the whole message.
pub async fn exchange(
    pc: &PeerConn,
    header: &MsgHeader,
    body: Bytes,
    delivered: &AtomicBool,
) -> Result<MsgResult, MessageError> {
    let (mut send, mut recv) = pc.open(StreamKind::Message).await?;
    write_frame(&mut send, header, MAX_HEADER).await?;
    if !body.is_empty() {
        send.write_chunk(body).await?;
    }
    let _ = send.finish();
    let acked = async {
        // `Ok(None)`: finished, and every byte acknowledged by the peer.
        if let Ok(None) = send.stopped().await {
            delivered.store(true, Ordering::Relaxed);
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        r = read_frame::<MsgResult, _>(&mut recv, MAX_RESULT) => {
            r?.ok_or(MessageError::NoAnswer("the peer"))
        }
        _ = acked => unreachable!("pending never completes"),
    }
}

/// Whether the message was delivered.
pub fn seen(delivered: &AtomicBool) -> bool {
    delivered.load(Ordering::Relaxed)
}

/// The error of a message delivered to `peer` whose reply did not come in time.
pub fn late(peer: &str) -> ErrorBody {
    let mut e = ErrorBody::new(
        code::TIMEOUT,
        format!("delivered to {peer}; no reply before the timeout"),
    );
    e.delivered = Some(true);
    e
}
