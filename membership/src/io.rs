//! What the daemon feeds the core ([`Input`]) and what it gets back ([`Output`]).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::message::{EventId, Message};
use crate::types::PeerView;

/// Inputs from the daemon.
#[derive(Clone, Debug)]
pub enum Input<I> {
    /// A direct QUIC connection is up (after its hello).
    LinkUp {
        peer: I,
        rtt: Duration,
        addr: Option<SocketAddr>,
        /// Beats on this link travel as datagrams nobody acknowledges (heartbeats): each
        /// side sends its beats to its monitors every interval and the daemon feeds the
        /// peer's as [`Input::Beat`]. Otherwise one side of a monitoring link beats over
        /// QUIC and learns of the other from the acknowledgements ([`Input::Heard`]).
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
