"""send (plain, binary, large, with handler replies, to all), pipelining, events."""

from __future__ import annotations

import hashlib
import os
import threading
from typing import List

import pytest

import cnspr
from cnspr import BadRequest, MessageEvent, TooLarge, UnknownPeer

from conftest import Daemon, wait_for

BINARY = bytes(range(256)) * 4 + b"\n\r\n\x00end"


def test_send_delivers_binary_bodies_to_the_handler(alpha: Daemon, beta: Daemon) -> None:
    out = beta.dir / "out" / "store.bin"
    beta.handler("test/store.sh", f'cat > "{out}.tmp" && mv "{out}.tmp" "{out}"')
    with alpha.client() as c:
        r = c.send("beta", "test.store", BINARY)
        assert len(r.message_id) == 16
        [o] = r.outcomes
        assert o.ok and o.peer == "beta" and o.id == beta.id
        assert o.error is None and o.replies == []
        wait_for("the handler's output", lambda: out.exists())
        assert out.read_bytes() == BINARY
        out.unlink()
        c.send("beta", "test.store", "text body: é")
        wait_for("the handler's output", lambda: out.exists())
        assert out.read_bytes() == "text body: é".encode()


def test_send_with_reply_returns_the_handlers_output(alpha: Daemon, beta: Daemon) -> None:
    beta.handler("test/echo.sh", 'cat; printf "\\001\\377"; echo "from $CNSPR_FROM" >&2; exit 3')
    with alpha.client() as c:
        r = c.send("beta", "test.echo", BINARY, reply=True, timeout_ms=20000)
    [rep] = r.replies
    assert rep.peer == "beta" and rep.handler == "test/echo.sh"
    assert rep.exit_code == 3 and not rep.timed_out
    assert rep.stdout == BINARY + b"\x01\xff"
    assert rep.stdout_text.endswith("\x01\ufffd")


def test_a_large_body_goes_through_whole(alpha: Daemon, beta: Daemon) -> None:
    # Over the 1 MiB line limit and the 64 KiB limit of the shared message stream.
    body = hashlib.sha256(b"seed").digest() * (3 * 1024 * 1024 // 32 + 7)
    beta.handler("test/sha.sh", "sha256sum | cut -c1-64")
    with alpha.client() as c:
        r = c.send("beta", "test.sha", body, reply=True)
        assert r.replies[0].stdout.decode().strip() == hashlib.sha256(body).hexdigest()
        # Bodies over 20 MiB are refused before anything is sent; the connection stays.
        with pytest.raises(TooLarge) as e:
            c.send("beta", "test.sha", b"\0" * (cnspr.MAX_BODY + 1))
        assert e.value.code == "too_large"
        assert c.ping("beta").peer == "beta"


def test_send_errors(alpha: Daemon) -> None:
    with alpha.client() as c:
        with pytest.raises(UnknownPeer):
            c.send("nobody", "test.x", b"x")
        with pytest.raises(cnspr.InvalidTag) as e:
            c.send("beta", "daemon.start")
        assert e.value.code == "invalid_tag"
        with pytest.raises(BadRequest):
            c.send("beta", "test.x", b"body", timeout_ms=-1)  # type: ignore[arg-type]
        # The raw body of the refused request was skipped: the connection is in step.
        assert c.status().name == "alpha"


def test_send_all(alpha: Daemon, beta: Daemon) -> None:
    beta.handler("test/all.sh", "echo all-ok")
    with alpha.client() as c:
        r = c.send_all("test.all", b"", reply=True)
    assert [(o.peer, o.ok) for o in r.outcomes] == [("beta", True)]
    assert [x.stdout for x in r.replies] == [b"all-ok\n"]


def test_replies_are_matched_by_id_when_they_come_out_of_order(
    alpha: Daemon, beta: Daemon
) -> None:
    """A slow request and a fast one on the same connection: the fast one is answered
    first, and each caller gets its own reply."""
    flag = beta.dir / "out" / "release"
    beta.handler("test/slow.sh", f'while [ ! -e "{flag}" ]; do sleep 0.02; done; echo slow-done')
    with alpha.client() as c:
        slow: List[cnspr.SendResult] = []
        t = threading.Thread(target=lambda: slow.append(c.send("beta", "test.slow", reply=True)))
        t.start()
        try:
            # The send is in flight on the shared connection (the handler cannot end
            # before the flag exists); these are answered meanwhile.
            wait_for("the slow handler to start", lambda: _running(beta))
            assert c.ping("beta").peer == "beta"
            assert c.status().name == "alpha"
            assert not slow, "the slow request cannot have finished yet"
        finally:
            flag.touch()
            t.join(30)
        assert slow and slow[0].replies[0].stdout == b"slow-done\n"
        flag.unlink()


def _running(beta: Daemon) -> bool:
    """Whether beta runs test/slow.sh now (a process with that script in its cmdline)."""
    target = str(beta.dir / "handlers" / "test" / "slow.sh").encode()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if target in f.read():
                        return True
            except OSError:
                continue
    return False


def test_events_carry_messages(alpha: Daemon, beta: Daemon) -> None:
    with beta.client() as cb, alpha.client() as ca:
        with cb.subscribe(["message"]) as sub:
            ca.send("beta", "test.event", BINARY)
            big = b"x" * (64 * 1024 + 1)
            ca.send("beta", "test.event.big", big)
            ev = wait_for("the message event", lambda: sub.next(timeout=1.0))
            assert isinstance(ev, MessageEvent)
            assert ev.tag == "test.event" and ev.body == BINARY and ev.body_len == len(BINARY)
            assert ev.sender == cnspr.PeerRef(id=alpha.id, name="alpha")
            ev2 = wait_for("the big message event", lambda: sub.next(timeout=1.0))
            assert isinstance(ev2, MessageEvent)
            # Bodies over 64 KiB are not forwarded to subscribers; the length is.
            assert ev2.tag == "test.event.big" and ev2.body is None and ev2.body_len == len(big)


def test_events_iterate_and_filter_kinds(alpha: Daemon, beta: Daemon) -> None:
    with beta.client() as cb, alpha.client() as ca:
        sub = cb.subscribe()  # all kinds
        tags = [f"test.iter.n{i}" for i in range(3)]
        for t in tags:
            ca.send("beta", t, t)
        seen = []
        for ev in sub:
            if isinstance(ev, MessageEvent) and ev.tag.startswith("test.iter."):
                seen.append((ev.tag, ev.body))
                if len(seen) == 3:
                    break
        sub.close()
        assert sorted(seen) == sorted((t, t.encode()) for t in tags)
        with pytest.raises(BadRequest):
            cb.subscribe(["nonsense"])
