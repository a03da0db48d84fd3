//! Two endpoints that reach each other only through a relay (loopback): registration,
//! a connection to the peer's virtual address, streams through it; the relay forwards
//! nothing for a device of another mesh tag and refuses a wrong secret.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use transport::relay::link::RelaySpec;
use transport::relay::server::{RelayConfig, RelayServer};
use transport::relay::{is_virtual, socket::LinkPath};
use transport::{tls, Endpoint, EndpointConfig, Identity, Roster, StreamKind};

const DEADLINE: Duration = Duration::from_secs(15);
const SECRET: &str = "loopback-relay-secret";

fn identity(name: &str) -> Arc<Identity> {
    Arc::new(Identity::generate(name).unwrap())
}

fn endpoint(id: &Arc<Identity>, trusted: &[&Arc<Identity>]) -> Result<Endpoint> {
    let roster = Roster::new();
    for t in trusted {
        roster.insert(t.id);
    }
    Ok(Endpoint::bind(
        id.clone(),
        roster,
        EndpointConfig::for_test(),
    )?)
}

async fn relay(tcp: bool) -> Result<RelayServer> {
    let cfg = RelayConfig {
        listen: "127.0.0.1:0".parse()?,
        tcp: tcp.then(|| "127.0.0.1:0".parse().unwrap()),
        secret: SECRET.into(),
        max_devices: 16,
        rate: 0,
    };
    Ok(RelayServer::bind(cfg, Arc::new(tls::chacha_provider())).await?)
}

fn spec(server: &RelayServer, secret: &str, tag: u8) -> RelaySpec {
    RelaySpec {
        addr: server.udp_addr().to_string(),
        secret: secret.into(),
        tag: [tag; 16],
    }
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > DEADLINE {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Opens an app stream from `ea` to `b`, sends `n` bytes, and reads them back from b's
/// side.
async fn echo_through(ea: &Endpoint, eb: &Endpoint, b: &Identity, n: usize) -> Result<()> {
    let pc = match ea.connect(b.id, &[]).await {
        Ok(pc) => pc,
        Err(e) => {
            let c = |e: &Endpoint| {
                let s = &e.relays().stats;
                use std::sync::atomic::Ordering::Relaxed;
                (
                    s.sent.load(Relaxed),
                    s.received.load(Relaxed),
                    s.unroutable.load(Relaxed),
                )
            };
            bail!(
                "{e}; a (sent, received, unroutable) {:?}, b {:?}",
                c(ea),
                c(eb)
            );
        }
    };
    assert!(is_virtual(&pc.remote_address()), "{}", pc.remote_address());
    let mut incoming = eb.take_incoming().unwrap();
    let (mut send, _recv) = pc.open(StreamKind::App).await?;
    let data: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
    let d2 = data.clone();
    let writer = tokio::spawn(async move {
        send.write_all(&d2).await.unwrap();
        send.finish().unwrap();
    });
    let mut s = tokio::time::timeout(DEADLINE, incoming.recv())
        .await?
        .unwrap();
    assert_eq!(s.kind, StreamKind::App);
    let got = tokio::time::timeout(DEADLINE, s.recv.read_to_end(n + 1)).await??;
    writer.await?;
    assert!(got == data, "the stream through the relay arrived damaged");
    Ok(())
}

#[tokio::test]
async fn two_endpoints_connect_and_stream_through_a_relay_over_udp() -> Result<()> {
    let server = relay(false).await?;
    let (a, b) = (identity("a"), identity("b"));
    let (ea, eb) = (endpoint(&a, &[&b])?, endpoint(&b, &[&a])?);
    ea.set_relays(&[spec(&server, SECRET, 1)]);
    eb.set_relays(&[spec(&server, SECRET, 1)]);
    until("both to register", || {
        ea.relays().current().is_some() && eb.relays().current().is_some()
    })
    .await?;
    let link = ea.relays().current().unwrap();
    assert!(matches!(link.path, LinkPath::Udp(_)));
    assert_eq!(link.observed, ea.local_addrs()[0], "the reflexive address");
    if let Err(e) = echo_through(&ea, &eb, &b, 4 << 20).await {
        let st = server.stats();
        use std::sync::atomic::Ordering::Relaxed;
        bail!(
            "{e}; relay forwarded {} unknown {} limited {}",
            st.forwarded.load(Relaxed),
            st.unknown.load(Relaxed),
            st.limited.load(Relaxed)
        );
    }
    assert!(
        server
            .stats()
            .forwarded
            .load(std::sync::atomic::Ordering::Relaxed)
            > 100
    );
    Ok(())
}

#[tokio::test]
async fn a_device_reaches_the_relay_over_tcp() -> Result<()> {
    let server = relay(true).await?;
    let (a, b) = (identity("a"), identity("b"));
    let (ea, eb) = (endpoint(&a, &[&b])?, endpoint(&b, &[&a])?);
    // a names the relay by its TCP port, where no UDP socket of the relay listens
    // (the relay's UDP port is another one): QUIC gets no answer, TCP does.
    let tcp = server.tcp_addr().unwrap();
    assert_ne!(tcp.port(), server.udp_addr().port());
    let mut only_tcp = spec(&server, SECRET, 1);
    only_tcp.addr = tcp.to_string();
    eb.set_relays(&[spec(&server, SECRET, 1)]);
    ea.set_relays(&[only_tcp]);
    until("a to register over TCP", || {
        ea.relays()
            .current()
            .is_some_and(|l| matches!(l.path, LinkPath::Tcp(_)))
    })
    .await?;
    until("b to register", || eb.relays().current().is_some()).await?;
    echo_through(&ea, &eb, &b, 1 << 20).await?;
    Ok(())
}

#[tokio::test]
async fn the_relay_refuses_a_wrong_secret_and_keeps_meshes_apart() -> Result<()> {
    let server = relay(false).await?;
    let (a, b) = (identity("a"), identity("b"));
    let (ea, eb) = (endpoint(&a, &[&b])?, endpoint(&b, &[&a])?);
    // A wrong secret: the device does not even accept the relay's key.
    ea.set_relays(&[spec(&server, "another-secret-000", 1)]);
    until("a's registration to fail", || {
        !ea.relays().problems().is_empty()
    })
    .await?;
    assert!(ea.relays().current().is_none());
    // Right secret, different mesh tags: both registered, nothing goes through.
    ea.set_relays(&[spec(&server, SECRET, 1)]);
    eb.set_relays(&[spec(&server, SECRET, 2)]);
    until("both to register", || {
        ea.relays().current().is_some() && eb.relays().current().is_some()
    })
    .await?;
    assert_eq!(server.devices(), 2);
    let res = tokio::time::timeout(DEADLINE, ea.connect(b.id, &[])).await?;
    assert!(
        res.is_err(),
        "a reached another mesh's device through the relay"
    );
    assert!(
        server
            .stats()
            .unknown
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    Ok(())
}
