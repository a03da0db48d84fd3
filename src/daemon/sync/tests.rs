//! The sync sessions and state without I/O: frames in, frames and store operations out.

use std::time::Duration;

use tokio::time::Instant;

use super::error::{SyncError, Violation};
use super::protocol::{recon_frames, DELTA_MAX_CHANGES, SEEN_EVERY, SYNC_VERSION};
use super::puller::{Pulled, Puller};
use super::server::{Heard, Server};
use super::state::{Collection, SyncState};
use crate::daemon::wire::{Down, Up};
use crate::store::reconcile::MemSet;
use crate::store::{
    Change, Delta, Device, Hlc, Origin, Own, Refusal, StoreError, Version, VersionVector,
};

const ME: Device = [1; 32];
const PEER: Device = [2; 32];
const THIRD: Device = [3; 32];

fn origin(device: Device) -> Origin {
    Origin::new(device, 7)
}

fn own(held: u64) -> Own {
    Own {
        origin: origin(ME),
        held,
    }
}

fn vv(entries: &[(Device, u64)]) -> VersionVector {
    entries.iter().map(|(d, s)| (origin(*d), *s)).collect()
}

fn change(key: &str, device: Device, seq: u64, supersedes: &[(Device, u64)]) -> Change {
    Change {
        key: key.into(),
        value: Some(b"v".to_vec()),
        version: Version {
            hlc: Hlc::new(1_700_000_000_000, 0),
            origin: origin(device),
            seq,
        },
        supersedes: supersedes.iter().map(|(d, s)| (origin(*d), *s)).collect(),
    }
}

fn delta(changes: Vec<Change>, through: &[(Device, u64)], more: bool) -> Delta {
    Delta {
        changes,
        through: vv(through),
        more,
        batches: vec![],
    }
}

fn hello(vv: VersionVector) -> Up {
    Up::Hello {
        version: SYNC_VERSION,
        vv,
        items: 0,
    }
}

