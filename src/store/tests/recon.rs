//! Reconciliation over real stores, the item indexes, and tombstone collection.

use super::super::reconcile::{Initiator, ItemSet, Range, Responder};
use super::super::{Delta, Store, VersionVector};
use super::{device, dump, open, origin, pull, FakeWall};

const T0: u64 = 1_700_000_000_000;

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("key/{i:04}")).collect()
}

/// Runs one reconciliation session: `to` receives what it lacks from `from`. Returns the
/// number of changes sent and of responder messages.
async fn reconcile(to: &Store, from: &Store) -> (usize, u32) {
    let snap = from.snapshot().unwrap();
    let through = snap.version_vector().unwrap();
    let (mut r, mut msg) = Responder::start(&snap).unwrap();
    let mut i = Initiator::new(u64::MAX);
    let mut sent = 0;
    let mut named = VersionVector::new();
    loop {
        let reply = i.on_msg(&to.snapshot().unwrap(), msg).unwrap().unwrap();
        let step = r.on_reply(&snap, reply).unwrap().unwrap();
        let changes = snap.changes_at(&step.send).unwrap();
        sent += changes.len();
        super::super::claims::name_into(&changes, &mut named, None).unwrap();
        to.apply_reconciled(changes, Vec::new()).await.unwrap();
        match step.msg {
            Some(m) => msg = m,
            None => break,
        }
    }
    assert!(i.done());
    let final_delta = Delta {
        changes: vec![],
        through,
        more: false,
        batches: vec![],
    };
    to.apply_delta_backed(final_delta, from.origin().device, named)
        .await
        .unwrap();
    (sent, r.rounds())
}

fn index_matches(store: &Store) {
    let snap = store.snapshot().unwrap();
    let root = snap.sum(Range::ROOT).unwrap();
    assert_eq!(root.count, snap.item_count().unwrap());
    // The cached bucket sums agree with the items they summarise.
    let mut by_items = super::super::reconcile::Sum::default();
    for (_, d) in snap.items(Range::ROOT, usize::MAX).unwrap() {
        by_items.add(d);
    }
    assert_eq!(root, by_items);
}

#[tokio::test]
async fn reconciliation_sends_only_the_differences() {
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let (g, a, b) = (
        open(dir.path(), 9, &wall),
        open(dir.path(), 1, &wall),
        open(dir.path(), 2, &wall),
    );
    for k in keys(3000) {
        g.put(&k, k.as_bytes().to_vec()).await.unwrap();
    }
    pull(&a, &g, 1000).await;
    pull(&b, &g, 1000).await;
    a.put("key/0007", b"changed on a".to_vec()).await.unwrap();
    a.put("new/on-a", b"x".to_vec()).await.unwrap();
    a.del("key/0100").await.unwrap();
    b.put("key/0200", b"changed on b".to_vec()).await.unwrap();
    for s in [&a, &b] {
        index_matches(s);
    }
    let (sent, rounds) = reconcile(&b, &a).await;
    // Only the four keys that differ are sent: the three a changed, and key/0200 whose
    // version at a is older than b's (the initiator cannot tell older from newer; the
    // merge drops it as superseded).
    assert_eq!(sent, 4, "sent {sent} changes");
    assert!(rounds <= 5, "{rounds} rounds");
    let (sent_back, _) = reconcile(&a, &b).await;
    assert_eq!(sent_back, 1); // key/0200: the rest is equal after the first session
    let mut all = keys(3000);
    all.push("new/on-a".into());
    assert_eq!(dump(&a, &all).0, dump(&b, &all).0);
    assert!(b.get("key/0100").unwrap().is_none());
    // The vectors now carry the history: a vector pull finds nothing more to send.
    assert!(a
        .changes_since(&b.version_vector().unwrap(), 100)
        .unwrap()
        .changes
        .is_empty());
    for s in [&a, &b] {
        index_matches(s);
    }
}

