//! Our own link record, the dissemination tree, and the peer views (state, path,
//! addresses) computed from every member's record.

use super::*;

impl<I: NodeId> Membership<I> {
    pub(super) fn publish_record(&mut self) {
        self.record_dirty = false;
        self.record_urgent = false;
        self.record_lazy = false;
        self.last_publish = Some(self.clock);
        self.rtt_dirty = false;
        self.version += 1;
        let roster = &self.roster;
        let mut links: Vec<LinkEntry<I>> = Vec::new();
        // In id order (members look entries up by binary search).
        for (peer, link) in self.links.iter_mut() {
            if link.broken.is_none() && roster.contains(peer) {
                link.announced_rtt = link.rtt;
                links.push(LinkEntry {
                    peer: *peer,
                    rtt_us: micros(link.rtt),
                    addr: link.addr,
                    watch: link.status.watch(),
                });
            }
        }
        let rec = Record {
            origin: self.me,
            incarnation: self.incarnation,
            version: self.version,
            left: self.left,
            gentle: self.gentle,
            links,
            // Sealed by whoever sends it (see `Record::seal`).
            seal: Vec::new(),
        };
        let minor = self
            .records
            .get(&self.me)
            .is_some_and(|old| rec.only_rtts_changed(old));
        self.records.insert(self.me, rec.clone());
        self.gossip.records_changed();
        self.stats.records_published += 1;
        self.topo_changed();
        self.disseminate(Item::Record(rec), None, minor);
    }

    /// End of every entry point: publish our record if it changed, recompute views and
    /// who watches whom (twice at most: a change of roles changes our record), flush.
    pub(super) fn finish(&mut self) {
        for _ in 0..2 {
            self.check_lazy_record();
            let due = self.record_urgent
                || self
                    .last_publish
                    .is_none_or(|p| self.clock >= p + self.cfg.record_min_interval);
            if self.record_dirty && due && !self.stopped {
                self.publish_record();
            }
            self.recompute_views();
            if self.stopped || !self.update_roles(self.clock) {
                break;
            }
        }
        self.flush_outbox();
    }

    /// Our record lists a link that went away while its peer was down: publish once the
    /// peer is up again (others could route through the stale entry).
    fn check_lazy_record(&mut self) {
        if !self.record_lazy {
            return;
        }
        let stale = self.records.get(&self.me).is_some_and(|r| {
            r.links.iter().any(|e| {
                !self.links.contains_key(&e.peer)
                    && self.roster.contains(&e.peer)
                    && !self.is_down(&e.peer)
            })
        });
        if stale {
            self.record_dirty = true;
        }
    }

    pub(super) fn is_left(&self, id: &I) -> bool {
        let rec = self.records.get(id);
        if rec.is_some_and(|r| r.left) {
            return true;
        }
        match self.left_marks.get(id) {
            Some(m) => rec.is_none_or(|r| r.incarnation <= *m),
            None => false,
        }
    }

    /// Hand `item` (just learned from `from`, or originated here when `None`) to the
    /// neighbours this member is responsible for in the dissemination tree rooted at the
    /// item's origin (see [`Gossip::disseminate`]); the tree of a left origin, or of one
    /// reported lost, is built over its own record too. A `minor` item (a record whose
    /// round-trip times alone changed) is not pushed to gentle members: they fetch it
    /// with the anti-entropy digest their next beat carries, instead of being woken.
    pub(super) fn disseminate(&mut self, item: Item<I>, from: Option<I>, minor: bool) {
        let origin = item.origin();
        let root_is_left = self.is_left(&origin) && origin != self.me;
        let root_reported = self.adjacency_cache().reported.contains(&origin);
        let own = (root_is_left || root_reported).then(|| self.build_adjacency(Some(origin)));
        let neighbours = self
            .links
            .iter()
            .filter(|(p, l)| l.usable() && !(minor && self.gentle_member(p)))
            .map(|(p, _)| *p)
            .collect::<Vec<_>>();
        let adj = match &own {
            Some(adj) => adj,
            None => &self.adj_cache.as_ref().expect("refreshed above").adj,
        };
        // A gentle member (on battery) forwards nobody's items: it is a leaf of every
        // tree but its own, so what others publish costs it one receipt, never a send.
        let (me, gentle, records) = (self.me, self.gentle, &self.records);
        let leaf = |id: &I| gentle_in(me, gentle, records, id);
        self.gossip
            .disseminate(self.me, item, from, adj, leaf, neighbours);
    }

    /// The links of the dissemination tree, as announced: ours from the link table (what
    /// our record lists), others' from their records; a link reported suspect or lost
    /// does not count. A left member, and a member any record reports lost (it may be dead: it
    /// must not be the only way to a part of the tree), contribute no links unless they
    /// are `root`. Every member computes the same from the same records.
    pub(super) fn adjacency(&mut self) -> &Adjacency<I> {
        &self.adjacency_cache().adj
    }

