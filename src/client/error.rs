//! The typed clients' error.

use std::path::PathBuf;

use crate::api::Code;
use crate::client::types::KvVersion;

/// What a typed client call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Nothing listens on the socket (no file there, or a stale one).
    #[error("no cnspr daemon is running on {} (start one with `cnspr serve`)", path.display())]
    NoDaemon { path: PathBuf },
    /// The socket is there but could not be connected to (e.g. permission denied: the
    /// daemon belongs to another user).
    #[error("cannot reach the daemon at {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The daemon answered with an error (docs/api.md, "Error codes").
    #[error("{message} ({code_name})")]
    Api {
        /// The code; [`Code::Unknown`] for a code this version does not know, which
        /// `code_name` still spells.
        code: Code,
        /// The code as the daemon sent it.
        code_name: String,
        /// For people; may change between versions.
        message: String,
        /// `conflict`: the key's versions now, best first (empty otherwise, and when the
        /// key has no value).
        current: Vec<KvVersion>,
    },
    /// Reading from or writing to the socket failed.
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    /// The daemon's output was not what the protocol says: malformed JSON, an
    /// unexpected shape, a line over the size limit, or a connection closed before the
    /// answer.
    #[error("control socket protocol: {0}")]
    Protocol(String),
    /// A request this client refuses to send (e.g. a body over the socket's limit).
    #[error("{0}")]
    InvalidInput(String),
}

impl Error {
    /// The daemon's error code, for [`Error::Api`].
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// A conditional write found the key changed or present.
    pub fn is_conflict(&self) -> bool {
        self.code() == Some(Code::Conflict)
    }

    /// The key's versions after a `conflict`.
    pub fn conflict_current(&self) -> Option<&[KvVersion]> {
        match self {
            Error::Api {
                code: Code::Conflict,
                current,
                ..
            } => Some(current),
            _ => None,
        }
    }

    pub(crate) fn protocol(what: impl std::fmt::Display) -> Error {
        Error::Protocol(what.to_string())
    }
}

/// The typed clients' result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
