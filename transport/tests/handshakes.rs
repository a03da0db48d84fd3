//! A flood of valid ClientHellos from strangers: the handshakes a device has under way
//! stay within their bounds, unvalidated addresses get Retries, the surplus is refused,
//! and a member still connects meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use transport::{Endpoint, EndpointConfig, HandshakeLimits, Identity, Roster};

mod stranger;
use stranger::{client_config, Stranger};

const DEADLINE: Duration = Duration::from_secs(20);

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > DEADLINE {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_is_bounded_and_a_member_still_connects() -> Result<()> {
    let (server, member) = (
        Arc::new(Identity::generate("server")?),
        Arc::new(Identity::generate("member")?),
    );
    let roster = Roster::new();
    roster.insert(member.id);
    let es = Endpoint::bind(server.clone(), roster, EndpointConfig::for_test())?;
    let to = es.local_addrs()[0];
    let limits = HandshakeLimits::default();

    // 60 stalling strangers behind one address (the server's own, 127.0.0.1), 15 behind
    // each of 6 others, and 120 that never hear an answer (spoofed sources), each from an
    // address of its own.
    let client = client_config(server.id)?;
    let mut strangers = Vec::new();
    for _ in 0..60 {
        strangers.push(Stranger::new(&client, "127.0.0.1", 1)?);
    }
    for net in 1..=6 {
        for _ in 0..15 {
            strangers.push(Stranger::new(&client, &format!("127.0.1.{net}"), 1)?);
        }
    }
    for i in 0..120 {
        strangers.push(Stranger::new(&client, &format!("127.0.2.{}", i + 1), 0)?);
    }
    let dials: Vec<_> = strangers
        .iter()
        .map(|s| s.dial(to))
        .collect::<Result<_>>()?;
    // Every stranger's first Initial has been decided about, and the load is high.
    let n = strangers.len() as u64;
    wait_for("the flood to be handled", || {
        let c = es.handshakes();
        c.under_way >= limits.retry_above && c.accepted + c.retried + c.refused >= n
    })
    .await?;

    // A member dials in the middle of it, from an address of its own.
    let em = Endpoint::bind(
        member.clone(),
        {
            let r = Roster::new();
            r.insert(server.id);
            r
        },
        EndpointConfig {
            listen: vec!["127.0.0.2:0".parse()?],
            ..EndpointConfig::for_test()
        },
    )?;
    tokio::time::timeout(DEADLINE, em.connect(server.id, &[to])).await??;
    wait_for("the member's connection on the server", || {
        es.connection(&member.id).is_some()
    })
    .await?;
    let c = es.handshakes();
    println!("{c:?}");
    ensure!(
        c.under_way > 0,
        "the flood was over before the member came: {c:?}"
    );
    ensure!(
        c.peak <= limits.max,
        "more handshakes under way than {}: {c:?}",
        limits.max
    );
    ensure!(
        c.peak_per_source <= limits.per_source,
        "more handshakes from one source than {}: {c:?}",
        limits.per_source
    );
    ensure!(c.retried > 0 && c.refused > 0, "{c:?}");
    // No stranger got a connection.
    for d in dials {
        drop(d);
    }
    ensure!(es.connections().len() == 1, "{:?}", es.connections());
    Ok(())
}
