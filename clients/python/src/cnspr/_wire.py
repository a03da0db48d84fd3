"""One socket connection: bounded line reading, request encoding, reply validation.

Everything read from the socket is untrusted: lines are bounded before they are
buffered, JSON is parsed with its non-standard constants refused, and every field is
checked for its type before use (``Fields``).
"""

from __future__ import annotations

import base64
import binascii
import errno
import json
import os
import select
import socket
import time
from typing import Any, Dict, List, Mapping, Optional, Union

from .errors import (
    ClientTimeout,
    CnsprError,
    ConnectionLost,
    DaemonNotRunning,
    LineTooLong,
    ProtocolError,
    codes,
    error_for,
)

#: Longest request line the daemon reads, in bytes (without the newline).
MAX_REQUEST_LINE = 1024 * 1024
#: Largest ``send`` body or raw ``kv.put`` value the daemon reads after a line.
MAX_BODY = 20 * 1024 * 1024
#: Default bound of one reply or event line read by the client. The protocol bounds
#: request lines only; the largest replies are a ``kv.get`` of an 8 MiB value with its
#: siblings, a ``kv.watch`` event (an 8 MiB value is 11.2 MiB in base64), and a ``send``
#: reply with handler output (up to 24 MiB, twice). Raise it with ``max_line=``.
DEFAULT_MAX_LINE = 64 * 1024 * 1024

_RECV = 256 * 1024
_SEND = 256 * 1024


def default_socket_path() -> str:
    """The daemon's default socket path, resolved as the daemon does.

    ``$CNSPR_SOCKET``; else ``$XDG_RUNTIME_DIR/cnspr/cnspr.sock`` when that variable is an
    absolute path; else ``STATE_DIR/cnspr.sock`` with STATE_DIR ``$CNSPR_STATE_DIR``, or
    ``$XDG_DATA_HOME/cnspr`` (absolute), or ``~/.local/share/cnspr``.
    """
    env = os.environ.get("CNSPR_SOCKET")
    if env:
        return env
    run = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(run):
        return os.path.join(run, "cnspr", "cnspr.sock")
    state = os.environ.get("CNSPR_STATE_DIR")
    if not state:
        data = os.environ.get("XDG_DATA_HOME", "")
        if not os.path.isabs(data):
            home = os.environ.get("HOME", "")
            data = os.path.join(home if os.path.isabs(home) else "/", ".local", "share")
        state = os.path.join(data, "cnspr")
    return os.path.join(state, "cnspr.sock")


#: One encoder and one decoder for every line (``json.dumps``/``loads`` with options
#: build a new one per call, a measurable part of a small request's cost).
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def encode_request(req: Mapping[str, Any]) -> bytes:
    """One request line with its newline; refuses lines the daemon would not read."""
    try:
        line = _ENCODER.encode(req)
    except (TypeError, ValueError) as e:
        raise TypeError(f"request cannot be encoded as JSON: {e}") from None
    data = line.encode("utf-8")
    if len(data) > MAX_REQUEST_LINE:
        raise LineTooLong(
            codes.LINE_TOO_LONG,
            f"request line of {len(data)} bytes is over the daemon's limit of "
            f"{MAX_REQUEST_LINE}",
        )
    return data + b"\n"


