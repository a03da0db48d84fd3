"""The example app examples/todo/todo.py, scripted on two daemons: items added apart
converge when the devices meet, a live view follows (and resumes across a daemon
restart), an item marked done on both devices while apart has siblings that resolve
the same way on both, and `rm` and `clear` remove items with their markers in batches
(these need a daemon with kv.batch)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator, List

import pytest

from cnspr import Client

from conftest import DEADLINE, Daemon, Daemons, trust_both, wait_for

TODO = Path(__file__).resolve().parents[3] / "examples" / "todo" / "todo.py"


def todo(d: Daemon, *args: str) -> str:
    r = subprocess.run([sys.executable, str(TODO), "--socket", d.socket, *args],
                       capture_output=True, timeout=DEADLINE)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode()


class LiveView:
    """``todo.py watch`` running, its output collected line by line."""

    def __init__(self, d: Daemon) -> None:
        self.proc = subprocess.Popen([sys.executable, str(TODO), "--socket", d.socket, "watch"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.lines: List[str] = []
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.decode().rstrip("\n"))

    def screen(self) -> List[str]:
        """The lines of the last list shown."""
        lines = list(self.lines)
        starts = [i for i, l in enumerate(lines) if l.startswith("--- to-do")]
        return lines[starts[-1] + 1:] if starts else []

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=DEADLINE)
        self.t.join(DEADLINE)


@pytest.fixture
def views() -> Iterator[List[LiveView]]:
    vs: List[LiveView] = []
    try:
        yield vs
    finally:
        for v in vs:
            v.stop()


def test_todo_converges_between_two_devices(daemons: Daemons, views: List[LiveView]) -> None:
    p, q = daemons.new("phone"), daemons.new("laptop")
    # Apart: each device adds an item.
    milk = todo(p, "add", "buy", "milk").strip()
    mum = todo(q, "add", "call mum").strip()
    assert len(milk) == 6 and len(mum) == 6
    assert todo(p, "list").splitlines() == [f"[ ] {milk}  buy milk  (added on phone)"]
    assert todo(q, "list").splitlines() == [f"[ ] {mum}  call mum  (added on laptop)"]
    view = LiveView(q)
    views.append(view)
    wait_for("the live view", lambda: view.screen() == [f"[ ] {mum}  call mum  (added on laptop)"])

    # They meet: both lists hold both items (sorted by creation time).
    trust_both(p, q)
    both = sorted([f"[ ] {milk}  buy milk  (added on phone)", f"[ ] {mum}  call mum  (added on laptop)"])
    for d in (p, q):
        wait_for(f"both items on {d.name}", lambda: sorted(todo(d, "list").splitlines()) == both)
    wait_for("both items in the live view", lambda: sorted(view.screen()) == both)

    # Done on the laptop shows on the phone and in the view.
    todo(q, "done", milk)
    wait_for("done on the phone", lambda: f"[x] {milk}  buy milk  (done on laptop)" in todo(p, "list"))
    wait_for("done in the view", lambda: f"[x] {milk}  buy milk  (done on laptop)" in view.screen())
    todo(p, "undo", milk)
    wait_for("undone on the laptop", lambda: f"[ ] {milk}  buy milk" in todo(q, "list"))

    # Both devices mark "call mum" done while apart: two versions of one done marker.
    q.stop()
    todo(p, "done", mum)
    p.stop()
    q.start()
    todo(q, "done", mum)
    p.start()
    key = None
    with Client(p.socket) as cp, Client(q.socket) as cq:
        ids = [e.key for e in cp.kv_items("todo/done/")]
        assert len(ids) == 1
        key = ids[0]

        def siblings_everywhere() -> bool:
            ep, eq = cp.kv_get(key, all_versions=True), cq.kv_get(key, all_versions=True)
            return len(ep.siblings) == 1 and ep == eq

        wait_for("both done markers on both devices", siblings_everywhere)
        winner = cp.kv_get(key)
    # The later write (laptop's: its clock is past the phone's) is shown on both.
    assert winner.origin == q.id
    line = f"[x] {mum}  call mum  (done on laptop)"
    assert line in todo(p, "list") and line in todo(q, "list")
    # The view followed the daemon's restart and resumed where it was.
    wait_for("the view after the restart", lambda: line in view.screen())
    todo(p, "rm", milk)
    wait_for("removed everywhere", lambda: todo(q, "list").splitlines() == [line] and view.screen() == [line])

    # `clear` removes the done items, each with its marker, in one batch per 500 items.
    eggs = todo(p, "add", "eggs").strip()
    tea = todo(p, "add", "tea").strip()
    todo(p, "done", eggs)
    assert todo(p, "clear").strip() == "removed 2 done item(s)"
    left = f"[ ] {tea}  tea  (added on phone)"
    assert todo(p, "list").splitlines() == [left]
    wait_for("cleared everywhere", lambda: todo(q, "list").splitlines() == [left] and view.screen() == [left])
    with Client(q.socket) as cq:
        assert [e.key for e in cq.kv_items("todo/done/")] == []
