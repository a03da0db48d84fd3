"""Errors raised by the client.

Every error is a :class:`CnsprError` with a stable ``code`` and a ``message`` for
people. Errors the daemon reports carry the daemon's code (``docs/api.md``, "Error
codes"); errors found by this library carry one of the client codes below. Each known
code has its own subclass, so either ``except UnknownPeer:`` or
``except CnsprError as e: if e.code == codes.UNKNOWN_PEER`` works. A code this version
does not know (from a newer daemon) gives a plain :class:`CnsprError`.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Type


class codes:
    """The error codes, as constants."""

    # Sent by the daemon.
    BAD_JSON = "bad_json"
    BAD_REQUEST = "bad_request"
    UNKNOWN_COMMAND = "unknown_command"
    LINE_TOO_LONG = "line_too_long"
    UNKNOWN_PEER = "unknown_peer"
    AMBIGUOUS_PEER = "ambiguous_peer"
    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    INVALID_TAG = "invalid_tag"
    INVALID_ID = "invalid_id"
    INVALID_NAME = "invalid_name"
    INVALID_ADDRESS = "invalid_address"
    TOO_LARGE = "too_large"
    QUEUE_FULL = "queue_full"
    SELF = "self"
    UNKNOWN_SERVICE = "unknown_service"
    UNAVAILABLE = "unavailable"
    UNKNOWN_STREAM = "unknown_stream"
    NOT_FOUND = "not_found"
    STORE = "store"
    INTERNAL = "internal"
    INVALID_CODE = "invalid_code"
    WRONG_CODE = "wrong_code"
    BUSY = "busy"
    CANCELLED = "cancelled"
    REFUSED = "refused"
    REMOVED = "removed"
    CONFLICT = "conflict"
    BAD_ORIGIN = "bad_origin"

    # Found by this library.
    DAEMON_NOT_RUNNING = "daemon_not_running"
    CONNECTION_LOST = "connection_lost"
    PROTOCOL_ERROR = "protocol_error"
    REPLY_TOO_LARGE = "reply_too_large"
    CLIENT_TIMEOUT = "client_timeout"


class CnsprError(Exception):
    """Base class: ``code`` is stable, ``message`` is for people."""

    code: str
    message: str

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} [{self.code}]"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


# --- Raised by the library itself --------------------------------------------------


class DaemonNotRunning(CnsprError):
    """Nothing answers on the socket path (no daemon, or a stale socket file)."""


class ConnectionLost(CnsprError):
    """The daemon closed the connection (it stopped, or the connection broke)."""


class ProtocolError(CnsprError):
    """The daemon sent something this library cannot read (not JSON, wrong types)."""


class ReplyTooLarge(ProtocolError):
    """A reply or event line is longer than the client's ``max_line``."""


class ClientTimeout(CnsprError):
    """The client's own deadline passed before the daemon answered."""


# --- Reported by the daemon --------------------------------------------------------


class BadJson(CnsprError):
    pass


class BadRequest(CnsprError):
    pass


class UnknownCommand(CnsprError):
    pass


class LineTooLong(CnsprError):
    """A request line would be over 1 MiB (raised before anything is sent)."""


class UnknownPeer(CnsprError):
    pass


class AmbiguousPeer(CnsprError):
    pass


class Unreachable(CnsprError):
    pass


class Timeout(CnsprError):
    """The peer is connected but did not answer in time (the daemon's ``timeout``)."""


class InvalidTag(CnsprError):
    pass


class InvalidId(CnsprError):
    pass


class InvalidName(CnsprError):
    pass


class InvalidAddress(CnsprError):
    pass


class TooLarge(CnsprError):
    pass


class QueueFull(CnsprError):
    pass


class SelfTrust(CnsprError):
    """``trust`` was given this device's own ID (code ``self``)."""


class UnknownService(CnsprError):
    pass


class Unavailable(CnsprError):
    pass


class UnknownStream(CnsprError):
    pass


class NotFound(CnsprError):
    pass


class StoreError(CnsprError):
    pass


class Internal(CnsprError):
    pass


class InvalidCode(CnsprError):
    pass


class WrongCode(CnsprError):
    pass


class Busy(CnsprError):
    pass


class Cancelled(CnsprError):
    pass


class Refused(CnsprError):
    pass


class Removed(CnsprError):
    pass


class Conflict(CnsprError):
    """A conditional write found the key changed (``if_version``) or present
    (``if_absent``); nothing was written. ``current`` holds the key's versions now, best
    first (empty when it has no value), as ``version`` strings. ``key`` names the key
    whose condition failed when the daemon says (``kv_batch``: the whole batch fails,
    nothing of it is written), else None."""

    current: Tuple[str, ...] = ()
    key: Optional[str] = None


_BY_CODE: Dict[str, Type[CnsprError]] = {
    codes.BAD_JSON: BadJson,
    codes.BAD_REQUEST: BadRequest,
    codes.UNKNOWN_COMMAND: UnknownCommand,
    codes.LINE_TOO_LONG: LineTooLong,
    codes.UNKNOWN_PEER: UnknownPeer,
    codes.AMBIGUOUS_PEER: AmbiguousPeer,
    codes.UNREACHABLE: Unreachable,
    codes.TIMEOUT: Timeout,
    codes.INVALID_TAG: InvalidTag,
    codes.INVALID_ID: InvalidId,
    codes.INVALID_NAME: InvalidName,
    codes.INVALID_ADDRESS: InvalidAddress,
    codes.TOO_LARGE: TooLarge,
    codes.QUEUE_FULL: QueueFull,
    codes.SELF: SelfTrust,
    codes.UNKNOWN_SERVICE: UnknownService,
    codes.UNAVAILABLE: Unavailable,
    codes.UNKNOWN_STREAM: UnknownStream,
    codes.NOT_FOUND: NotFound,
    codes.STORE: StoreError,
    codes.INTERNAL: Internal,
    codes.INVALID_CODE: InvalidCode,
    codes.WRONG_CODE: WrongCode,
    codes.BUSY: Busy,
    codes.CANCELLED: Cancelled,
    codes.REFUSED: Refused,
    codes.REMOVED: Removed,
    codes.CONFLICT: Conflict,
    codes.DAEMON_NOT_RUNNING: DaemonNotRunning,
    codes.CONNECTION_LOST: ConnectionLost,
    codes.PROTOCOL_ERROR: ProtocolError,
    codes.REPLY_TOO_LARGE: ReplyTooLarge,
    codes.CLIENT_TIMEOUT: ClientTimeout,
}


def error_for(
    code: str, message: str, current: Sequence[str] = (), key: Optional[str] = None
) -> CnsprError:
    """The exception for an error code: its subclass, or :class:`CnsprError`. ``current``
    is a conflict's versions, ``key`` the key whose condition failed."""
    e = _BY_CODE.get(code, CnsprError)(code, message)
    if isinstance(e, Conflict):
        e.current = tuple(current)
        e.key = key
    return e
