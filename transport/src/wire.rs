//! Wire constants and the transport-level frames: stream kinds and the hello exchange.

use serde::{Deserialize, Serialize};

/// ALPN protocol identifier.
pub const ALPN: &[u8] = b"cnspr/1";
/// Protocol version carried in every stream header and in the hello.
pub const PROTOCOL_VERSION: u8 = 1;

/// The first byte of every QUIC stream says what runs on it; the second is the version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum StreamKind {
    /// Opened once by the dialer: the hello exchange that makes a connection count as up.
    Hello = 0,
    /// Membership, keep-alive probes and gossip.
    Control = 1,
    /// Tagged messages for handlers, each acknowledged.
    Message = 2,
    /// An application byte stream (`cnspr connect`).
    App = 3,
    /// Replicated-store synchronisation.
    Sync = 4,
    /// A long-lived stream of small tagged messages, answered out of order by sequence.
    Messages = 5,
    /// Daemon-to-daemon mesh frames: signed roster gossip, membership, relaying.
    Mesh = 6,
}

impl StreamKind {
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0 => StreamKind::Hello,
            1 => StreamKind::Control,
            2 => StreamKind::Message,
            3 => StreamKind::App,
            4 => StreamKind::Sync,
            5 => StreamKind::Messages,
            6 => StreamKind::Mesh,
            _ => return None,
        })
    }

    /// The two header bytes that open a stream of this kind.
    pub fn header(self) -> [u8; 2] {
        [self as u8, PROTOCOL_VERSION]
    }
}

/// Sent by the dialer on the hello stream; answered by [`ControlFrame::HelloAck`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u16,
    /// The sender's human name.
    pub name: String,
    /// Optional capabilities, for forward compatibility.
    pub features: Vec<String>,
}

/// Frames of the hello and control streams (new variants are only ever appended).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlFrame {
    Hello(Hello),
    HelloAck(Hello),
    /// The acceptor refuses the connection (e.g. unsupported version).
    HelloReject {
        reason: String,
    },
    Ping {
        nonce: u64,
    },
    Pong {
        nonce: u64,
    },
}
