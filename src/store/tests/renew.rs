//! A claim on this store's own origin beyond what it numbered starts a new epoch, and the
//! store's current versions are written again under it (`writer/epoch.rs`; docs/store.md,
//! "A claim on this store's own origin").

use super::super::batch::BatchOp;
use super::super::claims::Refusal;
use super::super::{Change, Delta, Hlc, Origin, Version, VersionVector};
use super::{delta, device, dump, open, pull, refusal, FakeWall};

const T0: u64 = 1_700_000_000_000;

/// A change of `origin` on `key` that claims to supersede `claim`: what a member that
/// makes up a claim on another device's origin writes.
fn forged(key: &str, origin: Origin, claim: (Origin, u64)) -> Delta {
    let change = Change {
        key: key.into(),
        value: Some(b"forged".to_vec()),
        version: Version {
            hlc: Hlc::new(T0, 0),
            origin,
            seq: 1,
        },
        supersedes: vec![claim],
    };
    delta(vec![change], [(origin, 1), claim])
}

/// A delta whose vector alone claims `origin` up to 1000.
fn claim(origin: Origin) -> Delta {
    delta(vec![], [(origin, 1000)])
}

fn keys(names: &[&str]) -> Vec<String> {
    names.iter().map(|k| (*k).to_owned()).collect()
}

fn put(key: &str, value: &str) -> BatchOp {
    BatchOp {
        key: key.into(),
        value: Some(value.as_bytes().to_vec()),
        cond: None,
    }
}

#[tokio::test]
async fn a_made_up_claim_on_this_store_s_origin_hides_none_of_its_writes() {
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let (a, b) = (open(dir.path(), 1, &wall), open(dir.path(), 2, &wall));
    a.put("k1", b"1".to_vec()).await.unwrap();
    pull(&b, &a, 100).await;
    // Written after b last pulled: k2, a batch of two, and a delete of k1.
    a.put("k2", b"2".to_vec()).await.unwrap();
    a.batch(vec![put("k3", "3"), put("k4", "4")]).await.unwrap();
    a.del("k1").await.unwrap();
    let first = a.origin();
    assert_eq!(a.own().held, 5);
    let stamp = a.versions("k2").unwrap()[0].0.hlc;

    // A member (device 3) claims a's origin up to 2^40; b takes it, as it must (it cannot
    // tell), and then counts a's writes as seen up to there.
    let claim = (first, 1 << 40);
    let m = Origin::new(device(3), 9);
    b.apply_delta(forged("x", m, claim), device(3))
        .await
        .unwrap();
    assert_eq!(b.version_vector().unwrap().get(&first), 1 << 40);
    assert_eq!(
        pull(&b, &a, 100).await,
        0,
        "b takes nothing of a's origin now"
    );

    // a hears it from b: a new epoch, its current versions written again under it.
    pull(&a, &b, 100).await;
    let own = a.origin();
    assert_ne!(own, first);
    assert_eq!(own.device, first.device);
    assert_eq!(a.own().held, 4, "k1's tombstone, k2, k3 and k4");
    let v = a.versions("k2").unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(
        (v[0].0.origin, v[0].0.hlc),
        (own, stamp),
        "same stamp, new origin"
    );
    assert_eq!(a.get("x").unwrap().unwrap().value, b"forged");
    // The batch is one batch again.
    let all = a.changes_since(&VersionVector::new(), 100).unwrap();
    let batch = all
        .batches
        .iter()
        .find(|r| r.origin == own)
        .expect("the rewritten batch");
    assert_eq!(batch.last - batch.first, 1);

    // b now takes every write of a, and both hold the same.
    pull(&b, &a, 100).await;
    let names = keys(&["k1", "k2", "k3", "k4", "x"]);
    assert_eq!(dump(&a, &names).0, dump(&b, &names).0);
    assert!(b.get("k1").unwrap().is_none());
    assert_eq!(b.get("k3").unwrap().unwrap().value, b"3");
    // And a's next write is numbered on under the new origin, and reaches b.
    let next = a.put("k5", b"5".to_vec()).await.unwrap();
    assert_eq!((next.version.origin, next.version.seq), (own, 5));
    assert_eq!(pull(&b, &a, 100).await, 1);
}

