//! The membership state machine: direct-link failure detection (Ping/Ack, indirect
//! probes, suspicion), link records, peer views and routes.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::config::Config;
use crate::gossip::Gossip;
use crate::io::{Input, Output};
use crate::message::{Event, EventId, Item, LinkEntry, Message, Record, MAX_PAYLOAD};
use crate::route::{self, Adjacency};
use crate::types::{NodeId, PeerView, State};

mod probe;
mod views;

/// At most this many indirect probes are served for others at once.
const MAX_RELAYS: usize = 256;
/// At most this many addresses per peer are kept in a view.
const MAX_ADDRS: usize = 8;

/// Counters for tests and benchmarks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Gossip items (records or events) received that were already known.
    pub duplicates: u64,
    /// Broadcasts delivered.
    pub delivered: u64,
    /// Newer link records applied.
    pub records_applied: u64,
    /// Own link records published.
    pub records_published: u64,
    /// Times this member refuted a suspicion with a higher incarnation.
    pub refutations: u64,
    /// Indirect probes started (one per suspected link and round).
    pub indirect_probes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkStatus {
    Active,
    Suspect,
    Dead,
}

struct Link<I> {
    rtt: Duration,
    addr: Option<SocketAddr>,
    announced_rtt: Duration,
    last_heard: Instant,
    ping: Option<(u64, Instant)>,
    srtt: Option<Duration>,
    rttvar: Duration,
    status: LinkStatus,
    /// When we last sent a beat (or, on a link that is not active, a ping).
    beat_sent: Instant,
    /// When the peer's last beat arrived.
    beat_rcvd: Instant,
    /// Indirect probe of a suspected link: its nonce and the best helper that reached it.
    indirect: Option<(u64, Option<(I, Duration)>)>,
    /// Beats travel as unacknowledged datagrams: both sides beat.
    datagram: bool,
}

impl<I> Link<I> {
    /// This side beats the link: it sent the last beat, not the peer (with datagram
    /// beats, both sides do).
    fn beaten_here(&self) -> bool {
        self.datagram || self.beat_sent >= self.beat_rcvd
    }
}

struct Relay<I> {
    requester: I,
    nonce: u64,
    target: I,
    sent: Instant,
    deadline: Instant,
}

/// The membership core of one member. See the crate docs.
pub struct Membership<I: NodeId> {
    me: I,
    cfg: Config,
    rng: StdRng,
    roster: BTreeSet<I>,
    links: BTreeMap<I, Link<I>>,
    /// Newest record of every member, our own included.
    records: BTreeMap<I, Record<I>>,
    /// Members that closed their link to us saying "I am stopping", with the incarnation
    /// they had; a record with a higher incarnation supersedes the mark.
    left_marks: BTreeMap<I, u64>,
    incarnation: u64,
    version: u64,
    left: bool,
    record_dirty: bool,
    /// Publish without waiting for `record_min_interval` (first record, refutation).
    record_urgent: bool,
    last_publish: Option<Instant>,
    /// `now` of the current (or last) entry point.
    clock: Instant,
    rtt_dirty: bool,
    last_refute: Option<Instant>,
    lamport: u64,
    next_seq: u64,
    /// Dissemination: seen ids, recent events, queued items, the anti-entropy hash.
    gossip: Gossip<I>,
    next_nonce: u64,
    relays: BTreeMap<u64, Relay<I>>,
    views: BTreeMap<I, PeerView<I>>,
    topo_version: u64,
    views_version: u64,
    adj_cache: Option<(u64, Adjacency<I>)>,
    outputs: VecDeque<Output<I>>,
    next_ae: Instant,
    /// The link whose next beat carries the anti-entropy digest.
    ae_to: Option<I>,
    stopped: bool,
    stats: Stats,
}

