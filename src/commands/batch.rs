//! `cnspr kv batch [FILE]`: several puts and deletes, all or nothing. One operation per
//! line (docs/store.md, "Batches"):
//!
//! ```text
//! put KEY VALUE          VALUE is the rest of the line, as text
//! put-b64 KEY BASE64     a binary value
//! del KEY
//! {"op": "put", "key": "a b", "value_b64": "AAE=", "if_absent": true}
//! ```
//!
//! Blank lines and lines starting with `#` are skipped. A JSON line is an operation as the
//! socket takes it (keys with spaces, conditions).

use std::io::Read;

use anyhow::{bail, Context};

use crate::api::{BatchOpRequest, Request};
use crate::store::{MAX_BATCH_BYTES, MAX_BATCH_OPS};

/// Most bytes of batch text read (values as base64 and JSON take more than their size).
const MAX_INPUT: u64 = 2 * MAX_BATCH_BYTES as u64 + 1024 * 1024;

/// An operation read from the input, its value apart (sent raw after the request line).
#[derive(Debug, PartialEq, Eq)]
pub struct ParsedOp {
    pub op: BatchOpRequest,
    pub value: Vec<u8>,
}

fn b64(s: &str, line: usize) -> anyhow::Result<Vec<u8>> {
    data_encoding::BASE64
        .decode(s.trim().as_bytes())
        .with_context(|| format!("line {line}: the value is not base64"))
}

fn put(key: String, value: Vec<u8>, if_version: Option<String>, if_absent: bool) -> ParsedOp {
    ParsedOp {
        op: BatchOpRequest::Put {
            key,
            value: None,
            value_b64: None,
            value_len: Some(value.len() as u64),
            if_version,
            if_absent,
        },
        value,
    }
}

/// Parses batch text into operations (pure; every error names its line).
pub fn parse(text: &str) -> anyhow::Result<Vec<ParsedOp>> {
    let mut ops = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if ops.len() == MAX_BATCH_OPS {
            bail!("line {n}: a batch holds at most {MAX_BATCH_OPS} operations");
        }
        if line.trim_start().starts_with('{') {
            let op: BatchOpRequest = serde_json::from_str(line)
                .with_context(|| format!("line {n}: not a batch operation"))?;
            ops.push(match op {
                BatchOpRequest::Put {
                    key,
                    value,
                    value_b64,
                    value_len: None,
                    if_version,
                    if_absent,
                } => {
                    let bytes = match (value, value_b64) {
                        (Some(v), None) => v.into_bytes(),
                        (None, Some(b)) => b64(&b, n)?,
                        _ => bail!("line {n}: a put gives one of \"value\", \"value_b64\""),
                    };
                    put(key, bytes, if_version, if_absent)
                }
                BatchOpRequest::Put { .. } => {
                    bail!("line {n}: give \"value\" or \"value_b64\", not \"value_len\"")
                }
                del @ BatchOpRequest::Del { .. } => ParsedOp {
                    op: del,
                    value: Vec::new(),
                },
            });
            continue;
        }
        let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
        let (key, value) = match rest.split_once(' ') {
            Some((k, v)) => (k, Some(v)),
            None => (rest, None),
        };
        if key.is_empty() {
            bail!("line {n}: {verb:?} needs a KEY");
        }
        ops.push(match (verb, value) {
            ("put", Some(v)) => put(key.into(), v.as_bytes().to_vec(), None, false),
            ("put-b64", Some(v)) => put(key.into(), b64(v, n)?, None, false),
            ("del", None) => ParsedOp {
                op: BatchOpRequest::Del {
                    key: key.into(),
                    if_version: None,
                    if_absent: false,
                },
                value: Vec::new(),
            },
            ("put" | "put-b64", None) => bail!("line {n}: {verb} needs KEY and VALUE"),
            ("del", Some(_)) => {
                bail!("line {n}: del takes only a KEY (a key with spaces needs a JSON line)")
            }
            _ => bail!(
                "line {n}: unknown operation {verb:?}; use put KEY VALUE, put-b64 KEY BASE64, \
                 del KEY, or a JSON object"
            ),
        });
    }
    if ops.is_empty() {
        bail!("the batch holds no operation");
    }
    Ok(ops)
}

