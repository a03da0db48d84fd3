//! The stable error codes of the control socket and the wire (docs/api.md, "Error
//! codes").

use serde::{Deserialize, Serialize};

/// The stable error codes of the control socket (docs/api.md, "Error codes"); peers
/// refuse messages and streams with the same codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    BadJson,
    BadRequest,
    UnknownCommand,
    LineTooLong,
    UnknownPeer,
    AmbiguousPeer,
    Unreachable,
    Timeout,
    InvalidTag,
    InvalidId,
    InvalidName,
    InvalidAddress,
    TooLarge,
    QueueFull,
    #[serde(rename = "self")]
    OwnDevice,
    UnknownService,
    Unavailable,
    UnknownStream,
    NotFound,
    Store,
    Internal,
    InvalidCode,
    WrongCode,
    Busy,
    Cancelled,
    Refused,
    Removed,
    /// A conditional write found the key changed (`if_version`) or present (`if_absent`).
    Conflict,
    /// A peer refused a message or stream whose claimed origin it could not verify.
    BadOrigin,
    /// A code this version does not know (from a newer daemon or peer).
    #[serde(other)]
    Unknown,
}

impl Code {
    /// The code as it appears on the socket and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadJson => "bad_json",
            Code::BadRequest => "bad_request",
            Code::UnknownCommand => "unknown_command",
            Code::LineTooLong => "line_too_long",
            Code::UnknownPeer => "unknown_peer",
            Code::AmbiguousPeer => "ambiguous_peer",
            Code::Unreachable => "unreachable",
            Code::Timeout => "timeout",
            Code::InvalidTag => "invalid_tag",
            Code::InvalidId => "invalid_id",
            Code::InvalidName => "invalid_name",
            Code::InvalidAddress => "invalid_address",
            Code::TooLarge => "too_large",
            Code::QueueFull => "queue_full",
            Code::OwnDevice => "self",
            Code::UnknownService => "unknown_service",
            Code::Unavailable => "unavailable",
            Code::UnknownStream => "unknown_stream",
            Code::NotFound => "not_found",
            Code::Store => "store",
            Code::Internal => "internal",
            Code::InvalidCode => "invalid_code",
            Code::WrongCode => "wrong_code",
            Code::Busy => "busy",
            Code::Cancelled => "cancelled",
            Code::Refused => "refused",
            Code::Removed => "removed",
            Code::Conflict => "conflict",
            Code::BadOrigin => "bad_origin",
            Code::Unknown => "unknown",
        }
    }
}

impl From<&str> for Code {
    /// Reads a code received from a peer or a daemon; unknown ones become [`Code::Unknown`].
    fn from(s: &str) -> Code {
        match s {
            "bad_json" => Code::BadJson,
            "bad_request" => Code::BadRequest,
            "unknown_command" => Code::UnknownCommand,
            "line_too_long" => Code::LineTooLong,
            "unknown_peer" => Code::UnknownPeer,
            "ambiguous_peer" => Code::AmbiguousPeer,
            "unreachable" => Code::Unreachable,
            "timeout" => Code::Timeout,
            "invalid_tag" => Code::InvalidTag,
            "invalid_id" => Code::InvalidId,
            "invalid_name" => Code::InvalidName,
            "invalid_address" => Code::InvalidAddress,
            "too_large" => Code::TooLarge,
            "queue_full" => Code::QueueFull,
            "self" => Code::OwnDevice,
            "unknown_service" => Code::UnknownService,
            "unavailable" => Code::Unavailable,
            "unknown_stream" => Code::UnknownStream,
            "not_found" => Code::NotFound,
            "store" => Code::Store,
            "internal" => Code::Internal,
            "invalid_code" => Code::InvalidCode,
            "wrong_code" => Code::WrongCode,
            "busy" => Code::Busy,
            "cancelled" => Code::Cancelled,
            "refused" => Code::Refused,
            "removed" => Code::Removed,
            "conflict" => Code::Conflict,
            "bad_origin" => Code::BadOrigin,
            _ => Code::Unknown,
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The codes by their old constant names, for brevity at call sites.
pub mod code {
    use super::Code;
    pub const BAD_JSON: Code = Code::BadJson;
    pub const BAD_REQUEST: Code = Code::BadRequest;
    pub const UNKNOWN_COMMAND: Code = Code::UnknownCommand;
    pub const LINE_TOO_LONG: Code = Code::LineTooLong;
    pub const UNKNOWN_PEER: Code = Code::UnknownPeer;
    pub const AMBIGUOUS_PEER: Code = Code::AmbiguousPeer;
    pub const UNREACHABLE: Code = Code::Unreachable;
    pub const TIMEOUT: Code = Code::Timeout;
    pub const INVALID_TAG: Code = Code::InvalidTag;
    pub const INVALID_ID: Code = Code::InvalidId;
    pub const INVALID_NAME: Code = Code::InvalidName;
    pub const INVALID_ADDRESS: Code = Code::InvalidAddress;
    pub const TOO_LARGE: Code = Code::TooLarge;
    pub const QUEUE_FULL: Code = Code::QueueFull;
    pub const SELF: Code = Code::OwnDevice;
    pub const UNKNOWN_SERVICE: Code = Code::UnknownService;
    pub const UNAVAILABLE: Code = Code::Unavailable;
    pub const UNKNOWN_STREAM: Code = Code::UnknownStream;
    pub const NOT_FOUND: Code = Code::NotFound;
    pub const STORE: Code = Code::Store;
    pub const INTERNAL: Code = Code::Internal;
    pub const INVALID_CODE: Code = Code::InvalidCode;
    pub const WRONG_CODE: Code = Code::WrongCode;
    pub const BUSY: Code = Code::Busy;
    pub const CANCELLED: Code = Code::Cancelled;
    pub const REFUSED: Code = Code::Refused;
    pub const REMOVED: Code = Code::Removed;
    pub const CONFLICT: Code = Code::Conflict;
    pub const BAD_ORIGIN: Code = Code::BadOrigin;
}
