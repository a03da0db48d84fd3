//! Store benchmark (no network): durable puts with one writer and with 16 concurrent
//! writers (group commit), and the rate of applying 100,000 received changes.
//!
//! Every line states its reference and the ratio to it:
//! - single writer: this disk's own rate of 4 KiB write + fdatasync (the ceiling for one
//!   durable commit per put), measured here first;
//! - 16 writers: the single-writer rate (group commit speed-up);
//! - apply: cr-sqlite, reported to need 5-9 s for 100,000 changes (11,000-20,000/s; the
//!   ratio uses the favourable 20,000/s).
//!
//! - batches of 1,000 puts: the target of 50,000 durable keys/s and the single-writer rate
//!   of the same run; then the same batches applied on a second store (as a peer does).
//!
//! Run: `cargo bench --bench store`. `CNSPR_BENCH_PUTS` (default 2000) sets the puts per
//! measurement, `CNSPR_BENCH_DIR` the directory of the files (default: a temp dir).

use cnspr::store;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use store::{Change, Hlc, Origin, Store, Version};

const CR_SQLITE_CHANGES_PER_S: f64 = 100_000.0 / 5.0;
const APPLY_CHANGES: u64 = 100_000;
const APPLY_KEYS: u64 = 20_000;
const APPLY_BATCH: usize = 1_000;

fn fsync_rate(dir: &Path, n: u32) -> f64 {
    let path = dir.join("fsync.probe");
    let mut f = std::fs::File::create(&path).expect("probe file");
    let block = [0x5Au8; 4096];
    let start = Instant::now();
    for _ in 0..n {
        f.write_all(&block).expect("write");
        f.sync_data().expect("fdatasync");
    }
    let rate = f64::from(n) / start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(path);
    rate
}

async fn single_writer(dir: &Path, puts: u32) -> f64 {
    let store = Store::open(dir.join("single.redb"), [1; 32]).expect("open");
    let start = Instant::now();
    for i in 0..puts {
        store
            .put(&format!("bench/{i:06}"), vec![7; 100])
            .await
            .expect("put");
    }
    f64::from(puts) / start.elapsed().as_secs_f64()
}

async fn concurrent_writers(dir: &Path, puts: u32) -> (f64, f64) {
    let store = Arc::new(Store::open(dir.join("concurrent.redb"), [2; 32]).expect("open"));
    let per_writer = puts / 16;
    let start = Instant::now();
    let tasks: Vec<_> = (0..16u32)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..per_writer {
                    store
                        .put(&format!("w{w:02}/{i:06}"), vec![7; 100])
                        .await
                        .expect("put");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer task");
    }
    let total = f64::from(per_writer * 16);
    let rate = total / start.elapsed().as_secs_f64();
    (rate, store.commit_count() as f64 / total)
}

/// 100,000 changes from one remote device over 20,000 keys, each superseding the
/// previous write of its key, as a peer would send them.
fn remote_changes() -> Vec<Change> {
    let origin = Origin::new([9u8; 32], 1);
    let mut last_seq = vec![0u64; APPLY_KEYS as usize];
    (1..=APPLY_CHANGES)
        .map(|seq| {
            let k = (seq % APPLY_KEYS) as usize;
            let supersedes = if last_seq[k] == 0 {
                vec![]
            } else {
                vec![(origin, last_seq[k])]
            };
            last_seq[k] = seq;
            Change {
                key: format!("remote/{k:05}"),
                value: Some(vec![(seq % 251) as u8; 100]),
                version: Version {
                    hlc: Hlc::new(1_700_000_000_000 + seq, 0),
                    origin,
                    seq,
                },
                supersedes,
            }
        })
        .collect()
}

async fn apply_rate(dir: &Path) -> (f64, f64) {
    let store = Store::open(dir.join("apply.redb"), [3; 32]).expect("open");
    let changes = remote_changes();
    let start = Instant::now();
    let mut applied = 0;
    for batch in changes.chunks(APPLY_BATCH) {
        applied += store.apply(batch.to_vec()).await.expect("apply");
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(applied as u64, APPLY_CHANGES);
    assert_eq!(
        store.list("remote/", None, usize::MAX).expect("list").len() as u64,
        APPLY_KEYS
    );
    (APPLY_CHANGES as f64 / secs, secs)
}

/// 20 batches of 1,000 puts of 100 bytes: durable keys/s and commits per batch; then the
/// keys/s of applying them on a second store, delta by delta.
async fn batches(dir: &Path) -> (f64, f64, f64) {
    const BATCHES: u32 = 20;
    let a = Store::open(dir.join("batch-a.redb"), [3; 32]).expect("open");
    let b = Store::open(dir.join("batch-b.redb"), [4; 32]).expect("open");
    let commits = a.commit_count();
    let start = Instant::now();
    for n in 0..BATCHES {
        let ops = (0..store::MAX_BATCH_OPS)
            .map(|i| store::BatchOp {
                key: format!("batch/{n:02}/{i:04}"),
                value: Some(vec![7; 100]),
                cond: None,
            })
            .collect();
        a.batch(ops).await.expect("batch");
    }
    let keys = f64::from(BATCHES) * store::MAX_BATCH_OPS as f64;
    let written = keys / start.elapsed().as_secs_f64();
    let per_batch = (a.commit_count() - commits) as f64 / f64::from(BATCHES);
    let start = Instant::now();
    loop {
        let delta = a
            .changes_since(&b.version_vector().expect("vv"), 4096)
            .expect("delta");
        let more = delta.more;
        b.apply_delta(delta, [3; 32]).await.expect("apply");
        if !more {
            break;
        }
    }
    let applied = keys / start.elapsed().as_secs_f64();
    (written, per_batch, applied)
}

fn main() {
    let puts: u32 = std::env::var("CNSPR_BENCH_PUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = std::env::var_os("CNSPR_BENCH_DIR").map_or_else(|| tmp.path().to_owned(), Into::into);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let fsyncs = fsync_rate(&dir, 500);
    println!("reference: this disk does {fsyncs:.0} write+fdatasync/s");
    let single = runtime.block_on(single_writer(&dir, puts));
    println!(
        "durable puts, 1 writer:   {single:>9.0} puts/s   ({:.2}x the disk's fdatasync rate)",
        single / fsyncs
    );
    let (many, commits_per_put) = runtime.block_on(concurrent_writers(&dir, puts * 4));
    println!(
        "durable puts, 16 writers: {many:>9.0} puts/s   ({:.1}x one writer; {commits_per_put:.3} commits per put)",
        many / single
    );
    let (written, per_batch, applied) = runtime.block_on(batches(&dir));
    println!(
        "batches of 1,000 puts:    {written:>9.0} keys/s   ({:.2}x the 50,000 target; {:.0}x one writer's puts; {per_batch:.2} commits per batch)",
        written / 50_000.0,
        written / single
    );
    println!(
        "batches applied on a peer: {applied:>8.0} keys/s   ({:.2}x the 50,000 target)",
        applied / 50_000.0
    );
    let (rate, secs) = runtime.block_on(apply_rate(&dir));
    println!(
        "apply received changes:   {rate:>9.0} changes/s ({APPLY_CHANGES} in {secs:.2} s; {:.1}x cr-sqlite's best reported 5 s)",
        rate / CR_SQLITE_CHANGES_PER_S
    );
}
