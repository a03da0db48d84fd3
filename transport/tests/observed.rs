//! The observed address: in the hello exchange each side tells the other where it sees
//! the connection come from (the hello feature `observed=ADDRESS`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use transport::frame::{read_frame, write_frame, MAX_CONTROL_FRAME};
use transport::wire::{self, ControlFrame, Hello};
use transport::{
    quinn, tls, Endpoint, EndpointConfig, Identity, PeerConn, Roster, StreamKind, PROTOCOL_VERSION,
};

const DEADLINE: Duration = Duration::from_secs(15);

fn identity(name: &str) -> Arc<Identity> {
    Arc::new(Identity::generate(name).unwrap())
}

fn endpoint(id: &Arc<Identity>, trusted: &Arc<Identity>, listen: &str) -> Result<Endpoint> {
    let roster = Roster::new();
    roster.insert(trusted.id);
    let cfg = EndpointConfig {
        listen: vec![listen.parse()?],
        ..EndpointConfig::for_test()
    };
    Ok(Endpoint::bind(id.clone(), roster, cfg)?)
}

async fn connection(ep: &Endpoint, peer: &Identity) -> Result<PeerConn> {
    let start = Instant::now();
    loop {
        if let Some(c) = ep.connection(&peer.id) {
            return Ok(c);
        }
        if start.elapsed() > DEADLINE {
            bail!("no connection to {}", peer.name);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn each_side_learns_the_address_the_other_sees_it_at() -> Result<()> {
    let (a, b) = (identity("a"), identity("b"));
    let ea = endpoint(&a, &b, "127.0.0.1:0")?;
    let eb = endpoint(&b, &a, "127.0.0.1:0")?;
    let (a_addr, b_addr) = (ea.local_addrs()[0], eb.local_addrs()[0]);
    let at_a = ea.connect(b.id, &[b_addr]).await?;
    let at_b = connection(&eb, &a).await?;
    // a dials from its listening socket: b sees a's packets come from a's address, and
    // says so; a sees b where it dialled it.
    assert_eq!(at_b.remote_address(), a_addr);
    assert_eq!(
        at_a.observed(),
        Some(a_addr),
        "the dialler's observed address"
    );
    assert_eq!(at_a.remote_address(), b_addr);
    assert_eq!(
        at_b.observed(),
        Some(b_addr),
        "the acceptor's observed address"
    );
    Ok(())
}

#[tokio::test]
async fn an_ipv4_peer_of_a_dual_stack_socket_is_observed_as_ipv4() -> Result<()> {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 on this host");
        return Ok(());
    }
    let (a, b) = (identity("a"), identity("b"));
    let ea = endpoint(&a, &b, "127.0.0.1:0")?;
    let eb = endpoint(&b, &a, "[::]:0")?;
    let a_addr = ea.local_addrs()[0];
    let b_v4 = SocketAddr::from(([127, 0, 0, 1], eb.local_addrs()[0].port()));
    let at_a = ea.connect(b.id, &[b_v4]).await?;
    let at_b = connection(&eb, &a).await?;
    // b's socket sees a at an IPv4-mapped IPv6 address; a hears of it as IPv4.
    assert_eq!(at_a.observed(), Some(a_addr));
    assert_eq!(at_b.observed(), Some(b_v4));
    Ok(())
}

/// A peer of an earlier version: its hello has no `observed=` feature, and it reads a
/// `HelloAck` that has one as the same `Hello` it knows (features are strings it
/// ignores unless it knows them).
#[tokio::test]
async fn a_peer_that_does_not_send_it_is_still_served() -> Result<()> {
    let (a, b) = (identity("a"), identity("b"));
    let eb = endpoint(&b, &a, "127.0.0.1:0")?;
    let roster = Roster::new();
    roster.insert(b.id);
    let provider = EndpointConfig::for_test().provider;
    let client = tls::rustls_client_config(&a, &roster, b.id, provider)?;
    let q = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    let conn = q
        .connect_with(
            quinn::ClientConfig::new(tls::quic_client(client)?),
            eb.local_addrs()[0],
            tls::SERVER_NAME,
        )?
        .await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&StreamKind::Hello.header()).await?;
    let hello = Hello {
        version: u16::from(PROTOCOL_VERSION),
        name: "old".into(),
        features: vec!["heartbeat".into()],
    };
    write_frame(&mut send, &ControlFrame::Hello(hello), MAX_CONTROL_FRAME).await?;
    send.finish()?;
    let ack: Option<ControlFrame> =
        tokio::time::timeout(DEADLINE, read_frame(&mut recv, MAX_CONTROL_FRAME))
            .await
            .context("no HelloAck")??;
    let Some(ControlFrame::HelloAck(ack)) = ack else {
        bail!("expected a HelloAck, got {ack:?}");
    };
    assert_eq!(wire::observed(&ack.features), Some(q.local_addr()?));
    let at_b = connection(&eb, &a).await?;
    assert_eq!(at_b.name, "old");
    assert_eq!(at_b.observed(), None);
    assert!(at_b.conn.close_reason().is_none());
    Ok(())
}
