#!/usr/bin/env python3
"""Throughput of the Python client (clients/python) against one real daemon, each figure
next to a raw-socket ceiling measured in the same run:

  (a) kv.get calls per second: ``Client.kv_get`` called sequentially on one connection
      (each call waits for its reply; no pipelining), against a minimal raw loop on a
      socket of its own: write the request line, read the reply line (no JSON parsing,
      no checks), also sequential;
  (b) watch events per second: ``Client.kv_watch(prefix, from_seq=0)`` iterated over N
      stored changes (replayed from the durable feed), each parsed into a ``KvChange``,
      against a raw loop that sends the same ``kv.watch`` line and reads N lines;
  (c) batches: ``Client.kv_batch`` of 1,000 puts of 100-byte values, keys written per
      second over 20 batches (each batch is one durable commit), against the same
      batches written on a bare socket. Skipped when the daemon has no ``kv.batch``.

Targets: (a) and (b) at least 20,000 per second each. Each of (a) and (b) runs
``--rounds`` times, client and ceiling alternating; the median of each is printed with
the ratio client/ceiling.

The daemon (``--bin PATH``; by default target/release/cnspr, else target/debug/cnspr)
runs in a temporary directory with ``--no-mdns`` on 127.0.0.1, and is stopped by its PID
at the end, also on failure. The client is imported from clients/python/src of this
checkout (no installation needed).

    python3 bench/python-client.py --bin target/release/cnspr
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "clients" / "python" / "src"))

from cnspr import Client, DaemonNotRunning, Put, UnknownCommand  # noqa: E402

TARGET = 20_000.0
START_DEADLINE = 30.0


def die_with_parent() -> None:
    """In the daemon: SIGKILL when this script dies (PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class Daemon:
    """One ``cnspr serve`` in a temporary directory, on loopback, without mDNS."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="cnspr-pybench-", dir="/tmp"))
        self.socket = str(self.dir / "s.sock")
        self.proc: Optional["subprocess.Popen[bytes]"] = None
        (self.dir / "handlers").mkdir()
        (self.dir / "config.toml").write_text("")
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("CNSPR_") and k != "XDG_RUNTIME_DIR"}

    def args(self) -> List[str]:
        return [self.binary, "--state-dir", str(self.dir / "state"), "--socket", self.socket,
                "--config", str(self.dir / "config.toml")]

    def start(self) -> None:
        subprocess.run(self.args() + ["init", "--name", "bench"], env=self.env, check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, timeout=START_DEADLINE)
        with open(self.dir / "daemon.log", "ab") as log:
            self.proc = subprocess.Popen(
                self.args() + ["serve", "--no-mdns", "--no-port-mapping", "--listen", "127.0.0.1:0",
                               "--handlers", str(self.dir / "handlers")],
                env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                start_new_session=True, preexec_fn=die_with_parent)
        end = time.monotonic() + START_DEADLINE
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"the daemon exited at start:\n{self.log()}")
            try:
                with Client(self.socket) as c:
                    c.status()
                return
            except DaemonNotRunning:
                if time.monotonic() > end:
                    raise SystemExit(f"the daemon did not answer within {START_DEADLINE} s")
                time.sleep(0.05)

    def log(self) -> str:
        try:
            return (self.dir / "daemon.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


class Raw:
    """A bare socket connection: write lines, read lines (buffered), nothing else."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.rfile = self.sock.makefile("rb", buffering=256 * 1024)

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()


def fill(path: str, prefix: str, n: int, value: str) -> None:
    """Stores ``n`` keys under ``prefix``, pipelined (256 requests in flight), so the
    feed holds ``n`` changes to replay. Every reply is checked."""
    raw = Raw(path)
    try:
        window, sent, done = 256, 0, 0
        while done < n:
            burst = []
            while sent < n and sent - done < window:
                burst.append(json.dumps({"id": sent, "cmd": "kv.put", "key": f"{prefix}{sent:07d}",
                                         "value": value}).encode() + b"\n")
                sent += 1
            if burst:
                raw.sock.sendall(b"".join(burst))
            reply = json.loads(raw.rfile.readline())
            if reply.get("ok") is not True:
                raise SystemExit(f"filling the store failed: {reply}")
            done += 1
    finally:
        raw.close()


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def bench_get_client(path: str, n: int, key: str) -> float:
    with Client(path) as c:
        for _ in range(min(n, 1000)):  # warm-up
            c.kv_get(key)
        t = time.perf_counter()
        for _ in range(n):
            c.kv_get(key)
        return rate(n, time.perf_counter() - t)


def bench_get_raw(path: str, n: int, key: str) -> float:
    raw = Raw(path)
    try:
        line = json.dumps({"id": 1, "cmd": "kv.get", "key": key}).encode() + b"\n"
        send, readline = raw.sock.sendall, raw.rfile.readline
        for _ in range(min(n, 1000)):
            send(line)
            readline()
        t = time.perf_counter()
        for _ in range(n):
            send(line)
            readline()
        return rate(n, time.perf_counter() - t)
    finally:
        raw.close()


def bench_watch_client(path: str, n: int, prefix: str) -> float:
    with Client(path) as c:
        t = time.perf_counter()
        got = 0
        with c.kv_watch(prefix, from_seq=0) as w:
            for _ in w:
                got += 1
                if got == n:
                    break
        return rate(n, time.perf_counter() - t)


def bench_watch_raw(path: str, n: int, prefix: str) -> float:
    raw = Raw(path)
    try:
        t = time.perf_counter()
        raw.sock.sendall(json.dumps({"id": 1, "cmd": "kv.watch", "prefix": prefix,
                                     "from_seq": 0}).encode() + b"\n")
        readline = raw.rfile.readline
        if b'"ok":true' not in readline():
            raise SystemExit("kv.watch was refused")
        for _ in range(n):
            if not readline():
                raise SystemExit("the watch ended early")
        return rate(n, time.perf_counter() - t)
    finally:
        raw.close()


def bench_batch(path: str, batches: int, size: int, value: bytes, run: int) -> Optional[Tuple[float, float]]:
    """Keys per second through ``Client.kv_batch`` (building the ``Put`` operations
    included), and the share of that time the client spent on the CPU."""
    with Client(path) as c:
        try:
            c.kv_batch([Put("bench/batch-probe", value)])
        except UnknownCommand:
            return None
        t, cpu = time.perf_counter(), time.process_time()
        for b in range(batches):
            r = c.kv_batch([Put(f"bench/b/{run}/{b:03d}/{i:04d}", value) for i in range(size)])
            assert len(r.ops) == size
        wall = time.perf_counter() - t
        return rate(batches * size, wall), (time.process_time() - cpu) / wall


def bench_batch_raw(path: str, batches: int, size: int, value: bytes, run: int) -> float:
    """The same batches written on a bare socket: the request line and the raw values,
    then the reply line (checked for ``"ok":true`` only)."""
    raw = Raw(path)
    try:
        t = time.perf_counter()
        for b in range(batches):
            ops = [{"op": "put", "key": f"bench/r/{run}/{b:03d}/{i:04d}", "value_len": len(value)}
                   for i in range(size)]
            raw.sock.sendall(json.dumps({"id": 1, "cmd": "kv.batch", "ops": ops}).encode() + b"\n"
                             + value * size)
            if b'"ok":true' not in raw.rfile.readline():
                raise SystemExit("kv.batch failed on the raw socket")
        return rate(batches * size, time.perf_counter() - t)
    finally:
        raw.close()


def alternate(rounds: int, client: Callable[[], float], raw: Callable[[], float]) -> Dict[str, float]:
    cs, rs = [], []
    for _ in range(rounds):
        cs.append(client())
        rs.append(raw())
    return {"client": statistics.median(cs), "raw": statistics.median(rs)}


def report(name: str, what_client: str, what_raw: str, r: Dict[str, float]) -> None:
    verdict = "met" if r["client"] >= TARGET else "MISSED"
    print(f"{name}")
    print(f"  client : {r['client']:>10,.0f}/s  {what_client}  (target >= {TARGET:,.0f}/s: {verdict})")
    print(f"  ceiling: {r['raw']:>10,.0f}/s  {what_raw}")
    print(f"  ratio  : {r['client'] / r['raw']:.2f} (client/ceiling)")


def default_bin() -> str:
    for p in (ROOT / "target" / "release" / "cnspr", ROOT / "target" / "debug" / "cnspr"):
        if os.access(p, os.X_OK):
            return str(p)
    raise SystemExit("no cnspr binary in target/release or target/debug; give --bin PATH")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", help="the cnspr binary (default: target/release/cnspr, else target/debug/cnspr)")
    ap.add_argument("--gets", type=int, default=20_000, help="kv.get calls per measurement (20,000)")
    ap.add_argument("--events", type=int, default=50_000, help="stored changes replayed by watch (50,000)")
    ap.add_argument("--rounds", type=int, default=3, help="measurements of each, median printed (3)")
    ap.add_argument("--batches", type=int, default=20, help="kv.batch calls (20)")
    ap.add_argument("--batch-size", type=int, default=1000, help="puts per batch (1,000)")
    a = ap.parse_args()
    for name in ("gets", "events", "rounds", "batches", "batch_size"):
        if getattr(a, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1")
    if a.events > 100_000:
        raise SystemExit("--events: the daemon's feed keeps the last 100,000 changes")
    if a.batch_size > 1000:
        raise SystemExit("--batch-size: a batch holds at most 1,000 operations")
    binary = os.path.abspath(a.bin) if a.bin else default_bin()
    if not os.access(binary, os.X_OK):
        raise SystemExit(f"--bin {a.bin}: not an executable file")

    d = Daemon(binary)
    try:
        d.start()
        print(f"daemon: {binary} (--no-mdns, 127.0.0.1, {d.dir}); Python {sys.version.split()[0]}")
        value = "v" * 100
        with Client(d.socket) as c:
            c.kv_put("bench/get", value)
        t = time.perf_counter()
        fill(d.socket, "bench/w/", a.events, value)
        print(f"stored {a.events:,} changes to replay in {time.perf_counter() - t:.1f} s "
              "(pipelined kv.put, setup, not measured)\n")

        r = alternate(a.rounds, lambda: bench_get_client(d.socket, a.gets, "bench/get"),
                      lambda: bench_get_raw(d.socket, a.gets, "bench/get"))
        report(f"(a) kv.get, {a.gets:,} sequential calls on one connection, 100-byte value, "
               f"median of {a.rounds}",
               "Client.kv_get -> KvEntry (reply parsed and checked)",
               "raw socket: write line, read reply line (not parsed)", r)
        r = alternate(a.rounds, lambda: bench_watch_client(d.socket, a.events, "bench/w/"),
                      lambda: bench_watch_raw(d.socket, a.events, "bench/w/"))
        report(f"(b) kv.watch from seq 0, {a.events:,} stored changes replayed, median of {a.rounds}",
               "Client.kv_watch iterated -> KvChange (parsed and checked)",
               "raw socket: read event lines (not parsed)", r)

        print(f"(c) kv.batch, {a.batches} batches of {a.batch_size:,} puts of 100-byte values, "
              f"median of {a.rounds}")
        got: List[Tuple[float, float]] = []
        raws: List[float] = []
        for run in range(a.rounds):
            br = bench_batch(d.socket, a.batches, a.batch_size, value.encode(), run)
            if br is None:
                break
            got.append(br)
            raws.append(bench_batch_raw(d.socket, a.batches, a.batch_size, value.encode(), run))
        if not got:
            print("  skipped: this daemon has no kv.batch")
        else:
            keys = statistics.median(g[0] for g in got)
            cpu = statistics.median(g[1] for g in got)
            ceiling = statistics.median(raws)
            print(f"  client : {keys:>10,.0f} keys/s  Client.kv_batch, one durable commit per batch "
                  f"(client on the CPU {cpu:.0%} of the time)")
            print(f"  ceiling: {ceiling:>10,.0f} keys/s  raw socket: the same request line and values, "
                  "reply line not parsed")
            print(f"  ratio  : {keys / ceiling:.2f} (client/ceiling)")
    finally:
        d.stop()


if __name__ == "__main__":
    main()
