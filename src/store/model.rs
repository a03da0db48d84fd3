//! Data model and the pure merge rule (no I/O).
//!
//! Every write is a [`Change`] identified by its *dot* `(origin, seq)`: the origin is the
//! writing device together with the incarnation (*epoch*) of its store file, and `seq`
//! counts that origin's writes, so one origin's changes form a gap-free sequence. A key
//! holds a set of *siblings*: the versions no known change supersedes. A change supersedes
//! the versions its writer knew for the key; the visible winner is the sibling with the
//! highest `(hlc, origin)`. See `docs/store.md`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::hlc::Hlc;
use super::limits::MAX_SEQ;
use super::StoreError;

/// A device identity as seen by the store (the daemon converts from its DeviceId).
pub type Device = [u8; 32];

/// Who numbered a change: a device and the *epoch* of its store file. A store file gets a
/// new random epoch when it is created (and when it finds out it is an old copy, see
/// `docs/store.md`), so a device whose store was started again from empty numbers its
/// writes in a fresh sequence instead of reusing numbers the other devices already hold.
/// Ordered by device first: between two devices the conflict rule's tie-break is the
/// device ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Origin {
    /// The writing device.
    pub device: Device,
    /// The incarnation of that device's store (0 for stores created before epochs).
    pub epoch: u64,
}

impl Origin {
    /// The origin of `device`'s store incarnation `epoch`.
    pub const fn new(device: Device, epoch: u64) -> Self {
        Self { device, epoch }
    }

    /// Fixed-size table key: the device, then the epoch big-endian (same order as `Ord`).
    pub(crate) fn to_key(self) -> [u8; 40] {
        let mut k = [0u8; 40];
        k[..32].copy_from_slice(&self.device);
        k[32..].copy_from_slice(&self.epoch.to_be_bytes());
        k
    }

    /// The inverse of [`Origin::to_key`].
    pub(crate) fn from_key(k: [u8; 40]) -> Self {
        let mut device = [0u8; 32];
        device.copy_from_slice(&k[..32]);
        let mut epoch = [0u8; 8];
        epoch.copy_from_slice(&k[32..]);
        Self {
            device,
            epoch: u64::from_be_bytes(epoch),
        }
    }
}

/// Identifies one change: `(origin, seq)`.
pub type Dot = (Origin, u64);

/// Most operations in one batch (see `super::batch`).
pub const MAX_BATCH_OPS: usize = 1000;

/// The writes `first..=last` of `origin`, made by one batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BatchRange {
    pub origin: Origin,
    pub first: u64,
    pub last: u64,
}

impl BatchRange {
    /// Whether the change `dot` is one of the batch's writes.
    pub fn contains(&self, dot: Dot) -> bool {
        dot.0 == self.origin && (self.first..=self.last).contains(&dot.1)
    }

    /// Well-formed: a non-empty range of at most [`MAX_BATCH_OPS`] valid sequence numbers.
    pub fn valid(&self) -> bool {
        self.first >= 1
            && self.first <= self.last
            && self.last <= MAX_SEQ
            && self.last - self.first < MAX_BATCH_OPS as u64
    }
}

/// A change's batch as a watcher sees it: the batch, and whether this is the last change
/// of it that the transaction applied (the watcher has the whole batch then).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchMark {
    pub range: BatchRange,
    pub end: bool,
}

/// One version of a key with its value (`None` = tombstone).
pub type VersionedValue = (Version, Option<Vec<u8>>);

/// Longest key, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 8 * 1024 * 1024;
/// Most entries accepted in a change's `supersedes` (one per device that wrote the key).
pub const MAX_SUPERSEDES: usize = 4096;

/// The version of one write. `Ord` is the conflict order: `hlc`, then the origin's device,
/// then its epoch and `seq` (these never decide between two devices; they only make the
/// order total).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    /// When it was written (hybrid logical clock).
    pub hlc: Hlc,
    /// The device (and store incarnation) that wrote it.
    pub origin: Origin,
    /// The origin's own sequence number for this write (1, 2, ...).
    pub seq: u64,
}

impl Version {
    /// This version's dot `(origin, seq)`.
    pub fn dot(&self) -> Dot {
        (self.origin, self.seq)
    }
}

/// One write to one key, as stored, sent to peers and applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The key (UTF-8, 1..=1024 bytes, no control characters).
    pub key: String,
    /// The new value; `None` is a delete (tombstone).
    pub value: Option<Vec<u8>>,
    /// The version of this write.
    pub version: Version,
    /// What this write supersedes: the writer's causal context for the key, one
    /// `(origin, max seq)` per origin, sorted by origin. It covers the dot `(o, s)` when
    /// `s <= max seq of o`: the dots of the versions the writer had for the key and,
    /// transitively, everything those versions superseded.
    pub supersedes: Vec<(Origin, u64)>,
}

