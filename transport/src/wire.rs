//! Wire constants and the transport-level frames: stream kinds and the hello exchange.

use std::net::SocketAddr;

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

/// Hello feature carrying the address the sender sees the connection's packets come
/// from (`observed=` followed by the address, e.g. `observed=203.0.113.7:40112` or
/// `observed=[2001:db8::1]:7373`): behind a NAT, the receiver learns its public address
/// and port. A feature rather than a field, so that peers that do not know it ignore it
/// (a `Hello` with one more field would not decode on them).
pub const FEATURE_OBSERVED: &str = "observed=";
/// Longest `observed=` feature read (an IPv6 address with a scope id and a port fits).
const MAX_OBSERVED: usize = 80;

/// The `observed=` feature for `addr`, an IPv4-mapped IPv6 address written as IPv4 (and
/// without an IPv6 scope id, which would name an interface of this device).
pub fn observed_feature(addr: SocketAddr) -> String {
    format!("{FEATURE_OBSERVED}{}", canonical(addr))
}

/// The address in the first `observed=` feature of `features`, if that one is a
/// usable address (a specified IP, a port other than 0); IPv4-mapped IPv6 addresses come
/// out as IPv4, and a scope id is dropped.
pub fn observed(features: &[String]) -> Option<SocketAddr> {
    let f = features.iter().find(|f| f.starts_with(FEATURE_OBSERVED))?;
    if f.len() > MAX_OBSERVED {
        return None;
    }
    let addr: SocketAddr = f[FEATURE_OBSERVED.len()..].parse().ok()?;
    let addr = canonical(addr);
    (!addr.ip().is_unspecified() && addr.port() != 0).then_some(addr)
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> Vec<String> {
        vec!["heartbeat".into(), s.into()]
    }

    #[test]
    fn observed_addresses_round_trip_and_mapped_ones_become_ipv4() {
        for a in ["203.0.113.7:40112", "[2001:db8::1]:7373"] {
            let addr: SocketAddr = a.parse().unwrap();
            assert_eq!(observed(&[observed_feature(addr)]), Some(addr), "{a}");
        }
        // A scope id names an interface of the peer: it is not kept.
        let scoped: SocketAddr = "[fe80::1%3]:9".parse().unwrap();
        assert_eq!(observed_feature(scoped), "observed=[fe80::1]:9");
        assert_eq!(
            observed(&f("observed=[fe80::1%3]:9")),
            Some("[fe80::1]:9".parse().unwrap())
        );
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:5000".parse().unwrap();
        assert_eq!(observed_feature(mapped), "observed=192.0.2.1:5000");
        assert_eq!(
            observed(&f("observed=[::ffff:192.0.2.1]:5000")),
            Some("192.0.2.1:5000".parse().unwrap())
        );
    }

    #[test]
    fn absent_or_unusable_observed_addresses_are_none() {
        assert_eq!(observed(&[]), None);
        assert_eq!(observed(&f("moved")), None);
        for bad in [
            "observed=",
            "observed=nonsense",
            "observed=1.2.3.4",
            "observed=1.2.3.4:0",
            "observed=0.0.0.0:7373",
            "observed=[::]:7373",
            "observed=1.2.3.4:65536",
            "observed= 1.2.3.4:80",
        ] {
            assert_eq!(observed(&f(bad)), None, "{bad}");
        }
        let long = format!("observed=[2001:db8::1%{}]:80", "9".repeat(100));
        assert_eq!(observed(&f(&long)), None);
        // Only the first one counts.
        let two = vec![
            "observed=bad".to_string(),
            "observed=192.0.2.1:1".to_string(),
        ];
        assert_eq!(observed(&two), None);
    }
}
