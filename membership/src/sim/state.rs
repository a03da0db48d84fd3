//! The simulator's state: its configuration, the simulated links and nodes, the event
//! queue, and what a run recorded (transitions, deliveries, traffic).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;

use crate::config::Config;
use crate::core::Membership;
use crate::message::EventId;
use crate::types::{PeerView, State};

/// Network and connection behaviour of the simulator.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// One-way latency of every link (RTT is twice this).
    pub latency: Duration,
    /// Probability that a message is lost.
    pub loss: f64,
    /// A connection without traffic (partition, dead peer) closes after this.
    pub idle_timeout: Duration,
    /// Time to re-establish a connection after heal or restart.
    pub reconnect_delay: Duration,
    /// Like the daemon (its `idle_timeout_ms`, 3 s by default), close a connection once
    /// the member's core reports its peer silent ([`crate::Membership::silence`]) this
    /// long (checked at the member's timer wake-ups), and dial again after
    /// `reconnect_delay`. `None`: connections close only by `idle_timeout`.
    pub close_silent: Option<Duration>,
    /// Beats travel as heartbeats (the daemon's default): datagrams nobody acknowledges,
    /// received by the kernel even while the node stalls, read at its next wake-up and
    /// dated when they arrived (the daemon's receive timestamps).
    pub datagram_beats: bool,
    pub membership: Config,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            latency: Duration::from_millis(1),
            loss: 0.0,
            idle_timeout: Duration::from_secs(5),
            reconnect_delay: Duration::from_millis(200),
            close_silent: Some(Duration::from_secs(3)),
            datagram_beats: true,
            membership: Config::default(),
        }
    }
}

/// A peer state change seen by `observer`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub at: Duration,
    pub observer: u32,
    pub peer: u32,
    pub state: State,
    pub via: Option<u32>,
}

/// Traffic counters.
#[derive(Clone, Debug, Default)]
pub struct NetStats {
    pub messages: u64,
    pub bytes: u64,
    pub dropped: u64,
    pub by_kind: BTreeMap<&'static str, u64>,
    /// Per node: messages and bytes sent.
    pub sent: Vec<(u64, u64)>,
    /// Per node: messages that reached it (heartbeats included: each wakes a radio).
    pub received: Vec<u64>,
    /// Per node: wake-ups of its core (its timer, or a message other than a heartbeat).
    pub wakeups: Vec<u64>,
    /// Transmissions of each broadcast event (a gossip message carrying it).
    pub event_tx: BTreeMap<EventId<u32>, u64>,
}

#[derive(Debug)]
pub(super) enum Ev {
    Deliver {
        to: u32,
        from: u32,
        bytes: Vec<u8>,
        conn: u64,
        sent: Duration,
        datagram: bool,
    },
    /// The transport acknowledgement of a delivered message reaches its sender (QUIC
    /// acknowledges every packet; the daemon turns that into `Input::Heard`).
    Acked {
        node: u32,
        peer: u32,
        conn: u64,
        sent: Duration,
    },
    LinkUp {
        node: u32,
        peer: u32,
        conn: u64,
    },
    LinkDown {
        node: u32,
        peer: u32,
        leaving: bool,
    },
    Timer {
        node: u32,
        at: Instant,
    },
    IdleClose {
        a: u32,
        b: u32,
        conn: u64,
    },
    Connect {
        a: u32,
        b: u32,
    },
}

pub(super) struct Queued {
    pub(super) at: Duration,
    pub(super) seq: u64,
    pub(super) ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> Ordering {
        // Min-heap on (time, insertion order).
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

pub(super) struct SimLink {
    /// The connection of a process that is gone, still held by the other end (which has
    /// not noticed): it carries nothing, and a new connection is refused until that end
    /// closes it.
    pub(super) stale: bool,
    pub(super) wired: bool,
    pub(super) partitioned: bool,
    pub(super) connected: bool,
    pub(super) conn: u64,
    pub(super) latency: Duration,
    pub(super) loss: f64,
}

impl SimLink {
    /// Connection `conn` is still up and its packets get through.
    pub(super) fn carries(&self, conn: u64) -> bool {
        self.connected && self.conn == conn && !self.partitioned && !self.stale
    }
}

pub(super) struct Node {
    pub(super) m: Membership<u32>,
    pub(super) alive: bool,
    pub(super) incarnation: u64,
    pub(super) timer_at: Option<Instant>,
    pub(super) stall_until: Duration,
    pub(super) extra_delay: Duration,
    pub(super) views: BTreeMap<u32, PeerView<u32>>,
    /// Heartbeats waiting for the node's next wake-up, with their arrival.
    pub(super) heartbeats: Vec<(u32, Option<u64>, Instant)>,
}

/// The simulator. Node ids are `0..n`.
pub struct Sim {
    pub cfg: SimConfig,
    pub(super) base: Instant,
    pub(super) now: Duration,
    pub(super) rng: StdRng,
    pub(super) seq: u64,
    pub(super) queue: BinaryHeap<Queued>,
    pub(super) nodes: Vec<Node>,
    pub(super) links: BTreeMap<(u32, u32), SimLink>,
    pub stats: NetStats,
    pub log: Vec<Transition>,
    /// (time, receiving node, event) for every `Deliver`.
    pub deliveries: Vec<(Duration, u32, EventId<u32>)>,
    /// Broadcast send times.
    pub broadcasts: BTreeMap<EventId<u32>, Duration>,
}

pub(super) fn key(a: u32, b: u32) -> (u32, u32) {
    (a.min(b), a.max(b))
}

impl Sim {
    pub(super) fn push(&mut self, at: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.push(Queued {
            at,
            seq: self.seq,
            ev,
        });
    }

    pub(super) fn link(&mut self, a: u32, b: u32) -> &mut SimLink {
        self.links.get_mut(&key(a, b)).expect("link exists")
    }
}
