//! Every frame one daemon sends another, in one place: mesh streams ([`MeshFrame`]),
//! messages ([`MsgHeader`], [`LaneMsg`], [`LaneResult`], [`MsgResult`]), application
//! streams ([`AppFrame`]), store sync ([`Up`], [`Down`]) and pairing ([`PairMsg`]).
//!
//! Frames are bincode (see `transport::frame`) behind a 4-byte length. Enum variants are
//! only ever appended and fields never reordered: the layout tests at the end pin the
//! encoding of each type, so a change of wire format fails a test.

use std::net::{SocketAddr, SocketAddrV4};

use serde::{Deserialize, Serialize};
use transport::DeviceId;

use super::relays::RelayEntry;
use super::roster::RosterSnapshot;
use super::wol::LanIface;
use crate::store::reconcile::{ReconMsg, ReconReply};
use crate::store::{BatchRange, Change, Delta, VersionVector};

/// One frame of a mesh stream. Variants are only ever appended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MeshFrame {
    /// The sender's whole signed roster.
    Roster(RosterSnapshot),
    /// Addresses where the sender reaches other members right now (address gossip).
    Addrs(Vec<(DeviceId, Vec<SocketAddr>)>),
    /// A membership-protocol message (encoded by the `membership` crate).
    Membership(Vec<u8>),
    /// Hole punching between two members that reach each other through this one or
    /// through the sender (`punch.rs`): passed on by the member in between.
    Punch(Punch),
    /// The sender's signed relay entries (`relays.rs`), sent with the roster.
    Relays(Vec<RelayEntry>),
    /// The sender's own Ethernet interfaces (Wake-on-LAN, `wake.rs`): taken only from
    /// the device itself, never passed on.
    Lan(Vec<LanIface>),
    /// A wake request to a member on the sleeping device's LAN, or its answer.
    Wake(WakeMsg),
}

/// `cnspr wake` between members (`wake.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WakeMsg {
    /// Send the magic packet for `target` on its LAN; `force`: even if it looks awake.
    Ask {
        id: u64,
        target: DeviceId,
        force: bool,
    },
    /// The packets sent: per MAC, the interface and the destinations.
    Sent { id: u64, sent: Vec<WakeSent> },
    /// Nothing sent, with an error code and message (as on the control socket).
    Failed {
        id: u64,
        code: String,
        message: String,
    },
}

/// One magic packet's worth of a [`WakeMsg::Sent`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WakeSent {
    pub mac: [u8; 6],
    pub iface: String,
    pub to: Vec<SocketAddrV4>,
}

