//! Relaying through `cnspr relay`: a server that is not a member of any mesh and is
//! trusted with nothing.
//!
//! Devices register with a relay over QUIC from their own UDP socket (or over TLS on TCP
//! when UDP does not get through), proving the relay's secret; the relay learns their
//! device ID, a 16-byte mesh tag and the address their packets come from, and answers
//! with that address (the device's reflexive address). Afterwards a device hands the
//! relay datagrams for a peer: `MARKER | peer ID (32) | packet`. The relay checks that
//! the sender is registered at the datagram's source address, that the peer is
//! registered with the same tag, and passes on `MARKER | sender ID (32) | packet`. The
//! packets are the two devices' own QUIC packets, encrypted end to end with TLS pinned to
//! the roster, so the relay sees only their sizes.
//!
//! Inside a device the peer behind a relay has a *virtual address* (`fd63:6e73:7072::/48`,
//! or `240.0.0.0/8` on an IPv4-only socket) that quinn dials like any other; the socket
//! ([`socket::RelaySocket`]) sends what quinn writes to a virtual address through a
//! relay, and presents what a relay passes on as coming from the sender's virtual address.
//!
//! The relay's TLS key is derived from its secret, so a relay keeps nothing on disk and a
//! device that knows the secret knows which key to expect.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use crate::id::DeviceId;
use crate::identity::{spki_id, Identity};
use crate::tls::{CertPolicy, DeviceVerifier, TlsError};

pub mod keys;
pub mod link;
pub mod member;
mod registry;
pub mod server;
pub mod socket;

/// First byte of a relayed datagram: QUIC's fixed bit (0x40) clear, and not a heartbeat.
pub const MARKER: u8 = 0x22;
/// `MARKER` and a device ID.
pub const HEADER: usize = 33;
/// Largest relayed datagram (header included): an IPv6 path of MTU 1500.
pub const MAX_DATAGRAM: usize = 1452;
/// ALPN of the relay protocol (QUIC and TCP).
pub const ALPN: &[u8] = b"cnspr-relay/1";
/// Version carried in the registration.
pub const VERSION: u16 = 1;
/// Length of a mesh tag.
pub const TAG_LEN: usize = 16;
/// Bounds of a relay secret's length.
pub const SECRET_MIN: usize = 16;
pub const SECRET_MAX: usize = 128;
/// Most bytes of a registration frame.
pub const MAX_CONTROL: usize = 4096;

/// The registration exchange, one frame each way ([`crate::frame`] framing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelayFrame {
    /// Device to relay: the relay's secret and the mesh tag.
    Register {
        version: u16,
        secret: String,
        tag: Vec<u8>,
    },
    /// Relay to device: registered; the address its packets came from.
    Registered { observed: SocketAddr },
    /// Relay to device: refused, and why.
    Refused { reason: String },
}

/// Why a secret is not usable.
pub fn check_secret(secret: &str) -> Result<(), String> {
    if !(SECRET_MIN..=SECRET_MAX).contains(&secret.len()) {
        return Err(format!(
            "a relay secret has {SECRET_MIN} to {SECRET_MAX} characters (this one has {})",
            secret.len()
        ));
    }
    if let Some(c) = secret.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "a relay secret is printable ASCII without spaces ({c:?} is not)"
        ));
    }
    Ok(())
}

/// A new random secret (26 base32 characters, 128 bits).
pub fn new_secret() -> String {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .expect("the system has random bytes");
    data_encoding::BASE32_NOPAD.encode(&b).to_lowercase()
}

/// PBKDF2 rounds of the relay key: anyone who connects sees the relay's public key, so
/// a secret chosen by hand must be slow to guess offline (about 0.1 s per guess here).
pub const KEY_ROUNDS: u32 = 200_000;

/// The relay's identity, derived from its secret (PBKDF2-HMAC-SHA256, [`KEY_ROUNDS`]).
pub fn relay_identity(secret: &str) -> Identity {
    let mut seed = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(KEY_ROUNDS).expect("not zero"),
        b"cnspr relay key v1",
        secret.as_bytes(),
        &mut seed,
    );
    Identity::from_seed(&seed, "relay").expect("a seed always makes an Ed25519 key")
}

/// Compares two secrets in time that does not depend on where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

const V6_PREFIX: [u8; 6] = [0xfd, 0x63, 0x6e, 0x73, 0x70, 0x72];
const V4_FIRST: u8 = 240;

