//! Stream commands: `listen` (announces incoming streams), `expose`, `unexpose`,
//! `services`, `stream_status`; `connect` and `accept` are routed by the server, which
//! hands the connection over to raw mode.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncReadExt};
use tokio::sync::mpsc;

use super::super::framing::line_of;
use crate::api::Reply;
use crate::daemon::context::Daemon;
use crate::daemon::services::Announce;

/// Announces incoming streams for a listener until its connection closes.
pub async fn listen<R>(
    id: Value,
    service: &str,
    mut incoming: mpsc::Receiver<Announce>,
    mut r: R,
    tx: mpsc::Sender<Vec<u8>>,
) where
    R: AsyncBufRead + Unpin,
{
    if tx
        .send(line_of(&Reply::ok(
            id,
            serde_json::json!({"listening": service}),
        )))
        .await
        .is_err()
    {
        return;
    }
    let mut scratch = [0u8; 1024];
    loop {
        tokio::select! {
            a = incoming.recv() => match a {
                Some(a) => {
                    let ev = serde_json::json!({"event": "incoming", "stream": a.stream, "service": a.service, "peer": a.peer});
                    if tx.send(line_of(&ev)).await.is_err() {
                        return;
                    }
                }
                None => return,
            },
            n = r.read(&mut scratch) => {
                if matches!(n, Ok(0) | Err(_)) {
                    return;
                }
            }
        }
    }
}

/// `stream_status`: how a stream ended, waiting up to `wait_ms` (at most 60 s) for the
/// end; `open` while it runs.
pub async fn status(d: &Daemon, stream: String, wait_ms: Option<u64>) -> Value {
    let until = Instant::now() + Duration::from_millis(wait_ms.unwrap_or(0).min(60_000));
    let status = loop {
        match d.streams.status(&stream) {
            Some(s) => break s,
            None if Instant::now() >= until => break "open".to_string(),
            None => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    serde_json::json!({"stream": stream, "status": status})
}
