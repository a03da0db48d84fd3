//! changes_since / apply_delta, tombstones, clock skew, the change feed.

use super::super::{Change, Hlc, Version, VersionVector, MAX_DRIFT_MS};
use super::{device, dump, open, origin, pull, sync_all, FakeWall};

const T0: u64 = 1_700_000_000_000;

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("key/{i:03}")).collect()
}

#[tokio::test]
async fn catching_up_sends_exactly_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let a = open(dir.path(), 1, &wall);
    let b = open(dir.path(), 2, &wall);
    for k in keys(50) {
        a.put(&k, k.as_bytes().to_vec()).await.unwrap();
    }
    assert_eq!(pull(&b, &a, 1000).await, 50);
    for k in keys(80).iter().skip(30) {
        a.put(k, b"v2".to_vec()).await.unwrap();
    }
    a.put("key/079", b"v3".to_vec()).await.unwrap();
    // b lacks: 30 new keys + 20 overwrites + 1 overwrite of a new key, which superseded
    // one of the 30: 50 current versions.
    let delta = a.changes_since(&b.version_vector().unwrap(), 1000).unwrap();
    assert_eq!(delta.changes.len(), 50);
    assert!(!delta.more);
    assert!(delta
        .changes
        .windows(2)
        .all(|w| w[0].version.seq < w[1].version.seq));
    assert_eq!(delta.through.get(&a.origin()), 101);
    assert_eq!(b.apply_delta(delta, a.origin().device).await.unwrap(), 50);
    assert_eq!(dump(&a, &keys(80)), dump(&b, &keys(80)));
    let again = a.changes_since(&b.version_vector().unwrap(), 1000).unwrap();
    assert!(again.changes.is_empty() && !again.more);
}

#[tokio::test]
async fn empty_store_receives_whole_state_in_pages() {
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let (a, b, c) = (
        open(dir.path(), 1, &wall),
        open(dir.path(), 2, &wall),
        open(dir.path(), 3, &wall),
    );
    for (i, k) in keys(40).iter().enumerate() {
        let writer = if i % 2 == 0 { &a } else { &b };
        writer.put(k, vec![i as u8]).await.unwrap();
    }
    sync_all(&[a.clone(), b.clone()]).await;
    a.del("key/000").await.unwrap();
    let mut pages = 0;
    let mut theirs = VersionVector::new();
    loop {
        let delta = a.changes_since(&theirs, 7).unwrap();
        assert!(delta.changes.len() <= 7);
        theirs.join(&delta.through);
        pages += 1;
        let more = delta.more;
        c.apply_delta(delta, a.origin().device).await.unwrap();
        if !more {
            break;
        }
    }
    assert!(pages >= 6);
    assert_eq!(dump(&a, &keys(40)), dump(&c, &keys(40)));
    assert!(c.get("key/000").unwrap().is_none());
    assert_eq!(c.list("key/", None, 100).unwrap().len(), 39);
}

#[tokio::test]
async fn superseded_change_is_carried_by_its_successor() {
    // r has (B,1); A superseded it with (A,1), then superseded that with (A,2). A sends
    // only (A,2); r must still drop (B,1).
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let (a, b, r) = (
        open(dir.path(), 1, &wall),
        open(dir.path(), 2, &wall),
        open(dir.path(), 3, &wall),
    );
    b.put("x", b"b1".to_vec()).await.unwrap();
    pull(&a, &b, 10).await;
    pull(&r, &b, 10).await;
    a.put("x", b"a1".to_vec()).await.unwrap();
    a.put("x", b"a2".to_vec()).await.unwrap();
    let delta = a.changes_since(&r.version_vector().unwrap(), 10).unwrap();
    assert_eq!(delta.changes.len(), 1);
    assert_eq!(delta.changes[0].version.seq, 2);
    r.apply_delta(delta, a.origin().device).await.unwrap();
    assert_eq!(r.versions("x").unwrap(), a.versions("x").unwrap());
    assert_eq!(r.version_vector().unwrap().get(&a.origin()), 2);
}

#[tokio::test]
async fn change_arriving_after_its_successor_is_dead() {
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let (a, b, r) = (
        open(dir.path(), 1, &wall),
        open(dir.path(), 2, &wall),
        open(dir.path(), 3, &wall),
    );
    let first = a.put("x", b"a".to_vec()).await.unwrap();
    pull(&b, &a, 10).await;
    let second = b.put("x", b"b".to_vec()).await.unwrap();
    assert_eq!(r.apply(vec![second.clone()]).await.unwrap(), 1);
    assert_eq!(r.apply(vec![first.clone()]).await.unwrap(), 1);
    assert_eq!(
        r.versions("x").unwrap(),
        vec![(second.version, Some(b"b".to_vec()))]
    );
    assert_eq!(
        r.apply(vec![first, second]).await.unwrap(),
        0,
        "duplicates are ignored"
    );
}

