//! Pure logic of discovery: what we advertise, how an advertisement seen on the LAN is
//! validated, and how repeated resolutions are de-duplicated. No sockets, no clock.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};

use crate::{DiscoveryEvent, MAX_NAME_LEN};

/// Length of a device ID (SHA-256 in unpadded base32).
pub const ID_LEN: usize = 52;
/// Characters of the ID used in instance and host names.
pub const SHORT_ID_LEN: usize = 8;
/// Most devices tracked at once; advertisements of further devices are ignored.
pub const MAX_DEVICES: usize = 1024;
/// Most addresses kept per device (the lowest ones, in `SocketAddr` order).
pub const MAX_ADDRS: usize = 16;
/// Most TXT key/value pairs accepted in one advertisement.
pub const MAX_TXT_ENTRIES: usize = 16;
/// Most TXT bytes (keys + values) accepted in one advertisement.
pub const MAX_TXT_BYTES: usize = 1024;
/// Longest accepted `v` value.
pub const MAX_VERSION_LEN: usize = 16;

/// Longest DNS label.
const MAX_LABEL: usize = 63;

/// True if `id` is 52 characters of the RFC 4648 base32 alphabet (upper case, no padding).
pub fn is_valid_id(id: &str) -> bool {
    id.len() == ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
}

/// True if `name` can be advertised and accepted: at most [`MAX_NAME_LEN`] bytes of UTF-8
/// without control characters.
pub fn is_valid_name(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN && !name.chars().any(char::is_control)
}

/// Instance label: `<name> [<short id>]` in lower case, the name cut (at a character
/// boundary) so the label fits in 63 bytes; `cnspr` when the name is empty. `id` must be
/// valid.
///
/// Lower case because mdns-sd 0.21 keys its registrations by the lower-cased name but
/// looks up the RFC 6762 §8.3 repeated announcement by the name as given, so an
/// upper-case letter silently cancels that second announcement.
pub fn instance_name(name: &str, id: &str) -> String {
    let short = id[..SHORT_ID_LEN].to_ascii_lowercase();
    let lower = name.to_lowercase();
    let name = if lower.is_empty() {
        "cnspr"
    } else {
        lower.as_str()
    };
    let room = MAX_LABEL - SHORT_ID_LEN - 3; // " [" and "]"
    let mut end = name.len().min(room);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} [{short}]", &name[..end])
}

/// Host name: `cnspr-<short id, lower case>.local.`. `id` must be valid.
pub fn host_name(id: &str) -> String {
    format!("cnspr-{}.local.", id[..SHORT_ID_LEN].to_ascii_lowercase())
}

/// A validated advertisement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    /// Device ID (syntax checked).
    pub id: String,
    /// Name, empty if the advertisement had none.
    pub name: String,
    /// Protocol version (any short printable token; not compared here).
    pub version: String,
    /// Port of an open pairing window (`pair` key: a decimal UDP port, 1-65535).
    pub pair_port: Option<u16>,
}

/// Why an advertisement was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// More than [`MAX_TXT_ENTRIES`] pairs or [`MAX_TXT_BYTES`] bytes.
    #[error("TXT record too large")]
    TooLarge,
    /// No `id`, or not 52 base32 characters.
    #[error("missing or malformed id")]
    BadId,
    /// No `v`, or not a short token of `[0-9A-Za-z.-]`.
    #[error("missing or malformed version")]
    BadVersion,
    /// `name` not UTF-8, too long, or with control characters.
    #[error("malformed name")]
    BadName,
    /// A key appears twice with different values.
    #[error("duplicate key")]
    Duplicate,
    /// `pair` is not a port number.
    #[error("malformed pair port")]
    BadPair,
}

