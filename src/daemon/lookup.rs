//! Host names given over the socket (`trust --addr`, `pair CODE --addr`), resolved without
//! holding up the daemon. The daemon runs on one thread: a name looked up in place
//! (`getaddrinfo`, which can wait for its resolver's timeouts, 5 s each by default) would
//! stop its connections, heartbeats and socket for as long. Here a literal address is
//! parsed at once; a name is looked up on a thread of its own, at most [`MAX_LOOKUPS`] at
//! once, and the request waits for it [`LOOKUP_TIMEOUT`] at most.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use tokio::sync::Semaphore;

/// How long a request waits for one name (including for a turn to look it up).
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Lookups under way at once. A lookup that outlives its request keeps its turn until
/// `getaddrinfo` returns (it cannot be stopped), so a resolver that hangs takes at most
/// this many threads, however many requests come.
pub const MAX_LOOKUPS: usize = 4;

static TURNS: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(MAX_LOOKUPS)));

/// Resolves `HOST:PORT` like [`crate::addr::resolve_addr`], without blocking this thread.
pub async fn resolve(s: &str) -> anyhow::Result<Vec<SocketAddr>> {
    resolve_with(s, &TURNS, LOOKUP_TIMEOUT, crate::addr::resolve_addr).await
}

async fn resolve_with(
    s: &str,
    turns: &Arc<Semaphore>,
    limit: Duration,
    look_up: impl FnOnce(&str) -> anyhow::Result<Vec<SocketAddr>> + Send + 'static,
) -> anyhow::Result<Vec<SocketAddr>> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    // Checked here too, before a thread is taken for it.
    if s.len() > crate::addr::MAX_ADDR_LEN {
        anyhow::bail!("address too long");
    }
    tracing::info!(name = %s, "looking up a host name given over the socket");
    let name = s.to_string();
    let turns = turns.clone();
    let looked_up = tokio::time::timeout(limit, async move {
        let turn = turns.acquire_owned().await?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        // A thread of its own, not tokio's blocking pool: the runtime waits for that
        // pool's tasks when it ends, and a lookup stuck in its resolver would hold up
        // `cnspr stop`. The thread ends with the lookup, or with the process.
        std::thread::Builder::new()
            .name("cnspr-lookup".into())
            .spawn(move || {
                let _turn = turn;
                let _ = tx.send(look_up(&name));
            })?;
        let res = rx
            .await
            .map_err(|_| anyhow::anyhow!("the lookup of {s:?} ended without an answer"))?;
        anyhow::Ok(res)
    })
    .await;
    match looked_up {
        Ok(Ok(res)) => res,
        Ok(Err(e)) => Err(e),
        Err(_) => anyhow::bail!(
            "{s:?}: the name did not resolve within {} s (check the name and this device's DNS)",
            limit.as_secs()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[tokio::test]
    async fn literal_addresses_need_no_lookup() {
        let none = Arc::new(Semaphore::new(0));
        let got = resolve_with("127.0.0.1:9", &none, Duration::from_millis(10), |_| {
            unreachable!("no lookup for a literal address")
        })
        .await
        .unwrap();
        assert_eq!(got, vec!["127.0.0.1:9".parse().unwrap()]);
        assert!(
            resolve_with("[::1]:9", &none, Duration::ZERO, |_| unreachable!())
                .await
                .is_ok()
        );
    }

    /// The lookup runs off the daemon's thread: the task that lets it finish runs on
    /// that (only) thread meanwhile. Were the lookup made in place, it would wait for
    /// that task in vain, and give up after 10 s with an error.
    #[tokio::test(flavor = "current_thread")]
    async fn a_lookup_does_not_hold_the_daemon_s_thread() {
        let turns = Arc::new(Semaphore::new(1));
        let (release, hold) = mpsc::channel::<()>();
        let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel::<()>();
        let lookup = resolve_with(
            "slow.example:9",
            &turns,
            Duration::from_secs(60),
            move |_| {
                started_tx.send(()).unwrap();
                hold.recv_timeout(Duration::from_secs(10))
                    .map_err(|_| anyhow::anyhow!("the lookup held the daemon's thread"))?;
                Ok(vec!["10.0.0.1:9".parse().unwrap()])
            },
        );
        let other_task = async move {
            started.recv().await;
            release.send(()).unwrap();
        };
        let (got, ()) = tokio::join!(lookup, other_task);
        assert_eq!(got.unwrap(), vec!["10.0.0.1:9".parse().unwrap()]);
    }

    /// A resolver that hangs costs a request its timeout and holds at most its turns.
    #[tokio::test]
    async fn a_hanging_resolver_holds_no_more_than_its_turns() {
        let turns = Arc::new(Semaphore::new(1));
        let (release, hold) = mpsc::channel::<()>();
        let e = resolve_with(
            "hangs.example:9",
            &turns,
            Duration::from_millis(50),
            move |_| {
                // Released below; the bound keeps a broken build from hanging the test.
                let _ = hold.recv_timeout(Duration::from_secs(10));
                Ok(vec![])
            },
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("did not resolve within"), "{e}");
        // Its turn is still taken: the next name waits for it, and gives up in time.
        let e = resolve_with("next.example:9", &turns, Duration::from_millis(50), |_| {
            unreachable!("no turn left")
        })
        .await
        .unwrap_err();
        assert!(e.to_string().contains("did not resolve within"), "{e}");
        // Once the hanging lookup returns, its turn is free again.
        release.send(()).unwrap();
        let back = resolve_with("back.example:9", &turns, Duration::from_secs(30), |_| {
            Ok(vec!["10.0.0.1:9".parse().unwrap()])
        })
        .await
        .unwrap();
        assert_eq!(back.len(), 1);
    }
}
