//! The typed replies and events of the control socket, as the clients return them
//! (docs/api.md). Every type tolerates fields it does not know, so that a newer daemon
//! still works; binary values (`value_b64`, `body_b64` on the socket) are decoded to
//! bytes.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::api::{
    Candidate, Code, GossipCounters, HandlerInfo, HandlerReply, HandlersResult, HeartbeatCounters,
    PathInfo, PeerInfo, PeerRef, PingResult, RelayInfo, RemovedInfo, SendOutcome, SendResult,
    Status,
};

/// Base64 (standard alphabet, padded) on the socket, bytes here.
mod b64 {
    use data_encoding::BASE64;
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&BASE64.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        BASE64.decode(s.as_bytes()).map_err(D::Error::custom)
    }
}

/// As `b64`, `null` being no value.
mod b64_opt {
    use data_encoding::BASE64;
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(&BASE64.encode(v)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => BASE64
                .decode(s.as_bytes())
                .map(Some)
                .map_err(D::Error::custom),
            None => Ok(None),
        }
    }
}

/// A number sent as a decimal string (a counter's value, which may exceed 64 bits).
mod dec {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &i128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i128, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(D::Error::custom)
    }
}

/// One version of a key: what a conditional write names (`if_version`), and what a
/// `conflict` error lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvVersion {
    /// The hybrid logical clock of the write.
    pub hlc: String,
    /// The device that wrote it (its ID, grouped).
    pub origin: String,
    /// That device's write sequence number.
    pub seq: u64,
    /// The whole version in one string (`HLC:SEQ:ORIGIN`), for [`Condition::IfVersion`].
    pub version: String,
    /// A delete.
    #[serde(default)]
    pub deleted: bool,
}

/// `kv.put`: the version written (durable on disk).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvWrite {
    pub key: String,
    pub hlc: String,
    pub origin: String,
    pub seq: u64,
    /// For a later [`Condition::IfVersion`].
    pub version: String,
}

/// `kv.del`: the tombstone written (durable on disk).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvDeleted {
    /// The key deleted.
    pub key: String,
    pub hlc: String,
    /// The tombstone's version (absent from older daemons).
    #[serde(default)]
    pub version: Option<String>,
}

/// A key's value and its version (`kv.get`, `kv.list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    pub key: String,
    #[serde(rename = "value_b64", with = "b64")]
    pub value: Vec<u8>,
    pub hlc: String,
    pub origin: String,
    pub seq: u64,
    /// For [`Condition::IfVersion`].
    pub version: String,
    /// With `all_versions`: the concurrent versions that lost.
    #[serde(default)]
    pub siblings: Vec<KvSibling>,
}

/// A concurrent version that lost (`kv.get` with `all_versions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvSibling {
    /// `None` for a concurrent delete.
    #[serde(rename = "value_b64", with = "b64_opt", default)]
    pub value: Option<Vec<u8>>,
    #[serde(default)]
    pub deleted: bool,
    pub hlc: String,
    pub origin: String,
    pub seq: u64,
    pub version: String,
}

/// A counter (`kv.incr`, and `kv.get` of a counter's key; docs/store.md, "Counters").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvCounter {
    pub key: String,
    /// The sum of the parts.
    #[serde(with = "dec")]
    pub value: i128,
    /// Each device's part, by device ID.
    #[serde(default)]
    pub parts: BTreeMap<String, i64>,
}

/// What `kv.get` found under a key: a value, or a counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvValue {
    Entry(KvEntry),
    Counter(KvCounter),
}

impl KvValue {
    pub fn key(&self) -> &str {
        match self {
            KvValue::Entry(e) => &e.key,
            KvValue::Counter(c) => &c.key,
        }
    }

    /// The value's bytes; a counter's is its sum in decimal, as the socket gives it.
    pub fn bytes(&self) -> Cow<'_, [u8]> {
        match self {
            KvValue::Entry(e) => Cow::Borrowed(&e.value),
            KvValue::Counter(c) => Cow::Owned(c.value.to_string().into_bytes()),
        }
    }

    /// The winning version, for [`Condition::IfVersion`] (counters have none).
    pub fn version(&self) -> Option<&str> {
        match self {
            KvValue::Entry(e) => Some(&e.version),
            KvValue::Counter(_) => None,
        }
    }

    pub fn as_entry(&self) -> Option<&KvEntry> {
        match self {
            KvValue::Entry(e) => Some(e),
            KvValue::Counter(_) => None,
        }
    }

    pub fn into_entry(self) -> Option<KvEntry> {
        match self {
            KvValue::Entry(e) => Some(e),
            KvValue::Counter(_) => None,
        }
    }

    pub fn as_counter(&self) -> Option<&KvCounter> {
        match self {
            KvValue::Counter(c) => Some(c),
            KvValue::Entry(_) => None,
        }
    }
}

/// One page of `kv.list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvPage {
    pub entries: Vec<KvEntry>,
    /// More keys follow the last one.
    #[serde(default)]
    pub more: bool,
}

