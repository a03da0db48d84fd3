//! Graph algorithms over the link records: shortest paths by RTT (routing) and the
//! deterministic dissemination tree (who forwards an item to whom).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::hash::Hash;

/// Adjacency: node -> (neighbour, RTT in microseconds). Only links the node itself
/// announces as live.
pub(crate) type Adjacency<I> = BTreeMap<I, Vec<(I, u64)>>;

/// Dijkstra from `src`: for every reachable node, (path cost in µs, sum of RTTs in µs,
/// first hop). Cost of a hop is its RTT plus `hop_penalty_us`; ties break towards the
/// smaller id.
pub(crate) fn shortest_paths<I: Ord + Copy + Hash>(
    adj: &Adjacency<I>,
    src: I,
    hop_penalty_us: u64,
) -> BTreeMap<I, (u64, u64, I)> {
    let mut best: HashMap<I, (u64, u64, I)> = HashMap::new();
    let mut done: HashSet<I> = HashSet::new();
    let mut heap = BinaryHeap::new();
    heap.push(Reverse((0u64, 0u64, src, src)));
    while let Some(Reverse((cost, rtt, node, first))) = heap.pop() {
        if !done.insert(node) {
            continue;
        }
        let Some(edges) = adj.get(&node) else {
            continue;
        };
        for &(next, w) in edges {
            if next == src || done.contains(&next) {
                continue;
            }
            let hop_first = if node == src { next } else { first };
            let cand = (cost + w + hop_penalty_us, rtt + w, hop_first);
            if best.get(&next).is_none_or(|b| cand < *b) {
                best.insert(next, cand);
                heap.push(Reverse((cand.0, cand.1, next, cand.2)));
            }
        }
    }
    best.into_iter().collect()
}

/// Breadth-first tree from `root`: child -> parent. Within a level nodes are taken in
/// ascending id order, so a node's parent is the smallest-id node of the previous level
/// that announces a link to it. Every member computing this from the same records gets
/// the same tree, so each node receives an item from exactly one parent. The edges of a
/// node `leaf` says yes to are not followed (it forwards nothing), the root's always
/// are. The walk stops once every node of `wanted` has its parent: a parent, once
/// set, never changes, so those are the parents of the whole tree.
pub(crate) fn bfs_parents<I: Ord + Copy + Hash>(
    adj: &Adjacency<I>,
    root: I,
    leaf: impl Fn(&I) -> bool,
    wanted: &[I],
) -> HashMap<I, I> {
    let mut parent = HashMap::new();
    let mut missing: HashSet<I> = wanted.iter().copied().filter(|w| *w != root).collect();
    let mut visited = HashSet::new();
    visited.insert(root);
    let mut level = vec![root];
    while !level.is_empty() && !missing.is_empty() {
        let mut next = BTreeSet::new();
        for &u in &level {
            if u != root && leaf(&u) {
                continue;
            }
            let Some(edges) = adj.get(&u) else { continue };
            for &(v, _) in edges {
                if visited.insert(v) {
                    parent.insert(v, u);
                    next.insert(v);
                    missing.remove(&v);
                }
            }
        }
        level = next.into_iter().collect();
    }
    parent
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adj(edges: &[(u32, u32, u64)]) -> Adjacency<u32> {
        let mut a: Adjacency<u32> = BTreeMap::new();
        for &(u, v, w) in edges {
            a.entry(u).or_default().push((v, w));
            a.entry(v).or_default().push((u, w));
        }
        a
    }

    #[test]
    fn line_routes_through_middle() {
        let a = adj(&[(1, 2, 1000), (2, 3, 1000)]);
        let sp = shortest_paths(&a, 1, 0);
        assert_eq!(sp[&3], (2000, 2000, 2));
        assert_eq!(sp[&2].2, 2);
    }

    #[test]
    fn cheaper_longer_path_wins() {
        let a = adj(&[(1, 2, 10_000), (1, 3, 1000), (3, 2, 1000)]);
        let sp = shortest_paths(&a, 1, 100);
        assert_eq!(sp[&2].2, 3);
        assert_eq!(sp[&2].1, 2000);
    }

    #[test]
    fn full_mesh_tree_is_a_star() {
        let mut e = vec![];
        for u in 0..5u32 {
            for v in (u + 1)..5 {
                e.push((u, v, 1));
            }
        }
        let p = bfs_parents(&adj(&e), 3, |_| false, &[0, 1, 2, 4]);
        assert_eq!(p.len(), 4);
        assert!(p.values().all(|&x| x == 3));
    }

    #[test]
    fn a_leaf_forwards_nothing_and_the_walk_stops_once_the_wanted_have_parents() {
        // 0 - 1 - 2 - 3, 0 - 4 - 3
        let a = adj(&[(0, 1, 1), (1, 2, 1), (2, 3, 1), (0, 4, 1), (4, 3, 1)]);
        let all = [1, 2, 3, 4];
        let p = bfs_parents(&a, 0, |_| false, &all);
        assert_eq!((p[&2], p[&3]), (1, 4));
        // 4 is a leaf: 3 is reached through 1 and 2 instead.
        let p = bfs_parents(&a, 0, |n| *n == 4, &all);
        assert_eq!((p[&2], p[&3], p[&4]), (1, 2, 0));
        // The root's own edges are followed even when it is a leaf.
        assert_eq!(bfs_parents(&a, 0, |_| true, &all).len(), 2);
        // Asked only for 1 and 4 (the first level), the walk goes no further; what it
        // gives for them is what the whole walk gives.
        let p = bfs_parents(&a, 0, |_| false, &[1, 4]);
        assert_eq!(p, HashMap::from([(1, 0), (4, 0)]));
        assert!(bfs_parents(&a, 0, |_| false, &[]).is_empty());
    }

    #[test]
    fn tree_parent_is_smallest_previous_level() {
        // 0 - 1, 0 - 2, 1 - 3, 2 - 3
        let p = bfs_parents(
            &adj(&[(0, 1, 1), (0, 2, 1), (1, 3, 1), (2, 3, 1)]),
            0,
            |_| false,
            &[1, 2, 3],
        );
        assert_eq!(p[&3], 1);
        assert_eq!(p[&1], 0);
    }
}
