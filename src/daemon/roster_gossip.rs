//! The roster gossip policy, pure: when a member's roster arrives and the merge changed
//! this device's roster, it floods its whole roster to every connected member but the
//! sender (see `Daemon::membership_changed`), and it answers the sender with its own
//! roster when the sender lacks something of it, once per distinct roster and connection
//! (the fingerprint of the last answer is kept per connection by the outbox). Two members
//! that hold the same entries therefore stop after one exchange, whatever the order in
//! which gossip arrives.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use transport::{DeviceId, TokenBucket};

use super::roster::RosterSnapshot;

/// Whether (and with which fingerprint) to answer member `them`, whose roster `theirs`
/// just arrived, given `ours` after the merge and the fingerprint of the last answer on
/// this connection.
pub fn answer(
    theirs: &RosterSnapshot,
    ours: &RosterSnapshot,
    them: DeviceId,
    last_answer: Option<u64>,
) -> Option<u64> {
    if !lacks(theirs, ours, them) {
        return None;
    }
    let print = fingerprint(ours);
    (last_answer != Some(print)).then_some(print)
}

/// `theirs` (the roster of member `them`) misses an entry or removal of `ours` (compared
/// by ID, version and signer). Entries about `them` do not count: no member keeps one
/// about itself.
pub fn lacks(theirs: &RosterSnapshot, ours: &RosterSnapshot, them: DeviceId) -> bool {
    let m: HashSet<_> = theirs
        .members
        .iter()
        .map(|e| (e.id, e.version, e.signer))
        .collect();
    let r: HashSet<_> = theirs
        .removals
        .iter()
        .map(|e| (e.id, e.version, e.signer))
        .collect();
    ours.members
        .iter()
        .any(|e| e.id != them && !m.contains(&(e.id, e.version, e.signer)))
        || ours
            .removals
            .iter()
            .any(|e| e.id != them && !r.contains(&(e.id, e.version, e.signer)))
}

/// Order-independent fingerprint of a roster's entries and removals.
pub fn fingerprint(snap: &RosterSnapshot) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut m: Vec<_> = snap
        .members
        .iter()
        .map(|e| (e.id, e.version, e.signer))
        .collect();
    m.sort();
    let mut r: Vec<_> = snap
        .removals
        .iter()
        .map(|e| (e.id, e.version, e.signer))
        .collect();
    r.sort();
    m.hash(&mut h);
    r.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::roster::MemberEntry;
    use transport::Identity;

    fn snap(members: Vec<MemberEntry>) -> RosterSnapshot {
        RosterSnapshot {
            members,
            removals: vec![],
        }
    }

    #[test]
    fn a_member_never_lacks_an_entry_about_itself() {
        let (a, b, c) = (
            Identity::generate("a").unwrap(),
            Identity::generate("b").unwrap(),
            Identity::generate("c").unwrap(),
        );
        // A and B trust each other: each holds only an entry about the other.
        let ours = snap(vec![MemberEntry::sign(&a, b.id, "b", 1)]);
        let theirs = snap(vec![MemberEntry::sign(&b, a.id, "a", 1)]);
        assert!(!lacks(&theirs, &ours, b.id));
        assert!(!lacks(&ours, &theirs, a.id));
        // A also knows C: B lacks that, until it holds the same entry.
        let ours = snap(vec![
            MemberEntry::sign(&a, b.id, "b", 1),
            MemberEntry::sign(&a, c.id, "c", 2),
        ]);
        assert!(lacks(&theirs, &ours, b.id));
        let theirs = snap(vec![
            MemberEntry::sign(&b, a.id, "a", 1),
            MemberEntry::sign(&a, c.id, "c", 2),
        ]);
        assert!(!lacks(&theirs, &ours, b.id));
        // Same entries in another order: same fingerprint.
        let mut rev = ours.clone();
        rev.members.reverse();
        assert_eq!(fingerprint(&rev), fingerprint(&ours));
        assert_ne!(fingerprint(&theirs), fingerprint(&ours));
    }

    #[test]
    fn an_answer_goes_once_per_distinct_roster() {
        let (a, b, c) = (
            Identity::generate("a").unwrap(),
            Identity::generate("b").unwrap(),
            Identity::generate("c").unwrap(),
        );
        let theirs = snap(vec![MemberEntry::sign(&b, a.id, "a", 1)]);
        let ours = snap(vec![
            MemberEntry::sign(&a, b.id, "b", 1),
            MemberEntry::sign(&a, c.id, "c", 2),
        ]);
        // They lack C: answer, unless this very roster was the last answer.
        let first = answer(&theirs, &ours, b.id, None).expect("an answer");
        assert_eq!(first, fingerprint(&ours));
        assert_eq!(answer(&theirs, &ours, b.id, Some(first)), None);
        // Our roster changed since: answer again.
        let ours2 = snap(vec![
            MemberEntry::sign(&a, b.id, "b", 1),
            MemberEntry::sign(&a, c.id, "c", 3),
        ]);
        assert!(answer(&theirs, &ours2, b.id, Some(first)).is_some());
        // They lack nothing: no answer at all.
        assert_eq!(answer(&ours, &ours, b.id, None), None);
    }
}

