"""The client of the daemon's control socket."""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from typing import (
    Any,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    TypeVar,
    Union,
)

from ._wire import (
    DEFAULT_MAX_LINE,
    MAX_BODY,
    Conn,
    Fields,
    Oversized,
    connect_unix,
    default_socket_path,
    encode_request,
    parse_line,
    reply_result,
)
from .errors import (
    BadRequest,
    ClientTimeout,
    CnsprError,
    ConnectionLost,
    ProtocolError,
    ReplyTooLarge,
    StoreError,
    TooLarge,
    codes,
    error_for,
)
from .types import (
    BatchOp,
    Delete,
    Event,
    KvBatch,
    Put,
    Handlers,
    Incoming,
    KvChange,
    KvDeleted,
    Counter,
    KvEntry,
    KvPage,
    KvWrite,
    NearbyDevice,
    Paired,
    Peer,
    PeerRef,
    PingResult,
    SendResult,
    Service,
    Status,
    StreamStatus,
    parse_event,
)

PathLike = Union[str, "os.PathLike[str]"]
Body = Union[bytes, bytearray, memoryview, str]

#: Most operations in one ``kv.batch``.
MAX_BATCH_OPS = 1000
#: Most bytes of keys (UTF-8) and values together in one ``kv.batch``.
MAX_BATCH_BYTES = 8 * 1024 * 1024

_ID_HEAD = re.compile(rb'^\s*\{\s*"id"\s*:\s*(\d{1,18})\s*[,}]')


def _deadline(timeout: Optional[float]) -> Optional[float]:
    return None if timeout is None else time.monotonic() + max(0.0, timeout)


def _left(deadline: Optional[float]) -> Optional[float]:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _as_bytes(data: Body, what: str) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"{what} must be bytes or str, not {type(data).__name__}")


def _payload(data: Body, what: str) -> bytes:
    b = _as_bytes(data, what)
    if len(b) > MAX_BODY:
        raise TooLarge(
            codes.TOO_LARGE,
            f"{what} of {len(b)} bytes is over the daemon's limit of {MAX_BODY} bytes",
        )
    return b


def _copy(e: CnsprError) -> CnsprError:
    """A fresh exception of the same kind (one instance is never raised in two threads)."""
    return error_for(e.code, e.message, getattr(e, "current", ()), getattr(e, "key", None))


class _Pending:
    __slots__ = ("conn", "done", "result", "error")

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.done = False
        self.result: Any = None
        self.error: Optional[CnsprError] = None


