//! The replicated key-value store's storage core (docs/store.md): data model, merge rule,
//! hybrid logical clock, redb persistence with durable group commit, change feed, and the
//! `changes_since` / `apply_delta` pair that sync uses. No networking: the daemon moves
//! [`Delta`]s and [`Change`]s between devices. See `docs/store.md`.
//!
//! Writes go through a bounded queue to one writer thread that commits everything queued
//! in one transaction (one fsync) and only then acknowledges. Reads run on their own
//! snapshot and never wait for the writer.

pub mod batch;
pub mod claims;
mod config;
pub mod counters;
mod db;
mod error;
pub mod hlc;
mod limits;
mod migrate;
pub mod model;
pub mod reconcile;
mod schema;
mod writer;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use redb::Database;
use tokio::sync::{broadcast, mpsc, oneshot};

pub use batch::{BatchOp, BatchResult, MAX_BATCH_BYTES};
pub use claims::{Own, Refusal, MAX_ORIGINS, MAX_SEQ};
pub use config::{system_wall_clock, StoreConfig, WallClock, DEFAULT_CACHE_BYTES};
pub use error::StoreError;
pub use hlc::{Clock, Hlc, MAX_DRIFT_MS};
pub use model::{
    validate_key, validate_value, BatchMark, BatchRange, Change, Condition, Delta, Device, Dot,
    Entry, FeedEvent, Origin, Version, VersionVector, VersionedValue, MAX_BATCH_OPS, MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
};

use writer::{Op, Through};

