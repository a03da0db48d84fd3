//! Store incarnations: a new one at every open, a store started again from empty, an
//! older copy of a store, and the migration of format 1 files (written before origins had
//! epochs).

use std::path::{Path, PathBuf};

use redb::{Database, TableDefinition};
use serde::Serialize;

use super::super::schema::{encode, FORMAT};
use super::super::{Hlc, Origin, Store, VersionVector};
use super::{device, dump, open, pull, FakeWall};

const T0: u64 = 1_700_000_000_000;

fn keys(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// Device 1 writes `k/1`, its store file is copied, it writes `later` (each key's value
/// is its last character), device 2 takes all of it, and the copy is put back in device
/// 1's place. Returns device 2's store, device 1's store path and its origin until then.
async fn put_back_an_older_copy(
    dir: &Path,
    wall: &FakeWall,
    later: &[&str],
) -> (Store, PathBuf, Origin) {
    let (a, b) = (open(dir, 1, wall), open(dir, 2, wall));
    a.put("k/1", b"1".to_vec()).await.unwrap();
    let backup = dir.join("backup.redb");
    std::fs::copy(a.path(), &backup).unwrap();
    for key in later {
        let value = key.as_bytes()[key.len() - 1..].to_vec();
        a.put(key, value).await.unwrap();
    }
    pull(&b, &a, 10).await;
    let (path, origin) = (a.path().to_owned(), a.origin());
    drop(a);
    std::fs::rename(&backup, &path).unwrap();
    (b, path, origin)
}

#[tokio::test]
async fn a_store_started_again_from_empty_loses_no_write() {
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let (a, b) = (open(dir.path(), 1, &wall), open(dir.path(), 2, &wall));
    a.put("old/1", b"1".to_vec()).await.unwrap();
    a.put("old/2", b"2".to_vec()).await.unwrap();
    pull(&b, &a, 10).await;
    let first = a.origin();
    let path = a.path().to_owned();
    drop(a);
    std::fs::rename(&path, dir.path().join("aside.redb")).unwrap();

    // Same device, new file: a new epoch, and writes made before meeting anyone again
    // are numbered in it, so the other device takes them.
    let a = open(dir.path(), 1, &wall);
    assert_eq!(a.origin().device, first.device);
    assert_ne!(a.origin(), first, "a new store file is a new incarnation");
    let fresh = a.put("new/1", b"fresh".to_vec()).await.unwrap();
    assert_eq!((fresh.version.origin, fresh.version.seq), (a.origin(), 1));
    assert_eq!(pull(&b, &a, 10).await, 1, "the peer takes the new write");
    assert_eq!(b.get("new/1").unwrap().unwrap().value, b"fresh");
    pull(&a, &b, 10).await;
    let all = keys(&["old/1", "old/2", "new/1"]);
    assert_eq!(dump(&a, &all), dump(&b, &all));
    assert_eq!(a.get("old/2").unwrap().unwrap().value, b"2");
    // Every open is a new incarnation; writes go on under it and reach the peer.
    let now = a.origin();
    drop(a);
    let a = open(dir.path(), 1, &wall);
    assert_ne!(a.origin(), now);
    let c = a.put("new/2", b"2".to_vec()).await.unwrap();
    assert_eq!((c.version.origin, c.version.seq), (a.origin(), 1));
    assert_eq!(pull(&b, &a, 10).await, 1);
}

#[tokio::test]
async fn a_store_put_back_from_a_copy_numbers_its_writes_in_a_new_epoch() {
    // The whole state put back (nothing beside the store file tells it is a copy), or a
    // cloned disk: the copy's origin numbered writes the peer holds, which are not in the
    // copy. Its writes before it meets the peer are taken all the same.
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0);
    let (b, _, origin) = put_back_an_older_copy(dir.path(), &wall, &["k/2", "k/3"]).await;
    let a = open(dir.path(), 1, &wall);
    assert_eq!(a.origin().device, origin.device);
    assert_ne!(a.origin().epoch, origin.epoch);
    assert_eq!(a.own().held, 0);
    let c = a.put("k/4", b"4".to_vec()).await.unwrap();
    assert_eq!((c.version.origin, c.version.seq), (a.origin(), 1));
    assert_eq!(pull(&b, &a, 10).await, 1, "the peer takes the write");
    pull(&a, &b, 10).await;
    let all = keys(&["k/1", "k/2", "k/3", "k/4"]);
    assert_eq!(dump(&a, &all), dump(&b, &all));
    assert_eq!(a.get("k/2").unwrap().unwrap().value, b"2");
    // The writes of the copy's origin that it lacked came back: the vectors agree on it.
    assert_eq!(a.version_vector().unwrap().get(&origin), 3);
    // A peer may hold more of an earlier incarnation of this device than this store: that
    // is no claim on its current origin.
    let claim = VersionVector::from_iter([(origin, 3), (a.origin(), 1)]);
    assert_eq!(super::super::claims::check_vector(&claim, a.own()), Ok(()));
}

// Format 1 as it was written: versions keyed by the device alone. Tuples encode like the
// structs they stand for.
type V1Version = (Hlc, [u8; 32], u64);
type V1Context = Vec<([u8; 32], u64)>;
type V1Sibling = (V1Version, Option<Vec<u8>>, V1Context);
type V1Change = (String, Option<Vec<u8>>, V1Version, V1Context);

#[derive(Serialize)]
struct V1Feed {
    feed_seq: u64,
    change: V1Change,
    wins: bool,
}