class Client:
    """A connection to one cnspr daemon.

    ``socket_path``: the daemon's control socket; by default ``$CNSPR_SOCKET``, else the
    daemon's own default (``$XDG_RUNTIME_DIR/cnspr/cnspr.sock``, else
    ``~/.local/share/cnspr/cnspr.sock``). The connection is made at once:
    ``DaemonNotRunning`` if nothing answers there.

    ``timeout``: seconds the client waits for any one reply (None: as long as the daemon
    takes; the daemon bounds its own waits with ``timeout_ms``). ``max_line``: the
    longest reply or event line accepted (``ReplyTooLarge`` beyond; the connection stays
    usable).

    A client is thread-safe: calls from several threads share one connection and are
    pipelined, each reply being matched to its request by ``id``. Commands that take a
    connection over (``subscribe``, ``kv_watch``, ``listen``, ``connect``, ``accept``,
    ``pair``) open a connection of their own. If the connection breaks (the daemon
    restarted) the next call opens a new one.
    """

    def __init__(
        self,
        socket_path: Optional[PathLike] = None,
        *,
        timeout: Optional[float] = None,
        max_line: int = DEFAULT_MAX_LINE,
        connect_timeout: float = 5.0,
    ) -> None:
        if max_line < 1024:
            raise ValueError("max_line must be at least 1024 bytes")
        self.socket_path: str = (
            os.fspath(socket_path) if socket_path is not None else default_socket_path()
        )
        self.timeout = timeout
        self.max_line = max_line
        self.connect_timeout = connect_timeout
        self._cond = threading.Condition()
        self._wlock = threading.Lock()
        self._next_id = 1
        self._pending: Dict[int, _Pending] = {}
        self._abandoned: Set[int] = set()
        self._reading = False
        self._closed = False
        self._conn: Optional[Conn] = self._open()

    # --- plumbing -----------------------------------------------------------------

    def _open(self) -> Conn:
        return Conn(connect_unix(self.socket_path, self.connect_timeout), self.max_line)

    def close(self) -> None:
        """Closes the connection; requests still waiting get ``ConnectionLost``."""
        with self._cond:
            self._closed = True
            conn = self._conn
            if conn is not None:
                self._fail(conn, ConnectionLost(codes.CONNECTION_LOST, "the client was closed"))

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fail(self, conn: Conn, e: CnsprError) -> None:
        """Ends ``conn``: every request waiting on it gets ``e``. Holds ``_cond``."""
        for rid, p in list(self._pending.items()):
            if p.conn is conn:
                p.error = _copy(e)
                p.done = True
                del self._pending[rid]
        conn.close()
        if self._conn is conn:
            self._conn = None
            self._abandoned.clear()
        self._cond.notify_all()

    def _dispatch(self, conn: Conn, item: Union[bytes, Oversized]) -> None:
        """Hands one reply line to its request. Holds ``_cond``."""
        if isinstance(item, Oversized):
            m = _ID_HEAD.match(item.head)
            e = ReplyTooLarge(
                codes.REPLY_TOO_LARGE,
                f"the reply is longer than max_line ({self.max_line} bytes); "
                "ask for less (a smaller limit) or raise max_line",
            )
            rid = int(m.group(1)) if m else -1
            p = self._pending.pop(rid, None)
            if p is not None:
                p.error, p.done = e, True
            elif rid in self._abandoned:
                self._abandoned.discard(rid)
            else:
                self._fail(conn, e)
            return
        try:
            v = parse_line(item, "reply")
        except CnsprError as e:
            self._fail(conn, e)
            return
        raw_id = v.get("id")
        rid = raw_id if isinstance(raw_id, int) and not isinstance(raw_id, bool) else -1
        p = self._pending.pop(rid, None)
        if p is None:
            if rid in self._abandoned:
                self._abandoned.discard(rid)
                return
            msg = "a reply that answers no request"
            err = v.get("error")
            if isinstance(err, dict) and isinstance(err.get("message"), str):
                msg += f": {err.get('code')}: {err['message']}"
            self._fail(conn, ProtocolError(codes.PROTOCOL_ERROR, msg))
            return
        try:
            p.result = reply_result(v, "reply")
        except CnsprError as e:
            p.error = e
        p.done = True

    def request(
        self,
        cmd: str,
        fields: Optional[Mapping[str, Any]] = None,
        body: Optional[bytes] = None,
    ) -> Any:
        """Sends one request and returns its raw ``result`` (JSON), raising the reply's
        error. ``body``: raw bytes written right after the line (for ``body_len`` and
        ``value_len``). The typed methods below are built on this."""
        fields = dict(fields or {})
        if "id" in fields or "cmd" in fields:
            raise ValueError("fields may not contain 'id' or 'cmd'")
        deadline = _deadline(self.timeout)
        with self._cond:
            if self._closed:
                raise ConnectionLost(codes.CONNECTION_LOST, "the client was closed")
            conn = self._conn
            if conn is None or conn.closed or conn.eof:
                if conn is not None:
                    self._fail(conn, ConnectionLost(codes.CONNECTION_LOST, "the daemon closed the connection"))
                conn = self._conn = self._open()
            rid = self._next_id
            self._next_id += 1
            line = encode_request({"id": rid, "cmd": cmd, **fields})
            p = _Pending(conn)
            self._pending[rid] = p
        try:
            with self._wlock:
                conn.send_all(line, deadline)
                if body:
                    conn.send_all(body, deadline)
        except CnsprError as e:
            # A partial write leaves the connection out of step: drop it.
            with self._cond:
                self._fail(conn, e)
        return self._wait(rid, p, conn, deadline)

    def _wait(self, rid: int, p: _Pending, conn: Conn, deadline: Optional[float]) -> Any:
        while True:
            with self._cond:
                while True:
                    if p.done:
                        if p.error is not None:
                            raise p.error
                        return p.result
                    if deadline is not None and time.monotonic() >= deadline:
                        if self._pending.pop(rid, None) is not None:
                            self._abandoned.add(rid)
                        raise ClientTimeout(
                            codes.CLIENT_TIMEOUT,
                            f"no reply from the daemon within {self.timeout} s",
                        )
                    if not self._reading:
                        self._reading = True
                        break
                    self._cond.wait(_left(deadline))
            # This thread reads one line for whoever it answers.
            try:
                item = conn.read_line(deadline)
            except CnsprError as e:
                with self._cond:
                    self._reading = False
                    self._fail(conn, e)
                continue
            with self._cond:
                self._reading = False
                if item is not None:
                    self._dispatch(conn, item)
                self._cond.notify_all()

    def _dedicated(
        self, cmd: str, fields: Mapping[str, Any], deadline: Optional[float] = None
    ) -> Tuple[Conn, Any]:
        """Opens a connection of its own for a command that takes it over; returns it
        with the first reply's result (raises the reply's error, closing it)."""
        conn = self._open()
        try:
            conn.send_all(encode_request({"id": 1, "cmd": cmd, **fields}), deadline)
            return conn, _read_reply(conn, 1, deadline, cmd)
        except BaseException:
            conn.close()
            raise

    # --- daemon and peers ---------------------------------------------------------

    def status(self) -> Status:
        """This daemon: ID, name, addresses, counters."""
        return Status.parse(self.request("status"))

    def peers(self) -> List[Peer]:
        """Every trusted peer (and removed device), sorted by name then ID."""
        r = self.request("peers")
        if not isinstance(r, list):
            raise ProtocolError(codes.PROTOCOL_ERROR, "peers: expected a list")
        return [Peer.parse(p, "peers[]") for p in r]

    def ping(self, peer: str, *, timeout_ms: Optional[int] = None) -> PingResult:
        """One round trip to ``peer`` (a name or an ID prefix)."""
        return PingResult.parse(self.request("ping", _opt(peer=peer, timeout_ms=timeout_ms)))

    def trust(
        self, device: str, *, name: Optional[str] = None, addrs: Sequence[str] = ()
    ) -> Peer:
        """Trusts a device by ID, with ``HOST:PORT`` addresses where it listens."""
        return Peer.parse(
            self.request("trust", _opt(device=device, name=name, addrs=list(addrs) or None)),
            "trust",
        )

    def remove(self, peer: str) -> PeerRef:
        """Revokes a device everywhere in the mesh (final)."""
        return PeerRef.parse(Fields(self.request("remove", {"peer": peer}), "remove").obj("removed"))

    def handlers(self) -> Handlers:
        """The handlers found in this daemon's handler directory."""
        return Handlers.parse(self.request("handlers"))

    def stop(self) -> None:
        """Asks the daemon to stop gracefully."""
        r = self.request("stop")
        if not Fields(r, "stop").boolean("stopping"):
            raise ProtocolError(codes.PROTOCOL_ERROR, "stop: the daemon did not confirm")
        with self._cond:
            if self._conn is not None:
                self._fail(self._conn, ConnectionLost(codes.CONNECTION_LOST, "the daemon stopped"))

    # --- messages and events ------------------------------------------------------

    def send(
        self,
        peer: str,
        tag: str,
        body: Body = b"",
        *,
        reply: bool = False,
        timeout_ms: Optional[int] = None,
    ) -> SendResult:
        """Sends a tagged message to ``peer``; returns once its daemon acknowledged it.

        ``body`` (bytes, or str as UTF-8) travels as raw bytes after the request line,
        so any bytes up to 20 MiB are fine. With ``reply`` it waits for the receiver's
        handlers and returns their output (``result.replies``). A failed delivery raises
        (``Unreachable``, ``Timeout``, ``QueueFull``...)."""
        return self._send({"peer": peer}, tag, body, reply, timeout_ms)

    def send_all(
        self,
        tag: str,
        body: Body = b"",
        *,
        reply: bool = False,
        timeout_ms: Optional[int] = None,
    ) -> SendResult:
        """Sends to every trusted peer. Does not raise for a failed delivery: check each
        outcome's ``ok`` and ``error``."""
        return self._send({"all": True}, tag, body, reply, timeout_ms)

    def _send(
        self, to: Dict[str, Any], tag: str, body: Body, reply: bool, timeout_ms: Optional[int]
    ) -> SendResult:
        data = _payload(body, "body")
        fields = dict(to, tag=tag, **_opt(timeout_ms=timeout_ms))
        if reply:
            fields["reply"] = True
        if data:
            fields["body_len"] = len(data)
        return SendResult.parse(self.request("send", fields, data))

    def subscribe(self, kinds: Optional[Iterable[str]] = None) -> "Subscription":
        """Events as they happen: ``message``, ``peer``, ``daemon`` (None: all)."""
        fields = {} if kinds is None else {"events": list(kinds)}
        conn, r = self._dedicated("subscribe", fields, _deadline(self.timeout))
        if not Fields(r, "subscribe").boolean("subscribed"):
            conn.close()
            raise ProtocolError(codes.PROTOCOL_ERROR, "subscribe: not confirmed")
        return Subscription(conn)

    # --- key-value store ----------------------------------------------------------

    def kv_put(
        self, key: str, value: Body, *, if_version: Optional[str] = None, if_absent: bool = False
    ) -> KvWrite:
        """Stores ``value`` (bytes, or str as UTF-8) under ``key``; durable on disk when
        it returns. Values travel as raw bytes (binary-safe). With ``if_version`` (the
        ``version`` of an entry read before) or ``if_absent``, writes only if the key is
        still so, else raises ``Conflict`` (its ``current`` lists the versions now) and
        writes nothing."""
        data = _payload(value, "value")
        fields: Dict[str, Any] = {"key": key, "value_len": len(data)}
        if if_version is not None:
            fields["if_version"] = if_version
        if if_absent:
            fields["if_absent"] = True
        return KvWrite.parse(self.request("kv.put", fields, data))

    def kv_batch(self, ops: Iterable[BatchOp]) -> KvBatch:
        """Writes several keys at once: ``Put`` and ``Delete`` operations, applied all or
        nothing in one durable commit. Any other device shows all of the batch or none
        of it, and its changes come out of ``kv_watch`` marked with the batch's ID.

        Keys must be distinct; 1 to 1,000 operations and at most 8 MiB of keys and
        values in all (else ``BadRequest`` / ``TooLarge``, before anything is sent). Values travel
        as raw bytes after the request line (binary-safe). If any condition fails the
        whole batch raises ``Conflict`` (``key``: the key whose condition failed,
        ``current``: its versions now) and nothing of it is written. Returns what each
        operation did, in order, and the batch's ID."""
        ops = list(ops)
        if not 1 <= len(ops) <= MAX_BATCH_OPS:
            raise BadRequest(
                codes.BAD_REQUEST,
                f"a batch holds 1 to {MAX_BATCH_OPS} operations, not {len(ops)}",
            )
        wire: List[Dict[str, Any]] = []
        body: List[bytes] = []
        seen: Set[str] = set()
        total = 0
        for i, op in enumerate(ops):
            if not isinstance(op, (Put, Delete)):
                raise TypeError(
                    f"batch operation {i} is a {type(op).__name__}; give Put or Delete"
                )
            if op.key in seen:
                raise BadRequest(
                    codes.BAD_REQUEST,
                    f"key {op.key!r} appears more than once in the batch (operation {i}); "
                    "a batch writes each key at most once",
                )
            seen.add(op.key)
            total += len(op.key.encode("utf-8"))
            o: Dict[str, Any] = {"key": op.key}
            if isinstance(op, Put):
                data = op.data
                total += len(data)
                o["op"] = "put"
                o["value_len"] = len(data)
                if op.if_absent:
                    o["if_absent"] = True
                body.append(data)
            else:
                o["op"] = "del"
            if op.if_version is not None:
                o["if_version"] = op.if_version
            wire.append(o)
        if total > MAX_BATCH_BYTES:
            raise TooLarge(
                codes.TOO_LARGE,
                f"a batch of {total} bytes of keys and values is over the limit of "
                f"{MAX_BATCH_BYTES} bytes; split it",
            )
        r = KvBatch.parse(self.request("kv.batch", {"ops": wire}, b"".join(body)))
        if [o.key for o in r.ops] != [o["key"] for o in wire]:
            raise ProtocolError(
                codes.PROTOCOL_ERROR, "kv.batch: the reply does not answer the operations sent"
            )
        return r

    def kv_get(self, key: str, *, all_versions: bool = False) -> KvEntry:
        """The visible value of ``key``; ``NotFound`` if absent or deleted. With
        ``all_versions`` the entry's ``siblings`` are the concurrent versions that lost."""
        return KvEntry.parse(self.request("kv.get", {"key": key, "all_versions": all_versions}), "kv.get")

    def kv_del(self, key: str, *, if_version: Optional[str] = None) -> KvDeleted:
        """Deletes ``key`` (a tombstone); ``NotFound`` if it had no live value. With
        ``if_version``, only if the key is still at that version (else ``Conflict``)."""
        fields: Dict[str, Any] = {"key": key}
        if if_version is not None:
            fields["if_version"] = if_version
        return KvDeleted.parse(self.request("kv.del", fields))

    def kv_incr(self, key: str, by: int = 1) -> Counter:
        """Adds ``by`` (may be negative) to the counter ``key``: durable when returned;
        counts made on devices that were apart all add up once they meet."""
        return Counter.parse(self.request("kv.incr", {"key": key, "by": by}), "kv.incr")

    def kv_counter(self, key: str) -> Counter:
        """The counter ``key``: its value and each device's part; ``NotFound`` if nobody
        counted, ``ProtocolError`` if the key holds a plain value."""
        return Counter.parse(self.request("kv.get", {"key": key}), "kv.get")

    def kv_list(
        self, prefix: str = "", *, after: Optional[str] = None, limit: Optional[int] = None
    ) -> KvPage:
        """One page of live keys under ``prefix``, in key order, after key ``after``;
        ``limit`` up to 10,000 (daemon default 1,000)."""
        return KvPage.parse(self.request("kv.list", _opt(prefix=prefix, after=after, limit=limit)))

    def kv_items(self, prefix: str = "", *, page_size: int = 1000) -> Iterator[KvEntry]:
        """Every live key under ``prefix``, paging through ``kv_list``."""
        after: Optional[str] = None
        while True:
            page = self.kv_list(prefix, after=after, limit=page_size)
            yield from page.entries
            if not page.more or not page.entries:
                return
            after = page.entries[-1].key

    def kv_watch(self, prefix: str = "", *, from_seq: int = 0) -> "KvWatch":
        """Changes under ``prefix``: first those after feed seq ``from_seq`` (from the
        durable feed), then live ones, each once, in ``feed_seq`` order. Keep
        ``watch.last_seq`` to resume later."""
        if from_seq < 0:
            raise ValueError("from_seq must be >= 0")
        conn, r = self._dedicated(
            "kv.watch", {"prefix": prefix, "from_seq": from_seq}, _deadline(self.timeout)
        )
        Fields(r, "kv.watch").string("watching")
        return KvWatch(conn, prefix, from_seq)

    # --- streams ------------------------------------------------------------------

    def connect(self, peer: str, service: str, *, timeout_ms: Optional[int] = None) -> "Stream":
        """A byte stream to ``service`` on ``peer`` (a listener or an exposed address
        there). Raises ``UnknownService``, ``Unavailable``, ``Unreachable``..."""
        conn, r = self._dedicated(
            "connect", _opt(peer=peer, service=service, timeout_ms=timeout_ms), _deadline(self.timeout)
        )
        token = _token(r, "connect")
        return Stream(conn, token, service, peer, None, self)

    def listen(self, service: str) -> "Listener":
        """Listens for streams that peers open to ``service`` on this device."""
        conn, r = self._dedicated("listen", {"service": service}, _deadline(self.timeout))
        if Fields(r, "listen").string("listening") != service:
            conn.close()
            raise ProtocolError(codes.PROTOCOL_ERROR, "listen: a different service was confirmed")
        return Listener(conn, service, self)

    def accept(self, incoming: Union[Incoming, str]) -> "Stream":
        """Takes an announced stream (an ``Incoming`` or its token)."""
        token = incoming if isinstance(incoming, str) else incoming.stream
        conn, r = self._dedicated("accept", {"stream": token}, _deadline(self.timeout))
        mine = _token(r, "accept")
        if isinstance(incoming, Incoming):
            return Stream(conn, mine, incoming.service, incoming.peer.name, incoming.peer.id, self)
        return Stream(conn, mine, "", "", None, self)

    def stream_status(self, stream: str, *, wait_ms: int = 0) -> StreamStatus:
        """How a stream ended (``open`` while it runs), waiting up to ``wait_ms``."""
        return StreamStatus.parse(self.request("stream_status", {"stream": stream, "wait_ms": wait_ms}))

    def services(self) -> List[Service]:
        """The services this daemon serves (listeners and exposes)."""
        r = self.request("services")
        if not isinstance(r, list):
            raise ProtocolError(codes.PROTOCOL_ERROR, "services: expected a list")
        return [Service.parse(s) for s in r]

    def expose(self, service: str, target: str) -> Service:
        """Forwards streams for ``service`` to ``HOST:PORT`` or ``unix:/path`` (kept
        across restarts)."""
        return Service.parse(self.request("expose", {"service": service, "target": target}))

    def unexpose(self, service: str) -> None:
        """Stops forwarding ``service``; ``UnknownService`` if it was not exposed."""
        Fields(self.request("unexpose", {"service": service}), "unexpose").string("unexposed")

    # --- pairing ------------------------------------------------------------------

    def pair(self, *, timeout_s: Optional[int] = None) -> "PairWindow":
        """Opens a pairing window; show ``window.code`` to the other device and call
        ``window.wait()``. Closing the window (or the client) closes it on the daemon."""
        conn, r = self._dedicated("pair", _opt(timeout_s=timeout_s), _deadline(self.timeout))
        try:
            f = Fields(r, "pair")
            return PairWindow(
                conn,
                code=f.string("code"),
                expires_in_s=f.integer("expires_in_s"),
                addresses=f.strings("addresses"),
                nearby=[NearbyDevice.parse(n) for n in f.array("nearby")],
            )
        except BaseException:
            conn.close()
            raise

    def pair_join(
        self, code: str, *, addrs: Sequence[str] = (), timeout_s: Optional[int] = None
    ) -> Paired:
        """Joins the device whose window shows ``code`` (found by mDNS, or at ``addrs``)."""
        return Paired.parse(
            self.request("pair.join", _opt(code=code, addrs=list(addrs) or None, timeout_s=timeout_s)),
            "pair.join",
        )

    def pair_nearby(self) -> List[NearbyDevice]:
        """Devices seen on the LAN that are not in the mesh."""
        r = self.request("pair.nearby")
        if not isinstance(r, list):
            raise ProtocolError(codes.PROTOCOL_ERROR, "pair.nearby: expected a list")
        return [NearbyDevice.parse(n) for n in r]


