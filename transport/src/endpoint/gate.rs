//! Admission of incoming handshakes: a bound on the handshakes under way, in all and per
//! source, and QUIC Retry for unvalidated addresses under load.
//!
//! Anyone who reaches the port can send a valid ClientHello, from any source address;
//! each accepted one costs a key exchange and a signature and holds a connection until
//! its handshake completes or times out. The gate decides, before any of that, what
//! becomes of each `quinn::Incoming`:
//!
//! - an address not validated (no Retry token: it may be spoofed) is answered with a
//!   stateless Retry once `retry_above` handshakes are under way, or when its source
//!   already has `per_source` under way; a sender that does not receive at that address
//!   never comes back;
//! - a validated address (it came back with the Retry's token) from a source that has
//!   `per_source` handshakes under way takes the place of that source's handshake that
//!   has waited longest for its client since this side answered (validated or not: a
//!   neighbour behind the same address that completes Retries and then stalls cannot
//!   lock the source out), or is refused (a CONNECTION_REFUSED packet, no handshake);
//! - with `max` handshakes under way, a validated newcomer takes the place of the
//!   handshake that has waited longest for its client since this side answered: a client
//!   that never finishes (or a spoofed address) cannot keep its place until the
//!   handshake timeout. With none answered yet (this side short of CPU) the newcomer is
//!   refused: handshakes being worked on are finished, not thrown away for newer ones;
//! - members come first: a source from which a member of the roster completed a
//!   handshake (the last [`FAMILIAR`] such sources) is familiar. At the bound, a
//!   stranger's newcomer takes only a stranger's place; a familiar newcomer takes a
//!   stranger's, answered or, failing that, the newest not answered yet. An attacker
//!   with many addresses of its own then cannot keep members out, unless it sends from
//!   theirs (behind the same NAT).
//!
//! A source is an IPv4 address, or an IPv6 /64 (what one host usually has). Peers behind
//! a relay (virtual addresses, one per device: the socket takes relayed datagrams only
//! from devices of the roster; it drops datagrams from the network with such a source)
//! count as validated, each its own source.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;

use crate::relay::is_virtual;
use crate::settings::HandshakeLimits;

/// Sources from which members completed handshakes that are remembered (most recent).
pub const FAMILIAR: usize = 64;

/// What the gate counted since the endpoint started (`under_way` and `peak` are gauges).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandshakeCounters {
    /// Handshakes under way now (from acceptance to the end of the TLS handshake).
    pub under_way: usize,
    /// The most that were ever under way at once.
    pub peak: usize,
    /// The most that were ever under way at once from one source.
    pub peak_per_source: usize,
    /// Incoming connections whose handshake was started.
    pub accepted: u64,
    /// Answered with a QUIC Retry (no handshake).
    pub retried: u64,
    /// Refused (no handshake).
    pub refused: u64,
    /// Handshakes under way dropped to make room for a validated newcomer.
    pub evicted: u64,
}

/// What to do with one incoming connection.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Start its handshake; the ticket holds its place until dropped. The receiver
    /// resolves (with an error) when the gate gave the place to another: the handshake is
    /// to be dropped then.
    Accept(Ticket, oneshot::Receiver<()>),
    /// Answer with a Retry.
    Retry,
    /// Refuse it.
    Refuse,
}

/// The place of one handshake under way.
#[derive(Debug)]
pub(crate) struct Ticket {
    gate: Arc<Gate>,
    serial: u64,
}

impl Ticket {
    /// This side has answered the ClientHello at `now`: the client owes the next flight.
    pub(crate) fn answered(&self, now: Instant) {
        let mut st = self.gate.lock();
        if let Some(e) = st.entries.iter_mut().find(|e| e.serial == self.serial) {
            e.answered = Some(now);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.gate.release(self.serial);
    }
}

#[derive(Debug)]
struct Entry {
    serial: u64,
    source: IpAddr,
    /// From a source where a member completed a handshake before.
    familiar: bool,
    /// When this side answered the ClientHello.
    answered: Option<Instant>,
    /// Dropped to tell the handshake's task that it lost its place.
    _evict: oneshot::Sender<()>,
}

#[derive(Debug, Default)]
struct State {
    /// Handshakes under way, oldest first.
    entries: VecDeque<Entry>,
    per_source: HashMap<IpAddr, usize>,
    /// Sources from which members completed handshakes, most recent last.
    familiar: VecDeque<IpAddr>,
    next_serial: u64,
    counters: HandshakeCounters,
}

impl State {
    /// The index of the entry that `pick` takes and that has waited longest since this
    /// side answered its ClientHello.
    fn longest_waiting(&self, pick: impl Fn(&Entry) -> bool) -> Option<usize> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| pick(e))
            .filter_map(|(i, e)| Some((e.answered?, i)))
            .min()
            .map(|(_, i)| i)
    }

    /// The newest entry that `pick` takes and that this side has not answered yet.
    fn newest_unanswered(&self, pick: impl Fn(&Entry) -> bool) -> Option<usize> {
        self.entries
            .iter()
            .rposition(|e| pick(e) && e.answered.is_none())
    }

    /// Drops the handshake that `pick` takes and that has waited longest since this side
    /// answered it, counted as evicted; with none such, counts a refusal. True when a
    /// place was made.
    fn make_room(&mut self, pick: impl Fn(&Entry) -> bool) -> bool {
        let victim = self.longest_waiting(pick);
        self.evict(victim)
    }

    /// Drops entry `victim`, counted as evicted; with none, counts a refusal. True when a
    /// place was made.
    fn evict(&mut self, victim: Option<usize>) -> bool {
        match victim {
            Some(i) => {
                self.remove(i);
                self.counters.evicted += 1;
                true
            }
            None => {
                self.counters.refused += 1;
                false
            }
        }
    }

    fn remove(&mut self, i: usize) -> Option<Entry> {
        let e = self.entries.remove(i)?;
        if let Some(n) = self.per_source.get_mut(&e.source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&e.source);
            }
        }
        self.counters.under_way = self.entries.len();
        Some(e)
    }
}

