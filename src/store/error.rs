//! The store layer's one error type.

use std::path::PathBuf;

use super::hlc::Hlc;
use super::limits::Refusal;

/// A version as a conflict reports it: its stamp, its writer's sequence number, and the
/// writing device.
pub type CurrentVersion = (Hlc, u64, [u8; 32]);

fn conflict_text(key: &str, if_absent: bool, current: &[CurrentVersion]) -> String {
    match (if_absent, current.first()) {
        (true, Some((hlc, seq, _))) => {
            format!("{key:?} already has a value (version {hlc} seq {seq}); nothing written")
        }
        (false, Some((hlc, seq, _))) => format!(
            "{key:?} changed since that version was read: it is now version {hlc} seq {seq}; \
             nothing written (read it again and retry)"
        ),
        (_, None) => format!("{key:?} has no value now; nothing written"),
    }
}

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An empty key was given.
    #[error("the key is empty; a key is 1 to 1024 bytes of UTF-8")]
    EmptyKey,
    /// A key over the length limit.
    #[error("the key is {len} bytes long; keys are at most {max} bytes of UTF-8")]
    KeyTooLong { len: usize, max: usize },
    /// A key with a forbidden character.
    #[error("invalid key: {0}; keys are printable UTF-8")]
    InvalidKey(String),
    /// A value over the size limit.
    #[error("the value is {len} bytes; values are at most {max} bytes (8 MiB)")]
    ValueTooLarge { len: usize, max: usize },
    /// A change received from a peer breaks the format rules.
    #[error("invalid change from a peer: {0}")]
    InvalidChange(String),
    /// Data from a peer that this store refuses (see [`Refusal`]); nothing of it is kept.
    #[error("refused data from a peer: {0}")]
    Refused(#[from] Refusal),
    /// The database file is damaged (truncated, overwritten, or not a cnspr store).
    #[error(
        "the store file {} is corrupted or truncated ({detail}); move it aside and restart: \
         the other devices send the data back when they meet this one (see docs/store.md)",
        path.display()
    )]
    Corrupt { path: PathBuf, detail: String },
    /// The database file could not be opened.
    #[error("cannot open the store file {}: {detail}", path.display())]
    Open { path: PathBuf, detail: String },
    /// A stored record could not be decoded.
    #[error("a stored record could not be decoded ({0}); the store file is damaged")]
    Decode(String),
    /// A record could not be encoded.
    #[error("a record could not be encoded: {0}")]
    Encode(String),
    /// The storage engine failed.
    #[error("storage error: {0}")]
    Db(Box<redb::Error>),
    /// A conditional write whose condition did not hold; nothing was written. `current`
    /// is the key's versions now, best first (empty: the key has no value).
    #[error("{}", conflict_text(key, *if_absent, current))]
    Conflict {
        key: String,
        /// The condition was `if_absent` (else `if_version`).
        if_absent: bool,
        current: Vec<CurrentVersion>,
    },
    /// A `kv.batch` that breaks the rules (count of operations, a key given twice).
    #[error("invalid batch: {0}")]
    BadBatch(String),
    /// A `kv.batch` over the size limit.
    #[error("the batch holds {len} bytes of keys and values; a batch holds at most {max} (8 MiB)")]
    BatchTooLarge { len: usize, max: usize },
    /// A whole write batch failed; none of its operations was stored.
    #[error("the write was not stored: {0}")]
    WriteFailed(String),
    /// A watcher asked for feed entries that were already trimmed.
    #[error(
        "the change feed no longer holds entries after {requested} (kept from {oldest}); \
         list the store again, then resume from feed seq {oldest}"
    )]
    FeedTrimmed { requested: u64, oldest: u64 },
    /// The store's writer has stopped.
    #[error("the store is closed")]
    Closed,
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(err: $t) -> Self {
                StoreError::Db(Box::new(err.into()))
            }
        }
    )*};
}

from_redb!(
    redb::Error,
    redb::StorageError,
    redb::TransactionError,
    redb::TableError,
    redb::CommitError,
    redb::DatabaseError
);

impl From<bincode::error::DecodeError> for StoreError {
    fn from(err: bincode::error::DecodeError) -> Self {
        StoreError::Decode(err.to_string())
    }
}

impl From<bincode::error::EncodeError> for StoreError {
    fn from(err: bincode::error::EncodeError) -> Self {
        StoreError::Encode(err.to_string())
    }
}
