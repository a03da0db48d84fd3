//! The control-socket protocol, shared by the daemon and the CLI (docs/api.md).
//!
//! One JSON object per line. A request is `{"id": <any>, "cmd": "<name>", ...}`; the reply
//! echoes the id: `{"id": .., "ok": true, "result": ..}` or
//! `{"id": .., "ok": false, "error": {"code": "..", "message": ".."}}`.
//! Documented command by command in `docs/api.md`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest request line accepted, in bytes (message bodies larger than this follow the
/// line as raw bytes, see `body_len`).
pub const MAX_LINE: usize = 1024 * 1024;
/// Largest message body, in bytes.
pub const MAX_BODY: usize = 20 * 1024 * 1024;

/// Every command name the daemon knows.
pub const COMMANDS: &[&str] = &[
    "status",
    "peers",
    "ping",
    "send",
    "subscribe",
    "handlers",
    "trust",
    "remove",
    "pair",
    "pair.join",
    "pair.nearby",
    "stop",
    "connect",
    "listen",
    "accept",
    "expose",
    "unexpose",
    "services",
    "stream_status",
    "kv.put",
    "kv.get",
    "kv.del",
    "kv.list",
    "kv.watch",
    "kv.incr",
    "kv.batch",
    "relay.add",
    "relay.remove",
    "relay.list",
    "wake",
    "ui",
];

/// One operation of a `kv.batch`: a put (its value as `value`, `value_b64` or `value_len`
/// raw bytes after the line) or a delete, each with an optional condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum BatchOpRequest {
    Put {
        key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value_b64: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value_len: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        if_version: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        if_absent: bool,
    },
    Del {
        key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        if_version: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        if_absent: bool,
    },
}

impl BatchOpRequest {
    /// The raw bytes this operation takes from after the line.
    pub fn value_len(&self) -> u64 {
        match self {
            BatchOpRequest::Put { value_len, .. } => value_len.unwrap_or(0),
            BatchOpRequest::Del { .. } => 0,
        }
    }
}

