//! Endpoint settings, close codes and the transport's error and down-reason types.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::VarInt;
use rustls::crypto::CryptoProvider;

use crate::id::DeviceId;
use crate::tls::{self, TlsError};

/// Application close codes sent when this side closes a connection.
pub mod close_code {
    /// The daemon is stopping gracefully.
    pub const LEAVING: u32 = 1;
    /// A second connection to the same device replaced this one.
    pub const DUPLICATE: u32 = 2;
    /// The device was removed from the roster.
    pub const REVOKED: u32 = 3;
    /// Another candidate address won the dial race.
    pub const RACE_LOST: u32 = 4;
    /// The hello exchange failed (bad version or frame).
    pub const PROTOCOL: u32 = 5;
    /// Nothing was heard from the peer (no heartbeat, no packet) for the idle timeout.
    pub const SILENT: u32 = 6;
}

/// Default [`EndpointConfig::max_udp_payload`]: 16 KiB, above any jumbo-frame LAN (9,000
/// bytes); path MTU discovery finds what a path really carries. Loopback would carry 64 KiB,
/// but quinn keeps a send buffer of ten datagrams per connection once it has sent that
/// many at once (640 KiB at 64 KiB against 160 KiB), and a system call carries 64 KiB
/// either way (four datagrams of 16 KiB in one segmented send).
pub const MAX_UDP_PAYLOAD: u16 = 16_384;

/// Endpoint settings. `Default` suits a daemon; [`EndpointConfig::for_test`] binds loopback.
#[derive(Clone)]
pub struct EndpointConfig {
    /// Addresses to bind. `[::]:P` together with `0.0.0.0:P` becomes one dual-stack socket.
    pub listen: Vec<SocketAddr>,
    /// UDP send and receive buffer size in bytes.
    pub socket_buffer: usize,
    /// QUIC keep-alive interval (sent by the side that dialled).
    pub keep_alive: Duration,
    /// QUIC idle timeout of a connection dialled to a public address: silent for this
    /// long, it is dead.
    pub idle_timeout: Duration,
    /// QUIC idle timeout of a connection on a private path ([`private_path`]): `None`, the
    /// default, for none. Such a path crosses no NAT, so it needs no keep-alive, and an
    /// idle connection there carries nothing at all; the daemon closes the connections of
    /// members that are gone (or that stop answering what it sends).
    pub private_idle_timeout: Option<Duration>,
    /// Limit for the QUIC handshake and for the hello round trip, each.
    pub handshake_timeout: Duration,
    /// Per-stream flow-control window in bytes.
    pub stream_window: u32,
    /// Per-connection flow-control window in bytes.
    pub connection_window: u32,
    /// Concurrent bidirectional streams a peer may open.
    pub max_streams: u32,
    /// Largest UDP payload in bytes: the most this endpoint accepts (quinn's
    /// `max_udp_payload_size`, told to the peer) and the upper bound of its path MTU
    /// discovery, which starts at 1,200 and probes upwards for what the path carries
    /// (1,472 on Ethernet, 8,972 on a jumbo-frame LAN), no higher
    /// than the route to the peer carries.
    pub max_udp_payload: u16,
    /// Read liveness heartbeats on a socket beside QUIC's (only with one socket).
    pub heartbeats: bool,
    /// The TLS provider; defaults to ring restricted to ChaCha20-Poly1305.
    pub provider: Arc<CryptoProvider>,
    /// Bounds on the incoming handshakes under way (see `endpoint/gate.rs`).
    pub handshakes: HandshakeLimits,
}

/// Bounds on the handshakes an endpoint has under way with devices that dialled it (from
/// its first answer to the end of the TLS handshake; the hello is not counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// In all. Beyond it, a validated newcomer takes the place of the handshake that
    /// has waited longest for its client since this side answered, or is refused.
    pub max: usize,
    /// From one source (an IPv4 address, an IPv6 /64); beyond it, the same rule within
    /// the source. Several devices of the mesh
    /// behind one NAT dial at once only after a restart of this one, and one that is
    /// refused dials again.
    pub per_source: usize,
    /// Beyond this many under way, an address that is not validated is sent a QUIC Retry
    /// (it must prove it receives there, a round trip) instead of a handshake.
    pub retry_above: usize,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        HandshakeLimits {
            max: 64,
            per_source: 8,
            retry_above: 32,
        }
    }
}

