//! The crate's public types: the wire constants, what this device advertises, the
//! events reported for the LAN and for the host's addresses, and the error type.

use std::net::{IpAddr, SocketAddr};

/// DNS-SD service type every cnspr daemon advertises.
pub const SERVICE_TYPE: &str = "_cnspr._udp.local.";

/// Protocol version carried in the `v` TXT key. A daemon should dial only peers whose
/// [`DiscoveryEvent::Found::version`] equals this value, and may list the others as
/// "incompatible" (they are still reported so that the user can be told why).
pub const PROTOCOL_VERSION: &str = "1";

/// Longest device name accepted, in bytes (UTF-8), in our own announcement and in others'.
pub const MAX_NAME_LEN: usize = 63;

/// What this device advertises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    /// Device ID: 52 characters of RFC 4648 base32 (`A-Z`, `2-7`), no dashes, no padding.
    pub id: String,
    /// Human name, at most [`MAX_NAME_LEN`] bytes, no control characters.
    pub name: String,
    /// UDP port of the daemon's QUIC endpoint.
    pub port: u16,
    /// UDP port of an open pairing window (TXT key `pair`), if one is open.
    pub pair_port: Option<u16>,
}

/// A change in the set of cnspr devices visible on the LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryEvent {
    /// A device was resolved, or its address set, name or version changed. `addrs` is the
    /// complete current set (sorted, non-empty); it replaces any earlier one. IPv6
    /// link-local addresses carry the scope ID of the interface they were seen on.
    Found {
        /// Claimed device ID (validated syntax, not authenticated).
        id: String,
        /// Claimed human name (may be empty).
        name: String,
        /// Addresses with the advertised port.
        addrs: Vec<SocketAddr>,
        /// The `v` TXT value; compare with [`PROTOCOL_VERSION`] before dialling.
        version: String,
        /// Addresses of the device's open pairing window (TXT key `pair`), if any.
        pairing: Vec<SocketAddr>,
    },
    /// The device sent a goodbye, or its records expired.
    Lost {
        /// Device ID of an earlier `Found`.
        id: String,
    },
}

/// A change in the host's usable addresses.
///
/// An address is *usable* when it is not a loopback address, is not tentative (IPv6
/// duplicate address detection still running) or duplicate, and sits on an interface that
/// is not loopback and is administratively up and operationally running (has carrier).
/// IPv6 link-local (`fe80::/10`) and IPv4 link-local (`169.254/16`) addresses count as
/// usable: on a link with no router or DHCP (two laptops and a cable) they are exactly
/// what mDNS and QUIC use. The host is *active* while at least one address is usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NetEvent {
    /// An address became usable.
    AddressAdded(IpAddr),
    /// An address stopped being usable (removed, or its interface went down).
    AddressRemoved(IpAddr),
    /// The first usable address appeared (sent after its `AddressAdded`).
    Active,
    /// The last usable address went away (sent after its `AddressRemoved`).
    Inactive,
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// Our own ID does not have the required syntax.
    #[error("invalid device ID {0:?}: expected 52 characters of A-Z and 2-7, without dashes")]
    InvalidId(String),
    /// Our own name cannot be advertised.
    #[error("invalid device name {0:?}: at most 63 bytes and no control characters")]
    InvalidName(String),
    /// The mDNS daemon refused an operation.
    #[error("mDNS: {0} (LAN discovery can be turned off with --no-mdns)")]
    Mdns(#[from] mdns_sd::Error),
    /// A netlink socket could not be opened or read.
    #[error("netlink: {0} (network changes will not be followed)")]
    Netlink(#[source] std::io::Error),
    /// A worker thread could not be started.
    #[error("cannot start the {0} thread: {1}")]
    Thread(&'static str, #[source] std::io::Error),
}
