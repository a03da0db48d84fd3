//! The server's side of a sync session, as a pure state machine: it is given the puller's
//! frames, what the store says (deltas, snapshots) and this store's own origin, and says
//! what to send and what the puller reported. The task in `serve` does the I/O.

use super::error::{SyncError, Violation};
use super::protocol::{should_reconcile, SYNC_VERSION};
use crate::daemon::wire::{Down, Up};
use crate::store::claims::{self, Own, Refusal, MAX_ORIGINS};
use crate::store::reconcile::{ItemSet, ReconReply, Responder};
use crate::store::{Change, Delta, Device, VersionVector};

/// One served session.
#[derive(Debug)]
pub struct Server {
    /// This device: its own origins need no backing.
    me: Device,
    /// What the puller has, as far as this side knows: its hello, joined with every
    /// vector sent and every report. Reports may add at most [`MAX_ORIGINS`] origins in
    /// all (see [`Server::on_frame`]); what was sent comes from this store's own vector.
    theirs: VersionVector,
    their_items: u64,
    recon: Option<Recon>,
}

#[derive(Debug)]
struct Recon {
    responder: Responder,
    /// The snapshot's vector: the final delta raises the puller to it.
    through: VersionVector,
    /// What the reconciled changes sent named: backs `through`.
    named: VersionVector,
    sent: usize,
}

/// A frame from the puller during a reconciliation.
#[derive(Debug, PartialEq, Eq)]
pub enum Heard {
    /// Its vector now (checked): record it for tombstone collection.
    Report(VersionVector),
    /// Its reply to the last reconciliation message.
    Reply(ReconReply),
}

/// What the responder does after a reply.
#[derive(Debug)]
pub struct ReconStep {
    /// Item positions whose keys go to the puller (as reconciled changes).
    pub send: Vec<u64>,
    /// The next message; `None`: send [`Server::end_recon`]'s delta.
    pub next: Option<Down>,
}

/// A vector from the puller is checked against what this store wrote (`own`) and the
/// bounds before it counts for anything.
fn checked(vv: VersionVector, own: Own) -> Result<VersionVector, SyncError> {
    claims::check_vector(&vv, own)?;
    Ok(vv)
}

impl Server {
    /// A session from its first frame, which must be a hello of this protocol version.
    /// Returns the session and the puller's vector to record.
    pub fn start(first: Up, own: Own) -> Result<(Server, VersionVector), SyncError> {
        let (vv, items) = match first {
            Up::Hello { version, vv, items } if version == SYNC_VERSION => (vv, items),
            Up::Hello { version, .. } => {
                return Err(SyncError::Version {
                    theirs: version,
                    ours: SYNC_VERSION,
                })
            }
            _ => return Err(Violation::NoHello.into()),
        };
        let vv = checked(vv, own)?;
        let server = Server {
            me: own.origin.device,
            theirs: vv.clone(),
            their_items: items,
            recon: None,
        };
        Ok((server, vv))
    }

    /// Whether to reconcile first, given this store's vector and number of keys.
    pub fn should_reconcile(&self, ours: &VersionVector, our_items: u64) -> bool {
        should_reconcile(ours, &self.theirs, our_items, self.their_items)
    }

    /// The vector to compute the next delta from (`Store::changes_since`).
    pub fn wants(&self) -> &VersionVector {
        &self.theirs
    }

    /// A delta computed from [`Server::wants`]: the frame to send, or `None` when it brings
    /// nothing new. Its vector is cut to what the delta backs (see `crate::store::claims`):
    /// what the puller will take, so [`Server::wants`] stays what it has.
    pub fn on_delta(&mut self, mut delta: Delta) -> Option<Down> {
        delta.through = claims::backed(&delta.through, &claims::names(&delta.changes), self.me);
        let news =
            !delta.changes.is_empty() || delta.through.iter().any(|(o, s)| s > self.theirs.get(&o));
        if !news {
            return None;
        }
        self.theirs.join(&delta.through);
        Some(Down::Delta(delta))
    }

    /// A frame from the puller once the session is live: only reports are expected.
    ///
    /// Each report is bounded on its own, and so is what they add up to: a report that
    /// takes [`Server::wants`] past [`MAX_ORIGINS`] origins is refused, else many reports
    /// of made-up origins would grow the session without end. An honest puller stays
    /// within: what it reported and what it took from this side are all in its own
    /// vector, which holds no more (it refuses a delta that would take it past).
    /// Origins retired and replaced within one session could add up past it: that
    /// session ends and the next starts from a fresh hello.
    pub fn on_frame(&mut self, frame: Up, own: Own) -> Result<VersionVector, SyncError> {
        match frame {
            Up::Seen { vv } => {
                let vv = checked(vv, own)?;
                self.theirs.join(&vv);
                if self.theirs.len() > MAX_ORIGINS {
                    return Err(Refusal::TooManyOrigins {
                        count: self.theirs.len(),
                    }
                    .into());
                }
                Ok(vv)
            }
            Up::Hello { .. } => Err(Violation::SecondHello.into()),
            Up::Recon(_) => Err(Violation::ReplyOutsideRecon.into()),
        }
    }

    /// Starts reconciling on `set`, a snapshot whose vector is `through`: the first message.
    pub fn begin_recon<S: ItemSet>(
        &mut self,
        set: &S,
        through: VersionVector,
    ) -> Result<Down, SyncError>
    where
        SyncError: From<S::Error>,
    {
        let (responder, msg) = Responder::start(set)?;
        self.recon = Some(Recon {
            responder,
            through,
            named: VersionVector::new(),
            sent: 0,
        });
        Ok(Down::Recon(msg))
    }

    /// A frame from the puller while reconciling.
    pub fn on_recon_frame(&mut self, frame: Up, own: Own) -> Result<Heard, SyncError> {
        match frame {
            Up::Recon(reply) if self.recon.is_some() => Ok(Heard::Reply(reply)),
            Up::Recon(_) => Err(Violation::ReplyOutsideRecon.into()),
            other => self.on_frame(other, own).map(Heard::Report),
        }
    }

    /// The puller's reply, checked against the same snapshot `set`.
    pub fn on_recon_reply<S: ItemSet>(
        &mut self,
        set: &S,
        reply: ReconReply,
    ) -> Result<ReconStep, SyncError>
    where
        SyncError: From<S::Error>,
    {
        let recon = self.recon.as_mut().ok_or(Violation::ReplyOutsideRecon)?;
        let step = recon.responder.on_reply(set, reply)??;
        Ok(ReconStep {
            send: step.send,
            next: step.msg.map(Down::Recon),
        })
    }

    /// Reconciled changes are about to be sent.
    pub fn sending(&mut self, changes: &[Change]) {
        if let Some(r) = self.recon.as_mut() {
            r.sent += changes.len();
            r.named.join(&claims::names(changes));
        }
    }

    /// Ends the reconciliation: the delta that raises the puller to the snapshot's vector,
    /// with the rounds and changes it took.
    pub fn end_recon(&mut self) -> Result<(Down, u32, usize), SyncError> {
        let recon = self.recon.take().ok_or(Violation::ReplyOutsideRecon)?;
        let through = claims::backed(&recon.through, &recon.named, self.me);
        self.theirs.join(&through);
        let delta = Delta {
            changes: Vec::new(),
            through,
            more: false,
            batches: Vec::new(),
        };
        Ok((Down::Delta(delta), recon.responder.rounds(), recon.sent))
    }
}
