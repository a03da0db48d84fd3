//! What a peer may claim: this store's own origin, the bounds, and the backing of a
//! delta's vector (see `claims` and docs/store.md, "What a peer may claim").

use super::super::claims::{backed, check_changes, check_vector, Own, Refusal};
use super::super::{Change, Hlc, Origin, StoreError, Version, VersionVector, MAX_ORIGINS, MAX_SEQ};
use super::{delta, device, open, pull, refusal, FakeWall};

const T0: u64 = 1_700_000_000_000;

fn change(key: &str, origin: Origin, seq: u64, supersedes: Vec<(Origin, u64)>) -> Change {
    Change {
        key: key.into(),
        value: Some(b"v".to_vec()),
        version: Version {
            hlc: Hlc::new(T0, 0),
            origin,
            seq,
        },
        supersedes,
    }
}

#[test]
fn the_pure_rules() {
    let own = Own {
        origin: Origin::new(device(1), 7),
        held: 3,
    };
    let other = Origin::new(device(2), 1);
    let ok: VersionVector = [(own.origin, 3), (other, 99)].into_iter().collect();
    assert_eq!(check_vector(&ok, own), Ok(()));
    let over: VersionVector = [(own.origin, 4)].into_iter().collect();
    assert_eq!(
        check_vector(&over, own),
        Err(Refusal::OwnOrigin {
            claimed: 4,
            held: 3
        })
    );
    let big: VersionVector = [(other, MAX_SEQ + 1)].into_iter().collect();
    assert_eq!(
        check_vector(&big, own),
        Err(Refusal::Seq { seq: MAX_SEQ + 1 })
    );
    let many: VersionVector = (0..=MAX_ORIGINS as u64)
        .map(|e| (Origin::new(device(2), e), 1))
        .collect();
    assert!(matches!(
        check_vector(&many, own),
        Err(Refusal::TooManyOrigins { .. })
    ));
    // What changes name: dots and supersedes; this store's own origin only as far as held.
    let c = change("k", other, 5, vec![(own.origin, 2)]);
    let named = check_changes(std::slice::from_ref(&c), own).unwrap();
    assert_eq!(named, [(own.origin, 2), (other, 5)].into_iter().collect());
    let c = change("k", other, 5, vec![(own.origin, 9)]);
    assert!(matches!(
        check_changes(&[c], own),
        Err(Refusal::OwnOrigin { claimed: 9, .. })
    ));
    // Backing: as far as named, or whole for the sender's own device.
    let third = Origin::new(device(3), 1);
    let through: VersionVector = [(other, 9), (third, 4)].into_iter().collect();
    let named: VersionVector = [(third, 2)].into_iter().collect();
    assert_eq!(
        backed(&through, &named, device(2)),
        [(other, 9), (third, 2)].into_iter().collect()
    );
    assert_eq!(
        backed(&through, &VersionVector::new(), device(9)),
        VersionVector::new()
    );
}

