"""The client against a scripted fake daemon: what a real daemon does not send on
purpose (oversized, malformed or mistyped lines, replies out of order, silence)."""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest

from cnspr import (
    Client,
    ClientTimeout,
    CnsprError,
    Conflict,
    Delete,
    Put,
    ConnectionLost,
    ProtocolError,
    ReplyTooLarge,
    StoreError,
    UnknownPeer,
    codes,
)


class Peer:
    """The daemon's side of one connection."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buf = b""

    def request(self) -> Dict[str, Any]:
        while b"\n" not in self.buf:
            chunk = self.conn.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)

    def reply(self, rid: Any, result: Any) -> None:
        self.send(json.dumps({"id": rid, "ok": True, "result": result}).encode() + b"\n")


Script = Callable[[Peer], None]


@pytest.fixture
def fake() -> Iterator[Callable[..., str]]:
    """``fake(script, ...)``: a socket whose n-th connection runs the n-th script."""
    d = tempfile.mkdtemp(prefix="cnspr-fake-", dir="/tmp")
    path = str(Path(d) / "s.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(8)
    threads: List[threading.Thread] = []
    errors: List[BaseException] = []

    def start(*scripts: Script) -> str:
        """Serves the n-th connection with the n-th script, each in its own thread."""

        def serve(script: Script, conn: socket.socket) -> None:
            with conn:
                try:
                    script(Peer(conn))
                except (EOFError, ConnectionResetError, BrokenPipeError):
                    pass
                except BaseException as e:  # pragma: no cover - reported below
                    errors.append(e)

        def run() -> None:
            for script in scripts:
                conn, _ = srv.accept()
                t = threading.Thread(target=serve, args=(script, conn), daemon=True)
                t.start()
                threads.append(t)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        threads.append(t)
        return path

    try:
        yield start
    finally:
        srv.close()
        for t in list(threads):
            t.join(10)
        shutil.rmtree(d, ignore_errors=True)
    assert not errors, errors


def test_replies_out_of_order_go_to_their_callers(fake: Callable[..., str]) -> None:
    def script(p: Peer) -> None:
        a, b = p.request(), p.request()
        p.reply(b["id"], f"answer to {b['cmd']}")
        p.reply(a["id"], f"answer to {a['cmd']}")

    c = Client(fake(script))
    results: Dict[str, Any] = {}
    ts = [threading.Thread(target=lambda n=n: results.__setitem__(n, c.request(n))) for n in ("one", "two")]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    assert results == {"one": "answer to one", "two": "answer to two"}


def test_an_oversized_reply_fails_only_its_request(fake: Callable[..., str]) -> None:
    def script(p: Peer) -> None:
        r = p.request()
        p.send(b'{"id":%d,"ok":true,"result":"' % r["id"] + b"x" * 5000 + b'"}\n')
        r2 = p.request()
        p.reply(r2["id"], "fine")

    c = Client(fake(script), max_line=1024)
    with pytest.raises(ReplyTooLarge) as e:
        c.request("big")
    assert e.value.code == codes.REPLY_TOO_LARGE
    assert c.request("small") == "fine"


def test_a_line_that_is_not_json_breaks_the_connection_cleanly(fake: Callable[..., str]) -> None:
    def bad(p: Peer) -> None:
        p.request()
        p.send(b"this is not json\n")

    def good(p: Peer) -> None:
        r = p.request()
        p.reply(r["id"], 42)

    c = Client(fake(bad, good))
    with pytest.raises(ProtocolError) as e:
        c.request("x")
    assert e.value.code == codes.PROTOCOL_ERROR
    assert c.request("y") == 42  # a new connection


@pytest.mark.parametrize(
    "line",
    [
        b'{"id":1,"ok":true,"result":NaN}',
        b"[" * 100000 + b"]" * 100000,
        b'{"id":1,"ok":"yes","result":1}',
        b'{"id":1,"ok":false,"error":"no code"}',
        b'{"id":1,"ok":true}',
        b'{"id":77,"ok":true,"result":1}',
        b'"just a string"',
        b'{"id":1,"ok":true,"result":"\xff\xfe"}',
    ],
)
def test_malformed_replies_are_protocol_errors(fake: Callable[..., str], line: bytes) -> None:
    def script(p: Peer) -> None:
        p.request()
        p.send(line + b"\n")

    c = Client(fake(script))
    with pytest.raises(ProtocolError):
        c.request("x")


def test_mistyped_fields_are_named(fake: Callable[..., str]) -> None:
    def script(p: Peer) -> None:
        r = p.request()
        p.reply(r["id"], {"address": "a", "id": "I", "peer": "p", "rtt_ms": "fast", "via": []})

    c = Client(fake(script))
    with pytest.raises(ProtocolError) as e:
        c.ping("p")
    assert "rtt_ms" in e.value.message


def test_error_codes_map_to_classes_and_unknown_codes_stay_readable(fake: Callable[..., str]) -> None:
    def script(p: Peer) -> None:
        for code in ("unknown_peer", "brand_new_code"):
            r = p.request()
            p.send(json.dumps({"id": r["id"], "ok": False, "error": {"code": code, "message": "m"}}).encode() + b"\n")

    c = Client(fake(script))
    with pytest.raises(UnknownPeer):
        c.ping("x")
    with pytest.raises(CnsprError) as e:
        c.ping("x")
    assert type(e.value) is CnsprError and e.value.code == "brand_new_code" and e.value.message == "m"


def test_silence_gives_client_timeout_and_the_late_reply_is_dropped(fake: Callable[..., str]) -> None:
    def script(p: Peer) -> None:
        first = p.request()
        second = p.request()  # sent by the client after it gave up on the first
        p.reply(first["id"], "late")
        p.reply(second["id"], "second")

    c = Client(fake(script), timeout=0.2)
    with pytest.raises(ClientTimeout):
        c.request("first")
    c.timeout = None
    assert c.request("second") == "second"


def test_the_daemon_going_away_mid_request(fake: Callable[..., str]) -> None:
    def script(p: Peer) -> None:
        p.request()
        p.send(b'{"id":1,"ok":tr')  # and closes

    c = Client(fake(script))
    with pytest.raises(ConnectionLost):
        c.request("x")


def test_watch_validates_its_feed(fake: Callable[..., str]) -> None:
    change = {"event": "kv", "key": "p/a", "value_b64": "eA==", "deleted": False, "hlc": "1.0",
              "origin": "O", "seq": 1, "wins": True}

    def trimmed(p: Peer) -> None:
        r = p.request()
        assert r["cmd"] == "kv.watch" and r["from_seq"] == 5
        p.reply(r["id"], {"watching": "p/"})
        p.send(json.dumps({"event": "error", "message": "the change feed no longer holds entries"}).encode() + b"\n")

    def disordered(p: Peer) -> None:
        r = p.request()
        p.reply(r["id"], {"watching": "p/"})
        for seq in (3, 2):
            p.send(json.dumps(dict(change, feed_seq=seq)).encode() + b"\n")
        p.request()  # wait for the client to hang up

    def idle(p: Peer) -> None:  # the client's own connection, unused here
        p.request()

    path = fake(idle, trimmed, disordered)
    with Client(path) as c:
        w = c.kv_watch("p/", from_seq=5)
        with pytest.raises(StoreError) as e:
            w.next(timeout=10)
        assert e.value.code == "store" and "no longer holds" in e.value.message
        w2 = c.kv_watch("p/")
        first = w2.next(timeout=10)
        assert first is not None and first.feed_seq == 3 and first.value == b"x"
        with pytest.raises(ProtocolError):
            w2.next(timeout=10)
        assert w2.closed and w2.last_seq == 3


def test_batch_values_go_raw_after_the_line_in_op_order(fake: Callable[..., str]) -> None:
    values = [b"\x00\n\xff", b"", "é".encode()]

    def script(p: Peer) -> None:
        r = p.request()
        assert r["cmd"] == "kv.batch"
        assert r["ops"] == [
            {"op": "put", "key": "b/0", "value_len": 3},
            {"op": "put", "key": "b/1", "value_len": 0, "if_absent": True},
            {"op": "del", "key": "b/2", "if_version": "V"},
            {"op": "put", "key": "b/3", "value_len": 2, "if_version": "W"},
        ]
        # The raw values follow the line, concatenated in op order, then the next line.
        while len(p.buf) < 5:
            p.buf += p.conn.recv(65536)
        raw, p.buf = p.buf[:5], p.buf[5:]
        assert raw == b"".join(values)
        op = {"hlc": "1.0", "origin": "O", "seq": 1, "version": "1.0:1:O"}
        p.reply(r["id"], {"batch": "B1", "ops": [
            dict(op, key="b/0"), dict(op, key="b/1"), dict(op, key="b/2", deleted=True), dict(op, key="b/3")]})
        r = p.request()
        while not p.buf:
            p.buf += p.conn.recv(65536)
        assert p.buf[:1] == b"x"
        p.buf = p.buf[1:]
        p.send(json.dumps({"id": r["id"], "ok": False, "error": {
            "code": "conflict", "message": "b/0 changed", "key": "b/0",
            "current": [{"hlc": "2.0", "origin": "O", "seq": 2, "version": "2.0:2:O"}]}}).encode() + b"\n")
        r = p.request()
        p.reply(r["id"], {"batch": "B2", "ops": [{"key": "other", "unchanged": True}]})
        p.request()  # wait for the client to hang up

    with Client(fake(script)) as c:
        res = c.kv_batch([Put("b/0", values[0]), Put("b/1", values[1], if_absent=True),
                          Delete("b/2", if_version="V"), Put("b/3", "é", if_version="W")])
        assert res.batch == "B1" and [o.deleted for o in res.ops] == [False, False, True, False]
        with pytest.raises(Conflict) as e:
            c.kv_batch([Put("b/0", b"x")])
        assert e.value.key == "b/0" and e.value.current == ("2.0:2:O",)
        with pytest.raises(ProtocolError):
            c.kv_batch([Delete("b/9")])
