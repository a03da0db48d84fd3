//! The sync component's state, owned by the daemon: the vector each member last reported
//! (for tombstone collection and the retirement of origins) and the session served for
//! each peer. No I/O: the tasks in `serve` and `collect` read and feed it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, Semaphore};
use tokio::task::AbortHandle;
use transport::DeviceId;

use crate::store::{Device, VersionVector};

/// Sync state shared by the sessions and the collector.
#[derive(Debug, Default)]
pub struct SyncState {
    /// Last vector each member reported, and whether it changed since it was persisted.
    reported: Mutex<HashMap<Device, (VersionVector, bool)>>,
    /// Server sessions by peer: a new session from the same peer ends the old one.
    served: Mutex<HashMap<DeviceId, (u64, AbortHandle)>>,
    /// Store reads for each peer's served sessions: [`READS_PER_PEER`] at a time, held
    /// until a read really ends (an ended session's read runs on, see `io::blocking_held`).
    reads: Mutex<HashMap<DeviceId, Arc<Semaphore>>>,
    /// Wakes the collector when a report arrived.
    reports: Notify,
}

/// What one collection round does, decided from the reports.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Collection {
    /// Reports to persist (`Some`) or forget (`None`: no longer a member).
    pub persist: Vec<(Device, Option<VersionVector>)>,
    /// Every member's last report, or `None` while some member has not reported yet.
    pub members: Option<Vec<VersionVector>>,
}

/// Store reads at a time for the sessions served to one peer (a session reads one at a
/// time; a new session waits for the read of the one it replaced).
pub const READS_PER_PEER: usize = 1;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SyncState {
    /// Takes the reports persisted before a restart (they count as persisted).
    pub fn restore(&self, saved: Vec<(Device, VersionVector)>) {
        let mut map = lock(&self.reported);
        for (member, vv) in saved {
            map.insert(member, (vv, false));
        }
    }

    /// Records a (checked) vector `peer` reported; wakes the collector when it moved or
    /// is the peer's first (an empty store's empty vector included: the first round then
    /// comes with the connection, not a minute later).
    pub fn report(&self, peer: Device, vv: &VersionVector) {
        let mut map = lock(&self.reported);
        let first = !map.contains_key(&peer);
        let entry = map.entry(peer).or_default();
        if first || entry.0 != *vv {
            *entry = (vv.clone(), true);
            self.reports.notify_one();
        }
    }

    /// Waits for a report that moved.
    pub async fn reported(&self) {
        self.reports.notified().await
    }

    /// Registers the session `id` served for `peer`, ending the one it replaces.
    pub fn serving(&self, peer: DeviceId, id: u64, task: AbortHandle) {
        if let Some((_, old)) = lock(&self.served).insert(peer, (id, task)) {
            old.abort();
        }
    }

    /// The session `id` for `peer` is over.
    pub fn served(&self, peer: DeviceId, id: u64) {
        let mut served = lock(&self.served);
        if served.get(&peer).is_some_and(|(i, _)| *i == id) {
            served.remove(&peer);
        }
        // Forget the peer's reads once no session and no read holds them.
        let mut reads = lock(&self.reads);
        if reads.get(&peer).is_some_and(|r| Arc::strong_count(r) == 1) {
            reads.remove(&peer);
        }
    }

    /// The store reads of sessions served to `peer` (see [`READS_PER_PEER`]).
    pub fn reads_of(&self, peer: DeviceId) -> Arc<Semaphore> {
        lock(&self.reads)
            .entry(peer)
            .or_insert_with(|| Arc::new(Semaphore::new(READS_PER_PEER)))
            .clone()
    }

    /// The next collection round for the mesh's `members` (this device excluded): which
    /// reports to persist or forget, and the members' vectors once each has reported.
    pub fn plan(&self, members: &[Device]) -> Collection {
        let mut map = lock(&self.reported);
        let mut persist = Vec::new();
        map.retain(|o, _| {
            let keep = members.contains(o);
            if !keep {
                persist.push((*o, None));
            }
            keep
        });
        for (o, (vv, dirty)) in map.iter_mut() {
            if *dirty {
                persist.push((*o, Some(vv.clone())));
                *dirty = false;
            }
        }
        persist.sort_by_key(|(o, _)| *o);
        let members = members
            .iter()
            .map(|m| map.get(m).map(|(vv, _)| vv.clone()))
            .collect();
        Collection { persist, members }
    }
}
