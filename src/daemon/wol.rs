//! Wake-on-LAN, the parts that need no daemon: a device's own Ethernet interfaces with
//! their IPv4 subnets ([`own_interfaces`]), what a member may announce about itself
//! ([`valid`], [`merge`]), the magic packet ([`magic_packet`]) and sending it on one
//! interface ([`send_magic`]). docs/wake.md says how `cnspr wake` uses them.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};

use serde::{Deserialize, Serialize};

/// Most interfaces a device announces, and a peer's record keeps.
pub const MAX_IFACES: usize = 8;
/// The discard port, where Wake-on-LAN magic packets customarily go.
pub const WOL_PORT: u16 = 9;
/// Longest interface name (Linux `IFNAMSIZ` less the terminating NUL).
pub const MAX_IFNAME: usize = 15;

/// One Ethernet interface of a device: its hardware address and an IPv4 address with
/// the prefix length of its subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LanIface {
    pub mac: [u8; 6],
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl LanIface {
    /// True when `ip` is on this interface's subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = mask(self.prefix);
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }

    /// The subnet as `A.B.C.D/N`.
    pub fn subnet(&self) -> String {
        let net = Ipv4Addr::from(u32::from(self.addr) & mask(self.prefix));
        format!("{net}/{}", self.prefix)
    }

    /// The subnet's directed broadcast address (none for /31 and /32).
    pub fn broadcast(&self) -> Option<Ipv4Addr> {
        (self.prefix <= 30).then(|| Ipv4Addr::from(u32::from(self.addr) | !mask(self.prefix)))
    }
}

fn mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A hardware address a machine can be woken by: not all zeros, not multicast or
/// broadcast (the group bit of the first octet clear).
pub fn valid_mac(mac: &[u8; 6]) -> bool {
    *mac != [0; 6] && mac[0] & 1 == 0
}

/// An interface as a device may announce it: a valid MAC, a unicast IPv4 address that
/// is not loopback, link-local or in 0/8, a prefix of 8 to 32 bits.
pub fn valid(i: &LanIface) -> bool {
    let a = i.addr;
    valid_mac(&i.mac)
        && (8..=32).contains(&i.prefix)
        && !(a.is_unspecified()
            || a.is_loopback()
            || a.is_link_local()
            || a.is_multicast()
            || a.is_broadcast()
            || a.octets()[0] == 0
            || a.octets()[0] >= 240)
        && i.broadcast() != Some(a)
}

/// What a peer's record keeps after it announced `new`: the valid entries of `new`
/// first, then the kept entries for other MACs (an interface that went down before the
/// device slept is still worth waking), at most [`MAX_IFACES`]. `None` when the
/// announcement is refused as a whole (too many entries) or changes nothing.
pub fn merge(kept: &[LanIface], new: &[LanIface]) -> Option<Vec<LanIface>> {
    if new.len() > MAX_IFACES {
        return None;
    }
    let mut out: Vec<LanIface> = Vec::new();
    for i in new.iter().filter(|i| valid(i)) {
        if !out.iter().any(|o| o.mac == i.mac && o.addr == i.addr) {
            out.push(*i);
        }
    }
    for k in kept {
        if !out.iter().any(|o| o.mac == k.mac) {
            out.push(*k);
        }
    }
    out.truncate(MAX_IFACES);
    // The same interfaces in another order change nothing: a member that alternates
    // the order of its list cannot make every device write its peer table each time.
    let same = out.len() == kept.len() && out.iter().all(|o| kept.contains(o));
    (!same).then_some(out)
}

/// The magic packet for `mac`: six 0xFF bytes, then the MAC sixteen times (102 bytes).
pub fn magic_packet(mac: &[u8; 6]) -> [u8; 102] {
    let mut p = [0xFFu8; 102];
    for k in 0..16 {
        p[6 + 6 * k..12 + 6 * k].copy_from_slice(mac);
    }
    p
}

/// One of this host's interfaces: its name and what it announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnIface {
    pub name: String,
    pub iface: LanIface,
}

