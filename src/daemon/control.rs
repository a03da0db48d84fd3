//! The control socket: newline-delimited JSON requests from the CLI and applications.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, info, warn};
use transport::DeviceId;

use super::messages::{new_message_id, send_one};
use super::peers::PeerState;
use super::{streams, Daemon};
use crate::api::{
    code, ErrorBody, HandlerInfo, HandlersResult, PingResult, Reply, Request, SendRequest,
    SendResult, Status, COMMANDS, MAX_BODY, MAX_LINE,
};
use crate::handlers;

/// Clients served at once; more wait in the kernel's backlog.
const MAX_CLIENTS: usize = 128;
/// Default wait for `send` and `ping`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait a request may ask for.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Binds the socket (mode 0600), refusing if another daemon answers there and replacing
/// a stale file left by a crashed one.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            anyhow::bail!(
                "{} exists and is not a socket; move it away or use --socket",
                path.display()
            );
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => anyhow::bail!(
                "another cnspr daemon is already running on {}; stop it with `cnspr stop` or use another --socket",
                path.display()
            ),
            Err(_) => {
                info!(socket = %path.display(), "removing the stale socket of a daemon that did not stop cleanly");
                std::fs::remove_file(path)?;
            }
        }
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub fn unbind(path: &Path) {
    let _ = std::fs::remove_file(path);
}

pub async fn run(d: Arc<Daemon>, listener: UnixListener) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                let d = d.clone();
                tokio::spawn(async move {
                    client(d, stream).await;
                    drop(permit);
                });
            }
            Err(e) => {
                warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

enum Line {
    Text(Vec<u8>),
    TooLong,
    Eof,
}

/// Reads one line of at most `max` bytes; a longer line is consumed and reported.
async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R, max: usize) -> std::io::Result<Line> {
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

/// Requests of one connection processed at once; further lines wait unread.
const MAX_INFLIGHT: usize = 256;

pub(super) fn line_of(v: &impl serde::Serialize) -> Vec<u8> {
    let mut line = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    line
}

/// Writes reply and event lines in order of completion, coalescing bursts; gives the
/// write half back once every sender is gone (raw stream mode takes it over then).
async fn write_lines(
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
    }
    Some(w)
}

static CONNECTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub(super) fn err(code_: &str, message: impl Into<String>) -> ErrorBody {
    ErrorBody::new(code_, message)
}

