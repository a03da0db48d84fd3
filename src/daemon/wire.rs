//! Every frame one daemon sends another, in one place: mesh streams ([`MeshFrame`]),
//! messages ([`MsgHeader`], [`LaneMsg`], [`LaneResult`], [`MsgResult`]), application
//! streams ([`AppFrame`]), store sync ([`Up`], [`Down`]) and pairing ([`PairMsg`]).
//!
//! Frames are bincode (see `transport::frame`) behind a 4-byte length. Enum variants are
//! only ever appended and fields never reordered: the layout tests at the end pin the
//! encoding of each type, so a change of wire format fails a test.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use transport::DeviceId;

use super::roster::RosterSnapshot;
use crate::store::reconcile::{ReconMsg, ReconReply};
use crate::store::{Change, Delta, VersionVector};

/// One frame of a mesh stream. Variants are only ever appended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MeshFrame {
    /// The sender's whole signed roster.
    Roster(RosterSnapshot),
    /// Addresses where the sender reaches other members right now (address gossip).
    Addrs(Vec<(DeviceId, Vec<SocketAddr>)>),
    /// A membership-protocol message (encoded by the `membership` crate).
    Membership(Vec<u8>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MsgHeader {
    pub id: String,
    pub tag: String,
    pub body_len: u64,
    pub reply: bool,
    /// Set by the sender when the stream goes to a relay: the final recipient.
    pub relay_to: Option<DeviceId>,
    /// Set by a relay: the member the message really comes from.
    pub origin: Option<DeviceId>,
    /// A ping: acknowledged by the recipient's daemon, no handler runs.
    pub ping: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaneMsg {
    pub seq: u64,
    pub header: MsgHeader,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaneResult {
    pub seq: u64,
    pub result: MsgResult,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MsgResult {
    Ack,
    Nack { code: String, message: String },
    Replies(Vec<WireReply>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireReply {
    pub handler: String,
    pub exit_code: Option<i32>,
    pub stdout: Vec<u8>,
    pub timed_out: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AppFrame {
    Open {
        service: String,
    },
    Ok,
    Err {
        code: String,
        message: String,
    },
    /// To a relay: open `service` on member `to` (which the relay reaches directly).
    Relay {
        service: String,
        to: DeviceId,
    },
    /// From a relay: a stream that member `origin` opened through it.
    Relayed {
        service: String,
        origin: DeviceId,
    },
}

/// Puller to server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Up {
    /// Opens a session: what the puller has seen, and how many keys it holds.
    Hello {
        version: u16,
        vv: VersionVector,
        items: u64,
    },
    /// The puller's vector now (for tombstone collection).
    Seen { vv: VersionVector },
    /// A reconciliation reply.
    Recon(ReconReply),
}

/// Server to puller.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Down {
    /// Changes the puller lacks; `through` raises its vector.
    Delta(Delta),
    /// A reconciliation message.
    Recon(ReconMsg),
    /// Current versions of keys the reconciliation found missing (vector not raised until
    /// the final [`Down::Delta`]).
    ReconChanges(Vec<Change>),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum PairMsg {
    Start {
        version: u16,
        name: String,
        port: u16,
        nonce: [u8; 32],
        spake: Vec<u8>,
    },
    Reply {
        name: String,
        port: u16,
        nonce: [u8; 32],
        spake: Vec<u8>,
    },
    Confirm {
        mac: Vec<u8>,
    },
    Welcome {
        mac: Vec<u8>,
        mesh_name: String,
        roster: RosterSnapshot,
    },
    Fail {
        reason: String,
    },
    Done,
}
