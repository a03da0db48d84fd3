//! Message lanes: the long-lived stream per connection that carries small messages (see
//! `messages.rs`): one per peer, owned by [`Lanes`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use transport::frame::read_frame;
use transport::{DeviceId, PeerConn, StreamKind};

use super::errors::MessageError;
use super::wire::{LaneMsg, LaneResult, MsgHeader, MsgResult};

/// The lanes of this daemon, one per peer (replaced when its connection changes).
#[derive(Default)]
pub struct Lanes {
    map: Mutex<HashMap<DeviceId, Lane>>,
}

impl Lanes {
    /// Sends one small message on `pc`'s lane (opening the lane if need be) and waits
    /// for its result.
    pub async fn send(
        &self,
        pc: &PeerConn,
        header: MsgHeader,
        body: Bytes,
    ) -> Result<MsgResult, MessageError> {
        send_on_lane(self, pc, header, body).await
    }
}

struct LaneReq {
    header: MsgHeader,
    body: Bytes,
    done: oneshot::Sender<MsgResult>,
}

/// The sending side of one lane.
struct Lane {
    conn: usize,
    tx: mpsc::Sender<LaneReq>,
}

/// Largest message header frame.
pub const MAX_HEADER: usize = 64 * 1024;

/// Largest result frame (replies carry up to 1 MiB of stdout per handler).
pub const MAX_RESULT: usize = 24 * 1024 * 1024;

/// Messages queued on one lane before senders wait.
pub const LANE_QUEUE: usize = 1024;

/// Queues a small message on the connection's lane and waits for its result.
async fn send_on_lane(
    lanes: &Lanes,
    pc: &PeerConn,
    header: MsgHeader,
    body: Bytes,
) -> Result<MsgResult, MessageError> {
    let conn = pc.conn.stable_id();
    let tx = {
        let mut lanes = lanes.map.lock().unwrap_or_else(|p| p.into_inner());
        match lanes.get(&pc.peer) {
            Some(l) if l.conn == conn && !l.tx.is_closed() => l.tx.clone(),
            _ => {
                let (tx, rx) = mpsc::channel(LANE_QUEUE);
                tokio::spawn(run_lane(pc.clone(), rx));
                lanes.insert(
                    pc.peer,
                    Lane {
                        conn,
                        tx: tx.clone(),
                    },
                );
                tx
            }
        }
    };
    let (done, result) = oneshot::channel();
    tx.send(LaneReq { header, body, done })
        .await
        .map_err(|_| MessageError::ConnectionClosed)?;
    result.await.map_err(|_| MessageError::ClosedBeforeAnswer)
}

/// The write buffer a lane keeps between bursts: most messages fit (bodies are 1 KiB in
/// the benchmarks); a larger one or a burst grows it until the lane has been quiet for
/// [`SHRINK_AFTER`].
const IDLE_BUF: usize = 16 * 1024;
/// How long a lane with a grown buffer waits for a message before it shrinks the buffer.
const SHRINK_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

type Pending = Arc<std::sync::Mutex<std::collections::HashMap<u64, oneshot::Sender<MsgResult>>>>;

/// Writes queued messages on one long-lived stream; a reader task hands out the results.
async fn run_lane(pc: PeerConn, mut rx: mpsc::Receiver<LaneReq>) {
    let Ok((mut send, mut recv)) = pc.open(StreamKind::Messages).await else {
        return;
    };
    let pending: Pending = Arc::default();
    let reader_pending = pending.clone();
    let reader = tokio::spawn(async move {
        while let Ok(Some(r)) = read_frame::<LaneResult, _>(&mut recv, MAX_RESULT).await {
            let waiter = reader_pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&r.seq);
            if let Some(w) = waiter {
                let _ = w.send(r.result);
            }
        }
        // The stream ended: dropping the waiters tells their senders.
        reader_pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    });
    let mut seq = 0u64;
    let mut buf = Vec::with_capacity(IDLE_BUF);
    loop {
        // A burst grows the buffer (to 512 KiB at 50,000 messages/s). It goes back to its
        // small size once the lane has been quiet for a while, or it would stay resident,
        // per peer, for the connection's life; not at once, or every pause within a burst
        // would grow it again from the start.
        let first = if buf.capacity() > IDLE_BUF {
            match tokio::time::timeout(SHRINK_AFTER, rx.recv()).await {
                Ok(first) => first,
                Err(_) => {
                    buf = Vec::with_capacity(IDLE_BUF);
                    continue;
                }
            }
        } else {
            rx.recv().await
        };
        let Some(first) = first else { break };
        // Coalesce whatever is queued into one write.
        buf.clear();
        let mut next = Some(first);
        while let Some(req) = next {
            seq += 1;
            let frame = match transport::frame::encode(
                &LaneMsg {
                    seq,
                    header: req.header,
                },
                MAX_HEADER,
            ) {
                Ok(f) => f,
                Err(_) => break,
            };
            pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(seq, req.done);
            buf.extend_from_slice(&frame);
            buf.extend_from_slice(&req.body);
            next = if buf.len() < 256 * 1024 {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if send.write_all(&buf).await.is_err() {
            break;
        }
    }
    let _ = send.finish();
    drop(rx);
    let _ = reader.await;
}
