//! The state of `cnspr wake` (`wake.rs`): wake requests this device sent to members and
//! waits on, and the magic packets it sent lately per sleeping device (the rate limit).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use transport::DeviceId;

use super::wire::WakeMsg;

/// Most wake requests waiting on members' answers at once.
pub const MAX_PENDING: usize = 64;
/// Most times this device sends magic packets for one device per [`WINDOW`].
pub const PER_WINDOW: usize = 4;
pub const WINDOW: Duration = Duration::from_secs(60);
/// Most sleeping devices tracked by the rate limit.
const MAX_TARGETS: usize = 1024;

type Waiter = (DeviceId, oneshot::Sender<WakeMsg>);

#[derive(Default)]
pub struct Wakes {
    /// By request ID: the member asked, and who waits on its answer.
    pending: Mutex<HashMap<u64, Waiter>>,
    /// Per sleeping device: when magic packets were sent for it, oldest first.
    sent: Mutex<HashMap<DeviceId, VecDeque<Instant>>>,
}

impl Wakes {
    /// A new request to `member`: its ID and the receiver of the answer; `None` when
    /// [`MAX_PENDING`] requests already wait.
    pub fn expect(&self, member: DeviceId) -> Option<(u64, oneshot::Receiver<WakeMsg>)> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() >= MAX_PENDING {
            return None;
        }
        let id = loop {
            let id: u64 = rand::random();
            if !pending.contains_key(&id) {
                break id;
            }
        };
        let (tx, rx) = oneshot::channel();
        pending.insert(id, (member, tx));
        Some((id, rx))
    }

    /// An answer from `from`: handed to the waiting request if it is the member that
    /// was asked; anything else is dropped.
    pub fn answered(&self, from: DeviceId, id: u64, msg: WakeMsg) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.get(&id).is_some_and(|(m, _)| *m == from) {
            if let Some((_, tx)) = pending.remove(&id) {
                let _ = tx.send(msg);
            }
        }
    }

    /// The request `id` gave up waiting.
    pub fn forget(&self, id: u64) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Counts one send for `target` if fewer than [`PER_WINDOW`] were sent in the last
    /// [`WINDOW`]; else how long until the next is allowed.
    pub fn allow(&self, target: DeviceId, now: Instant) -> Result<(), Duration> {
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        sent.retain(|_, times| {
            while times
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
            {
                times.pop_front();
            }
            !times.is_empty()
        });
        if sent.len() >= MAX_TARGETS && !sent.contains_key(&target) {
            return Err(WINDOW);
        }
        let times = sent.entry(target).or_default();
        if times.len() >= PER_WINDOW {
            let oldest = times.front().copied().unwrap_or(now);
            return Err(WINDOW.saturating_sub(now.saturating_duration_since(oldest)));
        }
        times.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_four_sends_per_minute_and_device() {
        let w = Wakes::default();
        let (a, b) = (DeviceId([1; 32]), DeviceId([2; 32]));
        let t0 = Instant::now();
        for _ in 0..PER_WINDOW {
            assert!(w.allow(a, t0).is_ok());
        }
        let wait = w.allow(a, t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
        // Another device has its own allowance.
        assert!(w.allow(b, t0).is_ok());
        // A minute later, the allowance is back.
        for _ in 0..PER_WINDOW {
            assert!(w.allow(a, t0 + WINDOW).is_ok());
        }
        assert!(w.allow(a, t0 + WINDOW).is_err());
    }

    #[test]
    fn answers_only_from_the_member_asked_and_pending_is_bounded() {
        let w = Wakes::default();
        let (m, other) = (DeviceId([1; 32]), DeviceId([2; 32]));
        let (id, mut rx) = w.expect(m).unwrap();
        let msg = WakeMsg::Sent {
            id,
            sent: Vec::new(),
        };
        w.answered(other, id, msg.clone());
        assert!(rx.try_recv().is_err());
        w.answered(m, id, msg.clone());
        assert_eq!(rx.try_recv().unwrap(), msg);
        let held: Vec<_> = (0..MAX_PENDING).map(|_| w.expect(m).unwrap()).collect();
        assert!(w.expect(m).is_none());
        w.forget(held[0].0);
        assert!(w.expect(m).is_some());
    }
}
