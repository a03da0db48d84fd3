//! Connections that stopped answering what this side sends.
//!
//! A link that is not watched (neither side monitors the other) carries nothing while
//! idle, and a connection on a private path has no QUIC keep-alive nor idle timeout
//! (docs/membership.md, "Idle links"). A cut between two such members is therefore found
//! when the link is used: QUIC acknowledges every ack-eliciting packet at once, so
//! packets that ask for an answer (stream data, PINGs) followed by no packet at all from
//! the peer for `limit` mean the path is gone. The driver then closes the connection,
//! the core sees the link go down, and traffic takes another path or a new dial. The
//! cost is nothing on the wire: the counters are QUIC's own.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Per connection: what was last read of its counters, and since when it has asked
/// without an answer.
#[derive(Clone, Copy, Debug)]
struct Seen {
    rx: u64,
    asked: u64,
    waiting_since: Option<Instant>,
}

/// Tracks connections (by QUIC's stable id) across the driver's wake-ups.
#[derive(Debug, Default)]
pub struct Unanswered {
    seen: HashMap<usize, Seen>,
}

impl Unanswered {
    /// Reads one wake-up's counters: `conns` yields each live connection's stable id,
    /// the datagrams it received and the ack-eliciting frames it sent. Returns the ids of
    /// those that asked and heard nothing for at least `limit`. Connections not listed
    /// are forgotten.
    pub fn observe(
        &mut self,
        conns: impl IntoIterator<Item = (usize, u64, u64)>,
        limit: Duration,
        now: Instant,
    ) -> Vec<usize> {
        let mut next = HashMap::new();
        let mut dead = Vec::new();
        for (id, rx, asked) in conns {
            let seen = match self.seen.get(&id) {
                // First sight: nothing to compare with yet.
                None => Seen {
                    rx,
                    asked,
                    waiting_since: None,
                },
                Some(old) if old.rx != rx => Seen {
                    // Heard: whatever was asked before has its answer (what was asked
                    // in the same interval gets the benefit of the doubt until the next).
                    rx,
                    asked,
                    waiting_since: None,
                },
                Some(old) if old.asked != asked => Seen {
                    rx,
                    asked,
                    waiting_since: old.waiting_since.or(Some(now)),
                },
                Some(old) => *old,
            };
            if seen
                .waiting_since
                .is_some_and(|t| now.saturating_duration_since(t) >= limit)
            {
                dead.push(id);
            }
            next.insert(id, seen);
        }
        self.seen = next;
        dead
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(3);

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn an_idle_connection_is_never_taken_for_dead() {
        let (mut u, t0) = (Unanswered::default(), Instant::now());
        for i in 0..100 {
            assert!(u.observe([(1, 5, 7)], LIMIT, at(t0, i * 500)).is_empty());
        }
    }

    #[test]
    fn asking_without_an_answer_for_the_limit_is_dead() {
        let (mut u, t0) = (Unanswered::default(), Instant::now());
        assert!(u.observe([(1, 5, 7)], LIMIT, t0).is_empty());
        // A message went out at 500 ms (and retransmissions after), nothing came back.
        assert!(u.observe([(1, 5, 8)], LIMIT, at(t0, 500)).is_empty());
        assert!(u.observe([(1, 5, 9)], LIMIT, at(t0, 2000)).is_empty());
        assert!(u.observe([(1, 5, 9)], LIMIT, at(t0, 3499)).is_empty());
        assert_eq!(u.observe([(1, 5, 10)], LIMIT, at(t0, 3500)), vec![1]);
    }

    #[test]
    fn an_answer_clears_the_wait() {
        let (mut u, t0) = (Unanswered::default(), Instant::now());
        u.observe([(1, 5, 7)], LIMIT, t0);
        u.observe([(1, 5, 8)], LIMIT, at(t0, 500));
        // The acknowledgement came (and our own ACK of its reply does not count).
        assert!(u.observe([(1, 6, 8)], LIMIT, at(t0, 1000)).is_empty());
        for i in 3..20 {
            assert!(u.observe([(1, 6, 8)], LIMIT, at(t0, i * 500)).is_empty());
        }
        // A new question starts a new wait.
        assert!(u.observe([(1, 6, 9)], LIMIT, at(t0, 10_000)).is_empty());
        assert_eq!(u.observe([(1, 6, 9)], LIMIT, at(t0, 13_000)), vec![1]);
    }

    #[test]
    fn connections_are_tracked_apart_and_forgotten_when_gone() {
        let (mut u, t0) = (Unanswered::default(), Instant::now());
        u.observe([(1, 0, 0), (2, 0, 0)], LIMIT, t0);
        u.observe([(1, 0, 1), (2, 1, 1)], LIMIT, at(t0, 500));
        assert_eq!(
            u.observe([(1, 0, 1), (2, 1, 1)], LIMIT, at(t0, 3500)),
            vec![1]
        );
        // Gone, then back under the same id with fresh counters: a fresh start.
        u.observe([(2, 1, 1)], LIMIT, at(t0, 4000));
        assert!(u.observe([(1, 0, 1)], LIMIT, at(t0, 9000)).is_empty());
    }
}
