//! How a store is opened: its configuration and the wall clock it stamps writes with.

use std::sync::Arc;

/// Source of wall-clock time in milliseconds since the Unix epoch.
pub type WallClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock: the one place the store reads the time.
pub fn system_wall_clock() -> WallClock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    })
}

/// The storage engine's page cache: 32 MiB.
pub const DEFAULT_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// How a store is opened.
#[derive(Clone)]
pub struct StoreConfig {
    /// Wall clock used to stamp writes.
    pub wall_clock: WallClock,
    /// Feed entries kept for watchers that resume (older ones are trimmed).
    pub feed_retain: u64,
    /// Most bytes of feed entries kept (each entry holds the change's value): the oldest
    /// go first, so the feed never doubles a store of large values.
    pub feed_retain_bytes: u64,
    /// Capacity of the write queue; writers wait when it is full.
    pub queue_capacity: usize,
    /// Capacity of the live broadcast of applied changes (slow watchers lag, then resume
    /// from the feed).
    pub broadcast_capacity: usize,
    /// Verify every page checksum when opening (reads the whole file once).
    pub verify_on_open: bool,
    /// Most memory the storage engine keeps as a cache of the file's pages. The engine's
    /// own default (1 GiB) would let a large store fill the daemon's memory (a 500 MiB
    /// store read once at open took 450 MB of RSS).
    pub cache_bytes: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            wall_clock: system_wall_clock(),
            feed_retain: 100_000,
            feed_retain_bytes: 128 * 1024 * 1024,
            queue_capacity: 4096,
            broadcast_capacity: 1024,
            verify_on_open: true,
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("feed_retain", &self.feed_retain)
            .field("feed_retain_bytes", &self.feed_retain_bytes)
            .field("queue_capacity", &self.queue_capacity)
            .field("broadcast_capacity", &self.broadcast_capacity)
            .field("verify_on_open", &self.verify_on_open)
            .field("cache_bytes", &self.cache_bytes)
            .finish_non_exhaustive()
    }
}