#[tokio::test]
async fn a_peer_cannot_raise_this_store_s_own_origin() {
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let a = open(dir.path(), 1, &wall);
    a.put("k", b"1".to_vec()).await.unwrap();
    let peer = device(2);
    // The first claim beyond this store's writes starts a new epoch (tests/renew.rs); the
    // claims of the minute after it are refused.
    let first = a.origin();
    a.apply_delta(delta(vec![], [(first, 1000)]), peer)
        .await
        .unwrap();
    let own = a.origin();
    assert_ne!(own, first);
    let before = a.version_vector().unwrap();
    // In a delta's vector (from the peer, or claiming to be this device's own).
    for sender in [peer, own.device] {
        let r = a
            .apply_delta(delta(vec![], [(own, u64::MAX)]), sender)
            .await;
        assert!(matches!(refusal(r), Refusal::Seq { .. }));
        let r = a.apply_delta(delta(vec![], [(own, 1000)]), sender).await;
        assert_eq!(
            refusal(r),
            Refusal::OwnOrigin {
                claimed: 1000,
                held: 1
            }
        );
    }
    // As a change's dot, or in what a change supersedes.
    let fake = change("k", own, 2, vec![]);
    let r = a
        .apply_delta(delta(vec![fake.clone()], [(own, 2)]), peer)
        .await;
    assert!(matches!(refusal(r), Refusal::OwnOrigin { claimed: 2, .. }));
    assert!(matches!(
        refusal(a.apply(vec![fake]).await),
        Refusal::OwnOrigin { .. }
    ));
    let other = Origin::new(peer, 5);
    let freeze = change("k", other, 1, vec![(own, 50)]);
    let r = a
        .apply_delta(delta(vec![freeze.clone()], [(other, 1)]), peer)
        .await;
    assert!(matches!(refusal(r), Refusal::OwnOrigin { claimed: 50, .. }));
    assert!(matches!(
        refusal(a.apply_reconciled(vec![freeze], Vec::new()).await),
        Refusal::OwnOrigin { .. }
    ));
    // Nothing of it was kept, and this store numbers its writes on.
    assert_eq!(a.version_vector().unwrap(), before);
    assert_eq!(a.get("k").unwrap().unwrap().value, b"1");
    let next = a.put("k", b"2".to_vec()).await.unwrap();
    assert_eq!((next.version.origin, next.version.seq), (own, 2));
    assert_eq!(
        a.own(),
        Own {
            origin: own,
            held: 2
        }
    );
}

#[tokio::test]
async fn a_refused_delta_does_not_fail_the_writes_batched_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let a = open(dir.path(), 1, &wall);
    let own = a.origin();
    let bad = delta(vec![], [(own, MAX_SEQ + 1)]);
    let (put, applied) = tokio::join!(a.put("k", b"1".to_vec()), a.apply_delta(bad, device(2)),);
    assert!(put.is_ok());
    assert!(matches!(refusal(applied), Refusal::Seq { .. }));
    assert_eq!(a.get("k").unwrap().unwrap().value, b"1");
}

#[tokio::test]
async fn a_delta_raises_the_vector_only_as_far_as_it_is_backed() {
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let a = open(dir.path(), 1, &wall);
    let sender = device(2);
    let (theirs, third, fake) = (
        Origin::new(sender, 1),
        Origin::new(device(3), 1),
        Origin::new(device(4), 1),
    );
    // Named by nothing: left out (no invisible origins).
    a.apply_delta(delta(vec![], [(fake, 10)]), sender)
        .await
        .unwrap();
    assert_eq!(a.version_vector().unwrap().get(&fake), 0);
    // The sender's own origins need no backing.
    a.apply_delta(delta(vec![], [(theirs, 4)]), sender)
        .await
        .unwrap();
    assert_eq!(a.version_vector().unwrap().get(&theirs), 4);
    // Another device's origin: as far as a dot or a `supersedes` entry names it.
    let c = change("x", third, 3, vec![]);
    a.apply_delta(delta(vec![c], [(third, 9)]), sender)
        .await
        .unwrap();
    assert_eq!(a.version_vector().unwrap().get(&third), 3);
    assert_eq!(a.get("x").unwrap().unwrap().version.seq, 3);
    let c = change("y", theirs, 5, vec![(third, 7)]);
    a.apply_delta(delta(vec![c], [(theirs, 5), (third, 8)]), sender)
        .await
        .unwrap();
    let vv = a.version_vector().unwrap();
    assert_eq!((vv.get(&theirs), vv.get(&third)), (5, 7));
    // What a reconciliation named backs its final delta.
    let named: VersionVector = [(fake, 2)].into_iter().collect();
    a.apply_delta_backed(delta(vec![], [(fake, 2)]), sender, named)
        .await
        .unwrap();
    assert_eq!(a.version_vector().unwrap().get(&fake), 2);
}