def _opt(**kw: Any) -> Dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


def _token(r: Any, what: str) -> str:
    t = Fields(r, what).string("stream")
    if not re.fullmatch(r"[0-9a-f]{16}", t):
        raise ProtocolError(codes.PROTOCOL_ERROR, f"{what}: {t!r} is not a stream token")
    return t


def _read_reply(conn: Conn, rid: int, deadline: Optional[float], what: str) -> Any:
    """The next line on a dedicated connection, as the reply to request ``rid``."""
    item = conn.read_line(deadline)
    if item is None:
        raise ClientTimeout(codes.CLIENT_TIMEOUT, f"{what}: no reply from the daemon in time")
    if isinstance(item, Oversized):
        raise ReplyTooLarge(codes.REPLY_TOO_LARGE, f"{what}: the reply is longer than max_line")
    v = parse_line(item, what)
    if v.get("id") != rid:
        raise ProtocolError(codes.PROTOCOL_ERROR, f"{what}: a reply to another request")
    return reply_result(v, what)


_L = TypeVar("_L", bound="_Lines")


class _Lines:
    """A connection the daemon writes one object per line to (events, changes)."""

    def __init__(self, conn: Conn, what: str) -> None:
        self._conn = conn
        self._what = what

    @property
    def closed(self) -> bool:
        return self._conn.closed

    def close(self) -> None:
        """Ends it (the daemon drops the subscription when the connection closes)."""
        self._conn.close()

    def __enter__(self: _L) -> _L:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_fields(self, timeout: Optional[float]) -> Optional[Fields]:
        if self._conn.closed:
            raise ConnectionLost(codes.CONNECTION_LOST, f"{self._what} is closed")
        try:
            item = self._conn.read_line(_deadline(timeout))
        except CnsprError:
            self._conn.close()
            raise
        if item is None:
            return None
        if isinstance(item, Oversized):
            self._conn.close()
            raise ReplyTooLarge(
                codes.REPLY_TOO_LARGE, f"{self._what}: a line is longer than max_line; it was closed"
            )
        try:
            f = Fields(parse_line(item, self._what), self._what)
            f.string("event")
        except CnsprError:
            self._conn.close()
            raise
        return f


