//! # transport
//!
//! Everything in cnspr rides on one authenticated, encrypted QUIC connection per pair of
//! devices. This crate provides:
//!
//! - [`Identity`]: a device's Ed25519 key pair and self-signed certificate (rcgen), kept in
//!   the state directory, and its [`DeviceId`] (SHA-256 of the SubjectPublicKeyInfo);
//! - [`Roster`]: the live set of trusted device IDs;
//! - [`tls`]: TLS 1.3 pinned to ChaCha20-Poly1305 with a roster-pinning verifier used in
//!   both directions;
//! - [`Endpoint`]: the quinn endpoint, one connection per device pair, the hello round
//!   trip that makes a connection count as up, and typed streams;
//! - [`frame`]: length-prefixed bincode frames with bounded decoding.
//!
//! The wire format is described in `docs/protocol.md`.

pub mod bucket;
pub mod endpoint;
pub mod frame;
pub mod heartbeat;
pub mod id;
pub mod identity;
pub mod pairing;
pub mod relay;
pub mod roster;
pub mod runtime;
pub mod settings;
pub mod socket;
pub mod tls;
pub mod wire;

pub use bucket::TokenBucket;
pub use endpoint::{
    close_code, DownReason, Endpoint, EndpointConfig, HandshakeCounters, HandshakeLimits,
    IncomingStream, PeerConn, TransportError, TransportEvent,
};
pub use frame::FrameError;
pub use id::{resolve_prefix, DeviceId, IdError};
pub use identity::{Identity, IdentityError};
pub use roster::Roster;
pub use wire::{StreamKind, ALPN, PROTOCOL_VERSION};

pub use quinn;
pub use rustls;
