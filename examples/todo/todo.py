#!/usr/bin/env python3
"""A shared to-do list on the cnspr store: works offline on each device, converges when
devices meet.

    todo.py add buy milk      todo.py done 3f9a1c      todo.py list
    todo.py undo 3f9a1c       todo.py rm 3f9a1c        todo.py watch   (live view)
    todo.py clear             (removes every item that is done)

Keys (one per item, so concurrent adds never touch the same key):
    todo/item/<id>  {"text", "by", "at"}   written once, when the item is added
    todo/done/<id>  {"by", "at"}            present while the item is done
<id> is the creation time in hex milliseconds plus 6 random hex digits (its handle).
`rm` and `clear` delete an item and its done marker in one batch: other devices show
both gone or neither.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

Obj = Dict[str, Any]

from cnspr import (
    BatchOp,
    Client,
    CnsprError,
    Conflict,
    ConnectionLost,
    DaemonNotRunning,
    Delete,
    KvChange,
    NotFound,
)

ITEM, DONE = "todo/item/", "todo/done/"
#: Items removed per batch by `clear` (two deletes each; a batch holds 1,000 operations).
CLEAR_CHUNK = 500


def decode(value: Optional[bytes]) -> Optional[Obj]:
    """A stored JSON object, or None for anything else (values come from any device)."""
    try:
        v = json.loads(value or b"")
        return v if isinstance(v, dict) else None
    except ValueError:
        return None


class TodoList:
    """Items and done markers as read from the store, keyed by item id."""

    def __init__(self) -> None:
        self.items: Dict[str, Obj] = {}
        self.done: Dict[str, Obj] = {}

    def apply(self, key: str, value: Optional[bytes]) -> None:
        """Sets (value) or clears (None) one key's visible value."""
        for prefix, table in ((ITEM, self.items), (DONE, self.done)):
            if key.startswith(prefix):
                v = decode(value)
                if v is None:
                    table.pop(key[len(prefix):], None)
                else:
                    table[key[len(prefix):]] = v

    def rows(self) -> List[Tuple[str, Obj, Optional[Obj]]]:
        # A done marker without its item (removed on another device) is not shown.
        return [(i, self.items[i], self.done.get(i)) for i in sorted(self.items)]

    def render(self) -> str:
        lines = []
        for i, item, done in self.rows():
            mark = f"[x] {i[-6:]}  {item.get('text', '?')}  (done on {done.get('by', '?')})" if done \
                else f"[ ] {i[-6:]}  {item.get('text', '?')}  (added on {item.get('by', '?')})"
            lines.append(mark)
        return "\n".join(lines) if lines else "(nothing to do)"


def load(c: Client) -> TodoList:
    t = TodoList()
    for e in c.kv_items("todo/"):
        t.apply(e.key, e.value)
    return t


def find(c: Client, handle: str) -> str:
    """The full id of the item whose id ends with ``handle``."""
    ids = [i for i in load(c).items if i.endswith(handle.lower())]
    if len(ids) != 1:
        sys.exit(f"todo: {'no' if not ids else 'more than one'} item matches {handle!r}")
    return ids[0]


def clear(c: Client) -> int:
    """Removes every item that is done, with its marker, in batches. Each marker is
    deleted only if it is still the version read (``if_version``): an item undone
    meanwhile makes the batch fail as a whole (``Conflict``), and the list is read again."""
    removed = 0
    for _ in range(10):
        done = [(e.key[len(DONE):], e.version) for e in c.kv_items(DONE)]
        try:
            for n in range(0, len(done), CLEAR_CHUNK):
                ops: List[BatchOp] = []
                for i, version in done[n:n + CLEAR_CHUNK]:
                    ops += [Delete(DONE + i, if_version=version), Delete(ITEM + i)]
                c.kv_batch(ops)
                removed += len(ops) // 2
            return removed
        except Conflict:
            continue  # a marker changed after it was read: read the list again
    sys.exit("todo: the list kept changing; try again")


def stamp(c: Client) -> Obj:
    return {"by": c.status().name, "at": int(time.time() * 1000)}


def watch(sock: Optional[str]) -> None:
    """Follows `kv watch` from the start of the feed, printing the list after each burst
    of changes; resumes from the last feed seq when the daemon restarts."""
    todo, last, shown = TodoList(), 0, None
    while True:
        try:
            with Client(sock) as c, c.kv_watch("todo/", from_seq=last) as w:
                dirty = True  # show the state once the history has been read
                in_batch = False  # inside a batch: show it only once it is complete
                while True:
                    ch: Optional[KvChange] = w.next(timeout=1.0 if in_batch else 0.1 if dirty else None)
                    if ch is None:  # quiet: show the state reached
                        in_batch = False
                        text = todo.render()
                        if text != shown:
                            print(f"--- to-do (feed seq {last})\n{text}", flush=True)
                            shown = text
                        dirty = False
                        continue
                    last = w.last_seq
                    if ch.wins:  # a concurrent write that lost leaves the visible value
                        todo.apply(ch.key, ch.value)
                    in_batch = ch.batch is not None and not ch.batch_end
                    dirty = True
        except (ConnectionLost, DaemonNotRunning) as e:
            print(f"--- daemon unavailable ({e.message}); retrying", file=sys.stderr, flush=True)
            time.sleep(1)


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description="A shared to-do list over cnspr.")
    ap.add_argument("--socket", help="the daemon's socket (default: $CNSPR_SOCKET or the daemon's default)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("add", help="add an item").add_argument("text", nargs="+")
    for name in ("done", "undo", "rm"):
        sub.add_parser(name, help=f"{name} an item by its handle").add_argument("handle")
    sub.add_parser("list", help="print the list")
    sub.add_parser("clear", help="remove every item that is done")
    sub.add_parser("watch", help="live view")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "watch":
            return watch(a.socket)
        with Client(a.socket) as c:
            if a.cmd == "add":
                i = f"{int(time.time() * 1000):011x}{secrets.token_hex(3)}"
                c.kv_put(ITEM + i, json.dumps(dict(stamp(c), text=" ".join(a.text))))
                print(i[-6:])
            elif a.cmd == "done":
                c.kv_put(DONE + find(c, a.handle), json.dumps(stamp(c)))
            elif a.cmd == "undo":
                try:
                    c.kv_del(DONE + find(c, a.handle))
                except NotFound:
                    pass
            elif a.cmd == "rm":
                i = find(c, a.handle)
                # One batch: no device ever shows the marker without its item or the
                # reverse. Deleting a key that has no value is not an error in a batch.
                c.kv_batch([Delete(DONE + i), Delete(ITEM + i)])
            elif a.cmd == "clear":
                print(f"removed {clear(c)} done item(s)")
            else:
                print(load(c).render())
    except CnsprError as e:
        sys.exit(f"todo: {e.message}")
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