/// The virtual address of `peer` on a socket of IPv6 (`v6`) or IPv4.
pub fn virtual_addr(peer: &DeviceId, v6: bool) -> SocketAddr {
    let id = &peer.0;
    if v6 {
        let mut o = [0u8; 16];
        o[..6].copy_from_slice(&V6_PREFIX);
        o[6..].copy_from_slice(&id[..10]);
        let port = u16::from_be_bytes([id[10], id[11]]) | 1;
        SocketAddr::from((Ipv6Addr::from(o), port))
    } else {
        let port = u16::from_be_bytes([id[3], id[4]]) | 1;
        SocketAddr::from((Ipv4Addr::new(V4_FIRST, id[0], id[1], id[2]), port))
    }
}

/// Whether `addr` is a virtual address (a peer reached through a relay).
pub fn is_virtual(addr: &SocketAddr) -> bool {
    match addr.ip().to_canonical() {
        IpAddr::V4(a) => a.octets()[0] == V4_FIRST,
        IpAddr::V6(a) => a.octets()[..6] == V6_PREFIX,
    }
}

/// `addr` with an IPv4-mapped IPv6 address turned into IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// `addr` as a socket of IPv6 (`v6`) sends to it: IPv4 as IPv4-mapped.
pub fn socket_form(addr: SocketAddr, v6: bool) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if v6 => SocketAddr::from((a.ip().to_ipv6_mapped(), a.port())),
        other => other,
    }
}

/// Accepts any well-formed device certificate (the relay's view: who the device is
/// matters, not whose mesh it is in; the secret decides that).
#[derive(Debug)]
struct AnyDevice;

impl CertPolicy for AnyDevice {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        spki_id(end_entity)
            .map(|_| ())
            .ok_or(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadEncoding,
            ))
    }
}

/// Accepts only the relay whose key the secret gives.
#[derive(Debug)]
struct Exactly(DeviceId);

impl CertPolicy for Exactly {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        match spki_id(end_entity) {
            Some(id) if id == self.0 => Ok(()),
            _ => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
        }
    }
}

/// The relay's TLS server configuration (QUIC and TCP): a client certificate is required.
pub fn server_tls(
    identity: &Identity,
    provider: Arc<CryptoProvider>,
) -> Result<rustls::ServerConfig, TlsError> {
    let verifier = Arc::new(DeviceVerifier::with_policy(AnyDevice, &provider));
    crate::tls::server_config_with(identity, verifier, ALPN, provider)
}

/// A device's TLS client configuration towards the relay whose key has device ID
/// `expected` (from its secret: [`keys::RelayKeys`]).
pub fn client_tls(
    identity: &Identity,
    expected: DeviceId,
    provider: Arc<CryptoProvider>,
) -> Result<rustls::ClientConfig, TlsError> {
    let verifier = Arc::new(DeviceVerifier::with_policy(Exactly(expected), &provider));
    crate::tls::client_config_with(identity, verifier, ALPN, provider)
}

/// The device ID in a relayed datagram's header, if it is one.
pub fn header_id(frame: &[u8]) -> Option<DeviceId> {
    if frame.len() <= HEADER || frame[0] != MARKER {
        return None;
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(&frame[1..HEADER]);
    Some(DeviceId(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_addresses_are_recognised_and_distinct() {
        let a = DeviceId([7u8; 32]);
        let mut b = a;
        b.0[9] ^= 1;
        for v6 in [true, false] {
            let va = virtual_addr(&a, v6);
            assert!(is_virtual(&va), "{va}");
            assert_ne!(va.port(), 0);
            assert!(!va.ip().is_unspecified());
            if v6 {
                assert_ne!(va, virtual_addr(&b, v6));
            }
        }
        for real in [
            "192.168.1.2:7373",
            "[2001:db8::1]:7373",
            "[::ffff:10.0.0.1]:1",
        ] {
            assert!(!is_virtual(&real.parse().unwrap()), "{real}");
        }
        assert!(is_virtual(&"[::ffff:240.1.2.3]:9".parse().unwrap()));
    }

    #[test]
    fn the_relay_key_follows_the_secret() {
        let s = "0123456789abcdef";
        assert_eq!(relay_identity(s).id, relay_identity(s).id);
        assert_ne!(relay_identity(s).id, relay_identity("0123456789abcdeg").id);
        assert!(check_secret(s).is_ok());
        assert!(check_secret("short").is_err());
        assert!(check_secret("0123456789 abcdef").is_err());
        assert!(check_secret(&new_secret()).is_ok());
        assert!(same_secret(s, s) && !same_secret(s, "0123456789abcdeX"));
    }

    #[test]
    fn headers_parse_only_relayed_datagrams() {
        let mut f = vec![MARKER];
        f.extend_from_slice(&[9u8; 32]);
        assert_eq!(header_id(&f), None, "a header without a packet");
        f.push(0x40);
        assert_eq!(header_id(&f), Some(DeviceId([9u8; 32])));
        f[0] = 0x41;
        assert_eq!(header_id(&f), None);
    }
}
