//! Transport tests over real UDP sockets on loopback.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rustls::crypto::CryptoProvider;
use transport::frame::{read_frame, write_frame, MAX_CONTROL_FRAME};
use transport::quinn;
use transport::tls;
use transport::wire::ControlFrame;
use transport::{
    DownReason, Endpoint, EndpointConfig, Identity, Roster, StreamKind, TransportError,
    TransportEvent,
};

const DEADLINE: Duration = Duration::from_secs(15);

/// Polls `cond` until it holds or the deadline passes.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > DEADLINE {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

fn identity(name: &str) -> Arc<Identity> {
    Arc::new(Identity::generate(name).unwrap())
}

fn endpoint(id: &Arc<Identity>, trusted: &[&Arc<Identity>]) -> Endpoint {
    endpoint_with(id, trusted, EndpointConfig::for_test())
}

fn endpoint_with(id: &Arc<Identity>, trusted: &[&Arc<Identity>], cfg: EndpointConfig) -> Endpoint {
    let roster = Roster::new();
    for t in trusted {
        roster.insert(t.id);
    }
    Endpoint::bind(id.clone(), roster, cfg).unwrap()
}

fn addr(ep: &Endpoint) -> SocketAddr {
    ep.local_addrs()[0]
}

/// Echoes every frame on every incoming stream.
fn spawn_echo(ep: &Endpoint) {
    let mut incoming = ep.take_incoming().unwrap();
    tokio::spawn(async move {
        while let Some(mut s) = incoming.recv().await {
            tokio::spawn(async move {
                while let Ok(Some(f)) =
                    read_frame::<ControlFrame, _>(&mut s.recv, MAX_CONTROL_FRAME).await
                {
                    if write_frame(&mut s.send, &f, MAX_CONTROL_FRAME)
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                let _ = s.send.finish();
            });
        }
    });
}

#[tokio::test]
async fn trusted_endpoints_exchange_frames_on_concurrent_streams() -> Result<()> {
    let (a, b) = (identity("a"), identity("b"));
    let ea = endpoint(&a, &[&b]);
    let eb = endpoint(&b, &[&a]);
    spawn_echo(&eb);
    let pc = ea.connect(b.id, &[addr(&eb)]).await?;
    assert_eq!(pc.peer, b.id);
    assert_eq!(pc.name, "b");
    wait_for("b to see a", || eb.connection(&a.id).is_some()).await?;
    assert_eq!(eb.connection(&a.id).unwrap().name, "a");

    let mut tasks = Vec::new();
    for s in 0..8u64 {
        let pc = pc.clone();
        tasks.push(tokio::spawn(async move {
            let (mut send, mut recv) = pc.open(StreamKind::Message).await?;
            for i in 0..100u64 {
                let f = ControlFrame::Ping {
                    nonce: s * 1000 + i,
                };
                write_frame(&mut send, &f, MAX_CONTROL_FRAME).await?;
                let back: Option<ControlFrame> = read_frame(&mut recv, MAX_CONTROL_FRAME).await?;
                assert_eq!(back, Some(f));
            }
            send.finish()?;
            assert_eq!(
                read_frame::<ControlFrame, _>(&mut recv, MAX_CONTROL_FRAME).await?,
                None
            );
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let rtt = pc.rtt();
    assert!(
        rtt > Duration::ZERO && rtt < Duration::from_secs(1),
        "rtt {rtt:?}"
    );
    assert!(pc.stats().path.rtt > Duration::ZERO);
    // Connecting again reuses the live connection.
    let again = ea.connect(b.id, &[addr(&eb)]).await?;
    assert_eq!(again.conn.stable_id(), pc.conn.stable_id());
    Ok(())
}

#[tokio::test]
async fn a_device_outside_the_roster_is_refused_on_both_sides() -> Result<()> {
    let (a, b) = (identity("a"), identity("b"));
    let ea = endpoint(&a, &[&b]);
    let eb = endpoint(&b, &[]); // b does not trust a
    let mut b_events = eb.subscribe();
    let err = ea.connect(b.id, &[addr(&eb)]).await.unwrap_err();
    assert!(matches!(err, TransportError::Refused { .. }), "{err}");
    assert!(
        ea.connection(&b.id).is_none(),
        "client must not count the connection as up"
    );
    assert!(eb.connection(&a.id).is_none());
    assert!(b_events.try_recv().is_err(), "server raised an event");
    // And the other way: b cannot even try to dial a device it does not trust.
    let err = eb.connect(a.id, &[addr(&ea)]).await.unwrap_err();
    assert!(matches!(err, TransportError::NotInRoster(_)), "{err}");
    Ok(())
}

#[tokio::test]
async fn the_server_must_be_the_device_dialled() -> Result<()> {
    let (a, b, c) = (identity("a"), identity("b"), identity("c"));
    let ea = endpoint(&a, &[&b, &c]);
    let _eb = endpoint(&b, &[&a]);
    let ec = endpoint(&c, &[&a]);
    // a dials b at c's address: c is trusted, but it is not b.
    let err = ea.connect(b.id, &[addr(&ec)]).await.unwrap_err();
    assert!(matches!(err, TransportError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("WrongDevice"), "{err}");
    assert!(ea.connections().is_empty() && ec.connections().is_empty());
    Ok(())
}

fn aes_only_provider() -> CryptoProvider {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![
        rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
        rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
    ];
    p
}

#[tokio::test]
async fn a_client_offering_only_aes_cannot_complete_a_handshake() -> Result<()> {
    let (a, b) = (identity("a"), identity("b"));
    let eb = endpoint(&b, &[&a]);
    let roster = Roster::new();
    roster.insert(b.id);
    let cfg = tls::rustls_client_config(&a, &roster, b.id, Arc::new(aes_only_provider()))?;
    let client = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(cfg)?,
    ));
    let q = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    let res = tokio::time::timeout(
        DEADLINE,
        q.connect_with(client, addr(&eb), tls::SERVER_NAME)?,
    )
    .await?;
    let err = res.expect_err("handshake with AES-only client succeeded");
    assert!(
        err.to_string().to_lowercase().contains("handshake") || err.to_string().contains("0x128"),
        "{err}"
    );
    assert!(eb.connections().is_empty());
    // The same client with the default ChaCha-only configuration succeeds.
    let ea = endpoint(&a, &[&b]);
    ea.connect(b.id, &[addr(&eb)]).await?;
    Ok(())
}

/// A ChaCha20-Poly1305 suite that counts the QUIC packet keys it makes.
struct CountingQuic {
    inner: &'static dyn rustls::quic::Algorithm,
    keys: &'static AtomicUsize,
}

impl rustls::quic::Algorithm for CountingQuic {
    fn packet_key(
        &self,
        key: rustls::crypto::cipher::AeadKey,
        iv: rustls::crypto::cipher::Iv,
    ) -> Box<dyn rustls::quic::PacketKey> {
        self.keys.fetch_add(1, Ordering::SeqCst);
        self.inner.packet_key(key, iv)
    }
    fn header_protection_key(
        &self,
        key: rustls::crypto::cipher::AeadKey,
    ) -> Box<dyn rustls::quic::HeaderProtectionKey> {
        self.inner.header_protection_key(key)
    }
    fn aead_key_len(&self) -> usize {
        self.inner.aead_key_len()
    }
}

fn counting_chacha_provider() -> (CryptoProvider, &'static AtomicUsize) {
    let keys: &'static AtomicUsize = Box::leak(Box::new(AtomicUsize::new(0)));
    let base = rustls::crypto::ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256
        .tls13()
        .unwrap();
    let quic: &'static CountingQuic = Box::leak(Box::new(CountingQuic {
        inner: base.quic.unwrap(),
        keys,
    }));
    let suite: &'static rustls::Tls13CipherSuite = Box::leak(Box::new(rustls::Tls13CipherSuite {
        common: rustls::crypto::CipherSuiteCommon {
            suite: base.common.suite,
            hash_provider: base.common.hash_provider,
            confidentiality_limit: base.common.confidentiality_limit,
        },
        hkdf_provider: base.hkdf_provider,
        aead_alg: base.aead_alg,
        quic: Some(quic),
    }));
    let mut p = tls::chacha_provider();
    p.cipher_suites = vec![rustls::SupportedCipherSuite::Tls13(suite)];
    (p, keys)
}

