//! Hole punching (the state and its rules; `punching.rs` drives it): two members that reach each other only through a third (`indirect`)
//! open a direct connection through their NATs.
//!
//! The exchange runs over the mesh streams, passed on by the member in between, with
//! the timing of libp2p's DCUtR:
//! 1. The side with the lower device ID sends `Connect` with its candidate addresses and
//!    starts a clock.
//! 2. The other side answers `Reply` with its own.
//! 3. The initiator, now knowing the round trip through the member, sends `Sync` and dials
//!    the other's candidates half a round trip later; the other side dials as `Sync`
//!    arrives. Both sides' first QUIC packets leave at about the same moment, so each
//!    router has seen its inside device send to the other's public address before the
//!    other's packets arrive, and lets them in. QUIC's own retransmissions repeat the
//!    attempt for the handshake timeout; the connection that completes first stays (the
//!    endpoint keeps one per pair), and traffic moves to it as the peer turns `active`.
//!
//! An exchange that gives no connection within [`EXCHANGE_TIMEOUT`] is tried again 250 ms
//! later, the wait doubling up to [`MAX_BACKOFF`] while the peer stays relayed; a new
//! address of either side starts over at once. Punch frames are bounded (candidates, rate per sender), passed on
//! only between members, and only ever lead to a dial that TLS pins to the peer's ID: a
//! forged frame can at worst make this device send a few QUIC handshakes that fail.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use transport::DeviceId;

use super::dial::Dial;

/// Most candidates taken from one frame.
pub const MAX_CANDIDATES: usize = 8;
/// Longest wait between two exchanges with a peer that stays relayed.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// An exchange with no answer or no connection after this long has failed.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Punch frames accepted from one connection per [`RATE_WINDOW`].
const RATE_LIMIT: u32 = 64;
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// An exchange this device started.
pub struct Started {
    pub session: u64,
    pub via: DeviceId,
    pub at: Instant,
}

#[derive(Default)]
pub struct State {
    /// When to punch each relayed peer next (this device initiates).
    pub schedule: HashMap<DeviceId, Dial>,
    pub started: HashMap<DeviceId, Started>,
    /// Exchanges the other side started: session and its candidates.
    pub answered: HashMap<DeviceId, (u64, Vec<SocketAddr>, Instant)>,
    /// Frames seen per sending connection in the current window.
    rate: HashMap<DeviceId, (Instant, u32)>,
}

/// The hole-punching exchanges of this device (owned here alone).
#[derive(Default)]
pub struct Punches {
    state: Mutex<State>,
    /// Wakes the scheduler (a peer became relayed, a candidate or this host's
    /// addresses changed).
    wake: tokio::sync::Notify,
}

impl Punches {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A peer may have become relayed: look at once.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits for [`Punches::wake`].
    pub async fn woken(&self) {
        self.wake.notified().await
    }

    /// A new address was learnt for `peer`: punch it again at once if it is relayed.
    pub fn candidate_changed(&self, peer: &DeviceId) {
        if let Some(s) = self.lock().schedule.get_mut(peer) {
            s.reset(Instant::now());
        }
        self.wake();
    }

    /// This host's addresses changed: punch every relayed peer again at once.
    pub fn network_changed(&self) {
        let now = Instant::now();
        for s in self.lock().schedule.values_mut() {
            s.reset(now);
        }
        self.wake();
    }
}

/// Keeps what can be dialled: no unspecified, multicast, loopback or port 0; at most
/// [`MAX_CANDIDATES`], without repeats.
pub fn clean(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in addrs {
        let a = crate::addr::canon(*a);
        let ip = a.ip();
        if a.port() == 0
            || ip.is_unspecified()
            || ip.is_multicast()
            || ip.is_loopback()
            || transport::relay::is_virtual(&a)
        {
            continue;
        }
        if !out.contains(&a) {
            out.push(a);
        }
        if out.len() == MAX_CANDIDATES {
            break;
        }
    }
    out
}

/// Whether a frame from connection `conn` fits its rate.
pub fn admit(st: &mut State, conn: DeviceId, now: Instant) -> bool {
    let (since, n) = st.rate.entry(conn).or_insert((now, 0));
    if now.duration_since(*since) > RATE_WINDOW {
        *since = now;
        *n = 0;
    }
    *n += 1;
    *n <= RATE_LIMIT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_bounded_and_dialable() {
        let many: Vec<SocketAddr> = (1..=20)
            .map(|i| format!("203.0.113.{i}:7373").parse().unwrap())
            .collect();
        assert_eq!(clean(&many).len(), MAX_CANDIDATES);
        let bad: Vec<SocketAddr> = [
            "0.0.0.0:1",
            "127.0.0.1:7373",
            "224.0.0.1:5",
            "203.0.113.1:0",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert!(clean(&bad).is_empty());
        let dup: Vec<SocketAddr> = ["[::ffff:203.0.113.1]:7373", "203.0.113.1:7373"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(clean(&dup), vec!["203.0.113.1:7373".parse().unwrap()]);
    }

    #[test]
    fn the_rate_per_connection_is_bounded() {
        let mut st = State::default();
        let now = Instant::now();
        let c = DeviceId([1; 32]);
        let admitted = (0..100).filter(|_| admit(&mut st, c, now)).count();
        assert_eq!(admitted, RATE_LIMIT as usize);
        assert!(
            admit(&mut st, DeviceId([2; 32]), now),
            "another connection has its own"
        );
        assert!(admit(
            &mut st,
            c,
            now + RATE_WINDOW + Duration::from_millis(1)
        ));
    }
}
