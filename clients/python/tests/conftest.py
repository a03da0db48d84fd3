"""Real `cnspr serve` daemons on loopback for the tests.

Each daemon gets a temporary directory (state, socket, config, handlers, log), runs
with `--no-mdns` and listens on 127.0.0.1 at a port the kernel picks (read back from
`status`). Daemons are stopped by PID in fixture finalizers, whatever the test did.
The binary comes from `CNSPR_BIN`.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, TypeVar

import pytest

from cnspr import Client, CnsprError, DaemonNotRunning

#: Upper bound on any wait for a condition; reaching it fails the test.
DEADLINE = 30.0

T = TypeVar("T")


def wait_for(what: str, cond: Callable[[], Optional[T]], deadline: float = DEADLINE) -> T:
    """Polls ``cond`` until it returns something truthy; fails after ``deadline`` s."""
    end = time.monotonic() + deadline
    last_error: Optional[BaseException] = None
    while True:
        try:
            v = cond()
            if v:
                return v
        except CnsprError as e:
            last_error = e
        if time.monotonic() > end:
            pytest.fail(f"timed out after {deadline} s waiting for {what} (last error: {last_error})")
        time.sleep(0.02)


def cnspr_bin() -> str:
    b = os.environ.get("CNSPR_BIN")
    if not b:
        pytest.fail("set CNSPR_BIN to the cnspr binary (e.g. target/debug/cnspr)")
    p = Path(b).resolve()
    if not os.access(p, os.X_OK):
        pytest.fail(f"CNSPR_BIN={b} is not an executable file")
    return str(p)


def _die_with_parent() -> None:
    """In the child: SIGKILL when the test process dies, so no daemon outlives a
    killed test run (PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def clean_env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CNSPR_") and k not in ("XDG_RUNTIME_DIR",)}
    env["RUST_LOG"] = "cnspr=debug,info"
    return env


class Daemon:
    """One daemon in a directory of its own (short path: socket paths are limited)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dir = Path(tempfile.mkdtemp(prefix=f"cnspr-{name}-", dir="/tmp"))
        (self.dir / "handlers").mkdir()
        (self.dir / "out").mkdir()
        (self.dir / "config.toml").write_text("")
        self.socket = str(self.dir / "s.sock")
        self.port = 0
        self.proc: Optional["subprocess.Popen[bytes]"] = None
        try:
            out = self.cli("init", "--name", name, "--json")
            self.id: str = json.loads(out)["id"]
        except BaseException:
            self.remove_dir()
            raise

    def args(self) -> List[str]:
        return [cnspr_bin(), "--state-dir", str(self.dir / "state"), "--socket", self.socket,
                "--config", str(self.dir / "config.toml")]

    def cli(self, *args: str, check: bool = True) -> str:
        r = subprocess.run(self.args() + list(args), env=clean_env(), stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=DEADLINE)
        if check and r.returncode != 0:
            pytest.fail(f"cnspr {' '.join(args)} failed: {r.stderr.decode(errors='replace')}")
        return r.stdout.decode()

    def start(self) -> None:
        """Starts the daemon (on its previous port, if any) and waits until it answers."""
        log = open(self.dir / "daemon.log", "ab")
        try:
            self.proc = subprocess.Popen(
                self.args() + ["serve", "--no-mdns", "--no-port-mapping", "--listen", f"127.0.0.1:{self.port}",
                               "--handlers", str(self.dir / "handlers")],
                env=clean_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=log, start_new_session=True, preexec_fn=_die_with_parent)
        finally:
            log.close()

        def answers() -> Any:
            if self.proc is not None and self.proc.poll() is not None:
                pytest.fail(f"daemon {self.name} exited early:\n{self.log()}")
            try:
                with Client(self.socket) as c:
                    return c.status()
            except DaemonNotRunning:
                return None

        st = wait_for(f"{self.name} to answer on its socket", answers)
        self.port = int(st.listen[0].rsplit(":", 1)[1])

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def client(self, **kw: Any) -> Client:
        return Client(self.socket, **kw)

    def log(self) -> str:
        try:
            return (self.dir / "daemon.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def wait_exit(self) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout=DEADLINE)
        self.proc = None
        return code

    def stop(self) -> None:
        """SIGTERM (a graceful stop) by PID, then SIGKILL if it does not exit in time."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=DEADLINE)
        self.proc = None

    def handler(self, rel: str, script: str) -> None:
        """An executable handler script at ``rel`` in the handler directory."""
        p = self.dir / "handlers" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"#!/bin/sh\n{script}\n")
        p.chmod(0o755)

    def remove_dir(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def trust_both(a: Daemon, b: Daemon) -> None:
    """Makes ``a`` and ``b`` trust each other over loopback; waits until both see the
    other active."""
    with a.client() as ca, b.client() as cb:
        ca.trust(b.id, addrs=[b.addr])
        cb.trust(a.id, addrs=[a.addr])
        for c, other in ((ca, b), (cb, a)):
            wait_for(f"{other.name} active", lambda: any(
                p.id == other.id and p.name == other.name and p.state == "active" for p in c.peers()))


class Daemons:
    """Starts daemons on request and stops every one of them at the end."""

    def __init__(self) -> None:
        self.all: List[Daemon] = []

    def new(self, name: str, start: bool = True) -> Daemon:
        d = Daemon(name)
        self.all.append(d)
        if start:
            d.start()
        return d

    def stop_all(self) -> None:
        for d in self.all:
            d.stop()
        for d in self.all:
            d.remove_dir()


#: Hard limit of one test: a test that hangs fails instead of blocking the run.
TEST_LIMIT_S = 180


@pytest.fixture(autouse=True)
def hard_deadline() -> Iterator[None]:
    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"the test ran over {TEST_LIMIT_S} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(TEST_LIMIT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def daemons() -> Iterator[Daemons]:
    """Fresh daemons for one test."""
    ds = Daemons()
    try:
        yield ds
    finally:
        ds.stop_all()


@pytest.fixture(scope="session")
def mesh() -> Iterator[List[Daemon]]:
    """Two daemons, ``alpha`` and ``beta``, that trust each other and are connected.
    Shared by the tests: they use keys, tags and services of their own."""
    ds = Daemons()
    try:
        a, b = ds.new("alpha"), ds.new("beta")
        trust_both(a, b)
        yield [a, b]
    finally:
        ds.stop_all()


@pytest.fixture
def alpha(mesh: List[Daemon]) -> Daemon:
    return mesh[0]


@pytest.fixture
def beta(mesh: List[Daemon]) -> Daemon:
    return mesh[1]
