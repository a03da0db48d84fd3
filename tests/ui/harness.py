"""Real `cnspr serve` daemons on loopback, and a headless Chromium, for the dashboard's
browser tests (tests/ui/test_ui.py) and its benchmark (bench/ui.py).

Each daemon has a directory of its own under /tmp (state, socket, config, handlers,
log), runs with `--no-mdns --no-port-mapping` on 127.0.0.1 at a port the kernel picks,
and is stopped by PID. Every wait is on a condition with a deadline. The binary comes
from `CNSPR_BIN`.
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
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

#: Upper bound on a wait for a condition (reaching it is a failure).
DEADLINE = 30.0

T = TypeVar("T")


class Timeout(AssertionError):
    pass


def wait_for(what: str, cond: Callable[[], Optional[T]], deadline: float = DEADLINE,
             step: float = 0.02) -> T:
    """Polls ``cond`` until it returns something truthy; raises after ``deadline`` s."""
    end = time.monotonic() + deadline
    last: Optional[BaseException] = None
    while True:
        try:
            v = cond()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - kept to say why it timed out
            last = e
        if time.monotonic() > end:
            raise Timeout(f"timed out after {deadline} s waiting for {what} (last error: {last!r})")
        time.sleep(step)


def cnspr_bin() -> str:
    b = os.environ.get("CNSPR_BIN")
    if not b or not os.access(b, os.X_OK):
        raise RuntimeError("set CNSPR_BIN to the cnspr binary (e.g. target/debug/cnspr)")
    return str(Path(b).resolve())


def _die_with_parent() -> None:
    """In the child: SIGKILL when the test process dies (PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def clean_env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CNSPR_") and k not in ("XDG_RUNTIME_DIR", "DISPLAY", "WAYLAND_DISPLAY")}
    env.setdefault("RUST_LOG", "cnspr=debug,info")
    return env


class Daemon:
    def __init__(self, name: str, ui: bool = False) -> None:
        self.name = name
        self.dir = Path(tempfile.mkdtemp(prefix=f"cnspr-ui-{name}-", dir="/tmp"))
        (self.dir / "handlers").mkdir()
        (self.dir / "config.toml").write_text("ui = true\n" if ui else "")
        self.socket = str(self.dir / "s.sock")
        self.port = 0
        self.proc: Optional["subprocess.Popen[bytes]"] = None
        self.id: str = json.loads(self.cli("init", "--name", name, "--json"))["id"]

    def args(self) -> List[str]:
        return [cnspr_bin(), "--state-dir", str(self.dir / "state"), "--socket", self.socket,
                "--config", str(self.dir / "config.toml")]

    def run(self, *args: str, timeout: float = DEADLINE) -> "subprocess.CompletedProcess[bytes]":
        return subprocess.run(self.args() + list(args), env=clean_env(), stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=timeout)

    def cli(self, *args: str, timeout: float = DEADLINE) -> str:
        r = self.run(*args, timeout=timeout)
        if r.returncode != 0:
            raise AssertionError(f"{self.name}: cnspr {' '.join(args)} failed: "
                                 f"{r.stderr.decode(errors='replace')}")
        return r.stdout.decode()

    def json(self, *args: str) -> Any:
        return json.loads(self.cli("--json", *args))

    def start(self) -> None:
        log = open(self.dir / "daemon.log", "ab")
        try:
            self.proc = subprocess.Popen(
                self.args() + ["serve", "--no-mdns", "--no-port-mapping",
                               "--listen", f"127.0.0.1:{self.port}",
                               "--handlers", str(self.dir / "handlers")],
                env=clean_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=log, start_new_session=True, preexec_fn=_die_with_parent)
        finally:
            log.close()

        def answers() -> Any:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon {self.name} exited early:\n{self.log()}")
            r = self.run("--json", "status")
            return json.loads(r.stdout) if r.returncode == 0 else None

        st = wait_for(f"{self.name} to answer", answers)
        self.port = int(st["listen"][0].rsplit(":", 1)[1])

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def peer(self, name: str) -> Optional[Dict[str, Any]]:
        return next((p for p in self.json("peers") if p["name"] == name), None)

    def ui_url(self) -> str:
        """The dashboard's URL, as `cnspr ui` prints it (never opening a browser)."""
        return self.cli("ui", "--no-open").strip()

    def log(self) -> str:
        try:
            return (self.dir / "daemon.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM (a graceful stop, peers see `left`), SIGKILL if it hangs."""
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

    def remove_dir(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def trust_both(a: Daemon, b: Daemon) -> None:
    a.cli("trust", b.id, "--name", b.name, "--addr", b.addr)
    b.cli("trust", a.id, "--name", a.name, "--addr", a.addr)


def wait_active(d: Daemon, names: List[str]) -> None:
    def all_active() -> bool:
        states = {p["name"]: p["state"] for p in d.json("peers")}
        return all(states.get(n) == "active" for n in names)
    wait_for(f"{d.name} to see {names} active", all_active)


def split_url(url: str) -> Tuple[str, str]:
    """`http://127.0.0.1:P/?token=T` -> (`http://127.0.0.1:P`, `T`)."""
    base, _, query = url.partition("/?")
    assert query.startswith("token="), url
    return base, query[len("token="):]


def http(url: str, method: str = "GET", headers: Optional[Dict[str, str]] = None,
         body: Optional[bytes] = None) -> Tuple[int, Dict[str, str], bytes]:
    """One request, no redirects followed: (status, headers, body)."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a: Any, **k: Any) -> None:
            return None
    opener = urllib.request.build_opener(NoRedirect)
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with opener.open(req, timeout=DEADLINE) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def browser() -> Any:
    """Headless Chromium (Debian's `chromium` and `chromium-driver`) through Selenium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    o = webdriver.ChromeOptions()
    o.binary_location = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1280,1600", "--no-first-run", "--disable-extensions",
              "--disable-background-networking", "--disable-component-update"):
        o.add_argument(a)
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    return webdriver.Chrome(service=Service(driver), options=o)
