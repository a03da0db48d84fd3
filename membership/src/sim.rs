//! A seeded, deterministic simulator: many [`Membership`] cores over an in-memory network
//! with virtual time. Every message is serialized with [`Message::encode`] and decoded
//! with [`Message::decode`]. Links have latency, loss and partitions; connections behave
//! like QUIC's: a partition or a killed peer makes the connection idle-time-out after
//! `idle_timeout`, healing reconnects, a graceful stop closes with "leaving".
//!
//! No wall clock (a base `Instant` plus simulated durations), no threads.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::message::{EventId, Item, Message};
use crate::{Config, Input, Membership, Output, PeerView, State};

mod observe;
pub use observe::quantile;

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
    /// Transmissions of each broadcast event (a gossip message carrying it).
    pub event_tx: BTreeMap<EventId<u32>, u64>,
}

#[derive(Debug)]
enum Ev {
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

struct Queued {
    at: Duration,
    seq: u64,
    ev: Ev,
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

struct SimLink {
    wired: bool,
    partitioned: bool,
    connected: bool,
    conn: u64,
    latency: Duration,
    loss: f64,
}

impl SimLink {
    /// Connection `conn` is still up and its packets get through.
    fn carries(&self, conn: u64) -> bool {
        self.connected && self.conn == conn && !self.partitioned
    }
}

struct Node {
    m: Membership<u32>,
    alive: bool,
    incarnation: u64,
    timer_at: Option<Instant>,
    stall_until: Duration,
    extra_delay: Duration,
    views: BTreeMap<u32, PeerView<u32>>,
    /// Heartbeats waiting for the node's next wake-up, with their arrival.
    heartbeats: Vec<(u32, Option<u64>, Instant)>,
}

/// The simulator. Node ids are `0..n`.
pub struct Sim {
    pub cfg: SimConfig,
    base: Instant,
    now: Duration,
    rng: StdRng,
    seq: u64,
    queue: BinaryHeap<Queued>,
    nodes: Vec<Node>,
    links: BTreeMap<(u32, u32), SimLink>,
    pub stats: NetStats,
    pub log: Vec<Transition>,
    /// (time, receiving node, event) for every `Deliver`.
    pub deliveries: Vec<(Duration, u32, EventId<u32>)>,
    /// Broadcast send times.
    pub broadcasts: BTreeMap<EventId<u32>, Duration>,
}

fn key(a: u32, b: u32) -> (u32, u32) {
    (a.min(b), a.max(b))
}

impl Sim {
    /// `n` members, wired as `wired(a, b)` says (a < b), all connecting at time zero.
    pub fn new(n: u32, cfg: SimConfig, seed: u64, wired: impl Fn(u32, u32) -> bool) -> Sim {
        let base = Instant::now();
        let mut sim = Sim {
            base,
            now: Duration::ZERO,
            rng: StdRng::seed_from_u64(seed),
            seq: 0,
            queue: BinaryHeap::new(),
            nodes: Vec::new(),
            links: BTreeMap::new(),
            stats: NetStats {
                sent: vec![(0, 0); n as usize],
                ..NetStats::default()
            },
            log: Vec::new(),
            deliveries: Vec::new(),
            broadcasts: BTreeMap::new(),
            cfg,
        };
        for id in 0..n {
            let m = sim.fresh_core(id, n, 1);
            sim.nodes.push(Node {
                m,
                alive: true,
                incarnation: 1,
                timer_at: None,
                stall_until: Duration::ZERO,
                extra_delay: Duration::ZERO,
                views: BTreeMap::new(),
                heartbeats: Vec::new(),
            });
            sim.drain(id);
        }
        for a in 0..n {
            for b in (a + 1)..n {
                let w = wired(a, b);
                let latency = sim.cfg.latency;
                let loss = sim.cfg.loss;
                sim.links.insert(
                    (a, b),
                    SimLink {
                        wired: w,
                        partitioned: false,
                        connected: false,
                        conn: 0,
                        latency,
                        loss,
                    },
                );
                if w {
                    sim.connect(a, b);
                }
            }
        }
        sim
    }

    /// A full mesh of `n` members.
    pub fn full_mesh(n: u32, cfg: SimConfig, seed: u64) -> Sim {
        Sim::new(n, cfg, seed, |_, _| true)
    }

    fn fresh_core(&self, id: u32, n: u32, incarnation: u64) -> Membership<u32> {
        let mut m = Membership::new(
            id,
            incarnation,
            self.cfg.membership.clone(),
            self.base + self.now,
        );
        m.set_members(0..n);
        m
    }