impl Change {
    /// Whether this change supersedes `dot`.
    pub fn supersedes_dot(&self, dot: Dot) -> bool {
        covers(&self.supersedes, dot)
    }

    /// Checks the limits on a change received from elsewhere.
    pub fn validate(&self) -> Result<(), StoreError> {
        validate_key(&self.key)?;
        if let Some(value) = &self.value {
            validate_value(value)?;
        }
        if !(1..=MAX_SEQ).contains(&self.version.seq) {
            return Err(StoreError::InvalidChange(format!(
                "sequence number {} is outside 1..={MAX_SEQ}",
                self.version.seq
            )));
        }
        if self.supersedes.len() > MAX_SUPERSEDES {
            return Err(StoreError::InvalidChange(format!(
                "supersedes lists {} origins, at most {MAX_SUPERSEDES} are accepted",
                self.supersedes.len()
            )));
        }
        if !self.supersedes.windows(2).all(|w| w[0].0 < w[1].0) {
            return Err(StoreError::InvalidChange(
                "supersedes must be sorted by origin with one entry per origin".into(),
            ));
        }
        Ok(())
    }
}

/// Whether the context `ctx` (sorted `(origin, max seq)`) covers `dot`.
pub fn covers(ctx: &[(Origin, u64)], dot: Dot) -> bool {
    ctx.binary_search_by(|(o, _)| o.cmp(&dot.0))
        .map(|i| ctx[i].1 >= dot.1)
        .unwrap_or(false)
}

/// Checks a key: non-empty, at most [`MAX_KEY_BYTES`] bytes, no control characters (keys are
/// printed one per line by `kv list` and `kv watch`).
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::EmptyKey);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(StoreError::KeyTooLong {
            len: key.len(),
            max: MAX_KEY_BYTES,
        });
    }
    if let Some(c) = key.chars().find(|c| c.is_control()) {
        return Err(StoreError::InvalidKey(format!(
            "key contains the control character U+{:04X}",
            u32::from(c)
        )));
    }
    Ok(())
}

/// Checks a value: at most [`MAX_VALUE_BYTES`] bytes.
pub fn validate_value(value: &[u8]) -> Result<(), StoreError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(StoreError::ValueTooLarge {
            len: value.len(),
            max: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

/// Per-origin maximum applied sequence number. Since one origin's changes are applied in
/// sequence order, `seq <= vv[origin]` means the change was already applied here (or is
/// superseded by what was). Its size grows with the number of devices, not of keys.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionVector(BTreeMap<Origin, u64>);

impl VersionVector {
    /// An empty vector (has seen nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// The highest seq of `origin` seen (0 if none).
    pub fn get(&self, origin: &Origin) -> u64 {
        self.0.get(origin).copied().unwrap_or(0)
    }

    /// Whether the change with `dot` has been seen.
    pub fn covers(&self, dot: Dot) -> bool {
        self.get(&dot.0) >= dot.1
    }

    /// Raises the entry of `origin` to `seq` (never lowers it).
    pub fn raise(&mut self, origin: Origin, seq: u64) {
        if seq > 0 {
            let entry = self.0.entry(origin).or_insert(0);
            *entry = (*entry).max(seq);
        }
    }

    /// The pairwise maximum with `other`.
    pub fn join(&mut self, other: &VersionVector) {
        for (origin, seq) in other.iter() {
            self.raise(origin, seq);
        }
    }

    /// `(origin, seq)` pairs in origin order.
    pub fn iter(&self) -> impl Iterator<Item = (Origin, u64)> + '_ {
        self.0.iter().map(|(o, s)| (*o, *s))
    }

    /// Takes `origin` out of the vector (retirement, see `docs/store.md`).
    pub(crate) fn remove(&mut self, origin: &Origin) {
        self.0.remove(origin);
    }

    /// Number of origins.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no origin was seen.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(Origin, u64)> for VersionVector {
    fn from_iter<I: IntoIterator<Item = (Origin, u64)>>(iter: I) -> Self {
        let mut vv = Self::new();
        for (origin, seq) in iter {
            vv.raise(origin, seq);
        }
        vv
    }
}

/// The visible state of a key: the winning value and the other concurrent versions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// The winner's value.
    pub value: Vec<u8>,
    /// The winner's version.
    pub version: Version,
    /// The concurrent versions that lost (`None` = a concurrent delete), best first; what
    /// `kv get --all-versions` shows after the winner.
    pub siblings: Vec<VersionedValue>,
}

