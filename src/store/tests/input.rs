//! Bad input: limits on keys and values, malformed changes, damaged files.

use std::io::{Seek, SeekFrom, Write};

use super::super::{Change, Hlc, Store, StoreError, Version, MAX_KEY_BYTES, MAX_VALUE_BYTES};
use super::{device, open, origin, FakeWall};

const T0: u64 = 1_700_000_000_000;

#[tokio::test]
async fn keys_and_values_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1, &FakeWall::new(T0));
    assert!(matches!(s.put("", vec![]).await, Err(StoreError::EmptyKey)));
    let long = "é".repeat(MAX_KEY_BYTES / 2) + "x";
    let err = s.put(&long, vec![]).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::KeyTooLong {
                len: 1025,
                max: 1024
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("1024"));
    s.put(&"k".repeat(MAX_KEY_BYTES), vec![]).await.unwrap();
    assert!(matches!(
        s.put("a\nb", vec![]).await,
        Err(StoreError::InvalidKey(_))
    ));
    assert!(matches!(
        s.del("a\0b").await,
        Err(StoreError::InvalidKey(_))
    ));
    let err = s
        .put("big", vec![0; MAX_VALUE_BYTES + 1])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::ValueTooLarge { .. }), "{err}");
    s.put("big", vec![7; MAX_VALUE_BYTES]).await.unwrap();
    assert_eq!(s.get("big").unwrap().unwrap().value.len(), MAX_VALUE_BYTES);
    s.put("ключ/🔑", b"unicode keys are fine".to_vec())
        .await
        .unwrap();
}

#[tokio::test]
async fn malformed_remote_changes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1, &FakeWall::new(T0));
    let good = Change {
        key: "k".into(),
        value: Some(vec![1]),
        version: Version {
            hlc: Hlc::new(T0, 0),
            origin: origin(2),
            seq: 1,
        },
        supersedes: vec![],
    };
    let mut zero = good.clone();
    zero.version.seq = 0;
    let mut unsorted = good.clone();
    unsorted.supersedes = vec![(origin(3), 1), (origin(2), 1)];
    let mut huge = good.clone();
    huge.value = Some(vec![0; MAX_VALUE_BYTES + 1]);
    for bad in [zero, unsorted, huge] {
        let err = s.apply(vec![good.clone(), bad]).await.unwrap_err();
        assert!(matches!(
            err,
            StoreError::InvalidChange(_) | StoreError::ValueTooLarge { .. }
        ));
    }
    assert!(
        s.get("k").unwrap().is_none(),
        "a refused batch stores nothing"
    );
    assert_eq!(s.apply(vec![good]).await.unwrap(), 1);
}

/// Makes a store file with some data and returns its path.
async fn populated(dir: &std::path::Path) -> std::path::PathBuf {
    let s = open(dir, 1, &FakeWall::new(T0));
    for i in 0..300u32 {
        s.put(&format!("key/{i}"), vec![i as u8; 300])
            .await
            .unwrap();
    }
    s.path().to_owned()
}

fn assert_corrupt(path: &std::path::Path) {
    let err = match Store::open_with(path, device(1), FakeWall::new(T0).config()) {
        Ok(s) => panic!(
            "opened a damaged file; it holds {} keys",
            s.list("", None, 1000).unwrap().len()
        ),
        Err(e) => e,
    };
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn truncated_file_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path()).await;
    let len = std::fs::metadata(&path).unwrap().len();
    for keep in [len / 2, 1000, 0] {
        let copy = dir.path().join(format!("trunc{keep}.redb"));
        std::fs::copy(&path, &copy).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&copy)
            .unwrap()
            .set_len(keep)
            .unwrap();
        assert_corrupt(&copy);
    }
}

fn garble(path: &std::path::Path, at: u64, len: usize) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&vec![0xA5; len]).unwrap();
}

#[tokio::test]
async fn overwritten_header_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path()).await;
    // (Bytes past the header's used part change nothing and rightly open fine.)
    for at in [0, 9, 16, 64, 192] {
        let copy = dir.path().join(format!("header{at}.redb"));
        std::fs::copy(&path, &copy).unwrap();
        garble(&copy, at, 64);
        assert_corrupt(&copy);
    }
}

#[tokio::test]
async fn overwritten_data_is_detected() {
    // Garble every place that holds a given key (live and stale copies of its page), so
    // the live data page is hit wherever redb put it.
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path()).await;
    let bytes = std::fs::read(&path).unwrap();
    for needle in [&b"key/150"[..], &b"key/7"[..], &[42u8; 100][..]] {
        let copy = dir.path().join(format!("data{}.redb", needle.len()));
        std::fs::copy(&path, &copy).unwrap();
        let hits: Vec<usize> = bytes
            .windows(needle.len())
            .enumerate()
            .filter(|(_, w)| *w == needle)
            .map(|(i, _)| i)
            .collect();
        assert!(!hits.is_empty());
        for at in hits {
            garble(&copy, at as u64, 32);
        }
        assert_corrupt(&copy);
    }
}

#[test]
fn a_file_that_is_not_a_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "hello, this is not a database\n".repeat(100)).unwrap();
    assert_corrupt(&path);
}
