//! The writer thread: drains the bounded queue and commits every queued operation in one
//! redb write transaction (`Durability::Immediate`: one fsync), then acknowledges each.
//! Nothing is acknowledged before its commit returned; if a commit fails, every operation
//! of the batch gets the error and the in-memory state is rolled back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redb::{Database, Durability};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::batch::{BatchOp, BatchResult};
use super::claims::Own;
use super::config::WallClock;
use super::db::{Loaded, Writer};
use super::error::StoreError;
use super::hlc::Clock;
use super::limits::{Refusal, MAX_SEQ};
use super::model::{
    key_context, merge, BatchRange, Change, Condition, Device, FeedEvent, Origin, Sibling, Version,
    VersionVector,
};

/// Most operations committed in one transaction.
pub(crate) const MAX_BATCH_OPS: usize = 1024;
/// Most payload bytes committed in one transaction (at least one operation always goes).
pub(crate) const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

mod batch;
mod epoch;
mod peers;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// One queued operation.
pub(crate) enum Op {
    /// A local put (`Some`) or delete (`None`).
    Write {
        key: String,
        value: Option<Vec<u8>>,
        /// Written only if this holds (checked in the write's own transaction).
        cond: Option<Condition>,
        reply: Reply<Option<Change>>,
    },
    /// A local batch of writes, all or nothing ([`super::batch`]).
    Batch {
        ops: Vec<BatchOp>,
        reply: Reply<BatchResult>,
    },
    /// Changes from a peer; `through` is set for a [`super::Delta`]; `batches` are the
    /// batches the changes belong to.
    Apply {
        changes: Vec<Change>,
        through: Option<Through>,
        batches: Vec<BatchRange>,
        reply: Reply<usize>,
    },
    /// Changes found missing by reconciliation: merged whatever their origin's sequence,
    /// without raising the version vector (the session's final delta does that).
    ApplyReconciled {
        changes: Vec<Change>,
        batches: Vec<BatchRange>,
        reply: Reply<usize>,
    },
    /// Records or forgets members' reported version vectors.
    Members {
        members: Vec<(Device, Option<VersionVector>)>,
        reply: Reply<usize>,
    },
    /// Retires the origins every member has and no current version here is of (count).
    Retire {
        members: Vec<VersionVector>,
        reply: Reply<usize>,
    },
    /// Tombstone collection against the members' version vectors.
    Collect {
        members: Vec<VersionVector>,
        reply: Reply<usize>,
    },
    /// A new epoch, if `claimed` is still this store's origin and one is due
    /// ([`State::renew_if_due`]); 1 if it started, 0 if not.
    Renew {
        claimed: Origin,
        reply: Reply<usize>,
    },
}

impl Op {
    fn bytes(&self) -> usize {
        match self {
            Op::Write { key, value, .. } => key.len() + value.as_ref().map_or(0, Vec::len),
            Op::Batch { ops, .. } => ops
                .iter()
                .map(|o| o.key.len() + o.value.as_ref().map_or(0, Vec::len))
                .sum(),
            Op::Apply { changes, .. } | Op::ApplyReconciled { changes, .. } => changes
                .iter()
                .map(|c| c.key.len() + c.value.as_ref().map_or(0, Vec::len))
                .sum(),
            Op::Collect { .. } | Op::Members { .. } | Op::Retire { .. } | Op::Renew { .. } => 0,
        }
    }
}

/// A delta's vector and what backs it (see [`claims::backed`]).
pub(crate) struct Through {
    pub vv: VersionVector,
    /// The sender's device: its own origins need no backing.
    pub sender: Device,
    /// What else backs it: the changes of the reconciliation the delta ends.
    pub named: VersionVector,
}

enum Output {
    Write(Option<Change>),
    Batch(BatchResult),
    Count(usize),
    /// The operation was refused (nothing of it is written; the batch goes on).
    Refused(Refusal),
    /// A conditional write whose condition did not hold ([`StoreError::Conflict`];
    /// nothing written, the batch goes on).
    Conflict(StoreError),
}

impl From<Result<usize, Refusal>> for Output {
    fn from(r: Result<usize, Refusal>) -> Self {
        r.map_or_else(Output::Refused, Output::Count)
    }
}

