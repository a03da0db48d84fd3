//! Who watches whom: this member's monitors (the members it beats) and its subjects (the
//! members whose beats it expects), from the monitoring rings over the members it sees
//! up; and whether its beats reach its monitors.

use super::*;

impl<I: NodeId> Membership<I> {
    /// Whether `id` is gentle: this member's own setting, or what its newest record says.
    pub(super) fn gentle_member(&self, id: &I) -> bool {
        gentle_in(self.me, self.gentle, &self.records, id)
    }

    /// How often `id` beats its monitors (and how often a link to it is pinged).
    pub(super) fn interval_of(&self, id: &I) -> Duration {
        if self.gentle_member(id) {
            self.cfg.gentle_interval
        } else {
            self.cfg.probe_interval
        }
    }

    /// The silence after which a watched link to `id` is dead.
    pub(super) fn unreachable_of(&self, id: &I) -> Duration {
        if self.gentle_member(id) {
            self.cfg.gentle_unreachable_after
        } else {
            self.cfg.unreachable_after
        }
    }

    /// The monitors `x` asks for: one for a gentle member.
    fn monitor_count(&self, x: &I) -> usize {
        if self.gentle_member(x) {
            1
        } else {
            self.cfg.monitors
        }
    }

    /// Whether `c` may monitor `x`: a member that is not gentle; a gentle member only
    /// for another gentle member, and only when every other member of the rings is
    /// gentle (they watch each other gently rather than nobody). A member that is not
    /// gentle among gentle ones only has no monitor: they take it for up while it is
    /// theirs (see `vouched_set`), and nothing wakes them for it.
    fn may_monitor(&self, c: &I, x: &I) -> bool {
        !self.gentle_member(c)
            || (self.gentle_member(x)
                && self
                    .roles
                    .set
                    .iter()
                    .all(|o| o == x || self.gentle_member(o)))
    }

    /// The periodic work's interval: a gentle member does it at its beats.
    pub(super) fn ae_interval(&self) -> Duration {
        if self.gentle {
            self.cfg.gentle_interval
        } else {
            self.cfg.anti_entropy_interval
        }
    }

    /// `peer` is down in our view: unreachable or left (or unknown).
    pub(super) fn is_down(&self, peer: &I) -> bool {
        self.views
            .get(peer)
            .is_none_or(|v| matches!(v.state, State::Unreachable | State::Left))
    }

    /// We are to watch `peer`: we monitor it, or (over QUIC, where a link is watched from
    /// both sides) it is one of our monitors.
    pub(super) fn expected(&self, peer: &I) -> bool {
        let Some(link) = self.links.get(peer) else {
            return false;
        };
        self.roles.subjects.contains(peer)
            || (!link.datagram
                && !self.gentle
                && link.broken.is_none()
                && self.roles.targets.contains(peer))
    }

    /// Recompute our monitors and subjects after the views changed, and start watching
    /// where we now must. True if anything changed that our record or views show.
    pub(super) fn update_roles(&mut self, now: Instant) -> bool {
        let k = self.cfg.monitors;
        let mine = self.monitor_count(&self.me);
        // The rings are built over the members we see up, orphans (whose watchers went
        // out of sight) aside: they are given monitors, they do not monitor.
        let mut set: BTreeSet<I> = self
            .views
            .values()
            .filter(|v| !matches!(v.state, State::Unreachable | State::Left))
            .map(|v| v.id)
            .filter(|id| !self.orphans.contains_key(id))
            .collect();
        set.insert(self.me);
        let pool: BTreeSet<I> = self
            .views
            .values()
            .filter(|v| !matches!(v.state, State::Unreachable | State::Left))
            .map(|v| v.id)
            .chain([self.me])
            .collect();
        let full = set != self.roles.set || pool != self.roles.pool;
        if set != self.roles.set {
            self.roles.rings = Rings::new(&set, k);
        }
        self.roles.set = set;
        self.roles.pool = pool;
        let mut changed = false;

        // Our monitors: the links we can send beats through.
        let links = &self.links;
        let roles = &self.roles;
        let targets = roles.rings.monitors(self.me, mine, |c| {
            roles.set.contains(c)
                && links.get(c).is_some_and(|l| l.usable())
                && self.may_monitor(c, &self.me)
        });
        if targets != self.roles.targets {
            self.roles.targets = targets;
            self.stats.monitor_changes += 1;
            changed = true;
        }

        // Our subjects: members whose monitors (as they compute them, over the links
        // their records list) include us.
        let stale = std::mem::take(&mut self.roles.stale);
        let check: Vec<I> = if full {
            self.roles.pool.iter().copied().collect()
        } else {
            stale
                .into_iter()
                .filter(|x| self.roles.pool.contains(x))
                .collect()
        };
        let mut subjects = if full {
            BTreeSet::new()
        } else {
            self.roles.subjects.clone()
        };
        for x in check {
            if x == self.me {
                continue;
            }
            if self.monitors_of(&x).contains(&self.me) && self.links.contains_key(&x) {
                subjects.insert(x);
            } else {
                subjects.remove(&x);
            }
        }
        subjects.retain(|x| self.roles.pool.contains(x));
        if subjects != self.roles.subjects {
            self.roles.subjects = subjects;
            changed = true;
        }

        // Start watching.
        let peers: Vec<I> = self.links.keys().copied().collect();
        for peer in peers {
            let expected = self.expected(&peer);
            let target = self.roles.targets.contains(&peer);
            let link = self.links.get_mut(&peer).expect("listed");
            link.beat_out_since = if link.datagram && target && link.broken.is_none() {
                Some(link.beat_out_since.unwrap_or(now))
            } else {
                None
            };
            if !expected {
                link.contacted = false;
                continue;
            }
            if link.status != LinkStatus::Unwatched {
                continue;
            }
            if !link.datagram {
                // Over QUIC the link is watched from both sides at once: we beat it.
                self.set_status(peer, LinkStatus::Active, now);
                changed = true;
            } else if !link.contacted {
                link.contacted = true;
                if now.saturating_duration_since(link.last_heard) <= self.cfg.probe_interval {
                    // Just heard (the link just came up): watched from now, as if it had
                    // beaten us; its beats follow within an interval.
                    self.set_status(peer, LinkStatus::Active, now);
                    if let Some(link) = self.links.get_mut(&peer) {
                        link.beat_seen = true;
                    }
                    changed = true;
                } else {
                    // Our new subject's beats may take an interval to come; one ping now
                    // lets us vouch for it at once (it may have lost its other monitors).
                    self.ping(peer, now);
                }
            }
        }
        changed
    }

