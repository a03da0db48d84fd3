//! From a handler's relative path to the tags it answers, and the matching rule.
//! Pure functions: no I/O (the directory walk is in `scan.rs`).

use std::fmt;
use std::path::PathBuf;

use super::event::{EventKind, Origin};
use super::tag::{validate_tag, TagError};

/// Tags of the built-in daemon events.
pub const DAEMON_EVENTS: [&str; 4] = [
    "daemon.start",
    "daemon.stop",
    "daemon.active",
    "daemon.inactive",
];

/// Tags of the built-in peer events.
pub const PEER_EVENTS: [&str; 8] = [
    "peer.status_changed",
    "peer.path_changed",
    "peer.new_address",
    "peer.seen",
    "peer.joined",
    "peer.removed",
    "peer.renamed",
    "peer.conflict",
];

/// A `@NAME` or `@[ID-PREFIX]` path segment: the handler only runs for that peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerFilter {
    /// `@NAME`: the peer's name, compared exactly (case-sensitive); never a name that
    /// two devices of the mesh carry.
    Name(String),
    /// `@[ID-PREFIX]`: stored uppercase without dashes; compared with the start
    /// of the peer's device ID, case-insensitively, dashes ignored.
    IdPrefix(String),
}

impl PeerFilter {
    /// Whether `origin` (the sender, or the peer a peer event is about) passes.
    pub fn matches(&self, origin: &Origin<'_>) -> bool {
        match self {
            PeerFilter::Name(name) => origin.name_unique && origin.name == name,
            PeerFilter::IdPrefix(prefix) => normalize_id(origin.id).starts_with(prefix.as_str()),
        }
    }
}

impl fmt::Display for PeerFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerFilter::Name(name) => write!(f, "@{name}"),
            PeerFilter::IdPrefix(prefix) => write!(f, "@[{prefix}]"),
        }
    }
}