impl std::fmt::Debug for EndpointConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointConfig")
            .field("listen", &self.listen)
            .field("keep_alive", &self.keep_alive)
            .field("idle_timeout", &self.idle_timeout)
            .field("private_idle_timeout", &self.private_idle_timeout)
            .field("handshakes", &self.handshakes)
            .finish_non_exhaustive()
    }
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            listen: vec![
                "[::]:7373".parse().expect("valid address"),
                "0.0.0.0:7373".parse().expect("valid address"),
            ],
            socket_buffer: 8 * 1024 * 1024,
            keep_alive: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(3),
            private_idle_timeout: None,
            handshake_timeout: Duration::from_secs(5),
            stream_window: 8 * 1024 * 1024,
            connection_window: 32 * 1024 * 1024,
            max_streams: 1024,
            max_udp_payload: MAX_UDP_PAYLOAD,
            heartbeats: true,
            provider: Arc::new(tls::chacha_provider()),
            handshakes: HandshakeLimits::default(),
        }
    }
}

impl EndpointConfig {
    /// Loopback on an ephemeral port.
    pub fn for_test() -> Self {
        EndpointConfig {
            listen: vec!["127.0.0.1:0".parse().expect("valid address")],
            ..Default::default()
        }
    }

    /// QUIC transport settings of one side of a connection. Only the side that dials a
    /// public address sends keep-alives (its PING and the acknowledgement keep the NAT
    /// mapping and the connection open for both sides) and has the idle timeout; the
    /// accepting side announces the private one (none by default), so the dialler's
    /// choice is what the two agree on (QUIC takes the smaller announced timeout).
    /// `path` is the largest UDP payload the route to the peer carries, if known: path
    /// MTU discovery probes no higher.
    pub(crate) fn transport(
        &self,
        side: Side,
        path: Option<u16>,
    ) -> Result<quinn::TransportConfig, TransportError> {
        let mut t = quinn::TransportConfig::default();
        let idle = match side {
            Side::DialPublic => {
                t.keep_alive_interval(Some(self.keep_alive));
                Some(self.idle_timeout)
            }
            Side::DialPrivate | Side::Accept => {
                t.keep_alive_interval(None);
                self.private_idle_timeout
            }
        };
        let idle = idle
            .map(|d| {
                quinn::IdleTimeout::try_from(d)
                    .map_err(|_| TransportError::Config("idle timeout too large".into()))
            })
            .transpose()?;
        t.max_idle_timeout(idle);
        t.stream_receive_window(VarInt::from_u32(self.stream_window));
        t.receive_window(VarInt::from_u32(self.connection_window));
        t.send_window(u64::from(self.connection_window));
        t.max_concurrent_bidi_streams(VarInt::from_u32(self.max_streams));
        t.max_concurrent_uni_streams(VarInt::from_u32(0));
        t.initial_rtt(Duration::from_millis(50));
        // Datagrams as large as the path carries: per datagram, QUIC pays a system call
        // share, a header, a packet number and an authentication tag, so larger ones move
        // a stream with less CPU (quinn's default stops at 1,452 bytes). The search runs
        // once per connection and again after `interval` if the bound was not reached;
        // its lost probes do not count as congestion.
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        let upper = path.map_or(self.max_udp_payload, |p| p.min(self.max_udp_payload));
        mtu.upper_bound(upper.max(1200));
        t.mtu_discovery_config(Some(mtu));
        // The initial congestion window holds a probe of the largest size and a datagram
        // more: quinn (0.11) holds even a CONNECTION_CLOSE back while the window is full,
        // so a connection closed while a large probe was in flight (just after set-up)
        // sent no close, and its peer saw a stateless reset instead of the reason. With
        // Ethernet's 1,472 bytes this is quinn's default window (14,720 bytes).
        let mut cc = quinn::congestion::CubicConfig::default();
        cc.initial_window((3 * u64::from(upper)).max(14_720));
        t.congestion_controller_factory(Arc::new(cc));
        // Ask the peer to acknowledge every ack-eliciting packet at once (the ACK
        // frequency extension): a lone small packet (a membership beat, a message) is
        // acknowledged in the wake-up that received it, instead of by a second wake-up
        // 25 ms later on both sides.
        let mut ack = quinn::AckFrequencyConfig::default();
        ack.ack_eliciting_threshold(VarInt::from_u32(0));
        t.ack_frequency_config(Some(ack));
        Ok(t)
    }
}

