"""Streams between the two daemons: listen/accept/connect, half-close, status,
expose to a local TCP server, errors."""

from __future__ import annotations

import socket
import threading
from typing import List

import pytest

from cnspr import BadRequest, ClientTimeout, InvalidAddress, UnknownService, UnknownStream

from conftest import Daemon

PAYLOAD = bytes(range(256)) * 512  # 128 KiB, every byte value


def test_stream_round_trip_between_the_daemons(alpha: Daemon, beta: Daemon) -> None:
    with beta.client() as cb, alpha.client() as ca:
        with cb.listen("test-chat") as lst:
            assert [s.service for s in cb.services() if s.kind == "listen"] == ["test-chat"]
            got: List[object] = []

            def serve() -> None:
                try:
                    with lst.accept(timeout=30) as s:
                        got.append((s.peer, s.peer_id, s.service))
                        data = s.read_all()
                        got.append(data)
                        s.write(b"echo:" + data)
                        s.shutdown_write()
                        got.append(s.status(wait=10))
                except BaseException as e:  # reported by the main thread
                    got.append(e)

            t = threading.Thread(target=serve)
            t.start()
            with ca.connect("beta", "test-chat", timeout_ms=15000) as s:
                assert len(s.token) == 16 and s.peer == "beta" and s.service == "test-chat"
                s.write(PAYLOAD)
                s.shutdown_write()
                assert s.read_all() == b"echo:" + PAYLOAD
                st = s.status(wait=10)
                assert st.closed and st.error is None and st.stream == s.token
            t.join(30)
            assert got[0] == ("alpha", alpha.id, "test-chat"), got
            assert got[1] == PAYLOAD
            assert getattr(got[2], "closed", False), got


def test_accept_by_incoming_and_detach(alpha: Daemon, beta: Daemon) -> None:
    with beta.client() as cb, alpha.client() as ca:
        with cb.listen("test-raw") as lst:
            out: List[object] = []

            def client_side() -> None:
                try:
                    s = ca.connect("beta", "test-raw")
                    sock, early = s.detach()
                    data = early
                    while len(data) < 5:
                        data += sock.recv(5 - len(data))
                    out.append(data)
                    sock.close()
                except BaseException as e:
                    out.append(e)

            t = threading.Thread(target=client_side)
            t.start()
            inc = lst.next(timeout=30)
            assert inc is not None and inc.service == "test-raw" and inc.peer.name == "alpha"
            with cb.accept(inc) as s:
                s.write(b"hello")
                s.shutdown_write()
                assert s.read_all() == b""
            t.join(30)
            assert out == [b"hello"]


def test_stream_errors(alpha: Daemon, beta: Daemon) -> None:
    with alpha.client() as ca, beta.client() as cb:
        with pytest.raises(UnknownService) as e:
            ca.connect("beta", "test-nosuch")
        assert e.value.code == "unknown_service"
        with pytest.raises(UnknownStream):
            cb.accept("0000000000000000")
        with pytest.raises(BadRequest):
            cb.listen("bad name!")
        with cb.listen("test-twice") as lst:
            with pytest.raises(BadRequest):
                cb.listen("test-twice")
            with pytest.raises(ClientTimeout):
                lst.accept(timeout=0.05)
        st = ca.stream_status("ffffffffffffffff")
        assert st.status == "open"  # the daemon's answer for a token it does not know


def test_expose_forwards_to_a_local_tcp_server(alpha: Daemon, beta: Daemon) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def echo_once() -> None:
        conn, _ = srv.accept()
        with conn:
            while True:
                b = conn.recv(65536)
                if not b:
                    break
                conn.sendall(b.upper())

    t = threading.Thread(target=echo_once, daemon=True)
    t.start()
    try:
        with beta.client() as cb, alpha.client() as ca:
            svc = cb.expose("test-echo", f"127.0.0.1:{port}")
            assert (svc.service, svc.kind, svc.target, svc.persistent) == (
                "test-echo", "expose", f"tcp:127.0.0.1:{port}", True)
            assert svc in cb.services()
            with ca.connect("beta", "test-echo") as s:
                s.write(b"shout this")
                s.shutdown_write()
                assert s.read_all() == b"SHOUT THIS"
            cb.unexpose("test-echo")
            assert all(x.service != "test-echo" for x in cb.services())
            with pytest.raises(UnknownService):
                cb.unexpose("test-echo")
            with pytest.raises(InvalidAddress):
                cb.expose("test-bad", "not an address")
    finally:
        srv.close()
        t.join(30)