/// A handle to an open store; cheap to clone. The file is closed when the last clone is
/// dropped (after the writer finished its current batch).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    tx: Option<mpsc::Sender<Op>>,
    /// Live changes; a pointer per slot, since every slot is allocated at start.
    events: broadcast::Sender<Arc<FeedEvent>>,
    commits: Arc<AtomicU64>,
    /// The origin the store numbers its writes under and how many it numbered (see
    /// [`Store::own`]); the writer sets it (a new epoch can start while the store is open,
    /// see [`Store::renew_epoch`]).
    own: Arc<Mutex<Own>>,
    path: PathBuf,
    writer: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Store {
    /// Opens (creating if missing) the store at `path` for the device `device`.
    pub fn open(path: impl AsRef<Path>, device: Device) -> Result<Store, StoreError> {
        Self::open_with(path, device, StoreConfig::default())
    }

    /// [`Store::open`] with explicit configuration.
    pub fn open_with(
        path: impl AsRef<Path>,
        device: Device,
        config: StoreConfig,
    ) -> Result<Store, StoreError> {
        let path = path.as_ref().to_owned();
        let (db, mut loaded) = db::open(&path, config.verify_on_open, config.cache_bytes)?;
        // Every open is a new incarnation: the file may be a copy (a backup put back, a
        // cloned disk) whose origin numbered writes the other devices already hold, which
        // its next writes would reuse. See docs/store.md, "Store incarnations".
        loaded.epoch = db::new_epoch()?;
        db::set_epoch(&db, loaded.epoch)?;
        // Left by versions that detected copies with a mark file beside the store.
        let mut mark = path.as_os_str().to_owned();
        mark.push(".mark");
        let _ = std::fs::remove_file(PathBuf::from(mark));
        let db = Arc::new(db);
        let wall = config.wall_clock.clone();
        let own = Arc::new(Mutex::new(Own {
            origin: Origin::new(device, loaded.epoch),
            held: 0,
        }));
        let retain = (config.feed_retain.max(1), config.feed_retain_bytes);
        let state = writer::State::new(device, loaded, retain, wall(), own.clone());
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let (events, _) = broadcast::channel(config.broadcast_capacity.max(1));
        let commits = Arc::new(AtomicU64::new(0));
        let sinks = writer::Sinks {
            events: events.clone(),
            commits: commits.clone(),
        };
        let writer_db = db.clone();
        let handle = std::thread::Builder::new()
            .name("cnspr-store".into())
            .spawn(move || writer::run(writer_db, state, rx, sinks, wall))
            .map_err(|e| StoreError::Open {
                path: path.clone(),
                detail: e.to_string(),
            })?;
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                tx: Some(tx),
                events,
                commits,
                own,
                path,
                writer: Some(handle),
            }),
        })
    }

    /// The origin this store numbers its own writes under: this device and the store's
    /// epoch, new at every open (and when a peer claims more of it than was written, see
    /// [`Store::renew_epoch`]).
    pub fn origin(&self) -> Origin {
        self.own().origin
    }

    /// This store's origin and how many writes it has numbered under it, at least as many
    /// as any peer can hold: what checks a peer's claims ([`claims`]).
    pub fn own(&self) -> Own {
        *self.inner.own.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a new epoch because a peer claimed more writes of `claimed` (this store's
    /// origin when the claim was checked) than the store numbered under it: the store's
    /// current versions of that origin are written again, same values and stamps, under
    /// the new one, so a vector raised by the claim hides none of them (docs/store.md,
    /// "A claim on this store's own origin"). Changes from peers that carry such a claim
    /// start one by themselves ([`Store::apply_delta`]); this is for a claim seen
    /// elsewhere (a puller's vector). The first waits for nothing, the next a minute, then
    /// twice as long each time up to an hour; returns whether one started.
    pub async fn renew_epoch(&self, claimed: Origin) -> Result<bool, StoreError> {
        let n = self.submit(|reply| Op::Renew { claimed, reply }).await?;
        Ok(n > 0)
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Number of write transactions committed since open (group commit makes this far
    /// smaller than the number of writes under load). Unchanged means the store's
    /// contents are unchanged: a collection or retirement that found nothing to do
    /// commits nothing.
    pub fn commit_count(&self) -> u64 {
        self.inner.commits.load(Ordering::Relaxed)
    }

    async fn submit<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Op,
    ) -> Result<T, StoreError> {
        let (reply, done) = oneshot::channel();
        let tx = self.inner.tx.as_ref().ok_or(StoreError::Closed)?;
        tx.send(make(reply)).await.map_err(|_| StoreError::Closed)?;
        done.await.map_err(|_| StoreError::Closed)?
    }

    /// Writes `value` under `key`; returns once the write is durable on disk.
    pub async fn put(&self, key: &str, value: Vec<u8>) -> Result<Change, StoreError> {
        self.put_if(key, value, None).await
    }

    /// [`Store::put`] only if `cond` holds when the write is made (else
    /// [`StoreError::Conflict`], and nothing is written).
    pub async fn put_if(
        &self,
        key: &str,
        value: Vec<u8>,
        cond: Option<Condition>,
    ) -> Result<Change, StoreError> {
        validate_key(key)?;
        validate_value(&value)?;
        let key = key.to_owned();
        let change = self
            .submit(|reply| Op::Write {
                key,
                value: Some(value),
                cond,
                reply,
            })
            .await?;
        change.ok_or_else(|| StoreError::WriteFailed("internal: put produced no change".into()))
    }

    /// Deletes `key` (writes a tombstone); returns once durable. `None` when the key had no
    /// live version, in which case nothing is written.
    pub async fn del(&self, key: &str) -> Result<Option<Change>, StoreError> {
        self.del_if(key, None).await
    }

    /// [`Store::del`] only if `cond` holds when the write is made (else
    /// [`StoreError::Conflict`], and nothing is written).
    pub async fn del_if(
        &self,
        key: &str,
        cond: Option<Condition>,
    ) -> Result<Option<Change>, StoreError> {
        validate_key(key)?;
        let key = key.to_owned();
        self.submit(|reply| Op::Write {
            key,
            value: None,
            cond,
            reply,
        })
        .await
    }

    /// Writes every operation of `ops` in one transaction, or none of them: the first
    /// condition that does not hold fails the whole batch ([`StoreError::Conflict`]).
    /// Returns once durable. On other devices the batch shows whole or not at all.
    pub async fn batch(&self, ops: Vec<BatchOp>) -> Result<BatchResult, StoreError> {
        batch::validate_batch(&ops)?;
        self.submit(|reply| Op::Batch { ops, reply }).await
    }

    /// Applies changes pushed by a peer, in any order and with duplicates; returns how many
    /// were new here. A change whose predecessors from the same origin are missing is left
    /// out (pull them with [`Store::changes_since`]). Returns once durable. Refused whole
    /// ([`StoreError::Refused`]) when it claims more than a peer may ([`claims`]).
    pub async fn apply(&self, changes: Vec<Change>) -> Result<usize, StoreError> {
        changes.iter().try_for_each(Change::validate)?;
        self.submit(|reply| Op::Apply {
            changes,
            through: None,
            batches: Vec::new(),
            reply,
        })
        .await
    }

    /// Applies a [`Delta`] from the device `sender` (its [`Store::changes_since`]) and
    /// raises the version vector to `delta.through` as far as the delta backs it (see
    /// [`claims::backed`]). Returns how many changes were new here; refused whole
    /// ([`StoreError::Refused`]) when it claims more than a peer may.
    pub async fn apply_delta(&self, delta: Delta, sender: Device) -> Result<usize, StoreError> {
        self.apply_delta_backed(delta, sender, VersionVector::new())
            .await
    }

    /// [`Store::apply_delta`] for the delta that ends a reconciliation: `named` is what the
    /// reconciled changes named ([`claims::check_changes`]), which backs its vector too.
    pub async fn apply_delta_backed(
        &self,
        delta: Delta,
        sender: Device,
        named: VersionVector,
    ) -> Result<usize, StoreError> {
        delta.changes.iter().try_for_each(Change::validate)?;
        let Delta {
            changes,
            through,
            batches,
            ..
        } = delta;
        self.submit(|reply| Op::Apply {
            changes,
            batches,
            through: Some(Through {
                vv: through,
                sender,
                named,
            }),
            reply,
        })
        .await
    }

    /// Merges changes found missing by reconciliation ([`reconcile`]), whatever their
    /// origin's sequence, without raising the version vector: end the session with
    /// [`Store::apply_delta_backed`] of the sender's snapshot vector (no changes) to raise
    /// it. `batches` are the batches the changes belong to. Returns how many were new
    /// here.
    pub async fn apply_reconciled(
        &self,
        changes: Vec<Change>,
        batches: Vec<BatchRange>,
    ) -> Result<usize, StoreError> {
        changes.iter().try_for_each(Change::validate)?;
        self.submit(|reply| Op::ApplyReconciled {
            changes,
            batches,
            reply,
        })
        .await
    }

    /// Retires the origins that every member has (their vectors, `members`, name them at
    /// least as far as this store, or not at all) and that no current version here is
    /// of: they leave the version vector and count as seen from the `retired` table (see
    /// `docs/store.md`, "Store incarnations"). Returns how many were retired.
    pub async fn retire_origins(&self, members: &[VersionVector]) -> Result<usize, StoreError> {
        let members = members.to_vec();
        self.submit(|reply| Op::Retire { members, reply }).await
    }

    /// Whether this store has seen everything `vv` covers (in its version vector or its
    /// retired origins).
    pub fn covers(&self, vv: &VersionVector) -> Result<bool, StoreError> {
        self.reader()?.covers(vv)
    }

    /// The retired origins, with the seq up to which their changes count as seen.
    pub fn retired(&self) -> Result<VersionVector, StoreError> {
        self.reader()?.retired()
    }

    /// Durably records (`Some`) or forgets (`None`) the version vectors members reported
    /// (kept for tombstone collection across restarts).
    pub async fn save_member_vvs(
        &self,
        members: Vec<(Device, Option<VersionVector>)>,
    ) -> Result<usize, StoreError> {
        self.submit(|reply| Op::Members { members, reply }).await
    }

    /// The member version vectors recorded with [`Store::save_member_vvs`].
    pub fn member_vvs(&self) -> Result<Vec<(Device, VersionVector)>, StoreError> {
        self.reader()?.member_vvs()
    }

    /// A consistent read-only view: version vector, deltas and the reconciliation item set
    /// of one moment, whatever is written meanwhile.
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        Ok(Snapshot(self.reader()?))
    }

    /// Removes the keys whose winner is a tombstone once every version of the key is
    /// covered by this store's and every given member's version vector. Pass the vectors
    /// of *all* members of the mesh. Returns the number of keys removed.
    pub async fn collect_tombstones(
        &self,
        members_vv: &[VersionVector],
    ) -> Result<usize, StoreError> {
        let members = members_vv.to_vec();
        self.submit(|reply| Op::Collect { members, reply }).await
    }

    fn reader(&self) -> Result<db::Reader, StoreError> {
        db::Reader::new(&self.inner.db)
    }

    /// The visible state of `key`: `None` when absent or deleted.
    pub fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.reader()?.get(key)
    }

    /// Every current version of `key`, winner first, tombstones (`None`) included.
    pub fn versions(&self, key: &str) -> Result<Vec<VersionedValue>, StoreError> {
        self.reader()?.versions(key)
    }

    /// Live keys starting with `prefix`, in key order, after `start_after` (for paging),
    /// at most `limit`.
    pub fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.reader()?.list(prefix, start_after, limit, usize::MAX)
    }

    /// [`Store::list`], ending once the keys and values listed reach `max_bytes` in total
    /// (the entry that reaches it is the last; the first is always listed): a page of large
    /// values stays within what one reply can carry.
    pub fn list_within(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.reader()?.list(prefix, start_after, limit, max_bytes)
    }

    /// Highest applied seq per origin.
    pub fn version_vector(&self) -> Result<VersionVector, StoreError> {
        self.reader()?.version_vector()
    }

    /// What a peer whose version vector is `theirs` lacks (at most `limit` changes).
    pub fn changes_since(&self, theirs: &VersionVector, limit: usize) -> Result<Delta, StoreError> {
        self.reader()?.changes_since(theirs, limit)
    }

    /// Applied changes after feed seq `after` (0 = from the start) under `prefix`, and the
    /// changes of batches under other prefixes (so that a watcher sees where a batch ends).
    pub fn feed_since(
        &self,
        after: u64,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<FeedEvent>, StoreError> {
        self.reader()?.feed_since(after, prefix, limit)
    }

    /// Number of keys held (including deleted keys whose tombstone is not collected yet).
    pub fn item_count(&self) -> Result<u64, StoreError> {
        self.reader()?.item_count()
    }

    /// Live stream of applied changes. To watch without gaps: subscribe, then read
    /// [`Store::feed_since`] from your last seq, then skip broadcast events already seen.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FeedEvent>> {
        self.inner.events.subscribe()
    }
}

