//! Dissemination of records and broadcast events: de-duplication by event id, forwarding
//! along a deterministic tree computed from the link records, anti-entropy digests.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::message::{item_size, Event, EventId, Item, Message, Record, MAX_LIST, PACK_BYTES};
use crate::route::{self, Adjacency};
use crate::types::NodeId;

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

/// The dissemination state of one member: seen broadcast ids, the recent events kept
/// for repair, the items queued per neighbour and the cached anti-entropy hash. The core
/// owns one and hands it what it needs of the core's own state (its id, the adjacency,
/// its live links, the records); gossip never reaches into the core.
pub(crate) struct Gossip<I> {
    seen: BTreeMap<I, Seen>,
    recent: VecDeque<(Instant, Event<I>)>,
    outbox: BTreeMap<I, Vec<Item<I>>>,
    digest_cache: Option<u64>,
    /// `Config::seen_window`.
    seen_window: usize,
    /// `Config::event_buffer_max`.
    event_buffer_max: usize,
    /// `Config::event_retain`.
    event_retain: Duration,
}

impl<I: NodeId> Gossip<I> {
    pub(crate) fn new(cfg: &Config) -> Self {
        Gossip {
            seen: BTreeMap::new(),
            recent: VecDeque::new(),
            outbox: BTreeMap::new(),
            digest_cache: None,
            seen_window: cfg.seen_window,
            event_buffer_max: cfg.event_buffer_max,
            event_retain: cfg.event_retain,
        }
    }

    /// A member left the roster: its seen ids and the items queued for it go.
    pub(crate) fn forget(&mut self, id: &I) {
        self.seen.remove(id);
        self.outbox.remove(id);
    }

    /// Hand `item` (just learned from `from`, or originated by `me` when `None`) to the
    /// neighbours this member is responsible for: its children in the breadth-first tree
    /// rooted at the item's origin over the announced links `adj`, in which the members
    /// `leaf` names forward nothing (the origin itself sends to all its direct
    /// neighbours). `neighbours` are the direct links that are not dead.
    /// What a changing topology makes the tree miss, anti-entropy repairs.
    pub(crate) fn disseminate(
        &mut self,
        me: I,
        item: Item<I>,
        from: Option<I>,
        adj: &Adjacency<I>,
        leaf: impl Fn(&I) -> bool,
        neighbours: impl IntoIterator<Item = I>,
    ) {
        let origin = item.origin();
        let mut targets: Vec<I> = neighbours
            .into_iter()
            .filter(|p| Some(*p) != from && *p != origin)
            .collect();
        // If our view does not connect the origin to us, we are nobody's parent: the
        // origin's own sends and anti-entropy cover it (forwarding anyway would flood).
        if origin != me {
            let parents = route::bfs_parents(adj, origin, leaf, &targets);
            targets.retain(|p| parents.get(p) == Some(&me));
        }
        for t in targets {
            self.outbox.entry(t).or_default().push(item.clone());
        }
    }

    /// True if the broadcast `id` was not seen before (and records it).
    pub(crate) fn first_sighting(&mut self, id: EventId<I>) -> bool {
        self.seen
            .entry(id.origin)
            .or_default()
            .insert(id.seq, self.seen_window)
    }

    /// Queue `rec` for `to` unless a record of the same origin is queued already.
    pub(crate) fn queue_record(&mut self, to: I, rec: &Record<I>) {
        let items = self.outbox.entry(to).or_default();
        if !items
            .iter()
            .any(|i| matches!(i, Item::Record(r) if r.origin == rec.origin))
        {
            items.push(Item::Record(rec.clone()));
        }
    }

    pub(crate) fn remember_event(&mut self, now: Instant, event: Event<I>) {
        self.recent.push_back((now, event));
        while self.recent.len() > self.event_buffer_max {
            self.recent.pop_front();
        }
        self.digest_cache = None;
    }

    pub(crate) fn expire_events(&mut self, now: Instant) {
        let retain = self.event_retain;
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

    /// The records changed: the anti-entropy hash must be recomputed.
    pub(crate) fn records_changed(&mut self) {
        self.digest_cache = None;
    }

    fn digest_entries(&self, records: &BTreeMap<I, Record<I>>) -> DigestEntries<I> {
        let records: Vec<(I, u64, u64)> = records
            .values()
            .map(|r| (r.origin, r.incarnation, r.version))
            .collect();
        let mut events: Vec<EventId<I>> = self.recent.iter().map(|(_, e)| e.id).collect();
        events.sort();
        events.truncate(MAX_LIST);
        (records, events)
    }

    /// The anti-entropy hash over `records` (every member's newest, ours included) and
    /// the recent event ids.
    pub(crate) fn digest_hash(&mut self, records: &BTreeMap<I, Record<I>>) -> u64 {
        if let Some(h) = self.digest_cache {
            return h;
        }
        let (records, events) = self.digest_entries(records);
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

    pub(crate) fn digest_full(&self, reply: bool, records: &BTreeMap<I, Record<I>>) -> Message<I> {
        let (records, events) = self.digest_entries(records);
        Message::DigestFull {
            reply,
            records,
            events,
        }
    }

    /// A `DigestFull` from `from`: queue for it what it lacks of `ours` (our records) and
    /// of the recent events. The reply, when asked for, is the caller's.
    pub(crate) fn on_digest_full(
        &mut self,
        from: I,
        records: Vec<(I, u64, u64)>,
        events: Vec<EventId<I>>,
        ours: &BTreeMap<I, Record<I>>,
    ) {
        let theirs: BTreeMap<I, (u64, u64)> =
            records.into_iter().map(|(o, i, v)| (o, (i, v))).collect();
        let mut push: Vec<Item<I>> = Vec::new();
        for rec in ours.values() {
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
    }

    /// Pack queued items into `Gossip` messages of bounded size, handed to `send`.
    pub(crate) fn flush(&mut self, mut send: impl FnMut(I, Message<I>)) {
        let outbox = std::mem::take(&mut self.outbox);
        for (to, items) in outbox {
            let mut batch = Vec::new();
            let mut size = 0;
            for item in items {
                let s = item_size(&item);
                if !batch.is_empty() && (size + s > PACK_BYTES || batch.len() >= MAX_LIST) {
                    send(
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
                send(to, Message::Gossip { items: batch });
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
