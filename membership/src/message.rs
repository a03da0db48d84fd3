//! Wire messages of the membership protocol and their bounded codec.
//!
//! Encoding: one version byte ([`WIRE_VERSION`]) followed by bincode 2 (standard config,
//! varint integers) of [`Message`]. Decoding refuses more than [`MAX_MESSAGE_BYTES`], lists
//! longer than [`MAX_LIST`], records with more than [`MAX_LINKS`] links, payloads over
//! [`MAX_PAYLOAD`], record seals over [`MAX_SEAL`] and trailing bytes.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// Version byte in front of every encoded message. Version 2: link entries say whether
/// their origin watches the peer ([`Watch`]); members beat only their monitors. Version 3:
/// every record carries its origin's seal ([`Record::seal`]).
pub const WIRE_VERSION: u8 = 3;
/// Largest encoded message accepted.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Largest broadcast payload.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Longest list (gossip items, digest entries).
pub const MAX_LIST: usize = 4096;
/// Most links in one link record.
pub const MAX_LINKS: usize = 1024;
/// Largest record seal, in bytes.
pub const MAX_SEAL: usize = 128;
/// Gossip items are packed into messages of at most about this many bytes.
pub(crate) const PACK_BYTES: usize = 160 * 1024;

/// Unique id of a broadcast event: its origin and the origin's sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EventId<I> {
    pub origin: I,
    pub seq: u64,
}

/// What the origin of a link record knows of a peer's liveness from its own watching.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Watch {
    /// The origin does not watch the peer: the link is up, nothing more is claimed.
    Unwatched,
    /// The origin watches the peer and heard it lately: a checked path.
    Alive,
    /// The origin watches the peer and has not heard it for a while, not yet for the
    /// suspicion deadline: still vouched for, no path through.
    Suspect,
    /// The origin watched the peer and has heard nothing for the suspicion deadline: a
    /// failure report.
    Lost,
}

/// One direct link as announced in a link record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkEntry<I> {
    pub peer: I,
    /// RTT of the link in microseconds.
    pub rtt_us: u32,
    /// The address the record's origin sees `peer` at.
    pub addr: Option<SocketAddr>,
    /// Whether the origin vouches for `peer` (it watches it), or reports it lost.
    pub watch: Watch,
}

/// A member's versioned statement of itself: alive or left, and its usable direct links
/// with what it knows of each peer.
/// Newer is `(incarnation, version)` greater; the newest record of each origin wins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record<I> {
    pub origin: I,
    pub incarnation: u64,
    pub version: u64,
    pub left: bool,
    /// The member is gentle (on battery): one monitor, one beat per `gentle_interval`.
    pub gentle: bool,
    pub links: Vec<LinkEntry<I>>,
    /// The origin's proof that the record is its own (the daemon's: a key and a signature
    /// over the other fields), at most [`MAX_SEAL`] bytes. This crate never reads it: it
    /// passes a record on with the seal it came with, and the records it builds of its own
    /// member have an empty one, which whoever sends them fills in. Whoever feeds
    /// messages in checks the seals first.
    pub seal: Vec<u8>,
}

impl<I: PartialEq> Record<I> {
    pub fn key(&self) -> (u64, u64) {
        (self.incarnation, self.version)
    }

    /// Whether `self` and `other` state the same, whatever their seals.
    pub fn same_statement(&self, other: &Record<I>) -> bool {
        self.origin == other.origin
            && self.key() == other.key()
            && self.left == other.left
            && self.gentle == other.gentle
            && self.links == other.links
    }

    /// Whether `self`, a later version of `old`, differs from it only in the round-trip
    /// times of its links: news that changes nobody's state or path much, which members on
    /// battery fetch at their own beats rather than being woken for.
    pub fn only_rtts_changed(&self, old: &Record<I>) -> bool {
        self.origin == old.origin
            && self.incarnation == old.incarnation
            && self.left == old.left
            && self.gentle == old.gentle
            && self.links.len() == old.links.len()
            && self
                .links
                .iter()
                .zip(&old.links)
                .all(|(a, b)| a.peer == b.peer && a.addr == b.addr && a.watch == b.watch)
    }
}

/// A broadcast event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event<I> {
    pub id: EventId<I>,
    pub lamport: u64,
    pub payload: Vec<u8>,
}

/// Something disseminated through the mesh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Item<I> {
    Record(Record<I>),
    Event(Event<I>),
}

impl<I: Copy> Item<I> {
    pub fn origin(&self) -> I {
        match self {
            Item::Record(r) => r.origin,
            Item::Event(e) => e.id.origin,
        }
    }
}