fn normalize_id(id: &str) -> String {
    id.chars()
        .filter(|c| *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// One executable found in the handler directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerSpec {
    /// File to execute (absolute; inside the handler directory, symlinks not resolved).
    pub path: PathBuf,
    /// Path relative to the handler directory, '/'-separated, as found.
    pub rel: String,
    /// Dotted tag with the file's last extension removed.
    pub tag: String,
    /// Dotted tag keeping the extension (== `tag` when there is none).
    pub full_tag: String,
    /// Restriction to one peer, from a `@NAME` / `@[ID-PREFIX]` segment.
    pub peer: Option<PeerFilter>,
}

impl HandlerSpec {
    /// Builds a spec from its path relative to the handler directory, or says
    /// why the file cannot be a handler.
    pub fn from_rel(path: PathBuf, rel: &str) -> Result<Self, LayoutError> {
        let (tag, full_tag, peer) = derive(rel)?;
        Ok(HandlerSpec {
            path,
            rel: rel.to_owned(),
            tag,
            full_tag,
            peer,
        })
    }

    /// Whether this handler runs for the event `kind`/`tag` from `origin`
    /// (the sender of a message, the peer a peer event is about, `None` for
    /// daemon events).
    pub fn matches(&self, kind: EventKind, tag: &str, origin: Option<&Origin<'_>>) -> bool {
        let root = self.tag.split('.').next().unwrap_or_default();
        let in_scope = match kind {
            EventKind::Message => root != "daemon" && root != "peer",
            EventKind::Daemon => root == "daemon" && self.peer.is_none(),
            EventKind::Peer => root == "peer",
        };
        if !in_scope {
            return false;
        }
        if let Some(filter) = &self.peer {
            match origin {
                Some(o) if filter.matches(o) => {}
                _ => return false,
            }
        }
        self.tag == tag || self.full_tag == tag || self.is_catch_all(kind)
    }

    /// A bare `daemon` / `peer` file (any extension) gets every event of its
    /// kind. `daemon.start` is not a catch-all even though its "extension" is
    /// `start`: its full tag names a built-in event.
    fn is_catch_all(&self, kind: EventKind) -> bool {
        let builtins: &[&str] = match kind {
            EventKind::Message => return false,
            EventKind::Daemon => &DAEMON_EVENTS,
            EventKind::Peer => &PEER_EVENTS,
        };
        self.tag == kind.as_str() && !builtins.contains(&self.full_tag.as_str())
    }

    /// One line for `cnspr handlers`: what this handler runs for.
    pub fn describe(&self) -> String {
        let root = self.tag.split('.').next().unwrap_or_default();
        let mut out = if (root == "daemon" || root == "peer")
            && self.tag == root
            && !DAEMON_EVENTS.contains(&self.full_tag.as_str())
            && !PEER_EVENTS.contains(&self.full_tag.as_str())
        {
            format!("every {root} event")
        } else {
            let kind = match root {
                "daemon" => "daemon event",
                "peer" => "peer event",
                _ => "message",
            };
            let bare_root = self.tag == "daemon" || self.tag == "peer";
            if self.tag == self.full_tag || bare_root {
                // `daemon.start`: the bare root alone matches nothing.
                format!("{kind} {}", self.full_tag)
            } else {
                format!("{kind} {} or {}", self.tag, self.full_tag)
            }
        };
        if let Some(filter) = &self.peer {
            let who = if root == "peer" { "about" } else { "from" };
            out.push_str(&format!(", only {who} peer {filter}"));
        }
        out
    }
}

/// Segments collected from a relative path.
#[derive(Default)]
struct Parts {
    segs: Vec<String>,
    peer: Option<PeerFilter>,
}

impl Parts {
    /// A whole path component: `@...` and `#...` components are taken entire
    /// (so `@my.laptop/` and `#old v1.2/` work), others are split on '.'.
    fn component(&mut self, comp: &str) -> Result<(), LayoutError> {
        if comp.starts_with('@') || comp.starts_with('#') {
            return self.segment(comp);
        }
        comp.split('.').try_for_each(|s| self.segment(s))
    }

    fn segment(&mut self, seg: &str) -> Result<(), LayoutError> {
        if seg.starts_with('#') {
            return Ok(());
        }
        if let Some(spec) = seg.strip_prefix('@') {
            if self.peer.is_some() {
                return Err(LayoutError::TwoFilters);
            }
            self.peer = Some(parse_filter(spec)?);
            return Ok(());
        }
        self.segs.push(seg.to_owned());
        Ok(())
    }
}

/// Why a file in the handler directory gives no handler (shown as a warning).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("more than one @peer filter")]
    TwoFilters,
    #[error("peer filter `@{0}` lacks its closing ']'")]
    Unclosed(String),
    #[error("peer filter `@{0}` is not a device ID prefix (letters and digits, dashes allowed)")]
    NotAnIdPrefix(String),
    #[error("empty peer filter `@`")]
    EmptyFilter,
    #[error("its tag `{tag}` is invalid: {why}")]
    InvalidTag { tag: String, why: TagError },
}

fn parse_filter(spec: &str) -> Result<PeerFilter, LayoutError> {
    if let Some(inner) = spec.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| LayoutError::Unclosed(spec.to_owned()))?;
        let prefix = normalize_id(inner);
        if prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(LayoutError::NotAnIdPrefix(spec.to_owned()));
        }
        return Ok(PeerFilter::IdPrefix(prefix));
    }
    if spec.is_empty() {
        return Err(LayoutError::EmptyFilter);
    }
    Ok(PeerFilter::Name(spec.to_owned()))
}

