//! LAN discovery and network-interface tracking for cnspr.
//!
//! Two independent halves, both driven by their own OS thread so that they work with any
//! (or no) async runtime; results arrive on bounded [`tokio::sync::mpsc`] channels:
//!
//! * [`Discovery`]: mDNS/DNS-SD with `mdns-sd`. Advertises this device as a
//!   [`SERVICE_TYPE`] instance and browses for other instances. Every advertisement seen
//!   on the LAN is untrusted input: it is validated by the pure functions of [`advert`]
//!   and de-duplicated by [`advert::Tracker`] before it becomes a [`DiscoveryEvent`].
//! * [`NetWatcher`]: follows the host's links and addresses through rtnetlink
//!   multicast notifications (no polling) and reports [`NetEvent`]s.
//!
//! # Wire format (protocol version [`PROTOCOL_VERSION`])
//!
//! * Service type `_cnspr._udp.local.`; the SRV port is the daemon's QUIC (UDP) port.
//! * Instance name: `<name> [<first 8 characters of the ID>]`, lower case (name truncated
//!   so the label fits in 63 bytes). mDNS conflict resolution may rename it (`... (2)`): the instance
//!   name is for humans only, identity comes from the TXT record.
//! * Host name: `cnspr-<first 8 characters of the ID, lower case>.local.`
//! * TXT: `id=<52-character base32 device ID>`, `v=<protocol version>`, `name=<name>`.
//! * A/AAAA: every non-loopback address of every up interface, IPv6 link-local included.
//!
//! # Use from the daemon
//!
//! * Start a [`NetWatcher`] always (also with `--no-mdns`): its `Active`/`Inactive` are
//!   the daemon's `active`/`inactive` events and its address changes trigger re-dials.
//! * Start [`Discovery`] unless `--no-mdns`; with `--no-mdns` nothing of mDNS runs (no
//!   socket on port 5353, no thread), only manual and gossiped addresses are used.
//! * On every `NetEvent::AddressAdded`/`AddressRemoved`: [`Discovery::reannounce`]
//!   (non-blocking), then re-dial and let QUIC migrate.
//! * On `Found`: dial roster devices whose `version` is [`PROTOCOL_VERSION`]; list the
//!   others for `cnspr pair` only. `Found` for a known ID replaces its LAN address set.
//! * At shutdown: [`Discovery::stop`] blocks up to about 1.5 s (goodbye), so call it from
//!   a blocking context (`spawn_blocking`) or at the very end.
//!
//! Threads: `mDNS_daemon` (mdns-sd), `cnspr-discovery`, `cnspr-mdns-announce`,
//! `cnspr-netwatch`. Sockets: UDP `0.0.0.0:5353` and `[::]:5353` (address/port reuse,
//! coexists with avahi), joined to 224.0.0.251 / ff02::fb on each non-loopback interface;
//! two rtnetlink sockets (one kept, one per state dump). mdns-sd opens its UDP sockets in
//! its own thread, so a host without multicast shows up as no `Found` ever, not as an
//! error from [`Discovery::start`].
//!
//! # Trust
//!
//! Nothing learnt here is authenticated: a [`DiscoveryEvent::Found`] only says "someone on
//! the LAN claims to be this ID at these addresses". The transport authenticates the peer
//! when it dials. Advertisements with a malformed ID, an oversized or malformed TXT record
//! are dropped; at most [`advert::MAX_DEVICES`] devices and [`advert::MAX_ADDRS`]
//! addresses per device are tracked.

pub mod advert;
mod mdns;
mod netwatch;

pub use mdns::{Discovery, EVENT_CHANNEL_CAPACITY};
pub use netwatch::{NetWatcher, NET_EVENT_CHANNEL_CAPACITY};

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
