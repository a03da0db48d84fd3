//! Every way pairing can fail, on either side, and its error body on the socket.

use std::time::Duration;

use transport::{DeviceId, FrameError, TransportError};

use super::addr::{AddrError, Shown};
use crate::api::{code, Code, ErrorBody};

/// Digits of a code.
pub const CODE_DIGITS: usize = 6;
/// Wrong codes before the window closes.
pub const MAX_FAILURES: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum PairError {
    // What was typed.
    #[error("a pairing code is {CODE_DIGITS} digits, like 123-456 (shown by `cnspr pair` on the other device)")]
    InvalidCode,
    #[error(transparent)]
    Address(#[from] AddrError),
    #[error("at most {0} addresses")]
    TooManyAddresses(usize),

    // The window's outcome.
    #[error(
        "a pairing window is already open on this device; finish or cancel that `cnspr pair` first"
    )]
    Busy,
    #[error("cannot open the pairing port: {0}")]
    Listen(#[from] TransportError),
    #[error("the pairing window expired before another device entered the code")]
    Expired,
    #[error("pairing cancelled")]
    Cancelled,
    #[error("the pairing window closed after {MAX_FAILURES} wrong codes; run `cnspr pair` again for a new code")]
    TooManyWrongCodes,
    #[error("the pairing port closed")]
    PortClosed,

    // The joiner's outcome.
    #[error("wrong code: check the code shown by `cnspr pair` on the other device (three wrong codes close its window)")]
    WrongCode,
    #[error("wrong code (the exchange failed: {0})")]
    Exchange(spake2::Error),
    #[error("the other device could not prove it knows the code: nothing was trusted (someone may be interfering on this network)")]
    WindowUnproven,
    #[error("the other device refused: {reason}")]
    Refused { reason: String },
    #[error("device {0} was removed from this device's mesh; not pairing with it")]
    WindowRemoved(DeviceId),
    #[error("that is this device's own window")]
    OwnWindow,
    #[error("no pairing window found on the LAN; run `cnspr pair` on a device of the mesh first (or give its address with --addr)")]
    NotFound,
    #[error("no pairing window open for this code at {0}: nothing listens there any more (the window closed); run `cnspr pair` on that device again for a new code")]
    WindowGone(Shown),
    #[error("no pairing window open for this code at {0}: its device stopped advertising it (the window closed); run `cnspr pair` on that device again for a new code")]
    Unadvertised(Shown),
    #[error("{0}: no answer (no pairing window there, or a firewall blocks UDP to it)")]
    NoAnswer(Shown),
    /// `transport::pairing::dial` reports its failures as text.
    #[error("{0}: {1}")]
    Dial(Shown, String),

    // One attempt, either side.
    #[error("the other device presented no device certificate")]
    NoCertificate,
    #[error("connection: {0}")]
    Connection(#[from] transport::quinn::ConnectionError),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the other device ended the exchange early")]
    Ended,
    #[error("unexpected pairing message {got} (expected {expected})")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    #[error("the attempt took longer than {0:?}")]
    AttemptTimeout(Duration),
}

impl From<spake2::Error> for PairError {
    fn from(e: spake2::Error) -> Self {
        PairError::Exchange(e)
    }
}

impl PairError {
    /// The stable error code on the socket.
    pub fn code(&self) -> Code {
        use PairError::*;
        match self {
            InvalidCode => code::INVALID_CODE,
            Address(_) | TooManyAddresses(_) => code::INVALID_ADDRESS,
            Busy => code::BUSY,
            Listen(_) | PortClosed => code::INTERNAL,
            Expired | NotFound | NoAnswer(_) | AttemptTimeout(_) => code::TIMEOUT,
            Cancelled => code::CANCELLED,
            TooManyWrongCodes | WrongCode | Exchange(_) | WindowUnproven => code::WRONG_CODE,
            Refused { .. } => code::REFUSED,
            WindowRemoved(_) => code::REMOVED,
            OwnWindow
            | WindowGone(_)
            | Unadvertised(_)
            | Dial(..)
            | NoCertificate
            | Connection(_)
            | Frame(_)
            | Ended
            | Unexpected { .. } => code::UNREACHABLE,
        }
    }
}

impl From<PairError> for ErrorBody {
    fn from(e: PairError) -> Self {
        ErrorBody::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_bodies_keep_their_codes() {
        let b = ErrorBody::from(PairError::TooManyWrongCodes);
        assert_eq!(b.code, code::WRONG_CODE);
        assert!(b.message.contains("closed after 3 wrong codes"), "{b}");
        assert_eq!(
            ErrorBody::from(PairError::InvalidCode).code,
            code::INVALID_CODE
        );
        assert_eq!(ErrorBody::from(PairError::Expired).code, code::TIMEOUT);
        let gone = PairError::WindowGone(Shown("127.0.0.1:9".parse().unwrap()));
        assert!(gone
            .to_string()
            .starts_with("no pairing window open for this code"));
    }
}
