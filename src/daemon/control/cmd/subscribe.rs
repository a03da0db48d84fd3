//! `subscribe`: the connection becomes a stream of events.

use std::sync::Arc;

use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncReadExt};
use tokio::sync::mpsc;
use tracing::debug;

use super::super::framing::{err, line_of};
use crate::api::{code, Reply};
use crate::daemon::context::Daemon;

pub async fn subscribe<R>(
    d: &Arc<Daemon>,
    id: Value,
    kinds: Vec<String>,
    mut r: R,
    tx: mpsc::Sender<Vec<u8>>,
) where
    R: AsyncBufRead + Unpin,
{
    for k in &kinds {
        if !["message", "peer", "daemon"].contains(&k.as_str()) {
            let e = err(
                code::BAD_REQUEST,
                format!("unknown event kind {k:?}; use message, peer or daemon"),
            );
            let _ = tx.send(line_of(&Reply::err(id, e))).await;
            return;
        }
    }
    let mut rx = d.events.subscribe();
    if tx
        .send(line_of(&Reply::ok(
            id,
            serde_json::json!({"subscribed": true}),
        )))
        .await
        .is_err()
    {
        return;
    }
    let mut scratch = [0u8; 1024];
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Ok(ev) => {
                    if (kinds.is_empty() || kinds.iter().any(|k| k == ev.kind())) && tx.send(line_of(&*ev)).await.is_err() {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    debug!(missed = n, "subscriber lagging");
                    if tx.send(line_of(&serde_json::json!({"event": "lagged", "missed": n}))).await.is_err() {
                        return;
                    }
                }
                Err(_) => return,
            },
            n = r.read(&mut scratch) => {
                if matches!(n, Ok(0) | Err(_)) {
                    return;
                }
            }
        }
    }
}
