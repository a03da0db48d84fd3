//! The `status` result and the types it is made of.

use serde::{Deserialize, Serialize};

/// `status` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub id: String,
    pub name: String,
    pub listen: Vec<String>,
    pub peers: usize,
    pub active: usize,
    pub version: String,
    pub uptime_s: u64,
    pub pid: u32,
    pub state_dir: String,
    pub socket: String,
    pub handlers: String,
    /// Gossip counters since start.
    #[serde(default)]
    pub gossip: GossipCounters,
    /// Heartbeat counters since start; `None` when heartbeats are off.
    #[serde(default)]
    pub heartbeats: Option<HeartbeatCounters>,
    /// What became of the membership records members sent, since start.
    #[serde(default)]
    pub records: RecordCounters,
    /// Addresses where devices beyond the LAN may reach this one (docs/reach.md).
    #[serde(default)]
    pub candidates: Vec<Candidate>,
    /// The mesh's relays and this device's registration with each.
    #[serde(default)]
    pub relays: Vec<RelayInfo>,
    /// Datagrams this device passed on between two other members since start
    /// (docs/reach.md, "Members relay packets").
    #[serde(default)]
    pub forwarded_for_members: u64,
    /// What became of the connection attempts other devices made since start
    /// (docs/protocol.md, "Handshakes under way").
    #[serde(default)]
    pub handshakes: HandshakeCounters,
    /// Set when a member told this device that it was removed from the mesh.
    #[serde(default)]
    pub removed: Option<RemovedInfo>,
    /// Members not trusted until the person decides (a conflict of removals), each as a
    /// sentence naming who removed whom and the command that decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<String>,
    /// How closely this device is watched: `battery` (one beat per 20 s, its absence
    /// seen within a minute) or `mains`; and how it was chosen (`auto` from the power
    /// supply, or `config`). docs/membership.md, "Battery profile".
    #[serde(default)]
    pub profile: Option<ProfileInfo>,
}

/// The power profile in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileInfo {
    /// `battery` or `mains`.
    pub current: String,
    /// `auto` or `config`.
    pub source: String,
}

/// This device was removed from the mesh (`status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedInfo {
    /// The name of the member that removed it.
    pub by: String,
    /// When (Unix seconds, from the signed removal).
    pub at: u64,
}

/// One relay of the mesh, as this device uses it (`relay.list`, `status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayInfo {
    /// `HOST:PORT`.
    pub addr: String,
    /// `registered` or `connecting`.
    pub state: String,
    /// `udp` or `tcp` while registered.
    #[serde(default)]
    pub transport: Option<String>,
    /// This device's address as the relay sees it.
    #[serde(default)]
    pub observed: Option<String>,
    /// Why it is not registered, when known.
    #[serde(default)]
    pub problem: Option<String>,
}

/// One address where this device may be reached (`status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// `HOST:PORT`.
    pub addr: String,
    /// `local` (a public address of an interface), `observed` (where peers see this
    /// device's connections come from) or `mapped` (a port the router forwards).
    pub kind: String,
    /// For `observed`: the peers that saw it.
    #[serde(default)]
    pub from: Vec<String>,
}

/// Liveness heartbeats (docs/protocol.md, "Heartbeats") since start.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HeartbeatCounters {
    pub sent: u64,
    pub received: u64,
    /// Datagrams on the heartbeat socket that were no valid heartbeat of a live connection.
    pub rejected: u64,
}

/// Incoming handshakes (`status`): under way now, the most at once, and how connection
/// attempts were answered since start.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HandshakeCounters {
    pub under_way: usize,
    pub peak: usize,
    /// Handshakes started.
    pub accepted: u64,
    /// Answered with a QUIC Retry instead (address not validated, under load).
    pub retried: u64,
    /// Refused without a handshake (too many under way from the address).
    pub refused: u64,
    /// Handshakes under way dropped to make room for a validated newcomer.
    pub evicted: u64,
}

/// Membership records received from members since start, by their seal (docs/protocol.md,
/// "Record seals").
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RecordCounters {
    /// Records whose origin's seal was verified.
    pub verified: u64,
    /// Records taken as one verified before (gossip brings each from several members).
    pub known: u64,
    /// Records refused: their seal was not their origin's.
    pub refused: u64,
    /// Records dropped unchecked: their sender had sent a bad seal lately, or was over
    /// its verification budget.
    pub unchecked: u64,
}

/// Roster gossip frames sent to and received from members since start.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GossipCounters {
    pub roster_sent: u64,
    pub roster_received: u64,
}
