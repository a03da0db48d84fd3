//! Direct-link failure detection: the tick, pings, indirect probes through helpers,
//! link status and suspicion, message handling and refutation.

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

    /// Silence after which an active link turns suspect. The side that beats learns of
    /// the other from the transport at its next beat, so its news of a link is up to one
    /// interval old: two intervals plus the probe timeout.
    pub(super) fn active_limit(&self, link: &Link<I>) -> Duration {
        self.cfg.probe_interval * 2 + self.link_timeout(link)
    }

    /// Once per `anti_entropy_interval`: expire old events, re-announce a changed RTT,
    /// and pick the link whose next beat carries the anti-entropy digest. Anti-entropy
    /// rides on beats only: every link has a side that beats, and the digest exchange
    /// repairs both ways (`DigestFull { reply: true }`).
    pub(super) fn periodic(&mut self, now: Instant) {
        if now < self.next_ae {
            return;
        }
        while self.next_ae <= now {
            self.next_ae += self.cfg.anti_entropy_interval;
        }
        if self.rtt_dirty {
            self.record_dirty = true;
        }
        self.gossip.expire_events(now);
        // A random link this member beats (in id order, a member would talk to the same
        // part of the mesh for many intervals after a partition split by id).
        let beaten: Vec<I> = self
            .links
            .iter()
            .filter(|(_, l)| l.status == LinkStatus::Active && l.beaten_here())
            .map(|(p, _)| *p)
            .collect();
        self.ae_to = beaten.choose(&mut self.rng).copied();
    }

    /// When the link's next beat (or, if it is not active, probe) is due.
    pub(super) fn beat_due(&self, peer: &I, link: &Link<I>) -> Instant {
        let p = self.cfg.probe_interval;
        match link.status {
            LinkStatus::Active if link.datagram => link.beat_sent + p,
            LinkStatus::Active => {
                // A beat either way postpones the next one, so one side beats and the
                // other only answers at the transport level. The higher id waits an
                // eighth longer: two sides that started together do not both keep beating.
                let lag = if self.me > *peer {
                    p / 8
                } else {
                    Duration::ZERO
                };
                link.beat_sent.max(link.beat_rcvd) + p + lag
            }
            LinkStatus::Suspect | LinkStatus::Dead => link.beat_sent + p,
        }
    }

    /// Beats on the active links that are due (and those due within the rest of
    /// `1 - ping_skip_fraction` of an interval, to share the wake-up); pings and indirect
    /// probes on the others.
    pub(super) fn beats(&mut self, now: Instant) {
        let window = self
            .cfg
            .probe_interval
            .mul_f32(1.0 - self.cfg.ping_skip_fraction);
        // Early only on links this member beats: a link the peer beats is due only when
        // the peer's beat is late, or both sides would end up beating. Heartbeat links
        // go along with any beat from half an interval on: once in step they all beat in
        // the same wake-up, whatever the order their links came up in.
        let any_due = self.links.iter().any(|(p, l)| self.beat_due(p, l) <= now);
        let half = self.cfg.probe_interval / 2;
        let due: Vec<(I, LinkStatus, bool)> = self
            .links
            .iter()
            .filter(|(p, l)| {
                let at = self.beat_due(p, l);
                let heartbeat = l.datagram && l.status == LinkStatus::Active;
                at <= now
                    || (at <= now + window && l.beaten_here())
                    || (any_due && heartbeat && at <= now + half)
            })
            .map(|(p, l)| (*p, l.status, matches!(l.indirect, Some((_, Some(_))))))
            .collect();
        for (peer, status, has_success) in due {
            if let Some(l) = self.links.get_mut(&peer) {
                l.beat_sent = now;
            }
            match status {
                LinkStatus::Active => {
                    let digest = if self.ae_to == Some(peer) {
                        self.ae_to = None;
                        Some(self.gossip.digest_hash(&self.records))
                    } else {
                        None
                    };
                    self.send(peer, Message::Beat { digest });
                }
                LinkStatus::Suspect => {
                    self.ping(peer, now);
                    if !has_success {
                        self.indirect_probe(peer);
                    }
                }
                LinkStatus::Dead => self.ping(peer, now),
            }
        }
    }

    pub(super) fn ping(&mut self, peer: I, now: Instant) {
        let nonce = self.next_nonce;
        self.next_nonce += 1;
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        link.ping = Some((nonce, now));
        let suspect = link.status != LinkStatus::Active;
        self.send(peer, Message::Ping { nonce, suspect });
    }

    /// SWIM ping-req: ask up to k members that announce a live link to `target`.
    pub(super) fn indirect_probe(&mut self, target: I) {
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
    pub(super) fn eval_links(&mut self, now: Instant) {
        let peers: Vec<I> = self.links.keys().copied().collect();
        for peer in peers {
            let link = &self.links[&peer];
            let silence = now.saturating_duration_since(link.last_heard);
            let status = if silence < self.active_limit(link) {
                LinkStatus::Active
            } else if silence < self.cfg.unreachable_after {
                LinkStatus::Suspect
            } else {
                LinkStatus::Dead
            };
            self.set_status(peer, status, now);
        }
    }

    pub(super) fn set_status(&mut self, peer: I, status: LinkStatus, now: Instant) {
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

    pub(super) fn heard(&mut self, from: I, now: Instant) {
        if let Some(link) = self.links.get_mut(&from) {
            link.last_heard = now;
        }
        self.set_status(from, LinkStatus::Active, now);
    }

    /// Evidence from the transport that `peer` was up at `at` (not later than now).
    pub(super) fn heard_at(&mut self, peer: I, at: Instant) {
        if let Some(link) = self.links.get_mut(&peer) {
            link.last_heard = link.last_heard.max(at);
        }
    }

    /// A beat of `from` (a message or a heartbeat) that arrived at `at`: it postpones
    /// this side's next beat over QUIC, and a digest that differs from ours starts the
    /// anti-entropy exchange.
    pub(super) fn beat_received(&mut self, from: I, at: Instant, digest: Option<u64>) {
        if let Some(link) = self.links.get_mut(&from) {
            link.beat_rcvd = link.beat_rcvd.max(at);
        }
        if digest.is_some_and(|h| h != self.gossip.digest_hash(&self.records)) {
            let msg = self.gossip.digest_full(true, &self.records);
            self.send(from, msg);
        }
    }

    pub(super) fn on_message(&mut self, from: I, msg: Message<I>, now: Instant) {
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
                if hash != self.gossip.digest_hash(&self.records) {
                    let msg = self.gossip.digest_full(true, &self.records);
                    self.send(from, msg);
                }
            }
            Message::Beat { digest } => self.beat_received(from, now, digest),
            Message::DigestFull {
                reply,
                records,
                events,
            } => {
                self.gossip
                    .on_digest_full(from, records, events, &self.records);
                if reply {
                    let msg = self.gossip.digest_full(false, &self.records);
                    self.send(from, msg);
                }
            }
        }
    }

    pub(super) fn on_ping_req(&mut self, from: I, target: I, nonce: u64, now: Instant) {
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
    pub(super) fn refute(&mut self, now: Instant) {
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

    pub(super) fn on_record(&mut self, from: I, rec: Record<I>, now: Instant) {
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
        self.gossip.records_changed();
        self.topo_changed();
        self.disseminate(Item::Record(rec), Some(from));
    }

    /// A gossip item from `from`: a record, or a broadcast to deliver (once) and pass on.
    pub(super) fn on_item(&mut self, from: I, item: Item<I>, now: Instant) {
        match item {
            Item::Record(rec) => self.on_record(from, rec, now),
            Item::Event(event) => {
                let origin = event.id.origin;
                if origin == self.me || !self.roster.contains(&origin) {
                    return;
                }
                if !self.gossip.first_sighting(event.id) {
                    self.stats.duplicates += 1;
                    return;
                }
                self.lamport = self.lamport.max(event.lamport);
                self.stats.delivered += 1;
                self.outputs.push_back(Output::Deliver {
                    id: event.id,
                    lamport: event.lamport,
                    payload: event.payload.clone(),
                });
                self.gossip.remember_event(now, event.clone());
                self.disseminate(Item::Event(event), Some(from));
            }
        }
    }
}
