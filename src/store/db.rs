//! The redb file: tables, opening with integrity checks, reads and low-level writes.
//!
//! Tables:
//! - `cnspr_meta`: format marker, last feed seq, trimmed feed prefix, last clock stamp;
//! - `versions`: key -> all current siblings (bincode `Vec<Sibling>`, best first);
//! - `version_vector`: origin -> highest applied seq;
//! - `origin_log`: `(origin, seq)` -> key, for every *current* sibling: the per-origin change
//!   log that `changes_since` walks (superseded changes leave it with their version);
//! - `feed`: feed seq -> applied change (bincode `FeedEvent`), trimmed to a retention count.

use std::fs;
use std::ops::Bound;
use std::path::Path;

use redb::{Database, ReadTransaction, ReadableTable, Table, TableDefinition, WriteTransaction};

use super::hlc::Hlc;
use super::model::{Delta, Entry, FeedEvent, Origin, Sibling, VersionVector, VersionedValue};
use super::StoreError;

/// On-disk format of this module; bumped on incompatible changes.
pub(crate) const FORMAT: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("cnspr_meta");
const VERSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("versions");
const VV: TableDefinition<Origin, u64> = TableDefinition::new("version_vector");
const LOG: TableDefinition<(Origin, u64), &str> = TableDefinition::new("origin_log");
const FEED: TableDefinition<u64, &[u8]> = TableDefinition::new("feed");

const M_FORMAT: &str = "format";
const M_FEED_SEQ: &str = "feed_seq";
const M_FEED_TRIMMED: &str = "feed_trimmed";
const M_CLOCK_WALL: &str = "clock_wall_ms";
const M_CLOCK_COUNTER: &str = "clock_counter";

/// Most value bytes put in one [`Delta`] (at least one change is always sent).
pub(crate) const MAX_DELTA_BYTES: usize = 32 * 1024 * 1024;

/// State the writer keeps in memory, loaded at open.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub vv: VersionVector,
    pub feed_seq: u64,
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
pub(crate) fn open(path: &Path, verify: bool) -> Result<(Database, Loaded), StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.to_owned(),
        detail,
    };
    match fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let db = create_new(path)?;
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
    Ok((db, loaded))
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
fn create_new(path: &Path) -> Result<Database, StoreError> {
    let open_err = |detail: String| StoreError::Open {
        path: path.to_owned(),
        detail,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = std::path::PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let db = Database::builder()
        .create(&tmp)
        .map_err(|e| classify(path, e))?;
    {
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(M_FORMAT, FORMAT)?;
            meta.insert(M_FEED_SEQ, 0)?;
            meta.insert(M_FEED_TRIMMED, 0)?;
            txn.open_table(VERSIONS)?;
            txn.open_table(VV)?;
            txn.open_table(LOG)?;
            txn.open_table(FEED)?;
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
    if format != FORMAT {
        return Err(StoreError::Decode(format!(
            "store format {format}, this build reads format {FORMAT}"
        )));
    }
    let mut vv = VersionVector::new();
    for row in txn.open_table(VV)?.iter()? {
        let (origin, seq) = row?;
        vv.raise(origin.value(), seq.value());
    }
    let clock_counter = u32::try_from(get(M_CLOCK_COUNTER)?).unwrap_or(u32::MAX);
    Ok(Loaded {
        vv,
        feed_seq: get(M_FEED_SEQ)?,
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
            vv.raise(origin.value(), seq.value());
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
            for row in log.range((origin, from + 1)..=(origin, mine))? {
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

/// Write side: the open tables of one write transaction.
pub(crate) struct Writer<'t> {
    meta: Table<'t, &'static str, u64>,
    versions: Table<'t, &'static str, &'static [u8]>,
    vv: Table<'t, Origin, u64>,
    log: Table<'t, (Origin, u64), &'static str>,
    feed: Table<'t, u64, &'static [u8]>,
}

impl<'t> Writer<'t> {
    pub fn new(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            meta: txn.open_table(META)?,
            versions: txn.open_table(VERSIONS)?,
            vv: txn.open_table(VV)?,
            log: txn.open_table(LOG)?,
            feed: txn.open_table(FEED)?,
        })
    }

    pub fn siblings(&self, key: &str) -> Result<Vec<Sibling>, StoreError> {
        read_siblings(&self.versions, key)
    }

    pub fn set_siblings(&mut self, key: &str, siblings: &[Sibling]) -> Result<(), StoreError> {
        if siblings.is_empty() {
            self.versions.remove(key)?;
        } else {
            self.versions.insert(key, encode(&siblings)?.as_slice())?;
        }
        Ok(())
    }

    pub fn log_insert(&mut self, dot: (Origin, u64), key: &str) -> Result<(), StoreError> {
        self.log.insert(dot, key)?;
        Ok(())
    }

    pub fn log_remove(&mut self, dot: (Origin, u64)) -> Result<(), StoreError> {
        self.log.remove(dot)?;
        Ok(())
    }

    pub fn set_vv(&mut self, origin: Origin, seq: u64) -> Result<(), StoreError> {
        self.vv.insert(origin, seq)?;
        Ok(())
    }

    pub fn feed_append(&mut self, event: &FeedEvent) -> Result<(), StoreError> {
        self.feed
            .insert(event.feed_seq, encode(event)?.as_slice())?;
        Ok(())
    }

    /// Drops feed entries so that at most `retain` remain before `last + 1`.
    pub fn feed_trim(&mut self, last: u64, retain: u64) -> Result<(), StoreError> {
        let cutoff = last.saturating_sub(retain);
        if cutoff == 0 {
            return Ok(());
        }
        self.feed.retain_in(..=cutoff, |_, _| false)?;
        self.meta.insert(M_FEED_TRIMMED, cutoff)?;
        Ok(())
    }

    pub fn save_state(&mut self, feed_seq: u64, clock_last: Hlc) -> Result<(), StoreError> {
        self.meta.insert(M_FEED_SEQ, feed_seq)?;
        self.meta.insert(M_CLOCK_WALL, clock_last.wall_ms)?;
        self.meta
            .insert(M_CLOCK_COUNTER, u64::from(clock_last.counter))?;
        Ok(())
    }

    /// Keys whose winner is a tombstone, with their siblings.
    pub fn tombstoned_keys(&self) -> Result<Vec<(String, Vec<Sibling>)>, StoreError> {
        let mut out = Vec::new();
        for row in self.versions.iter()? {
            let (key, bytes) = row?;
            let siblings: Vec<Sibling> = decode(bytes.value())?;
            if siblings.first().is_some_and(|s| s.value.is_none()) {
                out.push((key.value().to_owned(), siblings));
            }
        }
        Ok(out)
    }
}
