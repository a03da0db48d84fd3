//! The QUIC side of pairing: a short-lived endpoint on its own UDP port, speaking ALPN
//! `cnspr-pair/1`, that accepts a device *not yet in the roster*.
//!
//! TLS still runs in full (TLS 1.3, ChaCha20-Poly1305, both sides present their device
//! certificate and prove possession of its key with the handshake signature), but no
//! roster check is made: who the other device is gets decided afterwards by the PAKE over
//! the one-time code, into which both device IDs and the TLS session's exporter secret are
//! bound (see the daemon's `pair` module and `docs/pairing.md`). Nothing but the pairing
//! protocol runs on such a connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::CertificateError;

use crate::id::DeviceId;
use crate::identity::{spki_id, Identity};
use crate::settings::TransportError;
use crate::tls::{self, chacha_provider, CertPolicy, DeviceVerifier, TlsError};

/// ALPN of pairing connections (never accepted by the main endpoint, and vice versa).
pub const PAIR_ALPN: &[u8] = b"cnspr-pair/1";

/// Accepts any self-signed device certificate whose key parses; the TLS 1.3 handshake
/// signature is still checked against it, so the peer really holds that key.
#[derive(Debug)]
struct AnyDevice;

impl CertPolicy for AnyDevice {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        match spki_id(end_entity) {
            Some(_) => Ok(()),
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::BadEncoding,
            )),
        }
    }
}

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(4u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.max_idle_timeout(Some(Duration::from_secs(10).try_into().expect("10 s fits")));
    Arc::new(t)
}

fn map_tls(e: rustls::Error) -> TransportError {
    TransportError::from(TlsError::from(e))
}

/// A pairing listener on `addr` (port 0: any free port).
pub fn listen(identity: &Identity, addr: SocketAddr) -> Result<quinn::Endpoint, TransportError> {
    let provider = Arc::new(chacha_provider());
    let verifier = Arc::new(DeviceVerifier::with_policy(AnyDevice, &provider));
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(map_tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.cert()], identity.key())
        .map_err(map_tls)?;
    cfg.alpn_protocols = vec![PAIR_ALPN.to_vec()];
    cfg.max_early_data_size = 0;
    let mut server = quinn::ServerConfig::with_crypto(tls::quic_server(cfg)?);
    server.transport_config(transport_config());
    server.migration(false);
    let socket =
        std::net::UdpSocket::bind(addr).map_err(|source| TransportError::Bind { addr, source })?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        Arc::new(crate::runtime::QuietRuntime),
    )
    .map_err(|source| TransportError::Bind { addr, source })
}

/// Dials a pairing listener at `addr`.
pub async fn dial(identity: &Identity, addr: SocketAddr) -> Result<quinn::Connection, String> {
    let provider = Arc::new(chacha_provider());
    let verifier = Arc::new(DeviceVerifier::with_policy(AnyDevice, &provider));
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![identity.cert()], identity.key())
        .map_err(|e| e.to_string())?;
    cfg.alpn_protocols = vec![PAIR_ALPN.to_vec()];
    cfg.enable_sni = false;
    cfg.enable_early_data = false;
    let mut client = quinn::ClientConfig::new(tls::quic_client(cfg).map_err(|e| e.to_string())?);
    client.transport_config(transport_config());
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse().expect("literal")
    } else {
        "0.0.0.0:0".parse().expect("literal")
    };
    let ep = quinn::Endpoint::client(bind).map_err(|e| format!("local socket: {e}"))?;
    let conn = ep
        .connect_with(client, addr, tls::SERVER_NAME)
        .map_err(|e| format!("{addr}: {e}"))?
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    Ok(conn)
}

/// The device ID the other side of a pairing connection proved it holds.
pub fn peer_id(conn: &quinn::Connection) -> Option<DeviceId> {
    crate::endpoint::peer_id(conn)
}

/// 32 bytes of keying material exported from the connection's TLS session: the same on
/// both ends of one session, different for a machine in the middle that runs two sessions.
pub fn channel_binding(conn: &quinn::Connection) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, b"EXPORTER-cnspr-pair", b"")
        .ok()?;
    Some(out)
}
