//! The peer table: trusted devices, their addresses and their states, persisted in
//! `STATE_DIR/peers.json`.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use transport::DeviceId;

use super::dial::Dial;
use super::wol::LanIface;
use crate::api::{code, ErrorBody, PeerInfo};

/// File of trusted peers inside the state directory.
pub const PEERS_FILE: &str = "peers.json";
/// Most addresses remembered per peer.
pub const MAX_ADDRS: usize = 16;

/// Peer states (docs/api.md, `peers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    Active,
    Suspect,
    /// Reached through another member (relaying comes with the membership work).
    #[allow(dead_code)]
    Indirect,
    Unreachable,
    Left,
    Removed,
    /// Not trusted until the person decides: removed by a member it removed.
    Conflict,
}

impl PeerState {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Active => "active",
            PeerState::Suspect => "suspect",
            PeerState::Indirect => "indirect",
            PeerState::Unreachable => "unreachable",
            PeerState::Left => "left",
            PeerState::Removed => "removed",
            PeerState::Conflict => "conflict",
        }
    }
}

/// How a peer is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A connection of our own (on the LAN or across the internet).
    Direct,
    /// Relayed by this member.
    Member(DeviceId),
    /// A connection of our own through a `cnspr relay` (see [`Peer::relay`]).
    Relay,
}

impl Route {
    /// The route that a peer in `state`, relayed by `via` while indirect, and whose
    /// connection goes through a relay when `relayed`, is reached by.
    pub fn of(state: PeerState, via: Option<DeviceId>, relayed: bool) -> Option<Route> {
        match state {
            PeerState::Active | PeerState::Suspect if relayed => Some(Route::Relay),
            PeerState::Active | PeerState::Suspect => Some(Route::Direct),
            PeerState::Indirect => via.map(Route::Member),
            _ => None,
        }
    }
}

/// One peer as this daemon sees it.
#[derive(Debug, Clone)]
pub struct Peer {
    pub id: DeviceId,
    pub name: String,
    /// Known addresses, most recently working first.
    pub addrs: Vec<SocketAddr>,
    pub state: PeerState,
    /// Wall-clock time the peer was last heard from.
    pub last_seen: Option<SystemTime>,
    /// Monotonic time the peer last answered.
    pub last_heard: Option<Instant>,
    pub rtt: Option<Duration>,
    /// Current connection address.
    pub addr: Option<SocketAddr>,
    /// When to dial it next (see `dial`).
    pub dial: Dial,
    /// The relay member while `indirect`.
    pub via: Option<DeviceId>,
    /// RTT as the membership core sees it (the sum over the path when relayed).
    pub path_rtt: Option<Duration>,
    /// How it is reached now, and since when.
    pub route: Option<(Route, SystemTime)>,
    /// The relay (`HOST:PORT`) its connection goes through, if it does.
    pub relay: Option<String>,
    /// Its Ethernet interfaces, as it last told this device itself (Wake-on-LAN).
    pub lan: Vec<LanIface>,
    /// Addresses mDNS announced for it, not yet confirmed by a handshake: dialled after
    /// the known ones, never in their place (anyone on the LAN can announce any ID).
    pub heard: Vec<SocketAddr>,
    /// When mDNS last made it be dialled at once (at most every [`HEARD_EVERY`]).
    pub heard_at: Option<Instant>,
}

/// Most unconfirmed mDNS addresses kept for a peer.
pub const MAX_HEARD: usize = 8;
/// mDNS makes a peer be dialled at once at most this often.
pub const HEARD_EVERY: Duration = Duration::from_secs(10);

impl Peer {
    pub fn new(id: DeviceId, name: String, addrs: Vec<SocketAddr>) -> Self {
        Peer {
            id,
            name,
            addrs,
            state: PeerState::Unreachable,
            last_seen: None,
            last_heard: None,
            rtt: None,
            addr: None,
            dial: Dial::new(Instant::now()),
            via: None,
            path_rtt: None,
            route: None,
            relay: None,
            lan: Vec::new(),
            heard: Vec::new(),
            heard_at: None,
        }
    }

