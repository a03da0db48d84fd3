//! When to dial a disconnected peer: the schedule and its exponential backoff, as a pure
//! type (the time is passed in). The link supervisor (`links.rs`) asks [`Dial::start`]
//! at every tick and does the dialling; everything that learns of a peer (an address, a
//! trust, a pairing, a lost connection) moves its schedule here.

use std::time::{Duration, Instant};

/// The first wait after a failed dial (and after a lost connection); it doubles with
/// every failure up to the configured maximum.
pub const MIN_BACKOFF: Duration = Duration::from_millis(250);

/// One peer's dial schedule.
#[derive(Debug, Clone)]
pub struct Dial {
    next: Instant,
    backoff: Duration,
    dialing: bool,
}

impl Dial {
    /// Due at once, no failures yet.
    pub fn new(now: Instant) -> Self {
        Dial {
            next: now,
            backoff: Duration::ZERO,
            dialing: false,
        }
    }

    /// Dial at once and forget past failures (a trust, a pairing, the device seen on
    /// the LAN).
    pub fn reset(&mut self, now: Instant) {
        self.next = now;
        self.backoff = Duration::ZERO;
    }

    /// Dial at once, keeping the backoff (a new address to try).
    pub fn soon(&mut self, now: Instant) {
        self.next = now;
    }

    /// A connection is up: the next loss starts from the shortest wait.
    pub fn connected(&mut self) {
        self.backoff = Duration::ZERO;
    }

    /// The connection was lost: try again after the shortest wait.
    pub fn lost(&mut self, now: Instant) {
        self.backoff = MIN_BACKOFF;
        self.next = now + MIN_BACKOFF;
    }

    /// Whether a dial should start now; if so it counts as running until
    /// [`Dial::finished`] or [`Dial::failed`].
    pub fn start(&mut self, now: Instant) -> bool {
        if self.dialing || self.next > now {
            return false;
        }
        self.dialing = true;
        true
    }

    /// Whether a dial is running (started and neither finished nor failed).
    pub fn dialing(&self) -> bool {
        self.dialing
    }

    /// The dial succeeded (the connection's own event says so too).
    pub fn finished(&mut self) {
        self.dialing = false;
    }

    /// The dial failed: wait twice as long as last time (at least [`MIN_BACKOFF`], at
    /// most `max`).
    pub fn failed(&mut self, now: Instant, max: Duration) {
        self.dialing = false;
        self.backoff = (self.backoff * 2).clamp(MIN_BACKOFF, max.max(MIN_BACKOFF));
        self.next = now + self.backoff;
    }

    /// The current wait after a failure.
    pub fn backoff(&self) -> Duration {
        self.backoff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(30);

    #[test]
    fn failures_back_off_exponentially_up_to_the_maximum() {
        let t0 = Instant::now();
        let mut d = Dial::new(t0);
        assert!(d.start(t0));
        assert!(!d.start(t0), "a running dial is not started twice");
        d.failed(t0, MAX);
        assert_eq!(d.backoff(), MIN_BACKOFF);
        assert!(!d.start(t0 + MIN_BACKOFF / 2));
        let mut now = t0 + MIN_BACKOFF;
        let mut waits = Vec::new();
        for _ in 0..10 {
            assert!(d.start(now));
            d.failed(now, MAX);
            waits.push(d.backoff());
            now += d.backoff();
        }
        assert_eq!(waits[0], MIN_BACKOFF * 2);
        assert_eq!(waits[1], MIN_BACKOFF * 4);
        assert_eq!(*waits.last().unwrap(), MAX);
        assert!(waits.windows(2).all(|w| w[1] >= w[0]));
    }

    #[test]
    fn news_brings_the_dial_forward() {
        let t0 = Instant::now();
        let mut d = Dial::new(t0);
        assert!(d.start(t0));
        for _ in 0..5 {
            d.failed(t0, MAX);
            assert!(d.start(t0 + d.backoff()));
        }
        d.failed(t0, MAX);
        let long = d.backoff();
        // A new address: due now, the backoff stays for the next failure.
        d.soon(t0);
        assert!(d.start(t0));
        d.failed(t0, MAX);
        assert_eq!(d.backoff(), (long * 2).min(MAX));
        // A trust or pairing: due now, failures forgotten.
        d.reset(t0);
        assert!(d.start(t0));
        d.failed(t0, MAX);
        assert_eq!(d.backoff(), MIN_BACKOFF);
    }

    #[test]
    fn a_lost_connection_waits_the_shortest_time() {
        let t0 = Instant::now();
        let mut d = Dial::new(t0);
        assert!(d.start(t0));
        d.finished();
        d.connected();
        d.lost(t0);
        assert!(!d.start(t0));
        assert!(d.start(t0 + MIN_BACKOFF));
        d.failed(t0 + MIN_BACKOFF, MAX);
        assert_eq!(d.backoff(), MIN_BACKOFF * 2);
    }
}