#[test]
fn a_session_catches_up_then_reports() {
    let now = Instant::now();
    let (mut puller, first) = Puller::start(ME, vv(&[(ME, 3)]), 10);
    let Up::Hello {
        version,
        vv: sent,
        items,
    } = &first
    else {
        panic!("{first:?}")
    };
    assert_eq!(
        (*version, sent, *items),
        (SYNC_VERSION, &vv(&[(ME, 3)]), 10)
    );
    // The server (PEER) hears the hello: ME's claim on its own origin is checked against
    // what the server (`Own` of PEER) wrote; ME's origin is not the server's.
    let peer_own = Own {
        origin: origin(PEER),
        held: 5,
    };
    let (mut server, report) = Server::start(first, peer_own).unwrap();
    assert_eq!(report, vv(&[(ME, 3)]));
    assert!(!server.should_reconcile(&vv(&[(ME, 3), (PEER, 5)]), 10));
    let batch = delta(vec![change("k", PEER, 5, &[])], &[(PEER, 5)], false);
    let Some(Down::Delta(sent)) = server.on_delta(batch.clone()) else {
        panic!("news to send")
    };
    assert_eq!(sent, batch);
    assert_eq!(server.wants(), &vv(&[(ME, 3), (PEER, 5)]));
    let caught_up = delta(vec![], &[(PEER, 5)], false);
    assert!(server.on_delta(caught_up).is_none(), "nothing new");
    match puller.on_frame(Down::Delta(sent), now).unwrap() {
        Pulled::Delta {
            delta,
            named,
            caught_up,
            held: None,
        } => {
            assert_eq!(delta, batch);
            assert!(named.is_empty());
            assert_eq!(caught_up, Some(1));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(puller.report_due(), Some(now + SEEN_EVERY));
    assert!(
        puller.report(vv(&[(ME, 3)])).is_none(),
        "unchanged: no report"
    );
    assert_eq!(puller.report_due(), None);
    puller.on_change(now);
    let Some(seen) = puller.report(vv(&[(ME, 3), (PEER, 5)])) else {
        panic!("a report")
    };
    assert_eq!(
        server.on_frame(seen, peer_own).unwrap(),
        vv(&[(ME, 3), (PEER, 5)])
    );
    // Only the first delta that leaves nothing more says "caught up".
    let later = delta(vec![change("k", PEER, 6, &[])], &[(PEER, 6)], false);
    let Pulled::Delta { caught_up, .. } = puller.on_frame(Down::Delta(later), now).unwrap() else {
        panic!()
    };
    assert_eq!(caught_up, None);
}

#[test]
fn the_server_sends_a_vector_only_as_far_as_its_delta_backs_it() {
    let (mut server, _) = Server::start(hello(VersionVector::new()), own(4)).unwrap();
    // THIRD's origin is named by nothing: left out. This device's own origins need no
    // backing.
    let d = delta(vec![], &[(ME, 4), (THIRD, 9)], false);
    let Some(Down::Delta(sent)) = server.on_delta(d) else {
        panic!()
    };
    assert_eq!(sent.through, vv(&[(ME, 4)]));
    assert_eq!(server.wants(), &vv(&[(ME, 4)]));
    // Named by a change's `supersedes`.
    let d = delta(
        vec![change("k", ME, 4, &[(THIRD, 6)])],
        &[(ME, 4), (THIRD, 9)],
        false,
    );
    let Some(Down::Delta(sent)) = server.on_delta(d) else {
        panic!()
    };
    assert_eq!(sent.through, vv(&[(ME, 4), (THIRD, 6)]));
    // A vector that brings nothing backed is not sent again and again.
    assert!(server
        .on_delta(delta(vec![], &[(THIRD, 9)], false))
        .is_none());
}

fn violation(r: Result<impl std::fmt::Debug, SyncError>) -> Violation {
    match r {
        Err(SyncError::Protocol(v)) => v,
        other => panic!("expected a protocol violation, got {other:?}"),
    }
}

#[test]
fn the_server_checks_what_the_puller_says() {
    let seen = Up::Seen { vv: vv(&[]) };
    assert_eq!(violation(Server::start(seen, own(1))), Violation::NoHello);
    let old = Up::Hello {
        version: 1,
        vv: vv(&[]),
        items: 0,
    };
    assert!(matches!(
        Server::start(old, own(1)),
        Err(SyncError::Version { theirs: 1, .. })
    ));
    // A puller that claims more of this device's own writes than it made.
    let r = Server::start(hello(vv(&[(ME, 9)])), own(8));
    assert!(matches!(
        r,
        Err(SyncError::Refused(Refusal::OwnOrigin {
            claimed: 9,
            held: 8
        }))
    ));
    assert!(r.unwrap_err().is_refusal());
    let many: VersionVector = (0..=crate::store::MAX_ORIGINS as u64)
        .map(|e| (Origin::new(THIRD, e), 1))
        .collect();
    assert!(matches!(
        Server::start(hello(many), own(0)),
        Err(SyncError::Refused(Refusal::TooManyOrigins { .. }))
    ));
    let (mut server, _) = Server::start(hello(vv(&[(ME, 8)])), own(8)).unwrap();
    let r = server.on_frame(
        Up::Seen {
            vv: vv(&[(ME, 10)]),
        },
        own(9),
    );
    assert!(matches!(
        r,
        Err(SyncError::Refused(Refusal::OwnOrigin { .. }))
    ));
    assert_eq!(
        violation(server.on_frame(hello(vv(&[])), own(9))),
        Violation::SecondHello
    );
    let reply = Up::Recon(Default::default());
    assert_eq!(
        violation(server.on_frame(reply.clone(), own(9))),
        Violation::ReplyOutsideRecon
    );
    assert_eq!(
        violation(server.on_recon_frame(reply, own(9))),
        Violation::ReplyOutsideRecon
    );
}

#[test]
fn the_puller_checks_what_the_server_sends() {
    let now = Instant::now();
    let (mut p, _) = Puller::start(PEER, vv(&[]), 0);
    let beyond = delta(vec![change("k", PEER, 5, &[])], &[(PEER, 4)], false);
    assert_eq!(
        violation(p.on_frame(Down::Delta(beyond), now)),
        Violation::BeyondVector("k".into())
    );
    let long: Vec<Change> = (1..=DELTA_MAX_CHANGES as u64 + 1)
        .map(|s| change("k", PEER, s, &[]))
        .collect();
    let long = Delta {
        through: vv(&[(PEER, DELTA_MAX_CHANGES as u64 + 1)]),
        changes: long,
        more: true,
        batches: vec![],
    };
    assert_eq!(
        violation(p.on_frame(Down::Delta(long), now)),
        Violation::DeltaTooLong(DELTA_MAX_CHANGES + 1)
    );
    assert_eq!(
        violation(p.on_frame(Down::ReconChanges(vec![]), now)),
        Violation::ChangesOutsideRecon
    );
    p.on_frame(Down::Delta(delta(vec![], &[], false)), now)
        .unwrap();
    assert_eq!(
        violation(p.on_frame(Down::Recon(Default::default()), now)),
        Violation::UnexpectedRecon,
        "reconciliation only opens a session"
    );
    // Reconciled changes are bounded like any change from a peer.
    let (mut p, _) = Puller::start(PEER, vv(&[]), 0);
    let Pulled::Answer { first: true, .. } =
        p.on_frame(Down::Recon(Default::default()), now).unwrap()
    else {
        panic!()
    };
    let bad = change("k", PEER, crate::store::MAX_SEQ + 1, &[]);
    assert!(matches!(
        p.on_frame(Down::ReconChanges(vec![bad]), now),
        Err(SyncError::Refused(Refusal::Seq { .. }))
    ));
    // A delta before every range was answered.
    assert_eq!(
        violation(p.on_frame(Down::Delta(delta(vec![], &[], false)), now)),
        Violation::ReconUnfinished
    );
}

/// An item set holding the keys of `changes` (one item per key, digest from its dot).
fn set_of(changes: &[Change]) -> MemSet {
    let mut set = MemSet::default();
    for c in changes {
        let pos = u64::from_le_bytes(
            ring::digest::digest(&ring::digest::SHA256, c.key.as_bytes()).as_ref()[..8]
                .try_into()
                .unwrap(),
        );
        set.insert(
            pos,
            u128::from(c.version.seq) << 64 | u128::from(c.version.origin.device[0]),
        );
    }
    set
}

#[test]
fn a_reconciliation_between_the_two_sides() {
    let now = Instant::now();
    // The server holds 40 keys of PEER (THIRD's origin only in what they supersede); the
    // puller holds 300 of its own: no common history.
    let theirs: Vec<Change> = (1..=40)
        .map(|s| change(&format!("p{s}"), PEER, s, &[(THIRD, 2)]))
        .collect();
    let mine: Vec<Change> = (1..=300)
        .map(|s| change(&format!("m{s}"), ME, s, &[]))
        .collect();
    let (server_set, puller_set) = (set_of(&theirs), set_of(&mine));
    let server_vv = vv(&[(PEER, 40), (THIRD, 2), ([4; 32], 9)]);
    let (mut puller, first) = Puller::start(PEER, vv(&[(ME, 300)]), 300);
    let peer_own = Own {
        origin: origin(PEER),
        held: 40,
    };
    let (mut server, _) = Server::start(first, peer_own).unwrap();
    assert!(server.should_reconcile(&server_vv, 40));
    let mut down = server.begin_recon(&server_set, server_vv).unwrap();
    let mut rounds = 0;
    let last = loop {
        rounds += 1;
        assert!(rounds < 20);
        let Pulled::Answer { msg, first } = puller.on_frame(down, now).unwrap() else {
            panic!()
        };
        assert_eq!(first, rounds == 1);
        let up = puller.answer(&puller_set, msg).unwrap();
        let Heard::Reply(reply) = server.on_recon_frame(up, peer_own).unwrap() else {
            panic!()
        };
        let step = server.on_recon_reply(&server_set, reply).unwrap();
        // The driver reads the keys at the positions asked for; here every one of ours.
        let wanted: Vec<Change> = theirs
            .iter()
            .filter(|c| {
                set_of(std::slice::from_ref(c))
                    .0
                    .keys()
                    .any(|(p, _)| step.send.contains(p))
            })
            .cloned()
            .collect();
        server.sending(&wanted);
        for frame in recon_frames(wanted) {
            // Held back, to be merged in one transaction with the final delta.
            assert_eq!(puller.on_frame(frame, now).unwrap(), Pulled::Nothing);
        }
        match step.next {
            Some(next) => down = next,
            None => break server.end_recon().unwrap(),
        }
    };
    let (last, _, sent) = last;
    assert_eq!(sent, 40, "every key of the server went over");
    // The final delta raises the puller to what the reconciled changes back: the origin
    // ([4; 32]) none of them names is left out.
    let Pulled::Delta {
        delta, named, held, ..
    } = puller.on_frame(last, now).unwrap()
    else {
        panic!()
    };
    assert_eq!(held.map(|h| h.changes.len()), Some(40), "merged together");
    assert_eq!(delta.through, vv(&[(PEER, 40), (THIRD, 2)]));
    assert_eq!(named, vv(&[(PEER, 40), (THIRD, 2)]));
    assert_eq!(server.wants(), &vv(&[(ME, 300), (PEER, 40), (THIRD, 2)]));
}

#[test]
fn the_state_persists_reports_once_and_waits_for_every_member() {
    let st = SyncState::default();
    st.restore(vec![(PEER, vv(&[(PEER, 1)])), (THIRD, vv(&[(THIRD, 1)]))]);
    // Restored reports are persisted already; one of a device no longer a member goes.
    assert_eq!(
        st.plan(&[PEER, [4; 32]]),
        Collection {
            persist: vec![(THIRD, None)],
            members: None,
        }
    );
    st.report([4; 32], &vv(&[(PEER, 1)]));
    st.report(PEER, &vv(&[(PEER, 2)]));
    let plan = st.plan(&[PEER, [4; 32]]);
    assert_eq!(
        plan.persist,
        vec![
            (PEER, Some(vv(&[(PEER, 2)]))),
            ([4; 32], Some(vv(&[(PEER, 1)])))
        ]
    );
    assert_eq!(plan.members, Some(vec![vv(&[(PEER, 2)]), vv(&[(PEER, 1)])]));
    // Nothing moved: nothing to persist; the same report again changes nothing.
    st.report(PEER, &vv(&[(PEER, 2)]));
    assert!(st.plan(&[PEER, [4; 32]]).persist.is_empty());
}

#[tokio::test]
async fn a_first_report_of_an_empty_store_wakes_the_collector_and_is_kept() {
    let st = std::sync::Arc::new(SyncState::default());
    st.report(PEER, &vv(&[]));
    tokio::time::timeout(Duration::from_secs(5), st.reported())
        .await
        .expect("woken by the first report");
    assert_eq!(st.plan(&[PEER]).persist, vec![(PEER, Some(vv(&[])))]);
    // The same again is no news.
    st.report(PEER, &vv(&[]));
    assert!(st.plan(&[PEER]).persist.is_empty());
}

#[tokio::test]
async fn a_report_that_moved_wakes_the_collector() {
    let st = std::sync::Arc::new(SyncState::default());
    st.report(PEER, &vv(&[(PEER, 1)]));
    tokio::time::timeout(Duration::from_secs(5), st.reported())
        .await
        .expect("woken by the report");
}

#[test]
fn refusals_are_told_apart_by_type() {
    let refused: SyncError = StoreError::Refused(Refusal::Seq { seq: 0 }).into();
    assert!(refused.is_refusal());
    assert!(!SyncError::Closed.is_refusal());
    assert!(!SyncError::from(Violation::NoHello).is_refusal());
}

#[test]
fn a_full_vector_fits_a_hello() {
    // The largest vector a store keeps or takes, with the longest encodings of its epochs
    // and numbers: every hello and report fits its frame.
    let full: VersionVector = (0..crate::store::MAX_ORIGINS as u64)
        .map(|i| {
            let mut device = [0xff; 32];
            device[..8].copy_from_slice(&i.to_le_bytes());
            (Origin::new(device, u64::MAX), crate::store::MAX_SEQ)
        })
        .collect();
    let (_, hello) = Puller::start(PEER, full, u64::MAX);
    let bytes = transport::frame::encode(&hello, super::protocol::MAX_UP)
        .expect("a full vector fits a hello")
        .len();
    assert!(bytes < super::protocol::MAX_UP, "{bytes} bytes");
    println!("hello with a full vector: {bytes} bytes");
}

#[test]
fn reports_together_name_at_most_max_origins() {
    // Made-up origins, `n` of them from `first` on: each report is within the bound.
    let made_up = |first: usize, n: usize| -> VersionVector {
        (first..first + n)
            .map(|e| (Origin::new(THIRD, e as u64), 1))
            .collect()
    };
    let half = crate::store::MAX_ORIGINS / 2;
    let (mut server, _) = Server::start(hello(vv(&[])), own(0)).unwrap();
    for first in [0, half] {
        let report = made_up(first, half);
        assert_eq!(
            server
                .on_frame(Up::Seen { vv: report.clone() }, own(0))
                .unwrap(),
            report
        );
    }
    assert_eq!(server.wants().len(), crate::store::MAX_ORIGINS);
    // The same report again adds nothing and is taken.
    assert!(server
        .on_frame(
            Up::Seen {
                vv: made_up(0, half)
            },
            own(0)
        )
        .is_ok());
    // One that would take the session's picture of the puller past the bound ends it,
    // while reconciling too.
    let r = server.on_recon_frame(
        Up::Seen {
            vv: made_up(2 * half, half),
        },
        own(0),
    );
    assert!(matches!(
        r,
        Err(SyncError::Refused(Refusal::TooManyOrigins { .. }))
    ));
}

#[test]
fn a_peer_s_sessions_read_one_at_a_time_and_are_forgotten_once_idle() {
    let st = SyncState::default();
    let (peer, other) = (transport::DeviceId(PEER), transport::DeviceId(THIRD));
    let reads = st.reads_of(peer);
    let read = reads.clone().try_acquire_owned().unwrap();
    // A replaced session's read still runs: the next session of the peer waits for it,
    // another peer's does not.
    assert!(st.reads_of(peer).try_acquire_owned().is_err());
    assert!(st.reads_of(other).try_acquire_owned().is_ok());
    let weak = std::sync::Arc::downgrade(&reads);
    drop(reads);
    st.served(peer, 1);
    assert!(weak.upgrade().is_some(), "kept while a read holds it");
    drop(read);
    st.served(peer, 1);
    assert!(weak.upgrade().is_none(), "forgotten once idle");
}

#[tokio::test]
async fn a_puller_claiming_this_store_s_own_writes_makes_a_new_epoch_once_a_minute() {
    use super::serve::with_own;
    let dir = tempfile::tempdir().unwrap();
    let store = crate::store::Store::open(dir.path().join("s.redb"), ME).unwrap();
    store.put("k", b"1".to_vec()).await.unwrap();
    let first = store.origin();
    let claim = |o: Origin| Up::Hello {
        version: SYNC_VERSION,
        vv: [(o, 9)].into_iter().collect(),
        items: 0,
    };
    let (server, theirs) = with_own(&store, claim(first), Server::start).await.unwrap();
    let second = store.origin();
    assert_ne!(second, first);
    assert_eq!(theirs.get(&first), 9);
    // What the puller lacks is k, written again under the new origin.
    let delta = store.changes_since(server.wants(), 10).unwrap();
    assert_eq!(delta.changes.len(), 1);
    assert_eq!(delta.changes[0].version.origin, second);
    // The same claim on the new origin in the same minute is refused, as before.
    let r = with_own(&store, claim(second), Server::start).await;
    assert!(matches!(
        r,
        Err(SyncError::Refused(Refusal::OwnOrigin {
            claimed: 9,
            held: 1
        }))
    ));
    assert_eq!(store.origin(), second);
}
