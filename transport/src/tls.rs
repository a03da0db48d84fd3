//! TLS 1.3 pinned to ChaCha20-Poly1305, with device-roster certificate verification.
//!
//! Both directions use one verifier type, [`RosterVerifier`]: a certificate is accepted
//! only if the SHA-256 of its SubjectPublicKeyInfo is a device ID in the live roster (and,
//! when dialling, equals the device we meant to reach), and the TLS 1.3 handshake
//! signature is really checked against that certificate's key.
//!
//! No session is ever resumed: a resumed TLS 1.3 handshake carries no certificate (rustls
//! restores the one stored with the session and runs no verifier), so a device removed
//! from the roster could come back with a ticket from before its removal. The server
//! keeps no sessions and issues no tickets, and the client stores none, so every
//! handshake is a full one, checked against the roster as it is then.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};

use crate::id::DeviceId;
use crate::identity::{spki_id, Identity};
use crate::roster::Roster;
use crate::wire::ALPN;

/// Name passed to quinn when dialling. SNI is disabled, so it never leaves this device.
pub const SERVER_NAME: &str = "cnspr";

/// The ring provider restricted to `TLS13_CHACHA20_POLY1305_SHA256`.
pub fn chacha_provider() -> CryptoProvider {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256];
    p
}

/// The AES-128-GCM suite QUIC Initial packets must use (RFC 9001 section 5.2).
pub fn initial_suite() -> rustls::quic::Suite {
    rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .and_then(|s| s.quic_suite())
        .expect("ring provides TLS13_AES_128_GCM_SHA256 for QUIC")
}

/// Why a peer certificate was refused (carried inside the rustls error).
#[derive(Debug, thiserror::Error)]
pub enum PeerRejected {
    #[error("device {0} is not in the roster")]
    NotInRoster(DeviceId),
    #[error("expected device {expected}, got {got}")]
    WrongDevice { expected: DeviceId, got: DeviceId },
    #[error("certificate chains are not accepted")]
    Chain,
}

fn reject(e: PeerRejected) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// What a [`DeviceVerifier`] accepts: one self-signed device certificate, judged by its
/// end-entity certificate alone.
pub trait CertPolicy: std::fmt::Debug + Send + Sync {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error>;
}

/// One verifier for both directions: no chains, the policy's check on the certificate,
/// TLS 1.3 only, and the handshake signature really checked against the certificate's
/// key (so the peer holds the key of the device ID it shows).
#[derive(Debug)]
pub struct DeviceVerifier<P> {
    policy: P,
    algs: WebPkiSupportedAlgorithms,
}

impl<P: CertPolicy> DeviceVerifier<P> {
    pub fn with_policy(policy: P, provider: &CryptoProvider) -> Self {
        DeviceVerifier {
            policy,
            algs: provider.signature_verification_algorithms,
        }
    }

    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        if !intermediates.is_empty() {
            return Err(reject(PeerRejected::Chain));
        }
        self.policy.check(end_entity)
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }
}

fn tls12_refused() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::PeerIncompatible(
        rustls::PeerIncompatible::Tls13RequiredForQuic,
    ))
}

impl<P: CertPolicy> ServerCertVerifier for DeviceVerifier<P> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

impl<P: CertPolicy> ClientCertVerifier for DeviceVerifier<P> {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }
}

/// The main endpoint's policy: the device ID must be in the live roster (and, when
/// dialling, be the device we meant to reach).
#[derive(Debug)]
pub struct InRoster {
    roster: Roster,
    expected: Option<DeviceId>,
    /// Accept a removed device that is to be told so (the server side: the endpoint
    /// then only sends it the notice and closes).
    notices: bool,
}

impl CertPolicy for InRoster {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let id = spki_id(end_entity).ok_or(rustls::Error::InvalidCertificate(
            CertificateError::BadEncoding,
        ))?;
        if let Some(expected) = self.expected {
            if expected != id {
                return Err(reject(PeerRejected::WrongDevice { expected, got: id }));
            }
        }
        let to_be_told = self.notices && self.roster.notice(&id).is_some();
        if !(self.roster.contains(&id) || to_be_told) {
            return Err(reject(PeerRejected::NotInRoster(id)));
        }
        Ok(())
    }
}

/// Accepts only certificates whose device ID is in the roster; verifies handshake signatures.
pub type RosterVerifier = DeviceVerifier<InRoster>;

