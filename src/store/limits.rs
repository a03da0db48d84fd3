//! The bounds on what a peer may claim, and why a claim was refused (see [`super::claims`]).

/// Highest sequence number accepted from anywhere (2^48: 8,900 years of a write every
/// millisecond for one store incarnation).
pub const MAX_SEQ: u64 = 1 << 48;
/// Most origins a version vector may hold (one per store incarnation of every device not
/// yet retired, see `docs/store.md`); at most 3.2 MiB as a frame, within a hello's 4 MiB.
pub const MAX_ORIGINS: usize = 65_536;

/// Why data from a peer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A claim about this store's own origin beyond what it wrote.
    #[error("it claims write {claimed} of this store's own origin, which has made only {held}")]
    OwnOrigin { claimed: u64, held: u64 },
    /// A sequence number above [`MAX_SEQ`] (or 0 in a vector).
    #[error("sequence number {seq} is outside 1..={MAX_SEQ}")]
    Seq { seq: u64 },
    /// More origins than [`MAX_ORIGINS`].
    #[error("it would take this store to {count} origins; at most {MAX_ORIGINS} are kept")]
    TooManyOrigins { count: usize },
    /// Two changes with one dot on different keys (a dot names one write of one key).
    #[error("it sends write {seq} of one origin twice, as a write of {first:?} and of {second:?}")]
    DotTwice {
        seq: u64,
        first: String,
        second: String,
    },
}