#[tokio::test]
async fn the_number_of_origins_and_their_sequence_numbers_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let a = open(dir.path(), 1, &wall);
    let sender = device(2);
    // The sender vouches for its own origins, but not for more than a vector may hold.
    let flood: Vec<(Origin, u64)> = (1..=MAX_ORIGINS as u64 + 1)
        .map(|e| (Origin::new(sender, e), 1))
        .collect();
    let r = a.apply_delta(delta(vec![], flood.clone()), sender).await;
    assert!(matches!(refusal(r), Refusal::TooManyOrigins { .. }));
    let r = a
        .apply_delta(delta(vec![], flood[..MAX_ORIGINS / 2].to_vec()), sender)
        .await;
    assert!(r.is_ok());
    let r = a
        .apply_delta(delta(vec![], flood[MAX_ORIGINS / 2..].to_vec()), sender)
        .await;
    assert!(
        matches!(refusal(r), Refusal::TooManyOrigins { .. }),
        "the store's own vector stays bounded"
    );
    assert_eq!(a.version_vector().unwrap().len(), MAX_ORIGINS / 2);
    // Sequence numbers.
    let o = Origin::new(sender, 1);
    let r = a
        .apply_delta(delta(vec![], [(o, MAX_SEQ + 1)]), sender)
        .await;
    assert!(matches!(refusal(r), Refusal::Seq { .. }));
    let c = change("k", o, 2, vec![(Origin::new(device(3), 1), MAX_SEQ + 1)]);
    let r = a.apply_delta(delta(vec![c], [(o, 2)]), sender).await;
    assert!(matches!(refusal(r), Refusal::Seq { .. }));
    let c = change("k", o, MAX_SEQ + 1, vec![]);
    assert!(matches!(
        a.apply(vec![c]).await,
        Err(StoreError::InvalidChange(_))
    ));
}

#[tokio::test]
async fn honest_pulls_are_backed() {
    // Superseded changes are left out of a delta; what superseded them names them, so the
    // receiver still reaches the sender's vector.
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let (a, b, c) = (
        open(dir.path(), 1, &wall),
        open(dir.path(), 2, &wall),
        open(dir.path(), 3, &wall),
    );
    for i in 0..5 {
        a.put(&format!("k{i}"), b"a".to_vec()).await.unwrap();
    }
    pull(&b, &a, 100).await;
    for i in 0..5 {
        b.put(&format!("k{i}"), b"b".to_vec()).await.unwrap();
    }
    // c learns a's origin only from b, whose current versions are all b's.
    pull(&c, &b, 2).await;
    assert_eq!(c.version_vector().unwrap(), b.version_vector().unwrap());
    assert_eq!(c.version_vector().unwrap().get(&a.origin()), 5);
}

#[tokio::test]
async fn one_dot_on_two_keys_is_refused_in_one_message_and_kept_once_across_messages() {
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let a = open(dir.path(), 1, &wall);
    let peer = Origin::new(device(2), 1);
    let first = change("k1", peer, 1, vec![]);
    let twin = change("k2", peer, 1, vec![]);
    // In one message: refused whole, nothing merged.
    let r = a
        .apply_reconciled(vec![first.clone(), twin.clone()], vec![])
        .await;
    assert_eq!(
        refusal(r),
        Refusal::DotTwice {
            seq: 1,
            first: "k1".into(),
            second: "k2".into()
        }
    );
    assert!(a.versions("k1").unwrap().is_empty() && a.versions("k2").unwrap().is_empty());
    // In two messages (reconciled, then reconciled or a delta): the first is kept, the
    // twin is not merged.
    assert_eq!(
        a.apply_reconciled(vec![first.clone()], vec![])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        a.apply_reconciled(vec![twin.clone()], vec![])
            .await
            .unwrap(),
        0
    );
    let r = a
        .apply_delta(delta(vec![twin.clone()], [(peer, 1)]), device(2))
        .await;
    assert_eq!(r.unwrap(), 0);
    assert!(a.versions("k2").unwrap().is_empty());
    assert_eq!(a.versions("k1").unwrap()[0].0, first.version);
    // The store stays consistent: a write of k2 takes nothing of k1 away, k1's version is
    // still sent to a new device, and its origin is not retired while it is current.
    a.put("k2", b"mine".to_vec()).await.unwrap();
    assert_eq!(a.retire_origins(&[]).await.unwrap(), 0);
    let c = open(dir.path(), 3, &wall);
    pull(&c, &a, 10).await;
    assert_eq!(c.versions("k1").unwrap(), a.versions("k1").unwrap());
    assert_eq!(c.version_vector().unwrap(), a.version_vector().unwrap());
}