/// One change seen by `kv.watch`, local or from another device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvChange {
    /// The change's place in this device's feed: resume after it with `from_seq`.
    pub feed_seq: u64,
    pub key: String,
    /// The value written; `None` for a delete.
    #[serde(rename = "value_b64", with = "b64_opt", default)]
    pub value: Option<Vec<u8>>,
    #[serde(default)]
    pub deleted: bool,
    pub hlc: String,
    pub origin: String,
    pub seq: u64,
    pub version: String,
    /// Whether this version is the key's winner now.
    #[serde(default)]
    pub wins: bool,
    /// The batch the change was written in (`kv.batch`), the same name on every device.
    #[serde(default)]
    pub batch: Option<String>,
    /// The last change of its batch.
    #[serde(default)]
    pub batch_end: bool,
}

/// A write's condition (`if_version` / `if_absent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Only if the key's winning version is this one (a `version` string a read or a
    /// write returned).
    IfVersion(String),
    /// Only if the key has no value.
    IfAbsent,
}

/// One operation of [`kv_batch`](crate::client::blocking::Client::kv_batch): all of a
/// batch's operations are written in one transaction, or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp<'a> {
    /// Stores `value`, if `cond` holds.
    Put {
        key: &'a str,
        value: &'a [u8],
        cond: Option<Condition>,
    },
    /// Deletes `key`, if its version is `if_version` (when given).
    Del {
        key: &'a str,
        if_version: Option<String>,
    },
}

/// `kv.batch`: the batch's ID and one outcome per operation, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvBatch {
    /// The batch's name, the same on every device (`None`: nothing was written, every
    /// operation was a delete of a key with no value).
    pub batch: Option<String>,
    pub ops: Vec<KvBatchOutcome>,
}

/// What one operation of a batch wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvBatchOutcome {
    pub key: String,
    /// The version written (`None` when nothing was: see `unchanged`).
    #[serde(default)]
    pub hlc: Option<String>,
    #[serde(default)]
    pub origin: Option<String>,
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default)]
    pub version: Option<String>,
    /// A delete's tombstone.
    #[serde(default)]
    pub deleted: bool,
    /// A delete of a key that had no value: nothing written.
    #[serde(default)]
    pub unchanged: bool,
}

/// A service this daemon serves (`services`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub service: String,
    /// `expose` or `listen`.
    pub kind: String,
    /// `tcp:HOST:PORT` or `unix:/path` for an expose; `None` for a listener.
    #[serde(default)]
    pub target: Option<String>,
    /// Saved in `expose.json`.
    #[serde(default)]
    pub persistent: bool,
}

/// A message from a peer (`subscribe`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageEvent {
    pub tag: String,
    pub from: PeerRef,
    pub message_id: String,
    pub body_len: u64,
    /// The body, when at most 64 KiB.
    #[serde(rename = "body_b64", with = "b64_opt", default)]
    pub body: Option<Vec<u8>>,
}

/// A peer's change (`subscribe`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEvent {
    /// `peer.joined`, `peer.seen`, `peer.status_changed`, ...
    pub tag: String,
    pub peer: PeerRef,
    pub state: String,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub path: Option<PathInfo>,
}

/// The daemon's own change (`subscribe`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonEvent {
    /// `daemon.stop`, `daemon.active`, ...
    pub tag: String,
    pub state: String,
}

/// One event of `subscribe`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Message(MessageEvent),
    Peer(PeerEvent),
    Daemon(DaemonEvent),
    /// This subscriber read too slowly and lost this many events.
    Lagged {
        missed: u64,
    },
    /// An event kind this version does not know (from a newer daemon).
    Other(Value),
}

/// A message to send: to one peer or to all, optionally waiting for the handlers'
/// output.
///
/// ```
/// use std::time::Duration;
/// use cnspr::client::Message;
///
/// let m = Message::to("laptop", "sys.uptime", b"").reply().timeout(Duration::from_secs(5));
/// # let _ = m;
/// ```
#[derive(Debug, Clone)]
pub struct Message<'a> {
    pub(crate) peer: Option<&'a str>,
    pub(crate) tag: &'a str,
    pub(crate) body: &'a [u8],
    pub(crate) reply: bool,
    pub(crate) timeout: Option<Duration>,
}

impl<'a> Message<'a> {
    /// To `peer` (a name or an ID prefix).
    pub fn to(peer: &'a str, tag: &'a str, body: &'a [u8]) -> Self {
        Message {
            peer: Some(peer),
            tag,
            body,
            reply: false,
            timeout: None,
        }
    }

    /// To every trusted peer: check each outcome's `ok`.
    pub fn to_all(tag: &'a str, body: &'a [u8]) -> Self {
        Message {
            peer: None,
            ..Message::to("", tag, body)
        }
    }

    /// Wait for the handlers to finish and return their output.
    pub fn reply(mut self) -> Self {
        self.reply = true;
        self
    }

    /// How long to wait for a connection and the answer (the daemon's default: 10 s).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }
}
