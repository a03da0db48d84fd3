//! What the simulator's tests and benchmarks ask of a run: who sees whom in which state
//! since when, and where each broadcast arrived.

use std::collections::BTreeMap;
use std::time::Duration;

use super::state::{Sim, Transition};
use crate::message::EventId;
use crate::types::State;

impl Sim {
    /// Whether a split into `left` and `right` is seen on both sides: each side shows the
    /// other `unreachable` and its own members `active`.
    pub fn split_seen(&self, left: &[u32], right: &[u32]) -> bool {
        let across = |a: &[u32], b: &[u32]| {
            a.iter().all(|&o| {
                b.iter()
                    .all(|&p| self.state(o, p) == Some(State::Unreachable))
            })
        };
        let within = |a: &[u32]| {
            a.iter().all(|&o| {
                a.iter()
                    .all(|&p| o == p || self.state(o, p) == Some(State::Active))
            })
        };
        across(left, right) && across(right, left) && within(left) && within(right)
    }

    /// Runs until `id` has just sent its beats (it sends them all in one wake-up), at
    /// most a second.
    pub fn run_until_sends(&mut self, id: u32) {
        let sent = self.stats.sent[id as usize].0;
        for _ in 0..1000 {
            self.run_for(Duration::from_millis(1));
            if self.stats.sent[id as usize].0 != sent {
                return;
            }
        }
        panic!("{id} sends nothing");
    }

    /// Live members other than `peer`.
    pub fn observers_of(&self, peer: u32) -> Vec<u32> {
        (0..self.len())
            .filter(|o| *o != peer && self.is_alive(*o))
            .collect()
    }

    /// If every live member (but `peer`) now shows `peer` in `state`: the time since
    /// `since` at which the last of them got there.
    pub fn all_see(&self, peer: u32, state: State, since: Duration) -> Option<Duration> {
        let mut latest = Duration::ZERO;
        for o in self.observers_of(peer) {
            if self.state(o, peer) != Some(state) {
                return None;
            }
            let t = self
                .log
                .iter()
                .rev()
                .find(|t| t.observer == o && t.peer == peer)
                .map_or(Duration::ZERO, |t| t.at);
            latest = latest.max(t.saturating_sub(since));
        }
        Some(latest)
    }

    /// Transitions after `since` matching `f`.
    pub fn transitions_since(
        &self,
        since: Duration,
        f: impl Fn(&Transition) -> bool,
    ) -> Vec<Transition> {
        self.log
            .iter()
            .filter(|t| t.at >= since && f(t))
            .cloned()
            .collect()
    }

    /// True when every live member shows every other live member `active`.
    pub fn all_active(&self) -> bool {
        let alive: Vec<u32> = (0..self.len()).filter(|i| self.is_alive(*i)).collect();
        alive.iter().all(|&o| {
            alive
                .iter()
                .all(|&p| o == p || self.state(o, p) == Some(State::Active))
        })
    }

    /// Deliveries of `id`, per receiving node.
    pub fn delivered(&self, id: EventId<u32>) -> BTreeMap<u32, usize> {
        let mut m = BTreeMap::new();
        for (_, n, e) in &self.deliveries {
            if *e == id {
                *m.entry(*n).or_default() += 1;
            }
        }
        m
    }

    /// Time from the broadcast until the last live member delivered it.
    pub fn broadcast_latency(&self, id: EventId<u32>) -> Option<Duration> {
        let start = *self.broadcasts.get(&id)?;
        let mut last = Duration::ZERO;
        let mut nodes = 0;
        for (t, _, e) in &self.deliveries {
            if *e == id {
                last = last.max(*t - start);
                nodes += 1;
            }
        }
        let expected = (0..self.len())
            .filter(|n| *n != id.origin && self.is_alive(*n))
            .count();
        (nodes >= expected).then_some(last)
    }
}

/// The `p`-quantile (0..=1) of `v`.
pub fn quantile(v: &[Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    let mut s = v.to_vec();
    s.sort();
    let i = ((s.len() - 1) as f64 * p).round() as usize;
    s[i]
}
