//! The send side of every connection's mesh stream: frames queued per peer (roster and
//! address gossip, membership messages), with the gossip counters that `status` shows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::mpsc;
use transport::DeviceId;

use super::roster::RosterSnapshot;
use super::wire::MeshFrame;

/// Frames queued per connection before senders see "full" (frames are then dropped:
/// gossip is repaired by the next exchange).
pub const OUTBOX: usize = 256;

struct Outbox {
    conn: usize,
    tx: mpsc::Sender<MeshFrame>,
    /// Fingerprint of the last roster sent as an answer on this connection.
    answered: Option<u64>,
}

/// The send side of every connection's mesh stream.
#[derive(Default)]
pub struct Mesh {
    outboxes: Mutex<HashMap<DeviceId, Outbox>>,
    /// Roster frames sent and received since start (shown by `status`).
    pub roster_sent: AtomicU64,
    pub roster_received: AtomicU64,
    /// At most one roster merge per member and interval.
    pub roster_gate: super::roster_gossip::RosterGate,
}

impl Mesh {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, Outbox>> {
        self.outboxes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `frame` for `peer`; false when there is no mesh stream to it (or it is full).
    pub fn send(&self, peer: &DeviceId, frame: MeshFrame) -> bool {
        let is_roster = matches!(frame, MeshFrame::Roster(_));
        let sent = match self.lock().get(peer) {
            Some(o) => o.tx.try_send(frame).is_ok(),
            None => false,
        };
        if sent && is_roster {
            self.roster_sent.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    /// Sends `snap` to `peer` as an answer, unless this very roster was already the
    /// answer on the current connection.
    pub fn answer(&self, peer: &DeviceId, print: u64, snap: RosterSnapshot) {
        {
            let mut boxes = self.lock();
            let Some(o) = boxes.get_mut(peer) else { return };
            o.answered = Some(print);
        }
        self.send(peer, MeshFrame::Roster(snap));
    }

    /// The fingerprint of the last roster sent to `peer` as an answer on its current
    /// connection.
    pub fn last_answer(&self, peer: &DeviceId) -> Option<u64> {
        self.lock().get(peer).and_then(|o| o.answered)
    }

    /// Takes `tx` as the queue of `peer`'s mesh stream on connection `conn`.
    pub fn attach(&self, peer: DeviceId, conn: usize, tx: mpsc::Sender<MeshFrame>) {
        self.lock().insert(
            peer,
            Outbox {
                conn,
                tx,
                answered: None,
            },
        );
    }

    /// Forgets `peer`'s queue if it still belongs to connection `conn`.
    pub fn detach(&self, peer: &DeviceId, conn: usize) {
        let mut boxes = self.lock();
        if boxes.get(peer).is_some_and(|o| o.conn == conn) {
            boxes.remove(peer);
        }
    }

    /// Every queued frame has been handed to its stream.
    pub fn drained(&self) -> bool {
        self.lock()
            .values()
            .all(|o| o.tx.capacity() == o.tx.max_capacity())
    }

    /// Peers with a mesh stream.
    pub fn connected(&self) -> Vec<DeviceId> {
        self.lock().keys().copied().collect()
    }
}
