//! Bounds on what one member can make this device hold (docs/security.md, "Memory"):
//! message bodies being received, queued for handlers or handled count against a byte
//! budget per peer and one for all peers together, and a peer's message streams are read
//! a few at a time. A message stream beyond them is refused at once (`queue_full`):
//! left unread, its bytes would hold the connection's flow-control window and stall the
//! streams being read. A lane's messages (small) wait for byte budget instead, but are
//! refused beyond the peer's share of the handler queue. A member that floods gets
//! errors; the others go on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use transport::DeviceId;

/// Bytes of message bodies one peer may have here at once (two bodies of the largest
/// size, 20 MiB).
pub const PEER_BYTES: u64 = 40 * 1024 * 1024;
/// Bytes of message bodies all peers together may have here at once.
pub const TOTAL_BYTES: u64 = 160 * 1024 * 1024;
/// A peer's message streams read at once (the others wait, unread).
pub const PEER_STREAMS: usize = 32;
/// A member's application streams handed to local listeners at once (announced, waiting
/// for `accept`, or accepted): each accepted one holds one of the control socket's 128
/// client slots for its life (with `listen --exec`, a process too), so a member, even a
/// stolen one, takes at most a quarter of them and `cnspr remove` still gets a slot.
/// One more is refused at once (`queue_full`). The streams another member relays
/// (`relay_stream.rs`) count as their origin's, whose proof this device checked, in
/// places of their own, this many and [`PEER_EXPOSED`] apart from its direct streams:
/// a relay that keeps streams open fills none of the places of the origin's direct
/// streams or of the relay's own.
pub const PEER_LISTENED: usize = 32;
/// A peer's application streams forwarded to exposed targets at once: each holds a TCP or
/// UNIX connection (a descriptor) here. One more is refused at once (`queue_full`).
pub const PEER_EXPOSED: usize = 256;
/// Streams of one member this device carries at once as their relay, between it and
/// another member it has no path of its own to (each two QUIC streams and a task here;
/// at the target it takes one of its origin's places). One more is refused at once
/// (`queue_full`). Streams are relayed this way only until the two ends have a connection
/// of their own through this device (docs/reach.md).
pub const PEER_RELAYED: usize = 64;
/// Reply tasks (messages with `reply`, waiting for their handlers) of one message lane.
pub const LANE_TASKS: usize = 64;
/// The share of the handler queue (`handler_queue`) one peer's messages may take: each
/// message holds a place from before its body is read until its handlers ran, so a
/// member that keeps many waiting leaves three quarters of the queue to the others.
pub fn peer_messages(handler_queue: usize) -> usize {
    (handler_queue / 4).max(1)
}

/// Budgets are counted in KiB.
const UNIT: u64 = 1024;

fn units(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(UNIT).max(1)).unwrap_or(u32::MAX)
}

struct Peer {
    bytes: Arc<Semaphore>,
    streams: Arc<Semaphore>,
    messages: Arc<Semaphore>,
    /// Places for direct streams (index 0) and relayed ones (index 1).
    listened: [Arc<Semaphore>; 2],
    exposed: [Arc<Semaphore>; 2],
    relayed: Arc<Semaphore>,
}

/// The budgets of every peer (see the module).
pub struct Budgets {
    total: Arc<Semaphore>,
    peers: Mutex<HashMap<DeviceId, Arc<Peer>>>,
    /// Messages one peer may have between its body and the end of its handlers.
    peer_messages: usize,
}

/// Budget held; given back when dropped.
#[derive(Debug)]
pub struct Held {
    _permits: Vec<OwnedSemaphorePermit>,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets::new(256)
    }
}

impl Budgets {
    /// Budgets for a daemon whose handler queue holds `handler_queue` invocations.
    pub fn new(handler_queue: usize) -> Self {
        Budgets {
            total: Arc::new(Semaphore::new(units(TOTAL_BYTES) as usize)),
            peers: Mutex::new(HashMap::new()),
            peer_messages: peer_messages(handler_queue),
        }
    }