class Subscription(_Lines):
    """Events from ``Client.subscribe``. Iterate (blocking) or call ``next(timeout)``.
    When the daemon stops, ``ConnectionLost`` is raised (after its ``daemon.stop``)."""

    def __init__(self, conn: Conn) -> None:
        super().__init__(conn, "subscription")

    def next(self, timeout: Optional[float] = None) -> Optional[Event]:
        """The next event, or None if none came within ``timeout`` seconds."""
        f = self._next_fields(timeout)
        return None if f is None else parse_event(f)

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        if self.closed:
            raise StopIteration
        ev = self.next()
        assert ev is not None
        return ev


class KvWatch(_Lines):
    """Changes from ``Client.kv_watch``. ``last_seq`` is the ``feed_seq`` of the last
    change returned (or the ``from_seq`` given): pass it as ``from_seq`` to resume."""

    def __init__(self, conn: Conn, prefix: str, from_seq: int) -> None:
        super().__init__(conn, "kv watch")
        self.prefix = prefix
        self.last_seq = from_seq

    def next(self, timeout: Optional[float] = None) -> Optional[KvChange]:
        """The next change, or None if none came within ``timeout`` seconds. Raises
        ``StoreError`` when the daemon cannot serve the feed (e.g. it no longer holds
        the changes after ``from_seq``: list the store, then watch again)."""
        f = self._next_fields(timeout)
        if f is None:
            return None
        kind = f.string("event")
        if kind == "error":
            self.close()
            raise StoreError(codes.STORE, f.opt_string("message") or "the change feed failed")
        if kind != "kv":
            self.close()
            raise ProtocolError(codes.PROTOCOL_ERROR, f"kv watch: unexpected event {kind!r}")
        c = KvChange.parse(f)
        if c.feed_seq <= self.last_seq or not c.key.startswith(self.prefix):
            self.close()
            raise ProtocolError(
                codes.PROTOCOL_ERROR,
                f"kv watch: change {c.feed_seq} for {c.key!r} is out of order or outside the prefix",
            )
        self.last_seq = c.feed_seq
        return c

    def __iter__(self) -> Iterator[KvChange]:
        return self

    def __next__(self) -> KvChange:
        if self.closed:
            raise StopIteration
        c = self.next()
        assert c is not None
        return c


