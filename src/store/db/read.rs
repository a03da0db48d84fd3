//! The read side of the store file, on one consistent snapshot.

use std::ops::Bound;

use redb::{Database, ReadTransaction, ReadableTable};

use crate::store::error::StoreError;
use crate::store::model::{
    BatchMark, BatchRange, Change, Delta, Device, Dot, Entry, FeedEvent, Origin, Sibling,
    VersionVector, VersionedValue,
};
use crate::store::reconcile::{ItemSet, Range, Sum};
use crate::store::schema::{
    batch_of, bucket_of, decode, read_siblings, BATCHES, BUCKETS, BUCKET_LEVEL, FEED, FEED_BATCH,
    ITEMS, LOG, MAX_DELTA_BYTES, MEMBERS, META, M_FEED_TRIMMED, M_ITEMS, RETIRED, VERSIONS, VV,
};

fn to_entry(key: &str, siblings: &[Sibling]) -> Option<Entry> {
    let (winner, rest) = siblings.split_first()?;
    Some(Entry {
        key: key.to_owned(),
        value: winner.value.clone()?,
        version: winner.version,
        siblings: rest.iter().map(|s| (s.version, s.value.clone())).collect(),
    })
}

/// Read side, on one consistent snapshot.
pub(crate) struct Reader {
    txn: ReadTransaction,
}

impl Reader {
    pub fn new(db: &Database) -> Result<Self, StoreError> {
        Ok(Self {
            txn: db.begin_read()?,
        })
    }

    pub fn versions(&self, key: &str) -> Result<Vec<VersionedValue>, StoreError> {
        let table = self.txn.open_table(VERSIONS)?;
        Ok(read_siblings(&table, key)?
            .into_iter()
            .map(|s| (s.version, s.value))
            .collect())
    }