/// Serves one client. Requests run concurrently (up to [`MAX_INFLIGHT`]); each reply
/// carries its request's `id`, so replies may come back in a different order.
async fn client(d: Arc<Daemon>, stream: UnixStream) {
    let (r, w) = stream.into_split();
    let mut r = BufReader::with_capacity(256 * 1024, r);
    let (tx, rx) = mpsc::channel::<Vec<u8>>(1024);
    let writer = tokio::spawn(write_lines(w, rx));
    let inflight = Arc::new(Semaphore::new(MAX_INFLIGHT));
    let conn_id = CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    loop {
        let line = match read_line(&mut r, MAX_LINE).await {
            Ok(Line::Text(l)) => l,
            Ok(Line::TooLong) => {
                let e = err(
                    code::LINE_TOO_LONG,
                    format!("request line longer than {MAX_LINE} bytes"),
                );
                if tx.send(line_of(&Reply::err(Value::Null, e))).await.is_err() {
                    break;
                }
                continue;
            }
            Ok(Line::Eof) | Err(_) => break,
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let (id, req) = match parse(&line) {
            Ok(x) => x,
            Err((id, e)) => {
                if tx.send(line_of(&Reply::err(id, e))).await.is_err() {
                    break;
                }
                // A refused `send` line may still announce raw body bytes: skip them so
                // they are never read as requests (or close when they cannot be skipped).
                match announced_body(&line) {
                    Some(n) if n <= MAX_BODY as u64 => {
                        let mut sink = tokio::io::sink();
                        if tokio::io::copy(&mut (&mut r).take(n), &mut sink).await.ok() != Some(n) {
                            break;
                        }
                    }
                    Some(_) => break,
                    None => {}
                }
                continue;
            }
        };
        match req {
            Request::KvWatch { prefix, from_seq } => {
                super::kv::watch(&d, id, prefix.unwrap_or_default(), from_seq, r, tx.clone()).await;
                break;
            }
            Request::Subscribe { events } => {
                subscribe(&d, id, events, r, tx.clone()).await;
                break;
            }
            Request::Pair { timeout_s } => {
                super::trust::pair_window(&d, id, timeout_s, r, tx.clone()).await;
                break;
            }
            Request::Stop {} => {
                let _ = tx
                    .send(line_of(&Reply::ok(
                        id,
                        serde_json::json!({"stopping": true}),
                    )))
                    .await;
                drop(tx);
                d.request_stop();
                if let Ok(Some(mut w)) = writer.await {
                    let _ = w.shutdown().await;
                }
                return;
            }
            Request::Listen { service } => match d.streams.listen(&service, conn_id) {
                Ok(rx) => {
                    listen(id, &service, rx, r, tx.clone()).await;
                    d.streams.unlisten(&service, conn_id);
                    break;
                }
                Err(e) => {
                    if tx.send(line_of(&Reply::err(id, e))).await.is_err() {
                        break;
                    }
                    continue;
                }
            },
            Request::Connect { .. } | Request::Accept { .. } => {
                let opened = match &req {
                    Request::Connect {
                        peer,
                        service,
                        timeout_ms,
                    } => match d.peers().resolve(peer) {
                        Ok(pid) => Ok((
                            pid,
                            Instant::now() + timeout_of(*timeout_ms),
                            service.clone(),
                        )),
                        Err(e) => Err(e),
                    },
                    _ => Err(err(code::INTERNAL, "")),
                };
                let opened = match (&req, opened) {
                    (Request::Connect { .. }, Ok((pid, deadline, service))) => {
                        streams::open(&d, pid, &service, deadline).await
                    }
                    (Request::Connect { .. }, Err(e)) => Err(e),
                    (Request::Accept { stream }, _) => streams::accept(&d, stream).await,
                    _ => Err(err(code::INTERNAL, "request routed to the wrong handler")),
                };
                let (send, recv) = match opened {
                    Ok(x) => x,
                    Err(e) => {
                        if tx.send(line_of(&Reply::err(id, e))).await.is_err() {
                            break;
                        }
                        continue;
                    }
                };
                let token = super::services::new_token();
                let _ = tx
                    .send(line_of(&Reply::ok(
                        id,
                        serde_json::json!({"stream": token}),
                    )))
                    .await;
                drop(tx);
                // Raw mode: pending replies are flushed first, then bytes flow both ways.
                let Ok(Some(w)) = writer.await else {
                    return;
                };
                streams::run_local(&d, &token, r, w, send, recv).await;
                return;
            }
            req => {
                let body = match payload(&req) {
                    None => Bytes::new(),
                    Some(p) => match read_body(p, &mut r).await {
                        Ok(b) => b,
                        Err(BodyError::ReplyAndClose(e)) => {
                            let _ = tx.send(line_of(&Reply::err(id, e))).await;
                            break;
                        }
                        Err(BodyError::Reply(e)) => {
                            if tx.send(line_of(&Reply::err(id, e))).await.is_err() {
                                break;
                            }
                            continue;
                        }
                        Err(BodyError::Closed) => break,
                    },
                };
                let Ok(permit) = inflight.clone().acquire_owned().await else {
                    break;
                };
                let (d, tx) = (d.clone(), tx.clone());
                tokio::spawn(async move {
                    let res = match req {
                        Request::Send(s) => send(&d, s, body).await,
                        Request::KvPut { key, .. } => super::kv::put(&d, &key, body).await,
                        other => handle(&d, other).await,
                    };
                    let reply = match res {
                        Ok(v) => Reply::ok(id, v),
                        Err(e) => Reply::err(id, e),
                    };
                    let _ = tx.send(line_of(&reply)).await;
                    drop(permit);
                });
            }
        }
    }
    drop(tx);
    if let Ok(Some(mut w)) = writer.await {
        let _ = w.shutdown().await;
    }
}

/// Announces incoming streams for a listener until its connection closes.
async fn listen<R>(
    id: Value,
    service: &str,
    mut incoming: mpsc::Receiver<super::services::Announce>,
    mut r: R,
    tx: mpsc::Sender<Vec<u8>>,
) where
    R: AsyncBufRead + Unpin,
{
    if tx
        .send(line_of(&Reply::ok(
            id,
            serde_json::json!({"listening": service}),
        )))
        .await
        .is_err()
    {
        return;
    }
    let mut scratch = [0u8; 1024];
    loop {
        tokio::select! {
            a = incoming.recv() => match a {
                Some(a) => {
                    let ev = serde_json::json!({"event": "incoming", "stream": a.stream, "service": a.service, "peer": a.peer});
                    if tx.send(line_of(&ev)).await.is_err() {
                        return;
                    }
                }
                None => return,
            },
            n = r.read(&mut scratch) => {
                if matches!(n, Ok(0) | Err(_)) {
                    return;
                }
            }
        }
    }
}

fn parse(line: &[u8]) -> Result<(Value, Request), (Value, ErrorBody)> {
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
        _ => return Err((id, err(code::BAD_REQUEST, "missing string field \"cmd\""))),
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

enum BodyError {
    Reply(ErrorBody),
    /// The raw bytes that follow cannot be skipped: answer, then close the connection.
    ReplyAndClose(ErrorBody),
    Closed,
}

/// The `body_len` of a `send` line that failed to parse, if it had one.
fn announced_body(line: &[u8]) -> Option<u64> {
    let v: Value = serde_json::from_slice(line).ok()?;
    match v.get("cmd")?.as_str()? {
        "send" => v.get("body_len")?.as_u64(),
        "kv.put" => v.get("value_len")?.as_u64(),
        _ => None,
    }
}

/// A request's payload: as text, as base64, or as raw bytes following the line.
struct Payload<'a> {
    body: Option<&'a String>,
    body_b64: Option<&'a String>,
    body_len: Option<u64>,
}

/// The payload fields of the requests that carry one (`send`, `kv.put`).
fn payload(req: &Request) -> Option<Payload<'_>> {
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
        _ => None,
    }
}

