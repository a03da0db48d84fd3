//! The typed clients' protocol, without I/O: one function builds each request and one
//! reads each reply, for the blocking and the async client alike; bounded line framing;
//! paging of `kv.list`; the events of `kv.watch` and `subscribe`.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::{Code, Request, SendRequest, MAX_BODY};
use crate::client::error::{Error, Result};
use crate::client::types::{
    BatchOp, Condition, Event, HandlersResult, KvBatch, KvChange, KvCounter, KvDeleted, KvEntry,
    KvPage, KvValue, KvVersion, KvWrite, Message, PeerInfo, PingResult, SendResult, ServiceInfo,
    Status,
};

/// Longest reply or event line the typed clients read by default (a `send` reply with
/// handlers' output, or a page of large values, can be tens of MiB).
pub const DEFAULT_MAX_REPLY: usize = 64 * 1024 * 1024;

/// Longest reply line read before a connection turns into a raw stream.
pub(crate) const MAX_STREAM_REPLY: usize = 64 * 1024;

/// Keys per `kv.list` request when paging.
pub(crate) const LIST_PAGE: usize = 256;

/// The socket the CLI would use: `CNSPR_SOCKET` when set, else the default path for
/// `CNSPR_STATE_DIR` (or the default state directory): see docs/api.md, "The socket".
pub fn default_socket() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    match env("CNSPR_SOCKET") {
        Some(s) => s,
        None => crate::paths::Paths::resolve(env("CNSPR_STATE_DIR"), None, None).socket,
    }
}

/// A connection attempt's failure, in words that say what to do.
pub(crate) fn connect_error(path: &Path, e: std::io::Error) -> Error {
    use std::io::ErrorKind::{ConnectionRefused, NotFound};
    match e.kind() {
        NotFound | ConnectionRefused => Error::NoDaemon {
            path: path.to_path_buf(),
        },
        _ => Error::Connect {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

/// One request: the line (without its `id`), the raw bytes that follow it, and how to
/// read the reply's result (or error).
pub(crate) struct Call<'a, T> {
    pub req: Value,
    pub body: Cow<'a, [u8]>,
    pub parse: fn(Result<Value>) -> Result<T>,
}

impl<T> Call<'static, T> {
    fn new(req: Request, parse: fn(Result<Value>) -> Result<T>) -> Self {
        Call {
            req: serde_json::to_value(req).unwrap_or(Value::Null),
            body: Cow::Borrowed(&[]),
            parse,
        }
    }
}

impl<T> Call<'_, T> {
    /// The request line with `id`, ended by `\n`.
    pub fn line(&self, id: u64) -> Result<Vec<u8>> {
        let mut req = self.req.clone();
        match &mut req {
            Value::Object(m) => {
                m.insert("id".into(), Value::from(id));
            }
            _ => return Err(Error::protocol("request is not an object")),
        }
        let mut line = serde_json::to_vec(&req).map_err(Error::protocol)?;
        line.push(b'\n');
        Ok(line)
    }
}

fn typed<T: DeserializeOwned>(r: Result<Value>) -> Result<T> {
    serde_json::from_value(r?).map_err(|e| Error::protocol(format!("unexpected reply: {e}")))
}

/// `not_found` is `None`.
fn optional<T: DeserializeOwned>(r: Result<Value>) -> Result<Option<T>> {
    match r {
        Err(Error::Api {
            code: Code::NotFound,
            ..
        }) => Ok(None),
        r => typed(r).map(Some),
    }
}

fn kv_value(r: Result<Value>) -> Result<Option<KvValue>> {
    let Some(v) = optional::<Value>(r)? else {
        return Ok(None);
    };
    let counter = v.get("counter").and_then(Value::as_bool) == Some(true);
    Ok(Some(if counter {
        KvValue::Counter(typed(Ok(v))?)
    } else {
        KvValue::Entry(typed(Ok(v))?)
    }))
}

/// A string field of the result (`watching`, `stream`, `status`).
fn field(name: &'static str) -> impl Fn(Result<Value>) -> Result<String> {
    move |r| {
        r?.get(name)
            .and_then(Value::as_str)
            .map(String::from)
            .ok_or_else(|| Error::protocol(format!("reply without `{name}`")))
    }
}

