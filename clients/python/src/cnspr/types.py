"""Typed replies and events of the control socket (``docs/api.md``).

Each class is built from a daemon's JSON object by its ``parse`` method, which checks
every field it reads (``ProtocolError`` otherwise). Bodies and values are ``bytes``,
decoded from the protocol's base64.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

from ._wire import Fields


@dataclass(frozen=True)
class PeerRef:
    """A device named in events and results: its full ID (grouped) and name."""

    id: str
    name: str

    @classmethod
    def parse(cls, f: Fields) -> "PeerRef":
        return cls(id=f.string("id"), name=f.string("name"))


@dataclass(frozen=True)
class GossipCounters:
    roster_sent: int
    roster_received: int


@dataclass(frozen=True)
class HeartbeatCounters:
    sent: int
    received: int
    rejected: int


@dataclass(frozen=True)
class Status:
    """``status``: this daemon."""

    id: str
    name: str
    listen: List[str]
    peers: int
    active: int
    version: str
    uptime_s: int
    pid: int
    state_dir: str
    socket: str
    handlers: str
    gossip: Optional[GossipCounters]
    heartbeats: Optional[HeartbeatCounters]

    @classmethod
    def parse(cls, v: Any) -> "Status":
        f = Fields(v, "status")
        g = f.opt_obj("gossip")
        h = f.opt_obj("heartbeats")
        return cls(
            id=f.string("id"),
            name=f.string("name"),
            listen=f.strings("listen"),
            peers=f.integer("peers"),
            active=f.integer("active"),
            version=f.string("version"),
            uptime_s=f.integer("uptime_s"),
            pid=f.integer("pid"),
            state_dir=f.string("state_dir"),
            socket=f.string("socket"),
            handlers=f.string("handlers"),
            gossip=None if g is None else GossipCounters(g.integer("roster_sent"), g.integer("roster_received")),
            heartbeats=None
            if h is None
            else HeartbeatCounters(h.integer("sent"), h.integer("received"), h.integer("rejected")),
        )


@dataclass(frozen=True)
class Peer:
    """One row of ``peers`` (also the result of ``trust``).

    ``state`` is ``active``, ``suspect``, ``indirect``, ``unreachable``, ``left`` or
    ``removed``; ``via`` names the relaying members of an ``indirect`` peer (empty
    otherwise: the daemon sends ``null``).
    """

    id: str
    name: str
    state: str
    addresses: List[str]
    rtt_ms: Optional[float]
    via: List[str]
    last_seen: Optional[int]

    @classmethod
    def parse(cls, v: Any, what: str = "peer") -> "Peer":
        f = Fields(v, what)
        return cls(
            id=f.string("id"),
            name=f.string("name"),
            state=f.string("state"),
            addresses=f.strings("addresses"),
            rtt_ms=f.opt_number("rtt_ms"),
            via=f.opt_strings("via") or [],
            last_seen=f.opt_integer("last_seen"),
        )


@dataclass(frozen=True)
class PingResult:
    peer: str
    id: str
    rtt_ms: float
    address: str
    via: List[str]

    @classmethod
    def parse(cls, v: Any) -> "PingResult":
        f = Fields(v, "ping")
        return cls(
            peer=f.string("peer"),
            id=f.string("id"),
            rtt_ms=f.number("rtt_ms"),
            address=f.string("address"),
            via=f.strings("via"),
        )


@dataclass(frozen=True)
class ErrorInfo:
    """An error inside a result (a failed outcome of ``send_all``)."""

    code: str
    message: str


@dataclass(frozen=True)
class HandlerReply:
    """What one handler on the receiver did, for ``send(..., reply=True)``.

    ``stdout`` holds the exact bytes; ``stdout_text`` the daemon's text rendering (invalid
    UTF-8 replaced). ``exit_code`` is None when the handler did not exit by itself.
    """

    peer: str
    handler: str
    exit_code: Optional[int]
    stdout: bytes
    stdout_text: str
    timed_out: bool

    @classmethod
    def parse(cls, v: Any) -> "HandlerReply":
        f = Fields(v, "send reply")
        return cls(
            peer=f.string("peer"),
            handler=f.string("handler"),
            exit_code=f.opt_integer("exit_code"),
            stdout=f.b64("stdout_b64"),
            stdout_text=f.string("stdout"),
            timed_out=f.boolean("timed_out", default=False),
        )


@dataclass(frozen=True)
class SendOutcome:
    """The delivery to one receiver."""

    peer: str
    id: str
    ok: bool
    error: Optional[ErrorInfo]
    replies: List[HandlerReply]

    @classmethod
    def parse(cls, v: Any) -> "SendOutcome":
        f = Fields(v, "send outcome")
        e = f.opt_obj("error")
        return cls(
            peer=f.string("peer"),
            id=f.string("id"),
            ok=f.boolean("ok"),
            error=None if e is None else ErrorInfo(e.string("code"), e.string("message")),
            replies=[HandlerReply.parse(r) for r in f.array("replies")] if f.has("replies") else [],
        )


@dataclass(frozen=True)
class SendResult:
    message_id: str
    outcomes: List[SendOutcome]

    @property
    def replies(self) -> List[HandlerReply]:
        """Every handler reply of every receiver, in outcome order."""
        return [r for o in self.outcomes for r in o.replies]

    @classmethod
    def parse(cls, v: Any) -> "SendResult":
        f = Fields(v, "send")
        return cls(
            message_id=f.string("message_id"),
            outcomes=[SendOutcome.parse(o) for o in f.array("outcomes")],
        )


@dataclass(frozen=True)
class HandlerInfo:
    path: str
    tag: str
    full_tag: str
    matches: str
    from_peer: Optional[str]


@dataclass(frozen=True)
class Handlers:
    """``handlers``: the handler directory as the daemon sees it."""

    dir: str
    handlers: List[HandlerInfo]
    warnings: List[str]

    @classmethod
    def parse(cls, v: Any) -> "Handlers":
        f = Fields(v, "handlers")
        hs = []
        for h in f.array("handlers"):
            hf = Fields(h, "handlers.handlers[]")
            hs.append(
                HandlerInfo(
                    path=hf.string("path"),
                    tag=hf.string("tag"),
                    full_tag=hf.string("full_tag"),
                    matches=hf.string("matches"),
                    from_peer=hf.opt_string("from"),
                )
            )
        return cls(dir=f.string("dir"), handlers=hs, warnings=f.strings("warnings"))


@dataclass(frozen=True)
class Service:
    """A service this daemon serves: ``kind`` ``listen`` or ``expose``."""

    service: str
    kind: str
    target: Optional[str]
    persistent: bool

    @classmethod
    def parse(cls, v: Any) -> "Service":
        f = Fields(v, "service")
        return cls(
            service=f.string("service"),
            kind=f.string("kind"),
            target=f.opt_string("target"),
            persistent=f.boolean("persistent"),
        )


@dataclass(frozen=True)
class StreamStatus:
    """``stream_status``: ``status`` is ``open``, ``closed`` or ``error: REASON``."""

    stream: str
    status: str

    @property
    def closed(self) -> bool:
        return self.status == "closed"

    @property
    def error(self) -> Optional[str]:
        """The reason when the stream broke, else None."""
        if self.status.startswith("error"):
            return self.status.partition(":")[2].strip() or self.status
        return None

    @classmethod
    def parse(cls, v: Any) -> "StreamStatus":
        f = Fields(v, "stream_status")
        return cls(stream=f.string("stream"), status=f.string("status"))


@dataclass(frozen=True)
class Incoming:
    """A stream a peer opened for a service this client listens for."""

    stream: str
    service: str
    peer: PeerRef

    @classmethod
    def parse(cls, f: Fields) -> "Incoming":
        return cls(stream=f.string("stream"), service=f.string("service"), peer=PeerRef.parse(f.obj("peer")))


@dataclass(frozen=True)
class NearbyDevice:
    """A device seen on the LAN (mDNS) that is not in the mesh."""

    id: str
    name: str
    addresses: List[str]
    pairing: bool

    @classmethod
    def parse(cls, v: Any) -> "NearbyDevice":
        f = Fields(v, "nearby device")
        return cls(
            id=f.string("id"),
            name=f.string("name"),
            addresses=f.strings("addresses"),
            pairing=f.boolean("pairing", default=False),
        )


@dataclass(frozen=True)
class Paired:
    """The device paired with; ``self_name`` when this device was renamed in the mesh."""

    id: str
    name: str
    self_name: Optional[str] = None

    @classmethod
    def parse(cls, v: Any, what: str) -> "Paired":
        p = Fields(v, what).obj("paired")
        return cls(id=p.string("id"), name=p.string("name"), self_name=p.opt_string("self_name"))


# --- Events (``subscribe``) ----------------------------------------------------------


@dataclass(frozen=True)
class MessageEvent:
    """A message received by this device. ``body`` is None when it was over 64 KiB
    (the daemon does not forward large bodies to subscribers); ``body_len`` is exact."""

    tag: str
    sender: PeerRef
    message_id: str
    body_len: int
    body: Optional[bytes]


@dataclass(frozen=True)
class PeerEvent:
    """A change of a peer: ``tag`` like ``peer.status_changed``, ``state`` its state."""

    tag: str
    peer: PeerRef
    state: str
    address: Optional[str]


@dataclass(frozen=True)
class DaemonEvent:
    """``daemon.stop`` (the daemon is stopping) and other daemon events."""

    tag: str
    state: str


@dataclass(frozen=True)
class LaggedEvent:
    """This subscriber read too slowly and lost ``missed`` events."""

    missed: int


@dataclass(frozen=True)
class UnknownEvent:
    """An event kind this version does not know (from a newer daemon)."""

    kind: str
    data: Any


Event = Union[MessageEvent, PeerEvent, DaemonEvent, LaggedEvent, UnknownEvent]


def parse_event(f: Fields) -> Event:
    kind = f.string("event")
    if kind == "message":
        body = f.opt_b64("body_b64")
        n = f.integer("body_len")
        if body is not None and len(body) != n:
            raise f._bad("body_b64", f"{n} bytes of base64")
        return MessageEvent(
            tag=f.string("tag"),
            sender=PeerRef.parse(f.obj("from")),
            message_id=f.string("message_id"),
            body_len=n,
            body=body,
        )
    if kind == "peer":
        return PeerEvent(
            tag=f.string("tag"),
            peer=PeerRef.parse(f.obj("peer")),
            state=f.string("state"),
            address=f.opt_string("address"),
        )
    if kind == "daemon":
        return DaemonEvent(tag=f.string("tag"), state=f.string("state"))
    if kind == "lagged":
        return LaggedEvent(missed=f.integer("missed"))
    return UnknownEvent(kind=kind, data=f.v)


# --- Key-value store -----------------------------------------------------------------


@dataclass(frozen=True)
class KvVersion:
    """One version of a key: ``value`` is None for a delete (``deleted``). ``hlc`` is
    the hybrid-logical-clock stamp, ``origin`` the writing device's ID, ``seq`` that
    device's write counter."""

    key: str
    value: Optional[bytes]
    deleted: bool
    hlc: str
    origin: str
    seq: int
    #: The version as one string (``HLC:SEQ:ORIGIN``), for ``if_version``; empty from a
    #: daemon too old to send it.
    version: str = ""

    @classmethod
    def parse(cls, f: Fields) -> "KvVersion":
        deleted = f.boolean("deleted")
        value = None if deleted else f.b64("value_b64")
        return cls(
            key=f.string("key"),
            value=value,
            deleted=deleted,
            hlc=f.string("hlc"),
            origin=f.string("origin"),
            seq=f.integer("seq"),
            version=f.string("version") if f.has("version") else "",
        )


