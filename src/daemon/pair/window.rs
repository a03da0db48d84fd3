//! The life of a pairing window, with no I/O and no clock: attempts and `now` in; reports
//! for the window's client, its outcome and when to stop listening out.
//!
//! A window is open until a device pairs, `MAX_FAILURES` wrong codes, its lifetime ends
//! or it is cancelled. It then stays *closed* for `linger`: its port still answers, with
//! a `Fail` saying why the window closed, so a device that comes late (or found the window
//! in an mDNS cache) learns at once that the code is spent instead of waiting for an
//! answer that will never come. Then it is *gone*.

use std::time::{Duration, Instant};

use serde::Serialize;
use transport::DeviceId;

use super::addr::Shown;
use super::error::{PairError, MAX_FAILURES};
use super::handshake::Refusal;

/// Default lifetime of a pairing window.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(120);
/// How long a closed window's port keeps answering why it closed.
pub const LINGER: Duration = Duration::from_secs(60);

/// A completed pairing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Paired {
    pub id: String,
    pub name: String,
    /// This device's new name in the mesh, when its own was taken by another member.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub self_name: Option<String>,
}

/// Why a window closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    Paired,
    WrongCodes,
    Expired,
    Cancelled,
}

impl Closed {
    /// What a device trying the window after it closed is told (a `Fail` reason).
    pub fn reason(self) -> String {
        let why = match self {
            Closed::Paired => "the pairing window was already used by another device",
            Closed::WrongCodes => "the pairing window closed after 3 wrong codes",
            Closed::Expired => "the pairing window expired",
            Closed::Cancelled => "the pairing window was closed on that device",
        };
        debug_assert_eq!(MAX_FAILURES, 3, "the text above says 3");
        format!("{why}; run `cnspr pair` there again for a new code")
    }
}

/// A device that tried the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    pub id: DeviceId,
    /// The name it gave (cleaned).
    pub name: String,
    pub addr: Shown,
}

/// How one attempt ended.
#[derive(Debug)]
pub enum Attempt {
    Paired(Paired),
    WrongCode(Who),
    Refused(Who, Refusal),
    /// Broke off before the code was tried (network, timeout, malformed messages).
    Abandoned,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptResult {
    WrongCode,
    Refused,
}

/// An attempt that failed, for the window's client (`{"attempt": ...}` on the socket).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttemptReport {
    pub result: AttemptResult,
    /// The device that tried.
    pub id: String,
    pub name: String,
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Wrong codes so far.
    pub failures: u32,
    /// Wrong codes left before the window closes.
    pub left: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Attempts are served.
    Open,
    /// Each connection is told why the window closed.
    Closed(Closed),
    /// Stop listening.
    Gone,
}

#[derive(Debug)]
pub enum WindowOutput {
    /// Tell the window's client.
    Report(AttemptReport),
    /// The window's outcome (exactly once).
    Outcome(Result<Paired, PairError>),
}

#[derive(Debug)]
pub struct WindowState {
    deadline: Instant,
    linger: Duration,
    failures: u32,
    phase: Phase,
    gone_at: Option<Instant>,
}