#[tokio::test]
async fn reconciliation_between_unrelated_stores_merges_everything() {
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let (a, b) = (open(dir.path(), 1, &wall), open(dir.path(), 2, &wall));
    for k in keys(500) {
        a.put(&k, b"a".to_vec()).await.unwrap();
    }
    for k in keys(700).iter().skip(300) {
        b.put(k, b"b".to_vec()).await.unwrap();
    }
    reconcile(&b, &a).await;
    reconcile(&a, &b).await;
    let all = keys(700);
    assert_eq!(dump(&a, &all), dump(&b, &all));
    // Keys both wrote hold both versions as siblings.
    assert_eq!(a.get("key/0400").unwrap().unwrap().siblings.len(), 1);
}

#[tokio::test]
async fn a_session_cut_short_claims_nothing() {
    // Reconciled changes arrive without the vector being raised: if the session ends
    // before its final delta, a vector pull still sends everything.
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let (a, b) = (open(dir.path(), 1, &wall), open(dir.path(), 2, &wall));
    for k in keys(50) {
        a.put(&k, b"a".to_vec()).await.unwrap();
    }
    let snap = a.snapshot().unwrap();
    let some = snap
        .changes_at(&[super::super::schema::key_pos("key/0030")])
        .unwrap();
    assert_eq!(some.len(), 1);
    assert_eq!(
        b.apply_reconciled(some.clone(), Vec::new()).await.unwrap(),
        1
    );
    assert_eq!(
        b.apply_reconciled(some, Vec::new()).await.unwrap(),
        0,
        "idempotent"
    );
    assert_eq!(b.version_vector().unwrap(), VersionVector::new());
    assert_eq!(pull(&b, &a, 1000).await, 49);
    assert_eq!(dump(&a, &keys(50)), dump(&b, &keys(50)));
}

#[tokio::test]
async fn collection_needs_every_member_and_the_tombstone_context() {
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let (a, c, m) = (
        open(dir.path(), 1, &wall),
        open(dir.path(), 3, &wall),
        open(dir.path(), 4, &wall),
    );
    // m writes x; a sees it and deletes it; c gets only the tombstone, pushed.
    let old = m.put("x", b"old".to_vec()).await.unwrap();
    pull(&a, &m, 10).await;
    let tomb = a.del("x").await.unwrap().unwrap();
    assert_eq!(c.apply(vec![tomb.clone()]).await.unwrap(), 1);
    assert!(c.get("x").unwrap().is_none());
    let everyone = |v: &[&VersionVector]| v.iter().map(|x| (*x).clone()).collect::<Vec<_>>();
    // c has the tombstone but not what it superseded: collecting there would let m's old
    // write in again later, so c keeps the tombstone.
    let vv_a = a.version_vector().unwrap();
    let vv_c = c.version_vector().unwrap();
    assert_eq!(c.collect_tombstones(&everyone(&[&vv_a])).await.unwrap(), 0);
    // A member that has not seen the tombstone (m) blocks collection on a.
    let vv_m = m.version_vector().unwrap();
    assert_eq!(
        a.collect_tombstones(&everyone(&[&vv_c, &vv_m]))
            .await
            .unwrap(),
        0
    );
    pull(&m, &a, 10).await;
    let vv_m = m.version_vector().unwrap();
    assert_eq!(
        a.collect_tombstones(&everyone(&[&vv_c, &vv_m]))
            .await
            .unwrap(),
        1
    );
    assert!(a.versions("x").unwrap().is_empty());
    index_matches(&a);
    // c catches up on m's history, then may collect too; m's old write stays dead there.
    pull(&c, &m, 10).await;
    assert_eq!(c.collect_tombstones(&everyone(&[&vv_m])).await.unwrap(), 1);
    // m's old write, sent again by anyone, is known as seen and stays out.
    for s in [&a, &c] {
        assert_eq!(s.apply(vec![old.clone()]).await.unwrap(), 0);
        assert!(s.versions("x").unwrap().is_empty());
    }
}

#[tokio::test]
async fn member_vectors_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let a = open(dir.path(), 1, &wall);
    let vv = VersionVector::from_iter([(origin(2), 7), (origin(3), 1)]);
    a.save_member_vvs(vec![
        (device(2), Some(vv.clone())),
        (device(3), Some(vv.clone())),
    ])
    .await
    .unwrap();
    a.save_member_vvs(vec![(device(3), None)]).await.unwrap();
    drop(a);
    let a = open(dir.path(), 1, &wall);
    assert_eq!(a.member_vvs().unwrap(), vec![(device(2), vv)]);
}
