"""The replicated key-value store: put/get/del/list, replication, concurrent versions,
watch with resume."""

from __future__ import annotations

from typing import List

import pytest

from cnspr import BadRequest, Client, Conflict, KvChange, NotFound, TooLarge

from conftest import Daemon, Daemons, trust_both, wait_for

VALUE = bytes(range(256)) + b"\n\x00tail"


def test_conditional_writes(alpha: Daemon) -> None:
    with alpha.client() as c:
        first = c.kv_put("kvc/a", b"1", if_absent=True)
        with pytest.raises(Conflict) as absent:
            c.kv_put("kvc/a", b"x", if_absent=True)
        assert absent.value.code == "conflict" and absent.value.current == (first.version,)
        read = c.kv_get("kvc/a")
        assert read.version == first.version
        second = c.kv_put("kvc/a", b"2", if_version=read.version)
        with pytest.raises(Conflict) as stale:
            c.kv_put("kvc/a", b"y", if_version=read.version)
        assert stale.value.current == (second.version,)
        assert c.kv_get("kvc/a").value == b"2"
        with pytest.raises(Conflict):
            c.kv_del("kvc/a", if_version=first.version)
        c.kv_del("kvc/a", if_version=second.version)
        with pytest.raises(BadRequest):
            c.kv_put("kvc/a", b"z", if_version="not a version")


