//! The writer thread: drains the bounded queue and commits every queued operation in one
//! redb write transaction (`Durability::Immediate`: one fsync), then acknowledges each.
//! Nothing is acknowledged before its commit returned; if a commit fails, every operation
//! of the batch gets the error and the in-memory state is rolled back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redb::{Database, Durability};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::config::WallClock;
use super::db::{new_epoch, Loaded, Writer};
use super::error::StoreError;
use super::hlc::Clock;
use super::model::{
    key_context, merge, Change, Device, FeedEvent, Origin, Sibling, Version, VersionVector,
};

/// Most operations committed in one transaction.
pub(crate) const MAX_BATCH_OPS: usize = 1024;
/// Most payload bytes committed in one transaction (at least one operation always goes).
pub(crate) const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// One queued operation.
pub(crate) enum Op {
    /// A local put (`Some`) or delete (`None`).
    Write {
        key: String,
        value: Option<Vec<u8>>,
        reply: Reply<Option<Change>>,
    },
    /// Changes from a peer; `through` is set for a [`super::Delta`].
    Apply {
        changes: Vec<Change>,
        through: Option<VersionVector>,
        reply: Reply<usize>,
    },
    /// Changes found missing by reconciliation: merged whatever their origin's sequence,
    /// without raising the version vector (the session's final delta does that).
    ApplyReconciled {
        changes: Vec<Change>,
        reply: Reply<usize>,
    },
    /// Records or forgets members' reported version vectors.
    Members {
        members: Vec<(Device, Option<VersionVector>)>,
        reply: Reply<usize>,
    },
    /// A peer has seen `seen` writes of this store's current origin: if that is more than
    /// this store holds, the file is an old copy and starts a new epoch (count: 1 if so).
    PeerSaw { seen: u64, reply: Reply<usize> },
    /// Tombstone collection against the members' version vectors.
    Collect {
        members: Vec<VersionVector>,
        reply: Reply<usize>,
    },
}

impl Op {
    fn bytes(&self) -> usize {
        match self {
            Op::Write { key, value, .. } => key.len() + value.as_ref().map_or(0, Vec::len),
            Op::Apply { changes, .. } | Op::ApplyReconciled { changes, .. } => changes
                .iter()
                .map(|c| c.key.len() + c.value.as_ref().map_or(0, Vec::len))
                .sum(),
            Op::Collect { .. } | Op::Members { .. } | Op::PeerSaw { .. } => 0,
        }
    }
}

enum Output {
    Write(Option<Change>),
    Count(usize),
}

/// The store's state machine: what the writer keeps in memory between batches.
#[derive(Clone)]
pub(crate) struct State {
    origin: Origin,
    clock: Clock,
    vv: VersionVector,
    feed_seq: u64,
    feed_bytes: u64,
    feed_retain: u64,
    feed_retain_bytes: u64,
}

impl State {
    pub fn new(
        device: Device,
        loaded: Loaded,
        (feed_retain, feed_retain_bytes): (u64, u64),
        wall_ms: u64,
    ) -> Self {
        Self {
            origin: Origin::new(device, loaded.epoch),
            clock: Clock::resume(loaded.clock_last, wall_ms),
            vv: loaded.vv,
            feed_seq: loaded.feed_seq,
            feed_bytes: loaded.feed_bytes,
            feed_retain,
            feed_retain_bytes,
        }
    }

    /// The mark file's content for the current state.
    fn mark(&self) -> super::mark::Mark {
        super::mark::Mark {
            epoch: self.origin.epoch,
            seq: self.vv.get(&self.origin),
        }
    }

    fn run(
        &mut self,
        w: &mut Writer<'_>,
        op: &Op,
        wall_ms: u64,
        events: &mut Vec<FeedEvent>,
    ) -> Result<Output, StoreError> {
        Ok(match op {
            Op::Write { key, value, .. } => {
                Output::Write(self.local_write(w, key, value.clone(), wall_ms, events)?)
            }
            Op::Apply {
                changes, through, ..
            } => Output::Count(self.apply(w, changes, through.as_ref(), wall_ms, events)?),
            Op::ApplyReconciled { changes, .. } => {
                Output::Count(self.apply_reconciled(w, changes, wall_ms, events)?)
            }
            Op::Collect { members, .. } => Output::Count(self.collect(w, members)?),
            Op::Members { members, .. } => {
                for (device, vv) in members {
                    w.set_member_vv(*device, vv.as_ref())?;
                }
                Output::Count(members.len())
            }
            Op::PeerSaw { seen, .. } => {
                let own = self.vv.get(&self.origin);
                if *seen <= own {
                    Output::Count(0)
                } else {
                    let old = self.origin;
                    self.origin = Origin::new(old.device, new_epoch()?);
                    w.set_epoch(self.origin.epoch)?;
                    tracing::warn!(
                        held = own,
                        seen_by_peer = seen,
                        new_epoch = format_args!("{:016x}", self.origin.epoch),
                        "this store is an older copy than a peer has seen: its own writes are \
                         numbered in a new epoch from now on"
                    );
                    Output::Count(1)
                }
            }
        })
    }

