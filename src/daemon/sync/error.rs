//! The sync component's one error type.

use transport::frame::FrameError;

use super::protocol::BATCH;
use crate::store::reconcile::ReconError;
use crate::store::{Refusal, StoreError};

/// Why a sync session ended (or a collection round failed).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("sync stream: {0}")]
    Frame(#[from] FrameError),
    #[error("sync stream: {0}")]
    Write(#[from] transport::quinn::WriteError),
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Recon(#[from] ReconError),
    /// The peer claimed more than a peer may (see `crate::store::claims`).
    #[error("refused the peer's data: {0}")]
    Refused(#[from] Refusal),
    #[error("sync version {theirs}, this device speaks {ours}")]
    Version { theirs: u16, ours: u16 },
    #[error("sync protocol: {0}")]
    Protocol(#[from] Violation),
    #[error("internal: a store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("the peer closed the sync stream")]
    Closed,
    #[error("the peer did not answer within {0:?} during a reconciliation")]
    Stalled(std::time::Duration),
}

impl SyncError {
    /// Whether the peer sent data this device refuses (as opposed to a broken stream).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            SyncError::Refused(_) | SyncError::Store(StoreError::Refused(_))
        )
    }
}

impl From<std::convert::Infallible> for SyncError {
    fn from(e: std::convert::Infallible) -> Self {
        match e {}
    }
}

/// A frame that breaks the session's protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("the session did not start with a hello")]
    NoHello,
    #[error("a second hello")]
    SecondHello,
    #[error("a delta of {0} changes (at most {BATCH})")]
    DeltaTooLong(usize),
    #[error("a delta whose change for {0:?} lies beyond its vector")]
    BeyondVector(String),
    #[error("reconciliation ended before every range was answered")]
    ReconUnfinished,
    #[error("an unexpected reconciliation message")]
    UnexpectedRecon,
    #[error("reconciled changes outside a reconciliation")]
    ChangesOutsideRecon,
    #[error("a reconciliation reply outside a reconciliation")]
    ReplyOutsideRecon,
}
