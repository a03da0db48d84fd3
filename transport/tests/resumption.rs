//! Every handshake is checked against the live roster: no TLS session resumption.
//!
//! A resumed TLS 1.3 handshake carries no certificate: rustls restores the one stored with
//! the session and runs no verifier, so a device removed from the roster could come back
//! with a ticket from before its removal. These tests keep one client configuration (and
//! so one session store) across two connections, as a client that caches its
//! configuration would, and remove a device from the roster in between.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use transport::{quinn, tls, Endpoint, EndpointConfig, Identity, Roster, TransportError};

const DEADLINE: Duration = Duration::from_secs(15);

fn identity(name: &str) -> Arc<Identity> {
    Arc::new(Identity::generate(name).unwrap())
}

fn roster(ids: &[&Arc<Identity>]) -> Roster {
    let r = Roster::new();
    for i in ids {
        r.insert(i.id);
    }
    r
}

/// A bare quinn server with the endpoint's TLS configuration.
fn server(id: &Identity, roster: &Roster) -> Result<quinn::Endpoint> {
    let cfg = EndpointConfig::for_test();
    let rustls = tls::rustls_server_config(id, roster, cfg.provider.clone())?;
    let server = quinn::ServerConfig::with_crypto(tls::quic_server(rustls)?);
    Ok(quinn::Endpoint::server(server, "127.0.0.1:0".parse()?)?)
}

/// A bare quinn client endpoint whose one configuration (the endpoint's TLS
/// configuration for dialling `expected`) serves every connection.
fn client(id: &Identity, roster: &Roster, expected: &Identity) -> Result<quinn::Endpoint> {
    let cfg = EndpointConfig::for_test();
    let rustls = tls::rustls_client_config(id, roster, expected.id, cfg.provider.clone())?;
    let mut q = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    q.set_default_client_config(quinn::ClientConfig::new(tls::quic_client(rustls)?));
    Ok(q)
}

/// One connection: both handshakes' results (`Ok(())` for a connection up on that side).
/// On success the server sends one byte on a stream and the client reads it, so every
/// session ticket the server sent with its handshake has reached the client's store
/// (the server sends its tickets as soon as the handshake completes, before any stream
/// data), then the connection is closed.
async fn connect_once(
    client: &quinn::Endpoint,
    server: &quinn::Endpoint,
) -> Result<(Result<(), String>, Result<(), String>)> {
    let to: SocketAddr = server.local_addr()?;
    let accept = async {
        let incoming = server.accept().await.context("server endpoint closed")?;
        anyhow::Ok(incoming.await)
    };
    let dial = async { anyhow::Ok(client.connect(to, tls::SERVER_NAME)?.await) };
    let (accepted, dialled) =
        tokio::time::timeout(DEADLINE, async { tokio::try_join!(accept, dial) })
            .await
            .context("handshake did not end")??;
    if let (Ok(s), Ok(c)) = (&accepted, &dialled) {
        let mut send = s.open_uni().await?;
        send.write_all(&[7]).await?;
        send.finish()?;
        let mut recv = tokio::time::timeout(DEADLINE, c.accept_uni()).await??;
        let mut byte = [0u8; 1];
        recv.read_exact(&mut byte).await?;
        assert_eq!(byte, [7]);
        c.close(0u32.into(), b"done");
        s.closed().await;
    }
    // A connection whose handshake failed on one side only is closed by the other side's
    // error; it is not up anywhere.
    for c in [&accepted, &dialled].into_iter().flatten() {
        c.close(0u32.into(), b"done");
    }
    Ok((
        accepted.map(|_| ()).map_err(|e| e.to_string()),
        dialled.map(|_| ()).map_err(|e| e.to_string()),
    ))
}

#[tokio::test]
async fn a_client_removed_from_the_servers_roster_cannot_resume_its_session() -> Result<()> {
    let (a, b) = (identity("a"), identity("b"));
    let server_roster = roster(&[&a]);
    let sb = server(&b, &server_roster)?;
    let ca = client(&a, &roster(&[&b]), &b)?;
    let (accepted, dialled) = connect_once(&ca, &sb).await?;
    accepted.expect("the server accepts a trusted client");
    dialled.expect("the client accepts the server it dialled");

    assert!(server_roster.remove(&a.id));
    let (accepted, _) = connect_once(&ca, &sb).await?;
    let err = accepted.expect_err("the removed client got in again (resumed session)");
    assert!(err.contains("NotInRoster"), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_server_removed_from_the_clients_roster_cannot_resume_its_session() -> Result<()> {
    let (a, b) = (identity("a"), identity("b"));
    let client_roster = roster(&[&b]);
    let sb = server(&b, &roster(&[&a]))?;
    let ca = client(&a, &client_roster, &b)?;
    let (accepted, dialled) = connect_once(&ca, &sb).await?;
    accepted.expect("the server accepts a trusted client");
    dialled.expect("the client accepts the server it dialled");

    assert!(client_roster.remove(&b.id));
    let (_, dialled) = connect_once(&ca, &sb).await?;
    let err = dialled.expect_err("the removed server was accepted again (resumed session)");
    assert!(err.contains("NotInRoster"), "{err}");
    Ok(())
}

/// The endpoint itself: a device removed from the roster reconnects through the same
/// client endpoint and is refused, and the server never counts it as up.
#[tokio::test]
async fn a_removed_device_reconnecting_through_the_same_endpoint_is_refused() -> Result<()> {
    let (a, b) = (identity("a"), identity("b"));
    let ea = Endpoint::bind(a.clone(), roster(&[&b]), EndpointConfig::for_test())?;
    let eb = Endpoint::bind(b.clone(), roster(&[&a]), EndpointConfig::for_test())?;
    let to = eb.local_addrs()[0];
    let first = ea.connect(b.id, &[to]).await?;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while eb.connection(&a.id).is_none() {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "b never saw a");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut events = eb.subscribe();
    assert!(eb.roster().remove(&a.id));
    tokio::time::timeout(DEADLINE, first.conn.closed()).await?;
    let err = ea.connect(b.id, &[to]).await.unwrap_err();
    assert!(matches!(err, TransportError::Refused { .. }), "{err}");
    assert!(eb.connection(&a.id).is_none());
    while let Ok(ev) = events.try_recv() {
        assert!(
            !matches!(ev, transport::TransportEvent::Up(_)),
            "the server counted the removed device as up"
        );
    }
    Ok(())
}