/// A read-only snapshot of a store (see [`Store::snapshot`]); also the [`reconcile::ItemSet`]
/// of its keys.
pub struct Snapshot(db::Reader);

impl Snapshot {
    /// Highest applied seq per origin.
    pub fn version_vector(&self) -> Result<VersionVector, StoreError> {
        self.0.version_vector()
    }

    /// What a peer whose version vector is `theirs` lacks (see [`Store::changes_since`]).
    pub fn changes_since(&self, theirs: &VersionVector, limit: usize) -> Result<Delta, StoreError> {
        self.0.changes_since(theirs, limit)
    }

    /// Every current version of the keys at the given item positions.
    pub fn changes_at(&self, positions: &[u64]) -> Result<Vec<Change>, StoreError> {
        self.0.changes_at(positions)
    }

    /// Number of keys held.
    pub fn item_count(&self) -> Result<u64, StoreError> {
        self.0.item_count()
    }

    /// The batch that the change `dot` belongs to, if any.
    pub fn batch_of(&self, dot: Dot) -> Result<Option<BatchRange>, StoreError> {
        self.0.batch_of(dot)
    }
}

impl reconcile::ItemSet for Snapshot {
    type Error = StoreError;
    fn sum(&self, range: reconcile::Range) -> Result<reconcile::Sum, StoreError> {
        self.0.sum(range)
    }
    fn items(&self, range: reconcile::Range, limit: usize) -> Result<Vec<(u64, u128)>, StoreError> {
        self.0.items(range, limit)
    }
}
