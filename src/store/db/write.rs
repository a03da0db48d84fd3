//! The write side of the store file: the tables of one write transaction, kept in step
//! (versions, items, buckets, tombstones, counters).

use redb::{ReadableTable, ReadableTableMetadata, Table, WriteTransaction};

use crate::store::error::StoreError;
use crate::store::hlc::Hlc;
use crate::store::model::{
    BatchMark, BatchRange, Device, Dot, FeedEvent, Origin, Sibling, VersionVector,
};
use crate::store::schema::{
    batch_of, bucket_of, encode, item_digest, key_pos, read_siblings, BATCHES, BUCKETS, FEED,
    FEED_BATCH, ITEMS, LOG, MEMBERS, META, M_CLOCK_COUNTER, M_CLOCK_WALL, M_EPOCH, M_FEED_BYTES,
    M_FEED_SEQ, M_FEED_TRIMMED, M_ITEMS, RETIRED, TOMBS, VERSIONS, VV,
};

/// Write side: the open tables of one write transaction.
pub(crate) struct Writer<'t> {
    meta: Table<'t, &'static str, u64>,
    versions: Table<'t, &'static str, &'static [u8]>,
    vv: Table<'t, [u8; 40], u64>,
    log: Table<'t, ([u8; 40], u64), &'static str>,
    feed: Table<'t, u64, &'static [u8]>,
    items: Table<'t, (u64, &'static str), u128>,
    buckets: Table<'t, u16, (u64, u128)>,
    tombs: Table<'t, &'static str, ()>,
    members: Table<'t, Device, &'static [u8]>,
    retired: Table<'t, [u8; 40], u64>,
    batches: Table<'t, ([u8; 40], u64), u64>,
    feed_batch: Table<'t, u64, ([u8; 40], u64, u64, bool)>,
}

