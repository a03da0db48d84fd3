//! The pull task of every connection: runs [`Puller`] sessions against the peer's server.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use transport::frame::write_frame;
use transport::{DeviceId, PeerConn, StreamKind};

use super::error::SyncError;
use super::io::{blocking, next, reader, sleep_until, DOWN_QUEUE};
use super::protocol::{MAX_DOWN, MAX_UP};
use super::puller::{Pulled, Puller};
use crate::daemon::conn_events::ConnEvent;
use crate::daemon::context::Daemon;
use crate::daemon::wire::Down;

/// Pause before a failed pull session is started again on the same connection.
const RETRY: Duration = Duration::from_secs(2);

/// Whether `peer` is a member of the mesh (trusted, not removed).
pub fn is_member(d: &Daemon, peer: &DeviceId) -> bool {
    d.members.is_member(peer)
}

/// Starts a pull session on every connection, now and as they come up.
pub fn start(d: &Arc<Daemon>) {
    let mut events = d.conn_events.subscribe();
    let d = d.clone();
    tokio::spawn(async move {
        let mut pulls: HashMap<DeviceId, (usize, JoinHandle<()>)> = HashMap::new();
        for pc in d.endpoint.connections() {
            spawn_pull(&d, &mut pulls, pc);
        }
        while let Some(ev) = events.recv().await {
            match ev {
                ConnEvent::Up(pc) => spawn_pull(&d, &mut pulls, pc),
                ConnEvent::Down { peer, .. } => {
                    if let Some((_, h)) = pulls.remove(&peer) {
                        h.abort();
                    }
                }
                ConnEvent::Resync(conns) => {
                    for pc in conns {
                        spawn_pull(&d, &mut pulls, pc);
                    }
                }
            }
            pulls.retain(|_, (_, h)| !h.is_finished());
        }
    });
}

fn spawn_pull(
    d: &Arc<Daemon>,
    pulls: &mut HashMap<DeviceId, (usize, JoinHandle<()>)>,
    pc: PeerConn,
) {
    let id = pc.conn.stable_id();
    if let Some((old, h)) = pulls.get(&pc.peer) {
        if *old == id && !h.is_finished() {
            return;
        }
        h.abort();
    }
    let d2 = d.clone();
    let peer = pc.peer;
    let h = tokio::spawn(async move {
        loop {
            if !is_member(&d2, &pc.peer) {
                return;
            }
            match pull(&d2, &pc).await {
                Ok(()) => debug!(peer = %pc.name, "sync session ended"),
                Err(e) if e.is_refusal() => {
                    warn!(peer = %pc.name, error = %e, "refused data from the peer: the sync session ends")
                }
                Err(e) => warn!(peer = %pc.name, error = %e, "sync session failed"),
            }
            if pc.conn.close_reason().is_some() {
                return;
            }
            tokio::time::sleep(RETRY).await;
        }
    });
    pulls.insert(peer, (id, h));
}

/// One pull session on `pc`: catch up, then apply what the peer pushes, until the stream
/// or the connection ends.
async fn pull(d: &Arc<Daemon>, pc: &PeerConn) -> Result<(), SyncError> {
    let store = d.store.clone();
    let (mut send, recv) = pc.open(StreamKind::Sync).await?;
    let mut feed = store.subscribe();
    let s = store.clone();
    let (vv, items) = blocking(move || -> Result<_, SyncError> {
        let snap = s.snapshot()?;
        Ok((snap.version_vector()?, snap.item_count()?))
    })
    .await??;
    let started = std::time::Instant::now();
    let (mut puller, hello) = Puller::start(pc.peer.0, vv, items);
    write_frame(&mut send, &hello, MAX_UP).await?;
    let mut rx = reader::<Down>(recv, MAX_DOWN, DOWN_QUEUE);
    loop {
        tokio::select! {
            frame = next(&mut rx) => match puller.on_frame(frame?, Instant::now())? {
                Pulled::Delta { delta, named, caught_up, held } => {
                    if let Some(h) = held {
                        store.apply_reconciled(h.changes, h.batches).await?;
                    }
                    store.apply_delta_backed(delta, puller.sender(), named).await?;
                    if let Some(changes) = caught_up {
                        let ms = started.elapsed().as_millis() as u64;
                        info!(peer = %pc.name, changes, ms, "sync caught up");
                    }
                }
                Pulled::Reconciled(h) => {
                    store.apply_reconciled(h.changes, h.batches).await?;
                }
                Pulled::Nothing => {}
                Pulled::Answer { msg, first } => {
                    if first {
                        debug!(peer = %pc.name, "no common history: reconciling");
                    }
                    let s = store.clone();
                    let (p, reply) = blocking(move || {
                        let reply = s
                            .snapshot()
                            .map_err(SyncError::from)
                            .and_then(|snap| puller.answer(&snap, msg));
                        (puller, reply)
                    })
                    .await?;
                    puller = p;
                    write_frame(&mut send, &reply?, MAX_UP).await?;
                }
            },
            ev = feed.recv() => match ev {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => puller.on_change(Instant::now()),
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            _ = sleep_until(puller.report_due()), if puller.report_due().is_some() => {
                if let Some(seen) = puller.report(store.version_vector()?) {
                    write_frame(&mut send, &seen, MAX_UP).await?;
                }
            }
        }
    }
}
