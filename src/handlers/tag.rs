//! Tag validation (docs/handlers.md): dot-separated segments of `[A-Za-z0-9_-]`.

/// Longest tag accepted, in bytes.
pub const MAX_TAG_LEN: usize = 255;

/// First segments reserved for built-in events; user messages may not use them.
pub const RESERVED_ROOTS: [&str; 2] = ["daemon", "peer"];

/// Why a tag was refused. Each message names the problem and what to do instead.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TagError {
    #[error("tag is empty; give dot-separated words such as `util.clipboard.set`")]
    Empty,
    #[error("tag is {len} bytes long; the limit is {MAX_TAG_LEN} bytes")]
    TooLong { len: usize },
    #[error("tag contains a control character (U+{code:04X}) at byte {pos}")]
    Control { code: u32, pos: usize },
    #[error("tag contains the non-ASCII character {ch:?} at byte {pos}; only A-Z a-z 0-9 _ - and . are allowed")]
    NonAscii { ch: char, pos: usize },
    #[error("tag contains '/' at byte {pos}; separate segments with '.' (e.g. `a.b.c`)")]
    Slash { pos: usize },
    #[error(
        "tag contains '@' at byte {pos}; '@' is only used in handler file names to filter by peer"
    )]
    At { pos: usize },
    #[error("tag contains '#' at byte {pos}; '#' is only used in handler file names for comments")]
    Hash { pos: usize },
    #[error(
        "tag contains the character {ch:?} at byte {pos}; only A-Z a-z 0-9 _ - and . are allowed"
    )]
    InvalidChar { ch: char, pos: usize },
    #[error("tag contains '..'; segments must not be empty")]
    DotDot,
    #[error("tag has an empty segment (it starts or ends with '.')")]
    EmptySegment,
    #[error("tag starts with the reserved segment `{segment}`, which is for built-in events; choose another first segment")]
    Reserved { segment: String },
}

/// Checks the tag syntax (docs/handlers.md). Tags of built-in events (`daemon.*`, `peer.*`)
/// pass; use [`validate_user_tag`] for tags that users send.
pub fn validate_tag(tag: &str) -> Result<(), TagError> {
    if tag.is_empty() {
        return Err(TagError::Empty);
    }
    for (pos, ch) in tag.char_indices() {
        match ch {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '_' | '-' | '.' => {}
            c if c.is_control() => {
                return Err(TagError::Control {
                    code: c as u32,
                    pos,
                })
            }
            c if !c.is_ascii() => return Err(TagError::NonAscii { ch: c, pos }),
            '/' => return Err(TagError::Slash { pos }),
            '@' => return Err(TagError::At { pos }),
            '#' => return Err(TagError::Hash { pos }),
            c => return Err(TagError::InvalidChar { ch: c, pos }),
        }
    }
    // Length after the character scan, so that a long tag full of junk reports
    // the junk, and the reported length is exact.
    if tag.len() > MAX_TAG_LEN {
        return Err(TagError::TooLong { len: tag.len() });
    }
    if tag.contains("..") {
        return Err(TagError::DotDot);
    }
    if tag.split('.').any(str::is_empty) {
        return Err(TagError::EmptySegment);
    }
    Ok(())
}

/// [`validate_tag`], and the first segment must not be `daemon` or `peer`.
pub fn validate_user_tag(tag: &str) -> Result<(), TagError> {
    validate_tag(tag)?;
    let first = tag.split('.').next().unwrap_or_default();
    if RESERVED_ROOTS.contains(&first) {
        return Err(TagError::Reserved {
            segment: first.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_tags() {
        for tag in [
            "a",
            "util.clipboard.set",
            "A-b_C.0-9",
            "x.y.z.w",
            "-",
            "_._",
            &"a".repeat(MAX_TAG_LEN),
            "daemon.start",
            "peer.status_changed",
        ] {
            assert_eq!(validate_tag(tag), Ok(()), "{tag:?}");
        }
        for tag in [
            "a",
            "util.clipboard.set",
            "daemonx.start",
            "peers",
            "x.daemon",
        ] {
            assert_eq!(validate_user_tag(tag), Ok(()), "{tag:?}");
        }
    }

    #[test]
    fn invalid_tags() {
        let long = "a".repeat(MAX_TAG_LEN + 1);
        let table: Vec<(&str, TagError)> = vec![
            ("", TagError::Empty),
            (&long, TagError::TooLong { len: 256 }),
            (".a", TagError::EmptySegment),
            ("a.", TagError::EmptySegment),
            (".", TagError::EmptySegment),
            ("a..b", TagError::DotDot),
            ("..", TagError::DotDot),
            ("a/b", TagError::Slash { pos: 1 }),
            ("a.@b", TagError::At { pos: 2 }),
            ("#a", TagError::Hash { pos: 0 }),
            ("a\nb", TagError::Control { code: 10, pos: 1 }),
            ("a\0", TagError::Control { code: 0, pos: 1 }),
            ("a\u{7f}", TagError::Control { code: 0x7f, pos: 1 }),
            ("caf\u{e9}", TagError::NonAscii { ch: 'é', pos: 3 }),
            ("a b", TagError::InvalidChar { ch: ' ', pos: 1 }),
            ("a:b", TagError::InvalidChar { ch: ':', pos: 1 }),
            ("a*", TagError::InvalidChar { ch: '*', pos: 1 }),
        ];
        for (tag, want) in table {
            assert_eq!(validate_tag(tag), Err(want.clone()), "{tag:?}");
            assert_eq!(validate_user_tag(tag), Err(want), "{tag:?}");
        }
    }

    #[test]
    fn reserved_first_segment() {
        for (tag, seg) in [
            ("daemon", "daemon"),
            ("daemon.start", "daemon"),
            ("peer", "peer"),
            ("peer.x.y", "peer"),
        ] {
            assert_eq!(validate_tag(tag), Ok(()));
            assert_eq!(
                validate_user_tag(tag),
                Err(TagError::Reserved {
                    segment: seg.to_owned()
                })
            );
        }
    }

    #[test]
    fn messages_are_clear() {
        let msg = validate_tag("a/b").unwrap_err().to_string();
        assert!(msg.contains("'/'") && msg.contains("'.'"), "{msg}");
        let msg = validate_user_tag("daemon.x").unwrap_err().to_string();
        assert!(msg.contains("reserved") && msg.contains("daemon"), "{msg}");
        let msg = validate_tag(&"a".repeat(300)).unwrap_err().to_string();
        assert!(msg.contains("300") && msg.contains("255"), "{msg}");
    }
}
