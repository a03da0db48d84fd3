//! Store tests: helpers shared by the test modules.

mod batch;
mod claims;
mod cond;
mod durability;
mod epochs;
mod input;
mod load;
mod props;
mod received;
mod recon;
mod renew;
mod retire;
mod sync;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::claims::Refusal;
use super::{
    Change, Delta, Device, Origin, Store, StoreConfig, StoreError, Version, VersionVector,
};

/// A deterministic device.
pub(super) fn device(n: u8) -> Device {
    [n; 32]
}

/// A deterministic origin (device `n`, epoch 0) for changes made by hand.
pub(super) fn origin(n: u8) -> Origin {
    Origin::new(device(n), 0)
}

/// A delta of `changes` whose vector is `through`, as a peer sends it.
pub(super) fn delta(
    changes: Vec<Change>,
    through: impl IntoIterator<Item = (Origin, u64)>,
) -> Delta {
    Delta {
        changes,
        through: through.into_iter().collect(),
        more: false,
        batches: vec![],
    }
}

/// The refusal `r` is; panics on anything else.
pub(super) fn refusal(r: Result<usize, StoreError>) -> Refusal {
    match r {
        Err(StoreError::Refused(refusal)) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A settable wall clock.
#[derive(Clone)]
pub(super) struct FakeWall(Arc<AtomicU64>);

impl FakeWall {
    pub fn new(ms: u64) -> Self {
        Self(Arc::new(AtomicU64::new(ms)))
    }
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
    pub fn config(&self) -> StoreConfig {
        let cell = self.0.clone();
        StoreConfig {
            wall_clock: Arc::new(move || cell.load(Ordering::SeqCst)),
            ..StoreConfig::default()
        }
    }
}

/// Opens store number `n` in `dir` with a fake clock at `wall_ms`.
pub(super) fn open(dir: &Path, n: u8, wall: &FakeWall) -> Store {
    Store::open_with(dir.join(format!("s{n}.redb")), device(n), wall.config()).expect("open store")
}

/// Everything observable about a set of keys: every version (winner first) and the vector.
pub(super) type Dump = (
    Vec<(String, Vec<(Version, Option<Vec<u8>>)>)>,
    VersionVector,
);

pub(super) fn dump(store: &Store, keys: &[String]) -> Dump {
    let versions = keys
        .iter()
        .map(|k| (k.clone(), store.versions(k).expect("versions")))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    (versions, store.version_vector().expect("vv"))
}

/// Pulls everything `from` has that `to` lacks, in pages of `page`.
pub(super) async fn pull(to: &Store, from: &Store, page: usize) -> usize {
    let mut total = 0;
    loop {
        let delta = from
            .changes_since(&to.version_vector().expect("vv"), page)
            .expect("delta");
        let more = delta.more;
        total += to
            .apply_delta(delta, from.origin().device)
            .await
            .expect("apply_delta");
        if !more {
            return total;
        }
    }
}

/// Syncs every pair both ways.
pub(super) async fn sync_all(stores: &[Store]) {
    for a in stores {
        for b in stores {
            if a.origin() != b.origin() {
                pull(a, b, 1000).await;
            }
        }
    }
    for a in stores {
        for b in stores {
            if a.origin() != b.origin() {
                pull(a, b, 1000).await;
            }
        }
    }
}

pub(super) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}