impl WindowState {
    pub fn new(now: Instant, lifetime: Duration, linger: Duration) -> Self {
        WindowState {
            deadline: now + lifetime,
            linger,
            failures: 0,
            phase: Phase::Open,
            gone_at: None,
        }
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// When [`WindowState::handle_timeout`] is due (`None`: gone).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Open => Some(self.deadline),
            Phase::Closed(_) => self.gone_at,
            Phase::Gone => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Vec<WindowOutput> {
        match self.phase {
            Phase::Open if now >= self.deadline => {
                self.close(Closed::Expired, Err(PairError::Expired), now)
            }
            Phase::Closed(_) if self.gone_at.is_some_and(|t| now >= t) => {
                self.phase = Phase::Gone;
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// The window's client went away or asked to close it.
    pub fn cancel(&mut self, now: Instant) -> Vec<WindowOutput> {
        match self.phase {
            Phase::Open => self.close(Closed::Cancelled, Err(PairError::Cancelled), now),
            _ => Vec::new(),
        }
    }

    /// The listening port failed: nothing more can be served.
    pub fn port_closed(&mut self) -> Vec<WindowOutput> {
        let out = match self.phase {
            Phase::Open => vec![WindowOutput::Outcome(Err(PairError::PortClosed))],
            _ => Vec::new(),
        };
        self.phase = Phase::Gone;
        out
    }

    /// An attempt accepted while the window was open ended.
    pub fn handle_attempt(&mut self, attempt: Attempt, now: Instant) -> Vec<WindowOutput> {
        if self.phase != Phase::Open {
            return Vec::new();
        }
        match attempt {
            Attempt::Paired(p) => self.close(Closed::Paired, Ok(p), now),
            Attempt::WrongCode(who) => {
                self.failures += 1;
                let report = self.report(AttemptResult::WrongCode, who, None);
                let mut out = vec![WindowOutput::Report(report)];
                if self.failures >= MAX_FAILURES {
                    out.extend(self.close(
                        Closed::WrongCodes,
                        Err(PairError::TooManyWrongCodes),
                        now,
                    ));
                }
                out
            }
            Attempt::Refused(who, why) => {
                let report = self.report(AttemptResult::Refused, who, Some(why.to_string()));
                vec![WindowOutput::Report(report)]
            }
            Attempt::Abandoned => Vec::new(),
        }
    }

    fn report(&self, result: AttemptResult, who: Who, reason: Option<String>) -> AttemptReport {
        AttemptReport {
            result,
            id: who.id.to_string(),
            name: who.name,
            address: who.addr.to_string(),
            reason,
            failures: self.failures,
            left: MAX_FAILURES.saturating_sub(self.failures),
        }
    }

    fn close(
        &mut self,
        why: Closed,
        outcome: Result<Paired, PairError>,
        now: Instant,
    ) -> Vec<WindowOutput> {
        if self.linger.is_zero() {
            self.phase = Phase::Gone;
        } else {
            self.phase = Phase::Closed(why);
            self.gone_at = Some(now + self.linger);
        }
        vec![WindowOutput::Outcome(outcome)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(n: u8) -> Who {
        Who {
            id: DeviceId([n; 32]),
            name: format!("dev{n}"),
            addr: Shown(format!("10.0.0.{n}:4000").parse().unwrap()),
        }
    }

    fn reports(out: &[WindowOutput]) -> Vec<(AttemptResult, u32, u32)> {
        out.iter()
            .filter_map(|o| match o {
                WindowOutput::Report(r) => Some((r.result, r.failures, r.left)),
                _ => None,
            })
            .collect()
    }

    fn outcome(out: Vec<WindowOutput>) -> Option<Result<Paired, PairError>> {
        out.into_iter().find_map(|o| match o {
            WindowOutput::Outcome(r) => Some(r),
            _ => None,
        })
    }

    #[test]
    fn each_wrong_code_is_reported_and_the_third_closes_the_window() {
        let t0 = Instant::now();
        let mut w = WindowState::new(t0, DEFAULT_WINDOW, LINGER);
        let out = w.handle_attempt(Attempt::WrongCode(who(1)), t0);
        assert_eq!(reports(&out), vec![(AttemptResult::WrongCode, 1, 2)]);
        match &out[0] {
            WindowOutput::Report(r) => {
                assert_eq!(r.name, "dev1");
                assert_eq!(r.address, "10.0.0.1:4000");
                assert_eq!(r.id, DeviceId([1; 32]).to_string());
            }
            other => panic!("{other:?}"),
        }
        assert!(outcome(out).is_none());
        // Refusals are reported and do not count.
        let out = w.handle_attempt(Attempt::Refused(who(2), Refusal::Removed), t0);
        assert_eq!(reports(&out), vec![(AttemptResult::Refused, 1, 2)]);
        let out = w.handle_attempt(Attempt::Abandoned, t0);
        assert!(out.is_empty());
        let out = w.handle_attempt(Attempt::WrongCode(who(3)), t0);
        assert_eq!(reports(&out), vec![(AttemptResult::WrongCode, 2, 1)]);
        assert_eq!(w.phase(), &Phase::Open);
        let out = w.handle_attempt(Attempt::WrongCode(who(3)), t0);
        assert_eq!(reports(&out), vec![(AttemptResult::WrongCode, 3, 0)]);
        // The report comes before the outcome.
        assert!(matches!(out[0], WindowOutput::Report(_)));
        assert!(matches!(
            outcome(out),
            Some(Err(PairError::TooManyWrongCodes))
        ));
        assert_eq!(w.phase(), &Phase::Closed(Closed::WrongCodes));
        assert!(Closed::WrongCodes
            .reason()
            .starts_with("the pairing window closed after 3 wrong codes"));
        // Nothing counts any more; the port answers for LINGER, then the window is gone.
        assert!(w.handle_attempt(Attempt::WrongCode(who(4)), t0).is_empty());
        assert_eq!(w.poll_timeout(), Some(t0 + LINGER));
        assert!(w.handle_timeout(t0 + LINGER / 2).is_empty());
        assert_eq!(w.phase(), &Phase::Closed(Closed::WrongCodes));
        w.handle_timeout(t0 + LINGER);
        assert_eq!(w.phase(), &Phase::Gone);
        assert_eq!(w.poll_timeout(), None);
    }

    #[test]
    fn a_window_expires_once_and_is_cancelled_once() {
        let t0 = Instant::now();
        let life = Duration::from_secs(5);
        let mut w = WindowState::new(t0, life, LINGER);
        assert_eq!(w.poll_timeout(), Some(t0 + life));
        assert!(w.handle_timeout(t0 + life / 2).is_empty());
        let out = w.handle_timeout(t0 + life);
        assert!(matches!(outcome(out), Some(Err(PairError::Expired))));
        assert_eq!(w.phase(), &Phase::Closed(Closed::Expired));
        assert!(w.cancel(t0 + life).is_empty());

        let mut w = WindowState::new(t0, life, LINGER);
        assert!(matches!(
            outcome(w.cancel(t0)),
            Some(Err(PairError::Cancelled))
        ));
        assert!(w.handle_timeout(t0 + life).is_empty());
        assert_eq!(w.phase(), &Phase::Closed(Closed::Cancelled));
    }

    #[test]
    fn a_pairing_closes_the_window_and_an_attempt_that_ran_late_still_counts() {
        let t0 = Instant::now();
        let life = Duration::from_secs(5);
        let mut w = WindowState::new(t0, life, Duration::ZERO);
        let p = Paired {
            id: "X".into(),
            name: "dev".into(),
            self_name: None,
        };
        // Accepted while open, finished after the deadline: the pairing stands.
        let out = w.handle_attempt(Attempt::Paired(p.clone()), t0 + life * 2);
        assert_eq!(outcome(out).unwrap().unwrap(), p);
        // No linger: gone at once.
        assert_eq!(w.phase(), &Phase::Gone);
        assert!(w.handle_timeout(t0 + life * 2).is_empty());
    }

    #[test]
    fn a_failed_port_ends_an_open_window_with_an_outcome() {
        let t0 = Instant::now();
        let mut w = WindowState::new(t0, DEFAULT_WINDOW, LINGER);
        assert!(matches!(
            outcome(w.port_closed()),
            Some(Err(PairError::PortClosed))
        ));
        assert_eq!(w.phase(), &Phase::Gone);
        let mut w = WindowState::new(t0, DEFAULT_WINDOW, LINGER);
        w.cancel(t0);
        assert!(w.port_closed().is_empty());
    }
}