def _no_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def parse_line(line: bytes, what: str) -> Dict[str, Any]:
    """Parses one line from the daemon into a JSON object."""
    try:
        v = _DECODER.decode(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ProtocolError(
            codes.PROTOCOL_ERROR, f"{what}: the daemon sent a line that is not JSON ({e})"
        ) from None
    if not isinstance(v, dict):
        raise ProtocolError(codes.PROTOCOL_ERROR, f"{what}: expected a JSON object")
    return v


class Oversized:
    """A line longer than the bound: its first bytes, the rest was discarded."""

    __slots__ = ("head",)

    def __init__(self, head: bytes) -> None:
        self.head = head


def connect_unix(path: str, timeout: Optional[float]) -> socket.socket:
    """A connected UNIX stream socket, in blocking mode; ``DaemonNotRunning`` if nobody
    answers at ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.settimeout(None)
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
        sock.close()
        raise DaemonNotRunning(
            codes.DAEMON_NOT_RUNNING,
            f"no cnspr daemon is running on {path} (start one with `cnspr serve`, or "
            "pass the socket path or set CNSPR_SOCKET)",
        ) from None
    except socket.timeout:
        sock.close()
        raise ClientTimeout(
            codes.CLIENT_TIMEOUT, f"connecting to {path} did not finish in time"
        ) from None
    except OSError as e:
        sock.close()
        if e.errno == errno.ENAMETOOLONG or isinstance(e, PermissionError):
            raise DaemonNotRunning(
                codes.DAEMON_NOT_RUNNING, f"cannot connect to {path}: {e.strerror}"
            ) from None
        raise DaemonNotRunning(
            codes.DAEMON_NOT_RUNNING, f"cannot connect to {path}: {e}"
        ) from None
    return sock


def _remaining(deadline: Optional[float]) -> Optional[float]:
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


class Conn:
    """A socket with a bounded line reader.

    The socket stays in blocking mode. A write is tried at once with ``MSG_DONTWAIT``
    and waits with ``poll`` only while the socket's buffer is full; a read with a
    deadline waits with ``poll`` then reads with ``MSG_DONTWAIT``, one without a deadline
    just reads. So one thread may write while another reads, each with its own
    deadline. Only one thread reads at a time (the caller ensures it).
    """

    def __init__(self, sock: socket.socket, max_line: int) -> None:
        self.sock = sock
        self.max_line = max_line
        self.buf = bytearray()
        self.eof = False
        self._discarding = False
        self._head = b""
        self.closed = False
        # One poll object per direction, made once (a reader and a writer thread may
        # wait at the same time, each on its own).
        self._polls: Dict[int, "select.poll"] = {}

    def _wait(self, events: int, deadline: Optional[float]) -> bool:
        p = self._polls.get(events)
        if p is None:
            p = self._polls[events] = select.poll()
            p.register(self.sock.fileno(), events)
        while True:
            left = _remaining(deadline)
            ms = None if left is None else int(left * 1000) + (1 if left > 0 else 0)
            try:
                ready = p.poll(ms)
            except InterruptedError:  # pragma: no cover - PEP 475 retries already
                continue
            if ready:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def send_all(self, data: Union[bytes, bytearray, memoryview], deadline: Optional[float] = None) -> None:
        view = memoryview(data)
        ready = True  # try at once; wait only when the socket's buffer is full
        while view:
            if not ready and not self._wait(select.POLLOUT, deadline):
                raise ClientTimeout(codes.CLIENT_TIMEOUT, "the daemon did not read the request in time")
            try:
                n = self.sock.send(view[:_SEND], socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                ready = False
                continue
            except OSError as e:
                raise ConnectionLost(
                    codes.CONNECTION_LOST, f"the daemon closed the connection ({e.strerror or e})"
                ) from None
            view = view[n:]

    def _fill(self, deadline: Optional[float]) -> bool:
        """Reads more bytes into the buffer; False when the deadline passed."""
        if self.eof:
            raise ConnectionLost(codes.CONNECTION_LOST, "the daemon closed the connection")
        try:
            if deadline is None:
                # No deadline: a blocking read, without a poll first (one system call
                # less per reply).
                chunk = self.sock.recv(_RECV)
            else:
                if not self._wait(select.POLLIN, deadline):
                    return False
                chunk = self.sock.recv(_RECV, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError as e:
            self.eof = True
            raise ConnectionLost(
                codes.CONNECTION_LOST, f"the connection to the daemon broke ({e.strerror or e})"
            ) from None
        if not chunk:
            self.eof = True
            raise ConnectionLost(codes.CONNECTION_LOST, "the daemon closed the connection")
        self.buf += chunk
        return True

    def read_line(self, deadline: Optional[float]) -> Union[bytes, Oversized, None]:
        """The next line without its newline; ``Oversized`` for a line over the bound
        (read to its end and dropped); None when the deadline passed first (a partial
        line stays buffered for the next call). Raises ``ConnectionLost`` at end of
        input: a last line without a newline is not a complete reply."""
        while True:
            i = self.buf.find(b"\n")
            if self._discarding:
                if i < 0:
                    self.buf.clear()
                else:
                    del self.buf[: i + 1]
                    self._discarding = False
                    return Oversized(self._head)
            elif i >= 0:
                if i > self.max_line:
                    head = bytes(self.buf[:64])
                    del self.buf[: i + 1]
                    return Oversized(head)
                line = bytes(self.buf[:i])
                del self.buf[: i + 1]
                if line.strip():
                    return line
                continue
            elif len(self.buf) > self.max_line:
                self._head = bytes(self.buf[:64])
                self._discarding = True
                self.buf.clear()
            if not self._fill(deadline):
                return None

    def take_buffer(self) -> bytes:
        """The bytes read past the last line (raw stream data after a reply)."""
        data = bytes(self.buf)
        self.buf.clear()
        return data

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:  # pragma: no cover
                pass


def reply_result(v: Mapping[str, Any], what: str) -> Any:
    """The ``result`` of a reply object, or its error raised as its exception."""
    ok = v.get("ok")
    if ok is True:
        if "result" not in v:
            raise ProtocolError(codes.PROTOCOL_ERROR, f"{what}: ok reply without a result")
        return v["result"]
    if ok is False:
        e = v.get("error")
        if not isinstance(e, dict) or not isinstance(e.get("code"), str) or not isinstance(
            e.get("message"), str
        ):
            raise ProtocolError(codes.PROTOCOL_ERROR, f"{what}: error reply without code and message")
        current = e.get("current")
        versions = (
            [c["version"] for c in current if isinstance(c, dict) and isinstance(c.get("version"), str)]
            if isinstance(current, list)
            else []
        )
        key = e.get("key")
        raise error_for(e["code"], e["message"], versions, key if isinstance(key, str) else None)
    raise ProtocolError(codes.PROTOCOL_ERROR, f"{what}: reply without a boolean \"ok\"")


class Fields:
    """Typed access to one JSON object from the daemon; a missing field or a wrong type
    raises ``ProtocolError`` naming it. Fields not asked for are ignored (newer daemons
    may add some)."""

    def __init__(self, v: Any, what: str) -> None:
        if not isinstance(v, dict):
            raise ProtocolError(codes.PROTOCOL_ERROR, f"{what}: expected a JSON object")
        self.v: Dict[str, Any] = v
        self.what = what

    def _bad(self, key: str, expected: str) -> CnsprError:
        got = type(self.v.get(key)).__name__ if key in self.v else "nothing"
        return ProtocolError(
            codes.PROTOCOL_ERROR, f"{self.what}: field {key!r} should be {expected}, got {got}"
        )

    def has(self, key: str) -> bool:
        return key in self.v and self.v[key] is not None

    def string(self, key: str) -> str:
        x = self.v.get(key)
        if not isinstance(x, str):
            raise self._bad(key, "a string")
        return x

    def opt_string(self, key: str) -> Optional[str]:
        return self.string(key) if self.has(key) else None

    def integer(self, key: str) -> int:
        x = self.v.get(key)
        if not isinstance(x, int) or isinstance(x, bool):
            raise self._bad(key, "an integer")
        return x

    def opt_integer(self, key: str) -> Optional[int]:
        return self.integer(key) if self.has(key) else None

    def number(self, key: str) -> float:
        x = self.v.get(key)
        if not isinstance(x, (int, float)) or isinstance(x, bool):
            raise self._bad(key, "a number")
        return float(x)

    def opt_number(self, key: str) -> Optional[float]:
        return self.number(key) if self.has(key) else None

    def boolean(self, key: str, default: Optional[bool] = None) -> bool:
        if default is not None and key not in self.v:
            return default
        x = self.v.get(key)
        if not isinstance(x, bool):
            raise self._bad(key, "a boolean")
        return x

    def strings(self, key: str) -> List[str]:
        x = self.v.get(key)
        if not isinstance(x, list) or not all(isinstance(i, str) for i in x):
            raise self._bad(key, "a list of strings")
        return list(x)

    def opt_strings(self, key: str) -> Optional[List[str]]:
        return self.strings(key) if self.has(key) else None

    def array(self, key: str) -> List[Any]:
        x = self.v.get(key)
        if not isinstance(x, list):
            raise self._bad(key, "a list")
        return x

    def obj(self, key: str) -> "Fields":
        x = self.v.get(key)
        if not isinstance(x, dict):
            raise self._bad(key, "an object")
        return Fields(x, f"{self.what}.{key}")

    def opt_obj(self, key: str) -> Optional["Fields"]:
        return self.obj(key) if self.has(key) else None

    def b64(self, key: str) -> bytes:
        s = self.string(key)
        try:
            return base64.b64decode(s.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise self._bad(key, "base64") from None

    def opt_b64(self, key: str) -> Optional[bytes]:
        return self.b64(key) if self.has(key) else None