class Listener(_Lines):
    """Streams announced for a service (``Client.listen``). The service is served as
    long as the listener is open."""

    def __init__(self, conn: Conn, service: str, client: Client) -> None:
        super().__init__(conn, f"listener for {service!r}")
        self.service = service
        self._client = client

    def next(self, timeout: Optional[float] = None) -> Optional[Incoming]:
        """The next announced stream, or None after ``timeout`` seconds. Accept it
        within 10 s (``Client.accept``) or the connecting side gets ``unavailable``."""
        f = self._next_fields(timeout)
        if f is None:
            return None
        if f.string("event") != "incoming":
            self.close()
            raise ProtocolError(codes.PROTOCOL_ERROR, "listener: unexpected event")
        return Incoming.parse(f)

    def accept(self, timeout: Optional[float] = None) -> "Stream":
        """Waits for the next stream and takes it; ``ClientTimeout`` after ``timeout``."""
        inc = self.next(timeout)
        if inc is None:
            raise ClientTimeout(codes.CLIENT_TIMEOUT, f"no stream for {self.service!r} within {timeout} s")
        return self._client.accept(inc)

    def __iter__(self) -> Iterator[Incoming]:
        return self

    def __next__(self) -> Incoming:
        if self.closed:
            raise StopIteration
        inc = self.next()
        assert inc is not None
        return inc


