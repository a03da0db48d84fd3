//! A new epoch while the store is open: when a peer claims more writes of this store's
//! origin than the store numbered (docs/store.md, "A claim on this store's own origin").
//!
//! Only a member that made it up can send such a claim: an epoch is random and new at
//! every open, so no honest device holds writes of it beyond what this store numbered.
//! Refusing the claim ([`crate::store::claims`]) keeps this store's numbering safe, but
//! the members that took it count this origin as seen up to the claimed number, so they
//! would take none of this store's writes numbered below it, and this store would take
//! nothing from them. A new epoch is an origin nobody has claimed: the store numbers its
//! writes under it from then on, writes its current versions of the old origin again
//! under it (same value, stamp and causal context, plus the old version itself, so each
//! replaces its old version where that is held and stays concurrent with what that was
//! concurrent with; a version overwritten elsewhere meanwhile comes back there as a
//! losing sibling, see the docs), and then takes the claim like one about any other
//! origin.

use super::State;
use crate::store::db::{new_epoch, Writer};
use crate::store::error::StoreError;
use crate::store::limits::Refusal;
use crate::store::model::{BatchRange, Change, FeedEvent, Origin, Version};

/// The wait after a new epoch before another may start (ms), doubled after each one up
/// to [`RENEW_MAX_MS`]: a member repeating the claim makes the store write its current
/// versions again after 1, 2, 4, ... minutes, then once an hour; its claims in between
/// are refused.
pub(crate) const RENEW_EVERY_MS: u64 = 60_000;
/// The longest wait between two new epochs (ms).
pub(crate) const RENEW_MAX_MS: u64 = 3_600_000;

impl State {
    /// After changes from a peer gave `applied`: starts a new epoch if they were refused
    /// for claiming more of this store's own origin than it numbered, and one is due.
    /// Returns whether it started (then the changes can be applied again).
    pub(super) fn renew_for(
        &mut self,
        w: &mut Writer<'_>,
        applied: &Result<usize, Refusal>,
        wall_ms: u64,
        events: &mut Vec<FeedEvent>,
    ) -> Result<bool, StoreError> {
        if !matches!(applied, Err(Refusal::OwnOrigin { .. })) {
            return Ok(false);
        }
        self.renew_if_due(w, wall_ms, events)
    }

    /// Starts a new epoch unless the last one is too recent ([`RENEW_EVERY_MS`]).
    pub(super) fn renew_if_due(
        &mut self,
        w: &mut Writer<'_>,
        wall_ms: u64,
        events: &mut Vec<FeedEvent>,
    ) -> Result<bool, StoreError> {
        let wait = (RENEW_EVERY_MS << self.renewals.saturating_sub(1).min(10)).min(RENEW_MAX_MS);
        if self.renewed_at.is_some_and(|t| wall_ms.abs_diff(t) < wait) {
            return Ok(false);
        }
        let old = self.origin;
        let mut epoch = new_epoch()?;
        while epoch == old.epoch {
            epoch = new_epoch()?;
        }
        self.origin = Origin::new(old.device, epoch);
        self.renewed_at = Some(wall_ms);
        self.renewals += 1;
        w.set_epoch(epoch)?;
        let from = events.len();
        let rewritten = self.rewrite_current(w, old, events)?;
        self.mark_batches(w, &mut events[from..])?;
        tracing::warn!(
            old_epoch = old.epoch,
            new_epoch = epoch,
            rewritten,
            "a peer claims more writes of this store's origin than it numbered (a member \
             made them up): this store now numbers its writes in a new epoch, and wrote \
             its current versions again under it"
        );
        Ok(true)
    }

    /// Writes every current version of `old` again under this store's origin; a batch's
    /// versions become one batch again. Returns how many.
    fn rewrite_current(
        &mut self,
        w: &mut Writer<'_>,
        old: Origin,
        events: &mut Vec<FeedEvent>,
    ) -> Result<usize, StoreError> {
        // The old batch being rewritten, and the first new seq of its versions.
        let mut open: Option<(BatchRange, u64)> = None;
        let mut rewritten = 0;
        for (seq, key) in w.current_of(old)? {
            let siblings = w.siblings(&key)?;
            let Some(was) = siblings.iter().find(|s| s.version.dot() == (old, seq)) else {
                continue;
            };
            let next = self.vv.get(&self.origin) + 1;
            let mut supersedes = was.supersedes.clone();
            match supersedes.binary_search_by_key(&old, |&(o, _)| o) {
                Ok(i) => supersedes[i].1 = supersedes[i].1.max(seq),
                Err(i) => supersedes.insert(i, (old, seq)),
            }
            let change = Change {
                key,
                value: was.value.clone(),
                version: Version {
                    hlc: was.version.hlc,
                    origin: self.origin,
                    seq: next,
                },
                supersedes,
            };
            let batch = w.batch_of((old, seq))?;
            if open.is_some_and(|(b, _)| Some(b) != batch) {
                self.close_batch(w, open.take(), next - 1)?;
            }
            if open.is_none() {
                open = batch.map(|b| (b, next));
            }
            self.apply_one(w, &change, siblings, true, events)?;
            rewritten += 1;
        }
        let last = self.vv.get(&self.origin);
        self.close_batch(w, open, last)?;
        Ok(rewritten)
    }

    /// Records the rewritten versions of a batch, from its first new seq to `last`.
    fn close_batch(
        &mut self,
        w: &mut Writer<'_>,
        open: Option<(BatchRange, u64)>,
        last: u64,
    ) -> Result<(), StoreError> {
        if let Some((_, first)) = open.filter(|&(_, first)| first <= last) {
            w.batch_insert(BatchRange {
                origin: self.origin,
                first,
                last,
            })?;
        }
        Ok(())
    }
}
