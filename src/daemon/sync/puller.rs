//! The puller's side of a sync session, as a pure state machine: it is given the frames
//! the server sends and the time, and says what to apply to the store and what to send.
//! The task in `pull` does the I/O.

use tokio::time::Instant;

use super::error::{SyncError, Violation};
use super::protocol::{
    recon_max_items, BATCH, DELTA_MAX_CHANGES, RECON_HOLD_BYTES, RECON_HOLD_CHANGES, SEEN_EVERY,
    SYNC_VERSION,
};
use crate::daemon::wire::{Down, Up};
use crate::store::claims;
use crate::store::reconcile::{Initiator, ItemSet, ReconMsg};
use crate::store::{BatchRange, Change, Delta, Device, VersionVector};

/// One pull session.
#[derive(Debug)]
pub struct Puller {
    /// The server's device (its own origins need no backing, see `crate::store::claims`).
    sender: Device,
    /// The keys this store held at the hello: bound what a reconciliation asks for.
    items: u64,
    /// The vector last reported to the server.
    reported: VersionVector,
    report_due: Option<Instant>,
    recon: Option<Initiator>,
    /// What the reconciled changes of this session named: backs the final delta's vector.
    named: VersionVector,
    caught_up: bool,
    received: usize,
    /// Reconciled changes held back to be merged in one transaction (so that no batch
    /// shows in parts), with the batches they belong to.
    held: Held,
    held_bytes: usize,
}

/// Reconciled changes to merge together, and the batches they belong to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub changes: Vec<Change>,
    pub batches: Vec<BatchRange>,
}

/// What to do with a frame from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Pulled {
    /// Apply `delta` from the server (`Store::apply_delta_backed` with `named`).
    Delta {
        delta: Delta,
        named: VersionVector,
        /// Set on the first delta that leaves nothing more: changes received until then.
        caught_up: Option<usize>,
        /// Reconciled changes to merge first (`Store::apply_reconciled`).
        held: Option<Held>,
    },
    /// Merge these reconciled changes (`Store::apply_reconciled`).
    Reconciled(Held),
    /// Nothing to do yet (reconciled changes held back).
    Nothing,
    /// Answer a reconciliation message: [`Puller::answer`] on a snapshot of the store
    /// (`first`: the session just started reconciling).
    Answer { msg: ReconMsg, first: bool },
}

impl Puller {
    /// A session from a store at `vv` holding `items` keys, pulling from `sender`; returns
    /// the hello to send.
    pub fn start(sender: Device, vv: VersionVector, items: u64) -> (Puller, Up) {
        let hello = Up::Hello {
            version: SYNC_VERSION,
            vv: vv.clone(),
            items,
        };
        let puller = Puller {
            sender,
            items,
            reported: vv,
            report_due: None,
            recon: None,
            named: VersionVector::new(),
            caught_up: false,
            received: 0,
            held: Held::default(),
            held_bytes: 0,
        };
        (puller, hello)
    }

    /// The server's device.
    pub fn sender(&self) -> Device {
        self.sender
    }

    /// Takes a frame from the server.
    pub fn on_frame(&mut self, frame: Down, now: Instant) -> Result<Pulled, SyncError> {
        match frame {
            Down::Delta(delta) => {
                check_delta(&delta)?;
                let named = match self.recon.take() {
                    Some(r) if !r.done() => return Err(Violation::ReconUnfinished.into()),
                    Some(_) => std::mem::take(&mut self.named),
                    None => VersionVector::new(),
                };
                let held = self.take_held();
                self.received += delta.changes.len();
                let caught_up = (!delta.more && !self.caught_up).then_some(self.received);
                self.caught_up |= !delta.more;
                self.report_due.get_or_insert(now + SEEN_EVERY);
                Ok(Pulled::Delta {
                    delta,
                    named,
                    caught_up,
                    held,
                })
            }
            Down::Recon(msg) => {
                let first = self.recon.is_none();
                if first && (self.caught_up || self.received > 0) {
                    return Err(Violation::UnexpectedRecon.into());
                }
                let items = self.items;
                self.recon
                    .get_or_insert_with(|| Initiator::new(recon_max_items(items)));
                Ok(Pulled::Answer { msg, first })
            }
            Down::ReconChanges(changes) => {
                if self.recon.is_none() {
                    return Err(Violation::ChangesOutsideRecon.into());
                }
                if changes.len() > BATCH {
                    return Err(Violation::DeltaTooLong(changes.len()).into());
                }
                claims::name_into(&changes, &mut self.named, None)?;
                self.received += changes.len();
                self.held_bytes += changes
                    .iter()
                    .map(|c| c.key.len() + c.value.as_ref().map_or(0, Vec::len))
                    .sum::<usize>();
                self.held.changes.extend(changes);
                if self.held.changes.len() >= RECON_HOLD_CHANGES
                    || self.held_bytes >= RECON_HOLD_BYTES
                {
                    return Ok(self.take_held().map_or(Pulled::Nothing, Pulled::Reconciled));
                }
                Ok(Pulled::Nothing)
            }
            Down::ReconBatches(batches) => {
                if self.recon.is_none() {
                    return Err(Violation::ChangesOutsideRecon.into());
                }
                if batches.len() > BATCH {
                    return Err(Violation::DeltaTooLong(batches.len()).into());
                }
                if self.held.batches.len() < RECON_HOLD_CHANGES {
                    self.held.batches.extend(batches);
                }
                Ok(Pulled::Nothing)
            }
        }
    }

    fn take_held(&mut self) -> Option<Held> {
        self.held_bytes = 0;
        let held = std::mem::take(&mut self.held);
        (!held.changes.is_empty()).then_some(held)
    }

    /// The reply to a reconciliation message, from `set` (a snapshot of the store).
    pub fn answer<S: ItemSet>(&mut self, set: &S, msg: ReconMsg) -> Result<Up, SyncError>
    where
        SyncError: From<S::Error>,
    {
        let init = self.recon.as_mut().ok_or(Violation::UnexpectedRecon)?;
        Ok(Up::Recon(init.on_msg(set, msg)??))
    }

    /// The store changed: report the vector soon.
    pub fn on_change(&mut self, now: Instant) {
        self.report_due.get_or_insert(now + SEEN_EVERY);
    }

    /// When the vector is to be reported next.
    pub fn report_due(&self) -> Option<Instant> {
        self.report_due
    }

    /// The report is due and the store is at `vv`: the frame to send, if it moved.
    pub fn report(&mut self, vv: VersionVector) -> Option<Up> {
        self.report_due = None;
        if vv == self.reported {
            return None;
        }
        self.reported = vv.clone();
        Some(Up::Seen { vv })
    }
}

/// A delta's size, and its changes must lie within the vector it claims to bring.
fn check_delta(delta: &Delta) -> Result<(), Violation> {
    if delta.changes.len() > DELTA_MAX_CHANGES || delta.batches.len() > DELTA_MAX_CHANGES {
        return Err(Violation::DeltaTooLong(delta.changes.len()));
    }
    match delta
        .changes
        .iter()
        .find(|c| !delta.through.covers(c.version.dot()))
    {
        Some(c) => Err(Violation::BeyondVector(c.key.clone())),
        None => Ok(()),
    }
}