async fn read_body<R: AsyncBufRead + Unpin>(s: Payload<'_>, r: &mut R) -> Result<Bytes, BodyError> {
    let given = [s.body.is_some(), s.body_b64.is_some(), s.body_len.is_some()];
    if given.iter().filter(|g| **g).count() > 1 {
        // Still consume a raw body so the connection stays in step.
        if let Some(n) = s.body_len.filter(|n| *n <= MAX_BODY as u64) {
            let mut sink = tokio::io::sink();
            let _ = tokio::io::copy(&mut r.take(n), &mut sink).await;
        }
        return Err(BodyError::Reply(err(
            code::BAD_REQUEST,
            "give only one of body, body_b64, body_len",
        )));
    }
    if let Some(n) = s.body_len {
        if n > MAX_BODY as u64 {
            // The raw bytes cannot be skipped safely at this size: close after answering.
            return Err(BodyError::ReplyAndClose(err(
                code::TOO_LARGE,
                format!("body of {n} bytes exceeds the limit of {MAX_BODY}"),
            )));
        }
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

fn timeout_of(ms: Option<u64>) -> Duration {
    ms.map(Duration::from_millis)
        .unwrap_or(DEFAULT_TIMEOUT)
        .min(MAX_TIMEOUT)
}

async fn send(d: &Arc<Daemon>, s: SendRequest, body: Bytes) -> Result<Value, ErrorBody> {
    handlers::validate_user_tag(&s.tag)
        .map_err(|e| err(code::INVALID_TAG, format!("invalid tag {:?}: {e}", s.tag)))?;
    let targets: Vec<DeviceId> = match (&s.peer, s.all) {
        (Some(_), true) => return Err(err(code::BAD_REQUEST, "give either peer or all, not both")),
        (None, false) => return Err(err(code::BAD_REQUEST, "missing peer (or all: true)")),
        (Some(p), false) => vec![d.peers().resolve(p)?],
        (None, true) => d.peers().peers.keys().copied().collect(),
    };
    let deadline = Instant::now() + timeout_of(s.timeout_ms);
    let message_id = new_message_id();
    let mut outcomes = Vec::new();
    if let [peer] = targets[..] {
        outcomes.push(send_one(d, peer, &message_id, &s.tag, body, s.reply, deadline).await);
    } else {
        let mut set = tokio::task::JoinSet::new();
        for peer in targets {
            let (d, id, tag, body) = (d.clone(), message_id.clone(), s.tag.clone(), body.clone());
            let reply = s.reply;
            set.spawn(async move { send_one(&d, peer, &id, &tag, body, reply, deadline).await });
        }
        while let Some(r) = set.join_next().await {
            match r {
                Ok(o) => outcomes.push(o),
                Err(e) => return Err(err(code::INTERNAL, e.to_string())),
            }
        }
    }
    outcomes.sort_by(|a, b| a.peer.cmp(&b.peer));
    if !s.all {
        if let Some(e) = outcomes.first().and_then(|o| o.error.clone()) {
            return Err(e);
        }
    }
    Ok(serde_json::to_value(SendResult {
        message_id,
        outcomes,
    })
    .unwrap_or(Value::Null))
}

async fn handle(d: &Arc<Daemon>, req: Request) -> Result<Value, ErrorBody> {
    let v = match req {
        Request::Status {} => {
            let table = d.peers();
            serde_json::to_value(Status {
                id: d.id().to_string(),
                name: d.identity.name.clone(),
                listen: d
                    .endpoint
                    .local_addrs()
                    .iter()
                    .map(|a| a.to_string())
                    .collect(),
                peers: table.peers.len(),
                active: table
                    .peers
                    .values()
                    .filter(|p| p.state == PeerState::Active)
                    .count(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                uptime_s: d.started.elapsed().as_secs(),
                pid: std::process::id(),
                state_dir: d.paths.state_dir.display().to_string(),
                socket: d.paths.socket.display().to_string(),
                handlers: d.handlers_dir.display().to_string(),
                gossip: crate::api::GossipCounters {
                    roster_sent: d.mesh.roster_sent.load(Ordering::Relaxed),
                    roster_received: d.mesh.roster_received.load(Ordering::Relaxed),
                },
                heartbeats: d.endpoint.twin().map(|t| crate::api::HeartbeatCounters {
                    sent: t.stats.sent.load(Ordering::Relaxed),
                    received: t.stats.received.load(Ordering::Relaxed),
                    rejected: t.stats.rejected.load(Ordering::Relaxed),
                }),
            })
        }
        Request::Peers {} => serde_json::to_value(d.peers().infos()),
        Request::Ping { peer, timeout_ms } => {
            let id = d.peers().resolve(&peer)?;
            serde_json::to_value(ping(d, id, timeout_of(timeout_ms)).await?)
        }
        Request::Handlers {} => {
            let set = handlers::scan(&d.handlers_dir);
            serde_json::to_value(HandlersResult {
                dir: d.handlers_dir.display().to_string(),
                handlers: set
                    .handlers
                    .iter()
                    .map(|h| HandlerInfo {
                        path: h.rel.clone(),
                        matches: h.describe(),
                        tag: h.tag.clone(),
                        full_tag: h.full_tag.clone(),
                        from: h.peer.as_ref().map(|p| match p {
                            handlers::PeerFilter::Name(n) => n.clone(),
                            handlers::PeerFilter::IdPrefix(p) => format!("[{p}]"),
                        }),
                    })
                    .collect(),
                warnings: set.warnings.clone(),
            })
        }
        Request::Trust {
            device,
            name,
            addrs,
        } => serde_json::to_value(super::trust::trust(d, &device, name, &addrs)?),
        Request::Remove { peer } => Ok(super::trust::remove(d, &peer)?),
        Request::PairJoin {
            code,
            addrs,
            timeout_s,
        } => {
            let mut resolved = Vec::new();
            for a in addrs.iter().take(super::peers::MAX_ADDRS) {
                resolved.extend(
                    crate::addr::resolve_addr(a)
                        .map_err(|e| err(code::INVALID_ADDRESS, e.to_string()))?,
                );
            }
            let timeout = Duration::from_secs(timeout_s.unwrap_or(30).clamp(1, 3600));
            let paired = super::pair::join(d, &code, resolved, timeout).await?;
            Ok(serde_json::json!({"paired": paired}))
        }
        Request::PairNearby {} => serde_json::to_value(super::pair::nearby(d)),
        Request::Expose { service, target } => {
            serde_json::to_value(d.streams.expose(&d.paths.state_dir, &service, &target)?)
        }
        Request::Unexpose { service } => {
            d.streams.unexpose(&d.paths.state_dir, &service)?;
            Ok(serde_json::json!({"unexposed": service}))
        }
        Request::Services {} => serde_json::to_value(d.streams.list()),
        Request::StreamStatus { stream, wait_ms } => {
            let until = Instant::now() + Duration::from_millis(wait_ms.unwrap_or(0).min(60_000));
            let status = loop {
                match d.streams.status(&stream) {
                    Some(s) => break s,
                    None if Instant::now() >= until => break "open".to_string(),
                    None => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            };
            Ok(serde_json::json!({"stream": stream, "status": status}))
        }
        Request::KvGet { key, all_versions } => Ok(super::kv::get(d, &key, all_versions)?),
        Request::KvDel { key } => Ok(super::kv::del(d, &key).await?),
        Request::KvList {
            prefix,
            after,
            limit,
        } => Ok(super::kv::list(
            d,
            &prefix.unwrap_or_default(),
            after,
            limit,
        )?),
        Request::Send(_)
        | Request::KvPut { .. }
        | Request::KvWatch { .. }
        | Request::Subscribe { .. }
        | Request::Pair { .. }
        | Request::Stop {}
        | Request::Listen { .. }
        | Request::Connect { .. }
        | Request::Accept { .. } => {
            return Err(err(code::INTERNAL, "request routed to the wrong handler"))
        }
    };
    v.map_err(|e| err(code::INTERNAL, e.to_string()))
}

async fn ping(d: &Arc<Daemon>, peer: DeviceId, timeout: Duration) -> Result<PingResult, ErrorBody> {
    let deadline = Instant::now() + timeout;
    let (rtt, via, pc) = super::messages::ping(d, peer, deadline).await?;
    let (name, via) = {
        let table = d.peers();
        let name = table
            .peers
            .get(&peer)
            .map(|p| p.name.clone())
            .unwrap_or_default();
        let via: Vec<String> = via
            .map(|v| {
                table
                    .peers
                    .get(&v)
                    .map_or_else(|| v.short(), |p| p.name.clone())
            })
            .into_iter()
            .collect();
        (name, via)
    };
    Ok(PingResult {
        peer: name,
        id: peer.to_string(),
        rtt_ms: (rtt.as_secs_f64() * 1e6).round() / 1e3,
        address: crate::addr::canon(pc.remote_address()).to_string(),
        via,
    })
}

async fn subscribe<R>(
    d: &Arc<Daemon>,
    id: Value,
    kinds: Vec<String>,
    mut r: R,
    tx: mpsc::Sender<Vec<u8>>,
) where
    R: AsyncBufRead + Unpin,
{
    for k in &kinds {
        if !["message", "peer", "daemon"].contains(&k.as_str()) {
            let e = err(
                code::BAD_REQUEST,
                format!("unknown event kind {k:?}; use message, peer or daemon"),
            );
            let _ = tx.send(line_of(&Reply::err(id, e))).await;
            return;
        }
    }
    let mut rx = d.events.subscribe();
    if tx
        .send(line_of(&Reply::ok(
            id,
            serde_json::json!({"subscribed": true}),
        )))
        .await
        .is_err()
    {
        return;
    }
    let mut scratch = [0u8; 1024];
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Ok(ev) => {
                    if (kinds.is_empty() || kinds.iter().any(|k| k == ev.kind())) && tx.send(line_of(&ev)).await.is_err() {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    debug!(missed = n, "subscriber lagging");
                    if tx.send(line_of(&serde_json::json!({"event": "lagged", "missed": n}))).await.is_err() {
                        return;
                    }
                }
                Err(_) => return,
            },
            n = r.read(&mut scratch) => {
                if matches!(n, Ok(0) | Err(_)) {
                    return;
                }
            }
        }
    }
}