#[tokio::test]
async fn pushed_change_with_a_gap_waits_for_its_predecessor() {
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let (a, r) = (open(dir.path(), 1, &wall), open(dir.path(), 2, &wall));
    let c1 = a.put("x", b"1".to_vec()).await.unwrap();
    let c2 = a.put("y", b"2".to_vec()).await.unwrap();
    assert_eq!(r.apply(vec![c2.clone()]).await.unwrap(), 0);
    assert_eq!(r.version_vector().unwrap().get(&a.origin()), 0);
    assert_eq!(r.apply(vec![c2, c1]).await.unwrap(), 2);
    assert_eq!(
        dump(&a, &["x".into(), "y".into()]),
        dump(&r, &["x".into(), "y".into()])
    );
}

#[tokio::test]
async fn deleted_while_offline_stays_deleted_and_is_collected_only_when_all_saw_it() {
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let (a, b, c) = (
        open(dir.path(), 1, &wall),
        open(dir.path(), 2, &wall),
        open(dir.path(), 3, &wall),
    );
    let old = a.put("doc", b"v1".to_vec()).await.unwrap();
    sync_all(&[a.clone(), b.clone(), c.clone()]).await;
    // c goes offline; a deletes; a and b sync.
    wall.set(T0 + 1000);
    a.del("doc").await.unwrap();
    sync_all(&[a.clone(), b.clone()]).await;
    let vvs = |stores: &[&super::super::Store]| -> Vec<VersionVector> {
        stores.iter().map(|s| s.version_vector().unwrap()).collect()
    };
    assert_eq!(
        a.collect_tombstones(&vvs(&[&b, &c])).await.unwrap(),
        0,
        "c has not seen it"
    );
    assert_eq!(c.get("doc").unwrap().unwrap().value, b"v1");
    // c comes back and pushes its (old) state and the old write again: nothing resurrects.
    pull(&a, &c, 100).await;
    assert_eq!(a.apply(vec![old]).await.unwrap(), 0);
    assert!(a.get("doc").unwrap().is_none());
    pull(&c, &a, 100).await;
    assert!(c.get("doc").unwrap().is_none());
    assert_eq!(
        a.versions("doc").unwrap().len(),
        1,
        "tombstone kept until collected"
    );
    // Every member covers it now: collected everywhere, and syncing brings nothing back.
    let members = vvs(&[&a, &b, &c]);
    for s in [&a, &b, &c] {
        assert_eq!(s.collect_tombstones(&members).await.unwrap(), 1);
        assert!(s.versions("doc").unwrap().is_empty());
    }
    sync_all(&[a.clone(), b.clone(), c.clone()]).await;
    for s in [&a, &b, &c] {
        assert!(s.versions("doc").unwrap().is_empty());
        assert!(s.get("doc").unwrap().is_none());
    }
}

#[tokio::test]
async fn delete_of_absent_key_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path(), 1, &FakeWall::new(T0));
    assert!(a.del("nothing").await.unwrap().is_none());
    assert!(a.version_vector().unwrap().is_empty());
}

#[tokio::test]
async fn far_future_remote_is_not_adopted_but_key_is_not_frozen() {
    let dir = tempfile::tempdir().unwrap();
    let broken = FakeWall::new(T0 + 30 * 24 * 3600 * 1000); // a month ahead
    let normal = FakeWall::new(T0);
    let (a, b) = (open(dir.path(), 1, &broken), open(dir.path(), 2, &normal));
    let future = a.put("k", b"future".to_vec()).await.unwrap();
    pull(&b, &a, 10).await;
    // b's clock was not dragged: a write to another key is stamped with b's own time.
    let other = b.put("other", b"x".to_vec()).await.unwrap();
    assert_eq!(other.version.hlc.wall_ms, T0);
    // ...but b can still overwrite the key written from the future.
    let mine = b.put("k", b"mine".to_vec()).await.unwrap();
    assert_eq!(mine.version.hlc, future.version.hlc.next());
    pull(&a, &b, 10).await;
    assert_eq!(a.get("k").unwrap().unwrap().value, b"mine");
    assert_eq!(b.get("k").unwrap().unwrap().value, b"mine");
}