    /// A local write supersedes every current sibling of the key and is stamped above all
    /// of them, even if their stamps are ahead of our clock (the future-clock rule).
    fn local_write(
        &mut self,
        w: &mut Writer<'_>,
        key: &str,
        value: Option<Vec<u8>>,
        wall_ms: u64,
        events: &mut Vec<FeedEvent>,
    ) -> Result<Option<Change>, StoreError> {
        let siblings = w.siblings(key)?;
        if value.is_none() && siblings.iter().all(|s| s.value.is_none()) {
            return Ok(None);
        }
        let floor = siblings
            .iter()
            .map(|s| s.version.hlc.next())
            .max()
            .unwrap_or_default();
        let hlc = self.clock.now(wall_ms).max(floor);
        let seq = self.vv.get(&self.origin) + 1;
        let change = Change {
            key: key.to_owned(),
            value,
            version: Version {
                hlc,
                origin: self.origin,
                seq,
            },
            supersedes: key_context(&siblings),
        };
        self.apply_one(w, &change, siblings, true, events)?;
        Ok(Some(change))
    }

    fn apply(
        &mut self,
        w: &mut Writer<'_>,
        changes: &[Change],
        through: Option<&VersionVector>,
        wall_ms: u64,
        events: &mut Vec<FeedEvent>,
    ) -> Result<usize, StoreError> {
        let mut order: Vec<&Change> = changes.iter().collect();
        order.sort_by_key(|c| (c.version.origin, c.version.seq));
        order.dedup_by_key(|c| c.version.dot());
        let mut applied = 0;
        for change in order {
            let (origin, seq) = change.version.dot();
            let have = self.vv.get(&origin);
            let vouched = through.is_some_and(|t| t.covers((origin, seq)));
            if seq <= have || (seq != have + 1 && !vouched) {
                continue; // seen already, or a gap: the missing changes must come first
            }
            self.clock.observe(change.version.hlc, wall_ms);
            let siblings = w.siblings(&change.key)?;
            if siblings.iter().any(|s| s.version.dot() == (origin, seq)) {
                // Held already (merged by a reconciliation): only the vector moves.
                self.vv.raise(origin, seq);
                w.set_vv(origin, seq)?;
                continue;
            }
            self.apply_one(w, change, siblings, true, events)?;
            applied += 1;
        }
        for (origin, seq) in through.map(VersionVector::iter).into_iter().flatten() {
            if seq > self.vv.get(&origin) {
                self.vv.raise(origin, seq);
                w.set_vv(origin, seq)?;
            }
        }
        Ok(applied)
    }

    /// Merges changes whose predecessors may be missing. A change already seen (`seq <=
    /// vv`) or already held is skipped; the vector is not raised, so nothing is claimed
    /// as seen until the sender's final delta vouches for it.
    fn apply_reconciled(
        &mut self,
        w: &mut Writer<'_>,
        changes: &[Change],
        wall_ms: u64,
        events: &mut Vec<FeedEvent>,
    ) -> Result<usize, StoreError> {
        let mut applied = 0;
        for change in changes {
            let dot = change.version.dot();
            if self.vv.covers(dot) {
                continue;
            }
            let siblings = w.siblings(&change.key)?;
            if siblings.iter().any(|s| s.version.dot() == dot) {
                continue;
            }
            self.clock.observe(change.version.hlc, wall_ms);
            self.apply_one(w, change, siblings, false, events)?;
            applied += 1;
        }
        Ok(applied)
    }

    fn apply_one(
        &mut self,
        w: &mut Writer<'_>,
        change: &Change,
        mut siblings: Vec<Sibling>,
        raise_vv: bool,
        events: &mut Vec<FeedEvent>,
    ) -> Result<(), StoreError> {
        let merged = merge(&mut siblings, change);
        for dot in &merged.removed {
            w.log_remove(*dot)?;
        }
        if merged.added {
            w.log_insert(change.version.dot(), &change.key)?;
        }
        if merged.added || !merged.removed.is_empty() {
            w.set_siblings(&change.key, &siblings)?;
        }
        let (origin, seq) = change.version.dot();
        if raise_vv {
            self.vv.raise(origin, seq);
            w.set_vv(origin, self.vv.get(&origin))?;
        }
        if merged.added {
            self.feed_seq += 1;
            let event = FeedEvent {
                feed_seq: self.feed_seq,
                change: change.clone(),
                wins: merged.wins,
            };
            self.feed_bytes += w.feed_append(&event)?;
            events.push(event);
        }
        Ok(())
    }

