//! Property tests: convergence, commutativity, idempotence, conflict order.

use proptest::prelude::*;

use super::super::{Change, Store, MAX_DRIFT_MS};
use super::{device, dump, open, pull, rt, sync_all, FakeWall};

const BASE_MS: u64 = 1_700_000_000_000;
const REPLICAS: usize = 3;

#[derive(Debug, Clone)]
enum Action {
    Write {
        r: usize,
        key: u8,
        value: Option<u8>,
    },
    Pull {
        to: usize,
        from: usize,
        page: usize,
    },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (0..REPLICAS, 0..4u8, proptest::option::weighted(0.75, any::<u8>()))
            .prop_map(|(r, key, value)| Action::Write { r, key, value }),
        2 => (0..REPLICAS, 0..REPLICAS, 1..4usize)
            .prop_map(|(to, from, page)| Action::Pull { to, from, page }),
    ]
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

fn keys() -> Vec<String> {
    (0..4u8).map(|k| format!("k{k}")).collect()
}

/// A small deterministic generator for shuffles.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// Shuffled, with some changes repeated.
fn shuffled_with_dups(all: &[Change], rng: &mut Rng) -> Vec<Change> {
    let mut out = all.to_vec();
    for _ in 0..all.len() / 2 {
        out.push(all[rng.below(all.len())].clone());
    }
    rng.shuffle(&mut out);
    out
}

/// A random interleaving of the origins that keeps each origin's own order, with repeats.
fn interleaved_with_dups(all: &[Change], rng: &mut Rng) -> Vec<Change> {
    let mut slots: Vec<[u8; 32]> = all.iter().map(|c| c.version.origin.device).collect();
    rng.shuffle(&mut slots);
    let mut per_origin: Vec<Vec<&Change>> = (0..REPLICAS as u8)
        .map(|n| {
            let mut v: Vec<&Change> = all
                .iter()
                .filter(|c| c.version.origin.device == device(n))
                .collect();
            v.sort_by_key(|c| c.version.seq);
            v.reverse();
            v
        })
        .collect();
    let mut out = Vec::new();
    for slot in slots {
        let n = usize::from(slot[0]);
        if let Some(c) = per_origin[n].pop() {
            out.push(c.clone());
            if rng.below(3) == 0 {
                out.push(out[rng.below(out.len())].clone());
            }
        }
    }
    out
}

async fn run_scenario(
    dir: &std::path::Path,
    skews: &[i64],
    actions: &[Action],
) -> (Vec<Store>, Vec<Change>) {
    let walls: Vec<FakeWall> = (0..REPLICAS).map(|_| FakeWall::new(BASE_MS)).collect();
    let stores: Vec<Store> = (0..REPLICAS)
        .map(|n| open(dir, n as u8, &walls[n]))
        .collect();
    let mut all = Vec::new();
    for (step, action) in actions.iter().enumerate() {
        for (wall, skew) in walls.iter().zip(skews) {
            wall.set((BASE_MS + step as u64 * 7).saturating_add_signed(*skew));
        }
        match action {
            Action::Write { r, key, value } => {
                let key = format!("k{key}");
                let change = match value {
                    Some(v) => Some(stores[*r].put(&key, vec![*v]).await.expect("put")),
                    None => stores[*r].del(&key).await.expect("del"),
                };
                all.extend(change);
            }
            Action::Pull { to, from, page } if to != from => {
                pull(&stores[*to], &stores[*from], *page).await;
            }
            Action::Pull { .. } => {}
        }
    }
    (stores, all)
}

