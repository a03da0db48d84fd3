"""Runs the example handlers the way the daemon does, without a daemon.

Each script is executed directly (its `#!/bin/sh` line), from its own
directory, with the body on standard input and the CNSPR_* variables of a
message (names and forms as in src/handlers/env.rs). HOME and TMPDIR are
temporary directories. PATH holds only:

- a directory of stubs standing in for the desktop tools (notify-send,
  wl-copy, xdg-open, ...): each records its arguments and, for the tools that
  read it, its standard input, and can be told to fail, print or hang;
- a directory of links to the POSIX utilities the scripts use, so a desktop
  tool installed on the test machine is never found by accident.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "handlers"
COOKBOOK = REPO / "docs" / "cookbook.md"

# Full device IDs: 52 characters of uppercase base32, no dashes.
SELF_ID = "FCTK-DOUO-2ZUJ-2TXH-N33H-WWCG-IBQT-YH5M-Y6YV-6PLQ-HXG5-RMTT-FOZQ"
FROM_ID = "Q2DO-FJEN-G3RY-3W5K-SVR5-K4IY-SHXK-VENO-DWHG-L23Y-W6L2-ENAL-W6ZA"

# Utilities the scripts may use besides shell built-ins. iconv is optional
# for them; it is linked when the machine has it.
BASE_TOOLS = [
    "cat", "chmod", "head", "iconv", "ln", "mkdir", "mktemp", "rm", "sed",
    "sleep", "tail", "tr", "wc",
]

# HANDLER_TEST_SHELL="bash --posix" (or "busybox sh") runs the scripts with
# that shell instead of their #! line (/bin/sh), to check them on another one.
SHELL = os.environ.get("HANDLER_TEST_SHELL", "").split()
if SHELL:
    SHELL[0] = shutil.which(SHELL[0]) or SHELL[0]

# Desktop tools and whether they read standard input.
STUB_TOOLS = {
    "notify-send": False,
    "wl-copy": True,
    "wl-paste": False,
    "xclip": False,  # reads only with -i; the stub decides from its arguments
    "xdg-open": False,
    "xdg-user-dir": False,
    "paplay": False,
    "canberra-gtk-play": False,
    "cnspr": True,
}

STUB = r'''#!{python} -I
import json, os, sys, time
name = {name!r}
key = "STUB_" + name.upper().replace("-", "_")
env = os.environ
data = b""
if {reads_stdin!r} or (name == "xclip" and "-i" in sys.argv[1:]):
    data = sys.stdin.buffer.read()
record = {{
    "argv": sys.argv[1:],
    "stdin": data.decode("latin-1"),
    "env": {{k: env.get(k) for k in ("WAYLAND_DISPLAY", "DISPLAY", "CNSPR_FROM")}},
}}
with open(os.path.join(env["STUB_LOG"], name + ".jsonl"), "a") as f:
    f.write(json.dumps(record) + "\n")
if env.get(key + "_FORK"):
    # Like wl-copy and xclip: a child stays behind, holding the inherited
    # standard output and error, and the command itself returns.
    if os.fork() == 0:
        time.sleep(float(env[key + "_FORK"]))
        os._exit(0)
if env.get(key + "_SLEEP"):
    time.sleep(float(env[key + "_SLEEP"]))
if env.get(key + "_STDOUT") is not None:
    sys.stdout.buffer.write(env[key + "_STDOUT"].encode())
if env.get(key + "_STDOUT_FILE"):
    with open(env[key + "_STDOUT_FILE"], "rb") as f:
        sys.stdout.buffer.write(f.read())
sys.stdout.flush()
if env.get(key + "_STDERR"):
    sys.stderr.write(env[key + "_STDERR"] + "\n")
sys.exit(int(env.get(key + "_EXIT", "0")))
'''


@dataclass
class Result:
    returncode: int
    stdout: bytes
    stderr: str
    elapsed: float

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "replace")


@dataclass
class Sandbox:
    root: Path
    home: Path
    tmpdir: Path
    stubs: Path
    base: Path
    log: Path
    env: dict = field(default_factory=dict)

    def stub(self, *names: str) -> None:
        """Puts stubs for the named desktop tools on PATH."""
        for name in names:
            path = self.stubs / name
            path.write_text(
                STUB.format(python=sys.executable, name=name, reads_stdin=STUB_TOOLS[name])
            )
            path.chmod(0o755)

    def calls(self, name: str) -> list:
        """What the stub `name` received, one dict per call, in order."""
        path = self.log / f"{name}.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def run(
        self,
        script: str,
        body: bytes = b"",
        args: tuple = (),
        tag: str | None = None,
        as_handler: bool = True,
        env: dict | None = None,
        unset: tuple = (),
        umask: int = 0o022,
        timeout: float = 20,
        **popen,
    ) -> Result:
        """Runs examples/handlers/SCRIPT as the daemon would for a message
        (or, with as_handler=False, as a user would: no CNSPR_* variables)."""
        path = EXAMPLES / script
        full = dict(self.env)
        if as_handler:
            full.update(message_env(tag if tag is not None else tag_of(script)))
        full.update(env or {})
        for name in unset:
            full.pop(name, None)
        popen.setdefault("start_new_session", True)
        start = time.monotonic()
        proc = subprocess.Popen(
            [*SHELL, str(path), *args],
            cwd=path.parent,
            env=full,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            umask=umask,
            **popen,
        )
        try:
            out, err = proc.communicate(body, timeout=timeout)
        finally:
            # Processes the handler left behind (a hanging stub, a stub's
            # child); the daemon would leave them, the tests do not.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        return Result(proc.returncode, out, err.decode("utf-8", "replace"), time.monotonic() - start)


def tag_of(rel: str) -> str:
    """The tag a handler file answers (docs/handlers.md): the path relative to
    the handler directory, '/' read as '.', the file's last extension removed."""
    parts = rel.split("/")
    name = parts[-1]
    if "." in name[1:]:
        name = name.rsplit(".", 1)[0]
    return ".".join(parts[:-1] + [name])


def message_env(tag: str) -> dict:
    """The variables the daemon sets for a message from `laptop` to `desk`."""
    return {
        "CNSPR_EVENT": "message",
        "CNSPR_TAG": tag,
        "CNSPR_SELF_NAME": "desk",
        "CNSPR_SELF_ID": SELF_ID,
        "CNSPR_FROM": "laptop",
        "CNSPR_FROM_ID": FROM_ID,
        "CNSPR_MESSAGE_ID": "5f1c0a9e3b2d4c71",
    }


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    root = tmp_path
    box = Sandbox(
        root=root,
        home=root / "home",
        tmpdir=root / "tmp",
        stubs=root / "stubs",
        base=root / "base",
        log=root / "log",
    )
    for d in (box.home, box.tmpdir, box.stubs, box.base, box.log):
        d.mkdir()
    for tool in BASE_TOOLS:
        real = shutil.which(tool)
        if real:
            (box.base / tool).symlink_to(real)
    box.env = {
        "PATH": f"{box.stubs}:{box.base}",
        "HOME": str(box.home),
        "TMPDIR": str(box.tmpdir),
        "LANG": "C.UTF-8",
        "STUB_LOG": str(box.log),
    }
    return box
