//! Durability and group commit.

use std::sync::Arc;

use super::super::Store;
use super::{open, FakeWall};

const T0: u64 = 1_700_000_000_000;

#[tokio::test]
async fn every_acknowledged_write_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let store = open(dir.path(), 1, &wall);
    for i in 0..100u32 {
        store
            .put(&format!("k{i}"), i.to_le_bytes().to_vec())
            .await
            .unwrap();
    }
    store.del("k7").await.unwrap();
    let before = store.version_vector().unwrap();
    drop(store); // no shutdown call: dropping is all a crash-free exit does
    let store = open(dir.path(), 1, &wall);
    assert_eq!(store.version_vector().unwrap(), before);
    assert_eq!(store.list("", None, 1000).unwrap().len(), 99);
    assert_eq!(
        store.get("k42").unwrap().unwrap().value,
        42u32.to_le_bytes()
    );
    // No dot is reused: the reopened store numbers its writes in a new incarnation, and
    // the last durable write of the old one stays where it was.
    let old = before.iter().next().unwrap();
    assert_eq!(old.1, 101);
    let next = store.put("k0", vec![]).await.unwrap();
    assert_ne!(next.version.origin, old.0);
    assert_eq!(next.version.seq, 1);
    assert_eq!(next.supersedes, vec![(old.0, 1)]);
}

#[tokio::test]
async fn file_copied_right_after_ack_holds_the_write() {
    // The bytes on disk right after an acknowledgement are what a kill -9 would leave:
    // copy the file while the store is still open and open the copy (recovery path).
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let store = open(dir.path(), 1, &wall);
    for i in 0..20u8 {
        store.put(&format!("k{i}"), vec![i; 1000]).await.unwrap();
        let copy = dir.path().join(format!("copy{i}.redb"));
        std::fs::copy(store.path(), &copy).unwrap();
        let reopened = Store::open_with(&copy, [9; 32], wall.config()).unwrap();
        assert_eq!(
            reopened.get(&format!("k{i}")).unwrap().unwrap().value,
            vec![i; 1000]
        );
        assert_eq!(
            reopened.list("", None, 100).unwrap().len(),
            usize::from(i) + 1
        );
    }
}

#[test]
fn sixteen_writers_are_group_committed() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1, &FakeWall::new(T0));
    let store = Arc::new(store);
    runtime.block_on(async {
        let tasks: Vec<_> = (0..16)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0..200 {
                        store
                            .put(&format!("w{w:02}/{i:03}"), vec![w; 64])
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let puts = 16 * 200;
    assert_eq!(store.list("", None, 10_000).unwrap().len(), puts);
    let commits = store.commit_count();
    assert!(
        commits * 4 <= puts as u64,
        "{commits} commits for {puts} puts"
    );
    eprintln!("group commit: {puts} puts in {commits} commits");
}

#[tokio::test]
async fn reads_see_only_committed_state() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1, &FakeWall::new(T0));
    let commits = store.commit_count();
    let change = store.put("k", b"v".to_vec()).await.unwrap();
    assert!(
        store.commit_count() > commits,
        "acknowledged only after a commit"
    );
    assert_eq!(store.get("k").unwrap().unwrap().version, change.version);
}