/// Which side of a connection a transport configuration is for (see
/// [`EndpointConfig::transport`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// The side that accepted the connection.
    Accept,
    /// The side that dialled a public address (a NAT may sit on the path).
    DialPublic,
    /// The side that dialled a private address ([`private_path`]).
    DialPrivate,
}

/// Whether a path to `addr` is private: loopback, an RFC 1918 or link-local IPv4 address,
/// a unique-local or link-local IPv6 address (or such an IPv4 address mapped into IPv6).
/// Such a peer is reached without a NAT between the two (same LAN, or a private network
/// the devices share), so the connection needs no keep-alive. Every other address, the
/// carrier-grade NAT range 100.64.0.0/10 included, may be behind a NAT.
pub fn private_path(addr: &SocketAddr) -> bool {
    use std::net::IpAddr;
    let v4_private =
        |ip: std::net::Ipv4Addr| ip.is_loopback() || ip.is_private() || ip.is_link_local();
    match addr.ip() {
        IpAddr::V4(ip) => v4_private(ip),
        IpAddr::V6(ip) => {
            if let Some(v4) = ip.to_ipv4_mapped() {
                return v4_private(v4);
            }
            let first = ip.segments()[0];
            ip.is_loopback() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    }
}

/// Errors of the transport layer. Messages say what happened and, where useful, what to do.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid transport configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("device {0} is not in the roster: trust it first")]
    NotInRoster(DeviceId),
    #[error("no address to dial device {0}")]
    NoAddresses(DeviceId),
    #[error("could not reach device {peer}: {reason}")]
    Unreachable { peer: DeviceId, reason: String },
    #[error("device {peer} refused the connection: {reason}")]
    Refused { peer: DeviceId, reason: String },
    #[error("no connection to device {0}")]
    NotConnected(DeviceId),
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream error: {0}")]
    Write(#[from] quinn::WriteError),
    #[error(transparent)]
    Frame(#[from] crate::frame::FrameError),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("handshake dropped to make room for another (too many under way)")]
    Evicted,
}

/// Why a peer's connection went away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownReason {
    /// The peer announced a graceful stop.
    Leaving,
    /// This side removed the peer from the roster (or the peer removed us).
    Revoked,
    /// Nothing heard from the peer within the idle timeout.
    TimedOut,
    /// This side closed the connection.
    LocallyClosed,
    /// Anything else, described.
    Other(String),
}

impl DownReason {
    pub(crate) fn from_error(e: &quinn::ConnectionError) -> Self {
        match e {
            quinn::ConnectionError::ApplicationClosed(c) => {
                match u32::try_from(c.error_code.into_inner()).unwrap_or(0) {
                    close_code::LEAVING => DownReason::Leaving,
                    close_code::REVOKED => DownReason::Revoked,
                    _ => DownReason::Other(format!("closed by peer: {c}")),
                }
            }
            quinn::ConnectionError::TimedOut => DownReason::TimedOut,
            quinn::ConnectionError::LocallyClosed => DownReason::LocallyClosed,
            other => DownReason::Other(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::private_path;

    #[test]
    fn private_paths_are_those_without_a_nat_between() {
        for a in [
            "127.0.0.1:1",
            "10.1.2.3:1",
            "172.16.0.1:1",
            "192.168.1.5:7373",
            "169.254.3.4:1",
            "[::1]:1",
            "[fd12::1]:1",
            "[fe80::1]:1",
            "[::ffff:192.168.0.1]:1",
        ] {
            assert!(private_path(&a.parse().unwrap()), "{a}");
        }
        for a in [
            "203.0.113.5:1",
            "198.51.100.1:1",
            "8.8.8.8:53",
            "100.64.0.1:1",
            "172.32.0.1:1",
            "[2001:db8::1]:1",
            "[::ffff:203.0.113.5]:1",
        ] {
            assert!(!private_path(&a.parse().unwrap()), "{a}");
        }
    }
}