/// A membership message between two direct neighbours.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message<I> {
    /// Liveness probe; `suspect` tells the receiver that the sender suspects it (it then
    /// refutes with a higher incarnation).
    Ping {
        nonce: u64,
        suspect: bool,
    },
    Ack {
        nonce: u64,
    },
    /// Please ping `target` for me (indirect probe).
    PingReq {
        target: I,
        nonce: u64,
    },
    /// Answer to `PingReq`: whether `target` answered, and the helper's RTT to it.
    PingReqAck {
        target: I,
        nonce: u64,
        ok: bool,
        rtt_us: u32,
    },
    /// Disseminated records and events.
    Gossip {
        items: Vec<Item<I>>,
    },
    /// Anti-entropy: a hash of the records and recent event ids the sender holds.
    Digest {
        hash: u64,
    },
    /// Anti-entropy after a hash mismatch (or a new link): record versions and recent event
    /// ids; the receiver pushes what the sender lacks and, if `reply`, answers in kind.
    DigestFull {
        reply: bool,
        records: Vec<(I, u64, u64)>,
        events: Vec<EventId<I>>,
    },
    /// Liveness beat to a monitor, one way: the receiver learns the sender is up (and
    /// watches it); over QUIC the sender learns the receiver is up from the transport's
    /// acknowledgement ([`crate::Input::Heard`]). `digest` is the anti-entropy hash when
    /// one is due.
    Beat {
        digest: Option<u64>,
    },
}

/// Why bytes did not decode into a [`Message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    Empty,
    TooLarge(usize),
    Version(u8),
    Malformed(String),
    TrailingBytes(usize),
    LimitExceeded(&'static str),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Empty => write!(f, "empty membership message"),
            DecodeError::TooLarge(n) => {
                write!(
                    f,
                    "membership message of {n} bytes exceeds {MAX_MESSAGE_BYTES}"
                )
            }
            DecodeError::Version(v) => write!(
                f,
                "membership wire version {v}, expected {WIRE_VERSION}: upgrade the older member"
            ),
            DecodeError::Malformed(e) => write!(f, "malformed membership message: {e}"),
            DecodeError::TrailingBytes(n) => {
                write!(f, "{n} trailing bytes after membership message")
            }
            DecodeError::LimitExceeded(what) => {
                write!(f, "membership message: {what} over its limit")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

fn config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_MESSAGE_BYTES>,
> {
    bincode::config::standard().with_limit::<MAX_MESSAGE_BYTES>()
}

impl<I: NodeId> Message<I> {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![WIRE_VERSION];
        // Encoding into a Vec cannot fail for these plain types; the limit only applies
        // to decoding.
        let body =
            bincode::serde::encode_to_vec(self, bincode::config::standard()).unwrap_or_default();
        out.extend_from_slice(&body);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        if version != WIRE_VERSION {
            return Err(DecodeError::Version(version));
        }
        let (msg, used): (Self, usize) = bincode::serde::decode_from_slice(body, config())
            .map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if used != body.len() {
            return Err(DecodeError::TrailingBytes(body.len() - used));
        }
        msg.check_limits()?;
        Ok(msg)
    }

    fn check_limits(&self) -> Result<(), DecodeError> {
        match self {
            Message::Gossip { items } => {
                if items.len() > MAX_LIST {
                    return Err(DecodeError::LimitExceeded("gossip items"));
                }
                for item in items {
                    match item {
                        Item::Record(r) if r.links.len() > MAX_LINKS => {
                            return Err(DecodeError::LimitExceeded("record links"))
                        }
                        Item::Record(r) if r.seal.len() > MAX_SEAL => {
                            return Err(DecodeError::LimitExceeded("record seal"))
                        }
                        Item::Event(e) if e.payload.len() > MAX_PAYLOAD => {
                            return Err(DecodeError::LimitExceeded("event payload"))
                        }
                        _ => {}
                    }
                }
            }
            Message::DigestFull {
                records, events, ..
            } if records.len() > MAX_LIST || events.len() > MAX_LIST => {
                return Err(DecodeError::LimitExceeded("digest entries"));
            }
            _ => {}
        }
        Ok(())
    }

    /// Short name of the message kind, for statistics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Ping { .. } => "ping",
            Message::Ack { .. } => "ack",
            Message::PingReq { .. } => "ping_req",
            Message::PingReqAck { .. } => "ping_req_ack",
            Message::Gossip { .. } => "gossip",
            Message::Digest { .. } => "digest",
            Message::DigestFull { .. } => "digest_full",
            Message::Beat { .. } => "beat",
        }
    }
}