impl<'t> Writer<'t> {
    pub fn new(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            meta: txn.open_table(META)?,
            versions: txn.open_table(VERSIONS)?,
            vv: txn.open_table(VV)?,
            log: txn.open_table(LOG)?,
            feed: txn.open_table(FEED)?,
            items: txn.open_table(ITEMS)?,
            buckets: txn.open_table(BUCKETS)?,
            tombs: txn.open_table(TOMBS)?,
            members: txn.open_table(MEMBERS)?,
            retired: txn.open_table(RETIRED)?,
            batches: txn.open_table(BATCHES)?,
            feed_batch: txn.open_table(FEED_BATCH)?,
        })
    }

    pub fn siblings(&self, key: &str) -> Result<Vec<Sibling>, StoreError> {
        read_siblings(&self.versions, key)
    }

    /// Stores the siblings of `key` (none: removes it) and keeps the item, bucket and
    /// tombstone tables in step.
    pub fn set_siblings(&mut self, key: &str, siblings: &[Sibling]) -> Result<(), StoreError> {
        let pos = key_pos(key);
        let old = self.items.get((pos, key))?.map(|g| g.value());
        let new = if siblings.is_empty() {
            self.versions.remove(key)?;
            self.items.remove((pos, key))?;
            None
        } else {
            let bytes = encode(&siblings)?;
            self.versions.insert(key, bytes.as_slice())?;
            let digest = item_digest(key, &bytes);
            self.items.insert((pos, key), digest)?;
            Some(digest)
        };
        if siblings.first().is_some_and(|s| s.value.is_none()) {
            self.tombs.insert(key, ())?;
        } else {
            self.tombs.remove(key)?;
        }
        if old == new {
            return Ok(());
        }
        let b = bucket_of(pos);
        let (mut count, mut sum) = self.buckets.get(b)?.map(|g| g.value()).unwrap_or((0, 0));
        if let Some(d) = old {
            count = count.saturating_sub(1);
            sum = sum.wrapping_sub(d);
        }
        if let Some(d) = new {
            count += 1;
            sum = sum.wrapping_add(d);
        }
        if count == 0 {
            self.buckets.remove(b)?;
        } else {
            self.buckets.insert(b, (count, sum))?;
        }
        if old.is_none() != new.is_none() {
            let items = self.meta.get(M_ITEMS)?.map(|g| g.value()).unwrap_or(0);
            let items = if new.is_some() {
                items + 1
            } else {
                items.saturating_sub(1)
            };
            self.meta.insert(M_ITEMS, items)?;
        }
        Ok(())
    }

    /// Records (`Some`) or forgets (`None`) the version vector a member reported.
    pub fn set_member_vv(
        &mut self,
        member: Device,
        vv: Option<&VersionVector>,
    ) -> Result<(), StoreError> {
        match vv {
            Some(vv) => {
                self.members.insert(member, encode(vv)?.as_slice())?;
            }
            None => {
                self.members.remove(member)?;
            }
        }
        Ok(())
    }

    pub fn log_insert(&mut self, dot: (Origin, u64), key: &str) -> Result<(), StoreError> {
        self.log.insert((dot.0.to_key(), dot.1), key)?;
        Ok(())
    }

    /// Whether a current version (of any key) has the dot `dot`.
    pub fn holds_dot(&self, dot: (Origin, u64)) -> Result<bool, StoreError> {
        Ok(self.log.get((dot.0.to_key(), dot.1))?.is_some())
    }

    pub fn log_remove(&mut self, dot: (Origin, u64)) -> Result<(), StoreError> {
        self.log.remove((dot.0.to_key(), dot.1))?;
        Ok(())
    }

    pub fn set_vv(&mut self, origin: Origin, seq: u64) -> Result<(), StoreError> {
        self.vv.insert(origin.to_key(), seq)?;
        Ok(())
    }

    /// Takes `origin` out of the version vector table.
    pub fn remove_vv(&mut self, origin: Origin) -> Result<(), StoreError> {
        self.vv.remove(origin.to_key())?;
        Ok(())
    }

    /// The seq up to which a retired origin's changes count as seen (0: not retired).
    pub fn retired(&self, origin: Origin) -> Result<u64, StoreError> {
        Ok(self
            .retired
            .get(origin.to_key())?
            .map(|g| g.value())
            .unwrap_or(0))
    }

    /// Records `origin` as retired at `seq` (`None`: no longer retired).
    pub fn set_retired(&mut self, origin: Origin, seq: Option<u64>) -> Result<(), StoreError> {
        match seq {
            Some(seq) => self.retired.insert(origin.to_key(), seq)?,
            None => self.retired.remove(origin.to_key())?,
        };
        Ok(())
    }

    /// The current versions of `origin`: their sequence numbers and keys, in order.
    pub fn current_of(&self, origin: Origin) -> Result<Vec<(u64, String)>, StoreError> {
        let k = origin.to_key();
        let mut out = Vec::new();
        for row in self.log.range((k, 0)..=(k, u64::MAX))? {
            let (dot, key) = row?;
            out.push((dot.value().1, key.value().to_owned()));
        }
        Ok(out)
    }

    /// Records the epoch this store now numbers its writes under.
    pub fn set_epoch(&mut self, epoch: u64) -> Result<(), StoreError> {
        self.meta.insert(M_EPOCH, epoch)?;
        Ok(())
    }

    /// Whether a current version of some key is `origin`'s.
    pub fn holds_current(&self, origin: Origin) -> Result<bool, StoreError> {
        let k = origin.to_key();
        Ok(self.log.range((k, 0)..=(k, u64::MAX))?.next().is_some())
    }

    /// The batch that the change `dot` belongs to, if any.
    pub fn batch_of(&self, dot: Dot) -> Result<Option<BatchRange>, StoreError> {
        batch_of(&self.batches, dot)
    }

    /// Records a batch; false (and nothing recorded) when it overlaps one known already.
    pub fn batch_insert(&mut self, r: BatchRange) -> Result<bool, StoreError> {
        let k = r.origin.to_key();
        let overlap = match self.batches.range((k, r.first)..=(k, u64::MAX))?.next() {
            Some(row) => row?.1.value() <= r.last,
            None => false,
        };
        if !overlap {
            self.batches.insert((k, r.last), r.first)?;
        }
        Ok(!overlap)
    }

    /// Forgets the batches of a retired origin.
    pub fn batches_forget(&mut self, origin: Origin) -> Result<(), StoreError> {
        let k = origin.to_key();
        self.batches
            .retain_in((k, 0)..=(k, u64::MAX), |_, _| false)?;
        Ok(())
    }

    /// Marks the feed entry `feed_seq` as a change of a batch.
    pub fn feed_batch_insert(&mut self, feed_seq: u64, mark: BatchMark) -> Result<(), StoreError> {
        let r = mark.range;
        self.feed_batch
            .insert(feed_seq, (r.origin.to_key(), r.first, r.last, mark.end))?;
        Ok(())
    }

    /// Appends a feed entry; returns its encoded size.
    pub fn feed_append(&mut self, event: &FeedEvent) -> Result<u64, StoreError> {
        let bytes = encode(event)?;
        self.feed.insert(event.feed_seq, bytes.as_slice())?;
        Ok(bytes.len() as u64)
    }

    /// Drops the oldest feed entries until at most `retain` entries and at most
    /// `max_bytes` of them remain (the newest entry always stays); `bytes` is the size of
    /// the entries kept, updated.
    pub fn feed_trim(
        &mut self,
        retain: u64,
        max_bytes: u64,
        bytes: &mut u64,
    ) -> Result<(), StoreError> {
        let mut trimmed = None;
        while self.feed.len()? > retain.max(1) || (*bytes > max_bytes && self.feed.len()? > 1) {
            let Some((seq, value)) = self.feed.pop_first()? else {
                break;
            };
            *bytes = bytes.saturating_sub(value.value().len() as u64);
            trimmed = Some(seq.value());
        }
        if let Some(seq) = trimmed {
            self.meta.insert(M_FEED_TRIMMED, seq)?;
            self.feed_batch.retain_in(..=seq, |_, _| false)?;
        }
        Ok(())
    }

    pub fn save_state(
        &mut self,
        feed_seq: u64,
        feed_bytes: u64,
        clock_last: Hlc,
    ) -> Result<(), StoreError> {
        self.meta.insert(M_FEED_SEQ, feed_seq)?;
        self.meta.insert(M_FEED_BYTES, feed_bytes)?;
        self.meta.insert(M_CLOCK_WALL, clock_last.wall_ms)?;
        self.meta
            .insert(M_CLOCK_COUNTER, u64::from(clock_last.counter))?;
        Ok(())
    }

    /// Keys whose winner is a tombstone, with their siblings.
    pub fn tombstoned_keys(&self) -> Result<Vec<(String, Vec<Sibling>)>, StoreError> {
        let mut out = Vec::new();
        for row in self.tombs.iter()? {
            let (key, _) = row?;
            let key = key.value();
            let siblings = read_siblings(&self.versions, key)?;
            if siblings.first().is_some_and(|s| s.value.is_none()) {
                out.push((key.to_owned(), siblings));
            }
        }
        Ok(out)
    }
}