/// Roster frames of one member merged at once in a burst (a connection's greeting, an
/// answer, a change), then one per [`ROSTER_INTERVAL`]: a member that sends faster has
/// its latest frame merged when its turn comes (none is lost, the ones in between are
/// superseded by it).
pub const ROSTER_BURST: u32 = 4;
pub const ROSTER_INTERVAL: Duration = Duration::from_millis(250);

/// What to do with a frame ([`Gate::admit`]).
#[derive(Debug)]
pub enum Admit<T> {
    /// Merge it now.
    Now(T),
    /// Kept as this member's pending frame: merge what is pending after this long.
    Later(Duration),
    /// Kept as this member's pending frame; a merge is already due.
    Queued,
}

struct GateState<T> {
    /// Merges allowed.
    merges: TokenBucket,
    pending: Option<T>,
}

/// Per member, a burst of merges, then one per interval, of frames of a kind in which a
/// member's later frame supersedes its earlier ones (its whole roster, its whole relay
/// book): what comes faster waits, and only the latest is kept.
pub struct Gate<T> {
    burst: u32,
    interval: Duration,
    state: Mutex<HashMap<DeviceId, GateState<T>>>,
}

/// Roster frames: a burst of [`ROSTER_BURST`], then one per [`ROSTER_INTERVAL`].
pub type RosterGate = Gate<RosterSnapshot>;

impl Default for RosterGate {
    fn default() -> Self {
        Gate::new(ROSTER_BURST, ROSTER_INTERVAL)
    }
}

impl<T> Gate<T> {
    /// `burst` merges at once, then one per `interval` (not zero).
    pub fn new(burst: u32, interval: Duration) -> Self {
        Gate {
            burst,
            interval: interval.max(Duration::from_millis(1)),
            state: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, GateState<T>>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A frame from `from` at `now`.
    pub fn admit(&self, from: DeviceId, frame: T, now: Instant) -> Admit<T> {
        let mut all = self.lock();
        // One entry per member that sends such frames (only members' mesh streams get
        // here).
        if all.len() > 4096 && !all.contains_key(&from) {
            all.clear();
        }
        let g = all.entry(from).or_insert_with(|| GateState {
            merges: TokenBucket::full(self.burst, self.interval, now),
            pending: None,
        });
        if g.pending.is_none() && g.merges.try_take(now) {
            return Admit::Now(frame);
        }
        if g.pending.replace(frame).is_some() {
            Admit::Queued
        } else {
            // When the next merge is allowed.
            Admit::Later(g.merges.wait(now))
        }
    }

    /// The pending frame of `from`, now its turn has come.
    pub fn take_pending(&self, from: &DeviceId, now: Instant) -> Option<T> {
        let mut all = self.lock();
        let g = all.get_mut(from)?;
        let frame = g.pending.take()?;
        g.merges.spend(now);
        Some(frame)
    }
}

#[cfg(test)]
mod gate_tests {
    use super::*;

    fn snap(n: usize) -> RosterSnapshot {
        RosterSnapshot {
            members: Vec::with_capacity(n),
            removals: Vec::new(),
        }
    }

    #[test]
    fn a_burst_goes_through_then_a_flood_is_merged_once_per_interval() {
        let g = RosterGate::default();
        let p = DeviceId([1; 32]);
        let t0 = Instant::now();
        for _ in 0..ROSTER_BURST {
            assert!(matches!(g.admit(p, snap(0), t0), Admit::Now(_)));
        }
        assert!(matches!(g.admit(p, snap(1), t0), Admit::Later(d) if d == ROSTER_INTERVAL));
        for _ in 0..1000 {
            assert!(matches!(g.admit(p, snap(2), t0), Admit::Queued));
        }
        // Another member is not held back.
        assert!(matches!(
            g.admit(DeviceId([2; 32]), snap(0), t0),
            Admit::Now(_)
        ));
        let later = t0 + ROSTER_INTERVAL;
        assert!(g.take_pending(&p, later).is_some());
        assert!(
            g.take_pending(&p, later).is_none(),
            "the pending frame is merged once"
        );
        assert!(matches!(g.admit(p, snap(0), later), Admit::Later(_)));
        assert!(g.take_pending(&p, later + ROSTER_INTERVAL).is_some());
        // After a quiet while the burst is there again.
        let quiet = later + ROSTER_INTERVAL * 10;
        for _ in 0..ROSTER_BURST {
            assert!(matches!(g.admit(p, snap(0), quiet), Admit::Now(_)));
        }
    }
}
