//! Store sync between devices (SPEC section 9) on `StreamKind::Sync` streams.
//!
//! Every connection carries two sync sessions, one per direction: each device opens one
//! stream to the other and *pulls* on it. The puller sends [`Up::Hello`] with its version
//! vector; the other side answers with [`Down::Delta`]s of exactly what the vector lacks
//! (`changes_since`, in bounded batches), then keeps the stream open and sends a new delta
//! as soon as its store changes (its change feed wakes it; a lagging feed just means one
//! larger delta, nothing is lost since deltas are computed from the vector, not from the
//! feed). When the two vectors share no history, the server runs range-based set
//! reconciliation ([`crate::store::reconcile`]) instead of sending every key. The puller
//! reports its vector ([`Up::Seen`]) now and then: the server keeps the last one of every
//! member, persisted, for tombstone collection (see `docs/store.md`, "Sync").
//!
//! Each session is its own task; store reads run on the blocking pool and writes on the
//! store's writer thread, so sync never holds up messages, pings or the control socket.
//! Every frame is size-bounded and checked; a bad frame ends that session (logged), the
//! daemon goes on, and the puller starts a new session after a pause.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, Notify};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use transport::frame::{read_frame, write_frame, FrameError, MAX_FRAME};
use transport::quinn::{RecvStream, SendStream};
use transport::{DeviceId, IncomingStream, PeerConn, StreamKind, TransportEvent};

use super::peers::PeerState;
use super::context::Daemon;
use super::wire::{Down, Up};
use crate::store::reconcile::{Initiator, ReconError, Responder};
use crate::store::{Change, Delta, Device, Store, StoreError, VersionVector};