#[tokio::test]
async fn the_negotiated_suite_is_chacha20_poly1305() -> Result<()> {
    let (a, b) = (identity("a"), identity("b"));
    let (provider, keys) = counting_chacha_provider();
    let ea = endpoint_with(
        &a,
        &[&b],
        EndpointConfig {
            provider: Arc::new(provider),
            ..EndpointConfig::for_test()
        },
    );
    let eb = endpoint(&b, &[&a]);
    spawn_echo(&eb);
    assert_eq!(keys.load(Ordering::SeqCst), 0);
    let pc = ea.connect(b.id, &[addr(&eb)]).await?;
    let (mut send, mut recv) = pc.open(StreamKind::Control).await?;
    write_frame(
        &mut send,
        &ControlFrame::Ping { nonce: 7 },
        MAX_CONTROL_FRAME,
    )
    .await?;
    assert_eq!(
        read_frame(&mut recv, MAX_CONTROL_FRAME).await?,
        Some(ControlFrame::Ping { nonce: 7 })
    );
    // Handshake and 1-RTT keys, each direction: all made by the ChaCha20 suite. (Initial
    // packets use the separate AES-128-GCM initial suite, which this counter does not see.)
    let n = keys.load(Ordering::SeqCst);
    assert!(n >= 4, "only {n} ChaCha20 packet keys were made");
    Ok(())
}

