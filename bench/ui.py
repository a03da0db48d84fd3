#!/usr/bin/env python3
"""The web dashboard's cost, from one run:

1. idle CPU and memory of a daemon with the dashboard enabled (config `ui = true`, no
   browser) next to one without it, each in a mesh of two idle daemons on loopback;
2. the same daemon with a page open (idle);
3. how late live events reach an open page: messages sent to the daemon, each event
   stamped when the dashboard took it and timed again by the page (same clock).

Needs Debian's `chromium` and `chromium-driver` and Selenium (pip), like tests/ui/.
    CNSPR_BIN=target/release/cnspr python3 bench/ui.py [--idle-s 20] [--events 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "ui"))

from harness import Daemon, browser, trust_both, wait_active, wait_for  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User plus system CPU time of a process so far, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def idle(ds: List[Daemon], seconds: float) -> Dict[str, Dict[str, float]]:
    """CPU (% of one core) over `seconds` and RSS at the end, per daemon."""
    before = {d.name: cpu_s(d.pid) for d in ds}
    time.sleep(seconds)
    return {d.name: {"cpu_pct": 100 * (cpu_s(d.pid) - before[d.name]) / seconds,
                     "rss_mib": rss_kib(d.pid) / 1024} for d in ds}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--idle-s", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--events", type=int, default=200)
    a = ap.parse_args()

    ds: List[Daemon] = []
    drv = None
    try:
        off, off_peer = Daemon("off"), Daemon("offpeer")
        on, on_peer = Daemon("on", ui=True), Daemon("onpeer")
        ds = [off, off_peer, on, on_peer]
        for d in ds:
            d.start()
        trust_both(off, off_peer)
        trust_both(on, on_peer)
        wait_active(off, ["offpeer"])
        wait_active(on, ["onpeer"])
        time.sleep(2)  # connection set-up settles

        print(f"idle, {a.rounds} rounds of {a.idle_s:.0f} s (CPU: % of one core; RSS: MiB)")
        print(f"{'':<28}{'ui off':>16}{'ui on':>16}")
        rows = []
        for r in range(a.rounds):
            m = idle([off, on], a.idle_s)
            rows.append(m)
            print(f"{'round ' + str(r + 1) + ' CPU %':<28}{m['off']['cpu_pct']:>16.3f}{m['on']['cpu_pct']:>16.3f}")
        print(f"{'median CPU %':<28}"
              f"{statistics.median(x['off']['cpu_pct'] for x in rows):>16.3f}"
              f"{statistics.median(x['on']['cpu_pct'] for x in rows):>16.3f}")
        print(f"{'RSS MiB (end)':<28}{rows[-1]['off']['rss_mib']:>16.1f}{rows[-1]['on']['rss_mib']:>16.1f}")

        drv = browser()
        drv.get(on.ui_url())
        wait_for("the page", lambda: drv.execute_script("return document.body.dataset.ready"))
        wait_for("the live feed", lambda: drv.find_element("id", "live").text == "live")
        m = idle([off, on], a.idle_s)
        print(f"{'page open, idle: CPU %':<28}{m['off']['cpu_pct']:>16.3f}{m['on']['cpu_pct']:>16.3f}")
        print(f"{'page open: RSS MiB':<28}{m['off']['rss_mib']:>16.1f}{m['on']['rss_mib']:>16.1f}")

        before = drv.execute_script("return window.cnsprFeed.count")
        for i in range(a.events):
            on_peer.cli("send", "on", "bench.ui", str(i))
            time.sleep(0.01)
        wait_for("the events in the page", lambda: drv.execute_script(
            "return window.cnsprFeed.count") >= before + a.events, deadline=60)
        late = sorted(drv.execute_script("return window.cnsprFeed.lateMs")[-a.events:])
        p95 = late[int(0.95 * (len(late) - 1))]
        print(f"events to the page ({len(late)} messages): median {statistics.median(late):.0f} ms, "
              f"p95 {p95} ms, max {late[-1]} ms")
    finally:
        if drv is not None:
            drv.quit()
        for d in ds:
            d.stop()
        for d in ds:
            d.remove_dir()


if __name__ == "__main__":
    main()
