//! Atomic batches: several puts and deletes written in one transaction, all or nothing,
//! and replicated so that no device shows part of one (docs/store.md, "Batches").
//!
//! A batch's writes are consecutive writes of one origin, `first..=last`: that range
//! (a [`BatchRange`]) names the batch on every device. It is stored beside the changes
//! (table `batches`), sent with every delta that carries a change of it, and used by the
//! delta pager so that a delta never ends inside a batch; a receiver applies a delta in
//! one transaction.

use std::collections::{HashMap, HashSet};

use super::error::StoreError;
use super::model::{validate_key, validate_value, BatchRange, Change, Condition, Origin};

pub use super::model::MAX_BATCH_OPS;
/// Most bytes of keys and values in one batch (so a delta that carries a whole batch
/// stays within a sync frame).
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// One operation of a batch: a put (`value` set) or a delete (`None`), with an optional
/// condition checked with all the others before anything is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchOp {
    pub key: String,
    pub value: Option<Vec<u8>>,
    pub cond: Option<Condition>,
}

/// What a batch wrote: its range (`None` when it wrote nothing: deletes of absent keys
/// only), and per operation the change made (`None`: a delete of a key with no value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchResult {
    pub range: Option<BatchRange>,
    pub changes: Vec<Option<Change>>,
}

/// Checks a batch before it is queued: 1 to [`MAX_BATCH_OPS`] operations on distinct,
/// valid keys, with valid values, at most [`MAX_BATCH_BYTES`] in all.
pub fn validate_batch(ops: &[BatchOp]) -> Result<(), StoreError> {
    if ops.is_empty() || ops.len() > MAX_BATCH_OPS {
        return Err(StoreError::BadBatch(format!(
            "a batch holds 1 to {MAX_BATCH_OPS} operations, not {}",
            ops.len()
        )));
    }
    let mut keys = HashSet::with_capacity(ops.len());
    let mut bytes = 0usize;
    for (i, op) in ops.iter().enumerate() {
        validate_key(&op.key)?;
        if let Some(v) = &op.value {
            validate_value(v)?;
        }
        if !keys.insert(op.key.as_str()) {
            return Err(StoreError::BadBatch(format!(
                "operation {} names the key {:?} again; each key at most once per batch",
                i + 1,
                op.key
            )));
        }
        bytes += op.key.len() + op.value.as_ref().map_or(0, Vec::len);
    }
    if bytes > MAX_BATCH_BYTES {
        return Err(StoreError::BatchTooLarge {
            len: bytes,
            max: MAX_BATCH_BYTES,
        });
    }
    Ok(())
}

/// Batch ranges received from a peer beside `changes`: the well-formed ones that name at
/// least one of those changes, each once, at most one per change.
///
/// Near-linear in `ranges` and `changes` (a peer chooses both: tens of thousands of each
/// in one reconciliation): the changes' sequence numbers are sorted per origin and each
/// range is looked up by binary search.
pub(crate) fn received(ranges: &[BatchRange], changes: &[Change]) -> Vec<BatchRange> {
    received_counted(ranges, changes, &mut 0)
}

/// [`received`], adding to `probes` each sequence number compared with a range.
pub(crate) fn received_counted(
    ranges: &[BatchRange],
    changes: &[Change],
    probes: &mut u64,
) -> Vec<BatchRange> {
    let mut seqs: HashMap<Origin, Vec<u64>> = HashMap::new();
    for c in changes {
        seqs.entry(c.version.origin)
            .or_default()
            .push(c.version.seq);
    }
    for s in seqs.values_mut() {
        s.sort_unstable();
    }
    let mut out: Vec<BatchRange> = ranges
        .iter()
        .filter(|r| r.valid())
        .filter(|r| {
            let Some(s) = seqs.get(&r.origin) else {
                return false;
            };
            // The first seq at or after `first`, then whether it is within the range.
            let i = s.partition_point(|&seq| {
                *probes += 1;
                seq < r.first
            });
            *probes += 1;
            s.get(i).is_some_and(|&seq| seq <= r.last)
        })
        .copied()
        .collect();
    out.sort();
    out.dedup();
    out.truncate(changes.len());
    out
}
