//! The daemon's private decoders, compiled here from their own sources.
//!
//! `cnspr::daemon` keeps its wire types, roster, sync puller, pairing handshake and
//! control-socket framing private. Rather than copying them or widening their
//! visibility, this crate compiles those very files (`#[path]`) inside a module tree of
//! the same shape, with `crate::api`, `crate::addr` and `crate::store` pointing at the
//! public modules of `cnspr`. The targets therefore run the daemon's code, not a copy:
//! a change in one of these files is fuzzed as soon as the targets are rebuilt.
#![allow(dead_code, unused_imports, clippy::all)]

pub use cnspr::{addr, api, store};

#[path = "daemon.rs"]
pub mod daemon;

pub mod check;

/// `transport::heartbeat`'s private `filter` module: the BPF programs of the heartbeat
/// socket, whose verdicts the `heartbeat` target compares with `heartbeat::key_id`.
#[path = "../../transport/src/heartbeat/filter.rs"]
pub mod heartbeat_filter;

/// `transport::socket`, whose crate-private `set_option` `heartbeat_filter` calls.
#[path = "../../transport/src/socket.rs"]
mod socket;