    /// Removes keys whose winner is a tombstone once every sibling's dot is covered by this
    /// store's and every member's version vector, and this store's vector covers the key's
    /// whole causal context (so a superseded version arriving later is known as seen).
    fn collect(
        &mut self,
        w: &mut Writer<'_>,
        members: &[VersionVector],
    ) -> Result<usize, StoreError> {
        let mut collected = 0;
        for (key, siblings) in w.tombstoned_keys()? {
            let context_seen = key_context(&siblings)
                .into_iter()
                .all(|dot| self.vv.covers(dot));
            let seen_by_all = context_seen
                && siblings.iter().all(|s| {
                    let dot = s.version.dot();
                    self.vv.covers(dot) && members.iter().all(|m| m.covers(dot))
                });
            if seen_by_all {
                for s in &siblings {
                    w.log_remove(s.version.dot())?;
                }
                w.set_siblings(&key, &[])?;
                collected += 1;
            }
        }
        Ok(collected)
    }

    fn commit(
        &mut self,
        db: &Database,
        batch: &[Op],
        wall_ms: u64,
    ) -> Result<(Vec<Output>, Vec<FeedEvent>), StoreError> {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate);
        let mut outputs = Vec::with_capacity(batch.len());
        let mut events = Vec::new();
        {
            let mut w = Writer::new(&txn)?;
            for op in batch {
                outputs.push(self.run(&mut w, op, wall_ms, &mut events)?);
            }
            if !events.is_empty() {
                w.feed_trim(
                    self.feed_retain,
                    self.feed_retain_bytes,
                    &mut self.feed_bytes,
                )?;
            }
            w.save_state(self.feed_seq, self.feed_bytes, self.clock.last())?;
        }
        txn.commit()?;
        Ok((outputs, events))
    }
}

/// Shared counters and channels the writer reports to.
pub(crate) struct Sinks {
    pub events: broadcast::Sender<FeedEvent>,
    pub commits: Arc<AtomicU64>,
    /// This store's current origin, as [`super::Store::origin`] reports it.
    pub origin: Arc<Mutex<Origin>>,
    /// The mark file, rewritten when the store's own origin or sequence moved.
    pub mark: std::path::PathBuf,
}

/// The writer thread's loop; returns when every sender is gone.
pub(crate) fn run(
    db: Arc<Database>,
    mut state: State,
    mut rx: mpsc::Receiver<Op>,
    sinks: Sinks,
    wall: WallClock,
) {
    let mut marked = state.mark();
    while let Some(first) = rx.blocking_recv() {
        let mut bytes = first.bytes();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_OPS && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(op) => {
                    bytes += op.bytes();
                    batch.push(op);
                }
                Err(_) => break,
            }
        }
        let saved = state.clone();
        match state.commit(&db, &batch, wall()) {
            Ok((outputs, events)) => {
                sinks.commits.fetch_add(1, Ordering::Relaxed);
                *sinks.origin.lock().unwrap_or_else(|e| e.into_inner()) = state.origin;
                for (op, output) in batch.into_iter().zip(outputs) {
                    reply(op, Ok(output));
                }
                for event in events {
                    let _ = sinks.events.send(event); // no watcher is fine
                }
                // After the replies: the mark may lag the store, never lead it.
                let mark = state.mark();
                if mark != marked {
                    marked = mark;
                    super::mark::write(&sinks.mark, mark);
                }
            }
            Err(err) => {
                tracing::error!(error = %err, ops = batch.len(), "store write batch failed");
                state = saved;
                let msg = err.to_string();
                for op in batch {
                    reply(op, Err(StoreError::WriteFailed(msg.clone())));
                }
            }
        }
    }
}

fn reply(op: Op, result: Result<Output, StoreError>) {
    // A caller that stopped waiting is not an error: the operation is committed anyway.
    match (op, result) {
        (Op::Write { reply, .. }, Ok(Output::Write(c))) => drop(reply.send(Ok(c))),
        (
            Op::Apply { reply, .. }
            | Op::ApplyReconciled { reply, .. }
            | Op::Collect { reply, .. }
            | Op::Members { reply, .. }
            | Op::PeerSaw { reply, .. },
            Ok(Output::Count(n)),
        ) => drop(reply.send(Ok(n))),
        (Op::Write { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
        (
            Op::Apply { reply, .. }
            | Op::ApplyReconciled { reply, .. }
            | Op::Collect { reply, .. }
            | Op::Members { reply, .. }
            | Op::PeerSaw { reply, .. },
            Err(e),
        ) => drop(reply.send(Err(e))),
        (op, Ok(_)) => {
            let err =
                StoreError::WriteFailed("internal: output does not match the operation".into());
            reply(op, Err(err));
        }
    }
}