proptest! {
    // Each case opens real (fsynced) stores; PROPTEST_CASES raises the count.
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Replicas that sync in any pattern converge; applying the same set of changes to fresh
    /// stores in any order, with duplicates, in one batch or many, gives the same state.
    #[test]
    fn any_order_any_duplication_same_state(
        skews in proptest::collection::vec(-200_000i64..200_000, REPLICAS),
        actions in proptest::collection::vec(action(), 1..40),
        seed in 1u64..u64::MAX,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        rt().block_on(async {
            let (stores, all) = run_scenario(dir.path(), &skews, &actions).await;
            sync_all(&stores).await;
            let expected = dump(&stores[0], &keys());
            for s in &stores[1..] {
                prop_assert_eq!(&dump(s, &keys()), &expected);
            }
            let mut rng = Rng(seed);
            let wall = FakeWall::new(BASE_MS);
            let one_batch = open(dir.path(), 10, &wall);
            one_batch.apply(shuffled_with_dups(&all, &mut rng)).await.expect("apply");
            let batches = open(dir.path(), 11, &wall);
            let stream = interleaved_with_dups(&all, &mut rng);
            let mut rest = &stream[..];
            while !rest.is_empty() {
                let n = 1 + rng.below(rest.len().min(5));
                batches.apply(rest[..n].to_vec()).await.expect("apply");
                batches.apply(rest[..n].to_vec()).await.expect("apply again");
                rest = &rest[n..];
            }
            prop_assert_eq!(&dump(&one_batch, &keys()), &expected);
            prop_assert_eq!(&dump(&batches, &keys()), &expected);
            Ok(())
        })?;
    }

    /// Concurrent writes (no sync in between) converge to the max (hlc, origin); the
    /// others remain visible as siblings.
    #[test]
    fn concurrent_writes_converge_to_max(
        skews in proptest::collection::vec(-200_000i64..200_000, REPLICAS),
        writes in proptest::collection::vec(1..4usize, REPLICAS),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        rt().block_on(async {
            let walls: Vec<FakeWall> = skews.iter().map(|s| FakeWall::new(BASE_MS.saturating_add_signed(*s))).collect();
            let stores: Vec<Store> = (0..REPLICAS).map(|n| open(dir.path(), n as u8, &walls[n])).collect();
            let mut last = Vec::new();
            for (n, count) in writes.iter().enumerate() {
                let mut change = None;
                for i in 0..*count {
                    change = Some(stores[n].put("k", vec![n as u8, i as u8]).await.expect("put"));
                }
                last.extend(change);
            }
            sync_all(&stores).await;
            last.sort_by_key(|c| std::cmp::Reverse(c.version));
            let expected: Vec<_> = last.iter().map(|c| (c.version, c.value.clone())).collect();
            for s in &stores {
                prop_assert_eq!(s.versions("k").expect("versions"), expected.clone());
                let entry = s.get("k").expect("get").expect("present");
                prop_assert_eq!(entry.version, last[0].version);
                prop_assert_eq!(entry.siblings.len(), REPLICAS - 1);
            }
            Ok(())
        })?;
    }

    /// A write made after seeing another one wins, even when the later writer's wall clock
    /// is far behind (also beyond the drift bound).
    #[test]
    fn causally_later_write_wins_with_clock_behind(ahead in 0u64..(10 * MAX_DRIFT_MS)) {
        let dir = tempfile::tempdir().expect("tempdir");
        rt().block_on(async {
            let fast = FakeWall::new(BASE_MS + ahead);
            let slow = FakeWall::new(BASE_MS);
            let a = open(dir.path(), 1, &fast);
            let b = open(dir.path(), 2, &slow);
            let first = a.put("k", b"from a".to_vec()).await.expect("put");
            pull(&b, &a, 10).await;
            let second = b.put("k", b"from b".to_vec()).await.expect("put");
            prop_assert!(second.version.hlc > first.version.hlc);
            pull(&a, &b, 10).await;
            for s in [&a, &b] {
                let entry = s.get("k").expect("get").expect("present");
                prop_assert_eq!(entry.value, b"from b".to_vec());
                prop_assert!(entry.siblings.is_empty());
            }
            Ok(())
        })?;
    }
}