/// One step of a hole-punching exchange between `from` and `to`, carried through a
/// member both are connected to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Punch {
    pub from: DeviceId,
    pub to: DeviceId,
    /// Chosen by the side that started the exchange; the same in every step.
    pub session: u64,
    pub step: PunchStep,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PunchStep {
    /// The initiator's candidate addresses; the round trip is timed from here.
    Connect(Vec<SocketAddr>),
    /// The answer, with the other side's candidates.
    Reply(Vec<SocketAddr>),
    /// Dial now; the initiator dials half a round trip later, so that both sides'
    /// first packets cross their routers at about the same moment.
    Sync,
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

/// The origin's proof of a relayed message or stream (`origin.rs`): its Ed25519 key
/// (hashing to its device ID), when and with what nonce it signed, and its signature
/// over the message's or stream's binding. The relay passes it on unchanged. On a
/// Message stream it is a frame of its own between the header and the body, present
/// exactly when the header has `relay_to` or `origin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginProof {
    pub key: [u8; 32],
    /// Milliseconds since the Unix epoch, on the origin's clock.
    pub time_ms: u64,
    pub nonce: u64,
    /// 64 bytes.
    pub sig: Vec<u8>,
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
    /// [`AppFrame::Relay`] with the opener's proof for the stream to `to`.
    SignedRelay {
        service: String,
        to: DeviceId,
        proof: OriginProof,
    },
    /// [`AppFrame::Relayed`] with the origin's proof, passed on unchanged by the relay.
    SignedRelayed {
        service: String,
        origin: DeviceId,
        proof: OriginProof,
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
    /// The batches that the [`Down::ReconChanges`] that follow belong to.
    ReconBatches(Vec<BatchRange>),
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

#[cfg(test)]
mod tests {
    //! The encoding of every frame type, pinned: a change here is a change of the wire
    //! format between daemons (and needs a protocol version or a new variant instead).

    use super::*;
    use crate::store::VersionVector;

    fn hex(value: &impl Serialize) -> String {
        let frame = transport::frame::encode(value, transport::frame::MAX_FRAME).unwrap();
        // Without the 4-byte length prefix.
        frame[4..].iter().map(|b| format!("{b:02x}")).collect()
    }

    fn id(b: u8) -> DeviceId {
        DeviceId([b; 32])
    }

    fn header() -> MsgHeader {
        MsgHeader {
            id: "00000000000000ab".into(),
            tag: "notify.show".into(),
            body_len: 5,
            reply: true,
            relay_to: Some(id(2)),
            origin: None,
            ping: false,
        }
    }

    fn proof() -> OriginProof {
        OriginProof {
            key: [6; 32],
            time_ms: 1_700_000_000_000,
            nonce: 9,
            sig: vec![8; 2],
        }
    }

    #[test]
    fn layouts() {
        let cases: Vec<(&str, String)> = vec![
            (
                "mesh roster",
                hex(&MeshFrame::Roster(RosterSnapshot::default())),
            ),
            (
                "mesh addrs",
                hex(&MeshFrame::Addrs(vec![(
                    id(1),
                    vec!["10.0.0.1:7373".parse().unwrap()],
                )])),
            ),
            (
                "mesh membership",
                hex(&MeshFrame::Membership(vec![1, 2, 3])),
            ),
            (
                "mesh punch",
                hex(&MeshFrame::Punch(Punch {
                    from: id(1),
                    to: id(2),
                    session: 7,
                    step: PunchStep::Connect(vec!["203.0.113.1:7373".parse().unwrap()]),
                })),
            ),
            ("punch sync", hex(&PunchStep::Sync)),
            (
                "mesh lan",
                hex(&MeshFrame::Lan(vec![LanIface {
                    mac: [2, 0, 0, 0, 0, 9],
                    addr: "10.0.0.2".parse().unwrap(),
                    prefix: 24,
                }])),
            ),
            (
                "mesh wake",
                hex(&MeshFrame::Wake(WakeMsg::Ask {
                    id: 5,
                    target: id(3),
                    force: true,
                })),
            ),
            (
                "wake sent",
                hex(&WakeMsg::Sent {
                    id: 5,
                    sent: vec![WakeSent {
                        mac: [2, 0, 0, 0, 0, 9],
                        iface: "eth0".into(),
                        to: vec!["10.0.0.255:9".parse().unwrap()],
                    }],
                }),
            ),
            ("msg header", hex(&header())),
            (
                "lane msg",
                hex(&LaneMsg {
                    seq: 3,
                    header: header(),
                }),
            ),
            (
                "lane result",
                hex(&LaneResult {
                    seq: 3,
                    result: MsgResult::Ack,
                }),
            ),
            (
                "nack",
                hex(&MsgResult::Nack {
                    code: "unreachable".into(),
                    message: "m".into(),
                }),
            ),
            (
                "replies",
                hex(&MsgResult::Replies(vec![WireReply {
                    handler: "h.sh".into(),
                    exit_code: Some(0),
                    stdout: b"ok".to_vec(),
                    timed_out: false,
                }])),
            ),
            (
                "app open",
                hex(&AppFrame::Open {
                    service: "ssh".into(),
                }),
            ),
            ("app ok", hex(&AppFrame::Ok)),
            (
                "app err",
                hex(&AppFrame::Err {
                    code: "x".into(),
                    message: "y".into(),
                }),
            ),
            (
                "app relay",
                hex(&AppFrame::Relay {
                    service: "s".into(),
                    to: id(4),
                }),
            ),
            (
                "app relayed",
                hex(&AppFrame::Relayed {
                    service: "s".into(),
                    origin: id(5),
                }),
            ),
            (
                "app signed relay",
                hex(&AppFrame::SignedRelay {
                    service: "s".into(),
                    to: id(4),
                    proof: proof(),
                }),
            ),
            (
                "app signed relayed",
                hex(&AppFrame::SignedRelayed {
                    service: "s".into(),
                    origin: id(5),
                    proof: proof(),
                }),
            ),
            ("origin proof", hex(&proof())),
            (
                "sync seen",
                hex(&Up::Seen {
                    vv: VersionVector::new(),
                }),
            ),
            (
                "sync hello",
                hex(&Up::Hello {
                    version: 2,
                    vv: VersionVector::new(),
                    items: 7,
                }),
            ),
            ("sync changes", hex(&Down::ReconChanges(Vec::new()))),
            ("pair fail", hex(&PairMsg::Fail { reason: "r".into() })),
            ("pair done", hex(&PairMsg::Done)),
            ("pair confirm", hex(&PairMsg::Confirm { mac: vec![9; 4] })),
        ];
        let expected: &[(&str, &str)] = &[
            ("mesh roster", "000000"),
            ("mesh addrs", "0101010101010101010101010101010101010101010101010101010101010101010101000a000001fbcd1c"),
            ("mesh membership", "0203010203"),
            ("mesh punch", "030101010101010101010101010101010101010101010101010101010101010101020202020202020202020202020202020202020202020202020202020202020207000100cb007101fbcd1c"),
            ("punch sync", "02"),
            ("mesh lan", "05010200000000090a00000218"),
            ("mesh wake", "060005030303030303030303030303030303030303030303030303030303030303030301"),
            ("wake sent", "0105010200000000090465746830010a0000ff09"),
            ("msg header", "10303030303030303030303030303061620b6e6f746966792e73686f7705010102020202020202020202020202020202020202020202020202020202020202020000"),
            ("lane msg", "0310303030303030303030303030303061620b6e6f746966792e73686f7705010102020202020202020202020202020202020202020202020202020202020202020000"),
            ("lane result", "0300"),
            ("nack", "010b756e726561636861626c65016d"),
            ("replies", "020104682e73680100026f6b00"),
            ("app open", "0003737368"),
            ("app ok", "01"),
            ("app err", "0201780179"),
            ("app relay", "0301730404040404040404040404040404040404040404040404040404040404040404"),
            ("app relayed", "0401730505050505050505050505050505050505050505050505050505050505050505"),
            ("app signed relay", "05017304040404040404040404040404040404040404040404040404040404040404040606060606060606060606060606060606060606060606060606060606060606fd0068e5cf8b01000009020808"),
            ("app signed relayed", "06017305050505050505050505050505050505050505050505050505050505050505050606060606060606060606060606060606060606060606060606060606060606fd0068e5cf8b01000009020808"),
            ("origin proof", "0606060606060606060606060606060606060606060606060606060606060606fd0068e5cf8b01000009020808"),
            ("sync seen", "0100"),
            ("sync hello", "00020007"),
            ("sync changes", "0200"),
            ("pair fail", "040172"),
            ("pair done", "05"),
            ("pair confirm", "020409090909"),
        ];
        let mut wrong = Vec::new();
        for (name, got) in &cases {
            match expected.iter().find(|(n, _)| n == name) {
                Some((_, want)) if want == got => {}
                _ => wrong.push(format!("(\"{name}\", \"{got}\"),")),
            }
        }
        assert!(
            wrong.is_empty() && expected.len() == cases.len(),
            "wire layouts changed:\n{}",
            wrong.join("\n")
        );
    }
}