@dataclass(frozen=True)
class KvEntry:
    """A key's visible value (the winner). With ``all_versions`` ``siblings`` lists the
    concurrent versions that lost, best first (a ``deleted`` one is a concurrent delete);
    otherwise it is empty."""

    key: str
    value: bytes
    hlc: str
    origin: str
    seq: int
    siblings: Tuple[KvVersion, ...] = field(default=())
    #: Pass to ``kv_put`` / ``kv_del`` as ``if_version`` to write only if unchanged.
    version: str = ""

    @property
    def text(self) -> str:
        """The value decoded as UTF-8 (``UnicodeDecodeError`` if it is not)."""
        return self.value.decode("utf-8")

    @classmethod
    def parse(cls, v: Any, what: str = "kv entry") -> "KvEntry":
        f = Fields(v, what)
        w = KvVersion.parse(f)
        if w.value is None:
            raise f._bad("value_b64", "the value of a live key")
        sibs = tuple(KvVersion.parse(Fields(s, f"{what}.siblings[]")) for s in f.array("siblings")) if f.has("siblings") else ()
        return cls(
            key=w.key, value=w.value, hlc=w.hlc, origin=w.origin, seq=w.seq, siblings=sibs, version=w.version
        )


@dataclass(frozen=True)
class KvWrite:
    """``kv.put``: the version written, durable on disk when returned."""

    key: str
    hlc: str
    origin: str
    seq: int
    version: str = ""

    @classmethod
    def parse(cls, v: Any) -> "KvWrite":
        f = Fields(v, "kv.put")
        return cls(
            key=f.string("key"),
            hlc=f.string("hlc"),
            origin=f.string("origin"),
            seq=f.integer("seq"),
            version=f.string("version") if f.has("version") else "",
        )