    fn peer(&self, id: DeviceId) -> Arc<Peer> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers
            .entry(id)
            .or_insert_with(|| {
                Arc::new(Peer {
                    bytes: Arc::new(Semaphore::new(units(PEER_BYTES) as usize)),
                    streams: Arc::new(Semaphore::new(PEER_STREAMS)),
                    messages: Arc::new(Semaphore::new(self.peer_messages)),
                    listened: std::array::from_fn(|_| Arc::new(Semaphore::new(PEER_LISTENED))),
                    exposed: std::array::from_fn(|_| Arc::new(Semaphore::new(PEER_EXPOSED))),
                    relayed: Arc::new(Semaphore::new(PEER_RELAYED)),
                })
            })
            .clone()
    }

    /// A turn to read one of `peer`'s message streams; `None` while it has
    /// [`PEER_STREAMS`] being read.
    pub fn try_stream(&self, peer: DeviceId) -> Option<Held> {
        let permit = self.peer(peer).streams.clone().try_acquire_owned().ok()?;
        Some(Held {
            _permits: vec![permit],
        })
    }

    /// A place for one of `peer`'s application streams, handed to a listener
    /// (`listened`) or forwarded to an exposed target, opened directly or `relayed` by
    /// another member; `None` while it has [`PEER_LISTENED`] or [`PEER_EXPOSED`] of that
    /// kind and way.
    pub fn try_app_stream(&self, peer: DeviceId, listened: bool, relayed: bool) -> Option<Held> {
        let p = self.peer(peer);
        let kind = if listened { &p.listened } else { &p.exposed };
        let permit = kind[usize::from(relayed)]
            .clone()
            .try_acquire_owned()
            .ok()?;
        Some(Held {
            _permits: vec![permit],
        })
    }

    /// A place for one of `peer`'s streams that this device relays; `None` while it has
    /// [`PEER_RELAYED`].
    pub fn try_relayed(&self, peer: DeviceId) -> Option<Held> {
        let permit = self.peer(peer).relayed.clone().try_acquire_owned().ok()?;
        Some(Held {
            _permits: vec![permit],
        })
    }

    /// Room for a message with a body of `bytes` from `peer` now; `None` while that
    /// peer holds its share of messages or its budget, or all peers together theirs.
    pub fn try_bytes(&self, peer: DeviceId, bytes: u64) -> Option<Held> {
        let n = units(bytes);
        let p = self.peer(peer);
        let place = p.messages.clone().try_acquire_owned().ok()?;
        let own = p.bytes.clone().try_acquire_many_owned(n).ok()?;
        let all = self.total.clone().try_acquire_many_owned(n).ok()?;
        Some(Held {
            _permits: vec![place, own, all],
        })
    }

    /// Room for a message with a body of `bytes` from `peer`: `None` at once while that
    /// peer holds its share of messages; else waits while that peer, or all peers
    /// together, hold their byte budget. `bytes` is at most the largest body, below both.
    pub async fn bytes(&self, peer: DeviceId, bytes: u64) -> Option<Held> {
        let n = units(bytes);
        let p = self.peer(peer);
        let place = p.messages.clone().try_acquire_owned().ok()?;
        // The peer's own first, so one peer waiting never holds the shared budget.
        let own = p.bytes.clone().acquire_many_owned(n).await;
        let all = self.total.clone().acquire_many_owned(n).await;
        Some(Held {
            _permits: std::iter::once(place).chain(own).chain(all).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_peer_over_its_budget_waits_and_others_go_on() {
        let b = Budgets::default();
        let (p, q) = (DeviceId([1; 32]), DeviceId([2; 32]));
        let first = b.bytes(p, PEER_BYTES / 2).await.unwrap();
        let _second = b.bytes(p, PEER_BYTES / 2).await.unwrap();
        // A third body from p waits for one of its own to go.
        let third = tokio::time::timeout(std::time::Duration::from_millis(50), b.bytes(p, 1));
        assert!(third.await.is_err(), "p is over its budget");
        // q is not held up by p.
        let _q = b.bytes(q, PEER_BYTES).await.unwrap();
        drop(first);
        let _third = b.bytes(p, 1).await.unwrap();
        // Streams: PEER_STREAMS at once, then none until one ends.
        let mut held = Vec::new();
        for _ in 0..PEER_STREAMS {
            held.push(b.try_stream(p).expect("a turn"));
        }
        assert!(b.try_stream(p).is_none());
        held.pop();
        assert!(b.try_stream(p).is_some());
        // try_bytes: refused at once while a peer holds its budget, others go on.
        let fresh = Budgets::default();
        let _most = fresh.try_bytes(p, PEER_BYTES - 1024).expect("room");
        assert!(fresh.try_bytes(p, 2048).is_none());
        assert!(fresh.try_bytes(p, 1024).is_some());
        assert!(fresh.try_bytes(q, PEER_BYTES).is_some());
    }

    #[test]
    fn a_peer_holds_at_most_its_bound_of_app_streams_of_each_kind() {
        let b = Budgets::default();
        let (p, q) = (DeviceId([1; 32]), DeviceId([2; 32]));
        let mut listened: Vec<Held> = (0..PEER_LISTENED)
            .map(|_| b.try_app_stream(p, true, false).expect("a place"))
            .collect();
        assert!(b.try_app_stream(p, true, false).is_none());
        assert!(
            b.try_app_stream(q, true, false).is_some(),
            "another peer has room"
        );
        let exposed: Vec<Held> = (0..PEER_EXPOSED)
            .map(|_| b.try_app_stream(p, false, false).expect("a place"))
            .collect();
        assert!(b.try_app_stream(p, false, false).is_none());
        listened.pop();
        assert!(
            b.try_app_stream(p, true, false).is_some(),
            "a place came back"
        );
        drop(exposed);
        assert!(b.try_app_stream(p, false, false).is_some());
    }

    #[test]
    fn relayed_app_streams_have_places_apart_from_direct_ones() {
        let b = Budgets::default();
        let p = DeviceId([1; 32]);
        let relayed: Vec<Held> = (0..PEER_LISTENED)
            .map(|_| b.try_app_stream(p, true, true).expect("a place"))
            .collect();
        assert!(b.try_app_stream(p, true, true).is_none());
        assert!(
            b.try_app_stream(p, true, false).is_some(),
            "direct streams keep their places"
        );
        drop(relayed);
        assert!(b.try_app_stream(p, true, true).is_some());
    }

    #[tokio::test]
    async fn a_peer_takes_at_most_its_share_of_the_handler_queue() {
        let b = Budgets::new(40);
        let (p, q) = (DeviceId([1; 32]), DeviceId([2; 32]));
        let mine: Vec<Held> = (0..10).map(|_| b.try_bytes(p, 10).expect("room")).collect();
        assert!(b.try_bytes(p, 10).is_none(), "a quarter of 40 places");
        assert!(
            b.bytes(p, 1).await.is_none(),
            "a lane's message is refused too"
        );
        assert!(b.try_bytes(q, 10).is_some(), "another peer has room");
        drop(mine);
        assert!(b.try_bytes(p, 10).is_some());
    }

    #[tokio::test]
    async fn all_peers_together_stay_within_the_total() {
        let b = Budgets::default();
        let mut held = Vec::new();
        let n = TOTAL_BYTES / PEER_BYTES;
        for i in 0..n {
            held.push(b.bytes(DeviceId([i as u8; 32]), PEER_BYTES).await.unwrap());
        }
        let over = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            b.bytes(DeviceId([200; 32]), 1),
        );
        assert!(over.await.is_err(), "the total is spent");
        held.pop();
        let _ok = b.bytes(DeviceId([200; 32]), 1).await.unwrap();
    }
}