impl<I: NodeId> Membership<I> {
    /// `incarnation` must grow across restarts (the daemon passes wall-clock ms at start).
    /// An invalid `cfg` is replaced by the default (call [`Config::validate`] at load).
    pub fn new(me: I, incarnation: u64, cfg: Config, now: Instant) -> Self {
        let cfg = if cfg.validate().is_ok() {
            cfg
        } else {
            Config::default()
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        me.hash(&mut h);
        incarnation.hash(&mut h);
        let mut rng = StdRng::seed_from_u64(h.finish());
        let phase = rng.gen_range(0..cfg.probe_interval.as_micros() as u64);
        let first = now + Duration::from_micros(phase);
        let mut m = Membership {
            me,
            rng,
            roster: BTreeSet::new(),
            links: BTreeMap::new(),
            records: BTreeMap::new(),
            left_marks: BTreeMap::new(),
            incarnation,
            version: 0,
            left: false,
            record_dirty: true,
            record_urgent: true,
            last_publish: None,
            clock: now,
            rtt_dirty: false,
            last_refute: None,
            lamport: 0,
            next_seq: incarnation.saturating_mul(1 << 20).max(1),
            gossip: Gossip::new(&cfg),
            next_nonce: 1,
            relays: BTreeMap::new(),
            views: BTreeMap::new(),
            topo_version: 1,
            views_version: 0,
            adj_cache: None,
            outputs: VecDeque::new(),
            next_ae: first + cfg.anti_entropy_interval,
            ae_to: None,
            stopped: false,
            stats: Stats::default(),
            cfg,
        };
        m.finish();
        m
    }

    pub fn id(&self) -> I {
        self.me
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Lamport clock: greater than every delivered or sent event's.
    pub fn lamport(&self) -> u64 {
        self.lamport
    }

    /// The trusted roster; messages from or about others are ignored.
    pub fn set_members(&mut self, members: impl IntoIterator<Item = I>) {
        let new: BTreeSet<I> = members.into_iter().filter(|m| *m != self.me).collect();
        let gone: Vec<I> = self.roster.difference(&new).copied().collect();
        for id in gone {
            self.forget(id);
        }
        self.roster = new;
        self.topo_changed();
        self.record_dirty = true;
        self.finish();
    }

    pub fn add_member(&mut self, id: I) {
        if id != self.me && self.roster.insert(id) {
            self.topo_changed();
            self.finish();
        }
    }

    /// Revoked: forgotten, never routed to again.
    pub fn remove_member(&mut self, id: I) {
        if self.roster.contains(&id) {
            self.forget(id);
            self.finish();
        }
    }

    fn forget(&mut self, id: I) {
        self.roster.remove(&id);
        if self.links.remove(&id).is_some() {
            self.record_dirty = true;
        }
        self.records.remove(&id);
        self.left_marks.remove(&id);
        self.gossip.forget(&id);
        self.views.remove(&id);
        self.relays
            .retain(|_, r| r.requester != id && r.target != id);
        self.outputs
            .retain(|o| !matches!(o, Output::Send { to, .. } if *to == id));
        self.topo_changed();
    }

    pub fn handle_input(&mut self, input: Input<I>, now: Instant) {
        if self.stopped {
            return;
        }
        self.observe_clock(now);
        // Done in whichever wake-up comes first after it is due: a member that only
        // receives beats needs no timer of its own for it.
        self.periodic(now);
        match input {
            Input::LinkUp {
                peer,
                rtt,
                addr,
                datagram,
            } => {
                if peer == self.me || !self.roster.contains(&peer) {
                    return;
                }
                let link = Link {
                    rtt,
                    addr,
                    announced_rtt: rtt,
                    last_heard: now,
                    ping: None,
                    srtt: None,
                    rttvar: Duration::ZERO,
                    status: LinkStatus::Active,
                    beat_sent: now,
                    beat_rcvd: now,
                    indirect: None,
                    datagram,
                };
                self.links.insert(peer, link);
                self.record_dirty = true;
                self.topo_changed();
                let msg = self.gossip.digest_full(true, &self.records);
                self.send(peer, msg);
            }
            Input::LinkDown { peer, leaving } => {
                if let Some(link) = self.links.remove(&peer) {
                    if link.status == LinkStatus::Active {
                        self.record_dirty = true;
                    }
                    self.topo_changed();
                }
                if leaving && self.roster.contains(&peer) {
                    let inc = self.records.get(&peer).map_or(0, |r| r.incarnation);
                    self.left_marks.insert(peer, inc);
                    self.topo_changed();
                }
            }
            Input::Rtt { peer, rtt } => {
                if let Some(link) = self.links.get_mut(&peer) {
                    link.rtt = rtt;
                    let old = link.announced_rtt;
                    let diff = rtt.abs_diff(old);
                    if diff > self.cfg.rtt_change_min.max(old / 4) {
                        self.rtt_dirty = true;
                    }
                    if let Some(v) = self.views.get_mut(&peer) {
                        if v.state == State::Active {
                            v.rtt = Some(rtt);
                        }
                    }
                }
            }
            Input::Message { from, msg } => self.on_message(from, msg, now),
            Input::Heard { peer, at } => self.heard_at(peer, at.min(now)),
            Input::Beat { peer, at, digest } => {
                if !self.roster.contains(&peer) {
                    return;
                }
                let at = at.min(now);
                self.heard_at(peer, at);
                self.beat_received(peer, at, digest);
            }
        }
        self.eval_links(now);
        self.finish();
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.stopped {
            return;
        }
        self.observe_clock(now);
        self.periodic(now);
        self.beats(now);
        let expired: Vec<u64> = self
            .relays
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(n, _)| *n)
            .collect();
        for n in expired {
            if let Some(r) = self.relays.remove(&n) {
                let msg = Message::PingReqAck {
                    target: r.target,
                    nonce: r.nonce,
                    ok: false,
                    rtt_us: 0,
                };
                self.send(r.requester, msg);
            }
        }
        self.eval_links(now);
        self.finish();
    }

    /// Next time [`Self::handle_timeout`] must run: the next beat due (on an idle mesh
    /// one wake-up per `probe_interval` on the side that beats, none on the other), the
    /// anti-entropy interval, and the rare per-link deadlines (a link turning suspect or
    /// dead).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.stopped {
            return None;
        }
        // The periodic work runs at any entry point once due; its own wake-up is only the
        // fallback when nothing else happened for an interval more.
        let mut t = self.next_ae + self.cfg.anti_entropy_interval;
        for (peer, link) in &self.links {
            t = t.min(self.beat_due(peer, link));
            let d = match link.status {
                LinkStatus::Active => link.last_heard + self.active_limit(link),
                LinkStatus::Suspect => link.last_heard + self.cfg.unreachable_after,
                LinkStatus::Dead => continue,
            };
            t = t.min(d);
        }
        for r in self.relays.values() {
            t = t.min(r.deadline);
        }
        if self.record_dirty {
            if let Some(p) = self.last_publish {
                t = t.min(p + self.cfg.record_min_interval);
            }
        }
        Some(t)
    }

    pub fn poll_output(&mut self) -> Option<Output<I>> {
        self.outputs.pop_front()
    }

    /// Broadcast a user or roster event: every other member delivers it once.
    /// A payload over [`MAX_PAYLOAD`] is not sent (see [`Self::try_broadcast`]).
    pub fn broadcast(&mut self, payload: Vec<u8>, now: Instant) -> EventId<I> {
        match self.try_broadcast(payload, now) {
            Ok(id) | Err(id) => id,
        }
    }

    /// Like [`Self::broadcast`], but `Err` (with the unused id) when the payload is over
    /// [`MAX_PAYLOAD`] or this member has left.
    pub fn try_broadcast(
        &mut self,
        payload: Vec<u8>,
        now: Instant,
    ) -> Result<EventId<I>, EventId<I>> {
        let id = EventId {
            origin: self.me,
            seq: self.next_seq,
        };
        if payload.len() > MAX_PAYLOAD || self.stopped {
            return Err(id);
        }
        self.observe_clock(now);
        self.next_seq += 1;
        self.lamport += 1;
        let event = Event {
            id,
            lamport: self.lamport,
            payload,
        };
        self.gossip.remember_event(now, event.clone());
        self.disseminate(Item::Event(event), None);
        self.finish();
        Ok(id)
    }

    /// Graceful stop: a `left` record goes to every direct neighbour at once (and on
    /// through the mesh); afterwards this core is inert.
    pub fn leave(&mut self, _now: Instant) {
        if self.stopped {
            return;
        }
        self.left = true;
        self.publish_record();
        if let Some(rec) = self.records.get(&self.me).cloned() {
            let all: Vec<I> = self.links.keys().copied().collect();
            for peer in all {
                self.gossip.queue_record(peer, &rec);
            }
        }
        self.stopped = true;
        self.flush_outbox();
    }

    pub fn peer(&self, id: &I) -> Option<PeerView<I>> {
        self.views.get(id).cloned()
    }

    pub fn peers(&self) -> impl Iterator<Item = PeerView<I>> + '_ {
        self.views.values().cloned()
    }

    /// How long the direct link to `peer` has been silent (nothing heard from it at all),
    /// or `None` without a link.
    pub fn silence(&self, peer: &I, now: Instant) -> Option<Duration> {
        let link = self.links.get(peer)?;
        Some(now.saturating_duration_since(link.last_heard))
    }

    /// `dest` itself when direct (`active`/`suspect`), the relay when `indirect`, `None`
    /// when `unreachable`, `left` or unknown.
    pub fn next_hop(&self, dest: &I) -> Option<I> {
        let v = self.views.get(dest)?;
        match v.state {
            State::Active | State::Suspect => Some(*dest),
            State::Indirect => v.via,
            State::Unreachable | State::Left => None,
        }
    }

    // ---- internals ----

    fn send(&mut self, to: I, msg: Message<I>) {
        self.outputs.push_back(Output::Send { to, msg });
    }

    fn topo_changed(&mut self) {
        self.topo_version += 1;
    }

    /// Pack the queued gossip into `Send` outputs.
    fn flush_outbox(&mut self) {
        let outputs = &mut self.outputs;
        self.gossip
            .flush(|to, msg| outputs.push_back(Output::Send { to, msg }));
    }
}

pub(crate) fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}
