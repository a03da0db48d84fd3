//! Watching links: the tick, beats to our monitors, pings and indirect probes, link
//! status from silence, and what is heard on a link.

use super::*;

impl<I: NodeId> Membership<I> {
    pub(super) fn link_timeout(&self, link: &Link<I>) -> Duration {
        match link.srtt {
            None => self.cfg.probe_timeout,
            Some(s) => {
                (s * 2 + link.rttvar * 4).clamp(self.cfg.probe_timeout, self.cfg.probe_timeout_max)
            }
        }
    }

    /// Local health: a call much later than our own deadline means this process stalled;
    /// the stall is not the peers' silence.
    pub(super) fn observe_clock(&mut self, now: Instant) {
        // The deadline as of the last call (it is never before that call).
        let due = self.poll_timeout();
        self.clock = self.clock.max(now);
        let Some(due) = due else {
            return;
        };
        if now > due + self.cfg.local_lag_tolerance {
            let lag = now - due;
            for link in self.links.values_mut() {
                link.last_heard = (link.last_heard + lag).min(now);
                link.beat_in = link.beat_in.map(|t| (t + lag).min(now));
            }
        }
    }

    /// Silence after which a watched link turns suspect. The peer's news is up to one
    /// interval old (its beats are read at our next wake-up, or over QUIC the side that
    /// beats hears of the other at its next beat): two intervals plus the probe timeout.
    /// A gentle member's: `gentle_suspect_after`.
    pub(super) fn active_limit(&self, peer: &I, link: &Link<I>) -> Duration {
        if self.gentle_member(peer) {
            return self.cfg.gentle_suspect_after;
        }
        self.cfg.probe_interval * 2 + self.link_timeout(link)
    }

    /// Once per `anti_entropy_interval`: expire old events, re-announce a changed RTT,
    /// and pick the link whose next beat carries the anti-entropy digest. Anti-entropy
    /// rides on beats only: the digest exchange repairs both ways
    /// (`DigestFull { reply: true }`), and the monitoring graph connects every member.
    pub(super) fn periodic(&mut self, now: Instant) {
        if now < self.next_ae {
            return;
        }
        while self.next_ae <= now {
            self.next_ae += self.ae_interval();
        }
        // A gentle member does not re-announce its round-trip times (nobody routes
        // through it): its record goes out when its links or state change. Nor does
        // any member while every member that is up has a link to every other: no
        // route goes through anyone then, so no round-trip time decides one.
        if self.rtt_dirty && !self.gentle && self.someone_routes() {
            self.record_dirty = true;
        }
        self.gossip.expire_events(now);
        // A random link this member beats (in id order, a member would talk to the same
        // part of the mesh for many intervals after a partition split by id).
        let beaten: Vec<I> = self
            .links
            .iter()
            .filter(|(p, l)| self.beats_link(p, l))
            .map(|(p, _)| *p)
            .collect();
        self.ae_to = beaten.choose(&mut self.rng).copied();
    }

    /// Some member that is up has no announced link (either way) to another member
    /// that is up: a route goes through others, and the round-trip times members
    /// announce choose it. In a full mesh none does, and an announcement made only for
    /// a changed round-trip time would cost every member a message (and its
    /// acknowledgement) for nothing; on a busy machine the packets of each round of
    /// announcements moved the measured round-trip times again (namespace bench, 20
    /// members: 8 packets per second and member on top of the heartbeats, 20 s after
    /// the mesh formed). A record with a changed link carries the current times anyway.
    fn someone_routes(&mut self) -> bool {
        let mut up: Vec<I> = self
            .roster
            .iter()
            .filter(|m| **m != self.me && !self.is_down(m))
            .copied()
            .collect();
        up.push(self.me);
        let adj = self.adjacency();
        let linked = |a: &I, b: &I| adj.get(a).is_some_and(|e| e.iter().any(|(p, _)| p == b));
        up.iter()
            .enumerate()
            .any(|(i, a)| up[i + 1..].iter().any(|b| !linked(a, b) && !linked(b, a)))
    }

    /// This member beats the link now: a heartbeat link to one of its monitors, or an
    /// active watched link over QUIC whose beats come from this side.
    fn beats_link(&self, peer: &I, link: &Link<I>) -> bool {
        if link.datagram {
            link.broken.is_none() && self.roles.targets.contains(peer)
        } else {
            link.status == LinkStatus::Active && link.beaten_here()
        }
    }