/// Presents a fixed certificate with a fixed (wrong) key.
#[derive(Debug)]
struct WrongKey(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for WrongKey {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn a_trusted_certificate_with_the_wrong_private_key_is_refused() -> Result<()> {
    let (a, b, mallory) = (identity("a"), identity("b"), identity("mallory"));
    let eb = endpoint(&b, &[&a]);
    let mut b_events = eb.subscribe();
    let provider = Arc::new(tls::chacha_provider());
    let wrong_key = provider.key_provider.load_private_key(mallory.key())?;
    let certified = Arc::new(rustls::sign::CertifiedKey::new(vec![a.cert()], wrong_key));
    let roster = Roster::new();
    roster.insert(b.id);
    let verifier = Arc::new(tls::RosterVerifier::new(roster, Some(b.id), &provider));
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(WrongKey(certified)));
    cfg.alpn_protocols = vec![transport::ALPN.to_vec()];
    let client = quinn::ClientConfig::new(tls::quic_client(cfg)?);
    let q = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    let outcome = async {
        let conn = q.connect_with(client, addr(&eb), tls::SERVER_NAME)?.await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&StreamKind::Hello.header()).await?;
        write_frame(
            &mut send,
            &ControlFrame::Hello(transport::wire::Hello {
                version: 1,
                name: "a".into(),
                features: vec![],
            }),
            MAX_CONTROL_FRAME,
        )
        .await?;
        let reply: Option<ControlFrame> = read_frame(&mut recv, MAX_CONTROL_FRAME).await?;
        anyhow::Ok(reply)
    };
    let res = tokio::time::timeout(DEADLINE, outcome)
        .await
        .context("no verdict")?;
    assert!(res.is_err(), "forged client got a reply: {res:?}");
    assert!(eb.connection(&a.id).is_none());
    assert!(b_events.try_recv().is_err());
    Ok(())
}

#[tokio::test]
async fn simultaneous_dials_leave_exactly_one_connection() -> Result<()> {
    for round in 0..5 {
        let (a, b) = (identity("a"), identity("b"));
        let ea = endpoint(&a, &[&b]);
        let eb = endpoint(&b, &[&a]);
        let (to_b, to_a) = ([addr(&eb)], [addr(&ea)]);
        let (ra, rb) = tokio::join!(ea.connect(b.id, &to_b), eb.connect(a.id, &to_a));
        ra.context("a dialling")?;
        rb.context("b dialling")?;
        wait_for("one socket-level connection on each side", || {
            ea.open_connections() == 1 && eb.open_connections() == 1
        })
        .await
        .with_context(|| {
            format!(
                "round {round}: a={} b={}",
                ea.open_connections(),
                eb.open_connections()
            )
        })?;
        let (ca, cb) = (ea.connection(&b.id).unwrap(), eb.connection(&a.id).unwrap());
        assert_eq!(
            ca.dialer, cb.dialer,
            "round {round}: the two sides kept different connections"
        );
        assert_eq!(
            ca.dialer,
            a.id.min(b.id),
            "the lower ID's dial should win when both happened"
        );
        // The surviving connection works.
        spawn_echo(&eb);
        let (mut s, mut r) = ca.open(StreamKind::Control).await?;
        write_frame(
            &mut s,
            &ControlFrame::Pong { nonce: round },
            MAX_CONTROL_FRAME,
        )
        .await?;
        assert_eq!(
            read_frame(&mut r, MAX_CONTROL_FRAME).await?,
            Some(ControlFrame::Pong { nonce: round })
        );
    }
    Ok(())
}

async fn next_down(
    events: &mut tokio::sync::broadcast::Receiver<TransportEvent>,
) -> Result<DownReason> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, events.recv())
            .await
            .context("no down event")??
        {
            TransportEvent::Down { reason, .. } => return Ok(reason),
            TransportEvent::Up(_) => {}
        }
    }
}

