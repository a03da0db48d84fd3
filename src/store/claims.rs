//! What a peer may claim (pure, no I/O; see `docs/store.md`, "What a peer may claim").
//!
//! Changes and version vectors from a peer name origins and sequence numbers that this
//! store then trusts: a vector entry `(o, s)` makes every change of `o` up to `s` count
//! as seen. So:
//!
//! - nothing from a peer may claim more of this store's *own* origin than it wrote (its
//!   next writes would be numbered below the claim and ignored everywhere);
//! - sequence numbers are at most [`MAX_SEQ`] and a vector holds at most [`MAX_ORIGINS`]
//!   origins (it travels in every hello: a longer one could stop sync);
//! - a delta's `through` raises an origin only as far as the delta backs it: its changes
//!   name that origin at that sequence number or higher (as a change's dot or in a
//!   change's `supersedes`), or the origin is one of the sender's own device;
//! - a dot names one write of one key: changes that give one dot to two keys are refused
//!   (the store's log maps each dot to its key; see `docs/store.md`).

use std::collections::HashMap;

use super::model::{Change, Device, Dot, Origin, VersionVector};

pub use super::limits::{Refusal, MAX_ORIGINS, MAX_SEQ};

/// This store's own origin and how many writes it has numbered under it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Own {
    pub origin: Origin,
    pub held: u64,
}

impl Own {
    fn check(&self, origin: Origin, seq: u64) -> Result<(), Refusal> {
        if !(1..=MAX_SEQ).contains(&seq) {
            return Err(Refusal::Seq { seq });
        }
        if origin == self.origin && seq > self.held {
            return Err(Refusal::OwnOrigin {
                claimed: seq,
                held: self.held,
            });
        }
        Ok(())
    }
}

/// Checks a vector from a peer (a hello, a report, a delta's `through`): its size, its
/// sequence numbers, and what it says of this store's own origin.
pub fn check_vector(vv: &VersionVector, own: Own) -> Result<(), Refusal> {
    if vv.len() > MAX_ORIGINS {
        return Err(Refusal::TooManyOrigins { count: vv.len() });
    }
    vv.iter().try_for_each(|(o, s)| own.check(o, s))
}

/// Checks changes from a peer (their dots and `supersedes` against this store's own
/// origin and [`MAX_SEQ`], and that no dot comes on two keys) and returns what they back:
/// per origin, the highest sequence number they name. Stops at [`MAX_ORIGINS`] distinct
/// origins.
pub fn check_changes(changes: &[Change], own: Own) -> Result<VersionVector, Refusal> {
    let mut named = VersionVector::new();
    name_into(changes, &mut named, Some(own))?;
    let mut keys: HashMap<Dot, &str> = HashMap::with_capacity(changes.len());
    for c in changes {
        let first = *keys.entry(c.version.dot()).or_insert(&c.key);
        if first != c.key {
            return Err(Refusal::DotTwice {
                seq: c.version.seq,
                first: first.to_owned(),
                second: c.key.clone(),
            });
        }
    }
    Ok(named)
}

/// Adds what `changes` name to `named` (see [`check_changes`]), checking the bounds and,
/// when given, this store's own origin.
pub fn name_into(
    changes: &[Change],
    named: &mut VersionVector,
    own: Option<Own>,
) -> Result<(), Refusal> {
    let mut name = |o: Origin, s: u64| -> Result<(), Refusal> {
        match own {
            Some(own) => own.check(o, s)?,
            None if !(1..=MAX_SEQ).contains(&s) => return Err(Refusal::Seq { seq: s }),
            None => {}
        }
        named.raise(o, s);
        if named.len() > MAX_ORIGINS {
            return Err(Refusal::TooManyOrigins { count: named.len() });
        }
        Ok(())
    };
    for c in changes {
        name(c.version.origin, c.version.seq)?;
        for &(o, s) in &c.supersedes {
            name(o, s)?;
        }
    }
    Ok(())
}

/// What `changes` name (see [`check_changes`]), unchecked: for a store's own deltas.
pub fn names(changes: &[Change]) -> VersionVector {
    changes
        .iter()
        .flat_map(|c| std::iter::once(c.version.dot()).chain(c.supersedes.iter().copied()))
        .collect()
}

/// The part of a delta's `through` that is backed: each entry as far as `named` (what the
/// delta's changes, or the reconciliation it ends, name) reaches, or whole when the origin
/// belongs to the sender's device. Entries backed by nothing are left out.
pub fn backed(through: &VersionVector, named: &VersionVector, sender: Device) -> VersionVector {
    through
        .iter()
        .map(|(o, s)| {
            let limit = if o.device == sender { s } else { named.get(&o) };
            (o, s.min(limit))
        })
        .collect()
}
