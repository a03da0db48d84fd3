//! Retirement of origins: an origin every member has, and of which no current version
//! is left here, leaves the version vector but still counts as seen.

use super::super::{Store, VersionVector};
use super::{open, pull, FakeWall};

const T0: u64 = 1_700_000_000_000;

/// Reopens store `n` of `dir` (a new incarnation).
fn reopen(dir: &std::path::Path, store: Store, n: u8, wall: &FakeWall) -> Store {
    drop(store);
    open(dir, n, wall)
}

#[tokio::test]
async fn an_origin_every_member_has_and_nothing_current_is_of_is_retired() {
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let (a, b) = (open(dir.path(), 1, &wall), open(dir.path(), 2, &wall));
    let old = a.put("k", b"1".to_vec()).await.unwrap();
    a.put("j", b"1".to_vec()).await.unwrap();
    let first = a.origin();
    pull(&b, &a, 10).await;
    // A new incarnation overwrites one key: `first` still holds `j`.
    let a = reopen(dir.path(), a, 1, &wall);
    a.put("k", b"2".to_vec()).await.unwrap();
    pull(&b, &a, 10).await;
    let members = [b.version_vector().unwrap()];
    assert_eq!(a.retire_origins(&members).await.unwrap(), 0, "j is current");
    a.put("j", b"2".to_vec()).await.unwrap();
    pull(&b, &a, 10).await;
    // A member behind on `first` holds it back.
    let behind: VersionVector = [(first, 1)].into_iter().collect();
    assert_eq!(a.retire_origins(&[behind]).await.unwrap(), 0);
    let members = [b.version_vector().unwrap()];
    assert_eq!(a.retire_origins(&members).await.unwrap(), 1);
    let vv = a.version_vector().unwrap();
    assert_eq!(
        vv.get(&first),
        0,
        "out of the vector (and so of every hello)"
    );
    assert_eq!(vv.len(), 1, "a's current origin only");
    assert_eq!(a.retired().unwrap().get(&first), 2);
    assert!(a.covers(&b.version_vector().unwrap()).unwrap());
    // Its old changes still count as seen: a copy that still holds one changes nothing.
    assert_eq!(a.apply(vec![old]).await.unwrap(), 0);
    assert_eq!(a.get("k").unwrap().unwrap().value, b"2");
    // b, whose members now include a vector without `first`, retires it too; the own
    // current origin never is.
    let members = [a.version_vector().unwrap()];
    assert_eq!(b.retire_origins(&members).await.unwrap(), 1);
    assert_eq!(b.retire_origins(&members).await.unwrap(), 0);
    let own = a.origin();
    assert_eq!(a.retire_origins(&[]).await.unwrap(), 0);
    assert!(a.version_vector().unwrap().get(&own) > 0);
    // Sync goes on between them as before.
    b.put("later", b"x".to_vec()).await.unwrap();
    pull(&a, &b, 10).await;
    assert_eq!(a.get("later").unwrap().unwrap().value, b"x");
    // Reopened: still retired.
    let a = reopen(dir.path(), a, 1, &wall);
    assert_eq!(a.retired().unwrap().get(&first), 2);
    assert_eq!(a.version_vector().unwrap().get(&first), 0);
}

#[tokio::test]
async fn a_retired_origin_that_writes_again_comes_back() {
    // b retires a's origin once all of a's versions are superseded here; a (the same
    // incarnation, still running) writes again: its new change is taken and its origin is
    // back in b's vector.
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let (a, b) = (open(dir.path(), 1, &wall), open(dir.path(), 2, &wall));
    a.put("k", b"a".to_vec()).await.unwrap();
    pull(&b, &a, 10).await;
    b.put("k", b"b".to_vec()).await.unwrap();
    pull(&a, &b, 10).await;
    let members = [a.version_vector().unwrap()];
    assert_eq!(b.retire_origins(&members).await.unwrap(), 1);
    assert_eq!(b.version_vector().unwrap().get(&a.origin()), 0);
    a.put("other", b"new".to_vec()).await.unwrap();
    assert_eq!(pull(&b, &a, 10).await, 1);
    assert_eq!(b.get("other").unwrap().unwrap().value, b"new");
    assert_eq!(b.version_vector().unwrap().get(&a.origin()), 2);
    assert_eq!(b.retired().unwrap().get(&a.origin()), 0);
}