impl RosterVerifier {
    /// `expected`: when dialling, the one device the server must be.
    pub fn new(roster: Roster, expected: Option<DeviceId>, provider: &CryptoProvider) -> Self {
        DeviceVerifier::with_policy(
            InRoster {
                roster,
                expected,
                notices: false,
            },
            provider,
        )
    }

    /// The server's verifier: also lets a removed device that is to be told finish its
    /// handshake (see [`Roster::set_notice`]).
    pub fn accepting(roster: Roster, provider: &CryptoProvider) -> Self {
        DeviceVerifier::with_policy(
            InRoster {
                roster,
                expected: None,
                notices: true,
            },
            provider,
        )
    }
}

/// Errors building TLS configurations.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("QUIC TLS configuration: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}

/// A ticketer that issues no tickets and accepts none.
#[derive(Debug)]
struct NoTickets;

impl rustls::server::ProducesTickets for NoTickets {
    fn enabled(&self) -> bool {
        false
    }

    fn lifetime(&self) -> u32 {
        0
    }

    fn encrypt(&self, _plain: &[u8]) -> Option<Vec<u8>> {
        None
    }

    fn decrypt(&self, _cipher: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

/// A TLS 1.3 server configuration that presents `identity`'s certificate, requires a
/// client certificate that `verifier` accepts, speaks `alpn`, and never resumes a session
/// (see the module documentation). The daemon's endpoint and the relay use it.
pub fn server_config_with(
    identity: &Identity,
    verifier: Arc<dyn ClientCertVerifier>,
    alpn: &[u8],
    provider: Arc<CryptoProvider>,
) -> Result<rustls::ServerConfig, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.cert()], identity.key())?;
    cfg.alpn_protocols = vec![alpn.to_vec()];
    cfg.max_early_data_size = 0;
    // No resumption (see the module documentation): no stateful sessions, no tickets.
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.ticketer = Arc::new(NoTickets);
    cfg.send_tls13_tickets = 0;
    Ok(cfg)
}

/// The client side of [`server_config_with`]: presents `identity`'s certificate, checks
/// the server's with `verifier`, no SNI, no early data, no resumption.
pub fn client_config_with(
    identity: &Identity,
    verifier: Arc<dyn ServerCertVerifier>,
    alpn: &[u8],
    provider: Arc<CryptoProvider>,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![identity.cert()], identity.key())?;
    cfg.alpn_protocols = vec![alpn.to_vec()];
    cfg.enable_sni = false;
    cfg.enable_early_data = false;
    // No resumption (see the module documentation): no session is stored or offered.
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(cfg)
}

/// The rustls server configuration (before QUIC wrapping), exposed for tests.
pub fn rustls_server_config(
    identity: &Identity,
    roster: &Roster,
    provider: Arc<CryptoProvider>,
) -> Result<rustls::ServerConfig, TlsError> {
    let verifier = Arc::new(RosterVerifier::accepting(roster.clone(), &provider));
    server_config_with(identity, verifier, ALPN, provider)
}

/// The rustls client configuration for dialling `expected`, exposed for tests.
pub fn rustls_client_config(
    identity: &Identity,
    roster: &Roster,
    expected: DeviceId,
    provider: Arc<CryptoProvider>,
) -> Result<rustls::ClientConfig, TlsError> {
    rustls_client_config_for(identity, roster, Some(expected), provider)
}

/// The rustls client configuration; `expected: None` accepts any device in the roster.
pub fn rustls_client_config_for(
    identity: &Identity,
    roster: &Roster,
    expected: Option<DeviceId>,
    provider: Arc<CryptoProvider>,
) -> Result<rustls::ClientConfig, TlsError> {
    let verifier = Arc::new(RosterVerifier::new(roster.clone(), expected, &provider));
    client_config_with(identity, verifier, ALPN, provider)
}

/// Wraps a rustls server config for quinn, with AES-128-GCM for Initial packets only.
pub fn quic_server(
    cfg: rustls::ServerConfig,
) -> Result<Arc<quinn::crypto::rustls::QuicServerConfig>, TlsError> {
    Ok(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::with_initial(Arc::new(cfg), initial_suite())?,
    ))
}

/// Wraps a rustls client config for quinn, with AES-128-GCM for Initial packets only.
pub fn quic_client(
    cfg: rustls::ClientConfig,
) -> Result<Arc<quinn::crypto::rustls::QuicClientConfig>, TlsError> {
    Ok(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::with_initial(Arc::new(cfg), initial_suite())?,
    ))
}