    /// Takes `addrs`, announced by mDNS, as candidates: those not known already, newest
    /// first, at most [`MAX_HEARD`]. True when it is worth dialling at once (something
    /// new, and not within [`HEARD_EVERY`] of the last time).
    pub fn heard_of(&mut self, addrs: &[SocketAddr], now: Instant) -> bool {
        let mut new = false;
        for a in addrs.iter().rev() {
            if self.addrs.contains(a) {
                continue;
            }
            new |= !self.heard.contains(a);
            self.heard.retain(|h| h != a);
            self.heard.insert(0, *a);
        }
        self.heard.truncate(MAX_HEARD);
        let due = self
            .heard_at
            .is_none_or(|t| now.duration_since(t) >= HEARD_EVERY);
        if new && due {
            self.heard_at = Some(now);
        }
        new && due
    }

    /// Where to dial it: the known addresses, then the unconfirmed ones.
    pub fn dial_addrs(&self) -> Vec<SocketAddr> {
        let mut v = self.addrs.clone();
        v.extend(self.heard.iter().filter(|a| !self.addrs.contains(a)));
        v
    }

    pub fn info(&self) -> PeerInfo {
        let mut addresses: Vec<String> = Vec::new();
        if let Some(a) = self.addr {
            addresses.push(a.to_string());
        }
        for a in &self.addrs {
            let s = a.to_string();
            if !addresses.contains(&s) {
                addresses.push(s);
            }
        }
        let connected = matches!(self.state, PeerState::Active | PeerState::Suspect);
        let rtt = match self.state {
            PeerState::Indirect => self.path_rtt,
            _ if connected => self.rtt.or(self.path_rtt),
            _ => None,
        };
        PeerInfo {
            id: self.id.to_string(),
            name: self.name.clone(),
            state: self.state.as_str().to_string(),
            addresses,
            rtt_ms: rtt.map(|r| (r.as_secs_f64() * 1e6).round() / 1e3),
            via: None,
            path: None,
            last_seen: self
                .last_seen
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
            interfaces: self
                .lan
                .iter()
                .map(|i| crate::api::IfaceInfo {
                    mac: super::wol::mac_text(&i.mac),
                    addr: format!("{}/{}", i.addr, i.prefix),
                })
                .collect(),
        }
    }

    /// Puts `addr` first in the known addresses.
    pub fn remember(&mut self, addr: SocketAddr) -> bool {
        // Confirmed now: no longer a candidate.
        self.heard.retain(|h| *h != addr);
        if self.addrs.first() == Some(&addr) {
            return false;
        }
        let new = !self.addrs.contains(&addr);
        self.addrs.retain(|a| *a != addr);
        self.addrs.insert(0, addr);
        self.addrs.truncate(MAX_ADDRS);
        new
    }
}

#[derive(Debug, Serialize)]
struct Stored {
    peers: Vec<StoredPeer>,
    removed: Vec<StoredRemoved>,
}

