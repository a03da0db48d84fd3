//! The layout of the redb file, shared by opening, migration, reads and writes: table
//! definitions, `cnspr_meta` keys, item positions and digests, and the value codec.
//!
//! Tables:
//! - `cnspr_meta`: format marker, this store's epoch, last feed seq, trimmed feed prefix,
//!   last clock stamp;
//! - `versions`: key -> all current siblings (bincode `Vec<Sibling>`, best first);
//! - `version_vector`: origin (device and epoch,
//!   [`Origin::to_key`](super::model::Origin::to_key)) -> highest applied seq;
//! - `origin_log`: `(origin, seq)` -> key, for every *current* sibling: the per-origin change
//!   log that `changes_since` walks (superseded changes leave it with their version);
//! - `feed`: feed seq -> applied change (bincode `FeedEvent`), trimmed to a retention count;
//! - `items`: `(position, key)` -> digest of the key's current versions, for reconciliation
//!   (see `reconcile`); `item_buckets`: count and digest sum per 2^48 positions (the top 16
//!   bits), so the fingerprint of a large range is a sum of at most 65,536 cached rows;
//! - `tombstones`: keys whose winner is a tombstone (what collection looks at);
//! - `member_vv`: member device -> the last version vector it reported (tombstone
//!   collection);
//! - `batches`: `(origin, last seq)` -> first seq, for every batch (`batch`) whose writes
//!   this store holds: the delta pager keeps a batch in one delta, and the feed marks it;
//! - `feed_batch`: feed seq -> `(origin, first, last, end)` for the feed entries of a
//!   batch (`end`: the last entry of it that its transaction applied), trimmed with the
//!   feed;
//! - `retired`: origin -> highest seq, for origins taken out of the version vector once
//!   every member had them and no current version here is theirs (see `docs/store.md`,
//!   "Store incarnations"): their changes up to that seq still count as seen.

use redb::{ReadableTable, TableDefinition};

use super::error::StoreError;
use super::model::{BatchRange, Device, Dot, Sibling};

/// On-disk format of the store file; bumped on incompatible changes (format 1, without
/// epochs, is migrated at open: `migrate`).
pub(crate) const FORMAT: u64 = 2;

pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("cnspr_meta");
pub(crate) const VERSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("versions");
pub(crate) const VV: TableDefinition<[u8; 40], u64> = TableDefinition::new("version_vector");
pub(crate) const LOG: TableDefinition<([u8; 40], u64), &str> = TableDefinition::new("origin_log");
pub(crate) const FEED: TableDefinition<u64, &[u8]> = TableDefinition::new("feed");
pub(crate) const ITEMS: TableDefinition<(u64, &str), u128> = TableDefinition::new("items");
pub(crate) const BUCKETS: TableDefinition<u16, (u64, u128)> = TableDefinition::new("item_buckets");
pub(crate) const TOMBS: TableDefinition<&str, ()> = TableDefinition::new("tombstones");
pub(crate) const MEMBERS: TableDefinition<Device, &[u8]> = TableDefinition::new("member_vv");
pub(crate) const RETIRED: TableDefinition<[u8; 40], u64> = TableDefinition::new("retired");
pub(crate) const BATCHES: TableDefinition<([u8; 40], u64), u64> = TableDefinition::new("batches");
pub(crate) const FEED_BATCH: TableDefinition<u64, ([u8; 40], u64, u64, bool)> =
    TableDefinition::new("feed_batch");

pub(crate) const M_FORMAT: &str = "format";
/// This store's epoch (see [`Origin`](super::model::Origin)).
pub(crate) const M_EPOCH: &str = "epoch";
pub(crate) const M_FEED_SEQ: &str = "feed_seq";
pub(crate) const M_FEED_TRIMMED: &str = "feed_trimmed";
/// Encoded bytes of the feed entries kept (for the feed's byte budget).
pub(crate) const M_FEED_BYTES: &str = "feed_bytes";
pub(crate) const M_CLOCK_WALL: &str = "clock_wall_ms";
pub(crate) const M_CLOCK_COUNTER: &str = "clock_counter";
/// Version of the derived tables (`items`, `item_buckets`, `tombstones`); built at open when
/// older.
pub(crate) const M_INDEXED: &str = "indexed";
pub(crate) const INDEXED: u64 = 1;
pub(crate) const M_ITEMS: &str = "items";

/// Levels of the reconciliation tree whose sums come from `item_buckets` (16 bits).
pub(crate) const BUCKET_LEVEL: u8 = 4;

/// The item position of a key: the first 8 bytes of SHA-256 of the key.
pub(crate) fn key_pos(key: &str) -> u64 {
    let d = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    u64::from_be_bytes(b)
}

/// The item digest of a key: SHA-256 of the key and of its encoded current versions.
pub(crate) fn item_digest(key: &str, encoded_siblings: &[u8]) -> u128 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&(key.len() as u32).to_le_bytes());
    ctx.update(key.as_bytes());
    ctx.update(encoded_siblings);
    let d = ctx.finish();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d.as_ref()[..16]);
    u128::from_le_bytes(b)
}

pub(crate) fn bucket_of(pos: u64) -> u16 {
    (pos >> 48) as u16
}

/// Most value bytes put in one [`Delta`](super::model::Delta) (at least one change is
/// always sent): with one more value of at most 8 MiB, or the rest of a batch (at most
/// 8 MiB of keys and values, `super::batch`), a delta stays below the 32 MiB frame limit
/// of sync.
pub(crate) const MAX_DELTA_BYTES: usize = 16 * 1024 * 1024;

pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    Ok(bincode::serde::encode_to_vec(
        value,
        bincode::config::standard(),
    )?)
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())?;
    if used != bytes.len() {
        return Err(StoreError::Decode(format!(
            "{} trailing bytes",
            bytes.len() - used
        )));
    }
    Ok(value)
}

/// The batch that the change `dot` belongs to, if any (from the `batches` table).
pub(crate) fn batch_of(
    table: &impl ReadableTable<([u8; 40], u64), u64>,
    dot: Dot,
) -> Result<Option<BatchRange>, StoreError> {
    let k = dot.0.to_key();
    let found = table.range((k, dot.1)..=(k, u64::MAX))?.next();
    Ok(match found {
        Some(row) => {
            let (key, first) = row?;
            let (_, last) = key.value();
            let first = first.value();
            (first <= dot.1).then_some(BatchRange {
                origin: dot.0,
                first,
                last,
            })
        }
        None => None,
    })
}

/// The current siblings of `key` (none when absent).
pub(crate) fn read_siblings(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Vec<Sibling>, StoreError> {
    match table.get(key)? {
        Some(bytes) => decode(bytes.value()),
        None => Ok(Vec::new()),
    }
}
