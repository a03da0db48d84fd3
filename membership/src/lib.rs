//! Membership, failure detection and gossip for cnspr (SPEC section 6) as a plain state
//! machine: inputs and `now` in, outputs out. Each member beats only a few monitors,
//! chosen on monitoring rings, which report its failure to everyone in their link
//! records: idle traffic per member does not grow with the mesh. See
//! `docs/membership.md`.
//!
//! The daemon feeds [`Input`]s (QUIC links up/down, RTTs, received membership messages),
//! calls [`Membership::handle_timeout`] at [`Membership::poll_timeout`], and executes the
//! [`Output`]s from [`Membership::poll_output`]: sends to direct neighbours, peer state
//! changes, delivered broadcasts. No clock, no sockets, no threads in here; [`sim`] drives
//! many members over an in-memory network with virtual time.

mod config;
mod core;
mod gossip;
mod io;
mod link;
pub mod message;
mod rings;
mod route;
pub mod sim;
mod types;

pub use crate::config::Config;
pub use crate::core::{Membership, Stats};
pub use crate::io::{Input, Output};
pub use crate::message::{DecodeError, Event, EventId, Item, LinkEntry, Message, Record, Watch};
pub use crate::types::{NodeId, PeerView, State};
