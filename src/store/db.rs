//! The redb file: tables, opening with integrity checks, reads and low-level writes.
//!
//! Tables:
//! - `cnspr_meta`: format marker, this store's epoch, last feed seq, trimmed feed prefix,
//!   last clock stamp;
//! - `versions`: key -> all current siblings (bincode `Vec<Sibling>`, best first);
//! - `version_vector`: origin (device and epoch, [`Origin::to_key`]) -> highest applied seq;
//! - `origin_log`: `(origin, seq)` -> key, for every *current* sibling: the per-origin change
//!   log that `changes_since` walks (superseded changes leave it with their version);
//! - `feed`: feed seq -> applied change (bincode `FeedEvent`), trimmed to a retention count;
//! - `items`: `(position, key)` -> digest of the key's current versions, for reconciliation
//!   (see `reconcile`); `item_buckets`: count and digest sum per 2^48 positions (the top 16
//!   bits), so the fingerprint of a large range is a sum of at most 65,536 cached rows;
//! - `tombstones`: keys whose winner is a tombstone (what collection looks at);
//! - `member_vv`: member device -> the last version vector it reported (tombstone
//!   collection).

use std::fs;
use std::ops::Bound;
use std::path::Path;

use redb::{
    Database, ReadTransaction, ReadableTable, ReadableTableMetadata, Table, TableDefinition,
    WriteTransaction,
};

use super::hlc::Hlc;
use super::model::{
    Change, Delta, Device, Entry, FeedEvent, Origin, Sibling, VersionVector, VersionedValue,
};
use super::reconcile::{ItemSet, Range, Sum};
use super::StoreError;

/// On-disk format of this module; bumped on incompatible changes (format 1, without
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

pub(crate) const M_FORMAT: &str = "format";
/// This store's epoch (see [`Origin`]).
pub(crate) const M_EPOCH: &str = "epoch";
const M_FEED_SEQ: &str = "feed_seq";
const M_FEED_TRIMMED: &str = "feed_trimmed";
/// Encoded bytes of the feed entries kept (for the feed's byte budget).
const M_FEED_BYTES: &str = "feed_bytes";
const M_CLOCK_WALL: &str = "clock_wall_ms";
const M_CLOCK_COUNTER: &str = "clock_counter";
/// Version of the derived tables (`items`, `item_buckets`, `tombstones`); built at open when
/// older.
pub(crate) const M_INDEXED: &str = "indexed";
const INDEXED: u64 = 1;
const M_ITEMS: &str = "items";

/// Levels of the reconciliation tree whose sums come from `item_buckets` (16 bits).
const BUCKET_LEVEL: u8 = 4;

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

fn bucket_of(pos: u64) -> u16 {
    (pos >> 48) as u16
}

/// Most value bytes put in one [`Delta`] (at least one change is always sent): with one
/// more value of at most 8 MiB, a delta stays below the 32 MiB frame limit of sync.
pub(crate) const MAX_DELTA_BYTES: usize = 16 * 1024 * 1024;

/// State the writer keeps in memory, loaded at open.
#[derive(Debug)]
pub(crate) struct Loaded {
    /// This store's epoch: its own writes are numbered under `(device, epoch)`.
    pub epoch: u64,
    pub vv: VersionVector,
    pub feed_seq: u64,
    /// Encoded bytes of the feed entries kept.
    pub feed_bytes: u64,
    pub clock_last: Hlc,
}

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

/// Opens (or creates) the store file. Damage is reported as [`StoreError::Corrupt`] naming
/// the file, never as an empty store.
pub(crate) fn open(
    path: &Path,
    verify: bool,
    cache_bytes: usize,
) -> Result<(Database, Loaded), StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.to_owned(),
        detail,
    };
    match fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let db = create_new(path, cache_bytes)?;
            let loaded = load(&db)?;
            return Ok((db, loaded));
        }
        Err(e) => {
            return Err(StoreError::Open {
                path: path.to_owned(),
                detail: e.to_string(),
            })
        }
        Ok(meta) if meta.len() == 0 => return Err(corrupt("the file is empty".into())),
        Ok(_) => {}
    }
    // redb asserts (panics) on some damaged files, e.g. one shorter than its header says:
    // turn that into the same clear error as a failed check.
    let opened = std::panic::catch_unwind(|| -> Result<Database, StoreError> {
        let mut db = Database::builder()
            .set_cache_size(cache_bytes)
            .open(path)
            .map_err(|e| classify(path, e))?;
        if verify {
            match db.check_integrity() {
                Ok(true) => {}
                Ok(false) => tracing::warn!(
                    file = %path.display(),
                    "store file failed its integrity check and was repaired to its last valid commit"
                ),
                Err(e) => return Err(classify(path, e)),
            }
        }
        Ok(db)
    });
    let db = opened.unwrap_or_else(|panic| {
        let detail = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "the storage engine rejected it".into());
        Err(corrupt(detail))
    })?;
    let loaded = load(&db).map_err(|e| match e {
        StoreError::Corrupt { .. } | StoreError::Open { .. } => e,
        other => corrupt(other.to_string()),
    })?;
    build_indexes(&db)?;
    Ok((db, loaded))
}

