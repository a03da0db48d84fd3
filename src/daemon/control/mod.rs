//! The control socket: newline-delimited JSON requests from the CLI and applications.
//!
//! This file is the server: it binds the socket, accepts clients (at most
//! [`MAX_CLIENTS`] at once), reads their request lines and routes each request to its
//! command (`cmd/`). Line framing and error replies are in `framing.rs`.

pub(crate) mod cmd;
mod framing;

use framing::{
    err, line_of, parse, payload, read_body, read_line, skip_announced, timeout_of, write_lines,
    BodyError, Line,
};

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

use super::context::Daemon;
use super::streams;
use crate::api::{code, Reply, Request, MAX_BODY, MAX_LINE};

/// Clients served at once; one more waits up to [`BUSY_WAIT`] for a free slot, then is
/// served from [`RESERVE`] or answered `busy`.
const MAX_CLIENTS: usize = 128;
/// Slots beyond [`MAX_CLIENTS`] for clients that found them all taken: each is served
/// requests answered once (`status`, `peers`, `remove`, `send`, `kv.get`, `stop`, ...)
/// for [`RESERVE_WAIT`], each answered within [`RESERVE_ANSWER`], then closed; a request
/// that lasts (`subscribe`, `kv.watch`, `pair`, `listen`, `connect`, `accept`) is
/// answered `busy`. So a person can still look and act when streams and monitors hold
/// every slot (a member holds at most 32 streams to listeners: four stolen members
/// together could fill the 128).
const RESERVE: usize = 8;
/// How long a client served from the reserve may send requests (bodies included).
const RESERVE_WAIT: Duration = Duration::from_secs(10);
/// How long a request of a client served from the reserve may take to be answered (a
/// `send` or `ping` to a device that is away answers `timeout` then).
const RESERVE_ANSWER: Duration = Duration::from_secs(30);
/// Bytes of request bodies (`send`, `kv.put`, `kv.batch`) all clients together may have
/// here at once, from before a body is allocated until its request is answered (a `send`
/// to an unreachable peer holds its body up to an hour). A request that finds no room is
/// answered `busy` and its raw bytes are skipped: without this, 128 clients with 256
/// requests of 20 MiB each could make the daemon allocate 640 GiB.
const BODY_BYTES: usize = 256 * 1024 * 1024;
/// The body budget is counted in KiB.
const BODY_UNIT: usize = 1024;

