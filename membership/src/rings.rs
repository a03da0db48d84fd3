//! Monitoring rings: who watches whom. Ring `r` orders the members by a hash of
//! `(r, id)`; a member's monitors are its successors on the rings, one per ring (walking
//! on past members already chosen, or refused by a filter), so every member has the same
//! small number of monitors whatever the size of the mesh, and every member computing
//! this from the same member set gets the same answer.

use std::collections::BTreeSet;

use crate::types::NodeId;

/// Who this member beats and whose beats it expects, and the rings they come from.
#[derive(Clone, Debug)]
pub(crate) struct Roles<I> {
    /// The members the rings are built over: this member and those it sees up.
    pub(crate) set: BTreeSet<I>,
    /// Members whose monitors are computed: `set` plus members in their orphan grace.
    pub(crate) pool: BTreeSet<I>,
    pub(crate) rings: Rings<I>,
    /// This member's monitors: it beats them.
    pub(crate) targets: Vec<I>,
    /// The members this member monitors: it expects their beats.
    pub(crate) subjects: BTreeSet<I>,
    /// Members whose link records changed since `subjects` was computed.
    pub(crate) stale: BTreeSet<I>,
}

impl<I: NodeId> Roles<I> {
    pub(crate) fn new() -> Self {
        Roles {
            set: BTreeSet::new(),
            pool: BTreeSet::new(),
            rings: Rings::new(&BTreeSet::new(), 0),
            targets: Vec::new(),
            subjects: BTreeSet::new(),
            stale: BTreeSet::new(),
        }
    }
}

/// The rings over one member set.
#[derive(Clone, Debug)]
pub(crate) struct Rings<I> {
    /// Per ring: the members ordered by `(key(ring, id), id)`.
    order: Vec<Vec<(u64, I)>>,
}

/// The position of `id` on ring `ring`: FNV-1a over the bincode encoding of
/// `(ring, id)`, then a 64-bit finalizer to spread it. The same on every platform and
/// release (std's hasher promises neither).
pub(crate) fn key<I: NodeId>(ring: u32, id: &I) -> u64 {
    let bytes =
        bincode::serde::encode_to_vec((ring, id), bincode::config::standard()).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finalizer.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

impl<I: NodeId> Rings<I> {
    /// `rings` rings over `members`.
    pub(crate) fn new(members: &BTreeSet<I>, rings: usize) -> Self {
        let order = (0..rings as u32)
            .map(|r| {
                let mut v: Vec<(u64, I)> = members.iter().map(|id| (key(r, id), *id)).collect();
                v.sort_unstable();
                v
            })
            .collect();
        Rings { order }
    }

    /// Up to `k` distinct monitors of `x` among the members `ok` accepts (never `x`):
    /// in rounds over the rings, each ring gives the next of its successors of `x` that
    /// is accepted and not chosen yet. `x` need not be one of the members.
    pub(crate) fn monitors(&self, x: I, k: usize, ok: impl Fn(&I) -> bool) -> Vec<I> {
        let mut chosen: Vec<I> = Vec::with_capacity(k);
        // Per ring: the index of the next successor to look at, and how many are left.
        let mut cursor: Vec<(usize, usize)> = self
            .order
            .iter()
            .enumerate()
            .map(|(r, v)| {
                let me = (key(r as u32, &x), x);
                (v.partition_point(|e| *e <= me), v.len())
            })
            .collect();
        while chosen.len() < k {
            let mut progress = false;
            for (r, v) in self.order.iter().enumerate() {
                if chosen.len() >= k {
                    break;
                }
                let (next, left) = &mut cursor[r];
                while *left > 0 {
                    let c = v[*next % v.len()].1;
                    *next = (*next + 1) % v.len();
                    *left -= 1;
                    if c != x && !chosen.contains(&c) && ok(&c) {
                        chosen.push(c);
                        progress = true;
                        break;
                    }
                }
            }
            if !progress {
                break;
            }
        }
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn set(n: u32) -> BTreeSet<u32> {
        (0..n).collect()
    }

    #[test]
    fn every_member_gets_k_distinct_monitors_and_in_degree_stays_small() {
        for n in [5u32, 10, 30, 100, 300] {
            let rings = Rings::new(&set(n), 3);
            let mut watching: BTreeMap<u32, usize> = BTreeMap::new();
            for x in 0..n {
                let m = rings.monitors(x, 3, |_| true);
                assert_eq!(m.len(), 3, "n={n} x={x}");
                assert!(!m.contains(&x));
                let distinct: BTreeSet<u32> = m.iter().copied().collect();
                assert_eq!(distinct.len(), 3);
                for w in m {
                    *watching.entry(w).or_default() += 1;
                }
            }
            // Each ring gives every member one predecessor; walking past duplicates adds
            // a few more to some.
            let max = watching.values().copied().max().unwrap();
            assert!(max <= 8, "n={n}: a member watches {max}");
            assert_eq!(watching.values().sum::<usize>(), 3 * n as usize);
        }
    }

    #[test]
    fn small_sets_monitor_everyone() {
        let rings = Rings::new(&set(4), 3);
        for x in 0..4 {
            let m: BTreeSet<u32> = rings.monitors(x, 3, |_| true).into_iter().collect();
            assert_eq!(m, (0..4).filter(|y| *y != x).collect());
        }
        let rings = Rings::new(&set(3), 3);
        assert_eq!(rings.monitors(0, 3, |_| true).len(), 2);
    }

    #[test]
    fn a_refused_or_removed_monitor_is_replaced_and_others_stay() {
        let all = set(50);
        let rings = Rings::new(&all, 3);
        for x in 0..50 {
            let m = rings.monitors(x, 3, |_| true);
            let gone = m[1];
            // Refused by the filter: the two others stay, one new member joins them.
            let f = rings.monitors(x, 3, |c| *c != gone);
            assert!(f.contains(&m[0]) && f.contains(&m[2]) && !f.contains(&gone));
            assert_eq!(f.len(), 3);
            // Removed from the member set: the same answer.
            let mut fewer = all.clone();
            fewer.remove(&gone);
            let r = Rings::new(&fewer, 3).monitors(x, 3, |_| true);
            assert_eq!(r, f, "x={x}");
        }
    }

    #[test]
    fn monitors_of_an_outsider_are_computed_from_its_position() {
        let rings = Rings::new(&set(20), 3);
        let m = rings.monitors(1000, 3, |_| true);
        assert_eq!(m.len(), 3);
        let mut with = set(20);
        with.insert(1000);
        assert_eq!(Rings::new(&with, 3).monitors(1000, 3, |_| true), m);
    }

    #[test]
    fn keys_are_stable() {
        // Every member must compute the same rings: the key is a fixed function.
        assert_eq!(key(0, &7u32), key(0, &7u32));
        assert_ne!(key(0, &7u32), key(1, &7u32));
        // (2, 12345) encodes as [2, 0xfb, 0x39, 0x30]; FNV-1a, then splitmix64's finalizer
        // (computed independently).
        assert_eq!(key(2, &12345u32), 0x2330_5427_00a5_5863, "changed ring key");
    }
}
