//! Atomic batches: all or nothing on the writing store, never split by the delta pager,
//! recorded and marked on every store they reach (directly, through a third store, and by
//! reconciliation).

use super::*;
use crate::store::{BatchOp, Condition, StoreError, MAX_BATCH_BYTES, MAX_BATCH_OPS};

const T0: u64 = 1_700_000_000_000;

fn put(key: &str, value: &[u8]) -> BatchOp {
    BatchOp {
        key: key.into(),
        value: Some(value.to_vec()),
        cond: None,
    }
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("b/{i:04}")).collect()
}

/// Every feed event of `store` with its batch (first, last, end), in feed order.
type Marks = Vec<(String, Option<(u64, u64, bool)>)>;

fn marks(store: &Store) -> Marks {
    store
        .feed_since(0, "", 100_000)
        .unwrap()
        .into_iter()
        .map(|e| {
            let m = e.batch.map(|b| (b.range.first, b.range.last, b.end));
            (e.change.key, m)
        })
        .collect()
}

#[tokio::test]
async fn a_batch_is_written_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let a = open(dir.path(), 1, &wall);
    let first = a.put("x", b"old".to_vec()).await.unwrap();
    let r = a
        .batch(vec![
            put("y", b"1"),
            BatchOp {
                key: "x".into(),
                value: Some(b"new".to_vec()),
                cond: Some(Condition::IfVersion {
                    device: first.version.origin.device,
                    seq: first.version.seq,
                    hlc: first.version.hlc,
                }),
            },
            BatchOp {
                key: "absent".into(),
                value: None,
                cond: None,
            },
        ])
        .await
        .unwrap();
    let range = r.range.expect("a range");
    assert_eq!((range.first, range.last), (2, 3), "consecutive writes");
    assert!(r.changes[0].is_some() && r.changes[1].is_some());
    assert_eq!(
        r.changes[2], None,
        "a delete of an absent key writes nothing"
    );
    assert_eq!(a.get("x").unwrap().unwrap().value, b"new");

    // A condition that fails anywhere fails the whole batch: nothing written, no feed.
    let before = a.feed_since(0, "", 100).unwrap().len();
    let e = a
        .batch(vec![
            put("z", b"1"),
            BatchOp {
                key: "y".into(),
                value: Some(b"2".to_vec()),
                cond: Some(Condition::IfAbsent),
            },
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Conflict { ref key, .. } if key == "y"),
        "{e:?}"
    );
    assert_eq!(a.get("z").unwrap(), None);
    assert_eq!(a.feed_since(0, "", 100).unwrap().len(), before);

    // The feed marks the batch, its last change as the end.
    let m = marks(&a);
    assert_eq!(m[1], ("y".into(), Some((2, 3, false))));
    assert_eq!(m[2], ("x".into(), Some((2, 3, true))));
    assert_eq!(m[0].1, None, "a single put is no batch");
}

#[tokio::test]
async fn bad_batches_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let a = open(dir.path(), 1, &wall);
    let refused = |e: StoreError| matches!(e, StoreError::BadBatch(_));
    assert!(refused(a.batch(vec![]).await.unwrap_err()));
    let many: Vec<BatchOp> = (0..=MAX_BATCH_OPS)
        .map(|i| put(&format!("k{i}"), b""))
        .collect();
    assert!(refused(a.batch(many).await.unwrap_err()));
    let twice = vec![put("k", b"1"), put("k", b"2")];
    assert!(refused(a.batch(twice).await.unwrap_err()));
    let big = vec![
        put("a", &vec![0; MAX_BATCH_BYTES / 2]),
        put("b", &vec![0; MAX_BATCH_BYTES / 2]),
    ];
    assert!(matches!(
        a.batch(big).await.unwrap_err(),
        StoreError::BatchTooLarge { .. }
    ));
    assert!(matches!(
        a.batch(vec![put("", b"")]).await.unwrap_err(),
        StoreError::EmptyKey
    ));
    assert_eq!(a.version_vector().unwrap().get(&a.origin()), 0);
}

