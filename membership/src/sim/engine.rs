//! The simulator's event loop: running virtual time forward, handing events to the
//! cores, executing their outputs over the simulated links.

use std::time::{Duration, Instant};

use rand::Rng;

use super::state::{Ev, Sim, Transition};
use crate::io::{Input, Output};
use crate::message::{Item, Message};

impl Sim {
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
                if !self.link(to, from).carries(conn) {
                    self.stats.dropped += 1;
                    return;
                }
                self.stats.received[to as usize] += 1;
                if !datagram {
                    self.stats.wakeups[to as usize] += 1;
                }
                let l = self.link(to, from);
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
                self.stats.wakeups[node as usize] += 1;
                self.nodes[node as usize].m.handle_timeout(now);
                // A deadline the core does not clear would spin its driver (and look
                // like a stall of its own to the core).
                let next = self.nodes[node as usize].m.poll_timeout();
                assert!(
                    next.is_none_or(|t| t > now),
                    "node {node}: wake-up at {next:?} still due after handling it at {now:?}: {}",
                    self.nodes[node as usize].m.debug_overdue()
                );
                self.drain(node);
                self.close_silent(node, now);
            }
            Ev::IdleClose { a, b, conn } => {
                // Only a connection that is still silent times out (a healed one carries
                // traffic again).
                let dead = !self.nodes[a as usize].alive || !self.nodes[b as usize].alive;
                let l = self.link(a, b);
                if l.connected && l.conn == conn && l.stale {
                    self.drop_stale(a, b);
                } else if l.connected && l.conn == conn && (l.partitioned || dead) {
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

    /// Like the daemon after each timer wake-up: close the connections whose peer the core
    /// reports silent for `close_silent`, and dial again.
    fn close_silent(&mut self, node: u32, now: Instant) {
        let Some(limit) = self.cfg.close_silent else {
            return;
        };
        let connected: Vec<u32> = (0..self.len())
            .filter(|p| *p != node && self.link(node, *p).connected)
            .collect();
        let core = &self.nodes[node as usize].m;
        let peers: Vec<u32> = connected
            .into_iter()
            .filter(|p| core.silence(p, now).is_some_and(|s| s >= limit))
            .collect();
        let delay = self.cfg.reconnect_delay;
        for p in peers {
            if self.link(node, p).stale {
                self.drop_stale(node, p);
            } else {
                self.disconnect(node, p, None);
                let at = self.now + delay;
                self.push(at, Ev::Connect { a: node, b: p });
            }
        }
    }

    /// The end that held the connection of a process that is gone closes it: only it
    /// sees the connection go; the new process can connect now.
    fn drop_stale(&mut self, a: u32, b: u32) {
        let l = self.link(a, b);
        l.stale = false;
        l.connected = false;
        l.conn += 1;
        let now = self.now;
        let delay = self.cfg.reconnect_delay;
        // Whichever end is the old process's peer sees the connection go.
        for (node, peer) in [(a, b), (b, a)] {
            if self.nodes[node as usize]
                .m
                .silence(&peer, self.base + now)
                .is_some()
            {
                self.push(
                    now,
                    Ev::LinkDown {
                        node,
                        peer,
                        leaving: false,
                    },
                );
            }
        }
        self.push(now + delay, Ev::Connect { a, b });
    }

    /// The node woke up: the heartbeats that arrived since its last wake-up go in, dated
    /// when they arrived (as the daemon does).
    fn read_heartbeats(&mut self, id: u32, now: Instant) {
        let nd = &mut self.nodes[id as usize];
        let beats = std::mem::take(&mut nd.heartbeats);
        if !beats.is_empty() {
            let inputs =
                beats
                    .into_iter()
                    .map(|(peer, digest, at)| Input::Beat { peer, at, digest });
            nd.m.handle_inputs(inputs, now);
        }
    }

    /// Execute a node's outputs and re-arm its timer.
    pub(super) fn drain(&mut self, id: u32) {
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