/// Validates the TXT pairs of an advertisement (`None` value: key without `=`).
pub fn parse_txt<'a, I>(pairs: I) -> Result<Advert, Rejected>
where
    I: IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
{
    let (mut id, mut version, mut name, mut pair) = (None, None, None, None);
    let (mut count, mut bytes) = (0usize, 0usize);
    for (key, value) in pairs {
        count += 1;
        bytes += key.len() + value.map_or(0, <[u8]>::len);
        if count > MAX_TXT_ENTRIES || bytes > MAX_TXT_BYTES {
            return Err(Rejected::TooLarge);
        }
        let slot = match key.to_ascii_lowercase().as_str() {
            "id" => &mut id,
            "v" => &mut version,
            "name" => &mut name,
            "pair" => &mut pair,
            _ => continue,
        };
        let value = value.unwrap_or_default();
        match slot {
            Some(prev) if *prev != value => return Err(Rejected::Duplicate),
            _ => *slot = Some(value),
        }
    }
    let id = id
        .and_then(|v| std::str::from_utf8(v).ok())
        .filter(|v| is_valid_id(v))
        .ok_or(Rejected::BadId)?;
    let version = version
        .filter(|v| {
            (1..=MAX_VERSION_LEN).contains(&v.len())
                && v.iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'.' || *b == b'-')
        })
        .ok_or(Rejected::BadVersion)?;
    let name = match name {
        None => "",
        Some(v) => std::str::from_utf8(v)
            .ok()
            .filter(|n| is_valid_name(n))
            .ok_or(Rejected::BadName)?,
    };
    let pair_port = match pair {
        None => None,
        Some(v) => Some(
            std::str::from_utf8(v)
                .ok()
                .filter(|p| (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|p| p.parse::<u16>().ok())
                .filter(|p| *p != 0)
                .ok_or(Rejected::BadPair)?,
        ),
    };
    Ok(Advert {
        pair_port,
        id: id.to_owned(),
        name: name.to_owned(),
        // Checked ASCII above.
        version: String::from_utf8_lossy(version).into_owned(),
    })
}