/// Rough encoded size of an item, for packing gossip messages.
pub(crate) fn item_size<I>(item: &Item<I>) -> usize {
    match item {
        Item::Record(r) => 32 + r.links.len() * 41 + r.seal.len(),
        Item::Event(e) => 32 + e.payload.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_addr() -> impl Strategy<Value = Option<SocketAddr>> {
        proptest::option::of(
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        )
    }

    fn arb_item() -> impl Strategy<Value = Item<u32>> {
        prop_oneof![
            (
                any::<u32>(),
                any::<u64>(),
                any::<u64>(),
                any::<bool>(),
                proptest::collection::vec(any::<u8>(), 0..=MAX_SEAL),
                proptest::collection::vec(
                    (any::<u32>(), any::<u32>(), arb_addr(), 0u8..4).prop_map(
                        |(peer, rtt_us, addr, w)| LinkEntry {
                            peer,
                            rtt_us,
                            addr,
                            watch: [Watch::Unwatched, Watch::Alive, Watch::Suspect, Watch::Lost]
                                [w as usize],
                        }
                    ),
                    0..8
                )
            )
                .prop_map(|(origin, incarnation, version, left, seal, links)| {
                    Item::Record(Record {
                        origin,
                        incarnation,
                        version,
                        left,
                        gentle: left,
                        links,
                        seal,
                    })
                }),
            (
                any::<u32>(),
                any::<u64>(),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..64)
            )
                .prop_map(|(origin, seq, lamport, payload)| Item::Event(Event {
                    id: EventId { origin, seq },
                    lamport,
                    payload
                })),
        ]
    }

    fn arb_message() -> impl Strategy<Value = Message<u32>> {
        prop_oneof![
            (any::<u64>(), any::<bool>())
                .prop_map(|(nonce, suspect)| Message::Ping { nonce, suspect }),
            any::<u64>().prop_map(|nonce| Message::Ack { nonce }),
            (any::<u32>(), any::<u64>())
                .prop_map(|(target, nonce)| Message::PingReq { target, nonce }),
            (any::<u32>(), any::<u64>(), any::<bool>(), any::<u32>()).prop_map(
                |(target, nonce, ok, rtt_us)| Message::PingReqAck {
                    target,
                    nonce,
                    ok,
                    rtt_us
                }
            ),
            proptest::collection::vec(arb_item(), 0..6).prop_map(|items| Message::Gossip { items }),
            any::<u64>().prop_map(|hash| Message::Digest { hash }),
            (
                any::<bool>(),
                proptest::collection::vec((any::<u32>(), any::<u64>(), any::<u64>()), 0..10),
                proptest::collection::vec(
                    (any::<u32>(), any::<u64>()).prop_map(|(origin, seq)| EventId { origin, seq }),
                    0..10
                )
            )
                .prop_map(|(reply, records, events)| Message::DigestFull {
                    reply,
                    records,
                    events
                }),
            any::<Option<u64>>().prop_map(|digest| Message::Beat { digest }),
        ]
    }

    proptest! {
        #[test]
        fn roundtrip(msg in arb_message()) {
            let bytes = msg.encode();
            prop_assert_eq!(Message::<u32>::decode(&bytes).unwrap(), msg);
        }

        #[test]
        fn decode_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Message::<u32>::decode(&bytes);
            let mut versioned = vec![WIRE_VERSION];
            versioned.extend_from_slice(&bytes);
            let _ = Message::<u32>::decode(&versioned);
        }

        #[test]
        fn truncated_or_extended_is_rejected(msg in arb_message(), cut in 1usize..64) {
            let bytes = msg.encode();
            if cut < bytes.len() {
                prop_assert!(Message::<u32>::decode(&bytes[..bytes.len() - cut]).is_err());
            }
            let mut longer = bytes.clone();
            longer.push(0);
            prop_assert!(Message::<u32>::decode(&longer).is_err());
        }
    }

    #[test]
    fn limits_are_enforced() {
        let big = Message::<u32>::Gossip {
            items: vec![Item::Event(Event {
                id: EventId { origin: 1, seq: 1 },
                lamport: 1,
                payload: vec![0; MAX_PAYLOAD + 1],
            })],
        };
        assert_eq!(
            Message::<u32>::decode(&big.encode()),
            Err(DecodeError::LimitExceeded("event payload"))
        );
        let many = Message::<u32>::DigestFull {
            reply: false,
            records: vec![(1, 1, 1); MAX_LIST + 1],
            events: vec![],
        };
        assert!(Message::<u32>::decode(&many.encode()).is_err());
        let record = |seal: usize| Message::<u32>::Gossip {
            items: vec![Item::Record(Record {
                origin: 1,
                incarnation: 1,
                version: 1,
                left: false,
                gentle: false,
                links: vec![],
                seal: vec![7; seal],
            })],
        };
        assert!(Message::<u32>::decode(&record(MAX_SEAL).encode()).is_ok());
        assert_eq!(
            Message::<u32>::decode(&record(MAX_SEAL + 1).encode()),
            Err(DecodeError::LimitExceeded("record seal"))
        );
        // A huge announced length must not allocate: varint 0xFB + u64 length.
        let mut evil = vec![WIRE_VERSION, 4];
        evil.extend_from_slice(&[0xFD, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]);
        assert!(Message::<u32>::decode(&evil).is_err());
        assert_eq!(Message::<u32>::decode(&[]), Err(DecodeError::Empty));
        assert_eq!(
            Message::<u32>::decode(&[9, 0]),
            Err(DecodeError::Version(9))
        );
        let huge = vec![WIRE_VERSION; MAX_MESSAGE_BYTES + 1];
        assert_eq!(
            Message::<u32>::decode(&huge),
            Err(DecodeError::TooLarge(MAX_MESSAGE_BYTES + 1))
        );
    }
}