#[tokio::test]
async fn a_rewritten_version_stays_concurrent_with_what_it_was_concurrent_with() {
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let (a, b) = (open(dir.path(), 1, &wall), open(dir.path(), 2, &wall));
    // a and b write k without seeing each other: two siblings everywhere.
    a.put("k", b"a".to_vec()).await.unwrap();
    wall.set(T0 + 10);
    b.put("k", b"b".to_vec()).await.unwrap();
    pull(&a, &b, 100).await;
    pull(&b, &a, 100).await;
    assert_eq!(a.versions("k").unwrap().len(), 2);
    let winner = a.get("k").unwrap().unwrap().value;
    let claim = (a.origin(), 1 << 40);
    b.apply_delta(forged("x", Origin::new(device(3), 9), claim), device(3))
        .await
        .unwrap();
    pull(&a, &b, 100).await;
    pull(&b, &a, 100).await;
    for s in [&a, &b] {
        let v = s.versions("k").unwrap();
        assert_eq!(v.len(), 2, "still two siblings");
        assert_eq!(s.get("k").unwrap().unwrap().value, winner, "same winner");
    }
    let names = keys(&["k", "x"]);
    assert_eq!(dump(&a, &names).0, dump(&b, &names).0);
}

#[tokio::test]
async fn a_new_epoch_waits_a_minute_then_twice_as_long_each_time() {
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let a = open(dir.path(), 1, &wall);
    a.put("k", b"1".to_vec()).await.unwrap();
    let peer = device(2);
    let first = a.origin();
    a.apply_delta(claim(first), peer).await.unwrap();
    let second = a.origin();
    assert_ne!(second, first);
    // The same claim on the new origin within the minute is refused, as before.
    wall.set(T0 + 59_000);
    let r = a.apply_delta(claim(second), peer).await;
    assert!(matches!(
        refusal(r),
        Refusal::OwnOrigin {
            claimed: 1000,
            held: 1
        }
    ));
    assert!(!a.renew_epoch(second).await.unwrap());
    assert_eq!(a.origin(), second);
    // After it, a new one.
    wall.set(T0 + 60_000);
    a.apply_delta(claim(second), peer).await.unwrap();
    let third = a.origin();
    assert!(third != second && third != first);
    assert_eq!(a.get("k").unwrap().unwrap().value, b"1");
    assert_eq!(a.versions("k").unwrap()[0].0.origin, third);
    // The next wait is twice as long: two minutes.
    wall.set(T0 + 60_000 + 119_000);
    assert!(!a.renew_epoch(third).await.unwrap());
    // A claim on an origin that is no longer this store's starts none.
    wall.set(T0 + 60_000 + 120_000);
    assert!(!a.renew_epoch(second).await.unwrap());
    assert!(a.renew_epoch(third).await.unwrap());
    let fourth = a.origin();
    assert_ne!(fourth, third);
    wall.set(T0 + 180_000 + 239_000);
    assert!(!a.renew_epoch(fourth).await.unwrap());
    wall.set(T0 + 180_000 + 240_000);
    assert!(a.renew_epoch(fourth).await.unwrap());
}

#[tokio::test]
async fn the_new_epoch_is_what_the_store_reopens_past() {
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let a = open(dir.path(), 1, &wall);
    a.put("k", b"1".to_vec()).await.unwrap();
    let first = a.origin();
    assert!(a.renew_epoch(first).await.unwrap());
    let second = a.origin();
    let held = a.own().held;
    drop(a);
    let a = open(dir.path(), 1, &wall);
    // Reopened: another epoch again (every open starts one), and the write kept.
    assert!(a.origin() != second && a.origin() != first);
    assert_eq!(held, 1);
    assert_eq!(a.version_vector().unwrap().get(&second), 1);
    assert_eq!(a.get("k").unwrap().unwrap().value, b"1");
}

#[tokio::test]
async fn a_write_in_the_same_batch_as_a_new_epoch_is_kept_under_the_new_origin() {
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let a = open(dir.path(), 1, &wall);
    a.put("k1", b"1".to_vec()).await.unwrap();
    let first = a.origin();
    let (put, applied) = tokio::join!(
        a.put("k2", b"2".to_vec()),
        a.apply_delta(claim(first), device(2))
    );
    put.unwrap();
    applied.unwrap();
    let own = a.origin();
    assert_ne!(own, first);
    for (k, v) in [("k1", b"1"), ("k2", b"2")] {
        let versions = a.versions(k).unwrap();
        assert_eq!(versions.len(), 1, "{k}");
        assert_eq!(versions[0].0.origin, own, "{k}");
        assert_eq!(versions[0].1.as_deref(), Some(&v[..]), "{k}");
    }
    assert_eq!(a.own().held, 2);
}
