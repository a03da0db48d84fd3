//! The member id trait and what a member knows about a peer (its state and view).

use std::net::SocketAddr;
use std::time::Duration;

/// What identifies a member. Blanket-implemented for every type with these traits.
pub trait NodeId:
    Copy
    + Eq
    + Ord
    + std::hash::Hash
    + std::fmt::Debug
    + serde::Serialize
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<T> NodeId for T where
    T: Copy
        + Eq
        + Ord
        + std::hash::Hash
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// Peer states of SPEC section 6 (`removed` is the roster's business: a removed member
/// is forgotten and no longer listed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Direct connection up and answering.
    Active,
    /// Missed probes on the direct connection; not yet declared down.
    Suspect,
    /// No working direct path, but reachable through `via`.
    Indirect,
    Unreachable,
    /// It announced a graceful stop.
    Left,
}

impl State {
    /// The SPEC name: `active`, `suspect`, `indirect`, `unreachable`, `left`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Suspect => "suspect",
            State::Indirect => "indirect",
            State::Unreachable => "unreachable",
            State::Left => "left",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What this member knows about a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerView<I> {
    pub id: I,
    pub state: State,
    /// The relay member (first hop) when `Indirect`.
    pub via: Option<I>,
    /// Direct RTT, or the sum over the relayed path.
    pub rtt: Option<Duration>,
    /// Known addresses: the one of our own link and those other members see it at.
    pub addrs: Vec<SocketAddr>,
}
