//! Typed errors of the daemon's components that talk to peers: messages (and pings) and
//! application streams. Each wraps the layer below (transport, framing, QUIC streams)
//! with `#[from]`; callers decide by variant, never by an error's text, and map to the
//! socket's error bodies at the edge.

use transport::frame::FrameError;
use transport::quinn::{ReadError, StoppedError, VarInt, WriteError};
use transport::TransportError;

use crate::api::{code, ErrorBody};

/// Why one message (or ping) exchange with a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("{0}")]
    Open(#[from] TransportError),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Write(#[from] WriteError),
    /// The other end (named) closed its stream without an answer.
    #[error("{0} closed the stream without an answer")]
    NoAnswer(&'static str),
    #[error("stream closed")]
    StreamClosed,
    #[error("the connection closed")]
    ConnectionClosed,
    #[error("the connection closed before the answer")]
    ClosedBeforeAnswer,
    #[error("no answer before the timeout")]
    Timeout,
}

impl MessageError {
    /// The socket's error for a failed ping.
    pub fn ping_body(&self) -> ErrorBody {
        match self {
            MessageError::Timeout => ErrorBody::new(code::TIMEOUT, "no answer before the timeout"),
            e => ErrorBody::new(code::UNREACHABLE, format!("ping failed: {e}")),
        }
    }
}

/// Why an application stream (or one direction of it) broke.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("local read: {0}")]
    LocalRead(std::io::Error),
    #[error("local write: {0}")]
    LocalWrite(std::io::Error),
    #[error("sending: {0}")]
    Send(#[from] WriteError),
    #[error("receiving: {0}")]
    Receive(#[from] ReadError),
    /// One direction of a relayed stream broke (`opener to target`, `target to opener`).
    #[error("{0}: {1}")]
    Direction(&'static str, Box<StreamError>),
    /// One side (`opener`, `target`) stopped reading.
    #[error("the {0} stopped reading (code {1})")]
    Stopped(&'static str, VarInt),
    #[error("the {0}'s side: {1}")]
    Side(&'static str, StoppedError),
}