#[tokio::test]
async fn deltas_never_end_inside_a_batch_and_carry_it_on() {
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let (a, b, c) = (
        open(dir.path(), 1, &wall),
        open(dir.path(), 2, &wall),
        open(dir.path(), 3, &wall),
    );
    a.put("before", b"x".to_vec()).await.unwrap();
    let ks = keys(MAX_BATCH_OPS);
    let ops = ks.iter().map(|k| put(k, k.as_bytes())).collect();
    let r = a.batch(ops).await.unwrap();
    a.put("after", b"y".to_vec()).await.unwrap();

    // Pages of 10: the first holds `before` and then the whole batch.
    let d = a.changes_since(&b.version_vector().unwrap(), 10).unwrap();
    assert!(d.more);
    assert_eq!(d.changes.len(), 1 + MAX_BATCH_OPS);
    assert_eq!(d.batches, vec![r.range.unwrap()]);
    // A page that starts inside nothing and ends at the limit: `after` comes next.
    b.apply_delta(d, a.origin().device).await.unwrap();
    assert_eq!(b.list("b/", None, 10_000).unwrap().len(), MAX_BATCH_OPS);
    assert_eq!(super::pull(&b, &a, 10).await, 1);

    // b carries the batch on to c, marked there too.
    assert_eq!(super::pull(&c, &b, 7).await, MAX_BATCH_OPS + 2);
    for store in [&b, &c] {
        let m = marks(store);
        let batch: Vec<_> = m.iter().filter(|(k, _)| k.starts_with("b/")).collect();
        assert_eq!(batch.len(), MAX_BATCH_OPS);
        assert!(batch
            .iter()
            .all(|(_, m)| m.is_some_and(|(f, l, _)| (f, l) == (2, 1001))));
        let ends: Vec<_> = batch
            .iter()
            .filter(|(_, m)| m.is_some_and(|m| m.2))
            .collect();
        assert_eq!(ends.len(), 1, "one end");
        assert!(batch.last().unwrap().1.unwrap().2, "at the last change");
    }
}

#[tokio::test]
async fn bogus_batch_ranges_from_a_peer_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let (a, b) = (open(dir.path(), 1, &wall), open(dir.path(), 2, &wall));
    a.put("k1", b"1".to_vec()).await.unwrap();
    a.put("k2", b"2".to_vec()).await.unwrap();
    let mut d = a.changes_since(&b.version_vector().unwrap(), 100).unwrap();
    let o = a.origin();
    d.batches = vec![
        crate::store::BatchRange {
            origin: o,
            first: 0,
            last: 5,
        },
        crate::store::BatchRange {
            origin: o,
            first: 1,
            last: 5_000,
        },
        crate::store::BatchRange {
            origin: o,
            first: 50,
            last: 60,
        },
        crate::store::BatchRange {
            origin: origin(9),
            first: 1,
            last: 2,
        },
    ];
    b.apply_delta(d, o.device).await.unwrap();
    assert!(
        marks(&b).iter().all(|(_, m)| m.is_none()),
        "{:?}",
        marks(&b)
    );
    assert_eq!(
        b.list("", None, 10).unwrap().len(),
        2,
        "the changes are taken"
    );
}

#[tokio::test]
async fn reconciled_batches_are_marked() {
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let (a, b) = (open(dir.path(), 1, &wall), open(dir.path(), 2, &wall));
    let r = a.batch(vec![put("p", b"1"), put("q", b"2")]).await.unwrap();
    let snap = a.snapshot().unwrap();
    let mut changes = snap
        .changes_at(&[
            super::super::schema::key_pos("p"),
            super::super::schema::key_pos("q"),
        ])
        .unwrap();
    changes.sort_by_key(|c| c.version.seq);
    let ranges: Vec<_> = changes
        .iter()
        .filter_map(|c| snap.batch_of(c.version.dot()).unwrap())
        .collect();
    assert_eq!(ranges, vec![r.range.unwrap(); 2]);
    b.apply_reconciled(changes, ranges).await.unwrap();
    assert_eq!(
        marks(&b),
        vec![
            ("p".into(), Some((1, 2, false))),
            ("q".into(), Some((1, 2, true)))
        ]
    );
}