/// An applied change as seen by a watcher, numbered by the local feed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedEvent {
    /// Position in this device's change feed (increasing, never reused).
    pub feed_seq: u64,
    /// The change.
    pub change: Change,
    /// Whether the change was the key's visible winner right after it was applied
    /// (false for a concurrent write that lost).
    pub wins: bool,
    /// The batch the change belongs to, if any (kept in the `feed_batch` table, not in the
    /// feed entry itself).
    #[serde(skip)]
    pub batch: Option<BatchMark>,
}

/// What [`super::Store::changes_since`] returns: changes the other side lacks, and how far
/// they bring it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// Changes the other side lacks, in `(origin, seq)` order. Superseded changes are left
    /// out: their superseding change carries their effect.
    pub changes: Vec<Change>,
    /// After applying `changes`, the receiver has seen everything the sender had up to this
    /// vector (including the changes left out as superseded).
    pub through: VersionVector,
    /// Whether the sender stopped at the limit (ask again with the raised vector).
    pub more: bool,
    /// The batches that `changes` belong to (a delta never ends inside one).
    pub batches: Vec<BatchRange>,
}

/// One stored version of a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Sibling {
    pub version: Version,
    pub value: Option<Vec<u8>>,
    pub supersedes: Vec<(Origin, u64)>,
}

impl Sibling {
    pub fn from_change(change: &Change) -> Self {
        Self {
            version: change.version,
            value: change.value.clone(),
            supersedes: change.supersedes.clone(),
        }
    }

    pub fn to_change(&self, key: &str) -> Change {
        Change {
            key: key.to_owned(),
            value: self.value.clone(),
            version: self.version,
            supersedes: self.supersedes.clone(),
        }
    }
}

/// The causal context of a key: the join of every sibling's dot and `supersedes`. A new
/// local write uses it as its `supersedes`.
pub(crate) fn key_context(siblings: &[Sibling]) -> Vec<(Origin, u64)> {
    let mut ctx = BTreeMap::<Origin, u64>::new();
    for s in siblings {
        for (origin, seq) in s.supersedes.iter().copied().chain([s.version.dot()]) {
            let entry = ctx.entry(origin).or_insert(0);
            *entry = (*entry).max(seq);
        }
    }
    ctx.into_iter().collect()
}

/// What merging one change did to a key.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Merge {
    /// Dots of the siblings the change superseded.
    pub removed: Vec<Dot>,
    /// Whether the change became a sibling (false: something here already supersedes it).
    pub added: bool,
    /// Whether the change is the visible winner afterwards.
    pub wins: bool,
}

/// A precondition of a local write (`kv.put` / `kv.del` with `if_version` or `if_absent`),
/// checked by the writer in the same transaction as the write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// The key's current winner is the version a reader saw: written by `device`, as its
    /// `seq`-th write, stamped `hlc` (the `origin`, `seq` and `hlc` that `kv get` shows).
    /// Concurrent versions that lost do not matter: the write supersedes them too.
    IfVersion { device: Device, seq: u64, hlc: Hlc },
    /// The key has no live value (never written, or deleted).
    IfAbsent,
}

impl Condition {
    /// Whether the condition holds for a key whose versions are `siblings` (best first).
    pub(crate) fn holds(&self, siblings: &[Sibling]) -> bool {
        let winner = siblings.first().filter(|s| s.value.is_some());
        match self {
            Condition::IfAbsent => winner.is_none(),
            Condition::IfVersion { device, seq, hlc } => winner.is_some_and(|w| {
                w.version.origin.device == *device && w.version.seq == *seq && w.version.hlc == *hlc
            }),
        }
    }
}

/// Merges `change` (not seen before) into the siblings of its key, kept sorted best first.
/// The result depends only on the set of changes merged, not their order: a version stays
/// iff no merged change's `supersedes` covers its dot.
pub(crate) fn merge(siblings: &mut Vec<Sibling>, change: &Change) -> Merge {
    let dot = change.version.dot();
    let dead = covers(&key_context(siblings), dot);
    let mut removed = Vec::new();
    siblings.retain(|s| {
        let superseded = change.supersedes_dot(s.version.dot());
        if superseded {
            removed.push(s.version.dot());
        }
        !superseded
    });
    if !dead {
        siblings.push(Sibling::from_change(change));
        siblings.sort_by_key(|s| std::cmp::Reverse(s.version));
    }
    let wins = !dead && siblings.first().map(|s| s.version) == Some(change.version);
    Merge {
        removed,
        added: !dead,
        wins,
    }
}
