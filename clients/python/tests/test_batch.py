"""Batches (`kv.batch`): several keys written all or nothing, binary values, conditions
that fail the whole batch, and watch events marked with the batch on both devices.

These need a daemon with `kv.batch` (the current build); they do not skip on an older
one."""

from __future__ import annotations

from typing import Dict, List, Union

import pytest

from cnspr import (
    MAX_BATCH_BYTES,
    BadRequest,
    BatchOp,
    Client,
    Conflict,
    Delete,
    KvChange,
    KvWatch,
    NotFound,
    ProtocolError,
    Put,
    TooLarge,
)
from cnspr._wire import Fields
from cnspr.types import KvChange as KvChangeType

from conftest import Daemon, wait_for

BINARY = bytes(range(256)) + b"\n\x00\r\n{\"not\":\"json\"}\n"


def _absent(c: Client, key: str) -> bool:
    try:
        c.kv_get(key)
        return False
    except NotFound:
        return True


def _next(w: KvWatch, what: str) -> KvChange:
    c = w.next(timeout=30)
    assert c is not None, f"no change for {what} within 30 s"
    return c


def test_a_batch_of_binary_values_is_written_and_read_back(alpha: Daemon, beta: Daemon) -> None:
    with alpha.client() as c, beta.client() as cb:
        c.kv_put("kvb1/old", "to be deleted")
        values: Dict[str, Union[bytes, str]] = {f"kvb1/{i}": BINARY * (i + 1) for i in range(5)}
        values["kvb1/empty"] = b""
        values["kvb1/text"] = "texte é"
        ops: List[BatchOp] = [Put(k, v) for k, v in values.items()]
        ops += [Delete("kvb1/old"), Delete("kvb1/never-written")]
        r = c.kv_batch(ops)
        assert r.batch
        assert [o.key for o in r.ops] == [op.key for op in ops]
        puts, (deleted, unchanged) = r.ops[:-2], r.ops[-2:]
        for o in puts:
            assert o.origin == alpha.id and o.seq and o.hlc and o.version
            assert not o.deleted and not o.unchanged
        assert deleted.deleted and not deleted.unchanged and deleted.version
        assert unchanged.unchanged and unchanged.version is None and not unchanged.deleted
        for o, (k, v) in zip(puts, values.items()):
            e = c.kv_get(k)
            want = v.encode() if isinstance(v, str) else v
            assert e.value == want and e.version == o.version
        assert _absent(c, "kvb1/old") and _absent(c, "kvb1/never-written")

        # The other device shows the whole batch.
        def on_beta() -> bool:
            return {e.key: e.value for e in cb.kv_items("kvb1/")} == {
                k: (v.encode() if isinstance(v, str) else v) for k, v in values.items()
            }

        wait_for("the batch on beta", on_beta)


def test_a_failed_condition_writes_nothing(alpha: Daemon) -> None:
    with alpha.client() as c:
        first = c.kv_put("kvb2/x", b"1")
        second = c.kv_put("kvb2/x", b"2")
        c.kv_put("kvb2/y", b"here")
        with c.kv_watch("kvb2/") as w:
            history = [_next(w, "history") for _ in range(3)]
            assert [h.key for h in history] == ["kvb2/x", "kvb2/x", "kvb2/y"]
            assert all(h.batch is None and not h.batch_end for h in history)

            with pytest.raises(Conflict) as stale:
                c.kv_batch([
                    Put("kvb2/new", BINARY),
                    Put("kvb2/x", b"3", if_version=first.version),
                    Delete("kvb2/y"),
                ])
            assert stale.value.code == "conflict"
            assert stale.value.key == "kvb2/x" and stale.value.current == (second.version,)

            with pytest.raises(Conflict) as present:
                c.kv_batch([Put("kvb2/new", b"n"), Put("kvb2/y", b"again", if_absent=True)])
            assert present.value.key == "kvb2/y" and len(present.value.current) == 1

            with pytest.raises(Conflict) as gone:
                c.kv_batch([Put("kvb2/new", b"n"), Delete("kvb2/y", if_version=first.version)])
            assert gone.value.key == "kvb2/y"

            # Nothing of the three batches was written, not even to the feed: the next
            # change the watcher sees is this put.
            assert c.kv_get("kvb2/x").value == b"2" and c.kv_get("kvb2/y").value == b"here"
            assert _absent(c, "kvb2/new")
            c.kv_put("kvb2/marker", b"m")
            assert _next(w, "the marker").key == "kvb2/marker"

            # With the right version the same batch goes through.
            ok = c.kv_batch([
                Put("kvb2/new", BINARY),
                Put("kvb2/x", b"3", if_version=second.version),
                Delete("kvb2/y"),
            ])
            assert [o.key for o in ok.ops] == ["kvb2/new", "kvb2/x", "kvb2/y"]
            assert c.kv_get("kvb2/x").value == b"3" and _absent(c, "kvb2/y")
            assert c.kv_get("kvb2/new").value == BINARY


