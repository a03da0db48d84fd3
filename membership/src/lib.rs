//! Membership, failure detection and gossip for cnspr (SPEC section 6) as a plain state
//! machine: inputs and `now` in, outputs out. See `docs/membership.md`.
//!
//! The daemon feeds [`Input`]s (QUIC links up/down, RTTs, received membership messages),
//! calls [`Membership::handle_timeout`] at [`Membership::poll_timeout`], and executes the
//! [`Output`]s from [`Membership::poll_output`]: sends to direct neighbours, peer state
//! changes, delivered broadcasts. No clock, no sockets, no threads in here; [`sim`] drives
//! many members over an in-memory network with virtual time.

mod config;
mod core;
mod gossip;
pub mod message;
mod route;
pub mod sim;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub use crate::config::Config;
pub use crate::core::{Membership, Stats};
pub use crate::message::{DecodeError, Event, EventId, Item, LinkEntry, Message, Record};

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

/// Inputs from the daemon.
#[derive(Clone, Debug)]
pub enum Input<I> {
    /// A direct QUIC connection is up (after its hello).
    LinkUp {
        peer: I,
        rtt: Duration,
        addr: Option<SocketAddr>,
        /// Beats on this link travel as datagrams nobody acknowledges (heartbeats): both
        /// sides send theirs every interval and the daemon feeds the peer's as
        /// [`Input::Beat`]. Otherwise one side beats over QUIC and learns of the other
        /// from the acknowledgements ([`Input::Heard`]).
        datagram: bool,
    },
    /// The connection closed; `leaving`: the peer closed it with "I am stopping".
    LinkDown { peer: I, leaving: bool },
    /// Fresh RTT from QUIC.
    Rtt { peer: I, rtt: Duration },
    /// A membership message from a direct neighbour.
    Message { from: I, msg: Message<I> },
    /// The transport heard from `peer` (its QUIC stack sent something, such as the
    /// acknowledgement of a [`Message::Beat`]) at `at` or later (`at` <= now).
    Heard { peer: I, at: Instant },
    /// A beat of `peer` that came as a datagram, received at `at` or later (`at` <= now).
    Beat {
        peer: I,
        at: Instant,
        digest: Option<u64>,
    },
}

/// Actions for the daemon.
#[derive(Clone, Debug, PartialEq)]
pub enum Output<I> {
    /// Send to a direct neighbour (dropped by the daemon if the link is gone).
    Send { to: I, msg: Message<I> },
    /// A peer's state, relay or known addresses changed.
    State { peer: I, view: PeerView<I> },
    /// A broadcast from another member, delivered once.
    Deliver {
        id: EventId<I>,
        lamport: u64,
        payload: Vec<u8>,
    },
}