@dataclass(frozen=True)
class KvDeleted:
    """``kv.del``: the tombstone written."""

    key: str
    hlc: str

    @classmethod
    def parse(cls, v: Any) -> "KvDeleted":
        f = Fields(v, "kv.del")
        return cls(key=f.string("key"), hlc=f.string("hlc"))


@dataclass(frozen=True)
class Counter:
    """``kv.incr`` and ``kv.get`` of a counter: its ``value`` (the sum of the parts) and
    each device's part, by device ID."""

    key: str
    value: int
    parts: Dict[str, int]

    @classmethod
    def parse(cls, v: Any, what: str = "counter") -> "Counter":
        f = Fields(v, what)
        if not f.boolean("counter", False):
            raise f._bad("counter", "true (the key holds a value, not a counter)")
        try:
            value = int(f.string("value"))
        except ValueError:
            raise f._bad("value", "a decimal number") from None
        p = f.obj("parts")
        return cls(key=f.string("key"), value=value, parts={k: p.integer(k) for k in p.v})


@dataclass(frozen=True)
class KvPage:
    """``kv.list``: entries in key order; ``more`` when the page was full (ask again
    with ``after`` = the last key)."""

    entries: List[KvEntry]
    more: bool

    @classmethod
    def parse(cls, v: Any) -> "KvPage":
        f = Fields(v, "kv.list")
        return cls(entries=[KvEntry.parse(e, "kv.list entry") for e in f.array("entries")], more=f.boolean("more"))


