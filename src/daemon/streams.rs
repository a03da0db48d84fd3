//! Dedicated application streams (docs/api.md, streams): `connect`, `listen`/`accept`, `expose`.
//!
//! Wire: a `StreamKind::App` QUIC stream of the existing connection starts with one
//! [`AppFrame::Open`] naming the service; the receiving daemon answers [`AppFrame::Ok`] or
//! [`AppFrame::Err`]; after `Ok` the stream carries raw bytes both ways, and a FIN in one
//! direction is a half-close that the other direction survives.
//!
//! A peer reached only through another member (`indirect`) gets its stream through that
//! relay: the opener sends [`AppFrame::Relay`] to the relay, which opens the stream onward
//! with [`AppFrame::Relayed`] and splices the two (see `relay_stream.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;
use transport::frame::{read_frame, write_frame};
use transport::quinn::{RecvStream, SendStream};
use transport::{DeviceId, IncomingStream, StreamKind};

use super::budget::{relayed_share, Full, Held, PEER_EXPOSED, PEER_LISTENED};
use super::context::Daemon;
use super::errors::StreamError;
use super::services::{new_token, validate_service, Announce, Pending, Target, ACCEPT_WAIT};
use super::stream_io::{app_err, splice, splice_until, MAX_APP_FRAME, STREAM_BROKEN};
use super::wire::AppFrame;
use crate::api::{code, ErrorBody, PeerRef};

/// Opens a stream to `service` on `peer`; returns its halves once the far side said yes.
pub async fn open(
    d: &Arc<Daemon>,
    peer: DeviceId,
    service: &str,
    deadline: Instant,
) -> Result<(SendStream, RecvStream), ErrorBody> {
    validate_service(service)?;
    // Direct when there is a link; otherwise through the member the peer is reached by.
    let (pc, relay_to) = super::messages::route(d, peer, deadline).await?;
    let first = match relay_to {
        None => AppFrame::Open {
            service: service.into(),
        },
        // Through a relay: with this device's proof that the stream is its own.
        Some(to) => AppFrame::SignedRelay {
            service: service.into(),
            to,
            proof: super::origin::sign_stream(&d.identity, to, service),
        },
    };
    let relay_name = relay_to.map(|_| d.peers().name_of(&pc.peer).unwrap_or_default());
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(ACCEPT_WAIT + Duration::from_secs(2));
    let res = tokio::time::timeout(left, async {
        let (mut send, mut recv) = pc.open(StreamKind::App).await.map_err(|e| e.to_string())?;
        write_frame(&mut send, &first, MAX_APP_FRAME)
            .await
            .map_err(|e| e.to_string())?;
        let reply = read_frame::<AppFrame, _>(&mut recv, MAX_APP_FRAME)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((send, recv, reply))
    })
    .await;
    match res {
        Ok(Ok((send, recv, Some(AppFrame::Ok)))) => Ok((send, recv)),
        Ok(Ok((_, _, Some(AppFrame::Err { code, message })))) => {
            Err(ErrorBody::from_wire(&code, message))
        }
        Ok(Ok(_)) => Err(ErrorBody::new(
            code::UNREACHABLE,
            "the peer closed the stream without answering",
        )),
        Ok(Err(e)) => Err(ErrorBody::new(
            code::UNREACHABLE,
            match relay_name {
                // An older relay does not know the Relay frame and resets the stream.
                Some(r) => format!("stream through the relay {r} failed: {e}"),
                None => format!("stream failed: {e}"),
            },
        )),
        Err(_) => Err(ErrorBody::new(
            code::TIMEOUT,
            "the peer did not answer the stream request",
        )),
    }
}