/// A parsed request (the `cmd` field selects the variant).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status {},
    Peers {},
    Ping {
        peer: String,
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    Send(SendRequest),
    Subscribe {
        /// Event kinds to receive: "message", "peer", "daemon" (empty: all).
        #[serde(default)]
        events: Vec<String>,
    },
    Handlers {},
    Trust {
        /// The device ID (`id` is the request id).
        device: String,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        addrs: Vec<String>,
        /// Rename a device already trusted to `name` (without it, its name stays).
        #[serde(default)]
        rename: bool,
    },
    Remove {
        peer: String,
    },
    /// Opens a pairing window: the first reply carries the code, a second reply (same id)
    /// the outcome. Closing the connection closes the window.
    Pair {
        #[serde(default)]
        timeout_s: Option<u64>,
    },
    /// Pairs with the device whose window shows `code`, found by mDNS or at `addrs`.
    #[serde(rename = "pair.join")]
    PairJoin {
        code: String,
        #[serde(default)]
        addrs: Vec<String>,
        #[serde(default)]
        timeout_s: Option<u64>,
    },
    /// Devices seen on the LAN that are not in the mesh.
    #[serde(rename = "pair.nearby")]
    PairNearby {},
    Stop {},
    /// Starts the web dashboard if it is not running; answers its URL (with the token).
    Ui {},
    /// Turns the connection into a raw byte stream to `service` on `peer`; with `fds`, the
    /// client passes two pipes instead (the stream's input and output, `SCM_RIGHTS`) and the
    /// connection stays open until the stream ended.
    Connect {
        peer: String,
        service: String,
        #[serde(default)]
        timeout_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        fds: bool,
    },
    /// Registers a listener; incoming streams are announced on this connection.
    Listen {
        service: String,
    },
    /// Takes an announced stream: the connection becomes that raw byte stream (or, with
    /// `fds`, the client passes two pipes, as for `connect`).
    Accept {
        stream: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        fds: bool,
    },
    /// Forwards incoming streams for `service` to a local TCP (`HOST:PORT`) or UNIX
    /// (`unix:/path`) address; persistent.
    Expose {
        service: String,
        target: String,
    },
    Unexpose {
        service: String,
    },
    Services {},
    /// Stores a value (durable when answered): `value` (text), `value_b64`, or `value_len`
    /// raw bytes following the line.
    #[serde(rename = "kv.put")]
    KvPut {
        key: String,
        #[serde(default)]
        value: Option<String>,
        #[serde(default)]
        value_b64: Option<String>,
        #[serde(default)]
        value_len: Option<u64>,
        /// Write only if the key's current version is this one (the `version` string a
        /// read returned).
        #[serde(default)]
        if_version: Option<String>,
        /// Write only if the key has no value.
        #[serde(default)]
        if_absent: bool,
    },
    #[serde(rename = "kv.get")]
    KvGet {
        key: String,
        #[serde(default)]
        all_versions: bool,
    },
    #[serde(rename = "kv.del")]
    KvDel {
        key: String,
        #[serde(default)]
        if_version: Option<String>,
        #[serde(default)]
        if_absent: bool,
    },
    #[serde(rename = "kv.list")]
    KvList {
        #[serde(default)]
        prefix: Option<String>,
        /// Paging: keys after this one.
        #[serde(default)]
        after: Option<String>,
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Writes several keys in one transaction, all or nothing (docs/store.md, "Batches");
    /// the raw values of `value_len` operations follow the line, in operation order.
    #[serde(rename = "kv.batch")]
    KvBatch {
        ops: Vec<BatchOpRequest>,
    },
    /// Adds `by` (default 1, may be negative) to counter `key`.
    #[serde(rename = "kv.incr")]
    KvIncr {
        key: String,
        #[serde(default)]
        by: Option<i64>,
    },
    /// Streams changes under `prefix`, first those after feed seq `from_seq`, then live.
    #[serde(rename = "kv.watch")]
    KvWatch {
        #[serde(default)]
        prefix: Option<String>,
        #[serde(default)]
        from_seq: Option<u64>,
    },
    /// Records a relay (`HOST:PORT` and its secret) in the signed roster of relays.
    #[serde(rename = "relay.add")]
    RelayAdd {
        addr: String,
        secret: String,
    },
    /// Stops using a relay, everywhere in the mesh.
    #[serde(rename = "relay.remove")]
    RelayRemove {
        addr: String,
    },
    /// The mesh's relays and this device's registration with each.
    #[serde(rename = "relay.list")]
    RelayList {},
    /// Sends a Wake-on-LAN magic packet to `peer` from a member on its LAN.
    Wake {
        peer: String,
        /// Even when the peer looks awake.
        #[serde(default)]
        force: bool,
    },
    /// How a stream ended: "open", "closed" or "error: ...".
    StreamStatus {
        stream: String,
        /// Wait up to this long for the stream to end.
        #[serde(default)]
        wait_ms: Option<u64>,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// Peer name or ID prefix; absent with `all`.
    #[serde(default)]
    pub peer: Option<String>,
    #[serde(default)]
    pub all: bool,
    pub tag: String,
    /// Body as UTF-8 text.
    #[serde(default)]
    pub body: Option<String>,
    /// Body as base64.
    #[serde(default)]
    pub body_b64: Option<String>,
    /// Body as exactly this many raw bytes following the request line.
    #[serde(default)]
    pub body_len: Option<u64>,
    /// Wait for the handlers' output.
    #[serde(default)]
    pub reply: bool,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

mod codes;
pub use codes::{code, Code};
mod status;
pub use status::{
    Candidate, GossipCounters, HandshakeCounters, HeartbeatCounters, ProfileInfo, RecordCounters,
    RelayInfo, RemovedInfo, Status,
};
mod wake;
pub use wake::{IfaceInfo, WakeResult, WakeSentInfo};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: Code,
    pub message: String,
    /// `conflict`: the key's versions now, best first (`hlc`, `origin`, `seq`,
    /// `version`, `deleted`); empty when it has no value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<Vec<Value>>,
    /// `conflict`: the key whose condition did not hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `timeout` of a `send` with `reply`: `true` when the message was delivered (the
    /// peer acknowledged all of it) but no reply came before the timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered: Option<bool>,
}

impl ErrorBody {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ErrorBody {
            code,
            message: message.into(),
            current: None,
            key: None,
            delivered: None,
        }
    }

    /// An error a peer sent as wire strings (a refused message or stream).
    pub fn from_wire(code: &str, message: String) -> Self {
        ErrorBody::new(Code::from(code), message)
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A reply line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    #[serde(default)]
    pub id: Value,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl Reply {
    pub fn ok(id: Value, result: impl Serialize) -> Self {
        Reply {
            id,
            ok: true,
            result: Some(serde_json::to_value(result).unwrap_or(Value::Null)),
            error: None,
        }
    }

    pub fn err(id: Value, e: ErrorBody) -> Self {
        Reply {
            id,
            ok: false,
            result: None,
            error: Some(e),
        }
    }
}

/// One row of `peers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerInfo {
    pub id: String,
    pub name: String,
    pub state: String,
    pub addresses: Vec<String>,
    pub rtt_ms: Option<f64>,
    /// Names of the members a peer is reached through, as `ping` gives them; `None`
    /// (`null`) when it is not relayed by a member.
    #[serde(default)]
    pub via: Option<Vec<String>>,
    pub last_seen: Option<u64>,
    /// How the peer is reached now; `null` while it is not reached at all.
    #[serde(default)]
    pub path: Option<PathInfo>,
    /// Its Ethernet interfaces as it last announced them (for `wake`); left out when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<IfaceInfo>,
}

/// How a peer is reached (`peers`, and peer events).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathInfo {
    /// `direct` (a connection of our own, on the LAN or across the internet), `member`
    /// (relayed by another member) or `relay` (through a `cnspr relay`).
    pub kind: String,
    /// The member's name, or the relay's address; `null` when direct.
    pub via: Option<String>,
    /// Unix seconds since the peer has been reached this way.
    pub since: u64,
}

/// `ping` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PingResult {
    pub peer: String,
    pub id: String,
    pub rtt_ms: f64,
    pub address: String,
    /// Names of the devices the ping went through (empty: direct).
    pub via: Vec<String>,
}

