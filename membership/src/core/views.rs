//! Our own link record, and the peer views (state, path, addresses) computed from every
//! member's record.

use super::*;

impl<I: NodeId> Membership<I> {
    pub(super) fn publish_record(&mut self) {
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
        self.gossip.records_changed();
        self.stats.records_published += 1;
        self.topo_changed();
        self.disseminate(Item::Record(rec), None);
    }

    /// End of every entry point: publish our record if it changed, recompute views, flush.
    pub(super) fn finish(&mut self) {
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
    /// item's origin (see [`Gossip::disseminate`]); the tree of a left origin is built
    /// over its own record too.
    pub(super) fn disseminate(&mut self, item: Item<I>, from: Option<I>) {
        let origin = item.origin();
        let root_is_left = self.is_left(&origin) && origin != self.me;
        let adj = if root_is_left {
            self.build_adjacency(Some(origin))
        } else {
            self.adjacency()
        };
        let neighbours = self
            .links
            .iter()
            .filter(|(_, l)| l.status != LinkStatus::Dead)
            .map(|(p, _)| *p);
        self.gossip
            .disseminate(self.me, item, from, &adj, neighbours);
    }

    /// Live links as announced: ours from the link table, others' from their records.
    /// A left member contributes nothing unless it is `root`.
    pub(super) fn adjacency(&mut self) -> Adjacency<I> {
        if let Some((v, adj)) = &self.adj_cache {
            if *v == self.topo_version {
                return adj.clone();
            }
        }
        let adj = self.build_adjacency(None);
        self.adj_cache = Some((self.topo_version, adj.clone()));
        adj
    }

    pub(super) fn build_adjacency(&self, root: Option<I>) -> Adjacency<I> {
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

    pub(super) fn recompute_views(&mut self) {
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
