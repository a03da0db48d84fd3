//! Addresses as people read and type them. An IPv6 link-local address (`fe80::/10`) means
//! nothing without the interface it is reached through, its zone: it is shown as
//! `[fe80::1%eth0]:41532` (the interface's name, or its number when it has none) and
//! accepted in that form, by name or by number.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};

/// Longest address accepted from a person.
const MAX_LEN: usize = 300;
/// Longest `/proc/net/if_inet6` read (a line is about 55 bytes).
const MAX_IF_INET6: u64 = 256 * 1024;

/// Why an address given to `pair` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AddrError {
    #[error("address too long (at most {MAX_LEN} characters)")]
    TooLong,
    #[error("{0:?} is not a usable [IPV6%INTERFACE]:PORT address")]
    Malformed(String),
    #[error("{addr:?}: this host has no network interface {zone:?} (see `ip link`)")]
    UnknownInterface { addr: String, zone: String },
    #[error("{0} is a link-local address: add the interface it is reached through on this device, like [{ip}%eth0]:{port}", ip = .0.ip(), port = .0.port())]
    NeedsZone(SocketAddr),
    #[error(transparent)]
    Resolve(#[from] anyhow::Error),
}

/// A socket address shown with the interface name of its zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shown(pub SocketAddr);

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            SocketAddr::V6(a) if a.scope_id() != 0 => {
                let zone = interface_name(a.scope_id()).unwrap_or_else(|| a.scope_id().to_string());
                write!(f, "[{}%{zone}]:{}", a.ip(), a.port())
            }
            a => write!(f, "{a}"),
        }
    }
}

