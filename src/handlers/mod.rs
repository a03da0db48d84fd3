//! Handlers (SPEC §7): executables in the handler directory that run when a
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
pub mod layout;
mod process;
pub mod run;
pub mod scan;
pub mod tag;
#[cfg(test)]
mod testutil;

pub use layout::{HandlerSpec, PeerFilter, DAEMON_EVENTS, PEER_EVENTS};
pub use run::{
    daemon_env, message_env, peer_env, HandlerOutcome, Invocation, QueueFull, Runner, RunnerConfig,
    HANDLER_VARS,
};
pub use scan::{scan, HandlerSet};
pub use tag::{validate_tag, validate_user_tag, TagError, MAX_TAG_LEN};

/// What kind of event runs handlers. The value of `CNSPR_EVENT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A user message (`cnspr send`).
    Message,
    /// A built-in `peer.*` event about another device.
    Peer,
    /// A built-in `daemon.*` event about this daemon.
    Daemon,
}

impl EventKind {
    /// `"message"`, `"peer"` or `"daemon"`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Message => "message",
            EventKind::Peer => "peer",
            EventKind::Daemon => "daemon",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A device an event comes from or is about: the sender of a message, the
/// peer a peer event concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin<'a> {
    /// The device's name.
    pub name: &'a str,
    /// Full device ID: 52 characters of uppercase base32, no dashes.
    pub id: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names() {
        assert_eq!(EventKind::Message.as_str(), "message");
        assert_eq!(EventKind::Peer.as_str(), "peer");
        assert_eq!(EventKind::Daemon.to_string(), "daemon");
    }
}