/// The store's state machine: what the writer keeps in memory between batches.
#[derive(Clone)]
pub(crate) struct State {
    origin: Origin,
    /// The origin and own seq as [`super::Store::own`] reports them: the seq is raised
    /// before the commit, so no peer can hold a write of ours above it; a new origin is
    /// reported once the commit that starts it succeeded.
    published: Arc<Mutex<Own>>,
    /// When the last new epoch started while the store was open (wall-clock ms), and how
    /// many started (each doubles the wait before the next, see `epoch.rs`).
    renewed_at: Option<u64>,
    renewals: u32,
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
        published: Arc<Mutex<Own>>,
    ) -> Self {
        let origin = Origin::new(device, loaded.epoch);
        let state = Self {
            origin,
            published,
            renewed_at: None,
            renewals: 0,
            clock: Clock::resume(loaded.clock_last, wall_ms),
            vv: loaded.vv,
            feed_seq: loaded.feed_seq,
            feed_bytes: loaded.feed_bytes,
            feed_retain,
            feed_retain_bytes,
        };
        *state.published.lock().unwrap_or_else(|e| e.into_inner()) = state.own();
        state
    }

    /// Tells [`super::Store::own`] that this store numbered `seq` writes under its origin
    /// (never less than it said before); nothing while a new origin is not committed yet.
    fn publish(&self, seq: u64) {
        let mut own = self.published.lock().unwrap_or_else(|e| e.into_inner());
        if own.origin == self.origin {
            own.held = own.held.max(seq);
        }
    }

    /// After a commit: a new origin started in it is the one [`super::Store::own`]
    /// reports from now on. Before the commit no peer can hold anything of it, and if the
    /// commit fails the store keeps its old one.
    fn publish_committed(&self) {
        let mut own = self.published.lock().unwrap_or_else(|e| e.into_inner());
        if own.origin != self.origin {
            *own = self.own();
        }
    }

    fn own(&self) -> Own {
        Own {
            origin: self.origin,
            held: self.vv.get(&self.origin),
        }
    }

    /// The seq up to which `origin`'s changes count as seen here.
    fn have(&self, w: &Writer<'_>, origin: Origin) -> Result<u64, StoreError> {
        match self.vv.get(&origin) {
            0 => w.retired(origin),
            seq => Ok(seq),
        }
    }

    /// Raises the vector entry of `origin` to `seq` (an origin coming back from
    /// retirement leaves the `retired` table).
    fn raise(&mut self, w: &mut Writer<'_>, origin: Origin, seq: u64) -> Result<(), StoreError> {
        if seq <= self.vv.get(&origin) {
            return Ok(());
        }
        if self.vv.get(&origin) == 0 {
            w.set_retired(origin, None)?;
        }
        self.vv.raise(origin, seq);
        w.set_vv(origin, seq)
    }

    fn run(
        &mut self,
        w: &mut Writer<'_>,
        op: &Op,
        wall_ms: u64,
        events: &mut Vec<FeedEvent>,
    ) -> Result<Output, StoreError> {
        Ok(match op {
            Op::Write {
                key, value, cond, ..
            } => {
                let siblings = w.siblings(key)?;
                match cond {
                    Some(c) if !c.holds(&siblings) => Output::Conflict(conflict(key, c, &siblings)),
                    _ => Output::Write(self.local_write(
                        w,
                        key,
                        value.clone(),
                        siblings,
                        wall_ms,
                        events,
                    )?),
                }
            }
            Op::Batch { ops, .. } => match self.batch(w, ops, wall_ms, events)? {
                Ok(result) => Output::Batch(result),
                Err(conflict) => Output::Conflict(conflict),
            },
            Op::Apply {
                changes,
                through,
                batches,
                ..
            } => {
                let from = events.len();
                let mut applied = self.apply(w, changes, through.as_ref(), wall_ms, events)?;
                if self.renew_for(w, &applied, wall_ms, events)? {
                    applied = self.apply(w, changes, through.as_ref(), wall_ms, events)?;
                }
                if applied.is_ok() {
                    self.took_batches(w, batches, changes, &mut events[from..])?;
                }
                applied.into()
            }
            Op::ApplyReconciled {
                changes, batches, ..
            } => {
                let from = events.len();
                let mut applied = self.apply_reconciled(w, changes, wall_ms, events)?;
                if self.renew_for(w, &applied, wall_ms, events)? {
                    applied = self.apply_reconciled(w, changes, wall_ms, events)?;
                }
                if applied.is_ok() {
                    self.took_batches(w, batches, changes, &mut events[from..])?;
                }
                applied.into()
            }
            Op::Collect { members, .. } => Output::Count(self.collect(w, members)?),
            Op::Members { members, .. } => {
                for (device, vv) in members {
                    w.set_member_vv(*device, vv.as_ref())?;
                }
                Output::Count(members.len())
            }
            Op::Retire { members, .. } => Output::Count(self.retire(w, members)?),
            Op::Renew { claimed, .. } => {
                let now = *claimed == self.origin && self.renew_if_due(w, wall_ms, events)?;
                Output::Count(usize::from(now))
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
        siblings: Vec<Sibling>,
        wall_ms: u64,
        events: &mut Vec<FeedEvent>,
    ) -> Result<Option<Change>, StoreError> {
        if value.is_none() && siblings.iter().all(|s| s.value.is_none()) {
            return Ok(None);
        }
        let floor = siblings
            .iter()
            .map(|s| s.version.hlc.next())
            .max()
            .unwrap_or_default();
        let seq = self.vv.get(&self.origin) + 1;
        if seq > MAX_SEQ {
            return Err(StoreError::WriteFailed(format!(
                "this store incarnation has numbered {MAX_SEQ} writes; restart the daemon to \
                 start a new one"
            )));
        }
        let hlc = self.clock.now(wall_ms).max(floor);
        self.publish(seq);
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
        if raise_vv {
            let (origin, seq) = change.version.dot();
            self.raise(w, origin, seq)?;
        }
        if merged.added {
            self.feed_seq += 1;
            let event = FeedEvent {
                batch: None,
                feed_seq: self.feed_seq,
                change: change.clone(),
                wins: merged.wins,
            };
            self.feed_bytes += w.feed_append(&event)?;
            events.push(event);
        }
        Ok(())
    }

    /// Runs `batch` in one write transaction; returns the outputs, the feed events, and
    /// whether the transaction was committed. A batch of collections and retirements that
    /// found nothing to do is aborted instead: the collector asks every minute, and an idle
    /// device should not write its disk each time.
    fn commit(
        &mut self,
        db: &Database,
        batch: &[Op],
        wall_ms: u64,
    ) -> Result<(Vec<Output>, Vec<FeedEvent>, bool), StoreError> {
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
        let nothing_done = events.is_empty()
            && batch.iter().all(|op| {
                matches!(
                    op,
                    Op::Collect { .. } | Op::Retire { .. } | Op::Renew { .. }
                )
            })
            && outputs.iter().all(|o| matches!(o, Output::Count(0)));
        if nothing_done {
            txn.abort()?;
        } else {
            txn.commit()?;
        }
        Ok((outputs, events, !nothing_done))
    }
}

/// The error of a conditional write whose condition `c` does not hold for `siblings`.
fn conflict(key: &str, c: &Condition, siblings: &[Sibling]) -> StoreError {
    let live = siblings.first().is_some_and(|s| s.value.is_some());
    StoreError::Conflict {
        key: key.to_owned(),
        if_absent: *c == Condition::IfAbsent,
        current: if live {
            siblings
                .iter()
                .map(|s| (s.version.hlc, s.version.seq, s.version.origin.device))
                .collect()
        } else {
            Vec::new()
        },
    }
}

/// Shared counters and channels the writer reports to.
pub(crate) struct Sinks {
    pub events: broadcast::Sender<Arc<FeedEvent>>,
    pub commits: Arc<AtomicU64>,
}

/// The writer thread's loop; returns when every sender is gone.
pub(crate) fn run(
    db: Arc<Database>,
    mut state: State,
    mut rx: mpsc::Receiver<Op>,
    sinks: Sinks,
    wall: WallClock,
) {
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
            Ok((outputs, events, committed)) => {
                if committed {
                    sinks.commits.fetch_add(1, Ordering::Relaxed);
                }
                state.publish_committed();
                for (op, output) in batch.into_iter().zip(outputs) {
                    reply(op, Ok(output));
                }
                for event in events {
                    let _ = sinks.events.send(Arc::new(event)); // no watcher is fine
                }
            }
            Err(err) => {
                tracing::error!(error = %err, ops = batch.len(), "store write batch failed");
                state = saved; // a new epoch started in the batch is not kept either
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
        (Op::Write { reply, .. }, Ok(Output::Conflict(e))) => drop(reply.send(Err(e))),
        (Op::Batch { reply, .. }, Ok(Output::Batch(r))) => drop(reply.send(Ok(r))),
        (Op::Batch { reply, .. }, Ok(Output::Conflict(e))) => drop(reply.send(Err(e))),
        (Op::Batch { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
        (
            Op::Apply { reply, .. }
            | Op::ApplyReconciled { reply, .. }
            | Op::Collect { reply, .. }
            | Op::Members { reply, .. }
            | Op::Retire { reply, .. }
            | Op::Renew { reply, .. },
            Ok(Output::Count(n)),
        ) => drop(reply.send(Ok(n))),
        (
            Op::Apply { reply, .. } | Op::ApplyReconciled { reply, .. },
            Ok(Output::Refused(refusal)),
        ) => drop(reply.send(Err(refusal.into()))),
        (Op::Write { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
        (
            Op::Apply { reply, .. }
            | Op::ApplyReconciled { reply, .. }
            | Op::Collect { reply, .. }
            | Op::Members { reply, .. }
            | Op::Retire { reply, .. }
            | Op::Renew { reply, .. },
            Err(e),
        ) => drop(reply.send(Err(e))),
        (op, Ok(_)) => {
            let err =
                StoreError::WriteFailed("internal: output does not match the operation".into());
            reply(op, Err(err));
        }
    }
}