@dataclass(frozen=True)
class KvChange:
    """One change from ``kv.watch``, local or from another device. ``feed_seq`` orders
    the feed (keep the last one to resume); ``wins`` is False for a concurrent write
    that lost (the visible value did not change)."""

    feed_seq: int
    key: str
    value: Optional[bytes]
    deleted: bool
    hlc: str
    origin: str
    seq: int
    wins: bool
    #: The batch this change was written in (``kv_batch``), an opaque string that is
    #: the same on every device; None for a change made on its own.
    batch: Optional[str] = None
    #: True on the last change of its batch: the batch is complete here once this one
    #: is seen. Always False outside a batch.
    batch_end: bool = False
    #: ``HLC:SEQ:ORIGIN``, for ``if_version``; empty from a daemon too old to send it.
    version: str = ""

    @classmethod
    def parse(cls, f: Fields) -> "KvChange":
        v = KvVersion.parse(f)
        batch = f.opt_string("batch")
        batch_end = f.boolean("batch_end", default=False)
        if batch_end and batch is None:
            raise f._bad("batch", "a batch ID (batch_end is true)")
        return cls(
            feed_seq=f.integer("feed_seq"),
            key=v.key,
            value=v.value,
            deleted=v.deleted,
            hlc=v.hlc,
            origin=v.origin,
            seq=v.seq,
            wins=f.boolean("wins"),
            batch=batch,
            batch_end=batch_end,
            version=v.version,
        )