/// Version of this protocol, sent in [`Up::Hello`].
pub const SYNC_VERSION: u16 = 2;
/// Largest frame from the puller (vectors and reconciliation replies).
const MAX_UP: usize = 4 * 1024 * 1024;
/// Largest frame from the server (deltas hold at most 16 MiB of values plus one value).
const MAX_DOWN: usize = MAX_FRAME;
/// Most changes per delta.
const BATCH: usize = 4096;
/// Most value bytes per [`Down::ReconChanges`] frame (plus one value).
const RECON_CHUNK_BYTES: usize = 8 * 1024 * 1024;
/// Reconciliation is used only when the puller holds at least this many keys ...
const RECON_MIN_ITEMS: u64 = 256;
/// ... and at least 1/RECON_MIN_SHARE of the server's keys (else sending everything is
/// about as cheap and needs one round trip).
const RECON_MIN_SHARE: u64 = 4;
/// Pause between the puller's vector reports.
const SEEN_EVERY: Duration = Duration::from_secs(1);
/// Pause before a failed pull session is started again on the same connection.
const RETRY: Duration = Duration::from_secs(2);
/// Queued frames between a stream's reader task and its session.
const QUEUE: usize = 8;
/// How often tombstone collection runs at most, and at least.
const COLLECT_MIN: Duration = Duration::from_secs(2);
const COLLECT_MAX: Duration = Duration::from_secs(60);

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("sync stream: {0}")]
    Frame(#[from] FrameError),
    #[error("sync stream: {0}")]
    Write(#[from] transport::quinn::WriteError),
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Recon(#[from] ReconError),
    #[error("sync protocol: {0}")]
    Protocol(String),
    #[error("the peer closed the sync stream")]
    Closed,
}

fn protocol<T>(msg: impl Into<String>) -> Result<T, SyncError> {
    Err(SyncError::Protocol(msg.into()))
}

/// Sync state shared by the sessions and the collector.
#[derive(Default)]
struct Shared {
    /// Last vector each member reported, and whether it changed since it was persisted.
    reported: Mutex<HashMap<Device, (VersionVector, bool)>>,
    /// Server sessions by peer: a new session from the same peer ends the old one.
    served: Mutex<HashMap<DeviceId, (u64, tokio::task::AbortHandle)>>,
    /// Wakes the collector when a report arrived.
    collect: Notify,
}

impl Shared {
    fn report(&self, peer: DeviceId, vv: &VersionVector) {
        let mut map = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(peer.0).or_default();
        if entry.0 != *vv {
            *entry = (vv.clone(), true);
            self.collect.notify_one();
        }
    }
}

/// One daemon per process: the sync state lives as long as the process.
static SHARED: OnceLock<Arc<Shared>> = OnceLock::new();

fn shared() -> Arc<Shared> {
    SHARED.get_or_init(Arc::default).clone()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether `peer` is a member of the mesh (trusted, not removed).
fn is_member(d: &Daemon, peer: &DeviceId) -> bool {
    d.peers()
        .peers
        .get(peer)
        .is_some_and(|p| p.state != PeerState::Removed)
}

/// Runs a blocking store read off the runtime's thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::WriteFailed(format!("internal: store read task failed: {e}")))?
}

/// Starts the sync tasks: a pull session on every connection (now and as they come up) and
/// the tombstone collector.
pub fn start(d: &Arc<Daemon>) {
    let sh = shared();
    match d.store.member_vvs() {
        Ok(saved) => {
            let mut map = lock(&sh.reported);
            for (origin, vv) in saved {
                map.insert(origin, (vv, false));
            }
        }
        Err(e) => warn!(error = %e, "could not read the members' saved version vectors"),
    }
    let mut events = d.endpoint.subscribe();
    let d2 = d.clone();
    tokio::spawn(async move {
        let mut pulls: HashMap<DeviceId, (usize, tokio::task::JoinHandle<()>)> = HashMap::new();
        for pc in d2.endpoint.connections() {
            spawn_pull(&d2, &mut pulls, pc);
        }
        loop {
            match events.recv().await {
                Ok(TransportEvent::Up(pc)) => spawn_pull(&d2, &mut pulls, pc),
                Ok(TransportEvent::Down { peer, .. }) => {
                    if let Some((_, h)) = pulls.remove(&peer) {
                        h.abort();
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    for pc in d2.endpoint.connections() {
                        spawn_pull(&d2, &mut pulls, pc);
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
            pulls.retain(|_, (_, h)| !h.is_finished());
        }
    });
    tokio::spawn(collector(d.clone(), sh));
}

fn spawn_pull(
    d: &Arc<Daemon>,
    pulls: &mut HashMap<DeviceId, (usize, tokio::task::JoinHandle<()>)>,
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

/// Reads frames into a bounded queue (so sessions can wait on frames and other events
/// without losing half-read frames).
fn reader<T>(mut recv: RecvStream, max: usize) -> mpsc::Receiver<Result<T, SyncError>>
where
    T: serde::de::DeserializeOwned + Send + 'static,
{
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(async move {
        loop {
            let frame = tokio::select! {
                f = read_frame::<T, _>(&mut recv, max) => f,
                // The session ended: stop reading (the frame in progress is not needed).
                _ = tx.closed() => {
                    let _ = recv.stop(0u32.into());
                    return;
                }
            };
            let item = match frame {
                Ok(Some(v)) => Ok(v),
                Ok(None) => Err(SyncError::Closed),
                Err(e) => Err(e.into()),
            };
            let end = item.is_err();
            if tx.send(item).await.is_err() || end {
                if end {
                    let _ = recv.stop(1u32.into());
                }
                return;
            }
        }
    });
    rx
}

async fn next<T>(rx: &mut mpsc::Receiver<Result<T, SyncError>>) -> Result<T, SyncError> {
    rx.recv().await.unwrap_or(Err(SyncError::Closed))
}

// ---------------------------------------------------------------------------------------
// Puller

/// One pull session on `pc`: catch up, then apply what the peer pushes, until the stream
/// or the connection ends.
async fn pull(d: &Arc<Daemon>, pc: &PeerConn) -> Result<(), SyncError> {
    let store = d.store.clone();
    let (mut send, recv) = pc.open(StreamKind::Sync).await?;
    let mut feed = store.subscribe();
    let (vv, items) = {
        let s = store.clone();
        blocking(move || {
            let snap = s.snapshot()?;
            Ok((snap.version_vector()?, snap.item_count()?))
        })
        .await?
    };
    let started = std::time::Instant::now();
    write_frame(
        &mut send,
        &Up::Hello {
            version: SYNC_VERSION,
            vv: vv.clone(),
            items,
        },
        MAX_UP,
    )
    .await?;
    let mut rx = reader::<Down>(recv, MAX_DOWN);
    let mut reported = vv;
    let mut report_due: Option<Instant> = None;
    let mut recon: Option<Initiator> = None;
    let mut caught_up = false;
    let mut received = 0usize;
    loop {
        tokio::select! {
            frame = next(&mut rx) => {
                match frame? {
                    Down::Delta(delta) => {
                        check_delta(&delta)?;
                        if let Some(r) = recon.take() {
                            if !r.done() {
                                return protocol("reconciliation ended before every range was answered");
                            }
                        }
                        let more = delta.more;
                        received += delta.changes.len();
                        store.apply_delta(delta).await?;
                        if !more && !caught_up {
                            caught_up = true;
                            info!(peer = %pc.name, changes = received, ms = started.elapsed().as_millis() as u64, "sync caught up");
                        }
                        report_due.get_or_insert_with(|| Instant::now() + SEEN_EVERY);
                    }
                    Down::Recon(msg) => {
                        let mut init = match recon.take() {
                            Some(i) => i,
                            None if !caught_up && received == 0 => {
                                debug!(peer = %pc.name, "no common history: reconciling");
                                Initiator::new()
                            }
                            None => return protocol("an unexpected reconciliation message"),
                        };
                        let s = store.clone();
                        let (init, reply) = blocking(move || {
                            let snap = s.snapshot()?;
                            let reply = init.on_msg(&snap, msg)?;
                            Ok((init, reply))
                        })
                        .await?;
                        write_frame(&mut send, &Up::Recon(reply?), MAX_UP).await?;
                        recon = Some(init);
                    }
                    Down::ReconChanges(changes) => {
                        if recon.is_none() {
                            return protocol("reconciled changes outside a reconciliation");
                        }
                        received += changes.len();
                        store.apply_reconciled(changes).await?;
                    }
                }
            }
            ev = feed.recv() => match ev {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    report_due.get_or_insert_with(|| Instant::now() + SEEN_EVERY);
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            _ = sleep_until(report_due), if report_due.is_some() => {
                report_due = None;
                let vv = store.version_vector()?;
                if vv != reported {
                    write_frame(&mut send, &Up::Seen { vv: vv.clone() }, MAX_UP).await?;
                    reported = vv;
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A delta's changes must lie within the vector it claims to bring.
fn check_delta(delta: &Delta) -> Result<(), SyncError> {
    if delta.changes.len() > BATCH {
        return protocol(format!("a delta of {} changes", delta.changes.len()));
    }
    match delta
        .changes
        .iter()
        .find(|c| !delta.through.covers(c.version.dot()))
    {
        Some(c) => protocol(format!(
            "a delta whose change for {:?} lies beyond its vector",
            c.key
        )),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------
// Server

/// Serves one incoming sync stream: the peer pulls from this device.
pub async fn serve(d: Arc<Daemon>, mut s: IncomingStream) {
    let peer = s.peer;
    if !is_member(&d, &peer) {
        let _ = s.send.reset(1u32.into());
        return;
    }
    let sh = shared();
    let id = rand::random::<u64>();
    let task = tokio::spawn({
        let d = d.clone();
        let sh = sh.clone();
        async move {
            let name = d.peers().name_of(&peer).unwrap_or_default();
            let IncomingStream { send, recv, .. } = s;
            match serve_session(&d, &sh, peer, send, recv).await {
                Ok(()) | Err(SyncError::Closed) => debug!(peer = %name, "sync stream closed"),
                Err(e) => warn!(peer = %name, error = %e, "sync stream from the peer ended"),
            }
        }
    });
    if let Some((_, old)) = lock(&sh.served).insert(peer, (id, task.abort_handle())) {
        old.abort();
    }
    let _ = task.await;
    let mut served = lock(&sh.served);
    if served.get(&peer).is_some_and(|(i, _)| *i == id) {
        served.remove(&peer);
    }
}

async fn serve_session(
    d: &Arc<Daemon>,
    sh: &Shared,
    peer: DeviceId,
    mut send: SendStream,
    recv: RecvStream,
) -> Result<(), SyncError> {
    let store = d.store.clone();
    let mut feed = store.subscribe();
    let mut rx = reader::<Up>(recv, MAX_UP);
    let (mut theirs, their_items) = match next(&mut rx).await? {
        Up::Hello { version, vv, items } if version == SYNC_VERSION => (vv, items),
        Up::Hello { version, .. } => {
            return protocol(format!(
                "sync version {version}, this device speaks {SYNC_VERSION}"
            ))
        }
        _ => return protocol("the session did not start with a hello"),
    };
    sh.report(peer, &theirs);
    // A peer that holds more of our own writes than we do means this store file is an
    // older copy: number our next writes in a new epoch before any of them reuses a number.
    if store.check_peer_vv(&theirs).await? {
        warn!(peer = %peer.short(), "the store file is older than what this peer has seen of it; own writes continue in a new epoch");
    }
    let (ours, our_items) = {
        let s = store.clone();
        blocking(move || {
            let snap = s.snapshot()?;
            Ok((snap.version_vector()?, snap.item_count()?))
        })
        .await?
    };
    if should_reconcile(&ours, &theirs, our_items, their_items) {
        let through = reconcile(&store, &mut send, &mut rx, sh, peer).await?;
        theirs.join(&through);
    }
    loop {
        // Send everything they lack, in batches.
        loop {
            let s = store.clone();
            let t = theirs.clone();
            let delta = blocking(move || s.changes_since(&t, BATCH)).await?;
            let news =
                !delta.changes.is_empty() || delta.through.iter().any(|(o, q)| q > theirs.get(&o));
            if !news {
                break;
            }
            theirs.join(&delta.through);
            let more = delta.more;
            write_frame(&mut send, &Down::Delta(delta), MAX_DOWN).await?;
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
            frame = next(&mut rx) => match frame? {
                Up::Seen { vv } => {
                    sh.report(peer, &vv);
                    theirs.join(&vv);
                }
                Up::Hello { .. } => return protocol("a second hello"),
                Up::Recon(_) => return protocol("a reconciliation reply outside a reconciliation"),
            },
        }
    }
}

/// Reconcile when the two vectors share no origin (no common history) and the puller holds
/// enough keys for reconciliation to save anything.
pub fn should_reconcile(
    ours: &VersionVector,
    theirs: &VersionVector,
    our_items: u64,
    their_items: u64,
) -> bool {
    let common = ours.iter().any(|(o, s)| s > 0 && theirs.get(&o) > 0);
    !common
        && !ours.is_empty()
        && their_items >= RECON_MIN_ITEMS
        && their_items.saturating_mul(RECON_MIN_SHARE) >= our_items
}

/// Runs the responder side on one snapshot; returns the vector the puller may raise to.
async fn reconcile(
    store: &Store,
    send: &mut SendStream,
    rx: &mut mpsc::Receiver<Result<Up, SyncError>>,
    sh: &Shared,
    peer: DeviceId,
) -> Result<VersionVector, SyncError> {
    let snap = {
        let s = store.clone();
        Arc::new(blocking(move || s.snapshot()).await?)
    };
    let (mut responder, msg, through) = {
        let snap = snap.clone();
        blocking(move || {
            let (r, m) = Responder::start(&*snap)?;
            Ok((r, m, snap.version_vector()?))
        })
        .await?
    };
    let mut msg = Some(msg);
    let mut sent = 0usize;
    while let Some(m) = msg.take() {
        write_frame(send, &Down::Recon(m), MAX_DOWN).await?;
        let reply = loop {
            match next(rx).await? {
                Up::Recon(r) => break r,
                Up::Seen { vv } => sh.report(peer, &vv),
                Up::Hello { .. } => return protocol("a second hello"),
            }
        };
        let snap2 = snap.clone();
        let (r, step) = blocking(move || {
            let step = responder.on_reply(&*snap2, reply)?;
            Ok((responder, step))
        })
        .await?;
        responder = r;
        let step = step?;
        for chunk in step.send.chunks(256) {
            let snap2 = snap.clone();
            let chunk = chunk.to_vec();
            let changes = blocking(move || snap2.changes_at(&chunk)).await?;
            sent += changes.len();
            send_chunked(send, changes).await?;
        }
        msg = step.msg;
    }
    debug!(
        rounds = responder.rounds(),
        changes = sent,
        "reconciliation done"
    );
    write_frame(
        send,
        &Down::Delta(Delta {
            changes: Vec::new(),
            through: through.clone(),
            more: false,
        }),
        MAX_DOWN,
    )
    .await?;
    Ok(through)
}

async fn send_chunked(send: &mut SendStream, changes: Vec<Change>) -> Result<(), SyncError> {
    let mut batch = Vec::new();
    let mut bytes = 0;
    for c in changes {
        bytes += c.key.len() + c.value.as_ref().map_or(0, Vec::len);
        batch.push(c);
        if bytes >= RECON_CHUNK_BYTES || batch.len() >= BATCH {
            write_frame(
                send,
                &Down::ReconChanges(std::mem::take(&mut batch)),
                MAX_DOWN,
            )
            .await?;
            bytes = 0;
        }
    }
    if !batch.is_empty() {
        write_frame(send, &Down::ReconChanges(batch), MAX_DOWN).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Tombstone collection

/// Collects tombstones every member has seen. Members are the trusted peers that are not
/// removed, plus this device. A tombstone goes only when every member's last reported
/// vector covers it and this device has everything those vectors cover (so no member holds
/// a concurrent write this device has not seen); see `docs/store.md`.
async fn collector(d: Arc<Daemon>, sh: Arc<Shared>) {
    // A timerfd (one wake-up at the deadline, see transport::runtime).
    let mut alarm = transport::runtime::Alarm::new(std::time::Instant::now() + COLLECT_MAX);
    loop {
        alarm.reset(std::time::Instant::now() + COLLECT_MAX);
        tokio::select! {
            _ = sh.collect.notified() => {}
            _ = alarm.wait() => {}
        }
        if let Err(e) = collect_once(&d, &sh).await {
            warn!(error = %e, "tombstone collection failed");
        }
        tokio::time::sleep(COLLECT_MIN).await;
    }
}

async fn collect_once(d: &Arc<Daemon>, sh: &Shared) -> Result<(), StoreError> {
    let members: Vec<Device> = d
        .peers()
        .peers
        .values()
        .filter(|p| p.state != PeerState::Removed)
        .map(|p| p.id.0)
        .collect();
    // Persist changed reports; forget devices that are no longer members.
    let (changes, vvs) = {
        let mut map = lock(&sh.reported);
        let mut changes = Vec::new();
        map.retain(|o, _| {
            let keep = members.contains(o);
            if !keep {
                changes.push((*o, None));
            }
            keep
        });
        for (o, (vv, dirty)) in map.iter_mut() {
            if *dirty {
                changes.push((*o, Some(vv.clone())));
                *dirty = false;
            }
        }
        let vvs: Option<Vec<VersionVector>> = members
            .iter()
            .map(|m| map.get(m).map(|(vv, _)| vv.clone()))
            .collect();
        (changes, vvs)
    };
    if !changes.is_empty() {
        d.store.save_member_vvs(changes).await?;
    }
    let Some(vvs) = vvs else {
        debug!("tombstone collection waits for a member's first report");
        return Ok(());
    };
    let ours = d.store.version_vector()?;
    let dominated = vvs.iter().all(|m| m.iter().all(|(o, s)| ours.get(&o) >= s));
    if !dominated {
        debug!("tombstone collection waits to catch up with the members");
        return Ok(());
    }
    let n = d.store.collect_tombstones(&vvs).await?;
    if n > 0 {
        info!(keys = n, "collected tombstones every member has seen");
    }
    Ok(())
}