#[tokio::test]
async fn removing_a_device_from_the_roster_closes_its_connection() -> Result<()> {
    let (a, b) = (identity("a"), identity("b"));
    let ea = endpoint(&a, &[&b]);
    let eb = endpoint(&b, &[&a]);
    let (mut ev_a, mut ev_b) = (ea.subscribe(), eb.subscribe());
    ea.connect(b.id, &[addr(&eb)]).await?;
    wait_for("b up", || eb.connection(&a.id).is_some()).await?;
    assert!(ea.roster().remove(&b.id));
    assert_eq!(next_down(&mut ev_a).await?, DownReason::LocallyClosed);
    assert_eq!(next_down(&mut ev_b).await?, DownReason::Revoked);
    assert!(ea.connection(&b.id).is_none() && eb.connection(&a.id).is_none());
    // And b can no longer get in.
    let err = eb.connect(a.id, &[addr(&ea)]).await.unwrap_err();
    assert!(matches!(err, TransportError::Refused { .. }), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_graceful_shutdown_is_seen_as_leaving() -> Result<()> {
    let (a, b) = (identity("a"), identity("b"));
    let ea = endpoint(&a, &[&b]);
    let eb = endpoint(&b, &[&a]);
    let mut ev_b = eb.subscribe();
    ea.connect(b.id, &[addr(&eb)]).await?;
    ea.shutdown(
        transport::close_code::LEAVING,
        "bye",
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(next_down(&mut ev_b).await?, DownReason::Leaving);
    Ok(())
}

/// A UDP relay between a client and `target` that can be cut (a partition).
async fn udp_relay(
    target: SocketAddr,
    cut: Arc<std::sync::atomic::AtomicBool>,
) -> Result<SocketAddr> {
    let front = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await?);
    let back = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await?);
    back.connect(target).await?;
    let addr = front.local_addr()?;
    let client: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();
    let (f, b, c, k) = (front.clone(), back.clone(), client.clone(), cut.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = f.recv_from(&mut buf).await {
            *c.lock().unwrap() = Some(from);
            if !k.load(Ordering::SeqCst) {
                let _ = b.send(&buf[..n]).await;
            }
        }
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = back.recv(&mut buf).await {
            let to = *client.lock().unwrap();
            if let (Some(to), false) = (to, cut.load(Ordering::SeqCst)) {
                let _ = front.send_to(&buf[..n], to).await;
            }
        }
    });
    Ok(addr)
}

#[tokio::test]
async fn a_silent_peer_times_out() -> Result<()> {
    let (a, b) = (identity("a"), identity("b"));
    // Loopback is a private path: its idle timeout is the private one (none by default).
    let fast = EndpointConfig {
        keep_alive: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(800),
        private_idle_timeout: Some(Duration::from_millis(800)),
        ..EndpointConfig::for_test()
    };
    let ea = endpoint_with(&a, &[&b], fast.clone());
    let eb = endpoint_with(&b, &[&a], fast);
    let (mut ev_a, mut ev_b) = (ea.subscribe(), eb.subscribe());
    let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let relay = udp_relay(addr(&eb), cut.clone()).await?;
    ea.connect(b.id, &[relay]).await?;
    wait_for("b up", || eb.connection(&a.id).is_some()).await?;
    cut.store(true, Ordering::SeqCst);
    assert_eq!(next_down(&mut ev_a).await?, DownReason::TimedOut);
    assert_eq!(next_down(&mut ev_b).await?, DownReason::TimedOut);
    Ok(())
}

#[tokio::test]
async fn ipv6_and_dual_stack_sockets_work() -> Result<()> {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("skipping: this host has no IPv6 loopback");
        return Ok(());
    }
    let (a, b, c) = (identity("a"), identity("b"), identity("c"));
    // a listens dual-stack on [::]; b on IPv4 only; c on IPv6 loopback only.
    let dual = EndpointConfig {
        listen: vec!["[::]:0".parse()?],
        ..EndpointConfig::for_test()
    };
    let ea = endpoint_with(&a, &[&b, &c], dual);
    let eb = endpoint(&b, &[&a]);
    let ec = endpoint_with(
        &c,
        &[&a],
        EndpointConfig {
            listen: vec!["[::1]:0".parse()?],
            ..EndpointConfig::for_test()
        },
    );
    let a_port = addr(&ea).port();
    // IPv4 client to the dual-stack socket, and the dual-stack socket dialling IPv6.
    eb.connect(a.id, &[SocketAddr::from(([127, 0, 0, 1], a_port))])
        .await?;
    ea.connect(c.id, &[addr(&ec)]).await?;
    assert!(ea.connection(&b.id).is_some() && ea.connection(&c.id).is_some());
    assert!(ea.connection(&c.id).unwrap().remote_address().is_ipv6());
    Ok(())
}

#[tokio::test]
async fn candidates_are_raced_and_a_dead_one_does_not_block() -> Result<()> {
    let (a, b) = (identity("a"), identity("b"));
    let ea = endpoint(&a, &[&b]);
    let eb = endpoint(&b, &[&a]);
    // A silent address (bound, never answers) listed first, the real one second.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let start = Instant::now();
    let pc = ea.connect(b.id, &[silent.local_addr()?, addr(&eb)]).await?;
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "the dead candidate delayed the dial"
    );
    assert_eq!(pc.remote_address(), addr(&eb));
    wait_for("only the winning connection left", || {
        ea.open_connections() == 1
    })
    .await?;
    Ok(())
}
