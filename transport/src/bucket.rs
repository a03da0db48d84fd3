//! A token bucket: a burst of tokens at once, then one more per interval, never more than
//! the burst. The daemon's budgets on what members and strangers can make it do (roster
//! and relay-book merges, relay key derivations, record seal verifications) are all one.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct TokenBucket {
    burst: u32,
    interval: Duration,
    tokens: u32,
    /// The time the tokens were last counted up to; a whole interval after it, one more.
    refilled: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens, refilled one per `interval` (at least 1 µs).
    pub fn full(burst: u32, interval: Duration, now: Instant) -> Self {
        TokenBucket {
            burst,
            interval: interval.max(Duration::from_micros(1)),
            tokens: burst,
            refilled: now,
        }
    }

    /// Adds the tokens of the whole intervals since the last count. The part of an
    /// interval that has passed is kept for the next token (none is lost to rounding).
    fn refill(&mut self, now: Instant) {
        if self.tokens == self.burst {
            // Full: time spent full earns nothing.
            self.refilled = now;
            return;
        }
        let periods =
            now.saturating_duration_since(self.refilled).as_nanos() / self.interval.as_nanos();
        if periods == 0 {
            return;
        }
        let missing = self.burst - self.tokens;
        if periods > u128::from(missing) {
            // Full for a while: time spent full earns nothing.
            self.tokens = self.burst;
            self.refilled = now;
        } else {
            // At most the burst's periods, so this cannot overflow; the part of an
            // interval past them counts towards the next token.
            let periods = periods as u32;
            self.tokens += periods;
            self.refilled += self.interval * periods;
        }
    }

    /// Spends a token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }

    /// Spends a token whether or not there is one left (for work promised earlier, when
    /// its turn came): an empty bucket stays empty.
    pub fn spend(&mut self, now: Instant) {
        self.refill(now);
        self.tokens = self.tokens.saturating_sub(1);
    }

    /// How long until a token is there: zero if there is one now.
    pub fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens > 0 {
            Duration::ZERO
        } else {
            (self.refilled + self.interval).saturating_duration_since(now)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_burst_then_one_per_interval_and_never_above_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(3, 10 * MS, t0);
        assert!((0..3).all(|_| b.try_take(t0)));
        assert!(!b.try_take(t0));
        assert_eq!(b.wait(t0), 10 * MS);
        assert_eq!(b.wait(t0 + 4 * MS), 6 * MS);
        assert!(!b.try_take(t0 + 9 * MS));
        assert!(b.try_take(t0 + 10 * MS));
        assert!(!b.try_take(t0 + 10 * MS));
        // A token taken just before the next would have come: the time the bucket spent
        // full does not count towards it.
        let mut f = TokenBucket::full(2, 10 * MS, t0);
        assert!(f.try_take(t0 + 9 * MS));
        assert!(f.try_take(t0 + 10 * MS));
        assert!(!f.try_take(t0 + 10 * MS), "a token earned while full");
        assert!(f.try_take(t0 + 19 * MS));
        // A long quiet while gives back the burst, not more.
        let later = t0 + Duration::from_secs(3600);
        assert!((0..3).all(|_| b.try_take(later)));
        assert!(!b.try_take(later));
    }

    #[test]
    fn parts_of_an_interval_add_up_instead_of_being_lost() {
        // 64 a second is 15.625 ms each: counting every 10 ms must still give 64 in 1 s.
        let t0 = Instant::now();
        let interval = Duration::from_secs(1) / 64;
        let mut b = TokenBucket::full(1, interval, t0);
        assert!(b.try_take(t0));
        let taken = (1..=100).filter(|i| b.try_take(t0 + 10 * MS * *i)).count();
        assert_eq!(taken, 64);
    }

    #[test]
    fn spending_from_an_empty_bucket_keeps_it_empty() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(1, 10 * MS, t0);
        b.spend(t0);
        b.spend(t0);
        assert!(!b.try_take(t0));
        assert!(b.try_take(t0 + 10 * MS));
    }
}