    /// The adjacency without a root, and the members some record reports lost, as of
    /// the current topology (both change only with it).
    fn adjacency_cache(&mut self) -> &AdjCache<I> {
        if self
            .adj_cache
            .as_ref()
            .is_none_or(|c| c.version != self.topo_version)
        {
            let reported = self
                .records
                .values()
                .flat_map(|r| r.links.iter())
                .filter(|e| e.watch == Watch::Lost)
                .map(|e| e.peer)
                .collect();
            self.adj_cache = Some(AdjCache {
                version: self.topo_version,
                adj: self.build_adjacency(None),
                reported,
            });
        }
        self.adj_cache.as_ref().expect("just filled")
    }

    pub(super) fn build_adjacency(&self, root: Option<I>) -> Adjacency<I> {
        let left = self.left_set();
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
                .filter(|(p, l)| {
                    l.broken.is_none()
                        && matches!(l.status, LinkStatus::Active | LinkStatus::Unwatched)
                        && known.contains(p)
                })
                .map(|(p, l)| (*p, micros(l.rtt) as u64))
                .collect();
            adj.insert(self.me, mine);
        }
        let lost: HashSet<I> = self
            .records
            .iter()
            .filter(|(o, _)| self.roster.contains(o) && !left.contains(o))
            .flat_map(|(_, r)| r.links.iter())
            .filter(|e| e.watch == Watch::Lost)
            .map(|e| e.peer)
            .collect();
        for (origin, rec) in &self.records {
            if *origin == self.me || !self.roster.contains(origin) {
                continue;
            }
            if (left.contains(origin) || lost.contains(origin)) && Some(*origin) != root {
                continue;
            }
            let edges = rec
                .links
                .iter()
                .filter(|e| e.peer != *origin && known.contains(&e.peer))
                .filter(|e| matches!(e.watch, Watch::Alive | Watch::Unwatched))
                .map(|e| (e.peer, e.rtt_us as u64))
                .collect();
            adj.insert(*origin, edges);
        }
        adj
    }

    fn left_set(&self) -> HashSet<I> {
        self.records
            .keys()
            .chain(self.left_marks.keys())
            .filter(|id| self.is_left(id))
            .copied()
            .collect()
    }

    /// Who is up in our view. A member is vouched for when a chain of watchers leads to
    /// it from us: our own watched links (and the members we heard from, directly or by
    /// a new record of theirs, within the active limit), then the members each vouches
    /// for in its record. A member no chain
    /// reaches is down, unless nobody we reach reports it lost while some member we no
    /// longer reach still vouches for it: its watchers went out of sight all at once (a
    /// partition), so it keeps its state for an interval, the time to get watchers on
    /// our side. Returns the vouched set and when that changes by itself.
    fn vouched_set(&mut self, left: &HashSet<I>) -> (HashSet<I>, Option<Instant>) {
        let now = self.clock;
        let mut deadline: Option<Instant> = None;
        let mut at = |d: Instant| deadline = Some(deadline.map_or(d, |x: Instant| x.min(d)));
        let mut mine = Vec::new();
        // A gentle member hears nothing while idle: its monitor, while no record reports
        // it lost, is where its chains start.
        let reported_lost = |p: &I| {
            self.records.values().any(|r| {
                r.origin != self.me
                    && r.links
                        .iter()
                        .any(|e| e.peer == *p && e.watch == Watch::Lost)
            })
        };
        for (p, l) in &self.links {
            if left.contains(p) || l.broken.is_some() {
                continue;
            }
            if self.gentle && self.roles.targets.contains(p) && !reported_lost(p) {
                mine.push(*p);
                continue;
            }
            let fresh = now.saturating_duration_since(l.last_heard) < self.active_limit(p, l);
            if matches!(l.status, LinkStatus::Active | LinkStatus::Suspect) {
                mine.push(*p);
            } else if l.status == LinkStatus::Unwatched && fresh {
                mine.push(*p);
                at(l.last_heard + self.active_limit(p, l));
            }
        }
        let limit = self.cfg.probe_interval * 2 + self.cfg.probe_timeout;
        for (o, t) in &self.record_heard {
            if now.saturating_duration_since(*t) < limit && !left.contains(o) {
                mine.push(*o);
                at(*t + limit);
            }
        }
        // The members each member up vouches for, read from its record as the walk
        // reaches it.
        let mut reach: HashSet<I> = HashSet::from([self.me]);
        let mut stack = vec![self.me];
        let mut next: Vec<I> = Vec::new();
        while let Some(u) = stack.pop() {
            next.clear();
            if u == self.me {
                next.extend(&mine);
            } else if let Some(rec) = self
                .records
                .get(&u)
                .filter(|_| self.roster.contains(&u) && !left.contains(&u))
            {
                next.extend(
                    rec.links
                        .iter()
                        .filter(|e| matches!(e.watch, Watch::Alive | Watch::Suspect))
                        .filter(|e| !left.contains(&e.peer))
                        .map(|e| e.peer),
                );
            }
            for v in &next {
                if reach.insert(*v) {
                    stack.push(*v);
                }
            }
        }
        // Failure reports from members we reach (and from our own dead links), and
        // members someone still vouches for.
        let mut lost: HashSet<I> = self
            .links
            .iter()
            .filter(|(_, l)| l.status == LinkStatus::Dead)
            .map(|(p, _)| *p)
            .collect();
        let mut claimed: HashSet<I> = HashSet::new();
        for (o, rec) in &self.records {
            if *o == self.me || !self.roster.contains(o) || left.contains(o) {
                continue;
            }
            for e in &rec.links {
                match e.watch {
                    Watch::Lost if reach.contains(o) => {
                        lost.insert(e.peer);
                    }
                    Watch::Alive | Watch::Suspect => {
                        claimed.insert(e.peer);
                    }
                    _ => {}
                }
            }
        }
        let grace = self.cfg.probe_interval;
        let mut vouched = reach;
        for id in &self.roster {
            let orphan = !vouched.contains(id)
                && !left.contains(id)
                && claimed.contains(id)
                && !lost.contains(id);
            if !orphan {
                self.orphans.remove(id);
                continue;
            }
            // A gentle orphan may answer its new monitor's ping late (a radio asleep).
            let grace = if self.gentle_member(id) {
                GENTLE_ORPHAN_GRACE
            } else {
                grace
            };
            let since = *self.orphans.entry(*id).or_insert(now);
            if now < since + grace {
                vouched.insert(*id);
                at(since + grace);
            }
        }
        (vouched, deadline)
    }

    pub(super) fn recompute_views(&mut self) {
        if self.views_deadline.is_some_and(|d| self.clock >= d) {
            self.topo_changed();
        }
        if self.views_version == self.topo_version {
            return;
        }
        self.views_version = self.topo_version;
        let left = self.left_set();
        let (vouched, deadline) = self.vouched_set(&left);
        self.views_deadline = deadline;
        // Routes: our usable links to members that are up, then the links members that
        // are up announce as checked (they watch the peer and heard it lately; a link
        // nobody watches may be cut without anyone knowing).
        let mut adj: Adjacency<I> = BTreeMap::new();
        let mine = self
            .links
            .iter()
            .filter(|(p, l)| {
                vouched.contains(*p)
                    && l.broken.is_none()
                    && !l.unverified
                    && matches!(l.status, LinkStatus::Active | LinkStatus::Unwatched)
            })
            .map(|(p, l)| (*p, micros(l.rtt) as u64))
            .collect();
        adj.insert(self.me, mine);
        for (o, rec) in &self.records {
            if *o == self.me || !vouched.contains(o) {
                continue;
            }
            let edges = rec
                .links
                .iter()
                .filter(|e| e.watch == Watch::Alive && e.peer != *o && vouched.contains(&e.peer))
                .map(|e| (e.peer, e.rtt_us as u64))
                .collect();
            adj.insert(*o, edges);
        }
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
            let link = self.links.get(&id).filter(|l| l.broken.is_none());
            let expected = self.expected(&id);
            let up = vouched.contains(&id);
            let path = || match paths.get(&id) {
                Some(&(_, rtt, first)) if up => (
                    State::Indirect,
                    Some(first),
                    Some(Duration::from_micros(rtt)),
                ),
                _ => (State::Unreachable, None, None),
            };
            let (state, via, rtt) = if self.is_left(&id) {
                (State::Left, None, None)
            } else {
                match link.map(|l| (l.status, l.indirect, l.rtt)) {
                    Some((LinkStatus::Active, _, rtt)) => (State::Active, None, Some(rtt)),
                    Some((LinkStatus::Suspect, Some((_, Some((h, total)))), _)) if expected => {
                        (State::Indirect, Some(h), Some(total))
                    }
                    Some((LinkStatus::Suspect, _, rtt)) if expected => {
                        (State::Suspect, None, Some(rtt))
                    }
                    // A link we do not watch: as good as the peer's monitors say, unless
                    // it went silent and has not answered since (then another path, if
                    // there is one, until its ping is answered).
                    Some((LinkStatus::Unwatched | LinkStatus::Suspect, _, rtt)) => {
                        let unverified = link.is_some_and(|l| l.unverified);
                        match path() {
                            (State::Indirect, via, total) if unverified => {
                                (State::Indirect, via, total)
                            }
                            _ if up => (State::Active, None, Some(rtt)),
                            _ => (State::Unreachable, None, None),
                        }
                    }
                    // A dead link whose suspicion found no relay: helpers on our side
                    // cannot reach the peer either (a partition), whatever older
                    // records still say.
                    Some((LinkStatus::Dead, Some((_, None)), _)) => {
                        (State::Unreachable, None, None)
                    }
                    Some((LinkStatus::Dead, Some((_, Some((h, total)))), _)) if up => {
                        (State::Indirect, Some(h), Some(total))
                    }
                    _ => path(),
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
        let now = self.clock;
        let views = &self.views;
        for (id, l) in self.links.iter_mut() {
            let down = views
                .get(id)
                .is_none_or(|v| matches!(v.state, State::Unreachable | State::Left));
            if down && l.status == LinkStatus::Unwatched {
                l.unverified = true;
            }
            l.down_since = if down {
                Some(l.down_since.unwrap_or(now))
            } else {
                None
            };
        }
    }
}
