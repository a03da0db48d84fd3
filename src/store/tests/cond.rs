//! Conditional writes: `if_version` and `if_absent` are checked in the write's own
//! transaction, so of two writers that read the same version only one succeeds.

use super::*;

const T0: u64 = 1_700_000_000_000;
use crate::store::{Condition, StoreError};

fn seen(v: &Version) -> Condition {
    Condition::IfVersion {
        device: v.origin.device,
        seq: v.seq,
        hlc: v.hlc,
    }
}

/// What a conflict reports of `v`.
fn reported(v: &Version) -> (crate::store::Hlc, u64, Device) {
    (v.hlc, v.seq, v.origin.device)
}

fn conflict(
    r: Result<impl std::fmt::Debug, StoreError>,
) -> (bool, Vec<(crate::store::Hlc, u64, Device)>) {
    match r {
        Err(StoreError::Conflict {
            if_absent, current, ..
        }) => (if_absent, current),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

#[tokio::test]
async fn conditions_hold_or_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let a = open(dir.path(), 1, &wall);

    // if_absent on a new key writes; a second time it is a conflict naming the value.
    let first = a
        .put_if("k", b"1".to_vec(), Some(Condition::IfAbsent))
        .await
        .unwrap();
    let (absent, current) = conflict(
        a.put_if("k", b"x".to_vec(), Some(Condition::IfAbsent))
            .await,
    );
    assert!(absent);
    assert_eq!(current, vec![reported(&first.version)]);

    // if_version with what was read writes; with the old version it is a conflict.
    let second = a
        .put_if("k", b"2".to_vec(), Some(seen(&first.version)))
        .await
        .unwrap();
    let (absent, current) = conflict(
        a.put_if("k", b"y".to_vec(), Some(seen(&first.version)))
            .await,
    );
    assert!(!absent);
    assert_eq!(current, vec![reported(&second.version)]);
    assert_eq!(a.get("k").unwrap().unwrap().value, b"2");

    // A conditional delete; then the key has no value: if_version fails with nothing
    // current, if_absent writes.
    let (_, _) = conflict(a.del_if("k", Some(seen(&first.version))).await);
    a.del_if("k", Some(seen(&second.version)))
        .await
        .unwrap()
        .unwrap();
    let (_, current) = conflict(
        a.put_if("k", b"z".to_vec(), Some(seen(&second.version)))
            .await,
    );
    assert!(current.is_empty());
    a.put_if("k", b"3".to_vec(), Some(Condition::IfAbsent))
        .await
        .unwrap();
    assert_eq!(a.get("k").unwrap().unwrap().value, b"3");
    // Nothing written by a conflict: the feed holds the four writes only.
    assert_eq!(a.feed_since(0, "", 100).unwrap().len(), 4);
}

#[tokio::test]
async fn of_two_writers_that_read_the_same_version_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let a = open(dir.path(), 1, &wall);
    let v = a.put("n", b"0".to_vec()).await.unwrap().version;
    let (x, y) = tokio::join!(
        a.put_if("n", b"x".to_vec(), Some(seen(&v))),
        a.put_if("n", b"y".to_vec(), Some(seen(&v))),
    );
    assert!(x.is_ok() != y.is_ok(), "exactly one: {x:?} {y:?}");
    let won = if x.is_ok() { b"x" } else { b"y" };
    assert_eq!(a.get("n").unwrap().unwrap().value, won);
}