/// The handshakes under way of one endpoint (all its sockets).
#[derive(Debug)]
pub(crate) struct Gate {
    limits: HandshakeLimits,
    state: Mutex<State>,
}

/// The source `addr` counts against: the IPv4 address, the IPv6 /64, or the virtual
/// address itself.
pub(crate) fn source(addr: &SocketAddr) -> IpAddr {
    let ip = addr.ip().to_canonical();
    match ip {
        IpAddr::V6(v6) if !is_virtual(addr) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        other => other,
    }
}

impl Gate {
    pub(crate) fn new(limits: HandshakeLimits) -> Arc<Gate> {
        Arc::new(Gate {
            limits,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn counters(&self) -> HandshakeCounters {
        self.lock().counters
    }

    /// Counts a Retry that could not be sent as a refusal instead.
    pub(crate) fn retry_failed(&self) {
        let mut st = self.lock();
        st.counters.retried -= 1;
        st.counters.refused += 1;
    }

    /// Decides about an incoming connection from `remote`; `validated`: it carries a
    /// valid Retry token.
    pub(crate) fn admit(self: &Arc<Self>, remote: &SocketAddr, validated: bool) -> Admission {
        let validated = validated || is_virtual(remote);
        let source = source(remote);
        let lim = self.limits;
        let mut st = self.lock();
        let from_source = st.per_source.get(&source).copied().unwrap_or(0);
        if !validated && (st.entries.len() >= lim.retry_above || from_source >= lim.per_source) {
            st.counters.retried += 1;
            return Admission::Retry;
        }
        if from_source >= lim.per_source && !st.make_room(|e| e.source == source) {
            return Admission::Refuse;
        }
        // The handshake that has waited longest for its client since this side answered
        // the ClientHello gives way (a spoofed address's, or one that stalls, waits until
        // the handshake timeout; a real client answers within a round trip). One not
        // answered yet (this side short of CPU) is never dropped for a stranger's: the
        // newcomer is refused. A member's source takes a stranger's place, never the
        // reverse.
        let familiar = st.familiar.contains(&source);
        if st.entries.len() >= lim.max {
            let stranger = |e: &Entry| !e.familiar;
            let victim = if familiar {
                st.longest_waiting(stranger)
                    .or_else(|| st.newest_unanswered(stranger))
                    .or_else(|| st.longest_waiting(|_| true))
            } else {
                st.longest_waiting(stranger)
            };
            if !st.evict(victim) {
                return Admission::Refuse;
            }
        }
        let serial = st.next_serial;
        st.next_serial += 1;
        let (tx, rx) = oneshot::channel();
        st.entries.push_back(Entry {
            serial,
            source,
            familiar,
            answered: None,
            _evict: tx,
        });
        let from_source = {
            let n = st.per_source.entry(source).or_insert(0);
            *n += 1;
            *n
        };
        st.counters.peak_per_source = st.counters.peak_per_source.max(from_source);
        let n = st.entries.len();
        st.counters.under_way = n;
        st.counters.peak = st.counters.peak.max(n);
        st.counters.accepted += 1;
        Admission::Accept(
            Ticket {
                gate: self.clone(),
                serial,
            },
            rx,
        )
    }

    /// A member of the roster completed a handshake from `remote`: its source is familiar.
    pub(crate) fn member_from(&self, remote: &SocketAddr) {
        let source = source(remote);
        let mut st = self.lock();
        st.familiar.retain(|s| *s != source);
        if st.familiar.len() >= FAMILIAR {
            st.familiar.pop_front();
        }
        st.familiar.push_back(source);
    }

    fn release(&self, serial: u64) {
        let mut st = self.lock();
        if let Some(i) = st.entries.iter().position(|e| e.serial == serial) {
            st.remove(i);
        }
    }
}

#[cfg(test)]
mod tests;