    pub fn len(&self) -> u32 {
        self.nodes.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn now(&self) -> Duration {
        self.now
    }

    pub fn instant(&self) -> Instant {
        self.base + self.now
    }

    pub fn node(&self, id: u32) -> &Membership<u32> {
        &self.nodes[id as usize].m
    }

    pub fn is_alive(&self, id: u32) -> bool {
        self.nodes[id as usize].alive
    }

    /// `observer`'s last reported view of `peer`.
    pub fn view(&self, observer: u32, peer: u32) -> Option<&PeerView<u32>> {
        self.nodes[observer as usize].views.get(&peer)
    }

    pub fn state(&self, observer: u32, peer: u32) -> Option<State> {
        self.view(observer, peer).map(|v| v.state)
    }

    fn push(&mut self, at: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.push(Queued {
            at,
            seq: self.seq,
            ev,
        });
    }

    fn link(&mut self, a: u32, b: u32) -> &mut SimLink {
        self.links.get_mut(&key(a, b)).expect("link exists")
    }

    fn connect(&mut self, a: u32, b: u32) {
        let (alive_a, alive_b) = (self.nodes[a as usize].alive, self.nodes[b as usize].alive);
        let now = self.now;
        let l = self.link(a, b);
        if !l.wired || l.partitioned || !alive_a || !alive_b {
            return;
        }
        l.connected = true;
        l.conn += 1;
        let conn = l.conn;
        let hs = l.latency * 2;
        self.push(
            now + hs,
            Ev::LinkUp {
                node: a,
                peer: b,
                conn,
            },
        );
        self.push(
            now + hs,
            Ev::LinkUp {
                node: b,
                peer: a,
                conn,
            },
        );
    }

    /// Close a connection at once (both sides see `LinkDown` after the latency).
    pub fn disconnect(&mut self, a: u32, b: u32, leaving_side: Option<u32>) {
        let now = self.now;
        let l = self.link(a, b);
        if !l.connected {
            return;
        }
        l.connected = false;
        l.conn += 1;
        let lat = l.latency;
        self.push(
            now + lat,
            Ev::LinkDown {
                node: a,
                peer: b,
                leaving: leaving_side == Some(b),
            },
        );
        self.push(
            now + lat,
            Ev::LinkDown {
                node: b,
                peer: a,
                leaving: leaving_side == Some(a),
            },
        );
    }

    /// Reconnect a wired pair (after `disconnect`).
    pub fn reconnect(&mut self, a: u32, b: u32) {
        if !self.link(a, b).connected {
            self.connect(a, b);
        }
    }

    /// Cut the network between `a` and `b`: traffic is dropped, the connection
    /// idle-times-out after `idle_timeout` unless healed before.
    pub fn partition(&mut self, a: u32, b: u32) {
        let now = self.now;
        let idle = self.cfg.idle_timeout;
        let l = self.link(a, b);
        if l.partitioned {
            return;
        }
        l.partitioned = true;
        if l.connected {
            let conn = l.conn;
            self.push(now + idle, Ev::IdleClose { a, b, conn });
        }
    }

    pub fn heal(&mut self, a: u32, b: u32) {
        let now = self.now;
        let delay = self.cfg.reconnect_delay;
        let l = self.link(a, b);
        if !l.partitioned {
            return;
        }
        l.partitioned = false;
        if l.wired && !l.connected {
            self.push(now + delay, Ev::Connect { a, b });
        }
    }

    /// Partition every pair across the two groups.
    pub fn split(&mut self, left: &[u32], right: &[u32]) {
        for &a in left {
            for &b in right {
                self.partition(a, b);
            }
        }
    }

    pub fn join(&mut self, left: &[u32], right: &[u32]) {
        for &a in left {
            for &b in right {
                self.heal(a, b);
            }
        }
    }

    pub fn set_latency(&mut self, a: u32, b: u32, latency: Duration) {
        self.link(a, b).latency = latency;
    }

    pub fn set_loss(&mut self, a: u32, b: u32, loss: f64) {
        self.link(a, b).loss = loss;
    }

    /// kill -9: the member stops; its peers' connections idle-time-out later.
    pub fn kill(&mut self, id: u32) {
        self.nodes[id as usize].alive = false;
        self.nodes[id as usize].timer_at = None;
        let now = self.now;
        let idle = self.cfg.idle_timeout;
        let conns: Vec<(u32, u32, u64)> = self
            .links
            .iter()
            .filter(|((a, b), l)| (*a == id || *b == id) && l.connected)
            .map(|((a, b), l)| (*a, *b, l.conn))
            .collect();
        for (a, b, conn) in conns {
            self.push(now + idle, Ev::IdleClose { a, b, conn });
        }
    }

    /// Start a killed or left member again with a higher incarnation.
    pub fn restart(&mut self, id: u32) {
        let n = self.len();
        let inc = self.nodes[id as usize].incarnation + 1_000;
        let m = self.fresh_core(id, n, inc);
        let node = &mut self.nodes[id as usize];
        node.m = m;
        node.alive = true;
        node.incarnation = inc;
        node.timer_at = None;
        node.views.clear();
        node.heartbeats.clear();
        self.drain(id);
        let delay = self.cfg.reconnect_delay;
        let now = self.now;
        for peer in 0..n {
            if peer != id && self.nodes[peer as usize].alive {
                let l = self.link(id, peer);
                if l.wired && !l.partitioned {
                    // A new connection replaces any stale one.
                    l.connected = false;
                    self.push(now + delay, Ev::Connect { a: id, b: peer });
                }
            }
        }
    }

    /// Graceful stop: `leave()`, then the connections close with "leaving".
    pub fn leave(&mut self, id: u32) {
        let now = self.instant();
        self.nodes[id as usize].m.leave(now);
        self.drain(id);
        self.nodes[id as usize].alive = false;
        let peers: Vec<u32> = (0..self.len()).filter(|p| *p != id).collect();
        for p in peers {
            // The daemon closes after sending: leave the left record a head start.
            let now = self.now;
            let l = self.link(id, p);
            if l.connected {
                l.connected = false;
                l.conn += 1;
                let at = now + l.latency + Duration::from_millis(1);
                self.push(
                    at,
                    Ev::LinkDown {
                        node: p,
                        peer: id,
                        leaving: true,
                    },
                );
            }
        }
    }

    /// Every message to `id` is processed `delay` late (a member that answers late).
    pub fn set_slow(&mut self, id: u32, delay: Duration) {
        self.nodes[id as usize].extra_delay = delay;
    }

    /// `id` processes nothing for `d` (a stall); everything queued is handled afterwards.
    pub fn stall(&mut self, id: u32, d: Duration) {
        self.nodes[id as usize].stall_until = self.now + d;
    }

    pub fn broadcast(&mut self, from: u32, payload: Vec<u8>) -> EventId<u32> {
        let now = self.instant();
        let id = self.nodes[from as usize].m.broadcast(payload, now);
        self.broadcasts.insert(id, self.now);
        self.drain(from);
        id
    }

    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    pub fn run_until(&mut self, until: Duration) {
        while let Some(top) = self.queue.peek() {
            if top.at > until {
                break;
            }
            let q = self.queue.pop().expect("peeked");
            self.now = self.now.max(q.at);
            self.process(q.ev);
        }
        self.now = self.now.max(until);
    }

    fn process(&mut self, ev: Ev) {
        let node = match &ev {
            Ev::Deliver { to, .. } => Some(*to),
            Ev::LinkUp { node, .. }
            | Ev::LinkDown { node, .. }
            | Ev::Timer { node, .. }
            | Ev::Acked { node, .. } => Some(*node),
            _ => None,
        };
        // A heartbeat only reaches the node's kernel: it neither waits out a stall nor
        // wakes the node (read at its next wake-up).
        let heartbeat = matches!(ev, Ev::Deliver { datagram: true, .. });
        if let Some(n) = node {
            let nd = &self.nodes[n as usize];
            if !nd.alive {
                return;
            }
            if self.now < nd.stall_until && !heartbeat {
                let at = nd.stall_until;
                self.push(at, ev);
                return;
            }
        }
        let now = self.instant();
        if let (Some(n), false) = (node, heartbeat) {
            self.read_heartbeats(n, now);
        }
        match ev {
            Ev::Deliver {
                to,
                from,
                bytes,
                conn,
                sent,
                datagram,
            } => {
                let l = self.link(to, from);
                if !l.carries(conn) {
                    self.stats.dropped += 1;
                    return;
                }
                if datagram {
                    let digest = match Message::<u32>::decode(&bytes) {
                        Ok(Message::Beat { digest }) => digest,
                        _ => unreachable!("only beats travel as heartbeats"),
                    };
                    self.nodes[to as usize].heartbeats.push((from, digest, now));
                    return;
                }
                let latency = l.latency;
                let back = self.now + latency;
                let msg =
                    Message::<u32>::decode(&bytes).expect("simulated peers send valid messages");
                self.nodes[to as usize]
                    .m
                    .handle_input(Input::Message { from, msg }, now);
                self.drain(to);
                let ack = Ev::Acked {
                    node: from,
                    peer: to,
                    conn,
                    sent,
                };
                self.push(back, ack);
            }
            Ev::Acked {
                node,
                peer,
                conn,
                sent,
            } => {
                if !self.link(node, peer).carries(conn) {
                    return;
                }
                let at = self.base + sent;
                self.nodes[node as usize]
                    .m
                    .handle_input(Input::Heard { peer, at }, now);
                self.drain(node);
            }
            Ev::LinkUp { node, peer, conn } => {
                let l = self.link(node, peer);
                if !l.connected || l.conn != conn {
                    return;
                }
                let rtt = l.latency * 2;
                let addr = Some(std::net::SocketAddr::from((
                    [10, 0, (peer >> 8) as u8, peer as u8],
                    7000,
                )));
                self.nodes[node as usize].m.handle_input(
                    Input::LinkUp {
                        peer,
                        rtt,
                        addr,
                        datagram: self.cfg.datagram_beats,
                    },
                    now,
                );
                self.drain(node);
            }
            Ev::LinkDown {
                node,
                peer,
                leaving,
            } => {
                self.nodes[node as usize]
                    .m
                    .handle_input(Input::LinkDown { peer, leaving }, now);
                self.drain(node);
            }
            Ev::Timer { node, at } => {
                if self.nodes[node as usize].timer_at != Some(at) {
                    return;
                }
                self.nodes[node as usize].timer_at = None;
                self.nodes[node as usize].m.handle_timeout(now);
                self.drain(node);
            }
            Ev::IdleClose { a, b, conn } => {
                // Only a connection that is still silent times out (a healed one carries
                // traffic again).
                let dead = !self.nodes[a as usize].alive || !self.nodes[b as usize].alive;
                let l = self.link(a, b);
                if l.connected && l.conn == conn && (l.partitioned || dead) {
                    l.connected = false;
                    l.conn += 1;
                    let now = self.now;
                    self.push(
                        now,
                        Ev::LinkDown {
                            node: a,
                            peer: b,
                            leaving: false,
                        },
                    );
                    self.push(
                        now,
                        Ev::LinkDown {
                            node: b,
                            peer: a,
                            leaving: false,
                        },
                    );
                }
            }
            Ev::Connect { a, b } => self.reconnect(a, b),
        }
    }

    /// The node woke up: the heartbeats that arrived since its last wake-up go in, dated
    /// when they arrived (as the daemon does).
    fn read_heartbeats(&mut self, id: u32, now: Instant) {
        let nd = &mut self.nodes[id as usize];
        for (peer, digest, at) in std::mem::take(&mut nd.heartbeats) {
            nd.m.handle_input(Input::Beat { peer, at, digest }, now);
        }
    }

    /// Execute a node's outputs and re-arm its timer.
    fn drain(&mut self, id: u32) {
        while let Some(out) = self.nodes[id as usize].m.poll_output() {
            match out {
                Output::Send { to, msg } => self.transmit(id, to, msg),
                Output::State { peer, view } => {
                    self.log.push(Transition {
                        at: self.now,
                        observer: id,
                        peer,
                        state: view.state,
                        via: view.via,
                    });
                    self.nodes[id as usize].views.insert(peer, view);
                }
                Output::Deliver { id: ev, .. } => self.deliveries.push((self.now, id, ev)),
            }
        }
        let t = self.nodes[id as usize].m.poll_timeout();
        let node = &mut self.nodes[id as usize];
        if node.alive && t != node.timer_at {
            node.timer_at = t;
            if let Some(at) = t {
                let d = at.saturating_duration_since(self.base).max(self.now);
                self.push(d, Ev::Timer { node: id, at });
            }
        }
    }

    fn transmit(&mut self, from: u32, to: u32, msg: Message<u32>) {
        if from == to {
            return;
        }
        let bytes = msg.encode();
        let (connected, conn, latency, loss, partitioned) = {
            let l = self.link(from, to);
            (l.connected, l.conn, l.latency, l.loss, l.partitioned)
        };
        if !connected {
            self.stats.dropped += 1;
            return;
        }
        self.stats.messages += 1;
        self.stats.bytes += bytes.len() as u64;
        *self.stats.by_kind.entry(msg.kind()).or_default() += 1;
        let s = &mut self.stats.sent[from as usize];
        s.0 += 1;
        s.1 += bytes.len() as u64;
        if let Message::Gossip { items } = &msg {
            for item in items {
                if let Item::Event(e) = item {
                    *self.stats.event_tx.entry(e.id).or_default() += 1;
                }
            }
        }
        if partitioned || (loss > 0.0 && self.rng.gen_bool(loss)) {
            self.stats.dropped += 1;
            return;
        }
        let extra = self.nodes[to as usize].extra_delay;
        let at = self.now + latency + extra;
        let datagram = self.cfg.datagram_beats && matches!(msg, Message::Beat { .. });
        self.push(
            at,
            Ev::Deliver {
                to,
                from,
                bytes,
                conn,
                sent: self.now,
                datagram,
            },
        );
    }
}