    /// When the link's next beat is due, if it carries beats from this side.
    pub(super) fn beat_due(&self, peer: &I, link: &Link<I>) -> Option<Instant> {
        let p = self.cfg.probe_interval;
        if link.datagram {
            let target = link.broken.is_none() && self.roles.targets.contains(peer);
            // A gentle member keeps its cadence when its monitor changes: the new one
            // gets the next beat when it is due, not one more at once.
            let last = match self.last_beat {
                Some(t) if self.gentle => link.beat_sent.max(t),
                _ => link.beat_sent,
            };
            return target.then_some(last + self.interval_of(&self.me));
        }
        if link.status != LinkStatus::Active {
            return None;
        }
        // Over QUIC a beat either way postpones the next one, so one side beats and the
        // other only answers at the transport level. The higher id waits an eighth
        // longer: two sides that started together do not both keep beating.
        let lag = if self.me > *peer {
            p / 8
        } else {
            Duration::ZERO
        };
        Some(link.beat_sent.max(link.beat_rcvd) + p + lag)
    }

    /// When the link's next ping is due, if it needs one: a suspected link we watch, a
    /// dead one (it comes back when it answers), and a link to a member that is
    /// unreachable in our view (a healed partition is found this way).
    pub(super) fn ping_due(&self, peer: &I, link: &Link<I>) -> Option<Instant> {
        let duty = match link.status {
            LinkStatus::Suspect => self.expected(peer),
            LinkStatus::Dead => true,
            // Also a link back from such a member until it answers (it may be the
            // connection of a process that is gone).
            LinkStatus::Unwatched => {
                link.unverified
                    || self
                        .views
                        .get(peer)
                        .is_some_and(|v| v.state == State::Unreachable)
            }
            LinkStatus::Active => false,
        };
        duty.then(|| {
            link.ping_sent
                .map_or(self.clock, |t| t + self.interval_of(peer))
        })
    }