/// `(tag, full_tag, filter)` for a relative path such as `a/@phone/b.c.sh`.
pub(crate) fn derive(rel: &str) -> Result<(String, String, Option<PeerFilter>), LayoutError> {
    let (dirs, file) = match rel.rsplit_once('/') {
        Some((dirs, file)) => (Some(dirs), file),
        None => (None, rel),
    };
    let mut parts = Parts::default();
    for comp in dirs.into_iter().flat_map(|d| d.split('/')) {
        parts.component(comp)?;
    }
    let (stem, ext) = match file.rfind('.') {
        Some(i) if i > 0 => (&file[..i], Some(&file[i + 1..])),
        _ => (file, None),
    };
    parts.component(stem)?;
    let tag = parts.segs.join(".");
    let before = parts.segs.len();
    if let Some(ext) = ext {
        parts.segment(ext)?;
    }
    let full_tag = if parts.segs.len() > before {
        parts.segs.join(".")
    } else {
        tag.clone()
    };
    validate_tag(&tag).map_err(|why| LayoutError::InvalidTag {
        tag: tag.clone(),
        why,
    })?;
    Ok((tag, full_tag, parts.peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(rel: &str) -> HandlerSpec {
        HandlerSpec::from_rel(PathBuf::from("/h").join(rel), rel).unwrap()
    }

    const ID: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567ABCDEFGHIJKLMNOPQRST";

    fn phone() -> Origin<'static> {
        Origin {
            name: "phone",
            id: ID,
            name_unique: true,
        }
    }

    #[test]
    fn derive_table() {
        let name = |n: &str| Some(PeerFilter::Name(n.to_owned()));
        let table: Vec<(&str, &str, &str, Option<PeerFilter>)> = vec![
            ("a/b/c", "a.b.c", "a.b.c", None),
            ("a/b/c.sh", "a.b.c", "a.b.c.sh", None),
            ("a/b.c.py", "a.b.c", "a.b.c.py", None),
            ("a.b.c", "a.b", "a.b.c", None),
            ("a.b/c", "a.b.c", "a.b.c", None),
            (
                "notify/@phone/x.sh",
                "notify.x",
                "notify.x.sh",
                name("phone"),
            ),
            (
                "notify/@my.laptop/x",
                "notify.x",
                "notify.x",
                name("my.laptop"),
            ),
            ("notify.@phone.sh", "notify", "notify.sh", name("phone")),
            ("notify.@phone", "notify", "notify", name("phone")),
            ("@phone/notify", "notify", "notify", name("phone")),
            (
                "x/@[abcd-efgh]/y",
                "x.y",
                "x.y",
                Some(PeerFilter::IdPrefix("ABCDEFGH".to_owned())),
            ),
            ("#old stuff v1.2/a/b.sh", "a.b", "a.b.sh", None),
            ("a/#note.sh", "a", "a.sh", None),
            ("a.#note.b", "a", "a.b", None),
            ("a/b.#c", "a.b", "a.b", None),
            ("daemon", "daemon", "daemon", None),
            ("daemon.sh", "daemon", "daemon.sh", None),
            ("daemon/start", "daemon.start", "daemon.start", None),
            ("daemon.start", "daemon", "daemon.start", None),
        ];
        for (rel, tag, full, peer) in table {
            assert_eq!(
                derive(rel),
                Ok((tag.to_owned(), full.to_owned(), peer)),
                "{rel}"
            );
        }
    }

    #[test]
    fn derive_refusals() {
        for rel in [
            "a b/c",
            "@phone/@tablet/x",
            "x/@/y",
            "x/@[]/y",
            "x/@[AB/y",
            "x/@[A*B]/y",
            "#only",
            "@phone.sh",
            "a..b",
            "caf\u{e9}",
        ] {
            assert!(derive(rel).is_err(), "{rel} should be refused");
        }
    }

    #[test]
    fn four_spec_layouts_match() {
        for rel in ["a/b/c", "a/b/c.sh", "a/b.c.py", "a.b.c"] {
            let s = spec(rel);
            assert!(
                s.matches(EventKind::Message, "a.b.c", Some(&phone())),
                "{rel}"
            );
            assert!(
                !s.matches(EventKind::Message, "a.b.x", Some(&phone())),
                "{rel}"
            );
            assert!(
                !s.matches(EventKind::Peer, "a.b.c", Some(&phone())),
                "{rel}"
            );
            assert!(!s.matches(EventKind::Daemon, "a.b.c", None), "{rel}");
        }
    }

    #[test]
    fn peer_filters() {
        let laptop = Origin {
            name: "laptop",
            id: "ZZZZ",
            name_unique: true,
        };
        let s = spec("notify/@phone/x");
        assert!(s.matches(EventKind::Message, "notify.x", Some(&phone())));
        assert!(!s.matches(EventKind::Message, "notify.x", Some(&laptop)));
        assert!(!s.matches(EventKind::Message, "notify.x", None));
        // A name two devices carry (one took the other's) matches no `@NAME`; an ID
        // prefix still tells them apart.
        let impostor = Origin {
            name_unique: false,
            ..phone()
        };
        assert!(!s.matches(EventKind::Message, "notify.x", Some(&impostor)));
        assert!(spec("notify/@[abcd]/x").matches(EventKind::Message, "notify.x", Some(&impostor)));
        for rel in [
            "x/@[abcd]",
            "x/@[AB-CD-E]",
            "x/@[abcdefghijklmnopqrstuvwxyz234567]",
        ] {
            let s = spec(rel);
            assert!(s.matches(EventKind::Message, "x", Some(&phone())), "{rel}");
            assert!(!s.matches(EventKind::Message, "x", Some(&laptop)), "{rel}");
        }
        // Dashes in the origin's ID are ignored too.
        let grouped = Origin {
            name: "p",
            id: "ABCDEFG-HIJKLMN",
            name_unique: true,
        };
        assert!(spec("x/@[abcdefgh]").matches(EventKind::Message, "x", Some(&grouped)));
        // Peer events filter on the peer concerned; daemon events never match.
        let s = spec("peer/@phone");
        assert!(s.matches(EventKind::Peer, "peer.seen", Some(&phone())));
        assert!(!s.matches(EventKind::Peer, "peer.seen", Some(&laptop)));
        let s = spec("daemon/@phone");
        assert!(!s.matches(EventKind::Daemon, "daemon.start", None));
        assert!(!s.matches(EventKind::Daemon, "daemon.start", Some(&phone())));
    }

    #[test]
    fn builtins() {
        for rel in ["daemon", "daemon.sh", "#all/daemon.py"] {
            let s = spec(rel);
            for tag in DAEMON_EVENTS {
                assert!(s.matches(EventKind::Daemon, tag, None), "{rel} {tag}");
            }
            assert!(!s.matches(EventKind::Peer, "peer.seen", Some(&phone())));
            assert!(!s.matches(EventKind::Message, "daemon", Some(&phone())));
        }
        for rel in ["peer", "peer.sh"] {
            let s = spec(rel);
            for tag in PEER_EVENTS {
                assert!(
                    s.matches(EventKind::Peer, tag, Some(&phone())),
                    "{rel} {tag}"
                );
            }
            assert!(!s.matches(EventKind::Daemon, "daemon.start", None));
        }
        for rel in ["daemon/start", "daemon/start.sh", "daemon.start"] {
            let s = spec(rel);
            assert!(s.matches(EventKind::Daemon, "daemon.start", None), "{rel}");
            assert!(!s.matches(EventKind::Daemon, "daemon.stop", None), "{rel}");
        }
        let s = spec("peer/joined.sh");
        assert!(s.matches(EventKind::Peer, "peer.joined", Some(&phone())));
        assert!(!s.matches(EventKind::Peer, "peer.seen", Some(&phone())));
        // A user message never runs a built-in handler, whatever its tag.
        assert!(!spec("daemon/start").matches(EventKind::Message, "daemon.start", Some(&phone())));
        assert!(!spec("peer/x").matches(EventKind::Message, "peer.x", Some(&phone())));
    }

    #[test]
    fn descriptions() {
        assert_eq!(spec("a/b/c.sh").describe(), "message a.b.c or a.b.c.sh");
        assert_eq!(
            spec("n.@phone.sh").describe(),
            "message n or n.sh, only from peer @phone"
        );
        assert_eq!(spec("daemon.sh").describe(), "every daemon event");
        assert_eq!(spec("daemon/stop").describe(), "daemon event daemon.stop");
        assert_eq!(spec("daemon.stop").describe(), "daemon event daemon.stop");
        assert_eq!(
            spec("peer/@phone").describe(),
            "every peer event, only about peer @phone"
        );
        assert_eq!(
            spec("n/@[ab-c]/x").describe(),
            "message n.x, only from peer @[ABC]"
        );
    }
}