fn check_body(what: &str, body: &[u8]) -> Result<()> {
    if body.len() > MAX_BODY {
        return Err(Error::InvalidInput(format!(
            "{what} of {} bytes exceeds the socket's limit of {MAX_BODY}",
            body.len()
        )));
    }
    Ok(())
}

fn millis(t: Option<Duration>) -> Option<u64> {
    t.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
}

fn split(cond: Option<Condition>) -> (Option<String>, bool) {
    match cond {
        None => (None, false),
        Some(Condition::IfVersion(v)) => (Some(v), false),
        Some(Condition::IfAbsent) => (None, true),
    }
}

pub(crate) fn status() -> Call<'static, Status> {
    Call::new(Request::Status {}, typed)
}

pub(crate) fn peers() -> Call<'static, Vec<PeerInfo>> {
    Call::new(Request::Peers {}, typed)
}

pub(crate) fn ping(peer: &str, timeout: Option<Duration>) -> Call<'static, PingResult> {
    Call::new(
        Request::Ping {
            peer: peer.into(),
            timeout_ms: millis(timeout),
        },
        typed,
    )
}

pub(crate) fn send<'a>(m: &Message<'a>) -> Result<Call<'a, SendResult>> {
    check_body("the body", m.body)?;
    let req = Request::Send(SendRequest {
        peer: m.peer.map(String::from),
        all: m.peer.is_none(),
        tag: m.tag.into(),
        body_len: Some(m.body.len() as u64),
        reply: m.reply,
        timeout_ms: millis(m.timeout),
        ..Default::default()
    });
    Ok(Call {
        body: Cow::Borrowed(m.body),
        ..Call::new(req, typed)
    })
}

pub(crate) fn handlers() -> Call<'static, HandlersResult> {
    Call::new(Request::Handlers {}, typed)
}

pub(crate) fn services() -> Call<'static, Vec<ServiceInfo>> {
    Call::new(Request::Services {}, typed)
}

pub(crate) fn stream_status(stream: &str, wait: Option<Duration>) -> Call<'static, String> {
    Call::new(
        Request::StreamStatus {
            stream: stream.into(),
            wait_ms: millis(wait),
        },
        |r| field("status")(r),
    )
}

pub(crate) fn kv_put<'a>(
    key: &str,
    value: &'a [u8],
    cond: Option<Condition>,
) -> Result<Call<'a, KvWrite>> {
    check_body("the value", value)?;
    let (if_version, if_absent) = split(cond);
    let req = Request::KvPut {
        key: key.into(),
        value: None,
        value_b64: None,
        value_len: Some(value.len() as u64),
        if_version,
        if_absent,
    };
    Ok(Call {
        body: Cow::Borrowed(value),
        ..Call::new(req, typed)
    })
}

pub(crate) fn kv_get(key: &str, all_versions: bool) -> Call<'static, Option<KvValue>> {
    Call::new(
        Request::KvGet {
            key: key.into(),
            all_versions,
        },
        kv_value,
    )
}

pub(crate) fn kv_del(key: &str, cond: Option<Condition>) -> Call<'static, Option<KvDeleted>> {
    let (if_version, if_absent) = split(cond);
    Call::new(
        Request::KvDel {
            key: key.into(),
            if_version,
            if_absent,
        },
        optional,
    )
}

pub(crate) fn kv_list(prefix: &str, after: Option<&str>, limit: usize) -> Call<'static, KvPage> {
    Call::new(
        Request::KvList {
            prefix: Some(prefix.into()),
            after: after.map(String::from),
            limit: Some(limit),
        },
        typed,
    )
}

pub(crate) fn kv_incr(key: &str, by: i64) -> Call<'static, KvCounter> {
    Call::new(
        Request::KvIncr {
            key: key.into(),
            by: Some(by),
        },
        typed,
    )
}

