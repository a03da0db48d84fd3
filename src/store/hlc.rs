//! Hybrid logical clock (HLC) with a bound on how far a remote clock may pull us.
//!
//! A stamp is `(wall_ms, counter)`: milliseconds since the Unix epoch plus a counter that
//! orders events inside one millisecond. Stamps are totally ordered by wall time, then
//! counter.
//!
//! The future-clock rule: a remote stamp more than [`MAX_DRIFT_MS`] ahead of our own wall
//! clock is *not* adopted into the clock, so one device with a broken clock cannot drag every
//! device of the mesh into the future. Causality on a key is kept anyway by the store: a
//! local write is stamped `max(clock.now(), max(superseded stamps).next())` (see
//! [`Hlc::next`]), so a key last written by a device whose clock runs ahead is never frozen:
//! the next local write still wins over what it supersedes.
//!
//! The clock never reads the time itself: `wall_ms` is an argument, read in one place by the
//! store (and injected by tests).

use serde::{Deserialize, Serialize};

/// How far ahead of the local wall clock (in ms) a remote stamp may be and still be adopted.
pub const MAX_DRIFT_MS: u64 = 60_000;

/// A hybrid logical clock stamp. `Ord` compares `wall_ms`, then `counter`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Hlc {
    /// Milliseconds since the Unix epoch (physical part).
    pub wall_ms: u64,
    /// Logical counter for events within the same millisecond.
    pub counter: u32,
}

impl Hlc {
    /// Builds a stamp.
    pub const fn new(wall_ms: u64, counter: u32) -> Self {
        Self { wall_ms, counter }
    }

    /// The smallest stamp strictly greater than `self`.
    pub fn next(self) -> Self {
        match self.counter.checked_add(1) {
            Some(counter) => Self {
                wall_ms: self.wall_ms,
                counter,
            },
            None => Self {
                wall_ms: self.wall_ms.saturating_add(1),
                counter: 0,
            },
        }
    }
}

impl std::fmt::Display for Hlc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.wall_ms, self.counter)
    }
}

impl std::str::FromStr for Hlc {
    type Err = String;

    /// Reads the form [`Hlc`]'s `Display` writes: `WALL_MS.COUNTER`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a stamp (WALL_MS.COUNTER, as `kv get` shows it)");
        let (wall, counter) = s.split_once('.').ok_or_else(bad)?;
        Ok(Hlc::new(
            wall.parse().map_err(|_| bad())?,
            counter.parse().map_err(|_| bad())?,
        ))
    }
}

/// The local clock: the last stamp issued or adopted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Clock {
    last: Hlc,
}

impl Clock {
    /// A clock that has issued nothing yet.
    pub const fn new() -> Self {
        Self {
            last: Hlc::new(0, 0),
        }
    }

    /// A clock that continues after `last` (e.g. the highest stamp found in the store).
    /// A `last` beyond the drift bound of `wall_ms` is not adopted, as in [`Clock::observe`].
    pub fn resume(last: Hlc, wall_ms: u64) -> Self {
        let mut clock = Self::new();
        clock.observe(last, wall_ms);
        clock
    }

    /// The last stamp issued or adopted.
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// A new local stamp, strictly greater than every stamp this clock issued or adopted.
    pub fn now(&mut self, wall_ms: u64) -> Hlc {
        self.last = if wall_ms > self.last.wall_ms {
            Hlc::new(wall_ms, 0)
        } else {
            self.last.next()
        };
        self.last
    }

    /// Takes a remote stamp into account and returns a new local stamp greater than both the
    /// previous local stamp and `remote`, unless `remote` is more than [`MAX_DRIFT_MS`] ahead
    /// of `wall_ms`: then it is ignored and this is just [`Clock::now`].
    pub fn observe(&mut self, remote: Hlc, wall_ms: u64) -> Hlc {
        if remote.wall_ms > wall_ms.saturating_add(MAX_DRIFT_MS) {
            return self.now(wall_ms);
        }
        let top = self.last.max(remote);
        self.last = if wall_ms > top.wall_ms {
            Hlc::new(wall_ms, 0)
        } else {
            top.next()
        };
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_strictly_increasing_even_if_wall_goes_back() {
        let mut c = Clock::new();
        let a = c.now(1_000);
        let b = c.now(1_000);
        let d = c.now(500);
        assert!(a < b && b < d);
        assert_eq!(d.wall_ms, 1_000);
        assert_eq!(c.now(2_000), Hlc::new(2_000, 0));
    }

    #[test]
    fn observe_adopts_remote_within_drift() {
        let mut c = Clock::new();
        c.now(1_000);
        let remote = Hlc::new(1_000 + MAX_DRIFT_MS, 7);
        let got = c.observe(remote, 1_000);
        assert!(got > remote);
        assert!(c.now(1_001) > remote);
    }

    #[test]
    fn observe_ignores_remote_beyond_drift() {
        let mut c = Clock::new();
        c.now(1_000);
        let remote = Hlc::new(1_000 + MAX_DRIFT_MS + 1, 0);
        let got = c.observe(remote, 1_000);
        assert!(got < remote, "a far-future stamp must not be adopted");
        assert_eq!(c.now(1_002), Hlc::new(1_002, 0));
    }

    #[test]
    fn next_carries_counter_overflow_into_wall() {
        assert_eq!(Hlc::new(5, u32::MAX).next(), Hlc::new(6, 0));
        assert!(Hlc::new(5, u32::MAX).next() > Hlc::new(5, u32::MAX));
    }

    #[test]
    fn resume_does_not_adopt_future() {
        let c = Clock::resume(Hlc::new(10_000_000, 0), 1_000);
        assert!(c.last() < Hlc::new(10_000_000, 0));
        let c = Clock::resume(Hlc::new(1_500, 3), 1_000);
        assert!(c.last() > Hlc::new(1_500, 3));
    }
}
