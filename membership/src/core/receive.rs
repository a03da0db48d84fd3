//! What arrives from other members: probes and their answers, gossip, digests, beats;
//! refutation; records and broadcasts.

use super::*;

impl<I: NodeId> Membership<I> {
    /// One input of [`Membership::handle_inputs`], applied without judging the links.
    pub(super) fn apply(&mut self, input: Input<I>, now: Instant) {
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
                self.links.insert(peer, Link::new(now, rtt, addr, datagram));
                self.roles.stale.insert(peer);
                self.record_dirty = true;
                self.topo_changed();
                let msg = self.gossip.digest_full(true, &self.records);
                self.send(peer, msg);
            }
            Input::LinkDown { peer, leaving } => {
                if let Some(link) = self.links.remove(&peer) {
                    self.roles.stale.insert(peer);
                    if link.broken.is_none() {
                        // A link to a member that is down matters to nobody's routes.
                        if self.is_down(&peer) {
                            self.record_lazy = true;
                        } else {
                            self.record_dirty = true;
                        }
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
                // A heartbeat is a beat on its link's own channel.
                let channel = self.links.get(&peer).is_some_and(|l| l.datagram);
                self.beat_received(peer, at, digest, channel);
            }
        }
    }

    pub(super) fn on_message(&mut self, from: I, msg: Message<I>, now: Instant) {
        if from == self.me || !self.roster.contains(&from) {
            return;
        }
        if self.is_down(&from) && self.links.contains_key(&from) {
            // A member we took for down speaks (a healed partition, a restart): catch up.
            let msg = self.gossip.digest_full(true, &self.records);
            self.send(from, msg);
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
                let start = self.expected(&from)
                    && self.links.get(&from).is_some_and(|l| {
                        l.datagram
                            && l.status == LinkStatus::Unwatched
                            && l.ping.is_some_and(|(n, _)| n == nonce)
                    });
                if start {
                    // The answer to our first ping of a member we are to watch: watch it
                    // now; its beats must follow before the first suspicion.
                    self.set_status(from, LinkStatus::Active, now);
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
                                // The peer is up and this link is silent: cut, not a
                                // direct path again until heard (even if we stop watching
                                // it: its monitors vouch for the peer, not for the link).
                                link.unverified = true;
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
            Message::Beat { digest } => {
                let channel = self.links.get(&from).is_some_and(|l| !l.datagram);
                self.beat_received(from, now, digest, channel);
            }
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
            // Our own current record sent back changes nothing (refuting it would make a
            // member that replays each of our records keep us publishing).
            let ours = self
                .records
                .get(&self.me)
                .is_some_and(|r| r.same_statement(&rec));
            if rec.key() >= (self.incarnation, self.version) && !ours {
                // A newer record of ourselves (an earlier run, or a left record): refute.
                self.incarnation = self.incarnation.max(rec.incarnation).saturating_add(1);
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
        let minor = self
            .records
            .get(&rec.origin)
            .is_some_and(|old| rec.only_rtts_changed(old));
        self.records.insert(rec.origin, rec.clone());
        self.record_heard.insert(rec.origin, now);
        self.roles.stale.insert(rec.origin);
        self.gossip.records_changed();
        self.topo_changed();
        self.disseminate(Item::Record(rec), Some(from), minor);
    }

    /// A gossip item from `from`: a record, or a broadcast to deliver (once) and pass on.
    pub(super) fn on_item(&mut self, from: I, item: Item<I>, now: Instant) {
        match item {
            Item::Record(rec) => self.on_record(from, rec, now),
            Item::Event(event) => {
                let origin = event.id.origin;
                if !self.cfg.events || origin == self.me || !self.roster.contains(&origin) {
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
                self.disseminate(Item::Event(event), Some(from), false);
            }
        }
    }
}