#[tokio::test]
async fn remote_within_drift_is_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let ahead = FakeWall::new(T0 + MAX_DRIFT_MS / 2);
    let normal = FakeWall::new(T0);
    let (a, b) = (open(dir.path(), 1, &ahead), open(dir.path(), 2, &normal));
    let remote = a.put("k", b"a".to_vec()).await.unwrap();
    pull(&b, &a, 10).await;
    let other = b.put("other", b"x".to_vec()).await.unwrap();
    assert!(
        other.version.hlc > remote.version.hlc,
        "causality across keys within the bound"
    );
}

#[tokio::test]
async fn feed_resumes_and_sees_each_change_once() {
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let a = open(dir.path(), 1, &wall);
    let mut live = a.subscribe();
    for i in 0..10 {
        let key = if i % 2 == 0 {
            format!("app/{i}")
        } else {
            format!("other/{i}")
        };
        a.put(&key, vec![i]).await.unwrap();
    }
    let all = a.feed_since(0, "", 100).unwrap();
    assert_eq!(
        all.iter().map(|e| e.feed_seq).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    for e in &all {
        assert_eq!(*live.recv().await.unwrap(), *e);
    }
    let first = a.feed_since(0, "", 4).unwrap();
    let rest = a
        .feed_since(first.last().unwrap().feed_seq, "", 100)
        .unwrap();
    assert_eq!([first, rest].concat(), all);
    assert_eq!(a.feed_since(0, "app/", 100).unwrap().len(), 5);
    drop((a, live));
    let a = open(dir.path(), 1, &wall);
    a.put("app/after", b"x".to_vec()).await.unwrap();
    let after = a.feed_since(10, "", 100).unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].feed_seq, 11);
}

#[tokio::test]
async fn feed_reports_trimmed_history() {
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let config = super::super::StoreConfig {
        feed_retain: 5,
        ..wall.config()
    };
    let a = super::super::Store::open_with(dir.path().join("f.redb"), device(1), config).unwrap();
    for i in 0..12u8 {
        a.put(&format!("k{i}"), vec![i]).await.unwrap();
    }
    assert_eq!(a.feed_since(7, "", 100).unwrap().len(), 5);
    let err = a.feed_since(2, "", 100).unwrap_err();
    assert!(
        matches!(err, super::super::StoreError::FeedTrimmed { oldest: 7, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn feed_keeps_a_byte_budget_of_large_values() {
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let config = super::super::StoreConfig {
        feed_retain_bytes: 1_000_000,
        ..wall.config()
    };
    let path = dir.path().join("f.redb");
    let a = super::super::Store::open_with(&path, device(1), config.clone()).unwrap();
    // 10 values of 300 kB: the feed keeps the newest 3 (900 kB), not a copy of them all.
    for i in 0..10u8 {
        a.put(&format!("photo/{i}"), vec![i; 300_000])
            .await
            .unwrap();
    }
    let kept = a.feed_since(7, "", 100).unwrap();
    assert_eq!(kept.len(), 3);
    assert_eq!(kept[0].change.key, "photo/7");
    assert_eq!(kept[2].change.value.as_deref(), Some(&[9u8; 300_000][..]));
    let err = a.feed_since(6, "", 100).unwrap_err();
    assert!(
        matches!(err, super::super::StoreError::FeedTrimmed { oldest: 7, .. }),
        "{err}"
    );
    // The store itself keeps every value; the budget holds across a restart.
    assert_eq!(a.list("photo/", None, 100).unwrap().len(), 10);
    drop(a);
    let a = super::super::Store::open_with(&path, device(1), config).unwrap();
    a.put("photo/10", vec![10; 300_000]).await.unwrap();
    let kept = a.feed_since(8, "", 100).unwrap();
    assert_eq!(kept.len(), 3, "one entry left as the new one came");
    // A single entry larger than the budget is still kept (the newest always stays).
    a.put("big", vec![1; 1_500_000]).await.unwrap();
    let kept = a.feed_since(11, "", 100).unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].change.key, "big");
}

#[test]
fn hlc_order_is_wall_then_counter() {
    assert!(Hlc::new(2, 0) > Hlc::new(1, 99));
    assert!(Hlc::new(2, 1) > Hlc::new(2, 0));
    let v = |wall, o: u8| Version {
        hlc: Hlc::new(wall, 0),
        origin: origin(o),
        seq: 1,
    };
    assert!(v(5, 1) > v(4, 9), "clock decides first");
    assert!(v(5, 2) > v(5, 1), "device id breaks ties");
    let c = Change {
        key: "k".into(),
        value: None,
        version: v(1, 1),
        supersedes: vec![(origin(2), 3)],
    };
    assert!(c.supersedes_dot((origin(2), 3)) && c.supersedes_dot((origin(2), 1)));
    assert!(!c.supersedes_dot((origin(2), 4)) && !c.supersedes_dot((origin(3), 1)));
}