/// This host's Ethernet interfaces that have an IPv4 address: loopback, point-to-point,
/// non-Ethernet (tun, WireGuard, ...), bridges and tap devices left out, and any whose
/// MAC is not [`valid_mac`]. At most [`MAX_IFACES`].
#[allow(unsafe_code)]
pub fn own_interfaces() -> Vec<OwnIface> {
    let mut macs: Vec<(String, [u8; 6])> = Vec::new();
    let mut v4: Vec<(String, Ipv4Addr, u8)> = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list that we only read, then free.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Vec::new();
    }
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        let flags = ifa.ifa_flags;
        if ifa.ifa_addr.is_null()
            || ifa.ifa_name.is_null()
            || flags & libc::IFF_LOOPBACK as u32 != 0
            || flags & libc::IFF_POINTOPOINT as u32 != 0
        {
            continue;
        }
        // SAFETY: a NUL-terminated name owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        if name.is_empty() || name.len() > MAX_IFNAME {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points at a sockaddr of its family.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        if family == libc::AF_PACKET {
            // SAFETY: an AF_PACKET address is a sockaddr_ll.
            let ll = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_ll) };
            if ll.sll_hatype == libc::ARPHRD_ETHER && ll.sll_halen == 6 {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&ll.sll_addr[..6]);
                macs.push((name, mac));
            }
        } else if family == libc::AF_INET && !ifa.ifa_netmask.is_null() {
            // SAFETY: AF_INET addresses and their netmasks are sockaddr_in.
            let (a, m) = unsafe {
                (
                    &*(ifa.ifa_addr as *const libc::sockaddr_in),
                    &*(ifa.ifa_netmask as *const libc::sockaddr_in),
                )
            };
            let addr = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            let prefix = u32::from_be(m.sin_addr.s_addr).count_ones() as u8;
            v4.push((name, addr, prefix));
        }
    }
    // SAFETY: the list came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    let mut out = Vec::new();
    for (name, addr, prefix) in v4 {
        let Some((_, mac)) = macs.iter().find(|(n, _)| *n == name) else {
            continue;
        };
        let sys = std::path::Path::new("/sys/class/net").join(&name);
        if sys.join("bridge").exists() || sys.join("tun_flags").exists() {
            continue;
        }
        let iface = LanIface {
            mac: *mac,
            addr,
            prefix,
        };
        if valid(&iface) && out.len() < MAX_IFACES {
            out.push(OwnIface { name, iface });
        }
    }
    out
}

/// Sends the magic packet for `mac` from `local` (bound to its address, and to its
/// device where allowed) to the subnet's directed broadcast and to 255.255.255.255,
/// UDP port 9. Returns where it went.
pub fn send_magic(local: &OwnIface, mac: &[u8; 6]) -> std::io::Result<Vec<SocketAddrV4>> {
    let sock = UdpSocket::bind(SocketAddrV4::new(local.iface.addr, 0))?;
    sock.set_broadcast(true)?;
    bind_device(&sock, &local.name);
    let packet = magic_packet(mac);
    let mut to: Vec<SocketAddrV4> = Vec::new();
    if let Some(b) = local.iface.broadcast() {
        to.push(SocketAddrV4::new(b, WOL_PORT));
    }
    to.push(SocketAddrV4::new(Ipv4Addr::BROADCAST, WOL_PORT));
    let mut sent = Vec::new();
    let mut last_err = None;
    for dest in to {
        match sock.send_to(&packet, dest) {
            Ok(_) => sent.push(dest),
            Err(e) => last_err = Some(e),
        }
    }
    match (sent.is_empty(), last_err) {
        (true, Some(e)) => Err(e),
        _ => Ok(sent),
    }
}

