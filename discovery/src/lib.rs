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
mod types;

pub use mdns::{Discovery, EVENT_CHANNEL_CAPACITY};
pub use netwatch::{NetWatcher, NET_EVENT_CHANNEL_CAPACITY};
pub use types::{
    Announce, DiscoveryError, DiscoveryEvent, NetEvent, MAX_NAME_LEN, PROTOCOL_VERSION,
    SERVICE_TYPE,
};
