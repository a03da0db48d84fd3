//! The membership state machine: failure detection by monitors (each member beats a few
//! others chosen on monitoring rings; they watch it and report its failure in their link
//! records), link records, peer views and routes.

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
use crate::link::{Broken, Link, LinkStatus, Relay};
use crate::message::{Event, EventId, Item, LinkEntry, Message, Record, Watch, MAX_PAYLOAD};
use crate::rings::{Rings, Roles};
use crate::route::{self, Adjacency};
use crate::types::{NodeId, PeerView, State};

mod probe;
mod receive;
mod views;
mod watch;

/// At most this many indirect probes are served for others at once.
const MAX_RELAYS: usize = 256;
/// At most this many addresses per peer are kept in a view.
const MAX_ADDRS: usize = 8;
/// A monitor that does not hear our beats is tried again after this many intervals.
const BROKEN_RETRY_INTERVALS: u32 = 20;
/// How long a gentle member whose watchers all went out of sight keeps its state while a
/// member on our side takes it over and pings it.
const GENTLE_ORPHAN_GRACE: Duration = Duration::from_secs(5);

/// What the dissemination trees are built over, as of one topology version: the
/// adjacency without a root, and the members some record reports lost.
struct AdjCache<I> {
    version: u64,
    adj: Adjacency<I>,
    reported: HashSet<I>,
}

