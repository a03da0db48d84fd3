//! Line framing of the control socket: bounded request lines, reply lines, error
//! replies, and the payload that follows a request (inline, base64 or raw bytes).

use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::mpsc;

use crate::api::{code, Code, ErrorBody, Request, COMMANDS, MAX_BODY};

/// Default wait for `send` and `ping`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait a request may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

pub enum Line {
    Text(Vec<u8>),
    TooLong,
    Eof,
}

/// Reads one line of at most `max` bytes; a longer line is consumed and reported.
pub async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R, max: usize) -> std::io::Result<Line> {
    let mut out = Vec::new();
    let mut too_long = false;
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(if too_long {
                Line::TooLong
            } else if out.is_empty() {
                Line::Eof
            } else {
                Line::Text(out)
            });
        }
        let (chunk, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        if !too_long {
            if out.len() + chunk.len() > max {
                too_long = true;
                out = Vec::new();
            } else {
                out.extend_from_slice(chunk);
            }
        }
        let used = done.unwrap_or(buf.len());
        r.consume(used);
        if done.is_some() {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Text(out)
            });
        }
    }
}

pub fn line_of(v: &impl serde::Serialize) -> Vec<u8> {
    let mut line = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    line
}

/// Most of the write buffer a connection keeps while nothing waits to be written.
const IDLE_WRITE_BUF: usize = 16 * 1024;

/// Writes reply and event lines in order of completion, coalescing bursts; gives the
/// write half back once every sender is gone (raw stream mode takes it over then).
pub async fn write_lines(
    mut w: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Vec<u8>>,
) -> Option<OwnedWriteHalf> {
    let mut buf = Vec::new();
    while let Some(first) = rx.recv().await {
        buf.clear();
        buf.extend_from_slice(&first);
        while buf.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok(l) => buf.extend_from_slice(&l),
                Err(_) => break,
            }
        }
        if w.write_all(&buf).await.is_err() {
            return None;
        }
        // A burst grew the buffer; an idle connection (a subscriber that stays for days)
        // does not keep it.
        if rx.is_empty() && buf.capacity() > IDLE_WRITE_BUF {
            buf.clear();
            buf.shrink_to(IDLE_WRITE_BUF);
        }
    }
    Some(w)
}

pub fn err(code_: Code, message: impl Into<String>) -> ErrorBody {
    ErrorBody::new(code_, message)
}

pub fn parse(line: &[u8]) -> Result<(Value, Request), (Value, ErrorBody)> {
    let value: Value = serde_json::from_slice(line).map_err(|e| {
        (
            Value::Null,
            err(code::BAD_JSON, format!("malformed JSON: {e}")),
        )
    })?;
    let Value::Object(mut map) = value else {
        return Err((
            Value::Null,
            err(code::BAD_REQUEST, "a request is a JSON object"),
        ));
    };
    let id = map.remove("id").unwrap_or(Value::Null);
    let cmd = match map.get("cmd") {
        Some(Value::String(c)) => c.clone(),
        Some(other) => {
            let kind = match other {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                Value::Array(_) => "an array",
                _ => "an object",
            };
            let why = format!("field \"cmd\" must be a string (the command's name), not {kind}");
            return Err((id, err(code::BAD_REQUEST, why)));
        }
        None => return Err((id, err(code::BAD_REQUEST, "missing string field \"cmd\""))),
    };
    if !COMMANDS.contains(&cmd.as_str()) {
        return Err((
            id,
            err(
                code::UNKNOWN_COMMAND,
                format!("unknown command {cmd:?}; known: {}", COMMANDS.join(", ")),
            ),
        ));
    }
    match serde_json::from_value::<Request>(Value::Object(map)) {
        Ok(r) => Ok((id, r)),
        Err(e) => Err((id, err(code::BAD_REQUEST, format!("{cmd}: {e}")))),
    }
}

#[derive(Debug)]
pub enum BodyError {
    Reply(ErrorBody),
    /// The raw bytes that follow cannot be skipped: answer, then close the connection.
    ReplyAndClose(ErrorBody),
    Closed,
}

/// The `body_len` of a `send` line that failed to parse, if it had one.
pub fn announced_body(line: &[u8]) -> Option<u64> {
    let v: Value = serde_json::from_slice(line).ok()?;
    match v.get("cmd")?.as_str()? {
        "send" => v.get("body_len")?.as_u64(),
        "kv.put" => v.get("value_len")?.as_u64(),
        "kv.batch" => v.get("ops")?.as_array()?.iter().try_fold(0u64, |sum, op| {
            sum.checked_add(op.get("value_len").and_then(Value::as_u64).unwrap_or(0))
        }),
        _ => None,
    }
}

