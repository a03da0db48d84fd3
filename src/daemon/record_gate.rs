//! The gate membership messages pass before the core sees them: the records in them are
//! taken only with their origin's seal (`record_seal`), and this device's own records are
//! sealed on their way out.
//!
//! Gossip delivers each record from several members: the last record verified of each
//! origin is remembered (a SHA-256 of its binding and seal), and the same record again is
//! taken without a second verification. What a member can make this device spend on
//! verifications is bounded: [`BURST`] at once and [`RATE`] a second after that; beyond,
//! its records are dropped unchecked (anti-entropy brings them again). A member that sends
//! one record with a bad seal (a correct member never does: it passes on only what it
//! took) has all its records dropped unchecked for [`BLOCK`]. The rest of a message (probes,
//! digests, events) is taken whatever its records.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use membership::{Item, Message, Record};
use tracing::{debug, warn};
use transport::{DeviceId, Identity, TokenBucket};

use super::record_seal::{self, Refusal};

/// Verifications a member may cost at once.
pub const BURST: u32 = 512;
/// Verifications a member may cost each second after the burst.
pub const RATE: u32 = 64;
/// How long a member that sent a bad seal has its records dropped unchecked.
pub const BLOCK: Duration = Duration::from_secs(60);
/// Most origins whose last verified record is remembered.
const MAX_VERIFIED: usize = 4096;

/// What the gate did with the records of the messages it saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GateStats {
    /// Records whose seal was verified and held.
    pub verified: u64,
    /// Records taken as the same as one verified before.
    pub known: u64,
    /// Records refused for their seal.
    pub refused: u64,
    /// Records dropped unchecked: their sender was blocked or over its budget, or their
    /// origin is no member.
    pub unchecked: u64,
}

/// One sender's verification budget and block.
struct Budget {
    checks: TokenBucket,
    blocked_until: Option<Instant>,
}

impl Budget {
    fn new(now: Instant) -> Self {
        Budget {
            checks: TokenBucket::full(BURST, Duration::from_secs(1) / RATE, now),
            blocked_until: None,
        }
    }
}

#[derive(Default)]
struct State {
    /// This device's last record sealed, and its seal.
    own: Option<Record<DeviceId>>,
    /// Per origin, the digest of the last record whose seal was verified.
    verified: HashMap<DeviceId, [u8; 32]>,
    budgets: HashMap<DeviceId, Budget>,
    stats: GateStats,
}

/// The record gate of one device.
#[derive(Default)]
pub struct RecordGate {
    state: Mutex<State>,
}

/// What a record with its origin's key is, by what the gate knows of it and its sender.
enum Verdict {
    /// The same as the last record verified of its origin.
    Known,
    /// To verify.
    Check,
    /// Dropped unchecked: the sender is over its budget.
    Drop,
}

