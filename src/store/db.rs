//! The redb file: opening (creating, checking, migrating and indexing it) and the epoch.
//! Reads run on a [`Reader`] ([`read`](mod@read)), writes through a [`Writer`]
//! ([`write`](mod@write)); the tables are in [`schema`](super::schema).

use std::fs;
use std::path::Path;

use redb::{Database, ReadableTable};

use super::error::StoreError;
use super::hlc::Hlc;
use super::model::{Origin, Sibling, VersionVector};
use super::reconcile::Sum;
use super::schema::{
    bucket_of, decode, item_digest, key_pos, BATCHES, BUCKETS, FEED, FEED_BATCH, FORMAT, INDEXED,
    ITEMS, LOG, MEMBERS, META, M_CLOCK_COUNTER, M_CLOCK_WALL, M_EPOCH, M_FEED_BYTES, M_FEED_SEQ,
    M_FEED_TRIMMED, M_FORMAT, M_INDEXED, M_ITEMS, RETIRED, TOMBS, VERSIONS, VV,
};

mod read;
mod write;

pub(crate) use read::Reader;
pub(crate) use write::Writer;

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
            txn.open_table(RETIRED)?;
            txn.open_table(BATCHES)?;
            txn.open_table(FEED_BATCH)?;
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

/// Records a new epoch for this store (one commit), and creates the tables added to
/// format 2 later (`retired`, `batches`, `feed_batch`).
pub(crate) fn set_epoch(db: &Database, epoch: u64) -> Result<(), StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(redb::Durability::Immediate);
    txn.open_table(META)?.insert(M_EPOCH, epoch)?;
    txn.open_table(RETIRED)?;
    txn.open_table(BATCHES)?;
    txn.open_table(FEED_BATCH)?;
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