/// After a refused line: skips the raw body bytes it announced ([`announced_body`]), so
/// they are never read as requests. False when they cannot be skipped (over
/// [`MAX_BODY`], or the connection ended): the connection is then to be closed.
pub async fn skip_announced<R: AsyncRead + Unpin>(line: &[u8], r: &mut R) -> bool {
    match announced_body(line) {
        Some(n) if n <= MAX_BODY as u64 => {
            let mut sink = tokio::io::sink();
            tokio::io::copy(&mut r.take(n), &mut sink).await.ok() == Some(n)
        }
        Some(_) => false,
        None => true,
    }
}

/// A request's payload: as text, as base64, or as raw bytes following the line.
pub struct Payload<'a> {
    pub body: Option<&'a String>,
    pub body_b64: Option<&'a String>,
    pub body_len: Option<u64>,
}

/// The payload fields of the requests that carry one (`send`, `kv.put`).
pub fn payload(req: &Request) -> Option<Payload<'_>> {
    match req {
        Request::Send(s) => Some(Payload {
            body: s.body.as_ref(),
            body_b64: s.body_b64.as_ref(),
            body_len: s.body_len,
        }),
        Request::KvPut {
            value,
            value_b64,
            value_len,
            ..
        } => Some(Payload {
            body: value.as_ref(),
            body_b64: value_b64.as_ref(),
            body_len: *value_len,
        }),
        Request::KvBatch { ops } => {
            let total = ops
                .iter()
                .try_fold(0u64, |sum, op| sum.checked_add(op.value_len()))
                .unwrap_or(u64::MAX);
            Some(Payload {
                body: None,
                body_b64: None,
                body_len: (total > 0).then_some(total),
            })
        }
        _ => None,
    }
}

pub async fn read_body<R: AsyncBufRead + Unpin>(
    s: Payload<'_>,
    r: &mut R,
) -> Result<Bytes, BodyError> {
    if let Some(n) = s.body_len.filter(|n| *n > MAX_BODY as u64) {
        // The raw bytes cannot be skipped safely at this size: close after answering
        // (first, whatever else the line says, or the bytes would be read as requests).
        return Err(BodyError::ReplyAndClose(err(
            code::TOO_LARGE,
            format!("body of {n} bytes exceeds the limit of {MAX_BODY}"),
        )));
    }
    let given = [s.body.is_some(), s.body_b64.is_some(), s.body_len.is_some()];
    if given.iter().filter(|g| **g).count() > 1 {
        // Still consume a raw body so the connection stays in step.
        if let Some(n) = s.body_len {
            let mut sink = tokio::io::sink();
            let _ = tokio::io::copy(&mut r.take(n), &mut sink).await;
        }
        return Err(BodyError::Reply(err(
            code::BAD_REQUEST,
            "give only one of body, body_b64, body_len",
        )));
    }
    if let Some(n) = s.body_len {
        let mut buf = vec![0u8; n as usize];
        r.read_exact(&mut buf)
            .await
            .map_err(|_| BodyError::Closed)?;
        return Ok(Bytes::from(buf));
    }
    if let Some(b64) = &s.body_b64 {
        let v = data_encoding::BASE64.decode(b64.as_bytes()).map_err(|e| {
            BodyError::Reply(err(
                code::BAD_REQUEST,
                format!("body_b64 is not base64: {e}"),
            ))
        })?;
        return Ok(Bytes::from(v));
    }
    Ok(Bytes::from(
        s.body.cloned().unwrap_or_default().into_bytes(),
    ))
}

pub fn timeout_of(ms: Option<u64>) -> Duration {
    ms.map(Duration::from_millis)
        .unwrap_or(DEFAULT_TIMEOUT)
        .min(MAX_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_line() -> &'static [u8] {
        b"{\"id\":2,\"cmd\":\"status\"}\n"
    }

    /// A raw body too large to skip closes the connection even when the line also has
    /// another payload field: the bytes after it are never read as requests.
    #[tokio::test]
    async fn an_oversized_body_len_closes_the_connection_whatever_else_the_line_says() {
        let text = "a".to_string();
        for (body, b64) in [(None, None), (Some(&text), None), (None, Some(&text))] {
            let p = Payload {
                body,
                body_b64: b64,
                body_len: Some(MAX_BODY as u64 + 1),
            };
            let mut r = tokio::io::BufReader::new(status_line());
            let got = read_body(p, &mut r).await;
            assert!(matches!(got, Err(BodyError::ReplyAndClose(_))), "{got:?}");
        }
    }

    /// Two payload fields with a raw body within the limit: refused, and the raw bytes
    /// skipped, so the next line is the next request.
    #[tokio::test]
    async fn two_payload_fields_are_refused_and_the_raw_body_skipped() {
        let text = "a".to_string();
        let p = Payload {
            body: Some(&text),
            body_b64: None,
            body_len: Some(3),
        };
        let input = [b"xyz".as_slice(), status_line()].concat();
        let mut r = tokio::io::BufReader::new(input.as_slice());
        let got = read_body(p, &mut r).await;
        assert!(matches!(got, Err(BodyError::Reply(_))), "{got:?}");
        let mut next = String::new();
        r.read_line(&mut next).await.unwrap();
        assert_eq!(next.as_bytes(), status_line());
    }
}