/// Reads the batch text from `file` (or standard input for `None` or `-`), bounded.
pub fn read_input(file: Option<&str>) -> anyhow::Result<String> {
    let mut buf = Vec::new();
    match file {
        None | Some("-") => {
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprintln!(
                    "reading the batch from standard input, one operation per line (Ctrl-D to end)"
                );
            }
            std::io::stdin()
                .lock()
                .take(MAX_INPUT + 1)
                .read_to_end(&mut buf)
                .context("reading the batch from standard input")?;
        }
        Some(path) => {
            std::fs::File::open(path)
                .with_context(|| format!("cannot open {path}"))?
                .take(MAX_INPUT + 1)
                .read_to_end(&mut buf)
                .with_context(|| format!("reading {path}"))?;
        }
    }
    if buf.len() as u64 > MAX_INPUT {
        bail!("the batch text is over {MAX_INPUT} bytes; a batch holds at most 8 MiB of keys and values");
    }
    String::from_utf8(buf).context("the batch text is not UTF-8 (binary values go as put-b64)")
}

/// The request and its raw body.
pub fn request(ops: Vec<ParsedOp>) -> (Request, Vec<u8>) {
    let mut body = Vec::new();
    let mut reqs = Vec::with_capacity(ops.len());
    for p in ops {
        body.extend_from_slice(&p.value);
        reqs.push(p.op);
    }
    (Request::KvBatch { ops: reqs }, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_parses_and_errors_name_their_line() {
        let text = "# a comment\n\nput a hello world\nput-b64 b AAH/\ndel c\n\
                    {\"op\":\"put\",\"key\":\"d e\",\"value\":\"x\",\"if_absent\":true}\n\
                    {\"op\":\"del\",\"key\":\"f\",\"if_version\":\"v\"}\r\nput g \n";
        let ops = parse(text).unwrap();
        assert_eq!(ops.len(), 6);
        assert_eq!(ops[0].value, b"hello world");
        assert_eq!(ops[1].value, [0u8, 1, 255]);
        assert!(matches!(&ops[2].op, BatchOpRequest::Del { key, .. } if key == "c"));
        assert!(
            matches!(&ops[3].op, BatchOpRequest::Put { key, if_absent: true, value_len: Some(1), .. } if key == "d e")
        );
        assert!(matches!(&ops[4].op, BatchOpRequest::Del { if_version: Some(v), .. } if v == "v"));
        assert_eq!(ops[5].value, b"");
        let (req, body) = request(ops);
        assert_eq!(body, b"hello world\x00\x01\xffx");
        let Request::KvBatch { ops } = req else {
            panic!("not a batch")
        };
        assert_eq!(ops.len(), 6);

        for (bad, want) in [
            ("put a\n", "line 1: put needs KEY and VALUE"),
            ("put a b\nfrob x\n", "line 2: unknown operation"),
            ("del a b\n", "line 1: del takes only a KEY"),
            ("put-b64 a !!\n", "line 1: the value is not base64"),
            (
                "{\"op\":\"put\",\"key\":\"a\",\"value_len\":3}\n",
                "line 1: give",
            ),
            ("{\"op\":\"bump\"}\n", "line 1: not a batch operation"),
            ("# only a comment\n", "no operation"),
        ] {
            let e = format!("{:#}", parse(bad).unwrap_err());
            assert!(e.contains(want), "{bad:?}: {e}");
        }
        let many = "del k\n".repeat(MAX_BATCH_OPS + 1);
        assert!(format!("{:#}", parse(&many).unwrap_err()).contains("at most 1000"));
    }
}
