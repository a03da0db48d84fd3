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
//! it connects to, and the member passes them on, one hop (docs/reach.md).

use std::net::{IpAddr, SocketAddr};

use crate::api::Candidate;

use super::context::Daemon;

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

/// The port peers reach this device on (the first listening socket's).
fn listen_port(d: &Daemon) -> Option<u16> {
    d.endpoint
        .local_addrs()
        .first()
        .map(|a| a.port())
        .filter(|p| *p != 0)
}

/// This host's global interface addresses with the listening port.
fn local(d: &Daemon) -> Vec<SocketAddr> {
    let Some(port) = listen_port(d) else {
        return Vec::new();
    };
    let bound: Vec<IpAddr> = d.endpoint.local_addrs().iter().map(|a| a.ip()).collect();
    let ips: Vec<IpAddr> = if bound.iter().all(|ip| ip.is_unspecified()) {
        d.netwatch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|w| w.addresses())
            .unwrap_or_default()
    } else {
        bound
    };
    let mut out: Vec<SocketAddr> = ips
        .into_iter()
        .map(|ip| ip.to_canonical())
        .filter(|ip| is_global(*ip))
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The candidates this device announces itself to members: its global interface
/// addresses and its mapped port (what members cannot observe).
pub fn announced(d: &Daemon) -> Vec<SocketAddr> {
    let mut v = local(d);
    if let Some(m) = d.portmap.external() {
        if !v.contains(&m) {
            v.push(m);
        }
    }
    v
}

/// Every candidate, for `status`.
pub fn candidates(d: &Daemon) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = local(d)
        .into_iter()
        .map(|a| Candidate {
            addr: a.to_string(),
            kind: "local".into(),
            from: Vec::new(),
        })
        .collect();
    if let Some(m) = d.portmap.external() {
        out.push(Candidate {
            addr: m.to_string(),
            kind: "mapped".into(),
            from: Vec::new(),
        });
    }
    let mut conns = d.endpoint.connections();
    conns.sort_by(|a, b| a.name.cmp(&b.name));
    for pc in conns {
        let Some(seen) = pc.observed() else {
            continue;
        };
        let addr = crate::addr::canon(seen).to_string();
        match out
            .iter_mut()
            .find(|c| c.addr == addr && c.kind == "observed")
        {
            Some(c) => c.from.push(pc.name.clone()),
            None => out.push(Candidate {
                addr,
                kind: "observed".into(),
                from: vec![pc.name.clone()],
            }),
        }
    }
    out
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