class Stream:
    """One end of a byte stream to a peer's service, in raw mode: bytes written go to
    the other end unchanged, bytes read come from it.

    ``shutdown_write()`` ends this direction (the other end reads end of file) while
    reading goes on. A broken stream (lost connection, reset) looks like a closed
    socket; ``status()`` tells which it was. ``detach()`` gives the raw socket.
    """

    def __init__(
        self, conn: Conn, token: str, service: str, peer: str, peer_id: Optional[str], client: Client
    ) -> None:
        self.token = token
        self.service = service
        #: The peer as given to ``connect``, or its name for an accepted stream.
        self.peer = peer
        #: The peer's device ID, for an accepted stream.
        self.peer_id = peer_id
        self._sock: Optional[socket.socket] = conn.sock
        self._pending = conn.take_buffer()
        self._client = client

    def _s(self) -> socket.socket:
        if self._sock is None:
            raise ValueError("the stream is closed or detached")
        return self._sock

    def read(self, n: int = 65536) -> bytes:
        """Up to ``n`` bytes; ``b""`` at end of file."""
        if n <= 0:
            return b""
        if self._pending:
            out, self._pending = self._pending[:n], self._pending[n:]
            return out
        return self._s().recv(n)

    def read_exact(self, n: int) -> bytes:
        """Exactly ``n`` bytes; ``EOFError`` if the stream ends first."""
        parts: List[bytes] = []
        got = 0
        while got < n:
            b = self.read(min(n - got, 1 << 20))
            if not b:
                raise EOFError(f"the stream ended after {got} of {n} bytes")
            parts.append(b)
            got += len(b)
        return b"".join(parts)

    def read_all(self, max_bytes: int = 64 * 1024 * 1024) -> bytes:
        """Everything until end of file; ``ValueError`` past ``max_bytes``."""
        parts: List[bytes] = []
        got = 0
        while True:
            b = self.read(1 << 16)
            if not b:
                return b"".join(parts)
            got += len(b)
            if got > max_bytes:
                raise ValueError(f"the stream sent more than {max_bytes} bytes")
            parts.append(b)

    def write(self, data: Union[bytes, bytearray, memoryview]) -> None:
        """Writes all of ``data``."""
        self._s().sendall(data)

    def shutdown_write(self) -> None:
        """Ends the direction to the peer (it reads end of file)."""
        self._s().shutdown(socket.SHUT_WR)

    def settimeout(self, timeout: Optional[float]) -> None:
        """Timeout of ``read`` and ``write`` (``socket.timeout`` past it)."""
        self._s().settimeout(timeout)

    def fileno(self) -> int:
        return self._s().fileno()

    def status(self, wait: float = 0.0) -> StreamStatus:
        """How this end of the stream ended (``open`` while running), waiting up to
        ``wait`` seconds for it to end."""
        return self._client.stream_status(self.token, wait_ms=int(wait * 1000))

    def detach(self) -> Tuple[socket.socket, bytes]:
        """The raw socket and the stream bytes already read from it (to be used
        first). The ``Stream`` is unusable afterwards."""
        s, self._sock = self._s(), None
        data, self._pending = self._pending, b""
        return s, data

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    @property
    def closed(self) -> bool:
        return self._sock is None

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PairWindow:
    """An open pairing window (``Client.pair``)."""

    def __init__(
        self, conn: Conn, *, code: str, expires_in_s: int, addresses: List[str], nearby: List[NearbyDevice]
    ) -> None:
        self._conn = conn
        self.code = code
        self.expires_in_s = expires_in_s
        #: ``HOST:PORT`` where the window listens (for ``pair_join(addrs=...)``).
        self.addresses = addresses
        self.nearby = nearby
        #: Failed attempts on this window so far, as the daemon reported them (each a
        #: dict: ``result``, ``id``, ``name``, ``address``, ``failures``, ``left``, and
        #: ``reason`` for a refusal).
        self.attempts: List[Dict[str, Any]] = []

    def wait(self, timeout: Optional[float] = None) -> Paired:
        """The device that joined; ``WrongCode`` after three wrong codes, ``Timeout``
        when the window expired, ``ClientTimeout`` after ``timeout`` seconds. Failed
        attempts reported before the outcome are kept in ``attempts``."""
        deadline = _deadline(timeout)
        try:
            while True:
                res = _read_reply(self._conn, 1, deadline, "pair")
                if isinstance(res, dict) and isinstance(res.get("attempt"), dict):
                    self.attempts.append(res["attempt"])
                    continue
                return Paired.parse(res, "pair")
        except ClientTimeout:
            raise
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Closes the window."""
        self._conn.close()

    def __enter__(self) -> "PairWindow":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
