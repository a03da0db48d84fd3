//! How this device can be reached from beyond its LAN: its candidate addresses.
//!
//! - `local`: an address of one of this host's interfaces that is reachable from the
//!   internet (a public IPv4 address or a global IPv6 address), with the listening port.
//!   Private and link-local addresses are left out: on the LAN, mDNS finds them.
//! - `observed`: where a peer saw this device's connection come from (its hello's
//!   `observed=`): behind a NAT, the router's public address and the port it mapped.
//! - `mapped`: a port the router forwards to this device (UPnP-IGD, NAT-PMP or PCP).
//!
//! A member that sees a peer's connection tells its other members where that peer is
//! (`mesh.rs`); a device announces its own `local` and `mapped` candidates to each member
//! it connects to, and the member passes them on, one hop (docs/reach.md). What the
//! daemon's state gives is gathered in `candidates.rs`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Instant;

use transport::DeviceId;

/// Where members see this device's connections come from since they moved (a router
/// that changed its mapping or its public address after the hello said otherwise).
#[derive(Default)]
pub struct Reach {
    /// Per peer: the connection (its stable ID) the report came on, and the address.
    seen: Mutex<HashMap<DeviceId, (usize, SocketAddr)>>,
    /// When the dialled connections were last nudged ([`nudge_dialled`]).
    pub(super) nudged: Mutex<Option<Instant>>,
}

impl Reach {
    /// `by` now sees this device's connection `conn` come from `addr`.
    pub fn observed_by(&self, by: DeviceId, conn: usize, addr: SocketAddr) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        // One entry per member (reports come only on mesh streams), bounded anyway.
        if seen.len() >= 4096 && !seen.contains_key(&by) {
            seen.clear();
        }
        seen.insert(by, (conn, addr));
    }

    /// Where `pc`'s peer sees this device: the latest report, else the hello's.
    pub fn observed(&self, pc: &transport::PeerConn) -> Option<SocketAddr> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(&pc.peer)
            .filter(|(conn, _)| *conn == pc.conn.stable_id())
            .map(|(_, a)| *a)
            .or_else(|| pc.observed().map(crate::addr::canon))
    }
}

/// True for an address the internet can route to this host: not private, loopback,
/// link-local, shared (carrier-grade NAT), unique-local, multicast or unspecified.
/// (The documentation ranges count as public: the test networks use them as such.)
pub fn is_global(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || o[0] == 0
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            // Global unicast is 2000::/3.
            (v6.segments()[0] & 0xe000) == 0x2000
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_internet_routable_addresses_are_global() {
        for a in [
            "203.0.113.7",
            "198.51.100.1",
            "8.8.8.8",
            "2001:db8::1",
            "2a01::1",
            "::ffff:8.8.4.4",
        ] {
            assert!(is_global(a.parse().unwrap()), "{a}");
        }
        for a in [
            "10.1.0.2",
            "172.16.0.1",
            "192.168.1.9",
            "127.0.0.1",
            "169.254.3.4",
            "100.64.0.1",
            "100.127.255.254",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.251",
            "fe80::1",
            "fd00::1",
            "::1",
            "::",
            "ff02::fb",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_global(a.parse().unwrap()), "{a}");
        }
    }
}