/// One handler's result, for `send --reply`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandlerReply {
    pub peer: String,
    pub handler: String,
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stdout_b64: String,
    #[serde(default)]
    pub timed_out: bool,
}

/// Per-peer result of `send`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendOutcome {
    pub peer: String,
    pub id: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    #[serde(default)]
    pub replies: Vec<HandlerReply>,
}

/// `send` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendResult {
    pub message_id: String,
    pub outcomes: Vec<SendOutcome>,
}

/// One entry of `handlers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandlerInfo {
    pub path: String,
    /// What the handler matches, in words.
    pub matches: String,
    pub tag: String,
    pub full_tag: String,
    pub from: Option<String>,
}

/// `handlers` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandlersResult {
    pub dir: String,
    pub handlers: Vec<HandlerInfo>,
    pub warnings: Vec<String>,
}

/// Peer reference inside events.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerRef {
    pub id: String,
    pub name: String,
}

/// An event as sent to `subscribe` clients, one per line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Message {
        tag: String,
        from: PeerRef,
        message_id: String,
        body_len: usize,
        /// The body, base64, when at most 64 KiB.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body_b64: Option<String>,
    },
    Peer {
        tag: String,
        peer: PeerRef,
        state: String,
        address: Option<String>,
        /// How the peer is reached now (absent while it is not).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<PathInfo>,
        /// What happened, in words (`peer.renamed`: the old name; `peer.conflict`: who
        /// removed whom, and how to decide).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    Daemon {
        tag: String,
        state: String,
    },
}

impl Event {
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Message { .. } => "message",
            Event::Peer { .. } => "peer",
            Event::Daemon { .. } => "daemon",
        }
    }
}
