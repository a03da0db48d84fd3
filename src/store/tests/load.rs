//! Load: many writes pipelined into the writer at once (batched into large transactions).

use super::*;

/// 30,000 puts submitted together all become durable: the writer survives transactions
/// that grow every table by a thousand entries (redb's debug-build page poisoning once
/// panicked here; see Cargo.toml, `profile.dev.package.redb`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_thousand_pipelined_puts_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let wall = FakeWall::new(1_700_000_000_000);
    let a = Arc::new(open(dir.path(), 1, &wall));
    let puts: Vec<_> = (0..30_000u32)
        .map(|i| {
            let a = a.clone();
            tokio::spawn(async move { a.put(&format!("w/{i}"), b"v".to_vec()).await })
        })
        .collect();
    for p in puts {
        p.await.unwrap().unwrap();
    }
    assert_eq!(a.item_count().unwrap(), 30_000);
}