fn write_format_1(path: &std::path::Path) {
    let meta: TableDefinition<&str, u64> = TableDefinition::new("cnspr_meta");
    let versions: TableDefinition<&str, &[u8]> = TableDefinition::new("versions");
    let vv: TableDefinition<[u8; 32], u64> = TableDefinition::new("version_vector");
    let log: TableDefinition<([u8; 32], u64), &str> = TableDefinition::new("origin_log");
    let feed: TableDefinition<u64, &[u8]> = TableDefinition::new("feed");
    let members: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("member_vv");
    let (d1, d2) = (device(1), device(2));
    let a: V1Version = (Hlc::new(T0, 0), d1, 1);
    let b1: V1Version = (Hlc::new(T0 + 1, 0), d2, 1);
    let b2: V1Version = (Hlc::new(T0 + 2, 0), d2, 2);
    let db = Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut m = txn.open_table(meta).unwrap();
        m.insert("format", 1).unwrap();
        m.insert("feed_seq", 3).unwrap();
        m.insert("feed_trimmed", 0).unwrap();
        m.insert("clock_wall_ms", T0 + 2).unwrap();
        m.insert("indexed", 1).unwrap();
        m.insert("items", 2).unwrap();
        let mut v = txn.open_table(versions).unwrap();
        let sa: Vec<V1Sibling> = vec![(a, Some(b"from 1".to_vec()), vec![])];
        // "gone": written by device 2, then deleted by it (a tombstone superseding seq 1).
        let sb: Vec<V1Sibling> = vec![(b2, None, vec![(d2, 1)])];
        v.insert("doc", encode(&sa).unwrap().as_slice()).unwrap();
        v.insert("gone", encode(&sb).unwrap().as_slice()).unwrap();
        let mut t = txn.open_table(vv).unwrap();
        t.insert(d1, 1).unwrap();
        t.insert(d2, 2).unwrap();
        let mut l = txn.open_table(log).unwrap();
        l.insert((d1, 1), "doc").unwrap();
        l.insert((d2, 2), "gone").unwrap();
        let mut f = txn.open_table(feed).unwrap();
        for (seq, key, version, value, ctx) in [
            (1, "doc", a, Some(b"from 1".to_vec()), vec![]),
            (2, "gone", b1, Some(b"x".to_vec()), vec![]),
            (3, "gone", b2, None, vec![(d2, 1)]),
        ] {
            let event = V1Feed {
                feed_seq: seq,
                change: (key.to_owned(), value, version, ctx),
                wins: true,
            };
            f.insert(seq, encode(&event).unwrap().as_slice()).unwrap();
        }
        let mut mv = txn.open_table(members).unwrap();
        let reported: std::collections::BTreeMap<[u8; 32], u64> = [(d1, 1), (d2, 2)].into();
        mv.insert(d2, encode(&reported).unwrap().as_slice())
            .unwrap();
    }
    txn.commit().unwrap();
}

#[tokio::test]
async fn a_format_1_store_is_migrated_with_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(T0 + 10);
    let path = dir.path().join("s1.redb");
    write_format_1(&path);
    let s = Store::open_with(&path, device(1), wall.config()).unwrap();
    let (o1, o2) = (Origin::new(device(1), 0), Origin::new(device(2), 0));
    assert_eq!(s.origin().device, device(1));
    assert_ne!(s.origin(), o1, "an open is a new incarnation");
    assert_eq!(
        s.version_vector().unwrap(),
        [(o1, 1), (o2, 2)].into_iter().collect()
    );
    let doc = s.get("doc").unwrap().unwrap();
    assert_eq!(
        (doc.value.as_slice(), doc.version.origin),
        (&b"from 1"[..], o1)
    );
    assert!(s.get("gone").unwrap().is_none());
    assert_eq!(s.versions("gone").unwrap()[0].0.origin, o2);
    assert_eq!(s.item_count().unwrap(), 2);
    let feed = s.feed_since(0, "", 10).unwrap();
    assert_eq!(feed.len(), 3);
    assert_eq!(feed[2].change.supersedes, vec![(o2, 1)]);
    assert_eq!(
        s.member_vvs().unwrap(),
        vec![(device(2), [(o1, 1), (o2, 2)].into_iter().collect())]
    );
    // Writes are numbered in the new incarnation; the delta and the index work on the
    // result.
    let next = s.put("doc", b"again".to_vec()).await.unwrap();
    assert_eq!((next.version.origin, next.version.seq), (s.origin(), 1));
    assert_eq!(next.supersedes, vec![(o1, 1)]);
    let all = s.changes_since(&VersionVector::new(), 100).unwrap();
    assert_eq!(all.changes.len(), 2);
    let empty = open(dir.path(), 3, &wall);
    pull(&empty, &s, 10).await;
    let names = keys(&["doc", "gone"]);
    assert_eq!(dump(&empty, &names).0, dump(&s, &names).0);
    drop(s);
    // Reopened: already the current format.
    let s = Store::open_with(&path, device(1), wall.config()).unwrap();
    assert_eq!(s.get("doc").unwrap().unwrap().value, b"again");
    let meta: TableDefinition<&str, u64> = TableDefinition::new("cnspr_meta");
    drop(s);
    let db = Database::open(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let format = txn
        .open_table(meta)
        .unwrap()
        .get("format")
        .unwrap()
        .unwrap()
        .value();
    assert_eq!(format, FORMAT);
}
