//! The writer's operations on data from peers: applying deltas and reconciled changes
//! (after checking what they claim, see [`claims`]), tombstone collection and the
//! retirement of origins.

use super::{State, Through};
use crate::store::claims;
use crate::store::db::Writer;
use crate::store::error::StoreError;
use crate::store::limits::{Refusal, MAX_ORIGINS};
use crate::store::model::{key_context, Change, FeedEvent, Origin, VersionVector};

impl State {
    /// Applies changes from a peer (a delta when `through` is set): refused whole when they
    /// claim this store's own origin, break the bounds, or would take the vector over
    /// [`MAX_ORIGINS`]; `through` raises the vector only as far as it is backed.
    pub(super) fn apply(
        &mut self,
        w: &mut Writer<'_>,
        changes: &[Change],
        through: Option<&Through>,
        wall_ms: u64,
        events: &mut Vec<FeedEvent>,
    ) -> Result<Result<usize, Refusal>, StoreError> {
        let own = self.own();
        let named = match claims::check_changes(changes, own) {
            Ok(named) => named,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let through = match through {
            None => None,
            Some(t) => {
                if let Err(refusal) = claims::check_vector(&t.vv, own) {
                    return Ok(Err(refusal));
                }
                let mut backing = named.clone();
                backing.join(&t.named);
                let backed = claims::backed(&t.vv, &backing, t.sender);
                if backed != t.vv {
                    tracing::debug!(
                        claimed = t.vv.len(),
                        backed = backed.len(),
                        "a delta's vector goes beyond what backs it: only the backed part is taken"
                    );
                }
                Some(backed)
            }
        };
        let new = changes
            .iter()
            .map(|c| c.version.origin)
            .chain(through.iter().flat_map(|t| t.iter().map(|(o, _)| o)))
            .filter(|o| self.vv.get(o) == 0)
            .collect::<std::collections::BTreeSet<Origin>>()
            .len();
        if self.vv.len() + new > MAX_ORIGINS {
            return Ok(Err(Refusal::TooManyOrigins {
                count: self.vv.len() + new,
            }));
        }
        let mut order: Vec<&Change> = changes.iter().collect();
        order.sort_by_key(|c| (c.version.origin, c.version.seq));
        order.dedup_by_key(|c| c.version.dot());
        let mut applied = 0;
        for change in order {
            let (origin, seq) = change.version.dot();
            let have = self.have(w, origin)?;
            let vouched = through.as_ref().is_some_and(|t| t.covers((origin, seq)));
            if seq <= have || (seq != have + 1 && !vouched) {
                continue; // seen already, or a gap: the missing changes must come first
            }
            self.clock.observe(change.version.hlc, wall_ms);
            // The origin log holds the dot of every current version, of every key.
            if w.holds_dot((origin, seq))? {
                // Held already (merged by a reconciliation, on this key or, if a peer
                // gave the dot to another key too, on that one): only the vector moves.
                self.raise(w, origin, seq)?;
                continue;
            }
            let siblings = w.siblings(&change.key)?;
            self.apply_one(w, change, siblings, true, events)?;
            applied += 1;
        }
        for (origin, seq) in through.iter().flat_map(VersionVector::iter) {
            if seq > self.have(w, origin)? {
                self.raise(w, origin, seq)?;
            }
        }
        Ok(Ok(applied))
    }

    /// Merges changes whose predecessors may be missing. A change already seen (`seq <=
    /// vv`) or already held is skipped; the vector is not raised, so nothing is claimed
    /// as seen until the sender's final delta vouches for it.
    pub(super) fn apply_reconciled(
        &mut self,
        w: &mut Writer<'_>,
        changes: &[Change],
        wall_ms: u64,
        events: &mut Vec<FeedEvent>,
    ) -> Result<Result<usize, Refusal>, StoreError> {
        if let Err(refusal) = claims::check_changes(changes, self.own()) {
            return Ok(Err(refusal));
        }
        let mut applied = 0;
        for change in changes {
            let (origin, seq) = change.version.dot();
            if seq <= self.have(w, origin)? || w.holds_dot((origin, seq))? {
                continue; // seen, or held (on this key, or on another a peer gave it to)
            }
            let siblings = w.siblings(&change.key)?;
            self.clock.observe(change.version.hlc, wall_ms);
            self.apply_one(w, change, siblings, false, events)?;
            applied += 1;
        }
        Ok(Ok(applied))
    }

    /// Removes keys whose winner is a tombstone once every sibling's dot is covered by this
    /// store's and every member's version vector, and this store covers the key's whole
    /// causal context (so a superseded version arriving later is known as seen).
    pub(super) fn collect(
        &mut self,
        w: &mut Writer<'_>,
        members: &[VersionVector],
    ) -> Result<usize, StoreError> {
        let mut collected = 0;
        for (key, siblings) in w.tombstoned_keys()? {
            let mut seen = true;
            for (origin, seq) in key_context(&siblings) {
                seen = seen && seq <= self.have(w, origin)?;
            }
            let seen_by_all = seen
                && siblings.iter().all(|s| {
                    let dot = s.version.dot();
                    self.vv.covers(dot) && members.iter().all(|m| m.covers(dot))
                });
            if seen_by_all {
                for s in &siblings {
                    w.log_remove(s.version.dot())?;
                }
                w.set_siblings(&key, &[])?;
                collected += 1;
            }
        }
        Ok(collected)
    }

    /// Retires the origins that are done with: not this store's own, no current version
    /// here is theirs, and every member's vector has them as far as this store does (or
    /// does not name them: it retired them, or never needs them). A retired origin leaves
    /// the vector (and so every hello and delta) and is kept in the `retired` table, so its
    /// changes still count as seen; a later change of it brings it back.
    pub(super) fn retire(
        &mut self,
        w: &mut Writer<'_>,
        members: &[VersionVector],
    ) -> Result<usize, StoreError> {
        let done: Vec<(Origin, u64)> = self
            .vv
            .iter()
            .filter(|(o, s)| {
                *o != self.origin
                    && members.iter().all(|m| {
                        let theirs = m.get(o);
                        theirs == 0 || theirs >= *s
                    })
            })
            .collect();
        let mut retired = 0;
        for (origin, seq) in done {
            if w.holds_current(origin)? {
                continue;
            }
            self.vv.remove(&origin);
            w.remove_vv(origin)?;
            w.batches_forget(origin)?;
            w.set_retired(origin, Some(seq))?;
            retired += 1;
        }
        Ok(retired)
    }
}