/// Turns resolved addresses (with the index of the interface each was seen on) into the
/// socket addresses to dial: drops unspecified, loopback, multicast and broadcast
/// addresses and IPv6 link-local ones with no known interface; gives IPv6 link-local
/// addresses their scope ID; sorts, de-duplicates and keeps at most [`MAX_ADDRS`].
pub fn socket_addrs(addrs: impl IntoIterator<Item = (IpAddr, u32)>, port: u16) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = addrs
        .into_iter()
        .filter_map(|(ip, ifindex)| match ip {
            IpAddr::V4(v4) => {
                let bad = v4.is_unspecified()
                    || v4.is_loopback()
                    || v4.is_multicast()
                    || v4.is_broadcast();
                (!bad).then(|| SocketAddr::new(ip, port))
            }
            IpAddr::V6(v6) => {
                if v6.is_unspecified() || v6.is_loopback() || v6.is_multicast() {
                    return None;
                }
                if let Some(v4) = v6.to_ipv4_mapped() {
                    return socket_addrs([(IpAddr::V4(v4), ifindex)], port).pop();
                }
                if v6.is_unicast_link_local() {
                    (ifindex != 0).then(|| SocketAddr::V6(SocketAddrV6::new(v6, port, 0, ifindex)))
                } else {
                    Some(SocketAddr::V6(SocketAddrV6::new(v6, port, 0, 0)))
                }
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out.truncate(MAX_ADDRS);
    out
}

#[derive(Debug)]
struct Device {
    name: String,
    version: String,
    pair_port: Option<u16>,
    addrs: Vec<SocketAddr>,
    /// Instance names currently resolving to this ID (normally one).
    instances: usize,
}

/// De-duplicates resolutions into [`DiscoveryEvent`]s.
///
/// Keyed by instance full name (what goodbyes refer to) and by device ID (what events
/// refer to). A `Found` is emitted only when a device is new or its address set, name or
/// version changed; `Lost` when its last instance is removed. Our own ID is ignored.
#[derive(Debug)]
pub struct Tracker {
    me: String,
    instances: HashMap<String, String>,
    devices: HashMap<String, Device>,
}

impl Tracker {
    /// A tracker that ignores advertisements of `me`.
    pub fn new(me: &str) -> Self {
        Self {
            me: me.to_owned(),
            instances: HashMap::new(),
            devices: HashMap::new(),
        }
    }

    /// Number of devices currently tracked.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// True when no device is tracked.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Instance `fullname` resolved to `advert` at `addrs` (already filtered).
    pub fn resolved(
        &mut self,
        fullname: &str,
        advert: Advert,
        addrs: Vec<SocketAddr>,
    ) -> Vec<DiscoveryEvent> {
        let mut out = Vec::new();
        if advert.id == self.me || addrs.is_empty() {
            return out;
        }
        let key = fullname.to_ascii_lowercase();
        match self.instances.get(&key) {
            Some(old) if *old == advert.id => {}
            Some(_) => out.extend(self.removed(&key)),
            None => {}
        }
        let known_instance = self.instances.contains_key(&key);
        if !self.devices.contains_key(&advert.id) && self.devices.len() >= MAX_DEVICES {
            tracing::warn!(id = %advert.id, "ignoring advertisement: already tracking {MAX_DEVICES} devices");
            return out;
        }
        if !known_instance && self.instances.len() >= 2 * MAX_DEVICES {
            tracing::warn!(instance = %key, "ignoring advertisement: too many instances");
            return out;
        }
        let device = self
            .devices
            .entry(advert.id.clone())
            .or_insert_with(|| Device {
                name: String::new(),
                version: String::new(),
                pair_port: None,
                addrs: Vec::new(),
                instances: 0,
            });
        if !known_instance {
            self.instances.insert(key, advert.id.clone());
            device.instances += 1;
        }
        if device.addrs != addrs
            || device.name != advert.name
            || device.version != advert.version
            || device.pair_port != advert.pair_port
        {
            device.pair_port = advert.pair_port;
            device.addrs.clone_from(&addrs);
            device.name.clone_from(&advert.name);
            device.version.clone_from(&advert.version);
            let pairing = advert.pair_port.map_or_else(Vec::new, |port| {
                addrs
                    .iter()
                    .map(|a| SocketAddr::new(a.ip(), port))
                    .map(|a| match a {
                        SocketAddr::V6(mut v6) => {
                            // Keep the interface scope of link-local addresses.
                            if let Some(SocketAddr::V6(o)) = addrs.iter().find(|o| o.ip() == a.ip())
                            {
                                v6.set_scope_id(o.scope_id());
                            }
                            SocketAddr::V6(v6)
                        }
                        v4 => v4,
                    })
                    .collect()
            });
            out.push(DiscoveryEvent::Found {
                id: advert.id,
                name: advert.name,
                addrs,
                version: advert.version,
                pairing,
            });
        }
        out
    }

    /// Instance `fullname` sent a goodbye or expired.
    pub fn removed(&mut self, fullname: &str) -> Option<DiscoveryEvent> {
        let id = self.instances.remove(&fullname.to_ascii_lowercase())?;
        let device = self.devices.get_mut(&id)?;
        device.instances -= 1;
        if device.instances > 0 {
            return None;
        }
        self.devices.remove(&id);
        Some(DiscoveryEvent::Lost { id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const A: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    const B: &str = "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB27";

    fn txt<'a>(
        pairs: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = (&'a str, Option<&'a [u8]>)> {
        pairs.iter().map(|(k, v)| (*k, Some(v.as_bytes())))
    }

    fn advert(id: &str) -> Advert {
        Advert {
            pair_port: None,
            id: id.into(),
            name: "n".into(),
            version: "1".into(),
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ids() {
        assert!(is_valid_id(A));
        assert!(is_valid_id(B));
        assert!(!is_valid_id(&A[1..]));
        assert!(!is_valid_id(&format!("{A}A")));
        assert!(!is_valid_id(&A.replace('A', "a")));
        assert!(!is_valid_id(&format!("{}1", &A[1..])));
        assert!(!is_valid_id(&format!("{}-", &A[1..])));
        assert!(!is_valid_id(&format!("{}É", &A[2..])));
    }

    #[test]
    fn names() {
        assert_eq!(instance_name("Laptop", A), "laptop [aaaaaaaa]");
        assert_eq!(instance_name("", A), "cnspr [aaaaaaaa]");
        let long = "é".repeat(40); // 80 bytes
        let inst = instance_name(&long, A);
        assert!(inst.len() <= MAX_LABEL, "{}", inst.len());
        assert!(inst.ends_with(" [aaaaaaaa]"));
        assert_eq!(host_name(B), "cnspr-bbbbbbbb.local.");
        assert!(is_valid_name("my laptop ✓"));
        assert!(!is_valid_name("a\nb"));
        assert!(!is_valid_name(&"x".repeat(64)));
    }

    #[test]
    fn txt_valid() {
        let a = parse_txt(txt(&[
            ("id", A),
            ("v", "1"),
            ("name", "desk"),
            ("other", "x"),
        ]))
        .unwrap();
        assert_eq!(
            a,
            Advert {
                pair_port: None,
                id: A.into(),
                name: "desk".into(),
                version: "1".into()
            }
        );
        // Keys are case-insensitive (RFC 6763 §6.4), name is optional, other versions pass.
        let a = parse_txt(txt(&[("ID", A), ("V", "2.0-beta")])).unwrap();
        assert_eq!((a.name.as_str(), a.version.as_str()), ("", "2.0-beta"));
        // A repeated identical key is harmless.
        assert!(parse_txt(txt(&[("id", A), ("id", A), ("v", "1")])).is_ok());
    }

    #[test]
    fn txt_rejected() {
        assert_eq!(parse_txt(txt(&[("v", "1")])), Err(Rejected::BadId));
        assert_eq!(
            parse_txt(txt(&[("id", "AAAA"), ("v", "1")])),
            Err(Rejected::BadId)
        );
        assert_eq!(
            parse_txt([("id", None), ("v", Some(&b"1"[..]))]),
            Err(Rejected::BadId)
        );
        assert_eq!(
            parse_txt([("id", Some(&[0xff; 52][..])), ("v", Some(&b"1"[..]))]),
            Err(Rejected::BadId)
        );
        assert_eq!(parse_txt(txt(&[("id", A)])), Err(Rejected::BadVersion));
        assert_eq!(
            parse_txt(txt(&[("id", A), ("v", "")])),
            Err(Rejected::BadVersion)
        );
        assert_eq!(
            parse_txt(txt(&[("id", A), ("v", "1 2")])),
            Err(Rejected::BadVersion)
        );
        assert_eq!(
            parse_txt(txt(&[("id", A), ("v", &"1".repeat(17))])),
            Err(Rejected::BadVersion)
        );
        assert_eq!(
            parse_txt(txt(&[("id", A), ("v", "1"), ("name", "a\u{7}")])),
            Err(Rejected::BadName)
        );
        assert_eq!(
            parse_txt([
                ("id", Some(A.as_bytes())),
                ("v", Some(&b"1"[..])),
                ("name", Some(&[0xc3][..]))
            ]),
            Err(Rejected::BadName)
        );
        assert_eq!(
            parse_txt(txt(&[("id", A), ("id", B), ("v", "1")])),
            Err(Rejected::Duplicate)
        );
        let many: Vec<(String, String)> =
            (0..17).map(|i| (format!("k{i}"), String::new())).collect();
        let many = many.iter().map(|(k, v)| (k.as_str(), Some(v.as_bytes())));
        assert_eq!(parse_txt(many), Err(Rejected::TooLarge));
        let big = "x".repeat(250);
        let pairs: Vec<(&str, &str)> = vec![
            ("id", A),
            ("v", "1"),
            ("a", &big),
            ("b", &big),
            ("c", &big),
            ("d", &big),
        ];
        assert_eq!(parse_txt(txt(&pairs)), Err(Rejected::TooLarge));
    }

    #[test]
    fn addresses() {
        let ll: Ipv6Addr = "fe80::1".parse().unwrap();
        let got = socket_addrs(
            [
                (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 3),
                (IpAddr::V4(Ipv4Addr::LOCALHOST), 1),
                (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 3),
                (IpAddr::V4(Ipv4Addr::new(224, 0, 0, 251)), 3),
                (IpAddr::V6(ll), 3),
                (IpAddr::V6(ll), 0),
                (IpAddr::V6("2001:db8::1".parse().unwrap()), 3),
                (IpAddr::V6(Ipv6Addr::LOCALHOST), 1),
                (IpAddr::V6("::ffff:10.0.0.2".parse().unwrap()), 3),
                (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 4),
            ],
            7373,
        );
        assert_eq!(
            got,
            vec![
                sa("10.0.0.2:7373"),
                sa("[2001:db8::1]:7373"),
                sa("[fe80::1%3]:7373")
            ]
        );
        if let SocketAddr::V6(v6) = got[2] {
            assert_eq!(v6.scope_id(), 3);
        }
        let many = (0..100u8).map(|i| (IpAddr::V4(Ipv4Addr::new(10, 0, 1, i)), 2));
        assert_eq!(socket_addrs(many, 1).len(), MAX_ADDRS);
    }

    #[test]
    fn dedup_and_lost() {
        let mut t = Tracker::new(A);
        let one = vec![sa("10.0.0.2:1")];
        let two = vec![sa("10.0.0.2:1"), sa("[fe80::2%3]:1")];
        // Own announcement ignored.
        assert!(t
            .resolved("me._cnspr._udp.local.", advert(A), one.clone())
            .is_empty());
        let ev = t.resolved("b._cnspr._udp.local.", advert(B), one.clone());
        assert!(
            matches!(&ev[..], [DiscoveryEvent::Found { id, addrs, .. }] if id == B && *addrs == one)
        );
        // Same id, same address set: nothing.
        assert!(t
            .resolved("B._cnspr._udp.local.", advert(B), one.clone())
            .is_empty());
        // New address set: Found again.
        assert_eq!(
            t.resolved("b._cnspr._udp.local.", advert(B), two.clone())
                .len(),
            1
        );
        // Rename: Found again.
        let renamed = Advert {
            name: "m".into(),
            ..advert(B)
        };
        assert_eq!(
            t.resolved("b._cnspr._udp.local.", renamed, two.clone())
                .len(),
            1
        );
        // No addresses: ignored.
        assert!(t
            .resolved("c._cnspr._udp.local.", advert(B), vec![])
            .is_empty());
        // A second instance of the same ID: Lost only after both are gone.
        assert!(t
            .resolved(
                "b (2)._cnspr._udp.local.",
                Advert {
                    name: "m".into(),
                    ..advert(B)
                },
                two
            )
            .is_empty());
        assert_eq!(t.removed("b._cnspr._udp.local."), None);
        assert_eq!(
            t.removed("b (2)._cnspr._udp.local."),
            Some(DiscoveryEvent::Lost { id: B.into() })
        );
        assert_eq!(t.removed("b (2)._cnspr._udp.local."), None);
        assert!(t.is_empty());
    }

    #[test]
    fn instance_changes_owner() {
        let mut t = Tracker::new(A);
        let one = vec![sa("10.0.0.2:1")];
        t.resolved("x._cnspr._udp.local.", advert(B), one.clone());
        let c = "C".repeat(52);
        let ev = t.resolved("x._cnspr._udp.local.", advert(&c), one);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0], DiscoveryEvent::Lost { id: B.into() });
        assert!(matches!(&ev[1], DiscoveryEvent::Found { id, .. } if *id == c));
    }

    #[test]
    fn bounded() {
        let mut t = Tracker::new(A);
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        for i in 0..(MAX_DEVICES + 10) {
            let mut id = vec![b'A'; ID_LEN];
            id[0] = alphabet[i % 32];
            id[1] = alphabet[(i / 32) % 32];
            id[2] = b'7';
            let id = String::from_utf8(id).unwrap();
            t.resolved(
                &format!("{i}._cnspr._udp.local."),
                advert(&id),
                vec![sa("10.0.0.2:1")],
            );
        }
        assert_eq!(t.len(), MAX_DEVICES);
    }

    #[test]
    fn pairing_window() {
        let ok = parse_txt(txt(&[("id", A), ("v", "1"), ("pair", "40123")])).unwrap();
        assert_eq!(ok.pair_port, Some(40123));
        for bad in ["0", "65536", "-1", "12a", "", "123456"] {
            assert_eq!(
                parse_txt(txt(&[("id", A), ("v", "1"), ("pair", bad)])),
                Err(Rejected::BadPair),
                "{bad:?}"
            );
        }
        let mut t = Tracker::new(A);
        let addrs = vec![sa("10.0.0.2:7373"), sa("[fe80::1%3]:7373")];
        assert_eq!(
            t.resolved("b._cnspr._udp.local.", advert(B), addrs.clone())
                .len(),
            1
        );
        // The window opens: Found again, with the pairing addresses (scope kept).
        let ev = t.resolved(
            "b._cnspr._udp.local.",
            Advert {
                pair_port: Some(4000),
                ..advert(B)
            },
            addrs.clone(),
        );
        match &ev[..] {
            [DiscoveryEvent::Found { pairing, .. }] => {
                assert_eq!(*pairing, vec![sa("10.0.0.2:4000"), sa("[fe80::1%3]:4000")]);
            }
            other => panic!("{other:?}"),
        }
        // Closes: Found again, no pairing addresses.
        let ev = t.resolved("b._cnspr._udp.local.", advert(B), addrs);
        assert!(matches!(&ev[..], [DiscoveryEvent::Found { pairing, .. }] if pairing.is_empty()));
    }
}
