//! Store sync between devices (docs/store.md) on `StreamKind::Sync` streams.
//!
//! Every connection carries two sync sessions, one per direction: each device opens one
//! stream to the other and *pulls* on it. The puller sends `Up::Hello` with its version
//! vector; the other side answers with `Down::Delta`s of exactly what the vector lacks
//! (`changes_since`, in bounded batches), then keeps the stream open and sends a new delta
//! as soon as its store changes (its change feed wakes it; a lagging feed just means one
//! larger delta, nothing is lost since deltas are computed from the vector, not from the
//! feed). When the two vectors share no history, the server runs range-based set
//! reconciliation ([`crate::store::reconcile`]) instead of sending every key. The puller
//! reports its vector (`Up::Seen`) now and then: the server keeps the last one of every
//! member, persisted, for tombstone collection and the retirement of origins (see
//! `docs/store.md`, "Sync").
//!
//! Each side of a session is a pure state machine ([`puller::Puller`],
//! [`server::Server`]): frames and store answers in, frames and store operations out.
//! The tasks (`pull`, `serve`, `collect`) do the I/O: store reads run on the blocking
//! pool and writes on the store's writer thread, so sync never holds up messages, pings
//! or the control socket. Every frame is size-bounded and checked, and what a peer claims
//! is checked by the store (`crate::store::claims`); a bad frame or a refused delta ends
//! that session (logged), the daemon goes on, and the puller starts a new session after a
//! pause. The state that outlives sessions is the daemon's [`SyncState`].

mod collect;
mod error;
mod io;
mod protocol;
mod pull;
mod puller;
mod serve;
mod server;
mod state;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use tracing::warn;
use transport::IncomingStream;

use crate::daemon::context::Daemon;
pub use state::SyncState;

/// The daemon's sync component.
fn component(d: &Daemon) -> Arc<SyncState> {
    d.sync.clone()
}

/// Starts the sync tasks: a pull session on every connection (now and as they come up)
/// and the collector.
pub fn start(d: &Arc<Daemon>) {
    let st = component(d);
    match d.store.member_vvs() {
        Ok(saved) => st.restore(saved),
        Err(e) => warn!(error = %e, "could not read the members' saved version vectors"),
    }
    pull::start(d);
    tokio::spawn(collect::collector(d.clone(), st));
}

/// Serves one incoming sync stream: the peer pulls from this device.
pub async fn serve(d: Arc<Daemon>, s: IncomingStream) {
    let st = component(&d);
    serve::serve(d, st, s).await
}