    /// The earliest time something is due on this link (for `poll_timeout`).
    pub(super) fn link_deadline(&self, peer: &I, link: &Link<I>) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut at = |d: Instant| t = Some(t.map_or(d, |x| x.min(d)));
        if let Some(d) = self.beat_due(peer, link) {
            at(d);
        }
        if let Some(d) = self.ping_due(peer, link) {
            at(d);
        }
        let heard = link.last_heard.max(link.watch_since);
        match link.status {
            LinkStatus::Active => at(heard + self.active_limit(peer, link)),
            LinkStatus::Suspect => at(heard + self.unreachable_of(peer)),
            LinkStatus::Dead | LinkStatus::Unwatched => {}
        }
        // A watched link of a peer we do not expect ends with its beats.
        if matches!(link.status, LinkStatus::Active | LinkStatus::Suspect) && !self.expected(peer) {
            if let Some(b) = link.beat_in {
                at(b + self.unreachable_of(peer));
            }
        }
        // Whether our beats reach a monitor is judged at the wake-ups of our beats.
        t
    }

    /// Beats to our monitors that are due (and those due within the rest of
    /// `1 - ping_skip_fraction` of an interval, to share the wake-up); pings and indirect
    /// probes where the links need them.
    pub(super) fn beats(&mut self, now: Instant) {
        let own = self.interval_of(&self.me);
        let window = own.mul_f32(1.0 - self.cfg.ping_skip_fraction);
        // Early only on links this member beats: over QUIC a link the peer beats is due
        // only when the peer's beat is late, or both sides would end up beating.
        // Heartbeat links go along with any beat from half an interval on: once in step
        // they all beat in the same wake-up, whatever the order their links came up in.
        let any_due = self
            .links
            .iter()
            .any(|(p, l)| self.beat_due(p, l).is_some_and(|at| at <= now));
        let half = own / 2;
        let mut beat: Vec<I> = Vec::new();
        let mut ping: Vec<(I, bool)> = Vec::new();
        for (p, l) in &self.links {
            if let Some(at) = self.beat_due(p, l) {
                if at <= now
                    || (at <= now + window && (l.datagram || l.beaten_here()))
                    || (any_due && l.datagram && at <= now + half)
                {
                    beat.push(*p);
                }
            }
            if self.ping_due(p, l).is_some_and(|at| at <= now + window) {
                let probe =
                    l.status == LinkStatus::Suspect && !matches!(l.indirect, Some((_, Some(_))));
                ping.push((*p, probe));
            }
        }
        for peer in beat {
            if let Some(l) = self.links.get_mut(&peer) {
                l.beat_sent = now;
                self.last_beat = Some(now);
            }
            let digest = if self.ae_to == Some(peer) {
                self.ae_to = None;
                Some(self.gossip.digest_hash(&self.records))
            } else {
                None
            };
            self.send(peer, Message::Beat { digest });
        }
        for (peer, probe) in ping {
            self.ping(peer, now);
            if probe {
                self.indirect_probe(peer);
            }
        }
    }

    /// A ping; it asks the peer to refute only when we suspect it.
    pub(super) fn ping(&mut self, peer: I, now: Instant) {
        let nonce = self.next_nonce;
        self.next_nonce += 1;
        let expected = self.expected(&peer);
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        link.ping = Some((nonce, now));
        link.ping_sent = Some(now);
        let suspect = link.status == LinkStatus::Suspect && expected;
        self.send(peer, Message::Ping { nonce, suspect });
    }

    /// SWIM ping-req: ask up to k members that vouch for `target` (its other monitors).
    pub(super) fn indirect_probe(&mut self, target: I) {
        let mut helpers: Vec<I> = self
            .links
            .iter()
            .filter(|(p, l)| **p != target && l.usable())
            .filter(|(p, _)| {
                self.records.get(*p).is_some_and(|r| {
                    r.links
                        .iter()
                        .any(|e| e.peer == target && e.watch == Watch::Alive)
                })
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

    /// Re-evaluate every watched link's status from its silence; a link watched only
    /// because its peer beats us ends when the beats end; whether our beats reach our
    /// monitors.
    pub(super) fn eval_links(&mut self, now: Instant) {
        self.check_broken(now);
        let peers: Vec<I> = self.links.keys().copied().collect();
        for peer in peers {
            let link = &self.links[&peer];
            if !link.watched() {
                continue;
            }
            let silence = link.silence(now);
            let status = if silence < self.active_limit(&peer, link) {
                LinkStatus::Active
            } else if silence < self.unreachable_of(&peer) {
                LinkStatus::Suspect
            } else {
                LinkStatus::Dead
            };
            let evidence = link
                .beat_in
                .is_some_and(|t| now.saturating_duration_since(t) < self.unreachable_of(&peer));
            let expected = self.expected(&peer);
            let release = if expected {
                // Over heartbeats a subject that answers but never beats us does not take
                // us for its monitor (our views differ for a moment): stop, do not accuse.
                link.datagram
                    && link.status == LinkStatus::Active
                    && status != LinkStatus::Active
                    && !link.beat_seen
            } else {
                // Not ours to watch: watched while the peer beats us; a dead link stays
                // dead (and pinged) until the peer answers.
                link.status != LinkStatus::Dead && (!evidence || status == LinkStatus::Dead)
            };
            if release {
                self.set_status(peer, LinkStatus::Unwatched, now);
            } else {
                self.set_status(peer, status, now);
            }
        }
    }

    pub(super) fn set_status(&mut self, peer: I, status: LinkStatus, now: Instant) {
        let expected = self.expected(&peer);
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        let old = link.status;
        if old == status {
            return;
        }
        link.status = status;
        if !matches!(status, LinkStatus::Suspect | LinkStatus::Dead) {
            // What the indirect probes of a suspicion found holds until it ends.
            link.indirect = None;
        }
        if old == LinkStatus::Unwatched {
            link.watch_since = now;
        }
        if status != LinkStatus::Active {
            // A new watch period starts when the link is active again.
            link.beat_seen = false;
        }
        if old.watch() != status.watch() && link.broken.is_none() {
            self.record_dirty = true;
        }
        self.topo_changed();
        if status == LinkStatus::Suspect && expected {
            self.ping(peer, now);
            self.indirect_probe(peer);
        }
    }

    /// Any message from `from`: heard now; a watched link is active again.
    pub(super) fn heard(&mut self, from: I, now: Instant) {
        self.heard_at(from, now);
        if self.links.get(&from).is_some_and(|l| l.watched()) {
            self.set_status(from, LinkStatus::Active, now);
        }
    }

    /// Evidence from the transport that `peer` was up at `at` (not later than now). On a
    /// link we do not watch, news after a silence vouches for the peer for a while.
    pub(super) fn heard_at(&mut self, peer: I, at: Instant) {
        let Some(link) = self.links.get(&peer) else {
            return;
        };
        let stale = at.saturating_duration_since(link.last_heard) >= self.active_limit(&peer, link);
        if let Some(link) = self.links.get_mut(&peer) {
            link.last_heard = link.last_heard.max(at);
            link.unverified = false;
            if stale && !link.watched() {
                self.topo_changed();
            }
        }
    }

    /// A beat of `from` that arrived at `at`, on the link's beat channel (`channel`: a
    /// heartbeat on a heartbeat link, a message otherwise) or not (a stray beat over
    /// QUIC). On its channel it means the peer takes us for one of its monitors: we
    /// watch it. It postpones this side's next beat over QUIC, and a digest that differs
    /// from ours starts the anti-entropy exchange.
    pub(super) fn beat_received(
        &mut self,
        from: I,
        at: Instant,
        digest: Option<u64>,
        channel: bool,
    ) {
        let Some(link) = self.links.get_mut(&from) else {
            return;
        };
        link.beat_rcvd = link.beat_rcvd.max(at);
        if channel {
            link.beat_in = Some(link.beat_in.map_or(at, |t| t.max(at)));
            if link.status == LinkStatus::Unwatched {
                self.set_status(from, LinkStatus::Active, at);
            }
            if let Some(link) = self.links.get_mut(&from) {
                link.beat_seen = true;
            }
        }
        if digest.is_some_and(|h| h != self.gossip.digest_hash(&self.records)) {
            let msg = self.gossip.digest_full(true, &self.records);
            self.send(from, msg);
        }
    }
}
