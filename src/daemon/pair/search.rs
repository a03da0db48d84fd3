//! The joining device's search for a window, with no I/O and no clock: candidate
//! addresses (typed, or advertised by mDNS) and the results of tries in; addresses to dial
//! and the verdict out.
//!
//! An address is tried until it gives an answer that settles it: a refusal (a closed
//! window answers why it closed), nothing listening on its port, or, from mDNS, its device
//! no longer advertising it. A wrong code ends the search at once. When every address is
//! settled the search ends with the most telling of their errors — at once for typed
//! addresses, after [`GRACE`] for advertised ones (a window opened just now may still be
//! on its way by mDNS). Otherwise it ends at the deadline. So a code whose window has
//! closed fails in well under a second instead of waiting out the whole timeout.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::addr::Shown;
use super::error::PairError;

/// How long a search whose advertised windows all closed waits for another one.
pub const GRACE: Duration = Duration::from_secs(2);
/// Pause before an address that did not answer is tried again.
const RETRY_PAUSE: Duration = Duration::from_millis(250);
/// Addresses followed at most.
const MAX_CANDIDATES: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Typed with `--addr`.
    Given,
    /// Advertised by mDNS (TXT `pair`).
    Mdns,
}

/// What an error from one address means for the search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Try that address again.
    Retry,
    /// That address is settled.
    Address,
    /// The search is over.
    Join,
}

pub fn reach(e: &PairError) -> Reach {
    use PairError::*;
    match e {
        WrongCode | Exchange(_) | WindowUnproven => Reach::Join,
        Refused { .. } | WindowRemoved(_) | OwnWindow | WindowGone(_) | Unadvertised(_) => {
            Reach::Address
        }
        NoAnswer(_)
        | Dial(..)
        | NoCertificate
        | Connection(_)
        | Frame(_)
        | Ended
        | Unexpected { .. }
        | AttemptTimeout(_) => Reach::Retry,
        // Not errors of one address; should one come, end the search with it.
        InvalidCode | Address(_) | TooManyAddresses(_) | Busy | Listen(_) | Expired | Cancelled
        | TooManyWrongCodes | PortClosed | NotFound => Reach::Join,
    }
}

/// Which error says most about why no window was found.
fn rank(e: &PairError) -> u8 {
    match e {
        PairError::Refused { .. } | PairError::WindowRemoved(_) => 4,
        PairError::WindowGone(_) | PairError::Unadvertised(_) => 3,
        PairError::OwnWindow => 2,
        PairError::NoAnswer(_) => 0,
        _ => 1,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Due(Instant),
    Dialling,
    Settled,
}

#[derive(Debug)]
struct Candidate {
    addr: SocketAddr,
    state: State,
    advertised: bool,
    last: Option<PairError>,
}

#[derive(Debug)]
pub struct Search {
    source: Source,
    deadline: Instant,
    cands: Vec<Candidate>,
    /// When the last open candidate settled.
    settled_at: Option<Instant>,
}

impl Search {
    pub fn new(source: Source, given: &[SocketAddr], now: Instant, timeout: Duration) -> Self {
        let mut s = Search {
            source,
            deadline: now + timeout,
            cands: Vec::new(),
            settled_at: None,
        };
        s.add(given, now);
        s
    }

    fn add(&mut self, addrs: &[SocketAddr], now: Instant) {
        for &addr in addrs {
            if self.cands.len() >= MAX_CANDIDATES || self.cands.iter().any(|c| c.addr == addr) {
                continue;
            }
            self.cands.push(Candidate {
                addr,
                state: State::Due(now),
                advertised: true,
                last: None,
            });
            self.settled_at = None;
        }
    }

    /// The addresses mDNS advertises for windows now.
    pub fn advertised(&mut self, addrs: &[SocketAddr], now: Instant) {
        for c in &mut self.cands {
            let now_advertised = addrs.contains(&c.addr);
            if now_advertised && !c.advertised && matches!(c.last, Some(PairError::Unadvertised(_)))
            {
                // It came back (an mDNS record that flapped).
                c.state = State::Due(now);
                c.last = None;
            } else if !now_advertised && matches!(c.state, State::Due(_)) {
                c.state = State::Settled;
                c.last = Some(PairError::Unadvertised(Shown(c.addr)));
            }
            c.advertised = now_advertised;
        }
        self.add(addrs, now);
        self.note_settled(now);
    }

    /// Addresses to dial now.
    pub fn due(&mut self, now: Instant) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        for c in &mut self.cands {
            if matches!(c.state, State::Due(t) if t <= now) {
                c.state = State::Dialling;
                out.push(c.addr);
            }
        }
        out
    }

    /// A try of `addr` failed; `Some` ends the search with that error.
    pub fn failed(&mut self, addr: SocketAddr, e: PairError, now: Instant) -> Option<PairError> {
        let reach = reach(&e);
        if reach == Reach::Join {
            return Some(e);
        }
        let source = self.source;
        let c = self.cands.iter_mut().find(|c| c.addr == addr)?;
        let e = if reach == Reach::Retry && source == Source::Mdns && !c.advertised {
            // Its device stopped advertising it while it was being tried.
            c.state = State::Settled;
            PairError::Unadvertised(Shown(addr))
        } else {
            c.state = match reach {
                Reach::Retry => State::Due(now + RETRY_PAUSE),
                _ => State::Settled,
            };
            e
        };
        if c.last.as_ref().is_none_or(|l| rank(&e) >= rank(l)) {
            c.last = Some(e);
        }
        self.note_settled(now);
        None
    }

    fn all_settled(&self) -> bool {
        !self.cands.is_empty() && self.cands.iter().all(|c| c.state == State::Settled)
    }

    fn note_settled(&mut self, now: Instant) {
        if !self.all_settled() {
            self.settled_at = None;
        } else if self.settled_at.is_none() {
            self.settled_at = Some(now);
        }
    }

    fn settled_verdict_at(&self) -> Option<Instant> {
        let at = self.settled_at?;
        Some(match self.source {
            Source::Given => at,
            Source::Mdns => at + GRACE,
        })
    }

    /// `Some` when the search is over: the error to report.
    pub fn verdict(&mut self, now: Instant) -> Option<PairError> {
        let settled = self.settled_verdict_at().is_some_and(|t| now >= t);
        if !settled && now < self.deadline {
            return None;
        }
        let best = self
            .cands
            .iter_mut()
            .filter(|c| c.last.is_some())
            .max_by_key(|c| c.last.as_ref().map_or(0, rank))
            .and_then(|c| c.last.take());
        Some(match (best, self.cands.first()) {
            (Some(e), _) => e,
            (None, Some(c)) => PairError::NoAnswer(Shown(c.addr)),
            (None, None) => PairError::NotFound,
        })
    }

    /// When to call [`Search::due`] and [`Search::verdict`] next.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.deadline;
        for c in &self.cands {
            if let State::Due(at) = c.state {
                t = t.min(at);
            }
        }
        if let Some(at) = self.settled_verdict_at() {
            t = t.min(at);
        }
        t
    }
}

#[cfg(test)]
mod tests;