/// Serves a stream a peer opened: forwards it to an exposed target or hands it to a
/// listener; anything else is refused with a clear error.
pub async fn serve(d: Arc<Daemon>, s: IncomingStream) {
    let IncomingStream {
        peer,
        mut send,
        mut recv,
        ..
    } = s;
    let open = tokio::time::timeout(
        Duration::from_secs(10),
        read_frame::<AppFrame, _>(&mut recv, MAX_APP_FRAME),
    )
    .await;
    let (service, origin, proof) = match open {
        Ok(Ok(Some(AppFrame::Open { service }))) => (service, peer, None),
        Ok(Ok(Some(AppFrame::SignedRelay { service, to, proof }))) => {
            super::relay_stream::relay(d, peer, to, service, Some(proof), send, recv).await;
            return;
        }
        Ok(Ok(Some(AppFrame::Relay { service, to }))) => {
            super::relay_stream::relay(d, peer, to, service, None, send, recv).await;
            return;
        }
        Ok(Ok(Some(AppFrame::Relayed { service, origin }))) => (service, origin, None),
        Ok(Ok(Some(AppFrame::SignedRelayed {
            service,
            origin,
            proof,
        }))) => (service, origin, Some(proof)),
        _ => {
            let _ = send.reset(STREAM_BROKEN.into());
            return;
        }
    };
    // A relayed stream is the origin's only with its proof (or when it names the relay).
    if origin != peer || proof.is_some() {
        let checked = super::relay_stream::check_origin(&d, peer, origin, &service, proof.as_ref());
        if let Err(e) = checked {
            let _ = write_frame(&mut send, &app_err(e.code, e.message), MAX_APP_FRAME).await;
            let _ = send.finish();
            return;
        }
    }
    // The member whose connection carries the stream (for a relayed one, the relay): its
    // places here are bounded, and a relayed stream, proven above to come from the
    // member it names (signed by it, never taken before), also takes one of that
    // origin's share (budget.rs).
    let carrier = peer;
    let peer = origin;
    if let Err(e) = validate_service(&service) {
        let _ = write_frame(&mut send, &app_err(e.code, e.message), MAX_APP_FRAME).await;
        let _ = send.finish();
        return;
    }
    let self_name = d.identity.name.clone();
    let peer_name = d.peers().name_of(&peer).unwrap_or_default();
    let (expose, listener) = {
        let reg = d.streams.reg();
        (
            reg.exposes.get(&service).map(|(t, _)| t.clone()),
            reg.listeners.get(&service).map(|(_, tx)| tx.clone()),
        )
    };
    if let Some(target) = expose {
        let Some(_turn) = take_turn(&d, carrier, peer, false, &service, &mut send).await else {
            return;
        };
        let res = match &target {
            Target::Tcp(a) => {
                tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(a))
                    .await
                    .map_err(|_| "timed out".to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()))
                    .map(|s| {
                        let _ = s.set_nodelay(true);
                        let (r, w) = s.into_split();
                        (
                            Box::new(r) as Box<dyn AsyncRead + Unpin + Send>,
                            Box::new(w) as Box<dyn AsyncWrite + Unpin + Send>,
                        )
                    })
            }
            Target::Unix(p) => tokio::net::UnixStream::connect(p)
                .await
                .map_err(|e| e.to_string())
                .map(|s| {
                    let (r, w) = s.into_split();
                    (
                        Box::new(r) as Box<dyn AsyncRead + Unpin + Send>,
                        Box::new(w) as Box<dyn AsyncWrite + Unpin + Send>,
                    )
                }),
        };
        match res {
            Ok((r, w)) => {
                if write_frame(&mut send, &AppFrame::Ok, MAX_APP_FRAME)
                    .await
                    .is_ok()
                {
                    match splice(r, w, send, recv).await {
                        Ok((up, down)) => debug!(%service, up, down, "exposed stream ended"),
                        Err(e) => debug!(%service, error = %e, "exposed stream failed"),
                    }
                }
            }
            Err(e) => {
                let msg = format!(
                    "service {service:?} on {self_name} forwards to {target}, which refused: {e}"
                );
                let _ =
                    write_frame(&mut send, &app_err(code::UNAVAILABLE, msg), MAX_APP_FRAME).await;
                let _ = send.finish();
            }
        }
        return;
    }
    let Some(tx) = listener else {
        let msg = format!(
            "no service {service:?} on {self_name} (nothing listens or is exposed under that name)"
        );
        let _ = write_frame(
            &mut send,
            &app_err(code::UNKNOWN_SERVICE, msg),
            MAX_APP_FRAME,
        )
        .await;
        let _ = send.finish();
        return;
    };
    let Some(turn) = take_turn(&d, carrier, peer, true, &service, &mut send).await else {
        return;
    };
    let token = new_token();
    d.streams.reg().pending.insert(
        token.clone(),
        Pending {
            send,
            recv,
            created: Instant::now(),
            turn,
        },
    );
    let announce = Announce {
        stream: token.clone(),
        service: service.clone(),
        peer: PeerRef {
            id: peer.to_string(),
            name: peer_name,
        },
    };
    let announced = tx.try_send(announce).is_ok();
    if announced {
        tokio::time::sleep(ACCEPT_WAIT).await;
    }
    // Still pending: the listener went away or never accepted.
    if let Some(mut p) = d.streams.take_pending(&token) {
        let why = if announced {
            "the listener did not accept it in time"
        } else {
            "the listener is busy or gone"
        };
        let msg = format!("service {service:?} on {self_name}: {why}");
        let _ = write_frame(&mut p.send, &app_err(code::UNAVAILABLE, msg), MAX_APP_FRAME).await;
        let _ = p.send.finish();
        let _ = p.created;
    }
}