    pub fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let table = self.txn.open_table(VERSIONS)?;
        Ok(to_entry(key, &read_siblings(&table, key)?))
    }

    pub fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let table = self.txn.open_table(VERSIONS)?;
        let start = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let mut out: Vec<Entry> = Vec::new();
        let mut listed = 0usize;
        for row in table.range::<&str>((start, Bound::Unbounded))? {
            if out.len() >= limit || listed >= max_bytes {
                break;
            }
            let (key, bytes) = row?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            let siblings: Vec<Sibling> = decode(bytes.value())?;
            if let Some(e) = to_entry(key, &siblings) {
                listed = listed.saturating_add(e.key.len() + e.value.len());
                out.push(e);
            }
        }
        Ok(out)
    }

    pub fn version_vector(&self) -> Result<VersionVector, StoreError> {
        let mut vv = VersionVector::new();
        for row in self.txn.open_table(VV)?.iter()? {
            let (origin, seq) = row?;
            vv.raise(Origin::from_key(origin.value()), seq.value());
        }
        Ok(vv)
    }

    /// Whether this store has seen everything `vv` covers: each entry is below its version
    /// vector or its retired origins.
    pub fn covers(&self, vv: &VersionVector) -> Result<bool, StoreError> {
        let held = self.txn.open_table(VV)?;
        let retired = self.txn.open_table(RETIRED)?;
        for (origin, seq) in vv.iter() {
            let k = origin.to_key();
            let have = match held.get(k)? {
                Some(g) => g.value(),
                None => retired.get(k)?.map(|g| g.value()).unwrap_or(0),
            };
            if have < seq {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The retired origins (see `docs/store.md`), with the seq up to which they are seen.
    pub fn retired(&self) -> Result<VersionVector, StoreError> {
        let mut vv = VersionVector::new();
        for row in self.txn.open_table(RETIRED)?.iter()? {
            let (origin, seq) = row?;
            vv.raise(Origin::from_key(origin.value()), seq.value());
        }
        Ok(vv)
    }

    /// The current changes the holder of `theirs` lacks, in `(origin, seq)` order, at most
    /// `limit` of them (and about [`MAX_DELTA_BYTES`] of values). Changes superseded here
    /// are not sent: whatever superseded them is current here (or was collected after every
    /// member saw it) and is sent instead, carrying them in its `supersedes`.
    pub fn changes_since(&self, theirs: &VersionVector, limit: usize) -> Result<Delta, StoreError> {
        let limit = limit.max(1);
        let versions = self.txn.open_table(VERSIONS)?;
        let log = self.txn.open_table(LOG)?;
        let batches = self.txn.open_table(BATCHES)?;
        let mut delta = Delta::default();
        let mut bytes = 0usize;
        for (origin, mine) in self.version_vector()?.iter() {
            let from = theirs.get(&origin);
            if mine <= from {
                continue;
            }
            let k = origin.to_key();
            // The batch of the last change taken: the delta does not end inside it.
            let mut open: Option<BatchRange> = None;
            for row in log.range((k, from + 1)..=(k, mine))? {
                let (dot, key) = row?;
                let (_, seq) = dot.value();
                let inside = open.is_some_and(|b| seq <= b.last);
                if !inside && (delta.changes.len() >= limit || bytes >= MAX_DELTA_BYTES) {
                    delta.more = true;
                    return Ok(delta);
                }
                if !inside {
                    open = batch_of(&batches, (origin, seq))?;
                    delta.batches.extend(open);
                }
                let key = key.value();
                let siblings = read_siblings(&versions, key)?;
                let sibling = siblings
                    .iter()
                    .find(|s| s.version.dot() == (origin, seq))
                    .ok_or_else(|| StoreError::Decode(format!("log entry for {key:?} dangles")))?;
                bytes += sibling.value.as_ref().map_or(0, Vec::len) + key.len();
                delta.changes.push(sibling.to_change(key));
                delta.through.raise(origin, seq);
            }
            delta.through.raise(origin, mine);
        }
        Ok(delta)
    }

    /// The batch that the change `dot` belongs to, if any.
    pub fn batch_of(&self, dot: Dot) -> Result<Option<BatchRange>, StoreError> {
        batch_of(&self.txn.open_table(BATCHES)?, dot)
    }

    /// Number of keys held (current versions of any kind).
    pub fn item_count(&self) -> Result<u64, StoreError> {
        let meta = self.txn.open_table(META)?;
        Ok(meta.get(M_ITEMS)?.map(|g| g.value()).unwrap_or(0))
    }

    /// Every current version of the keys at the item positions `positions`.
    pub fn changes_at(&self, positions: &[u64]) -> Result<Vec<Change>, StoreError> {
        let items = self.txn.open_table(ITEMS)?;
        let versions = self.txn.open_table(VERSIONS)?;
        let mut out = Vec::new();
        for &pos in positions {
            for row in items.range((pos, "")..)? {
                let (k, _) = row?;
                let (p, key) = k.value();
                if p != pos {
                    break;
                }
                out.extend(
                    read_siblings(&versions, key)?
                        .iter()
                        .map(|s| s.to_change(key)),
                );
            }
        }
        Ok(out)
    }

    /// The last version vector each member reported.
    pub fn member_vvs(&self) -> Result<Vec<(Device, VersionVector)>, StoreError> {
        let table = self.txn.open_table(MEMBERS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (device, bytes) = row?;
            out.push((device.value(), decode(bytes.value())?));
        }
        Ok(out)
    }

    /// Feed entries after `after` whose key starts with `prefix`, at most `limit`.
    pub fn feed_since(
        &self,
        after: u64,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<FeedEvent>, StoreError> {
        let meta = self.txn.open_table(META)?;
        let trimmed = meta.get(M_FEED_TRIMMED)?.map(|g| g.value()).unwrap_or(0);
        if after < trimmed {
            return Err(StoreError::FeedTrimmed {
                requested: after,
                oldest: trimmed,
            });
        }
        let feed = self.txn.open_table(FEED)?;
        let marks = self.txn.open_table(FEED_BATCH)?;
        let mut out = Vec::new();
        for row in feed.range(after.saturating_add(1)..)? {
            if out.len() >= limit {
                break;
            }
            let (_, bytes) = row?;
            let mut event: FeedEvent = decode(bytes.value())?;
            let mark = marks.get(event.feed_seq)?;
            // A batch's changes under another prefix come too: a watcher needs its end.
            if event.change.key.starts_with(prefix) || mark.is_some() {
                event.batch = mark.map(|g| {
                    let (origin, first, last, end) = g.value();
                    BatchMark {
                        range: BatchRange {
                            origin: Origin::from_key(origin),
                            first,
                            last,
                        },
                        end,
                    }
                });
                out.push(event);
            }
        }
        Ok(out)
    }
}

impl ItemSet for Reader {
    type Error = StoreError;

    fn sum(&self, range: Range) -> Result<Sum, StoreError> {
        let mut sum = Sum::default();
        if range.level <= BUCKET_LEVEL {
            let buckets = self.txn.open_table(BUCKETS)?;
            for row in buckets.range(bucket_of(range.lo())..=bucket_of(range.hi()))? {
                let (_, v) = row?;
                let (count, s) = v.value();
                sum.merge(Sum { count, sum: s });
            }
        } else {
            for (_, digest) in self.items(range, usize::MAX)? {
                sum.add(digest);
            }
        }
        Ok(sum)
    }

    fn items(&self, range: Range, limit: usize) -> Result<Vec<(u64, u128)>, StoreError> {
        let items = self.txn.open_table(ITEMS)?;
        let mut out = Vec::new();
        for row in items.range((range.lo(), "")..)? {
            let (k, digest) = row?;
            let (pos, _) = k.value();
            if pos > range.hi() || out.len() >= limit {
                break;
            }
            out.push((pos, digest.value()));
        }
        Ok(out)
    }
}
