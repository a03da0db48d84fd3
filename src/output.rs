//! Human output: aligned tables and durations.

use std::time::{SystemTime, UNIX_EPOCH};

/// Renders rows under a header with columns aligned to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(c);
                l.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

/// "3s ago", "5m ago", "2h ago", "4d ago" for a unix time; "-" for none.
pub fn ago(unix: Option<u64>) -> String {
    let Some(t) = unix else {
        return "-".into();
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(t);
    let s = now.saturating_sub(t);
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

/// A name for a table cell: `-` when there is none (a removed device known by its ID).
pub fn name_or_dash(name: &str) -> String {
    if name.is_empty() {
        "-".into()
    } else {
        name.to_string()
    }
}

/// The first two groups of a grouped device ID.
/// How a peer is reached, in words: `direct`, or `relay via NAME` (a member, or a
/// `cnspr relay` at an address).
pub fn path_text(p: &crate::api::PathInfo) -> String {
    match (&p.via, p.kind.as_str()) {
        (Some(via), "relay") => format!("relay via {via} (cnspr relay)"),
        (Some(via), _) => format!("relay via {via}"),
        (None, kind) => kind.to_string(),
    }
}

pub fn short_id(id: &str) -> String {
    id.split('-').take(2).collect::<Vec<_>>().join("-")
}

/// Prints `v` as one line of JSON.
pub fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(v)?);
    Ok(())
}

/// Prints a failed command's error as `--json` gives it: `{"error": BODY}` on one line
/// (docs/api.md, "The CLI with `--json`").
pub fn print_error_json(body: &impl serde::Serialize) -> anyhow::Result<()> {
    print_json(&serde_json::json!({ "error": body }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let t = table(
            &["NAME", "STATE"],
            &[
                vec!["laptop".into(), "active".into()],
                vec!["a".into(), "left".into()],
            ],
        );
        assert_eq!(t, "NAME    STATE\nlaptop  active\na       left\n");
    }

    #[test]
    fn ages() {
        assert_eq!(ago(None), "-");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(ago(Some(now - 120)), "2m ago");
    }
}

/// A value as a person can read it: text as a quoted string (cut after 60 characters),
/// anything else as its size and the first bytes in hex.
pub fn value_preview(value: &[u8]) -> String {
    const TEXT: usize = 60;
    const HEX: usize = 16;
    match std::str::from_utf8(value) {
        Ok(s) if !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') => {
            let n = s.chars().count();
            if n <= TEXT {
                format!("{s:?}")
            } else {
                let head: String = s.chars().take(TEXT).collect();
                format!("{head:?}... ({} bytes)", value.len())
            }
        }
        _ => {
            let hex: String = value.iter().take(HEX).map(|b| format!("{b:02x}")).collect();
            let more = if value.len() > HEX { "..." } else { "" };
            format!("{} bytes of binary: {hex}{more}", value.len())
        }
    }
}

#[cfg(test)]
mod preview_tests {
    use super::value_preview;

    #[test]
    fn text_reads_as_text_and_binary_as_size_and_hex() {
        assert_eq!(value_preview(b"milk, eggs"), "\"milk, eggs\"");
        assert_eq!(value_preview(b"a\nb"), "\"a\\nb\"");
        let long = "x".repeat(100);
        assert_eq!(
            value_preview(long.as_bytes()),
            format!("\"{}\"... (100 bytes)", "x".repeat(60))
        );
        assert_eq!(value_preview(&[0, 1, 255]), "3 bytes of binary: 0001ff");
        assert_eq!(
            value_preview(&[0xAB; 20]),
            format!("20 bytes of binary: {}...", "ab".repeat(16))
        );
        assert_eq!(value_preview(b""), "\"\"");
    }
}
