//! What an event that runs handlers is: its kind, and the device it comes
//! from or is about.

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
    /// No other device of the mesh (this one included) carries `name`: only then does a
    /// `@NAME` filter match. A member can take another's name; a handler never guesses.
    pub name_unique: bool,
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
