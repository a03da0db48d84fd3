//! The writer's side of atomic batches (see `crate::store::batch`): a local batch written
//! in one transaction after all its conditions were checked, and the batch marks of the
//! feed.

use std::collections::HashSet;

use super::State;
use crate::store::batch::{received, BatchOp, BatchResult};
use crate::store::db::Writer;
use crate::store::error::StoreError;
use crate::store::model::{BatchMark, BatchRange, Change, FeedEvent};

impl State {
    /// Writes a local batch: every condition is checked first, and the first that fails
    /// fails the whole batch with nothing written (`Err` of the outer `Ok`); then each
    /// operation is written, as consecutive writes of this store's origin.
    pub(super) fn batch(
        &mut self,
        w: &mut Writer<'_>,
        ops: &[BatchOp],
        wall_ms: u64,
        events: &mut Vec<FeedEvent>,
    ) -> Result<Result<BatchResult, StoreError>, StoreError> {
        let mut siblings = Vec::with_capacity(ops.len());
        for op in ops {
            let s = w.siblings(&op.key)?;
            if let Some(c) = op.cond.as_ref().filter(|c| !c.holds(&s)) {
                return Ok(Err(super::conflict(&op.key, c, &s)));
            }
            siblings.push(s);
        }
        let first = self.vv.get(&self.origin) + 1;
        let from = events.len();
        let mut changes = Vec::with_capacity(ops.len());
        for (op, s) in ops.iter().zip(siblings) {
            changes.push(self.local_write(w, &op.key, op.value.clone(), s, wall_ms, events)?);
        }
        let last = self.vv.get(&self.origin);
        let range = (last >= first).then_some(BatchRange {
            origin: self.origin,
            first,
            last,
        });
        if let Some(r) = range {
            w.batch_insert(r)?;
            self.mark_batches(w, &mut events[from..])?;
        }
        Ok(Ok(BatchResult { range, changes }))
    }

    /// After `changes` from a peer were applied: records the batches received with them
    /// (see `batch::received`; one that overlaps a batch known already is ignored) and
    /// marks the feed events they made.
    pub(super) fn took_batches(
        &mut self,
        w: &mut Writer<'_>,
        ranges: &[BatchRange],
        changes: &[Change],
        events: &mut [FeedEvent],
    ) -> Result<(), StoreError> {
        for r in received(ranges, changes) {
            w.batch_insert(r)?;
        }
        self.mark_batches(w, events)
    }

    /// Marks the feed events of one operation that belong to a batch; the last of each
    /// batch gets `end`.
    pub(super) fn mark_batches(
        &mut self,
        w: &mut Writer<'_>,
        events: &mut [FeedEvent],
    ) -> Result<(), StoreError> {
        let mut seen = HashSet::new();
        for e in events.iter_mut().rev() {
            if let Some(range) = w.batch_of(e.change.version.dot())? {
                let mark = BatchMark {
                    range,
                    end: seen.insert(range),
                };
                w.feed_batch_insert(e.feed_seq, mark)?;
                e.batch = Some(mark);
            }
        }
        Ok(())
    }
}