/// A place for one more stream that `carrier` brings from `origin` (itself, or a member
/// it relays for) to a listener (`listened`) or an exposed target; `None` after refusing
/// the stream with `queue_full` when a bound is full.
async fn take_turn(
    d: &Daemon,
    carrier: DeviceId,
    origin: DeviceId,
    listened: bool,
    service: &str,
    send: &mut SendStream,
) -> Option<Held> {
    let full = match d.budgets.try_app_stream(carrier, origin, listened) {
        Ok(t) => return Some(t),
        Err(full) => full,
    };
    let (bound, kind) = if listened {
        (PEER_LISTENED, "handed to listeners")
    } else {
        (PEER_EXPOSED, "forwarded to exposed targets")
    };
    let name = |id: &DeviceId| d.peers().name_of(id).unwrap_or_default();
    let why = match full {
        Full::Carrier => format!(
            "it already has {bound} streams from {} {kind}, its own and those it relays for others (the most it takes from one member)",
            name(&carrier)
        ),
        Full::Origin => format!(
            "it already has {} streams from {} relayed by members {kind} (the most it takes from one member through relays)",
            relayed_share(bound),
            name(&origin)
        ),
    };
    let msg = format!(
        "service {service:?} on {}: {why}; retry once one has ended",
        d.identity.name
    );
    debug!(%service, ?full, "stream refused: {why}");
    let _ = write_frame(send, &app_err(code::QUEUE_FULL, msg), MAX_APP_FRAME).await;
    let _ = send.finish();
    None
}

/// Takes an announced stream for a local application (socket `accept`), with its place
/// among its peer's streams (held while the stream runs).
pub async fn accept(
    d: &Arc<Daemon>,
    token: &str,
) -> Result<(SendStream, RecvStream, Held), ErrorBody> {
    let mut p = d.streams.take_pending(token).ok_or_else(|| {
        ErrorBody::new(
            code::UNKNOWN_STREAM,
            format!("no pending stream {token:?} (taken, expired or never announced)"),
        )
    })?;
    write_frame(&mut p.send, &AppFrame::Ok, MAX_APP_FRAME)
        .await
        .map_err(|e| {
            ErrorBody::new(
                code::UNREACHABLE,
                format!("the connecting side is gone: {e}"),
            )
        })?;
    Ok((p.send, p.recv, p.turn))
}

/// Runs a stream between a local socket connection and QUIC, recording how it ended.
pub async fn run_local<R, W>(
    d: &Arc<Daemon>,
    token: &str,
    r: R,
    w: W,
    send: SendStream,
    recv: RecvStream,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let status = end_status(token, splice(r, w, send, recv).await);
    d.streams.record_end(token, status);
}

/// What `stream_status` says of a stream that ended with `res`.
fn end_status(token: &str, res: Result<(u64, u64), StreamError>) -> String {
    match res {
        Ok((up, down)) => {
            debug!(token, up, down, "stream closed");
            "closed".to_string()
        }
        Err(e) => {
            debug!(token, error = %e, "stream failed");
            format!("error: {e}")
        }
    }
}

/// How long a client that asked to pass its descriptors (`fds`) has to send them.
const PASS_WAIT: Duration = Duration::from_secs(5);

