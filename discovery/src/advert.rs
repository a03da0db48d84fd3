//! Pure logic of discovery: what we advertise, how an advertisement seen on the LAN is
//! validated, and how repeated resolutions are de-duplicated. No sockets, no clock.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};

use crate::types::{DiscoveryEvent, MAX_NAME_LEN};

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
mod tests;