/// Room for a body of `payload` in the daemon-wide body budget `bodies`: `Ok(None)` for
/// none needed, `Err` with the units wanted when there is no room now.
fn body_room(
    bodies: &Arc<Semaphore>,
    p: &framing::Payload<'_>,
) -> Result<Option<OwnedSemaphorePermit>, usize> {
    let bytes = match (p.body_len, p.body_b64, p.body) {
        // Over MAX_BODY: refused by read_body before any allocation.
        (Some(n), _, _) => usize::try_from(n)
            .ok()
            .filter(|n| *n <= MAX_BODY)
            .unwrap_or(0),
        (None, Some(b), _) | (None, None, Some(b)) => b.len(),
        (None, None, None) => 0,
    };
    if bytes == 0 {
        return Ok(None);
    }
    let units = bytes.div_ceil(BODY_UNIT);
    let n = u32::try_from(units).map_err(|_| units)?;
    bodies
        .clone()
        .try_acquire_many_owned(n)
        .map(Some)
        .map_err(|_| units)
}
/// Binds the socket (mode 0600), refusing if another daemon answers there and replacing
/// a stale file left by a crashed one.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    // A UNIX socket path holds at most 107 bytes (sun_path).
    if path.as_os_str().len() > 107 {
        anyhow::bail!(
            "the control socket path {} is {} bytes long; a UNIX socket path is at most 107: use a shorter --socket",
            path.display(),
            path.as_os_str().len()
        );
    }
    // A bare relative name ("cnspr.sock") has an empty parent: the current directory.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
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
    // Created 0600 from the start: no moment at which it has wider permissions.
    // SAFETY: umask only changes this process's file-creation mask; it is put back at once.
    #[allow(unsafe_code)]
    let old = unsafe { libc::umask(0o077) };
    let bound = UnixListener::bind(path);
    #[allow(unsafe_code)]
    unsafe {
        libc::umask(old)
    };
    let listener =
        bound.with_context(|| format!("binding the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// The client's user ID when it is neither this daemon's user nor root (the socket's
/// mode already keeps others out; this holds even if the mode was widened by hand).
fn stranger(stream: &UnixStream) -> Option<u32> {
    let uid = stream.peer_cred().ok()?.uid();
    // SAFETY: geteuid has no preconditions.
    #[allow(unsafe_code)]
    let me = unsafe { libc::geteuid() };
    (uid != me && uid != 0).then_some(uid)
}

pub fn unbind(path: &Path) {
    let _ = std::fs::remove_file(path);
}

pub async fn run(d: Arc<Daemon>, listener: UnixListener) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    let reserve = Arc::new(Semaphore::new(RESERVE));
    let bodies = Arc::new(Semaphore::new(BODY_BYTES / BODY_UNIT));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                if let Some(uid) = stranger(&stream) {
                    warn!(uid, "control socket: refused a client of another user");
                    let e = err(
                        code::REFUSED,
                        "this daemon serves only its own user (and root)",
                    );
                    tokio::spawn(refuse(stream, e));
                    continue;
                }
                let (d, slots, bodies) = (d.clone(), slots.clone(), bodies.clone());
                let reserve = reserve.clone();
                tokio::spawn(async move {
                    // A client that finds every slot taken waits a moment (a burst of
                    // short commands), then is told why instead of hanging.
                    let permit = match slots.clone().try_acquire_owned() {
                        Ok(p) => p,
                        Err(_) => {
                            match tokio::time::timeout(BUSY_WAIT, slots.acquire_owned()).await {
                                Ok(Ok(p)) => p,
                                _ => {
                                    if let Ok(p) = reserve.try_acquire_owned() {
                                        client(d, stream, bodies, true).await;
                                        drop(p);
                                        return;
                                    }
                                    warn!("control socket: {MAX_CLIENTS} clients connected; refused one more");
                                    refuse(stream, all_taken("")).await;
                                    return;
                                }
                            }
                        }
                    };
                    client(d, stream, bodies, false).await;
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

/// The answer when every slot is taken; `why` says more before what to do.
fn all_taken(why: &str) -> crate::api::ErrorBody {
    err(
        code::BUSY,
        format!("the daemon serves {MAX_CLIENTS} clients at once and all are connected; {why}close some (idle monitors or applications) and try again"),
    )
}

/// `f`'s output, or `None` if `until` (when given) passed first.
async fn by<F: std::future::Future>(
    until: Option<tokio::time::Instant>,
    f: F,
) -> Option<F::Output> {
    match until {
        Some(t) => tokio::time::timeout_at(t, f).await.ok(),
        None => Some(f.await),
    }
}

/// Whether `req` is answered once (a client served from the [`RESERVE`] may send it).
fn answered_once(req: &Request) -> bool {
    !matches!(
        req,
        Request::KvWatch { .. }
            | Request::Subscribe { .. }
            | Request::Pair { .. }
            | Request::Listen { .. }
            | Request::Connect { .. }
            | Request::Accept { .. }
    )
}

/// How long a client waits for a free slot before it is refused as `busy`.
const BUSY_WAIT: Duration = Duration::from_secs(2);

/// Answers a client's first request with `e` and closes. The request is read (within
/// 2 s) so that the refusal carries its id, as the client expects.
async fn refuse(mut stream: UnixStream, e: crate::api::ErrorBody) {
    use tokio::io::AsyncBufReadExt;
    let mut line = String::new();
    let (r, mut w) = stream.split();
    let mut r = BufReader::new(r.take(64 * 1024));
    let _ = tokio::time::timeout(Duration::from_secs(2), r.read_line(&mut line)).await;
    let id = serde_json::from_str::<Value>(&line)
        .ok()
        .and_then(|v| v.get("id").cloned())
        .unwrap_or(Value::Null);
    let _ = w.write_all(&line_of(&Reply::err(id, e))).await;
}

/// Requests of one connection processed at once; further lines wait unread.
const MAX_INFLIGHT: usize = 256;

static CONNECTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Serves one client. Requests run concurrently (up to [`MAX_INFLIGHT`]); each reply
/// carries its request's `id`, so replies may come back in a different order. A client
/// served from the [`RESERVE`] (`once`) is served the requests it sends within
/// [`RESERVE_WAIT`] that are [`answered_once`], each answered within [`RESERVE_ANSWER`],
/// and closed once they are answered.
async fn client(d: Arc<Daemon>, stream: UnixStream, bodies: Arc<Semaphore>, once: bool) {
    let (r, w) = stream.into_split();
    // 64 KiB: a burst of pipelined requests is read in few system calls, and an idle
    // connection (a subscriber that stays for days) keeps little: what a burst filled
    // stays resident for the connection's life.
    let mut r = BufReader::with_capacity(64 * 1024, r);
    let (tx, rx) = mpsc::channel::<Vec<u8>>(1024);
    let writer = tokio::spawn(write_lines(w, rx));
    let inflight = Arc::new(Semaphore::new(MAX_INFLIGHT));
    let conn_id = CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // A client served from the reserve sends its requests, bodies included, by then.
    let until = once.then(|| tokio::time::Instant::now() + RESERVE_WAIT);
    loop {
        let read = by(until, read_line(&mut r, MAX_LINE)).await;
        let line = match read.unwrap_or(Ok(Line::Eof)) {
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
                if by(until, skip_announced(&line, &mut r)).await != Some(true) {
                    break;
                }
                continue;
            }
        };
        if once && !answered_once(&req) {
            let e = all_taken("this request keeps its connection, so it needs one of them: ");
            let _ = tx.send(line_of(&Reply::err(id, e))).await;
            break;
        }
        match req {
            Request::KvWatch { prefix, from_seq } => {
                cmd::kv::watch(&d, id, prefix.unwrap_or_default(), from_seq, r, tx.clone()).await;
                break;
            }
            Request::Subscribe { events } => {
                cmd::subscribe::subscribe(&d, id, events, r, tx.clone()).await;
                break;
            }
            Request::Pair { timeout_s } => {
                cmd::members::pair_window(&d, id, timeout_s, r, tx.clone()).await;
                break;
            }
            Request::Stop {} => {
                let _ = tx
                    .send(line_of(&Reply::ok(
                        id,
                        serde_json::json!({"stopping": true, "pid": std::process::id()}),
                    )))
                    .await;
                drop(tx);
                d.request_stop();
                if let Ok(Some(mut w)) = writer.await {
                    let _ = w.shutdown().await;
                }
                return;
            }
            Request::Ui {} => {
                let reply = match crate::ui::server::ensure(&d, d.cfg.ui_port).await {
                    Ok(r) => Reply::ok(id, serde_json::to_value(r).unwrap_or(Value::Null)),
                    Err(e) => Reply::err(id, err(code::INTERNAL, format!("{e:#}"))),
                };
                if tx.send(line_of(&reply)).await.is_err() {
                    break;
                }
            }
            Request::Listen { service } => match d.streams.listen(&service, conn_id) {
                Ok(rx) => {
                    cmd::streams::listen(id, &service, rx, r, tx.clone()).await;
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
                        ..
                    } => match d
                        .removed_refusal()
                        .map_or_else(|| d.peers().resolve(peer), Err)
                    {
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
                        streams::open(&d, pid, &service, deadline)
                            .await
                            .map(|(s, r)| (s, r, None))
                    }
                    (Request::Connect { .. }, Err(e)) => Err(e),
                    (Request::Accept { stream, .. }, _) => streams::accept(&d, stream)
                        .await
                        .map(|(s, r, t)| (s, r, Some(t))),
                    _ => Err(err(code::INTERNAL, "request routed to the wrong handler")),
                };
                // An accepted stream keeps its place among its peer's streams to the end.
                let (send, recv, _turn) = match opened {
                    Ok(x) => x,
                    Err(e) => {
                        if tx.send(line_of(&Reply::err(id, e))).await.is_err() {
                            break;
                        }
                        continue;
                    }
                };
                let fds = matches!(
                    req,
                    Request::Connect { fds: true, .. } | Request::Accept { fds: true, .. }
                );
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
                if fds {
                    // Nothing may follow the request but the descriptors themselves.
                    let ctl = r
                        .buffer()
                        .is_empty()
                        .then(|| r.into_inner().reunite(w).ok())
                        .flatten();
                    streams::run_passed(&d, &token, ctl, send, recv).await;
                    return;
                }
                streams::run_local(&d, &token, r, w, send, recv).await;
                return;
            }
            req => {
                // Room for the body before it is allocated, held until the reply.
                let room = match payload(&req).map(|p| body_room(&bodies, &p)) {
                    None | Some(Ok(None)) => None,
                    Some(Ok(Some(room))) => Some(room),
                    Some(Err(_)) => {
                        let e = err(
                            code::BUSY,
                            format!("the daemon holds its limit of request bodies ({} MiB for all clients together); retry once some requests are answered", BODY_BYTES >> 20),
                        );
                        if tx.send(line_of(&Reply::err(id, e))).await.is_err() {
                            break;
                        }
                        // Its raw bytes are skipped, never read as requests.
                        if by(until, skip_announced(&line, &mut r)).await != Some(true) {
                            break;
                        }
                        continue;
                    }
                };
                let body = match payload(&req) {
                    None => Bytes::new(),
                    Some(p) => match by(until, read_body(p, &mut r))
                        .await
                        .unwrap_or(Err(BodyError::Closed))
                    {
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
                    let answer = async {
                        match req {
                            Request::Send(s) => cmd::send::send(&d, s, body).await,
                            Request::KvPut {
                                key,
                                if_version,
                                if_absent,
                                ..
                            } => match cmd::kv::condition(if_version, if_absent) {
                                Ok(cond) => cmd::kv::put(&d, &key, body, cond).await,
                                Err(e) => Err(e),
                            },
                            Request::KvBatch { ops } => cmd::batch::batch(&d, ops, body).await,
                            other => cmd::handle(&d, other).await,
                        }
                    };
                    let res = match by(once.then(|| tokio::time::Instant::now() + RESERVE_ANSWER), answer).await {
                        Some(res) => res,
                        None => Err(err(
                            code::TIMEOUT,
                            format!("not answered within {} s, the most a request gets while every one of the daemon's {MAX_CLIENTS} connections is taken", RESERVE_ANSWER.as_secs()),
                        )),
                    };
                    let reply = match res {
                        Ok(v) => Reply::ok(id, v),
                        Err(e) => Reply::err(id, e),
                    };
                    let _ = tx.send(line_of(&reply)).await;
                    drop(permit);
                    drop(room);
                });
            }
        }
    }
    drop(tx);
    if let Ok(Some(mut w)) = writer.await {
        let _ = w.shutdown().await;
    }
}
