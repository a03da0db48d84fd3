//! A seeded, deterministic simulator: many [`Membership`] cores over an in-memory network
//! with virtual time. Every message is serialized with
//! [`Message::encode`](crate::Message::encode) and decoded with
//! [`Message::decode`](crate::Message::decode). Links have latency, loss and partitions;
//! connections behave like QUIC's: a partition or a killed peer makes the connection
//! idle-time-out after `idle_timeout`, healing reconnects, a graceful stop closes with
//! "leaving". Like the daemon, a member closes a connection whose peer its core reports
//! silent for `close_silent` and dials again.
//!
//! No wall clock (a base `Instant` plus simulated durations), no threads.

use std::collections::{BTreeMap, BinaryHeap};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::core::Membership;
use crate::message::EventId;
use crate::types::{PeerView, State};

mod engine;
mod observe;
mod state;

pub use observe::quantile;
use state::{Ev, Node, SimLink};
pub use state::{NetStats, Sim, SimConfig, Transition};

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
                received: vec![0; n as usize],
                wakeups: vec![0; n as usize],
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
                        stale: false,
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

    fn connect(&mut self, a: u32, b: u32) {
        let (alive_a, alive_b) = (self.nodes[a as usize].alive, self.nodes[b as usize].alive);
        let now = self.now;
        let l = self.link(a, b);
        if !l.wired || l.partitioned || l.stale || !alive_a || !alive_b {
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

    /// Start a killed or left member again with a higher incarnation; its peers' old
    /// connections to it are replaced by new ones.
    pub fn restart(&mut self, id: u32) {
        self.reincarnate(id);
        let delay = self.cfg.reconnect_delay;
        let now = self.now;
        for peer in 0..self.len() {
            if peer != id && self.nodes[peer as usize].alive {
                let l = self.link(id, peer);
                if l.wired && !l.partitioned {
                    // A new connection replaces any stale one.
                    l.connected = false;
                    l.stale = false;
                    self.push(now + delay, Ev::Connect { a: id, b: peer });
                }
            }
        }
    }

    /// A new core for `id`, with a higher incarnation.
    fn reincarnate(&mut self, id: u32) {
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
    }

    /// Start a killed member again, as a new process: the peers that still hold a
    /// connection to the old one keep it (it carries nothing) and refuse a new one until
    /// they close it themselves (see [`SimConfig::close_silent`]) or it idle-times-out.
    pub fn restart_new_process(&mut self, id: u32) {
        self.reincarnate(id);
        let n = self.len();
        let delay = self.cfg.reconnect_delay;
        let now = self.now;
        for peer in 0..n {
            if peer == id || !self.nodes[peer as usize].alive {
                continue;
            }
            let l = self.link(id, peer);
            if l.connected {
                l.stale = true;
            } else if l.wired && !l.partitioned {
                self.push(now + delay, Ev::Connect { a: id, b: peer });
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

    /// Makes `id` gentle (on battery) or not ([`Membership::set_gentle`]).
    pub fn set_gentle(&mut self, id: u32, gentle: bool) {
        let now = self.instant();
        self.nodes[id as usize].m.set_gentle(gentle, now);
        self.drain(id);
    }

    /// `node` measures a new round-trip time to `peer` (what the daemon feeds from
    /// its QUIC connection).
    pub fn set_rtt(&mut self, node: u32, peer: u32, rtt: Duration) {
        let now = self.instant();
        self.nodes[node as usize]
            .m
            .handle_input(crate::Input::Rtt { peer, rtt }, now);
        self.drain(node);
    }

    pub fn broadcast(&mut self, from: u32, payload: Vec<u8>) -> EventId<u32> {
        let now = self.instant();
        let id = self.nodes[from as usize].m.broadcast(payload, now);
        self.broadcasts.insert(id, self.now);
        self.drain(from);
        id
    }
}
