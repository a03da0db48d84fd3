"""Python client for the cnspr daemon's control socket.

>>> from cnspr import Client
>>> c = Client()                       # $CNSPR_SOCKET or the daemon's default path
>>> c.status().name
>>> c.send("laptop", "notify.show", b"hello")
>>> c.kv_put("notes/a", "text"); c.kv_get("notes/a").value

See the README for the whole API; ``docs/api.md`` of cnspr for the protocol.
"""

from ._wire import DEFAULT_MAX_LINE, MAX_BODY, MAX_REQUEST_LINE, default_socket_path
from .client import MAX_BATCH_BYTES, MAX_BATCH_OPS, Client, KvWatch, Listener, PairWindow, Stream, Subscription
from .errors import (
    AmbiguousPeer,
    BadJson,
    BadRequest,
    Busy,
    Cancelled,
    ClientTimeout,
    CnsprError,
    Conflict,
    ConnectionLost,
    DaemonNotRunning,
    Internal,
    InvalidAddress,
    InvalidCode,
    InvalidId,
    InvalidName,
    InvalidTag,
    LineTooLong,
    NotFound,
    ProtocolError,
    QueueFull,
    Refused,
    Removed,
    ReplyTooLarge,
    SelfTrust,
    StoreError,
    Timeout,
    TooLarge,
    Unavailable,
    UnknownCommand,
    UnknownPeer,
    UnknownService,
    UnknownStream,
    Unreachable,
    WrongCode,
    codes,
    error_for,
)
from .types import (
    BatchOp,
    Delete,
    KvBatch,
    KvBatchOp,
    Put,
    DaemonEvent,
    ErrorInfo,
    Event,
    GossipCounters,
    HandlerInfo,
    HandlerReply,
    Handlers,
    HeartbeatCounters,
    Incoming,
    KvChange,
    KvDeleted,
    Counter,
    KvEntry,
    KvPage,
    KvVersion,
    KvWrite,
    LaggedEvent,
    MessageEvent,
    NearbyDevice,
    Paired,
    Peer,
    PeerEvent,
    PeerRef,
    PingResult,
    SendOutcome,
    SendResult,
    Service,
    Status,
    StreamStatus,
    UnknownEvent,
)

__version__ = "0.1.0"

__all__ = [
    "Client", "KvWatch", "Listener", "PairWindow", "Stream", "Subscription",
    "DEFAULT_MAX_LINE", "MAX_BODY", "MAX_BATCH_OPS", "MAX_BATCH_BYTES", "MAX_REQUEST_LINE", "default_socket_path",
    "CnsprError", "codes", "error_for",
    "DaemonNotRunning", "ConnectionLost", "ProtocolError", "ReplyTooLarge", "ClientTimeout",
    "BadJson", "BadRequest", "UnknownCommand", "LineTooLong", "UnknownPeer", "AmbiguousPeer",
    "Unreachable", "Timeout", "InvalidTag", "InvalidId", "InvalidName", "InvalidAddress",
    "TooLarge", "QueueFull", "SelfTrust", "UnknownService", "Unavailable", "UnknownStream",
    "NotFound", "StoreError", "Internal", "InvalidCode", "WrongCode", "Busy", "Cancelled",
    "Refused", "Removed", "Conflict",
    "Event", "MessageEvent", "PeerEvent", "DaemonEvent", "LaggedEvent", "UnknownEvent",
    "PeerRef", "Status", "GossipCounters", "HeartbeatCounters", "Peer", "PingResult",
    "ErrorInfo", "HandlerReply", "SendOutcome", "SendResult", "HandlerInfo", "Handlers",
    "Service", "StreamStatus", "Incoming", "NearbyDevice", "Paired",
    "KvVersion", "KvEntry", "KvWrite", "KvDeleted", "Counter", "KvPage", "KvChange",
    "Put", "Delete", "BatchOp", "KvBatch", "KvBatchOp",
]