/// Whether `id` is gentle, as member `me` (gentle itself or not: `own`) sees it from
/// `records`: its own setting, or what the newest record of `id` says.
fn gentle_in<I: NodeId>(me: I, own: bool, records: &BTreeMap<I, Record<I>>, id: &I) -> bool {
    if *id == me {
        return own;
    }
    records.get(id).is_some_and(|r| r.gentle && !r.left)
}

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
    /// Times this member's set of monitors changed.
    pub monitor_changes: u64,
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
    /// When a newer record of each member arrived: it was up then.
    record_heard: BTreeMap<I, Instant>,
    /// Members that closed their link to us saying "I am stopping", with the incarnation
    /// they had; a record with a higher incarnation supersedes the mark.
    left_marks: BTreeMap<I, u64>,
    incarnation: u64,
    version: u64,
    left: bool,
    /// Gentle (on battery): see [`Membership::set_gentle`]; when it last beat anyone.
    gentle: bool,
    last_beat: Option<Instant>,
    record_dirty: bool,
    /// Publish without waiting for `record_min_interval` (first record, refutation).
    record_urgent: bool,
    /// A link to a member that is down went away: our record may list it until the next
    /// change (nobody routes to a member that is down).
    record_lazy: bool,
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
    /// Our monitors and the members we monitor.
    roles: Roles<I>,
    /// Members nobody reachable vouches for or reports lost, since when: their watchers
    /// all went out of our sight at once (a partition), so they keep their state for an
    /// interval while they get monitors on our side.
    orphans: BTreeMap<I, Instant>,
    /// The views change by themselves then (a grace ends, a link's freshness ends).
    views_deadline: Option<Instant>,
    topo_version: u64,
    views_version: u64,
    adj_cache: Option<AdjCache<I>>,
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
            record_heard: BTreeMap::new(),
            left_marks: BTreeMap::new(),
            incarnation,
            version: 0,
            left: false,
            gentle: false,
            last_beat: None,
            record_dirty: true,
            record_urgent: true,
            record_lazy: false,
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
            roles: Roles::new(),
            orphans: BTreeMap::new(),
            views_deadline: None,
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
        self.record_heard.remove(&id);
        self.left_marks.remove(&id);
        self.gossip.forget(&id);
        self.views.remove(&id);
        self.orphans.remove(&id);
        self.relays
            .retain(|_, r| r.requester != id && r.target != id);
        self.outputs
            .retain(|o| !matches!(o, Output::Send { to, .. } if *to == id));
        self.topo_changed();
    }

    pub fn handle_input(&mut self, input: Input<I>, now: Instant) {
        self.handle_inputs([input], now);
    }

    /// Inputs gathered in one wake-up (the heartbeats that came since the previous one,
    /// say), applied together before any link is judged at `now`: a beat that arrived in
    /// time is never outrun by a deadline checked between two inputs.
    pub fn handle_inputs(&mut self, inputs: impl IntoIterator<Item = Input<I>>, now: Instant) {
        if self.stopped {
            return;
        }
        self.observe_clock(now);
        // Done in whichever wake-up comes first after it is due: a member that only
        // receives beats needs no timer of its own for it.
        self.periodic(now);
        for input in inputs {
            self.apply(input, now);
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
        if self.poll_timeout().is_some_and(|t| t <= now) {
            // New duties came up in this call (a new monitor to beat, a link to ping).
            self.beats(now);
            self.eval_links(now);
            self.finish();
        }
    }

    /// Next time [`Self::handle_timeout`] must run: the next beat due (on an idle mesh
    /// one wake-up per `probe_interval` for the beats to this member's monitors), the
    /// anti-entropy interval, and the rare per-link deadlines (a watched link turning
    /// suspect or dead, a ping due, an indirect probe expiring).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.stopped {
            return None;
        }
        // The periodic work runs at any entry point once due; its own wake-up is only the
        // fallback when nothing else happened for an interval more.
        let mut t = self.next_ae + self.ae_interval();
        for (peer, link) in &self.links {
            t = self.link_deadline(peer, link).map_or(t, |d| t.min(d));
        }
        for r in self.relays.values() {
            t = t.min(r.deadline);
        }
        if self.record_dirty {
            if let Some(p) = self.last_publish {
                t = t.min(p + self.cfg.record_min_interval);
            }
        }
        if let Some(d) = self.views_deadline {
            t = t.min(d);
        }
        // Something overdue is due at once (after the last call), not at its old date:
        // a call later than that is our own lag.
        Some(t.max(self.clock))
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
        self.disseminate(Item::Event(event), None, false);
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

    /// How long `peer` has been silent as far as this member's evidence goes, or `None`
    /// without a link. On a link this member watches: the time since it heard the peer.
    /// On a link it does not watch (no beats expected): zero while the peer's monitors
    /// vouch for it, else the suspicion deadline plus the time since they stopped, and
    /// once the peer is back, the time since the link was last heard until it is heard
    /// again (it may be the connection of a process that is gone); on a link our beats do
    /// not cross, the suspicion deadline plus the time since that was found. The daemon
    /// closes a connection silent for its idle timeout.
    pub fn silence(&self, peer: &I, now: Instant) -> Option<Duration> {
        let link = self.links.get(peer)?;
        let since = |t: Instant| self.cfg.unreachable_after + now.saturating_duration_since(t);
        Some(if let Some(b) = link.broken {
            since(b.since)
        } else if link.watched() {
            // A gentle member is silent for up to a minute by design: only its silence
            // beyond what it is allowed counts (the same scale as any other link's).
            let allowance = self
                .unreachable_of(peer)
                .saturating_sub(self.cfg.unreachable_after);
            link.silence(now).saturating_sub(allowance)
        } else {
            match link.down_since {
                Some(t) => since(t),
                None if link.unverified => now.saturating_duration_since(link.last_heard),
                None => Duration::ZERO,
            }
        })
    }

    /// What is overdue (for the simulator's check that every wake-up clears its cause).
    pub(crate) fn debug_overdue(&self) -> String {
        let mut out = String::new();
        for (p, l) in &self.links {
            if self.link_deadline(p, l).is_some_and(|d| d <= self.clock) {
                out += &format!(
                    "{p:?}: {} beat_due {:?} ping_due {:?}; ",
                    self.debug_link(p),
                    self.beat_due(p, l).map(|d| d <= self.clock),
                    self.ping_due(p, l).map(|d| d <= self.clock)
                );
            }
        }
        out += &format!(
            "views {:?} relays {} dirty {}",
            self.views_deadline.map(|d| d <= self.clock),
            self.relays.len(),
            self.record_dirty
        );
        out
    }

    /// One link's monitoring state, for diagnostics.
    pub(crate) fn debug_link(&self, peer: &I) -> String {
        let now = self.clock;
        match self.links.get(peer) {
            None => "no link".into(),
            Some(l) => format!(
                "status {:?} heard -{:?} beat_in {:?} broken {:?} expected {} target {} orphan {:?} rec {:?}",
                l.status,
                now.saturating_duration_since(l.last_heard),
                l.beat_in.map(|t| now.saturating_duration_since(t)),
                l.broken.is_some(),
                self.expected(peer),
                self.roles.targets.contains(peer),
                self.orphans.get(peer).map(|t| now.saturating_duration_since(*t)),
                self.records.values().filter_map(|r| r.links.iter().find(|e| e.peer == *peer).map(|e| (r.origin, e.watch))).filter(|(_, w)| *w != Watch::Unwatched).collect::<Vec<_>>(),
            ),
        }
    }

    /// The members this member beats: its monitors.
    /// Makes this member gentle (a device on battery) or not: it asks for one monitor
    /// and beats it once per `gentle_interval`, its own wake-up period; it monitors
    /// nobody while a member that is not gentle can. The change goes out in its record at
    /// once, and everyone recomputes who watches whom from it.
    pub fn set_gentle(&mut self, gentle: bool, now: Instant) {
        if self.gentle == gentle || self.stopped {
            return;
        }
        self.gentle = gentle;
        self.clock = self.clock.max(now);
        self.record_dirty = true;
        self.record_urgent = true;
        self.topo_changed();
        self.finish();
    }

    /// Whether this member is gentle ([`Self::set_gentle`]).
    pub fn is_gentle(&self) -> bool {
        self.gentle
    }

    pub fn monitors(&self) -> Vec<I> {
        self.roles.targets.clone()
    }

    /// The members this member monitors: it expects their beats.
    pub fn subjects(&self) -> Vec<I> {
        self.roles.subjects.iter().copied().collect()
    }

    /// The members this member vouches for in its link record (it watches them and
    /// heard them within the suspicion deadline).
    pub fn vouched(&self) -> Vec<I> {
        self.links
            .iter()
            .filter(|(_, l)| {
                l.broken.is_none() && matches!(l.status, LinkStatus::Active | LinkStatus::Suspect)
            })
            .map(|(p, _)| *p)
            .collect()
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