# --- Batches (``kv.batch``) ----------------------------------------------------------


def _check_key(key: object, what: str) -> None:
    if not isinstance(key, str):
        raise TypeError(f"{what}: the key must be a str, not {type(key).__name__}")


def _check_if_version(if_version: object, what: str) -> None:
    if if_version is not None and not isinstance(if_version, str):
        raise TypeError(
            f"{what}: if_version must be a version string (HLC:SEQ:ORIGIN) or None, "
            f"not {type(if_version).__name__}"
        )


@dataclass(frozen=True)
class Put:
    """One put of a batch (``Client.kv_batch``): ``value`` is bytes, or str sent as
    UTF-8. ``if_version`` (a ``version`` read before) or ``if_absent``: the whole batch
    is written only if the key is still so."""

    key: str
    #: bytearray and memoryview values are kept as bytes.
    value: Union[bytes, bytearray, memoryview, str]
    if_version: Optional[str] = None
    if_absent: bool = False

    def __post_init__(self) -> None:
        _check_key(self.key, "Put")
        v: object = self.value
        if isinstance(v, (bytearray, memoryview)):
            object.__setattr__(self, "value", bytes(v))
        elif not isinstance(v, (bytes, str)):
            raise TypeError(f"Put {self.key!r}: the value must be bytes or str, not {type(v).__name__}")
        _check_if_version(self.if_version, f"Put {self.key!r}")
        if not isinstance(self.if_absent, bool):
            raise TypeError(f"Put {self.key!r}: if_absent must be a bool")
        if self.if_version is not None and self.if_absent:
            raise ValueError(f"Put {self.key!r}: give if_version or if_absent, not both")

    @property
    def data(self) -> bytes:
        """The value as the bytes that are stored."""
        v = self.value
        return v.encode("utf-8") if isinstance(v, str) else bytes(v)


@dataclass(frozen=True)
class Delete:
    """One delete of a batch (``Client.kv_batch``). Deleting a key that has no value
    writes nothing (its result is ``unchanged``); with ``if_version`` the whole batch is
    written only if the key is still at that version."""

    key: str
    if_version: Optional[str] = None

    def __post_init__(self) -> None:
        _check_key(self.key, "Delete")
        _check_if_version(self.if_version, f"Delete {self.key!r}")


#: One operation of a batch.
BatchOp = Union[Put, Delete]


@dataclass(frozen=True)
class KvBatchOp:
    """What one operation of a batch did, in the order of the operations.

    A put: ``hlc``, ``origin``, ``seq`` and ``version`` of the version written. A delete:
    the same for the tombstone, with ``deleted``. A delete of a key that had no value:
    ``unchanged`` (nothing written; the other fields are None)."""

    key: str
    hlc: Optional[str]
    origin: Optional[str]
    seq: Optional[int]
    version: Optional[str]
    deleted: bool = False
    unchanged: bool = False

    @classmethod
    def parse(cls, v: Any) -> "KvBatchOp":
        f = Fields(v, "kv.batch op")
        key = f.string("key")
        if f.boolean("unchanged", default=False):
            return cls(key=key, hlc=None, origin=None, seq=None, version=None, unchanged=True)
        return cls(
            key=key,
            hlc=f.string("hlc"),
            origin=f.string("origin"),
            seq=f.integer("seq"),
            version=f.string("version"),
            deleted=f.boolean("deleted", default=False),
        )


@dataclass(frozen=True)
class KvBatch:
    """``kv.batch``: written all or nothing in one durable commit. ``batch`` is the
    batch's ID, the same as in the ``batch`` field of its changes in ``kv_watch`` on every
    device; ``ops`` says what each operation did, in order."""

    batch: str
    ops: Tuple[KvBatchOp, ...]

    @classmethod
    def parse(cls, v: Any) -> "KvBatch":
        f = Fields(v, "kv.batch")
        return cls(batch=f.string("batch"), ops=tuple(KvBatchOp.parse(o) for o in f.array("ops")))