/// Ties the socket to interface `name` (needs CAP_NET_RAW; without it, the bound
/// source address alone picks the interface: Linux sends limited broadcasts out of the
/// interface that owns the source address).
#[allow(unsafe_code)]
fn bind_device(sock: &UdpSocket, name: &str) {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt reads `name.len()` bytes from the pointer, which stay valid.
    let _ = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(mac: [u8; 6], addr: &str, prefix: u8) -> LanIface {
        LanIface {
            mac,
            addr: addr.parse().unwrap(),
            prefix,
        }
    }

    const M1: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    const M2: [u8; 6] = [0x0a, 0, 0, 0, 0, 2];

    #[test]
    fn magic_packet_is_six_ff_then_the_mac_sixteen_times() {
        let p = magic_packet(&M1);
        assert_eq!(p.len(), 102);
        assert_eq!(&p[..6], &[0xFF; 6]);
        for chunk in p[6..].chunks(6) {
            assert_eq!(chunk, &M1);
        }
    }

    #[test]
    fn subnets_and_broadcasts() {
        let i = iface(M1, "10.77.0.9", 24);
        assert!(i.contains("10.77.0.200".parse().unwrap()));
        assert!(!i.contains("10.78.0.9".parse().unwrap()));
        assert_eq!(i.subnet(), "10.77.0.0/24");
        assert_eq!(i.broadcast(), Some("10.77.0.255".parse().unwrap()));
        assert_eq!(iface(M1, "192.168.1.5", 31).broadcast(), None);
        assert!(iface(M1, "192.168.1.5", 32).contains("192.168.1.5".parse().unwrap()));
        assert!(!iface(M1, "192.168.1.5", 32).contains("192.168.1.6".parse().unwrap()));
        assert_eq!(mac_text(&M1), "02:11:22:33:44:55");
    }

    #[test]
    fn only_wakeable_interfaces_are_valid() {
        assert!(valid(&iface(M1, "192.168.1.5", 24)));
        for bad in [
            iface([0; 6], "192.168.1.5", 24),
            iface([0xff; 6], "192.168.1.5", 24),
            iface([0x01, 0, 0x5e, 0, 0, 1], "192.168.1.5", 24),
            iface(M1, "192.168.1.5", 7),
            iface(M1, "192.168.1.5", 33),
            iface(M1, "127.0.0.1", 8),
            iface(M1, "0.0.0.0", 24),
            iface(M1, "169.254.1.1", 16),
            iface(M1, "224.0.0.1", 24),
            iface(M1, "255.255.255.255", 24),
            iface(M1, "192.168.1.255", 24),
        ] {
            assert!(!valid(&bad), "{bad:?}");
        }
    }

    #[test]
    fn merge_keeps_other_macs_refuses_floods_and_drops_invalid_entries() {
        let a = iface(M1, "10.0.0.2", 24);
        let b = iface(M2, "10.1.0.2", 24);
        // New entries first; an entry for another MAC is kept.
        assert_eq!(merge(&[a], &[b]), Some(vec![b, a]));
        // The same MAC at a new address replaces the old one.
        let a2 = iface(M1, "10.0.5.2", 24);
        assert_eq!(merge(&[a, b], &[a2]), Some(vec![a2, b]));
        // Nothing new: no change.
        assert_eq!(merge(&[a], &[a]), None);
        assert_eq!(merge(&[a], &[]), None);
        // The same list in another order: no change (no write of the peer table).
        assert_eq!(merge(&[a, b], &[b, a]), None);
        assert_eq!(merge(&[a, b], &[b]), None);
        // Invalid entries are dropped; more than 8 refuses the whole announcement.
        assert_eq!(
            merge(&[], &[iface([0; 6], "10.0.0.3", 24), a]),
            Some(vec![a])
        );
        let many: Vec<LanIface> = (0..9)
            .map(|k| iface([2, 0, 0, 0, 0, k], "10.0.0.3", 24))
            .collect();
        assert_eq!(merge(&[], &many), None);
        // Never more than 8 kept.
        let eight = &many[..8];
        let merged = merge(eight, &[iface([2, 9, 9, 9, 9, 9], "10.0.0.4", 24)]).unwrap();
        assert_eq!(merged.len(), MAX_IFACES);
        assert_eq!(merged[0].mac, [2, 9, 9, 9, 9, 9]);
    }

    #[test]
    fn own_interfaces_are_ethernet_with_ipv4_and_never_loopback() {
        for o in own_interfaces() {
            assert!(valid(&o.iface), "{o:?}");
            assert!(!o.iface.addr.is_loopback());
            assert!(o.name.len() <= MAX_IFNAME);
        }
    }
}