def test_put_get_del(alpha: Daemon) -> None:
    with alpha.client() as c:
        w = c.kv_put("kvt/a", VALUE)
        assert w.key == "kvt/a" and w.origin == alpha.id and w.seq >= 1 and w.hlc
        e = c.kv_get("kvt/a")
        assert e.key == "kvt/a" and e.value == VALUE
        assert (e.hlc, e.origin, e.seq) == (w.hlc, w.origin, w.seq)
        assert e.siblings == ()
        w2 = c.kv_put("kvt/a", "text é")
        assert w2.seq > w.seq
        assert c.kv_get("kvt/a").text == "text é"
        c.kv_put("kvt/empty", b"")
        assert c.kv_get("kvt/empty").value == b""
        d = c.kv_del("kvt/a")
        assert d.key == "kvt/a" and d.hlc
        with pytest.raises(NotFound) as nf:
            c.kv_get("kvt/a")
        assert nf.value.code == "not_found"
        with pytest.raises(NotFound):
            c.kv_del("kvt/a")
        with pytest.raises(BadRequest):
            c.kv_put("", b"x")
        with pytest.raises(BadRequest):
            c.kv_put("bad\nkey", b"x")
        with pytest.raises(TooLarge):
            c.kv_put("kvt/big", b"\0" * (8 * 1024 * 1024 + 1))
        # A value over 1 MiB travels raw after the line.
        big = VALUE * (3 * 1024 * 1024 // len(VALUE))
        c.kv_put("kvt/big", big)
        assert c.kv_get("kvt/big").value == big


def test_list_pages_in_key_order(alpha: Daemon) -> None:
    with alpha.client() as c:
        keys = [f"kvl/{i:03d}" for i in range(25)]
        for k in reversed(keys):
            c.kv_put(k, k)
        c.kv_put("kvl-outside", "x")
        c.kv_del("kvl/007")
        live = [k for k in keys if k != "kvl/007"]
        page = c.kv_list("kvl/", limit=10)
        assert [e.key for e in page.entries] == live[:10] and page.more
        page2 = c.kv_list("kvl/", after=page.entries[-1].key, limit=10)
        assert [e.key for e in page2.entries] == live[10:20]
        assert [e.key for e in c.kv_items("kvl/", page_size=7)] == live
        assert [e.text for e in c.kv_items("kvl/")] == live
        assert c.kv_list("kvl/none/").entries == []


def test_writes_replicate_to_the_other_device(alpha: Daemon, beta: Daemon) -> None:
    with alpha.client() as ca, beta.client() as cb:
        ca.kv_put("kvr/k", VALUE)

        def on_beta() -> bool:
            try:
                return cb.kv_get("kvr/k").value == VALUE
            except NotFound:
                return False

        wait_for("the value on beta", on_beta)
        e = cb.kv_get("kvr/k")
        assert e.origin == alpha.id
        cb.kv_del("kvr/k")

        def gone_on_alpha() -> bool:
            try:
                ca.kv_get("kvr/k")
                return False
            except NotFound:
                return True

        wait_for("the delete on alpha", gone_on_alpha)


def _next(w, what: str) -> KvChange:  # type: ignore[no-untyped-def]
    c = w.next(timeout=30)
    assert c is not None, f"no change for {what} within 30 s"
    return c


def test_watch_sees_history_then_live_changes_and_resumes(alpha: Daemon, beta: Daemon) -> None:
    with alpha.client() as c, beta.client() as cb:
        c.kv_put("kvw/1", "one")
        c.kv_put("kvw-not/x", "outside the prefix")
        with c.kv_watch("kvw/") as w:
            first = _next(w, "history")
            assert (first.key, first.value, first.deleted, first.wins) == ("kvw/1", b"one", False, True)
            assert first.origin == alpha.id and w.last_seq == first.feed_seq
            c.kv_put("kvw/2", VALUE)
            second = _next(w, "live put")
            assert (second.key, second.value) == ("kvw/2", VALUE)
            assert second.feed_seq > first.feed_seq
            c.kv_del("kvw/1")
            third = _next(w, "live delete")
            assert third.key == "kvw/1" and third.deleted and third.value is None
            # A change made on beta arrives by sync and shows in alpha's feed.
            cb.kv_put("kvw/from-beta", "b")
            fourth = _next(w, "remote change")
            assert fourth.key == "kvw/from-beta" and fourth.origin == beta.id
            resume_from = second.feed_seq
            assert w.next(timeout=0.2) is None
        # Resume after the second change: exactly the later ones, in order.
        with c.kv_watch("kvw/", from_seq=resume_from) as w2:
            again: List[KvChange] = [_next(w2, "resumed"), _next(w2, "resumed")]
            assert [(x.feed_seq, x.key) for x in again] == [
                (third.feed_seq, "kvw/1"),
                (fourth.feed_seq, "kvw/from-beta"),
            ]
            assert w2.last_seq == fourth.feed_seq
        # Iteration form.
        with c.kv_watch("kvw/", from_seq=third.feed_seq) as w3:
            for ch in w3:
                assert ch.key == "kvw/from-beta"
                break


def test_concurrent_writes_show_as_siblings_and_converge(daemons: Daemons) -> None:
    """Two devices that have not met write the same key; once they meet both show the
    same winner and the losing version as a sibling."""
    a, b = daemons.new("ka"), daemons.new("kb")
    with a.client() as ca, b.client() as cb:
        ca.kv_put("shared/k", "from a")
        cb.kv_put("shared/k", "from b")
        trust_both(a, b)

        def converged() -> bool:
            ea = ca.kv_get("shared/k", all_versions=True)
            eb = cb.kv_get("shared/k", all_versions=True)
            return len(ea.siblings) == 1 and ea == eb

        wait_for("both devices to hold both versions", converged)
        e = ca.kv_get("shared/k", all_versions=True)
        assert {e.value, e.siblings[0].value} == {b"from a", b"from b"}
        assert {e.origin, e.siblings[0].origin} == {a.id, b.id}
        assert not e.siblings[0].deleted
        # Without all_versions the siblings are not listed.
        assert ca.kv_get("shared/k").siblings == ()
        # A later write on either side supersedes both.
        cb.kv_put("shared/k", "resolved")
        wait_for("the resolution on a", lambda: ca.kv_get("shared/k", all_versions=True).siblings == ()
                 and ca.kv_get("shared/k").value == b"resolved")


def test_counters_add_up_across_devices(alpha: Daemon, beta: Daemon) -> None:
    with alpha.client() as ca, beta.client() as cb:
        assert ca.kv_incr("kvn/hits").value == 1
        assert ca.kv_incr("kvn/hits", 9).value == 10
        cb.kv_incr("kvn/hits", -3)

        def summed(c: Client, want: int) -> bool:
            try:
                return c.kv_counter("kvn/hits").value == want
            except NotFound:
                return False

        wait_for("the sum on alpha", lambda: summed(ca, 7))
        wait_for("the sum on beta", lambda: summed(cb, 7))
        n = cb.kv_counter("kvn/hits")
        assert n.parts == {alpha.id: 10, beta.id: -3}
        ca.kv_put("kvn/plain", b"x")
        with pytest.raises(BadRequest):
            ca.kv_incr("kvn/plain")
        with pytest.raises(BadRequest):
            ca.kv_put(".cnspr/counter/kvn/hits/x", b"1")
