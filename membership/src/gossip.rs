//! Dissemination of records and broadcast events: de-duplication by event id, forwarding
//! along a deterministic tree computed from the link records, anti-entropy digests.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use crate::core::{LinkStatus, Membership};
use crate::message::{item_size, Event, EventId, Item, Message, MAX_LIST, PACK_BYTES};
use crate::route;
use crate::{NodeId, Output};

/// Record versions and recent event ids, as exchanged in `DigestFull`.
type DigestEntries<I> = (Vec<(I, u64, u64)>, Vec<EventId<I>>);

/// Seen sequence numbers of one origin: everything at or below `floor`, plus a bounded
/// window above it. When the window overflows, its lowest entry becomes the floor.
#[derive(Clone, Debug, Default)]
pub(crate) struct Seen {
    floor: Option<u64>,
    above: BTreeSet<u64>,
}

impl Seen {
    /// True if `seq` is new (and records it).
    pub(crate) fn insert(&mut self, seq: u64, window: usize) -> bool {
        if self.floor.is_some_and(|f| seq <= f) || !self.above.insert(seq) {
            return false;
        }
        while self.above.len() > window {
            self.floor = self.above.pop_first();
        }
        true
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.above.len()
    }
}

impl<I: NodeId> Membership<I> {
    /// Hand `item` (just learned from `from`, or originated here when `None`) to the
    /// neighbours this member is responsible for: its children in the breadth-first tree
    /// rooted at the item's origin over the announced links (the origin itself sends to
    /// all its direct neighbours). What a changing topology makes the tree miss,
    /// anti-entropy repairs.
    pub(crate) fn disseminate(&mut self, item: Item<I>, from: Option<I>) {
        let origin = item.origin();
        let root_is_left = self.is_left(&origin) && origin != self.me;
        let adj = if root_is_left {
            self.build_adjacency(Some(origin))
        } else {
            self.adjacency()
        };
        let parents = route::bfs_parents(&adj, origin);
        // If our view does not connect the origin to us, we are nobody's parent: the
        // origin's own sends and anti-entropy cover it (forwarding anyway would flood).
        let root = origin;
        let targets: Vec<I> = self
            .links
            .iter()
            .filter(|(_, l)| l.status != LinkStatus::Dead)
            .map(|(p, _)| *p)
            .filter(|p| Some(*p) != from && *p != origin && *p != root)
            .filter(|p| origin == self.me || parents.get(p) == Some(&self.me))
            .collect();
        for t in targets {
            self.outbox.entry(t).or_default().push(item.clone());
        }
    }

    pub(crate) fn on_item(&mut self, from: I, item: Item<I>, now: Instant) {
        match item {
            Item::Record(rec) => self.on_record(from, rec, now),
            Item::Event(event) => {
                let origin = event.id.origin;
                if origin == self.me || !self.roster.contains(&origin) {
                    return;
                }
                let window = self.cfg.seen_window;
                if !self
                    .seen
                    .entry(origin)
                    .or_default()
                    .insert(event.id.seq, window)
                {
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
                self.remember_event(now, event.clone());
                self.disseminate(Item::Event(event), Some(from));
            }
        }
    }

    pub(crate) fn remember_event(&mut self, now: Instant, event: Event<I>) {
        self.recent.push_back((now, event));
        while self.recent.len() > self.cfg.event_buffer_max {
            self.recent.pop_front();
        }
        self.digest_cache = None;
    }

    pub(crate) fn expire_events(&mut self, now: Instant) {
        let retain = self.cfg.event_retain;
        let before = self.recent.len();
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > retain)
        {
            self.recent.pop_front();
        }
        if self.recent.len() != before {
            self.digest_cache = None;
        }
    }

    fn digest_entries(&self) -> DigestEntries<I> {
        let records: Vec<(I, u64, u64)> = self
            .records
            .values()
            .map(|r| (r.origin, r.incarnation, r.version))
            .collect();
        let mut events: Vec<EventId<I>> = self.recent.iter().map(|(_, e)| e.id).collect();
        events.sort();
        events.truncate(MAX_LIST);
        (records, events)
    }

    pub(crate) fn digest_hash(&mut self) -> u64 {
        if let Some(h) = self.digest_cache {
            return h;
        }
        let (records, events) = self.digest_entries();
        let bytes = bincode::serde::encode_to_vec((records, events), bincode::config::standard())
            .unwrap_or_default();
        // FNV-1a, identical on every member and platform.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.digest_cache = Some(h);
        h
    }

    pub(crate) fn digest_full(&self, reply: bool) -> Message<I> {
        let (records, events) = self.digest_entries();
        Message::DigestFull {
            reply,
            records,
            events,
        }
    }

    pub(crate) fn on_digest_full(
        &mut self,
        from: I,
        reply: bool,
        records: Vec<(I, u64, u64)>,
        events: Vec<EventId<I>>,
    ) {
        let theirs: BTreeMap<I, (u64, u64)> =
            records.into_iter().map(|(o, i, v)| (o, (i, v))).collect();
        let mut push: Vec<Item<I>> = Vec::new();
        for rec in self.records.values() {
            if rec.origin == from {
                continue;
            }
            if theirs.get(&rec.origin).is_none_or(|k| *k < rec.key()) {
                push.push(Item::Record(rec.clone()));
            }
        }
        let their_events: BTreeSet<EventId<I>> = events.into_iter().collect();
        for (_, e) in &self.recent {
            if e.id.origin != from && !their_events.contains(&e.id) {
                push.push(Item::Event(e.clone()));
            }
        }
        if !push.is_empty() {
            self.outbox.entry(from).or_default().extend(push);
        }
        if reply {
            let msg = self.digest_full(false);
            self.send(from, msg);
        }
    }

    /// Pack queued items into `Gossip` messages of bounded size.
    pub(crate) fn flush_outbox(&mut self) {
        let outbox = std::mem::take(&mut self.outbox);
        for (to, items) in outbox {
            let mut batch = Vec::new();
            let mut size = 0;
            for item in items {
                let s = item_size(&item);
                if !batch.is_empty() && (size + s > PACK_BYTES || batch.len() >= MAX_LIST) {
                    self.send(
                        to,
                        Message::Gossip {
                            items: std::mem::take(&mut batch),
                        },
                    );
                    size = 0;
                }
                size += s;
                batch.push(item);
            }
            if !batch.is_empty() {
                self.send(to, Message::Gossip { items: batch });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_window_is_bounded_and_deduplicates() {
        let mut s = Seen::default();
        assert!(s.insert(10, 3));
        assert!(!s.insert(10, 3));
        assert!(s.insert(12, 3));
        assert!(s.insert(11, 3));
        assert!(s.insert(13, 3));
        assert_eq!(s.len(), 3);
        // 10 fell to the floor: still seen, as is anything below it.
        assert!(!s.insert(10, 3));
        assert!(!s.insert(5, 3));
        assert!(s.insert(14, 3));
    }
}
