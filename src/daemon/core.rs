//! The membership core (the `membership` crate's state machine) as the daemon holds it:
//! one lock, and the wake-up of the task that drives it (`membership.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use membership::{Config, Membership};
use tokio::sync::Notify;
use tracing::warn;
use transport::DeviceId;

/// The core and the wake-up of its driver.
pub struct Member {
    core: Mutex<Membership<DeviceId>>,
    /// Wakes the driver task: its deadline may have moved, or outputs wait.
    pub wake: Notify,
    /// A change from outside the driver left outputs in the core.
    queued: AtomicBool,
}

impl Member {
    pub fn new(me: DeviceId, cfg: Config) -> Self {
        // The incarnation grows across restarts: a restarted member refutes old news.
        let incarnation = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        Member {
            core: Mutex::new(Membership::new(me, incarnation, cfg, Instant::now())),
            wake: Notify::new(),
            queued: AtomicBool::new(false),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Membership<DeviceId>> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The member set from the roster (at start); the driver carries out the outputs.
    pub fn set_members(&self, ids: Vec<DeviceId>) {
        self.change(|c| c.set_members(ids));
    }

    /// A member joined (roster change); the driver carries out the outputs.
    pub fn add(&self, id: DeviceId) {
        self.change(|c| c.add_member(id));
    }

    /// A member was removed (roster change); the driver carries out the outputs.
    pub fn remove(&self, id: DeviceId) {
        self.change(|c| c.remove_member(id));
    }

    fn change(&self, f: impl FnOnce(&mut Membership<DeviceId>)) {
        f(&mut self.lock());
        self.queued.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Whether a change from outside the driver is waiting (and clears the flag).
    pub fn take_queued(&self) -> bool {
        self.queued.swap(false, Ordering::AcqRel)
    }

    /// The member to send through to reach `dest` (itself when direct).
    pub fn next_hop(&self, dest: &DeviceId) -> Option<DeviceId> {
        self.lock().next_hop(dest)
    }
}

/// The core's configuration from the daemon's config keys.
pub fn config(d_cfg: &crate::config::Config) -> Config {
    let probe_interval = Duration::from_millis(d_cfg.probe_interval_ms);
    let base = Config::default();
    // On battery: a beat per 20 s at least (never more often than the LAN beat), a
    // suspicion after two missed and a margin, lost ten seconds later.
    let gentle_interval = base.gentle_interval.max(probe_interval);
    let gentle_suspect_after = base
        .gentle_suspect_after
        .max(gentle_interval * 2 + Duration::from_secs(5));
    let c = Config {
        probe_interval,
        unreachable_after: Duration::from_millis(d_cfg.suspect_after_ms),
        anti_entropy_interval: Duration::from_millis(d_cfg.probe_interval_ms.max(1000)),
        gentle_interval,
        gentle_suspect_after,
        gentle_unreachable_after: gentle_suspect_after + Duration::from_secs(10),
        // The daemon carries its messages over QUIC, never as membership broadcasts: a
        // member's events would only be payloads for every other member to keep and
        // pass on.
        events: false,
        ..base
    };
    if c.validate().is_err() {
        warn!("membership timers from the config are inconsistent; using the defaults");
        return Config {
            events: false,
            ..Config::default()
        };
    }
    c
}