/// Builds the derived tables of a store written before they existed (one transaction).
fn build_indexes(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        if meta.get(M_INDEXED)?.map(|g| g.value()) == Some(INDEXED) {
            return Ok(());
        }
        let versions = txn.open_table(VERSIONS)?;
        let mut items = txn.open_table(ITEMS)?;
        let mut buckets = txn.open_table(BUCKETS)?;
        let mut tombs = txn.open_table(TOMBS)?;
        txn.open_table(MEMBERS)?;
        let mut sums = std::collections::BTreeMap::<u16, Sum>::new();
        let mut count = 0u64;
        for row in versions.iter()? {
            let (key, bytes) = row?;
            let (key, bytes) = (key.value(), bytes.value());
            let pos = key_pos(key);
            let digest = item_digest(key, bytes);
            items.insert((pos, key), digest)?;
            sums.entry(bucket_of(pos)).or_default().add(digest);
            let siblings: Vec<Sibling> = decode(bytes)?;
            if siblings.first().is_some_and(|s| s.value.is_none()) {
                tombs.insert(key, ())?;
            }
            count += 1;
        }
        for (b, s) in sums {
            buckets.insert(b, (s.count, s.sum))?;
        }
        meta.insert(M_ITEMS, count)?;
        meta.insert(M_INDEXED, INDEXED)?;
    }
    txn.commit()?;
    Ok(())
}

fn classify(path: &Path, err: redb::DatabaseError) -> StoreError {
    use redb::{DatabaseError as D, StorageError as S};
    let path = path.to_owned();
    match err {
        D::Storage(S::Corrupted(detail)) => StoreError::Corrupt { path, detail },
        D::Storage(S::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            StoreError::Corrupt {
                path,
                detail: format!("the file is truncated ({e})"),
            }
        }
        D::Storage(S::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
            StoreError::Corrupt {
                path,
                detail: "its header is not a valid store header".into(),
            }
        }
        D::DatabaseAlreadyOpen => StoreError::Open {
            path,
            detail: "it is already open in another process (is another daemon running?)".into(),
        },
        other => StoreError::Open {
            path,
            detail: other.to_string(),
        },
    }
}

/// Creates a new store next to `path` and renames it into place, so a file at `path` has
/// always been a complete store: an empty or short file there is damage, not a new store.
fn create_new(path: &Path, cache_bytes: usize) -> Result<Database, StoreError> {
    let open_err = |detail: String| StoreError::Open {
        path: path.to_owned(),
        detail,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = std::path::PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let db = Database::builder()
        .set_cache_size(cache_bytes)
        .create(&tmp)
        .map_err(|e| classify(path, e))?;
    {
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(M_FORMAT, FORMAT)?;
            meta.insert(M_EPOCH, new_epoch()?)?;
            meta.insert(M_FEED_SEQ, 0)?;
            meta.insert(M_FEED_TRIMMED, 0)?;
            meta.insert(M_INDEXED, INDEXED)?;
            meta.insert(M_ITEMS, 0)?;
            txn.open_table(VERSIONS)?;
            txn.open_table(VV)?;
            txn.open_table(LOG)?;
            txn.open_table(FEED)?;
            txn.open_table(ITEMS)?;
            txn.open_table(BUCKETS)?;
            txn.open_table(TOMBS)?;
            txn.open_table(MEMBERS)?;
        }
        txn.commit()?;
    }
    fs::rename(&tmp, path).map_err(|e| open_err(e.to_string()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| open_err(e.to_string()))?;
    }
    Ok(db) // redb works on the open file, which is now the one at `path`
}

/// A fresh random epoch for a new store incarnation (never 0, which marks stores created
/// before epochs existed).
pub(crate) fn new_epoch() -> Result<u64, StoreError> {
    use ring::rand::SecureRandom;
    let rng = ring::rand::SystemRandom::new();
    loop {
        let mut b = [0u8; 8];
        rng.fill(&mut b)
            .map_err(|_| StoreError::WriteFailed("the system random generator failed".into()))?;
        let epoch = u64::from_le_bytes(b);
        if epoch != 0 {
            return Ok(epoch);
        }
    }
}