/// `kv.batch`: the operations in one transaction; the values follow the line as raw
/// bytes, concatenated in the operations' order.
pub(crate) fn kv_batch(ops: &[BatchOp<'_>]) -> Result<Call<'static, KvBatch>> {
    let mut body = Vec::new();
    let mut list = Vec::with_capacity(ops.len());
    for op in ops {
        list.push(match op {
            BatchOp::Put { key, value, cond } => {
                body.extend_from_slice(value);
                let mut o = serde_json::json!({"op": "put", "key": key, "value_len": value.len()});
                match cond {
                    Some(Condition::IfVersion(v)) => o["if_version"] = Value::from(v.as_str()),
                    Some(Condition::IfAbsent) => o["if_absent"] = Value::from(true),
                    None => {}
                }
                o
            }
            BatchOp::Del { key, if_version } => {
                let mut o = serde_json::json!({"op": "del", "key": key});
                if let Some(v) = if_version {
                    o["if_version"] = Value::from(v.as_str());
                }
                o
            }
        });
    }
    check_body("the batch's values", &body)?;
    Ok(Call {
        req: serde_json::json!({"cmd": "kv.batch", "ops": list}),
        body: Cow::Owned(body),
        parse: typed,
    })
}

/// Answered with the prefix watched; events follow.
pub(crate) fn kv_watch(prefix: &str, from_seq: Option<u64>) -> Call<'static, String> {
    Call::new(
        Request::KvWatch {
            prefix: Some(prefix.into()),
            from_seq,
        },
        |r| field("watching")(r),
    )
}

/// Answered with `{"subscribed": true}`; events follow.
pub(crate) fn subscribe(kinds: &[&str]) -> Call<'static, ()> {
    Call::new(
        Request::Subscribe {
            events: kinds.iter().map(|k| k.to_string()).collect(),
        },
        |r| r.map(drop),
    )
}

/// Answered with the stream's token; the connection is raw bytes from then on.
pub(crate) fn connect(
    peer: &str,
    service: &str,
    timeout: Option<Duration>,
) -> Call<'static, String> {
    Call::new(
        Request::Connect {
            peer: peer.into(),
            service: service.into(),
            timeout_ms: millis(timeout),
            fds: false,
        },
        |r| field("stream")(r),
    )
}

/// A reply line's outcome when it answers request `id` (a reply with a `null` id is an
/// error about a line the daemon could not read, which can only be ours); `None` for
/// other lines (replies to other requests, events).
pub(crate) fn reply_to(line: &[u8], id: u64) -> Option<Result<Value>> {
    let v: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => return Some(Err(Error::protocol(format!("malformed reply: {e}")))),
    };
    // Events and other lines have no `ok`.
    let ok = v.get("ok")?.as_bool() == Some(true);
    let mine = v.get("id").and_then(Value::as_u64) == Some(id)
        || (!ok && v.get("id").is_none_or(Value::is_null));
    if !mine {
        return None;
    }
    if ok {
        return Some(Ok(v.get("result").cloned().unwrap_or(Value::Null)));
    }
    Some(Err(api_error(v.get("error").unwrap_or(&Value::Null))))
}

/// An `error` object as [`Error::Api`].
fn api_error(e: &Value) -> Error {
    let code_name = e
        .get("code")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string();
    Error::Api {
        code: Code::from(code_name.as_str()),
        code_name,
        message: e
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("the daemon reported an error without a message")
            .to_string(),
        current: e
            .get("current")
            .and_then(|c| serde_json::from_value::<Vec<KvVersion>>(c.clone()).ok())
            .unwrap_or_default(),
    }
}

fn event_of(line: &[u8]) -> Result<Option<(String, Value)>> {
    let v: Value = serde_json::from_slice(line)
        .map_err(|e| Error::protocol(format!("malformed event: {e}")))?;
    Ok(v.get("event")
        .and_then(Value::as_str)
        .map(String::from)
        .map(|k| (k, v)))
}

/// A `kv.watch` line: a change, the feed's error (a `store` error: e.g. `from_seq` is
/// older than the feed keeps), or `None` for a line that is no change.
pub(crate) fn watch_line(line: &[u8]) -> Result<Option<KvChange>> {
    match event_of(line)? {
        Some((k, v)) if k == "kv" => typed(Ok(v)).map(Some),
        Some((k, v)) if k == "error" => Err(Error::Api {
            code: Code::Store,
            code_name: Code::Store.as_str().into(),
            message: v["message"].as_str().unwrap_or("the feed failed").into(),
            current: Vec::new(),
        }),
        _ => Ok(None),
    }
}

