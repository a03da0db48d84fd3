//! The keys a device expects its relays to hold, derived from their secrets
//! ([`relay_identity`]: PBKDF2 over [`KEY_ROUNDS`](super::KEY_ROUNDS), slow on purpose).
//!
//! Relay entries come from members, and a stolen member can sign as many as it likes:
//! each derivation here is bounded so that they cannot make a device spend its CPU on
//! them. A secret's key is derived once and kept (a few secrets); derivations run one
//! at a time, off the runtime's threads; a request that is dropped before its turn (its
//! relay was replaced) never starts one; and after a burst, derivations are spaced out
//! ([`BURST`], [`REFILL`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::relay_identity;
use crate::bucket::TokenBucket;
use crate::id::DeviceId;

/// Secrets whose key is kept (more than a mesh has relays).
pub const CACHED: usize = 16;
/// Derivations allowed at once after a quiet while (a device starting with its relays).
pub const BURST: u32 = 8;
/// Then one more per this long.
pub const REFILL: Duration = Duration::from_secs(10);

/// How a secret becomes the relay's device ID.
pub type Derive = Arc<dyn Fn(&str) -> DeviceId + Send + Sync>;

fn derive_id(secret: &str) -> DeviceId {
    relay_identity(secret).id
}

fn digest(secret: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The relays' expected keys (see the module documentation).
pub struct RelayKeys {
    derive: Derive,
    /// Most recently used last; by SHA-256 of the secret (the secrets stay in their specs).
    cache: Mutex<VecDeque<([u8; 32], DeviceId)>>,
    /// One permit: the derivation running (held until it ends, even if its requester
    /// went away).
    turn: Arc<Semaphore>,
    budget: Mutex<TokenBucket>,
    derived: AtomicU64,
}

impl std::fmt::Debug for RelayKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayKeys")
            .field("derived", &self.derived())
            .finish_non_exhaustive()
    }
}

impl Default for RelayKeys {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RelayKeys {
    pub fn new() -> Self {
        Self::with_derivation(Arc::new(derive_id))
    }

    /// With another derivation (tests).
    pub fn with_derivation(derive: Derive) -> Self {
        RelayKeys {
            derive,
            cache: Mutex::new(VecDeque::new()),
            turn: Arc::new(Semaphore::new(1)),
            budget: Mutex::new(TokenBucket::full(BURST, REFILL, Instant::now().into_std())),
            derived: AtomicU64::new(0),
        }
    }

    /// How many keys were derived so far.
    pub fn derived(&self) -> u64 {
        self.derived.load(Ordering::Relaxed)
    }

    /// The key of `secret` if it is known already.
    pub fn cached(&self, secret: &str) -> Option<DeviceId> {
        self.lookup(&digest(secret))
    }

    fn lookup(&self, key: &[u8; 32]) -> Option<DeviceId> {
        let mut cache = lock(&self.cache);
        let at = cache.iter().position(|(k, _)| k == key)?;
        let hit = cache.remove(at)?;
        cache.push_back(hit);
        Some(hit.1)
    }

    fn remember(&self, key: [u8; 32], id: DeviceId) {
        let mut cache = lock(&self.cache);
        cache.retain(|(k, _)| *k != key);
        if cache.len() >= CACHED {
            cache.pop_front();
        }
        cache.push_back((key, id));
    }

    /// Waits for a derivation to be allowed by the budget, and spends it.
    async fn spend(&self) {
        loop {
            let wait = {
                let mut b = lock(&self.budget);
                let now = Instant::now().into_std();
                if b.try_take(now) {
                    return;
                }
                b.wait(now)
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// The device ID of the relay whose secret is `secret`: known already, or derived
    /// when its turn comes. Dropping the future before then starts no derivation; once
    /// started, a derivation finishes (and is kept) whoever waits for it. `None` if the
    /// runtime is shutting down.
    pub async fn relay_id(self: &Arc<Self>, secret: &str) -> Option<DeviceId> {
        let key = digest(secret);
        if let Some(id) = self.lookup(&key) {
            return Some(id);
        }
        let permit = self.turn.clone().acquire_owned().await.ok()?;
        // Derived while this one waited (another relay of the same secret).
        if let Some(id) = self.lookup(&key) {
            return Some(id);
        }
        self.spend().await;
        let keys = self.clone();
        let secret = secret.to_string();
        tokio::task::spawn_blocking(move || {
            let id = (keys.derive)(&secret);
            keys.derived.fetch_add(1, Ordering::Relaxed);
            keys.remember(key, id);
            drop(permit);
            id
        })
        .await
        .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A cheap stand-in for PBKDF2; the counter says how many ran at once, at most.
    fn fake() -> (Derive, Arc<AtomicUsize>) {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let m = most.clone();
        let derive: Derive = Arc::new(move |secret: &str| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(now, Ordering::SeqCst);
            std::thread::yield_now();
            running.fetch_sub(1, Ordering::SeqCst);
            DeviceId(digest(secret))
        });
        (derive, most)
    }

    #[tokio::test(start_paused = true)]
    async fn a_secret_is_derived_once_and_superseded_requests_never_start() {
        let (derive, most) = fake();
        let keys = Arc::new(RelayKeys::with_derivation(derive));
        let a = keys.relay_id("first-secret-0000").await.unwrap();
        assert_eq!(keys.relay_id("first-secret-0000").await, Some(a));
        assert_eq!(keys.derived(), 1);

        // A flood of secrets, each request replacing the one before (as a relay entry
        // replaced by gossip, whose link task is aborted).
        let mut last = None;
        for i in 0..100 {
            let k = keys.clone();
            let task =
                tokio::spawn(async move { k.relay_id(&format!("flood-secret-{i:04}")).await });
            if let Some(old) = last.replace(task) {
                old.abort();
            }
            tokio::task::yield_now().await;
        }
        let id = last.unwrap().await.unwrap();
        assert_eq!(id, Some(DeviceId(digest("flood-secret-0099"))));
        let derived = keys.derived();
        assert!(
            derived <= 2 + u64::from(BURST),
            "{derived} derivations for 100 superseded requests"
        );
        assert_eq!(most.load(Ordering::SeqCst), 1, "derivations ran at once");
        assert_eq!(keys.cached("flood-secret-0099"), id);
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_burst_derivations_are_spaced_out() {
        let keys = Arc::new(RelayKeys::with_derivation(fake().0));
        let start = Instant::now();
        for i in 0..BURST + 2 {
            keys.relay_id(&format!("secret-number-{i:04}"))
                .await
                .unwrap();
        }
        assert_eq!(keys.derived(), u64::from(BURST) + 2);
        // The clock is paused: what passed is what the budget made the last two wait.
        let waited = start.elapsed();
        assert!(waited >= REFILL * 2 && waited < REFILL * 3, "{waited:?}");
        // The cache keeps the recent ones, and no more than its size.
        assert!(keys
            .cached(&format!("secret-number-{:04}", BURST + 1))
            .is_some());
        for i in 0..CACHED {
            keys.remember([i as u8; 32], DeviceId([0; 32]));
        }
        assert_eq!(lock(&keys.cache).len(), CACHED);
        assert!(keys
            .cached(&format!("secret-number-{:04}", BURST + 1))
            .is_none());
    }
}