#[derive(Debug, Deserialize)]
struct StoredIn {
    peers: Vec<StoredPeer>,
    #[serde(default)]
    removed: Vec<RemovedEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredRemoved {
    id: String,
    #[serde(default)]
    name: String,
}

/// A removed entry: `{id, name}`, or a bare ID string as earlier files had it.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RemovedEntry {
    Full(StoredRemoved),
    Id(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredPeer {
    id: String,
    name: String,
    #[serde(default)]
    addrs: Vec<String>,
    /// Wake-on-LAN interfaces (see `wol.rs`), checked again when loaded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    lan: Vec<LanIface>,
}

/// All peers, keyed by device ID.
#[derive(Debug, Default)]
pub struct PeerTable {
    pub peers: HashMap<DeviceId, Peer>,
    /// Devices removed from the mesh (kept so that `peers` shows them as `removed`).
    pub removed: HashMap<DeviceId, String>,
    /// Names of the devices in a conflict of removals, as they were known here (not
    /// saved: the roster knows who is in conflict).
    pub conflicted: HashMap<DeviceId, String>,
    path: PathBuf,
}

impl PeerTable {
    /// Loads `STATE_DIR/peers.json` (missing: empty). A corrupt file is an error, never an
    /// empty roster.
    pub fn load(state_dir: &Path) -> anyhow::Result<Self> {
        let path = state_dir.join(PEERS_FILE);
        let mut table = PeerTable {
            path: path.clone(),
            ..Default::default()
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(table),
            Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
        };
        let stored: StoredIn = serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "{} is corrupt ({e}); fix or remove it (removing forgets every trusted peer)",
                path.display()
            )
        })?;
        for p in stored.peers {
            let id: DeviceId =
                p.id.parse()
                    .map_err(|e| anyhow::anyhow!("{}: bad id {:?}: {e}", path.display(), p.id))?;
            let addrs = p.addrs.iter().filter_map(|a| a.parse().ok()).collect();
            let mut peer = Peer::new(id, p.name, addrs);
            peer.lan = super::wol::merge(&[], &p.lan).unwrap_or_default();
            table.peers.insert(id, peer);
        }
        for r in stored.removed {
            let (id, name) = match r {
                RemovedEntry::Full(r) => (r.id, r.name),
                RemovedEntry::Id(id) => (id, String::new()),
            };
            if let Ok(id) = id.parse() {
                table.removed.insert(id, name);
            }
        }
        Ok(table)
    }

    /// Writes the table atomically.
    pub fn save(&self) -> std::io::Result<()> {
        let mut peers: Vec<StoredPeer> = self
            .peers
            .values()
            .map(|p| StoredPeer {
                id: p.id.to_string(),
                name: p.name.clone(),
                addrs: p.addrs.iter().map(|a| a.to_string()).collect(),
                lan: p.lan.clone(),
            })
            .collect();
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        let stored = Stored {
            peers,
            removed: self
                .removed
                .iter()
                .map(|(id, name)| StoredRemoved {
                    id: id.to_string(),
                    name: name.clone(),
                })
                .collect(),
        };
        let json = serde_json::to_vec_pretty(&stored).map_err(std::io::Error::other)?;
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }

    /// Finds a peer by exact name, full ID or unambiguous ID prefix.
    pub fn resolve(&self, query: &str) -> Result<DeviceId, ErrorBody> {
        let by_name: Vec<&Peer> = self.peers.values().filter(|p| p.name == query).collect();
        if by_name.len() == 1 {
            return Ok(by_name[0].id);
        }
        if by_name.len() > 1 {
            // Two members carry the name (one may have taken another's): never guess.
            let ids: Vec<String> = by_name.iter().map(|p| p.id.to_string()).collect();
            return Err(ErrorBody::new(
                code::AMBIGUOUS_PEER,
                format!(
                    "{} devices are named {query:?}: {}; give the ID (see `cnspr peers`)",
                    ids.len(),
                    ids.join(", ")
                ),
            ));
        }
        match transport::resolve_prefix(query, self.peers.keys()) {
            Ok(id) if self.peers.contains_key(&id) => Ok(id),
            Ok(id) => Err(ErrorBody::new(
                code::UNKNOWN_PEER,
                format!("device {id} is not a trusted peer; trust it with `cnspr trust {id}`"),
            )),
            Err(transport::IdError::Ambiguous { count, .. }) => Err(ErrorBody::new(
                code::AMBIGUOUS_PEER,
                format!("{query:?} matches {count} peers; give more of the ID or the name"),
            )),
            Err(_) => Err(ErrorBody::new(
                code::UNKNOWN_PEER,
                format!("no peer named {query:?} or with an ID starting so; see `cnspr peers`"),
            )),
        }
    }

    /// The name of trusted peer `id`, if it is one.
    /// Whether peer `id`'s name is its alone: no other peer carries it, nor this device
    /// (`own`). A member can take another's name (its own signed entry); where two carry
    /// one, a `@NAME` handler filter matches neither.
    pub fn name_unique(&self, id: &DeviceId, own: &str) -> bool {
        self.peers.get(id).is_some_and(|p| {
            p.name != own && self.peers.values().filter(|q| q.name == p.name).count() == 1
        })
    }

    pub fn name_of(&self, id: &DeviceId) -> Option<String> {
        self.peers.get(id).map(|p| p.name.clone())
    }

    /// A peer's name, or its short ID when it is not in the table.
    pub fn display_name(&self, id: &DeviceId) -> String {
        self.peers
            .get(id)
            .map_or_else(|| id.short(), |v| v.name.clone())
    }

    /// `route` as the API shows it.
    pub fn path_info(&self, p: &Peer) -> Option<crate::api::PathInfo> {
        let (route, since) = p.route?;
        let (kind, via) = match route {
            Route::Direct => ("direct", None),
            Route::Member(m) => ("member", Some(self.display_name(&m))),
            Route::Relay => ("relay", p.relay.clone()),
        };
        Some(crate::api::PathInfo {
            kind: kind.into(),
            via,
            since: since
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        })
    }

    /// Takes each live connection's current RTT (QUIC's smoothed estimate, updated with
    /// every acknowledged packet), so `peers` never shows a connection's first moments.
    pub fn refresh_rtts(&mut self, conns: &[transport::PeerConn]) {
        for pc in conns {
            if let Some(p) = self.peers.get_mut(&pc.peer) {
                p.rtt = Some(pc.rtt());
            }
        }
    }

    pub fn infos(&self) -> Vec<PeerInfo> {
        let mut v: Vec<PeerInfo> = self
            .peers
            .values()
            .map(|p| {
                let mut i = p.info();
                if let Some(via) = p.via {
                    i.via = Some(vec![self.display_name(&via)]);
                    // Indirect: heard through the member that relays it, as recently as
                    // that member was heard (its link to the peer is live).
                    if p.state == PeerState::Indirect {
                        let relay = self.peers.get(&via).and_then(|m| m.last_seen);
                        let seen = p.last_seen.max(relay);
                        i.last_seen = seen
                            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                            .map(|d| d.as_secs());
                    }
                }
                i.path = self.path_info(p);
                i
            })
            .collect();
        for (id, name) in &self.removed {
            // A name a member has now (a device paired again under its old name) is
            // that member's alone: the removed entry is shown by its ID.
            let taken = self.peers.values().any(|p| p.name == *name);
            v.push(PeerInfo {
                id: id.to_string(),
                name: if taken { String::new() } else { name.clone() },
                state: PeerState::Removed.as_str().into(),
                addresses: vec![],
                rtt_ms: None,
                via: None,
                last_seen: None,
                path: None,
                interfaces: Vec::new(),
            });
        }
        v.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What mDNS announces for a member (anyone on the LAN can announce any ID) is only
    /// a candidate: dialled after the known addresses, never in their place, confirmed
    /// by a handshake; and it makes the peer be dialled at once at most every 10 s.
    #[test]
    fn mdns_addresses_are_candidates_and_never_evict_a_working_one() {
        let working: SocketAddr = "192.168.1.20:7373".parse().unwrap();
        let mut p = Peer::new(DeviceId([7; 32]), "laptop".into(), vec![working]);
        let bogus: Vec<SocketAddr> = (1..=20)
            .map(|i| format!("10.9.9.{i}:7373").parse().unwrap())
            .collect();
        let t0 = Instant::now();
        assert!(p.heard_of(&bogus, t0), "new addresses: dial now");
        assert_eq!(p.addrs, vec![working], "the working address stays, alone");
        assert_eq!(p.heard.len(), MAX_HEARD);
        assert_eq!(
            p.dial_addrs()[0],
            working,
            "known addresses are dialled first"
        );
        // More announcements within 10 s do not make it dial again at once.
        let more: SocketAddr = "10.9.9.99:7373".parse().unwrap();
        assert!(!p.heard_of(&[more], t0 + Duration::from_secs(1)));
        assert!(p.heard.contains(&more));
        assert!(p.heard_of(&["10.9.9.98:7373".parse().unwrap()], t0 + HEARD_EVERY));
        // A known address announced again is nothing new.
        assert!(!p.heard_of(&[working], t0 + HEARD_EVERY * 3));
        // A handshake on a candidate confirms it.
        p.remember(more);
        assert_eq!(p.addrs, vec![more, working]);
        assert!(!p.heard.contains(&more));
    }
}