/// A `subscribe` line: an event, or `None` for a line that is none (a late reply).
pub(crate) fn event_line(line: &[u8]) -> Result<Option<Event>> {
    let Some((kind, v)) = event_of(line)? else {
        return Ok(None);
    };
    Ok(Some(match kind.as_str() {
        "message" => Event::Message(typed(Ok(v))?),
        "peer" => Event::Peer(typed(Ok(v))?),
        "daemon" => Event::Daemon(typed(Ok(v))?),
        "lagged" => Event::Lagged {
            missed: v["missed"].as_u64().unwrap_or(0),
        },
        _ => Event::Other(v),
    }))
}

/// Bounded line framing: bytes go in as the reader has them, lines come out. A line
/// over the limit is read to its end and dropped, then reported, so the connection
/// stays in step. Kept by the connection, so a read that is cut short (an async call
/// whose future is dropped) resumes where it stopped.
#[derive(Debug)]
pub(crate) struct Lines {
    buf: Vec<u8>,
    too_long: bool,
    pub max: usize,
}

impl Lines {
    pub fn new(max: usize) -> Self {
        Lines {
            buf: Vec::new(),
            too_long: false,
            max,
        }
    }

    /// Takes bytes up to the first `\n`; returns how many were used and whether a line
    /// is complete (then call [`Lines::take`]).
    pub fn feed(&mut self, avail: &[u8]) -> (usize, bool) {
        let (chunk, used, done) = match avail.iter().position(|b| *b == b'\n') {
            Some(i) => (&avail[..i], i + 1, true),
            None => (avail, avail.len(), false),
        };
        if !self.too_long {
            if self.buf.len() + chunk.len() > self.max {
                self.too_long = true;
                self.buf = Vec::new();
            } else {
                self.buf.extend_from_slice(chunk);
            }
        }
        (used, done)
    }

    /// The completed line.
    pub fn take(&mut self) -> Result<Vec<u8>> {
        if std::mem::take(&mut self.too_long) {
            return Err(Error::protocol(format!(
                "a line from the daemon is longer than {} bytes (raise the limit with \
                 set_max_reply)",
                self.max
            )));
        }
        Ok(std::mem::take(&mut self.buf))
    }

    /// At end of stream: the last line if it had no `\n`, or `None`.
    pub fn eof(&mut self) -> Result<Option<Vec<u8>>> {
        if self.buf.is_empty() && !self.too_long {
            return Ok(None);
        }
        self.take().map(Some)
    }
}

/// The error for a connection that closed before answering.
pub(crate) fn closed() -> Error {
    Error::protocol("the daemon closed the connection without answering")
}

/// `kv.list` paging: the entries of the page read last, and where the next one starts.
#[derive(Debug)]
pub(crate) struct Pager {
    prefix: String,
    after: Option<String>,
    limit: usize,
    page: VecDeque<KvEntry>,
    done: bool,
}

impl Pager {
    pub fn new(prefix: &str, limit: usize) -> Self {
        Pager {
            prefix: prefix.into(),
            after: None,
            limit: limit.max(1),
            page: VecDeque::new(),
            done: false,
        }
    }

    pub fn pop(&mut self) -> Option<KvEntry> {
        self.page.pop_front()
    }

    /// The request for the next page; `None` after the last one (or an error).
    pub fn next_call(&self) -> Option<Call<'static, KvPage>> {
        (!self.done).then(|| kv_list(&self.prefix, self.after.as_deref(), self.limit))
    }

    pub fn feed(&mut self, r: Result<KvPage>) -> Result<()> {
        match r {
            Ok(p) => {
                self.done = !p.more || p.entries.is_empty();
                if let Some(last) = p.entries.last() {
                    self.after = Some(last.key.clone());
                }
                self.page.extend(p.entries);
                Ok(())
            }
            Err(e) => {
                self.done = true;
                Err(e)
            }
        }
    }
}