/// Records a new epoch for this store (one commit).
pub(crate) fn set_epoch(db: &Database, epoch: u64) -> Result<(), StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(redb::Durability::Immediate);
    txn.open_table(META)?.insert(M_EPOCH, epoch)?;
    txn.commit()?;
    Ok(())
}

fn load(db: &Database) -> Result<Loaded, StoreError> {
    let txn = db.begin_read()?;
    let meta = txn.open_table(META).map_err(|e| match e {
        redb::TableError::TableDoesNotExist(_) => {
            StoreError::Decode("it is not a cnspr store (no format marker)".into())
        }
        other => other.into(),
    })?;
    let get = |name: &str| -> Result<u64, StoreError> {
        Ok(meta.get(name)?.map(|g| g.value()).unwrap_or(0))
    };
    let format = get(M_FORMAT)?;
    if format == 1 {
        drop(meta);
        drop(txn);
        super::migrate::from_format_1(db)?;
        return load(db);
    }
    if format != FORMAT {
        return Err(StoreError::Decode(format!(
            "store format {format}, this build reads format {FORMAT}"
        )));
    }
    let mut vv = VersionVector::new();
    for row in txn.open_table(VV)?.iter()? {
        let (origin, seq) = row?;
        vv.raise(Origin::from_key(origin.value()), seq.value());
    }
    let clock_counter = u32::try_from(get(M_CLOCK_COUNTER)?).unwrap_or(u32::MAX);
    Ok(Loaded {
        epoch: get(M_EPOCH)?,
        vv,
        feed_seq: get(M_FEED_SEQ)?,
        feed_bytes: match meta.get(M_FEED_BYTES)? {
            Some(g) => g.value(),
            // Written before the byte budget: counted once.
            None => {
                let mut total = 0u64;
                for row in txn.open_table(FEED)?.iter()? {
                    total += row?.1.value().len() as u64;
                }
                total
            }
        },
        clock_last: Hlc::new(get(M_CLOCK_WALL)?, clock_counter),
    })
}

fn read_siblings(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Vec<Sibling>, StoreError> {
    match table.get(key)? {
        Some(bytes) => decode(bytes.value()),
        None => Ok(Vec::new()),
    }
}

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
    ) -> Result<Vec<Entry>, StoreError> {
        let table = self.txn.open_table(VERSIONS)?;
        let start = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let mut out = Vec::new();
        for row in table.range::<&str>((start, Bound::Unbounded))? {
            if out.len() >= limit {
                break;
            }
            let (key, bytes) = row?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            let siblings: Vec<Sibling> = decode(bytes.value())?;
            out.extend(to_entry(key, &siblings));
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

    /// The current changes the holder of `theirs` lacks, in `(origin, seq)` order, at most
    /// `limit` of them (and about [`MAX_DELTA_BYTES`] of values). Changes superseded here
    /// are not sent: whatever superseded them is current here (or was collected after every
    /// member saw it) and is sent instead, carrying them in its `supersedes`.
    pub fn changes_since(&self, theirs: &VersionVector, limit: usize) -> Result<Delta, StoreError> {
        let limit = limit.max(1);
        let versions = self.txn.open_table(VERSIONS)?;
        let log = self.txn.open_table(LOG)?;
        let mut delta = Delta::default();
        let mut bytes = 0usize;
        for (origin, mine) in self.version_vector()?.iter() {
            let from = theirs.get(&origin);
            if mine <= from {
                continue;
            }
            let k = origin.to_key();
            for row in log.range((k, from + 1)..=(k, mine))? {
                if delta.changes.len() >= limit || bytes >= MAX_DELTA_BYTES {
                    delta.more = true;
                    return Ok(delta);
                }
                let (dot, key) = row?;
                let (_, seq) = dot.value();
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
        let mut out = Vec::new();
        for row in feed.range(after.saturating_add(1)..)? {
            if out.len() >= limit {
                break;
            }
            let (_, bytes) = row?;
            let event: FeedEvent = decode(bytes.value())?;
            if event.change.key.starts_with(prefix) {
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

    pub fn log_remove(&mut self, dot: (Origin, u64)) -> Result<(), StoreError> {
        self.log.remove((dot.0.to_key(), dot.1))?;
        Ok(())
    }

    pub fn set_vv(&mut self, origin: Origin, seq: u64) -> Result<(), StoreError> {
        self.vv.insert(origin.to_key(), seq)?;
        Ok(())
    }

    /// Records this store's new epoch (see [`Origin`]).
    pub fn set_epoch(&mut self, epoch: u64) -> Result<(), StoreError> {
        self.meta.insert(M_EPOCH, epoch)?;
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
