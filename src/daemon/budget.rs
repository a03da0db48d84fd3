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
/// Application streams one member's connection brings to local listeners at once
/// (announced, waiting for `accept`, or accepted), its own and those it relays for
/// others (`relay_stream.rs`): each accepted one holds one of the control socket's 128
/// client slots for its life (with `listen --exec`, a process too), so a member, even a
/// stolen one, takes at most a quarter of them and `cnspr remove` still gets a slot.
/// One more is refused at once (`queue_full`).
pub const PEER_LISTENED: usize = 32;
/// The same for exposed targets: each stream holds a TCP or UNIX connection (a
/// descriptor) here.
pub const PEER_EXPOSED: usize = 256;
/// Of a relay's places ([`PEER_LISTENED`], [`PEER_EXPOSED`]), the most that the streams
/// of one origin relayed by members take (its proof checked here), whatever relays carry
/// them: half, so one member cannot fill the places of a relay that carries others'
/// streams and its own, and a relay that keeps an origin's streams open fills none of
/// the places of that origin's direct streams.
pub fn relayed_share(bound: usize) -> usize {
    bound / 2
}
/// Streams of one member this device carries at once as their relay, between it and
/// another member it has no path of its own to (each two QUIC streams and a task here;
/// at the target, one of this device's places and one of its origin's relayed share).
/// One more is refused at once
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
    /// Places of the streams this member's connection brings (its own and relayed).
    listened: Arc<Semaphore>,
    exposed: Arc<Semaphore>,
    /// Places of this member's streams that other members relay here.
    listened_relayed: Arc<Semaphore>,
    exposed_relayed: Arc<Semaphore>,
    relayed: Arc<Semaphore>,
}

/// The budgets of every peer (see the module).
pub struct Budgets {
    total: Arc<Semaphore>,
    peers: Mutex<HashMap<DeviceId, Arc<Peer>>>,
    /// Messages one peer may have between its body and the end of its handlers.
    peer_messages: usize,
}

/// Which bound refused an application stream ([`Budgets::try_app_stream`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The connection's member holds [`PEER_LISTENED`] or [`PEER_EXPOSED`] streams.
    Carrier,
    /// The origin's streams relayed by members hold their [`relayed_share`].
    Origin,
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
                    listened: Arc::new(Semaphore::new(PEER_LISTENED)),
                    exposed: Arc::new(Semaphore::new(PEER_EXPOSED)),
                    listened_relayed: Arc::new(Semaphore::new(relayed_share(PEER_LISTENED))),
                    exposed_relayed: Arc::new(Semaphore::new(relayed_share(PEER_EXPOSED))),
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

    /// A place for an application stream that `carrier`'s connection brings, handed to a
    /// listener (`listened`) or forwarded to an exposed target, opened by `origin` (the
    /// carrier itself, or a member it relays for); `Err` names the bound that is full.
    pub fn try_app_stream(
        &self,
        carrier: DeviceId,
        origin: DeviceId,
        listened: bool,
    ) -> Result<Held, Full> {
        let c = self.peer(carrier);
        let mut permits = Vec::with_capacity(2);
        if origin != carrier {
            let o = self.peer(origin);
            let share = if listened {
                &o.listened_relayed
            } else {
                &o.exposed_relayed
            };
            permits.push(
                share
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| Full::Origin)?,
            );
        }
        let places = if listened { &c.listened } else { &c.exposed };
        permits.push(
            places
                .clone()
                .try_acquire_owned()
                .map_err(|_| Full::Carrier)?,
        );
        Ok(Held { _permits: permits })
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
            .map(|_| b.try_app_stream(p, p, true).expect("a place"))
            .collect();
        assert_eq!(b.try_app_stream(p, p, true).unwrap_err(), Full::Carrier);
        assert!(
            b.try_app_stream(q, q, true).is_ok(),
            "another peer has room"
        );
        let exposed: Vec<Held> = (0..PEER_EXPOSED)
            .map(|_| b.try_app_stream(p, p, false).expect("a place"))
            .collect();
        assert!(b.try_app_stream(p, p, false).is_err());
        listened.pop();
        assert!(b.try_app_stream(p, p, true).is_ok(), "a place came back");
        drop(exposed);
        assert!(b.try_app_stream(p, p, false).is_ok());
    }

    #[test]
    fn relayed_app_streams_take_the_relay_s_place_and_their_origin_s_share() {
        let b = Budgets::default();
        let (relay, origin, other) = (DeviceId([1; 32]), DeviceId([2; 32]), DeviceId([3; 32]));
        let share = relayed_share(PEER_LISTENED);
        let relayed: Vec<Held> = (0..share)
            .map(|_| b.try_app_stream(relay, origin, true).expect("a place"))
            .collect();
        // The origin's share is full, whatever relay carries the next.
        assert_eq!(
            b.try_app_stream(relay, origin, true).unwrap_err(),
            Full::Origin
        );
        assert_eq!(
            b.try_app_stream(other, origin, true).unwrap_err(),
            Full::Origin
        );
        // Its direct streams and the relay's own keep their places.
        assert!(b.try_app_stream(origin, origin, true).is_ok());
        let own: Vec<Held> = (share..PEER_LISTENED)
            .map(|_| b.try_app_stream(relay, relay, true).expect("a place"))
            .collect();
        // The relay's places are shared by its own streams and those it relays; a stream
        // refused there keeps none of its origin's share.
        assert_eq!(
            b.try_app_stream(relay, other, true).unwrap_err(),
            Full::Carrier
        );
        let whole: Vec<Held> = (0..share)
            .map(|_| {
                b.try_app_stream(origin, other, true)
                    .expect("other's share is whole")
            })
            .collect();
        drop(whole);
        drop(relayed);
        assert!(b.try_app_stream(relay, origin, true).is_ok());
        drop(own);
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
