//! The live set of device IDs this device trusts, shared by the TLS verifier and the endpoint.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use tokio::sync::broadcast;

use crate::id::DeviceId;

/// A shared, changeable set of trusted device IDs. Cloning shares the same set.
#[derive(Clone)]
pub struct Roster {
    inner: Arc<Inner>,
}

struct Inner {
    ids: RwLock<HashSet<DeviceId>>,
    /// Devices that were removed, with what to tell each when it connects (the
    /// endpoint completes their handshake only to say it, then closes).
    notices: RwLock<HashMap<DeviceId, String>>,
    removed: broadcast::Sender<DeviceId>,
    /// What this device answers a member that told it it was removed (an appeal: the
    /// removal of the device that removed it), sent in its next hello to that member.
    appeals: RwLock<HashMap<DeviceId, String>>,
    /// Where appeals heard from removed devices go (to the daemon).
    appeal_sink: RwLock<Option<tokio::sync::mpsc::Sender<(DeviceId, String)>>>,
}

/// Longest appeal taken from a hello.
pub const MAX_APPEAL: usize = 4096;

impl std::fmt::Debug for Roster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.ids()).finish()
    }
}

impl Default for Roster {
    fn default() -> Self {
        Self::new()
    }
}

impl Roster {
    pub fn new() -> Self {
        let (removed, _) = broadcast::channel(64);
        Roster {
            inner: Arc::new(Inner {
                ids: RwLock::new(HashSet::new()),
                notices: RwLock::new(HashMap::new()),
                removed,
                appeals: RwLock::new(HashMap::new()),
                appeal_sink: RwLock::new(None),
            }),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashSet<DeviceId>> {
        self.inner.ids.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Trusts `id`; returns whether it was new.
    pub fn insert(&self, id: DeviceId) -> bool {
        let mut ids = self.inner.ids.write().unwrap_or_else(|p| p.into_inner());
        ids.insert(id)
    }

    /// Stops trusting `id`; live connections to it are closed by every endpoint sharing
    /// this roster. Returns whether it was present.
    pub fn remove(&self, id: &DeviceId) -> bool {
        let was = {
            let mut ids = self.inner.ids.write().unwrap_or_else(|p| p.into_inner());
            ids.remove(id)
        };
        if was {
            let _ = self.inner.removed.send(*id);
        }
        was
    }

    /// What to tell `id`, a removed device, when it connects (`None`: refuse it in the
    /// handshake, as any stranger).
    pub fn set_notice(&self, id: DeviceId, notice: Option<String>) {
        let mut n = self
            .inner
            .notices
            .write()
            .unwrap_or_else(|p| p.into_inner());
        match notice {
            Some(text) => {
                n.insert(id, text);
            }
            None => {
                n.remove(&id);
            }
        }
    }

    /// The notice for `id`, if it is a removed device that is to be told.
    pub fn notice(&self, id: &DeviceId) -> Option<String> {
        if self.contains(id) {
            return None;
        }
        let n = self.inner.notices.read().unwrap_or_else(|p| p.into_inner());
        n.get(id).cloned()
    }

    /// What to say in the next hello to member `to`, which told this device it was
    /// removed (`None`: nothing).
    pub fn set_appeal(&self, to: DeviceId, appeal: Option<String>) {
        let mut a = self
            .inner
            .appeals
            .write()
            .unwrap_or_else(|p| p.into_inner());
        match appeal {
            Some(text) if text.len() <= MAX_APPEAL => {
                a.insert(to, text);
            }
            _ => {
                a.remove(&to);
            }
        }
    }

    /// The appeal to send `to` in a hello.
    pub fn appeal(&self, to: &DeviceId) -> Option<String> {
        let a = self.inner.appeals.read().unwrap_or_else(|p| p.into_inner());
        a.get(to).cloned()
    }

    /// Where appeals from removed devices are delivered (bounded: more are dropped).
    pub fn set_appeal_sink(&self, sink: tokio::sync::mpsc::Sender<(DeviceId, String)>) {
        *self
            .inner
            .appeal_sink
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(sink);
    }

    /// Removed device `from` appealed with `text` in its hello.
    pub fn appealed(&self, from: DeviceId, text: String) {
        if text.len() > MAX_APPEAL {
            return;
        }
        let sink = self
            .inner
            .appeal_sink
            .read()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = sink.as_ref() {
            let _ = tx.try_send((from, text));
        }
    }

    pub fn contains(&self, id: &DeviceId) -> bool {
        self.read().contains(id)
    }

    pub fn ids(&self) -> Vec<DeviceId> {
        let mut v: Vec<_> = self.read().iter().copied().collect();
        v.sort();
        v
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// A stream of removed IDs (lagging receivers see `Lagged` and should re-check `contains`).
    pub fn subscribe_removals(&self) -> broadcast::Receiver<DeviceId> {
        self.inner.removed.subscribe()
    }
}