/// Pipes passed by a client get this much buffer (the system's default limit for an
/// unprivileged process): fewer, larger reads and writes for the daemon and the
/// processes on the other ends.
const PASSED_PIPE_BYTES: i32 = 1 << 20;

/// Runs a stream between the two pipes the client passed over its control connection
/// `ctl` (`fds`: the stream's input, then its output) and QUIC, recording how it ended.
/// The connection stays open meanwhile: the client closing it breaks the stream off; the
/// daemon closes it once the stream ended. `None`: the client sent more than its request.
pub async fn run_passed(
    d: &Arc<Daemon>,
    token: &str,
    ctl: Option<tokio::net::UnixStream>,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let got = match ctl {
        Some(ctl) => take_pipes(&ctl).await.map(|p| (ctl, p)),
        None => Err("bytes after the request, before the descriptors".to_string()),
    };
    let (ctl, (input, output)) = match got {
        Ok(x) => x,
        Err(e) => {
            let _ = send.reset(STREAM_BROKEN.into());
            let _ = recv.stop(STREAM_BROKEN.into());
            debug!(token, error = %e, "stream descriptors refused");
            d.streams
                .record_end(token, format!("error: descriptors not passed: {e}"));
            return;
        }
    };
    let (mut r, mut w) = (input, ClosingPipe(Some(output)));
    let gone = client_gone(&ctl);
    let status = end_status(token, splice_until(&mut r, &mut w, send, recv, gone).await);
    // The pipes go back to blocking mode: other processes share them.
    let _ = r.into_blocking_fd();
    w.close();
    d.streams.record_end(token, status);
}

/// The output pipe of a passed stream: shutting it down closes the daemon's copy (back in
/// blocking mode), so the reader sees end of file when the peer ended its direction even
/// while the other direction still runs (a pipe has no half-close of its own).
struct ClosingPipe(Option<tokio::net::unix::pipe::Sender>);

impl ClosingPipe {
    fn close(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = p.into_blocking_fd();
        }
    }

    fn open(&mut self) -> std::io::Result<&mut tokio::net::unix::pipe::Sender> {
        self.0
            .as_mut()
            .ok_or_else(|| std::io::ErrorKind::BrokenPipe.into())
    }
}

impl AsyncWrite for ClosingPipe {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.open() {
            Ok(p) => std::pin::Pin::new(p).poll_write(cx, buf),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.open() {
            Ok(p) => std::pin::Pin::new(p).poll_write_vectored(cx, bufs),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.close();
        std::task::Poll::Ready(Ok(()))
    }
}

/// Receives the two pipes (within [`PASS_WAIT`]) and takes them over.
async fn take_pipes(
    ctl: &tokio::net::UnixStream,
) -> Result<
    (
        tokio::net::unix::pipe::Receiver,
        tokio::net::unix::pipe::Sender,
    ),
    String,
> {
    use std::os::fd::{AsFd, AsRawFd};
    use tokio::io::Interest;
    use tokio::net::unix::pipe;
    let got = tokio::time::timeout(
        PASS_WAIT,
        ctl.async_io(Interest::READABLE, || {
            crate::fdpass::recv(ctl.as_raw_fd(), crate::fdpass::STREAM_FDS)
        }),
    )
    .await
    .map_err(|_| format!("none came within {} s", PASS_WAIT.as_secs()))?
    .map_err(|e| e.to_string())?;
    let [input, output]: [std::os::fd::OwnedFd; 2] = got
        .try_into()
        .map_err(|v: Vec<_>| format!("{} descriptors instead of 2", v.len()))?;
    for p in [&input, &output] {
        crate::fdpass::set_pipe_size(p.as_fd().as_raw_fd(), PASSED_PIPE_BYTES);
    }
    let r = pipe::Receiver::from_owned_fd(input).map_err(|e| format!("input: {e}"))?;
    let w = pipe::Sender::from_owned_fd(output).map_err(|e| format!("output: {e}"))?;
    Ok((r, w))
}

/// Completes when the client closes its control connection (what it sends is ignored).
async fn client_gone(ctl: &tokio::net::UnixStream) -> std::io::Error {
    let mut scratch = [0u8; 64];
    loop {
        if ctl.readable().await.is_err() {
            break;
        }
        match ctl.try_read(&mut scratch) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "the client closed its connection",
    )
}
