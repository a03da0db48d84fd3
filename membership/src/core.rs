//! The membership state machine: direct-link failure detection (Ping/Ack, indirect
//! probes, suspicion), link records, peer views and routes.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::gossip::Seen;
use crate::message::{Event, EventId, Item, LinkEntry, Message, Record, MAX_PAYLOAD};
use crate::route::{self, Adjacency};
use crate::{Config, Input, NodeId, Output, PeerView, State};

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
pub(crate) enum LinkStatus {
    Active,
    Suspect,
    Dead,
}

pub(crate) struct Link<I> {
    pub(crate) rtt: Duration,
    pub(crate) addr: Option<SocketAddr>,
    pub(crate) announced_rtt: Duration,
    pub(crate) last_heard: Instant,
    ping: Option<(u64, Instant)>,
    srtt: Option<Duration>,
    rttvar: Duration,
    pub(crate) status: LinkStatus,
    /// Indirect probe of a suspected link: its nonce and the best helper that reached it.
    indirect: Option<(u64, Option<(I, Duration)>)>,
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
    pub(crate) me: I,
    pub(crate) cfg: Config,
    rng: StdRng,
    pub(crate) roster: BTreeSet<I>,
    pub(crate) links: BTreeMap<I, Link<I>>,
    /// Newest record of every member, our own included.
    pub(crate) records: BTreeMap<I, Record<I>>,
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
    pub(crate) lamport: u64,
    next_seq: u64,
    pub(crate) seen: BTreeMap<I, Seen>,
    pub(crate) recent: VecDeque<(Instant, Event<I>)>,
    next_nonce: u64,
    relays: BTreeMap<u64, Relay<I>>,
    views: BTreeMap<I, PeerView<I>>,
    topo_version: u64,
    views_version: u64,
    adj_cache: Option<(u64, Adjacency<I>)>,
    pub(crate) outbox: BTreeMap<I, Vec<Item<I>>>,
    pub(crate) outputs: VecDeque<Output<I>>,
    next_tick: Instant,
    next_ae: Instant,
    ae_cursor: Option<I>,
    pub(crate) digest_cache: Option<u64>,
    stopped: bool,
    pub(crate) stats: Stats,
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
        let next_tick = now + Duration::from_micros(phase);
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
            seen: BTreeMap::new(),
            recent: VecDeque::new(),
            next_nonce: 1,
            relays: BTreeMap::new(),
            views: BTreeMap::new(),
            topo_version: 1,
            views_version: 0,
            adj_cache: None,
            outbox: BTreeMap::new(),
            outputs: VecDeque::new(),
            next_tick,
            next_ae: next_tick + cfg.anti_entropy_interval,
            ae_cursor: None,
            digest_cache: None,
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
        self.seen.remove(&id);
        self.views.remove(&id);
        self.relays
            .retain(|_, r| r.requester != id && r.target != id);
        self.outbox.remove(&id);
        self.outputs
            .retain(|o| !matches!(o, Output::Send { to, .. } if *to == id));
        self.topo_changed();
    }

    pub fn handle_input(&mut self, input: Input<I>, now: Instant) {
        if self.stopped {
            return;
        }
        self.observe_clock(now);
        match input {
            Input::LinkUp { peer, rtt, addr } => {
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
                    indirect: None,
                };
                self.links.insert(peer, link);
                self.record_dirty = true;
                self.topo_changed();
                let msg = self.digest_full(true);
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
        }
        self.eval_links(now);
        self.finish();
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.stopped {
            return;
        }
        self.observe_clock(now);
        if now >= self.next_tick {
            while self.next_tick <= now {
                self.next_tick += self.cfg.probe_interval;
            }
            self.tick(now);
        }
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

    /// Next time [`Self::handle_timeout`] must run: one probe tick per `probe_interval`
    /// plus the rare per-link deadlines (a link turning suspect or dead).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.stopped {
            return None;
        }
        let mut t = self.next_tick;
        for link in self.links.values() {
            let d = match link.status {
                LinkStatus::Active => {
                    link.last_heard + self.cfg.probe_interval + self.link_timeout(link)
                }
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
        self.remember_event(now, event.clone());
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
                let items = self.outbox.entry(peer).or_default();
                if !items
                    .iter()
                    .any(|i| matches!(i, Item::Record(r) if r.origin == rec.origin))
                {
                    items.push(Item::Record(rec.clone()));
                }
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

    pub(crate) fn send(&mut self, to: I, msg: Message<I>) {
        self.outputs.push_back(Output::Send { to, msg });
    }

    pub(crate) fn topo_changed(&mut self) {
        self.topo_version += 1;
    }

    fn link_timeout(&self, link: &Link<I>) -> Duration {
        match link.srtt {
            None => self.cfg.probe_timeout,
            Some(s) => {
                (s * 2 + link.rttvar * 4).clamp(self.cfg.probe_timeout, self.cfg.probe_timeout_max)
            }
        }
    }

    /// Local health: a call much later than our own deadline means this process stalled;
    /// the stall is not the peers' silence.
    fn observe_clock(&mut self, now: Instant) {
        self.clock = self.clock.max(now);
        let Some(due) = self.poll_timeout() else {
            return;
        };
        if now > due + self.cfg.local_lag_tolerance {
            let lag = now - due;
            for link in self.links.values_mut() {
                link.last_heard = (link.last_heard + lag).min(now);
            }
        }
    }

    fn tick(&mut self, now: Instant) {
        let skip = self.cfg.probe_interval.mul_f32(self.cfg.ping_skip_fraction);
        let peers: Vec<I> = self.links.keys().copied().collect();
        for peer in peers {
            let (silence, status, has_success) = {
                let l = &self.links[&peer];
                (
                    now.saturating_duration_since(l.last_heard),
                    l.status,
                    matches!(l.indirect, Some((_, Some(_)))),
                )
            };
            if silence >= skip {
                self.ping(peer, now);
            }
            if status == LinkStatus::Suspect && !has_success {
                self.indirect_probe(peer);
            }
        }
        if now >= self.next_ae {
            while self.next_ae <= now {
                self.next_ae += self.cfg.anti_entropy_interval;
            }
            if self.rtt_dirty {
                self.record_dirty = true;
            }
            self.expire_events(now);
            self.anti_entropy();
        }
    }

    fn ping(&mut self, peer: I, now: Instant) {
        let nonce = self.next_nonce;
        self.next_nonce += 1;
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        link.ping = Some((nonce, now));
        let suspect = link.status != LinkStatus::Active;
        self.send(peer, Message::Ping { nonce, suspect });
    }

    fn anti_entropy(&mut self) {
        let active: Vec<I> = self
            .links
            .iter()
            .filter(|(_, l)| l.status == LinkStatus::Active)
            .map(|(p, _)| *p)
            .collect();
        if active.is_empty() {
            return;
        }
        let next = match self.ae_cursor {
            Some(c) => active.iter().copied().find(|p| *p > c).unwrap_or(active[0]),
            None => active[0],
        };
        self.ae_cursor = Some(next);
        let hash = self.digest_hash();
        self.send(next, Message::Digest { hash });
    }

    /// SWIM ping-req: ask up to k members that announce a live link to `target`.
    fn indirect_probe(&mut self, target: I) {
        let mut helpers: Vec<I> = self
            .links
            .iter()
            .filter(|(p, l)| **p != target && l.status == LinkStatus::Active)
            .filter(|(p, _)| {
                self.records
                    .get(*p)
                    .is_some_and(|r| r.links.iter().any(|e| e.peer == target))
            })
            .map(|(p, _)| *p)
            .collect();
        helpers.shuffle(&mut self.rng);
        helpers.truncate(self.cfg.indirect_fanout);
        if helpers.is_empty() {
            return;
        }
        let nonce = self.next_nonce;
        self.next_nonce += 1;
        if let Some(link) = self.links.get_mut(&target) {
            link.indirect = Some((nonce, None));
        }
        self.stats.indirect_probes += 1;
        for h in helpers {
            self.send(h, Message::PingReq { target, nonce });
        }
    }

    /// Re-evaluate every link's status from its silence.
    fn eval_links(&mut self, now: Instant) {
        let peers: Vec<I> = self.links.keys().copied().collect();
        for peer in peers {
            let link = &self.links[&peer];
            let silence = now.saturating_duration_since(link.last_heard);
            let status = if silence < self.cfg.probe_interval + self.link_timeout(link) {
                LinkStatus::Active
            } else if silence < self.cfg.unreachable_after {
                LinkStatus::Suspect
            } else {
                LinkStatus::Dead
            };
            self.set_status(peer, status, now);
        }
    }

    fn set_status(&mut self, peer: I, status: LinkStatus, now: Instant) {
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        let old = link.status;
        if old == status {
            return;
        }
        link.status = status;
        if status != LinkStatus::Suspect {
            link.indirect = None;
        }
        if old == LinkStatus::Active || status == LinkStatus::Active {
            self.record_dirty = true;
        }
        self.topo_changed();
        if status == LinkStatus::Suspect {
            self.ping(peer, now);
            self.indirect_probe(peer);
        }
    }

    fn heard(&mut self, from: I, now: Instant) {
        if let Some(link) = self.links.get_mut(&from) {
            link.last_heard = now;
        }
        self.set_status(from, LinkStatus::Active, now);
    }

    fn on_message(&mut self, from: I, msg: Message<I>, now: Instant) {
        if from == self.me || !self.roster.contains(&from) {
            return;
        }
        self.heard(from, now);
        match msg {
            Message::Ping { nonce, suspect } => {
                self.send(from, Message::Ack { nonce });
                if suspect {
                    self.refute(now);
                }
            }
            Message::Ack { nonce } => {
                if let Some(r) = self.relays.get(&nonce) {
                    if r.target == from {
                        let r = self.relays.remove(&nonce).expect("present");
                        let measured = now.saturating_duration_since(r.sent);
                        let rtt = self
                            .links
                            .get(&from)
                            .map_or(measured, |l| l.rtt.min(measured));
                        let msg = Message::PingReqAck {
                            target: from,
                            nonce: r.nonce,
                            ok: true,
                            rtt_us: micros(rtt),
                        };
                        self.send(r.requester, msg);
                    }
                    return;
                }
                if let Some(link) = self.links.get_mut(&from) {
                    if let Some((n, sent)) = link.ping {
                        if n == nonce {
                            link.ping = None;
                            let sample = now.saturating_duration_since(sent);
                            match link.srtt {
                                None => {
                                    link.srtt = Some(sample);
                                    link.rttvar = sample / 2;
                                }
                                Some(s) => {
                                    let diff = s.abs_diff(sample);
                                    link.rttvar = (link.rttvar * 3 + diff) / 4;
                                    link.srtt = Some((s * 7 + sample) / 8);
                                }
                            }
                        }
                    }
                }
            }
            Message::PingReq { target, nonce } => self.on_ping_req(from, target, nonce, now),
            Message::PingReqAck {
                target,
                nonce,
                ok,
                rtt_us,
            } => {
                let via_rtt = self.links.get(&from).map_or(Duration::ZERO, |l| l.rtt);
                if let Some(link) = self.links.get_mut(&target) {
                    if let Some((n, best)) = &mut link.indirect {
                        if *n == nonce && ok {
                            let total = via_rtt + Duration::from_micros(rtt_us as u64);
                            if best.is_none_or(|(_, b)| total < b) {
                                *best = Some((from, total));
                                self.topo_changed();
                            }
                        }
                    }
                }
            }
            Message::Gossip { items } => {
                for item in items {
                    self.on_item(from, item, now);
                }
            }
            Message::Digest { hash } => {
                if hash != self.digest_hash() {
                    let msg = self.digest_full(true);
                    self.send(from, msg);
                }
            }
            Message::DigestFull {
                reply,
                records,
                events,
            } => self.on_digest_full(from, reply, records, events),
        }
    }

    fn on_ping_req(&mut self, from: I, target: I, nonce: u64, now: Instant) {
        let usable = target != from
            && self
                .links
                .get(&target)
                .is_some_and(|l| l.status != LinkStatus::Dead);
        if !usable || self.relays.len() >= MAX_RELAYS {
            self.send(
                from,
                Message::PingReqAck {
                    target,
                    nonce,
                    ok: false,
                    rtt_us: 0,
                },
            );
            return;
        }
        let timeout = self.link_timeout(&self.links[&target]);
        let n2 = self.next_nonce;
        self.next_nonce += 1;
        self.relays.insert(
            n2,
            Relay {
                requester: from,
                nonce,
                target,
                sent: now,
                deadline: now + timeout,
            },
        );
        self.send(
            target,
            Message::Ping {
                nonce: n2,
                suspect: false,
            },
        );
    }

    /// Someone suspects us: announce a higher incarnation (at most once per probe interval).
    fn refute(&mut self, now: Instant) {
        if self
            .last_refute
            .is_some_and(|t| now.saturating_duration_since(t) < self.cfg.probe_interval)
        {
            return;
        }
        self.last_refute = Some(now);
        self.incarnation += 1;
        self.version = 0;
        self.record_dirty = true;
        self.record_urgent = true;
        self.stats.refutations += 1;
    }

    pub(crate) fn on_record(&mut self, from: I, rec: Record<I>, now: Instant) {
        if rec.origin == self.me {
            if rec.key() >= (self.incarnation, self.version) {
                // A newer record of ourselves (an earlier run, or a left record): refute.
                self.incarnation = self.incarnation.max(rec.incarnation) + 1;
                self.version = 0;
                self.record_dirty = true;
                self.record_urgent = true;
            }
            return;
        }
        if !self.roster.contains(&rec.origin) {
            return;
        }
        let prev = self.records.get(&rec.origin).map(|r| r.incarnation);
        if self
            .records
            .get(&rec.origin)
            .is_some_and(|r| r.key() >= rec.key())
        {
            self.stats.duplicates += 1;
            return;
        }
        self.stats.records_applied += 1;
        if prev.is_some_and(|p| rec.incarnation > p) && !rec.left {
            // Refutation: the member is alive; give a suspected link a fresh suspicion period.
            let timeout = self.links.get(&rec.origin).map(|l| self.link_timeout(l));
            if let (Some(link), Some(t)) = (self.links.get_mut(&rec.origin), timeout) {
                if link.status == LinkStatus::Suspect {
                    let floor = now
                        .checked_sub(self.cfg.probe_interval + t)
                        .unwrap_or(link.last_heard);
                    link.last_heard = link.last_heard.max(floor);
                }
            }
        }
        self.records.insert(rec.origin, rec.clone());
        self.digest_cache = None;
        self.topo_changed();
        self.disseminate(Item::Record(rec), Some(from));
    }

    fn publish_record(&mut self) {
        self.record_dirty = false;
        self.record_urgent = false;
        self.last_publish = Some(self.clock);
        self.rtt_dirty = false;
        self.version += 1;
        let roster = &self.roster;
        let mut links: Vec<LinkEntry<I>> = Vec::new();
        for (peer, link) in self.links.iter_mut() {
            if link.status == LinkStatus::Active && roster.contains(peer) {
                link.announced_rtt = link.rtt;
                links.push(LinkEntry {
                    peer: *peer,
                    rtt_us: micros(link.rtt),
                    addr: link.addr,
                });
            }
        }
        let rec = Record {
            origin: self.me,
            incarnation: self.incarnation,
            version: self.version,
            left: self.left,
            links,
        };
        self.records.insert(self.me, rec.clone());
        self.digest_cache = None;
        self.stats.records_published += 1;
        self.topo_changed();
        self.disseminate(Item::Record(rec), None);
    }

    /// End of every entry point: publish our record if it changed, recompute views, flush.
    fn finish(&mut self) {
        let due = self.record_urgent
            || self
                .last_publish
                .is_none_or(|p| self.clock >= p + self.cfg.record_min_interval);
        if self.record_dirty && due && !self.stopped {
            self.publish_record();
        }
        self.recompute_views();
        self.flush_outbox();
    }

    pub(crate) fn is_left(&self, id: &I) -> bool {
        let rec = self.records.get(id);
        if rec.is_some_and(|r| r.left) {
            return true;
        }
        match self.left_marks.get(id) {
            Some(m) => rec.is_none_or(|r| r.incarnation <= *m),
            None => false,
        }
    }

    /// Live links as announced: ours from the link table, others' from their records.
    /// A left member contributes nothing unless it is `root`.
    pub(crate) fn adjacency(&mut self) -> Adjacency<I> {
        if let Some((v, adj)) = &self.adj_cache {
            if *v == self.topo_version {
                return adj.clone();
            }
        }
        let adj = self.build_adjacency(None);
        self.adj_cache = Some((self.topo_version, adj.clone()));
        adj
    }

    pub(crate) fn build_adjacency(&self, root: Option<I>) -> Adjacency<I> {
        let left: HashSet<I> = self
            .records
            .keys()
            .chain(self.left_marks.keys())
            .filter(|id| self.is_left(id))
            .copied()
            .collect();
        let known: HashSet<I> = self
            .roster
            .iter()
            .copied()
            .filter(|id| !left.contains(id))
            .chain([self.me])
            .collect();
        let mut adj: Adjacency<I> = BTreeMap::new();
        if !self.left {
            let mine = self
                .links
                .iter()
                .filter(|(p, l)| l.status == LinkStatus::Active && known.contains(p))
                .map(|(p, l)| (*p, micros(l.rtt) as u64))
                .collect();
            adj.insert(self.me, mine);
        }
        for (origin, rec) in &self.records {
            if *origin == self.me || !self.roster.contains(origin) {
                continue;
            }
            if left.contains(origin) && Some(*origin) != root {
                continue;
            }
            let edges = rec
                .links
                .iter()
                .filter(|e| e.peer != *origin && known.contains(&e.peer))
                .map(|e| (e.peer, e.rtt_us as u64))
                .collect();
            adj.insert(*origin, edges);
        }
        adj
    }

    fn recompute_views(&mut self) {
        if self.views_version == self.topo_version {
            return;
        }
        self.views_version = self.topo_version;
        let adj = self.adjacency();
        let paths = route::shortest_paths(&adj, self.me, micros(self.cfg.hop_penalty) as u64);
        // Addresses other members see each peer at.
        let mut seen_at: BTreeMap<I, Vec<SocketAddr>> = BTreeMap::new();
        for rec in self.records.values() {
            for e in &rec.links {
                if let Some(a) = e.addr {
                    let v = seen_at.entry(e.peer).or_default();
                    if !v.contains(&a) && v.len() < MAX_ADDRS {
                        v.push(a);
                    }
                }
            }
        }
        let roster: Vec<I> = self.roster.iter().copied().collect();
        for id in roster {
            let link = self.links.get(&id);
            let (state, via, rtt) = if self.is_left(&id) {
                (State::Left, None, None)
            } else {
                match link.map(|l| (l.status, l.indirect, l.rtt)) {
                    Some((LinkStatus::Active, _, rtt)) => (State::Active, None, Some(rtt)),
                    Some((LinkStatus::Suspect, Some((_, Some((h, total)))), _)) => {
                        (State::Indirect, Some(h), Some(total))
                    }
                    Some((LinkStatus::Suspect, _, rtt)) => (State::Suspect, None, Some(rtt)),
                    _ => match paths.get(&id) {
                        Some(&(_, rtt, first)) => (
                            State::Indirect,
                            Some(first),
                            Some(Duration::from_micros(rtt)),
                        ),
                        None => (State::Unreachable, None, None),
                    },
                }
            };
            let mut addrs: Vec<SocketAddr> = link.and_then(|l| l.addr).into_iter().collect();
            for a in seen_at.get(&id).into_iter().flatten() {
                if !addrs.contains(a) && addrs.len() < MAX_ADDRS {
                    addrs.push(*a);
                }
            }
            let view = PeerView {
                id,
                state,
                via,
                rtt,
                addrs,
            };
            let changed = match self.views.get(&id) {
                Some(old) => {
                    old.state != view.state || old.via != view.via || old.addrs != view.addrs
                }
                None => true,
            };
            if changed {
                self.outputs.push_back(Output::State {
                    peer: id,
                    view: view.clone(),
                });
            }
            self.views.insert(id, view);
        }
    }
}

pub(crate) fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}
