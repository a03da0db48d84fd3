//! Handlers (docs/handlers.md): executables in the handler directory that run when a
//! message or a built-in event arrives.
//!
//! - [`tag`]: tag syntax ([`validate_tag`], [`validate_user_tag`]).
//! - [`layout`]: from a file's relative path to its tags and peer filter, and
//!   the matching rule ([`HandlerSpec::matches`]). Pure.
//! - [`scan`](mod@scan): the directory walk ([`scan()`], [`HandlerSet`]).
//! - [`run`]: running matched handlers as bounded, timed-out process groups
//!   ([`Runner`]), and the environment they get ([`message_env`], ...).
//!
//! The daemon's loop is: validate the tag, `scan(dir)`, `set.matching(...)`,
//! build an [`Invocation`] with the matching handlers and the right `*_env`,
//! `runner.submit(inv)`, and spawn or await the returned future.
//! User guide: `docs/handlers.md`.

mod env;
mod event;
pub mod layout;
pub mod listing;
mod process;
pub mod run;
pub mod scan;
pub mod tag;
#[cfg(test)]
mod testutil;

pub use event::{EventKind, Origin};
pub use layout::{HandlerSpec, PeerFilter, DAEMON_EVENTS, PEER_EVENTS};
pub use run::{
    daemon_env, message_env, peer_env, HandlerOutcome, Invocation, QueueFull, Runner, RunnerConfig,
    HANDLER_VARS,
};
pub use scan::{scan, HandlerSet};
pub use tag::{validate_tag, validate_user_tag, TagError, MAX_TAG_LEN};
