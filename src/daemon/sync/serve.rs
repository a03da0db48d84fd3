//! The task serving one incoming sync stream: runs a [`Server`] session for the peer that
//! pulls from this device.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};
use tracing::{debug, warn};
use transport::frame::write_frame;
use transport::quinn::{RecvStream, SendStream};
use transport::{DeviceId, IncomingStream};

use super::error::SyncError;
use super::io::{blocking_held, next, reader, within, UP_QUEUE};
use super::protocol::{recon_frames, BATCH, MAX_DOWN, MAX_UP};
use super::pull::is_member;
use super::server::{Heard, Server};
use super::state::SyncState;
use crate::daemon::context::Daemon;
use crate::daemon::wire::{Down, Up};
use crate::store::{BatchRange, Own, Refusal, Snapshot, Store};

/// Serves one incoming sync stream: the peer pulls from this device.
pub async fn serve(d: Arc<Daemon>, st: Arc<SyncState>, mut s: IncomingStream) {
    let peer = s.peer;
    if !is_member(&d, &peer) {
        let _ = s.send.reset(1u32.into());
        return;
    }
    let id = rand::random::<u64>();
    let task = tokio::spawn({
        let (d, st) = (d.clone(), st.clone());
        async move {
            let name = d.peers().name_of(&peer).unwrap_or_default();
            let IncomingStream { send, recv, .. } = s;
            match session(&d, &st, peer, send, recv).await {
                Ok(()) | Err(SyncError::Closed) => debug!(peer = %name, "sync stream closed"),
                Err(e) if e.is_refusal() => {
                    warn!(peer = %name, error = %e, "refused what the peer claims: its sync stream ends")
                }
                Err(e) => warn!(peer = %name, error = %e, "sync stream from the peer ended"),
            }
        }
    });
    st.serving(peer, id, task.abort_handle());
    let _ = task.await;
    st.served(peer, id);
}

async fn session(
    d: &Arc<Daemon>,
    st: &SyncState,
    peer: DeviceId,
    mut send: SendStream,
    recv: RecvStream,
) -> Result<(), SyncError> {
    let store = d.store.clone();
    let mut feed = store.subscribe();
    let mut rx = reader::<Up>(recv, MAX_UP, UP_QUEUE);
    let (mut server, report) = with_own(&store, next(&mut rx).await?, Server::start).await?;
    st.report(peer.0, &report);
    let reads = st.reads_of(peer);
    let s = store.clone();
    let (ours, our_items) = blocking_held(&reads, move || -> Result<_, SyncError> {
        let snap = s.snapshot()?;
        Ok((snap.version_vector()?, snap.item_count()?))
    })
    .await??;
    if server.should_reconcile(&ours, our_items) {
        server = reconcile(&store, server, &mut send, &mut rx, st, peer).await?;
    }
    loop {
        // Send everything they lack, in batches.
        loop {
            let (s, wants) = (store.clone(), server.wants().clone());
            let delta = blocking_held(&reads, move || s.changes_since(&wants, BATCH)).await??;
            let more = delta.more;
            match server.on_delta(delta) {
                Some(frame) => write_frame(&mut send, &frame, MAX_DOWN).await?,
                None => break,
            }
            if !more {
                break;
            }
        }
        // Wait for a change here or a report from them.
        tokio::select! {
            ev = feed.recv() => match ev {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Many writes come in bursts: take what is queued, then one delta.
                    while feed.try_recv().is_ok() {}
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            frame = next(&mut rx) => {
                let vv = with_own(&store, frame?, |f, own| server.on_frame(f, own)).await?;
                st.report(peer.0, &vv);
            }
        }
    }
}

/// Runs `check` of the puller's `frame` with this store's own origin. When it refuses a
/// claim of more writes of that origin than the store numbered (only a member that made
/// it up sends one), the store starts a new epoch (unless one is too recent), and then the
/// claim is about an origin that is no longer its own (docs/store.md, "A claim on this
/// store's own origin"); `check` runs once more.
pub(super) async fn with_own<T>(
    store: &Store,
    frame: Up,
    mut check: impl FnMut(Up, Own) -> Result<T, SyncError>,
) -> Result<T, SyncError> {
    let own = store.own();
    // Only a frame with a vector can carry the claim: a copy of it (bounded) for the
    // second run; a reconciliation reply goes on uncopied.
    let again = (!matches!(frame, Up::Recon(_))).then(|| frame.clone());
    match check(frame, own) {
        Err(e @ SyncError::Refused(Refusal::OwnOrigin { .. })) => {
            let Some(frame) = again else { return Err(e) };
            // A new epoch now, or one started meanwhile (a delta carrying the same claim).
            let renewed = store.renew_epoch(own.origin).await?;
            if renewed || store.own().origin != own.origin {
                check(frame, store.own())
            } else {
                Err(e)
            }
        }
        result => result,
    }
}

/// The batches that reconciled changes belong to, each once.
fn recon_batches(
    snap: &Snapshot,
    changes: &[crate::store::Change],
) -> Result<Vec<BatchRange>, crate::store::StoreError> {
    let mut out = Vec::new();
    for c in changes {
        out.extend(snap.batch_of(c.version.dot())?);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Writes one frame of a reconciliation, within [`within`]'s limit.
async fn send_within(send: &mut SendStream, frame: &Down) -> Result<(), SyncError> {
    within(async { Ok(write_frame(send, frame, MAX_DOWN).await?) }).await
}

/// Runs the responder side on one snapshot; the session goes on with the puller raised to
/// the snapshot's vector.
async fn reconcile(
    store: &Store,
    mut server: Server,
    send: &mut SendStream,
    rx: &mut mpsc::Receiver<Result<Up, SyncError>>,
    st: &SyncState,
    peer: DeviceId,
) -> Result<Server, SyncError> {
    let reads = st.reads_of(peer);
    let s = store.clone();
    let snap = Arc::new(blocking_held(&reads, move || s.snapshot()).await??);
    let snap2 = snap.clone();
    let (srv, first) = blocking_held(&reads, move || {
        let first = snap2
            .version_vector()
            .map_err(SyncError::from)
            .and_then(|through| server.begin_recon(&*snap2, through));
        (server, first)
    })
    .await?;
    server = srv;
    let mut msg = Some(first?);
    while let Some(m) = msg.take() {
        send_within(send, &m).await?;
        let reply = loop {
            let frame = within(next(rx)).await?;
            match with_own(store, frame, |f, own| server.on_recon_frame(f, own)).await? {
                Heard::Reply(r) => break r,
                Heard::Report(vv) => st.report(peer.0, &vv),
            }
        };
        let snap2 = snap.clone();
        let (srv, step) = blocking_held(&reads, move || {
            let step = server.on_recon_reply(&*snap2, reply);
            (server, step)
        })
        .await?;
        server = srv;
        let step = step?;
        for chunk in step.send.chunks(256) {
            let (snap2, chunk) = (snap.clone(), chunk.to_vec());
            let (changes, batches) = blocking_held(&reads, move || {
                let changes = snap2.changes_at(&chunk)?;
                let batches = recon_batches(&snap2, &changes)?;
                Ok::<_, crate::store::StoreError>((changes, batches))
            })
            .await??;
            server.sending(&changes);
            if !batches.is_empty() {
                send_within(send, &Down::ReconBatches(batches)).await?;
            }
            for frame in recon_frames(changes) {
                send_within(send, &frame).await?;
            }
        }
        msg = step.next;
    }
    let (last, rounds, changes) = server.end_recon()?;
    debug!(rounds, changes, "reconciliation done");
    drop(snap);
    send_within(send, &last).await?;
    Ok(server)
}