    /// The monitors of `x` as `x` computes them: over the ring members, among the links
    /// its record lists as usable (all of them while we have no record of it). Our own
    /// link to `x` counts unless its record reports us lost: its record may be older than
    /// the link (a crash right after connecting must still be watched); where `x` really
    /// does not beat us, we never accuse it (see `eval_links`).
    fn monitors_of(&self, x: &I) -> Vec<I> {
        let rec = self.records.get(x).filter(|r| !r.left);
        let set = &self.roles.set;
        let me = self.me;
        self.roles.rings.monitors(*x, self.monitor_count(x), |c| {
            let entry = rec.map(|r| {
                r.links
                    .binary_search_by(|e| e.peer.cmp(c))
                    .ok()
                    .map(|i| r.links[i].watch)
            });
            set.contains(c)
                && self.may_monitor(c, x)
                && match entry {
                    None => true,
                    Some(Some(w)) => w != Watch::Lost,
                    Some(None) => *c == me,
                }
        })
    }

    /// What `peer`'s newest record says of us.
    fn entry_for_me(&self, peer: &I) -> (Option<(u64, u64)>, Option<Watch>) {
        let Some(rec) = self.records.get(peer) else {
            return (None, None);
        };
        let e = rec
            .links
            .iter()
            .find(|e| e.peer == self.me)
            .map(|e| e.watch);
        (Some(rec.key()), e)
    }

    /// Over heartbeats nothing answers a beat: a monitor whose record (we have one) has
    /// not said it hears us for a suspicion deadline and an interval after we began
    /// beating it does not get our beats. It is no longer our monitor nor a direct path (another member
    /// takes its place) until its record changes what it says of us, or for
    /// `BROKEN_RETRY_INTERVALS` intervals.
    pub(super) fn check_broken(&mut self, now: Instant) {
        let own = self.interval_of(&self.me);
        let judge = self.unreachable_of(&self.me) + own;
        let retry = own * BROKEN_RETRY_INTERVALS;
        let peers: Vec<I> = self.links.keys().copied().collect();
        for peer in peers {
            let (key, entry) = self.entry_for_me(&peer);
            let link = self.links.get_mut(&peer).expect("listed");
            let changed = match link.broken {
                Some(b) => {
                    let newer = key.is_some_and(|k| k > b.key) && entry != b.entry;
                    if newer || now >= b.since + retry {
                        link.broken = None;
                        // Unless the peer now says it hears us, worth a try but not yet
                        // a path: it must answer first.
                        if entry != Some(Watch::Alive) {
                            link.unverified = true;
                        }
                        true
                    } else {
                        false
                    }
                }
                None => match link.beat_out_since {
                    Some(s)
                        if now >= s + judge
                            && key.is_some()
                            && !matches!(entry, Some(Watch::Alive | Watch::Suspect)) =>
                    {
                        link.broken = Some(Broken {
                            since: now,
                            key: key.unwrap_or((0, 0)),
                            entry,
                        });
                        link.beat_out_since = None;
                        true
                    }
                    _ => false,
                },
            };
            if changed {
                self.record_dirty = true;
                self.topo_changed();
            }
        }
    }
}