def _until(w: KvWatch, key: str, what: str) -> List[KvChange]:
    """Changes up to and including the first one of ``key``."""
    out: List[KvChange] = []
    while not out or out[-1].key != key:
        out.append(_next(w, what))
    return out


def test_watch_marks_the_changes_of_a_batch_on_both_devices(alpha: Daemon, beta: Daemon) -> None:
    with alpha.client() as c, beta.client() as cb, \
            c.kv_watch("kvb3/") as wa, cb.kv_watch("kvb3/") as wb:
        c.kv_put("kvb3/before", b"b")
        # Beta holds it before the batch deletes it (else sync would send only the
        # tombstone, the put being superseded).
        assert _until(wb, "kvb3/before", "the put on beta")[-1].batch is None
        r = c.kv_batch([Put("kvb3/a", BINARY), Put("kvb3/b", b""), Delete("kvb3/before")])
        c.kv_put("kvb3/after", b"a")

        seen_a = _until(wa, "kvb3/after", "alpha's feed")
        assert [(x.key, x.batch, x.batch_end) for x in seen_a] == [
            ("kvb3/before", None, False),
            ("kvb3/a", r.batch, False),
            ("kvb3/b", r.batch, False),
            ("kvb3/before", r.batch, True),
            ("kvb3/after", None, False),
        ]
        assert seen_a[3].deleted and seen_a[1].value == BINARY
        assert [x.version for x in seen_a[1:4]] == [o.version for o in r.ops]

        # On beta the batch arrives by sync: the same ID, complete, its end marked on
        # its last change.
        seen_b = _until(wb, "kvb3/after", "beta's feed")
        assert [x.key for x in seen_b if x.batch is None] == ["kvb3/after"]
        in_batch = [x for x in seen_b if x.batch is not None]
        assert {x.batch for x in in_batch} == {r.batch}
        assert sorted(x.key for x in in_batch) == ["kvb3/a", "kvb3/b", "kvb3/before"]
        assert [x.batch_end for x in in_batch] == [False, False, True]
        i = seen_b.index(in_batch[0])
        assert seen_b[i:i + 3] == in_batch, "a batch's changes come one after the other"
        assert all(x.origin == alpha.id for x in seen_b)


def test_batches_are_checked_before_sending(alpha: Daemon) -> None:
    with alpha.client() as c:
        with pytest.raises(BadRequest, match="more than once"):
            c.kv_batch([Put("kvb4/a", b"1"), Delete("kvb4/a")])
        with pytest.raises(BadRequest, match="not 1001"):
            c.kv_batch(Put(f"kvb4/{i}", b"") for i in range(1001))
        with pytest.raises(BadRequest, match="not 0"):
            c.kv_batch([])
        with pytest.raises(TooLarge):
            c.kv_batch([Put("kvb4/a", b"\0" * (MAX_BATCH_BYTES // 2)),
                        Put("kvb4/b", b"\0" * (MAX_BATCH_BYTES // 2))])
        with pytest.raises(TypeError):
            c.kv_batch([("put", "kvb4/a", b"1")])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="not both"):
            Put("kvb4/a", b"1", if_version="v", if_absent=True)
        with pytest.raises(TypeError):
            Put("kvb4/a", 5)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            Delete(b"kvb4/a")  # type: ignore[arg-type]
        assert Put("k", bytearray(b"ab")).data == b"ab" and Put("k", "é").data == "é".encode()
        assert _absent(c, "kvb4/a")


def test_watch_events_outside_a_batch_have_no_batch_end() -> None:
    base = {"event": "kv", "feed_seq": 1, "key": "k", "value_b64": "eA==", "deleted": False,
            "hlc": "1.0", "origin": "O", "seq": 1, "wins": True}
    plain = KvChangeType.parse(Fields(dict(base), "t"))
    assert plain.batch is None and plain.batch_end is False
    marked = KvChangeType.parse(Fields(dict(base, batch="b1", batch_end=True), "t"))
    assert marked.batch == "b1" and marked.batch_end
    with pytest.raises(ProtocolError):
        KvChangeType.parse(Fields(dict(base, batch_end=True), "t"))
