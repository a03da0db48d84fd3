//! The sync protocol's constants and the pure rules both sides share.

use std::time::Duration;

use crate::daemon::wire::Down;
use crate::store::{Change, VersionVector};
use transport::frame::MAX_FRAME;

/// Version of this protocol, sent in the puller's hello.
pub const SYNC_VERSION: u16 = 3;
/// Largest frame from the puller (vectors and reconciliation replies).
pub const MAX_UP: usize = 4 * 1024 * 1024;
/// Largest frame from the server (deltas hold at most 16 MiB of values plus one value).
pub const MAX_DOWN: usize = MAX_FRAME;
/// Most changes per delta, before the rest of a batch the delta has begun.
pub const BATCH: usize = 4096;
/// Most changes a delta may hold: [`BATCH`] and the rest of a batch.
pub const DELTA_MAX_CHANGES: usize = BATCH + crate::store::MAX_BATCH_OPS;
/// Reconciled changes the puller holds back to merge in one transaction (so that no
/// batch shows in parts); beyond this many, or [`RECON_HOLD_BYTES`] of keys and values,
/// what it holds is merged and it starts again.
pub const RECON_HOLD_CHANGES: usize = 32 * 1024;
pub const RECON_HOLD_BYTES: usize = 32 * 1024 * 1024;
/// Most value bytes per reconciled-changes frame (plus one value).
pub const RECON_CHUNK_BYTES: usize = 8 * 1024 * 1024;
/// Reconciliation is used only when the puller holds at least this many keys ...
pub const RECON_MIN_ITEMS: u64 = 256;
/// ... and at least 1/RECON_MIN_SHARE of the server's keys (else sending everything is
/// about as cheap and needs one round trip).
pub const RECON_MIN_SHARE: u64 = 4;
/// The most keys a server that reconciles with a puller of `items` keys holds, honestly:
/// it reconciles only when it holds at most [`RECON_MIN_SHARE`] times as many, counted on
/// a snapshot taken just before the one it answers from (twice that leaves room for the
/// writes in between). Bounds what the puller asks for (`Initiator::new`).
pub fn recon_max_items(items: u64) -> u64 {
    items.saturating_mul(2 * RECON_MIN_SHARE)
}
/// Pause between the puller's vector reports.
pub const SEEN_EVERY: Duration = Duration::from_secs(1);

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

/// Reconciled changes as frames of at most [`BATCH`] changes and about
/// [`RECON_CHUNK_BYTES`] of values each.
pub fn recon_frames(changes: Vec<Change>) -> Vec<Down> {
    let mut frames = Vec::new();
    let mut batch = Vec::new();
    let mut bytes = 0;
    for c in changes {
        bytes += c.key.len() + c.value.as_ref().map_or(0, Vec::len);
        batch.push(c);
        if bytes >= RECON_CHUNK_BYTES || batch.len() >= BATCH {
            frames.push(Down::ReconChanges(std::mem::take(&mut batch)));
            bytes = 0;
        }
    }
    if !batch.is_empty() {
        frames.push(Down::ReconChanges(batch));
    }
    frames
}