/// True for `fe80::/10`, whose addresses need a zone.
pub fn is_link_local(ip: &Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

/// The name of interface `index`.
pub fn interface_name(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname may write (the name and its
    // NUL); it returns either NULL or `buf`, NUL-terminated.
    #[allow(unsafe_code)]
    let name = unsafe {
        if libc::if_indextoname(index, buf.as_mut_ptr()).is_null() {
            return None;
        }
        std::ffi::CStr::from_ptr(buf.as_ptr())
    };
    Some(name.to_string_lossy().into_owned())
}

/// The index of the interface called `name`.
pub fn interface_index(name: &str) -> Option<u32> {
    if name.is_empty() || name.len() >= libc::IF_NAMESIZE {
        return None;
    }
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: `name` is a NUL-terminated string that outlives the call, which only reads it.
    #[allow(unsafe_code)]
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// Parses one address given to `pair CODE --addr`: `HOST:PORT` (names resolved) or
/// `[IPV6%ZONE]:PORT` with an interface name or number. A link-local address without its
/// zone is refused with a hint (it could not be dialled).
pub async fn parse(s: &str) -> Result<Vec<SocketAddr>, AddrError> {
    if s.len() > MAX_LEN {
        return Err(AddrError::TooLong);
    }
    let addrs = match zoned(s)? {
        Some(a) => vec![SocketAddr::V6(a)],
        None => crate::daemon::lookup::resolve(s).await?,
    };
    for a in &addrs {
        if let SocketAddr::V6(v6) = a {
            if v6.scope_id() == 0 && is_link_local(v6.ip()) {
                return Err(AddrError::NeedsZone(*a));
            }
        }
    }
    Ok(addrs)
}

/// `[IPV6%ZONE]:PORT`, or `None` for any other form.
fn zoned(s: &str) -> Result<Option<SocketAddrV6>, AddrError> {
    let Some(inner) = s.strip_prefix('[') else {
        return Ok(None);
    };
    let Some((host, rest)) = inner.split_once(']') else {
        return Ok(None);
    };
    let Some((ip, zone)) = host.split_once('%') else {
        return Ok(None);
    };
    let malformed = || AddrError::Malformed(s.to_string());
    let ip: Ipv6Addr = ip.parse().map_err(|_| malformed())?;
    let port: u16 = rest
        .strip_prefix(':')
        .and_then(|p| p.parse().ok())
        .ok_or_else(malformed)?;
    let scope = match zone.parse::<u32>() {
        Ok(n) => n,
        Err(_) => interface_index(zone).ok_or_else(|| AddrError::UnknownInterface {
            addr: s.to_string(),
            zone: zone.to_string(),
        })?,
    };
    Ok(Some(SocketAddrV6::new(ip, port, 0, scope)))
}

/// Where a window listening on every address at `port` can be reached: each of `ips`,
/// a link-local one once per interface that has it (with that zone).
pub fn window_addresses(ips: &[IpAddr], port: u16) -> Vec<SocketAddr> {
    let table = if ips
        .iter()
        .any(|ip| matches!(ip, IpAddr::V6(v6) if is_link_local(v6)))
    {
        read_if_inet6()
    } else {
        String::new()
    };
    let mut out = Vec::new();
    for ip in ips {
        match ip {
            IpAddr::V6(v6) if is_link_local(v6) => {
                let zones = zones_of(&table, v6);
                if zones.is_empty() {
                    out.push(SocketAddr::new(*ip, port));
                }
                for z in zones {
                    out.push(SocketAddr::V6(SocketAddrV6::new(*v6, port, 0, z)));
                }
            }
            _ => out.push(SocketAddr::new(*ip, port)),
        }
    }
    out
}

fn read_if_inet6() -> String {
    use std::io::Read;
    let mut s = String::new();
    if let Ok(f) = std::fs::File::open("/proc/net/if_inet6") {
        let _ = f.take(MAX_IF_INET6).read_to_string(&mut s);
    }
    s
}

/// The interfaces holding `ip` in a `/proc/net/if_inet6` table (lines of: address as 32
/// hex digits, interface index in hex, prefix length, scope, flags, name).
fn zones_of(table: &str, ip: &Ipv6Addr) -> Vec<u32> {
    let want = ip
        .octets()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let mut zones: Vec<u32> = table
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (addr, index) = (f.next()?, f.next()?);
            (addr.eq_ignore_ascii_case(&want))
                .then(|| u32::from_str_radix(index, 16).ok())
                .flatten()
        })
        .filter(|&z| z != 0)
        .collect();
    zones.sort_unstable();
    zones.dedup();
    zones
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`super::parse`], waited for.
    fn parse(s: &str) -> Result<Vec<SocketAddr>, AddrError> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(super::parse(s))
    }

    fn lo() -> u32 {
        interface_index("lo").expect("a loopback interface")
    }

    #[test]
    fn zones_are_shown_by_interface_name() {
        let a: SocketAddr = format!("[fe80::1%{}]:41532", lo()).parse().unwrap();
        assert_eq!(Shown(a).to_string(), "[fe80::1%lo]:41532");
        // No interface with that index: the number.
        let a: SocketAddr = "[fe80::1%4000000]:7".parse().unwrap();
        assert_eq!(Shown(a).to_string(), "[fe80::1%4000000]:7");
        for plain in ["10.0.0.1:5", "[2001:db8::1]:5"] {
            let a: SocketAddr = plain.parse().unwrap();
            assert_eq!(Shown(a).to_string(), plain);
        }
    }

    #[test]
    fn zones_are_accepted_by_name_or_number() {
        let want = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 9, 0, lo()));
        assert_eq!(parse("[fe80::1%lo]:9").unwrap(), vec![want]);
        assert_eq!(parse(&format!("[fe80::1%{}]:9", lo())).unwrap(), vec![want]);
        // What is shown is accepted back.
        assert_eq!(parse(&Shown(want).to_string()).unwrap(), vec![want]);
        assert_eq!(
            parse("127.0.0.1:9").unwrap(),
            vec!["127.0.0.1:9".parse::<SocketAddr>().unwrap()]
        );
        assert!(matches!(
            parse("[fe80::1%nosuchif0]:9"),
            Err(AddrError::UnknownInterface { .. })
        ));
        assert!(matches!(parse("[fe80::1]:9"), Err(AddrError::NeedsZone(_))));
        assert!(parse("[fe80::1]:9")
            .unwrap_err()
            .to_string()
            .contains("[fe80::1%eth0]:9"));
        for bad in [
            "[fe80::1%lo]",
            "[fe80::1%lo]:x",
            "[zz%lo]:9",
            "[fe80::1%lo]:99999",
        ] {
            assert!(matches!(parse(bad), Err(AddrError::Malformed(_))), "{bad}");
        }
        assert!(matches!(parse(&"1".repeat(400)), Err(AddrError::TooLong)));
        assert!(matches!(parse("[fe80::1%lo:9"), Err(AddrError::Resolve(_))));
    }

    #[test]
    fn link_local_window_addresses_carry_their_interfaces() {
        let table = "\
fe800000000000000000000000000001 02 40 20 80     eth0
fe800000000000000000000000000001 05 40 20 80     wlan0
20010db8000000000000000000000001 02 40 00 80     eth0
garbage
";
        let ip: Ipv6Addr = "fe80::1".parse().unwrap();
        assert_eq!(zones_of(table, &ip), vec![2, 5]);
        assert!(zones_of(table, &"fe80::2".parse().unwrap()).is_empty());
        assert!(is_link_local(&ip));
        assert!(is_link_local(&"febf::1".parse().unwrap()));
        assert!(!is_link_local(&"fec0::1".parse().unwrap()));
        assert!(!is_link_local(&"2001:db8::1".parse().unwrap()));
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            window_addresses(&[v4], 7),
            vec!["10.0.0.1:7".parse::<SocketAddr>().unwrap()]
        );
    }
}
