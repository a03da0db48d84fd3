//! Store sync between devices (SPEC section 9) on `StreamKind::Sync` streams.
//! Not written yet: incoming sync streams are reset.

use std::sync::Arc;

use transport::IncomingStream;

use super::Daemon;

/// Starts the sync tasks.
pub fn start(_d: &Arc<Daemon>) {}

/// Serves one incoming sync stream.
pub async fn serve(_d: Arc<Daemon>, mut s: IncomingStream) {
    let _ = s.send.reset(1u32.into());
}