/// What a record is remembered by once verified: its binding and seal.
fn digest(binding: &[u8], seal: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(binding);
    ctx.update(seal);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl RecordGate {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn stats(&self) -> GateStats {
        self.lock().stats
    }

    /// Seals this device's own records in `msg` (the core leaves them unsealed). An
    /// unchanged record is not signed again.
    pub fn seal_outgoing(&self, me: &Identity, msg: &mut Message<DeviceId>) {
        let Message::Gossip { items } = msg else {
            return;
        };
        for item in items {
            let Item::Record(rec) = item else { continue };
            if rec.origin != me.id || !rec.seal.is_empty() {
                continue;
            }
            let mut st = self.lock();
            match &st.own {
                Some(own) if own.same_statement(rec) => rec.seal = own.seal.clone(),
                _ => {
                    rec.seal = record_seal::seal(me, rec);
                    st.own = Some(rec.clone());
                }
            }
        }
    }

    /// The records of `msg` (from the member `from`) that are sealed by their origin;
    /// the others are removed. The rest of the message is left as it is.
    pub fn admit(&self, from: DeviceId, msg: &mut Message<DeviceId>, now: Instant) {
        let Message::Gossip { items } = msg else {
            return;
        };
        if !items.iter().any(|i| matches!(i, Item::Record(_))) {
            return;
        }
        items.retain(|item| match item {
            Item::Record(rec) => self.admit_record(from, rec, now),
            Item::Event(_) => true,
        });
    }

    fn admit_record(&self, from: DeviceId, rec: &Record<DeviceId>, now: Instant) -> bool {
        if self.blocked(from, now) {
            return self.dropped(from, rec);
        }
        // The cheap checks first: a seal whose key is not the origin's costs no signature
        // verification, and blocks its sender all the same.
        let key = match record_seal::origin_key(rec) {
            Ok(key) => key,
            Err(why) => {
                refuse(&mut self.lock(), from, rec, why, now);
                return false;
            }
        };
        let binding = record_seal::binding(rec);
        let h = digest(&binding, &rec.seal);
        let verdict = {
            let mut st = self.lock();
            let State {
                budgets, verified, ..
            } = &mut *st;
            if verified.get(&rec.origin) == Some(&h) {
                Verdict::Known
            } else if budgets
                .get_mut(&from)
                .is_some_and(|b| b.checks.try_take(now))
            {
                Verdict::Check
            } else {
                Verdict::Drop
            }
        };
        match verdict {
            Verdict::Known => {
                self.lock().stats.known += 1;
                return true;
            }
            Verdict::Drop => return self.dropped(from, rec),
            Verdict::Check => {}
        }
        let checked = record_seal::verify(rec, &key, &binding);
        let mut st = self.lock();
        match checked {
            Ok(()) => {
                st.stats.verified += 1;
                if st.verified.len() >= MAX_VERIFIED && !st.verified.contains_key(&rec.origin) {
                    st.verified.clear();
                }
                st.verified.insert(rec.origin, h);
                true
            }
            Err(why) => {
                refuse(&mut st, from, rec, why, now);
                false
            }
        }
    }

    /// Whether `from` sent a bad seal within the last [`BLOCK`] (its records are then
    /// dropped before any work on them). Makes its budget.
    fn blocked(&self, from: DeviceId, now: Instant) -> bool {
        let mut st = self.lock();
        let budget = st.budgets.entry(from).or_insert_with(|| Budget::new(now));
        if budget.blocked_until.is_some_and(|t| now < t) {
            return true;
        }
        budget.blocked_until = None;
        false
    }

    /// Counts `rec` of `from` as dropped unchecked (blocked, or over its budget).
    fn dropped(&self, from: DeviceId, rec: &Record<DeviceId>) -> bool {
        self.lock().stats.unchecked += 1;
        debug!(peer = %from.short(), origin = %rec.origin.short(), "membership record dropped unchecked: its sender is blocked or over its budget");
        false
    }

    /// Decodes a membership frame from `from` and lets through what the gate takes of it.
    /// Records of an origin for which `known` is false (no member of the mesh: the core
    /// would drop them) are dropped first, unchecked: a member that makes up key pairs
    /// costs no verification with them, and does not crowd the members' records out of
    /// the remembered ones.
    pub fn take_frame(
        &self,
        from: DeviceId,
        bytes: &[u8],
        now: Instant,
        known: impl Fn(&DeviceId) -> bool,
    ) -> Result<Message<DeviceId>, membership::DecodeError> {
        let mut msg = Message::<DeviceId>::decode(bytes)?;
        if let Message::Gossip { items } = &mut msg {
            let before = items.len();
            items.retain(|i| !matches!(i, Item::Record(r) if !known(&r.origin)));
            let dropped = (before - items.len()) as u64;
            if dropped > 0 {
                self.lock().stats.unchecked += dropped;
                debug!(peer = %from.short(), dropped, "membership records of devices outside the mesh dropped unchecked");
            }
        }
        self.admit(from, &mut msg, now);
        Ok(msg)
    }
}

fn refuse(st: &mut State, from: DeviceId, rec: &Record<DeviceId>, why: Refusal, now: Instant) {
    st.stats.refused += 1;
    if let Some(b) = st.budgets.get_mut(&from) {
        b.blocked_until = Some(now + BLOCK);
    }
    warn!(
        peer = %from.short(),
        origin = %rec.origin.short(),
        incarnation = rec.incarnation,
        version = rec.version,
        left = rec.left,
        reason = %why,
        block_s = BLOCK.as_secs(),
        "membership record refused: not its origin's; the sender's records are dropped for a while"
    );
}

#[cfg(test)]
#[path = "record_gate_tests.rs"]
mod tests;
