//! A device's registration with one relay: over QUIC from the daemon's own UDP socket
//! (so the relay sees, and reports, the address its peers' packets must go to), else over
//! TLS on TCP for networks that drop UDP; kept up, and renewed with backoff when it drops.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::crypto::CryptoProvider;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::socket::{Link, LinkPath, Relays};
use super::{
    canonical, client_tls, socket_form, RelayFrame, ALPN, MAX_CONTROL, MAX_DATAGRAM, TAG_LEN,
    VERSION,
};
use crate::frame::{read_frame, write_frame};
use crate::identity::Identity;

/// A QUIC handshake with the relay that takes longer than this counts as "UDP blocked".
const UDP_TIMEOUT: Duration = Duration::from_secs(3);
/// Limit for a TCP connect, the TLS handshake and each registration frame.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// Keep-alive of the registration: below the 30 s a NAT keeps an idle UDP mapping.
const KEEP_ALIVE: Duration = Duration::from_secs(10);
const IDLE: Duration = Duration::from_secs(40);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Frames waiting for a TCP link's writer.
const TCP_QUEUE: usize = 1024;

/// A relay as the roster records it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelaySpec {
    /// `HOST:PORT` (UDP and TCP).
    pub addr: String,
    pub secret: String,
    pub tag: [u8; TAG_LEN],
}

/// What a link needs from the endpoint.
#[derive(Clone)]
pub struct LinkCtx {
    pub quinn: Vec<quinn::Endpoint>,
    pub identity: Arc<Identity>,
    pub provider: Arc<CryptoProvider>,
    pub relays: Arc<Relays>,
}

static SERIAL: AtomicU64 = AtomicU64::new(1);

/// Keeps this device registered with `spec`'s relay until the task is aborted.
pub async fn run(ctx: LinkCtx, spec: RelaySpec) {
    // The relay's key takes a moment to derive: once per secret, one at a time, off the
    // runtime's threads, at a bounded rate (`keys`); nothing else happens until then.
    let Some(expected) = ctx.relays.keys.relay_id(&spec.secret).await else {
        return;
    };
    let tls = match client_tls(&ctx.identity, expected, ctx.provider.clone()) {
        Ok(tls) => tls,
        Err(e) => {
            ctx.relays.set_problem(&spec.addr, Some(e.to_string()));
            return;
        }
    };
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = Instant::now();
        match once(&ctx, &spec, &tls).await {
            Ok(()) => ctx.relays.set_problem(&spec.addr, None),
            Err(e) => {
                debug!(relay = %spec.addr, error = %e, "relay not reachable");
                ctx.relays.set_problem(&spec.addr, Some(e));
            }
        }
        if started.elapsed() > MAX_BACKOFF {
            backoff = Duration::from_secs(1);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One registration, held until it ends; `Err` when none could be made.
async fn once(ctx: &LinkCtx, spec: &RelaySpec, tls: &rustls::ClientConfig) -> Result<(), String> {
    let addrs: Vec<SocketAddr> =
        tokio::time::timeout(STEP_TIMEOUT, tokio::net::lookup_host(spec.addr.as_str()))
            .await
            .map_err(|_| format!("{}: name lookup timed out", spec.addr))?
            .map_err(|e| format!("{}: {e}", spec.addr))?
            .map(canonical)
            .collect();
    let mut errors = Vec::new();
    for addr in &addrs {
        match over_udp(ctx, spec, *addr, tls.clone()).await {
            Ok(()) => return Ok(()),
            Err(Failure::Refused(r)) => return Err(format!("{addr}: refused: {r}")),
            Err(Failure::Unreachable(e)) => errors.push(format!("{addr} (UDP): {e}")),
        }
    }
    for addr in &addrs {
        match over_tcp(ctx, spec, *addr, tls.clone()).await {
            Ok(()) => return Ok(()),
            Err(Failure::Refused(r)) => return Err(format!("{addr}: refused: {r}")),
            Err(Failure::Unreachable(e)) => errors.push(format!("{addr} (TCP): {e}")),
        }
    }
    if addrs.is_empty() {
        errors.push(format!("{}: no address", spec.addr));
    }
    Err(errors.join("; "))
}

/// A handshake error where the relay answered with a key that is not its secret's.
fn key_refused(e: &dyn std::fmt::Display) -> Option<Failure> {
    e.to_string().contains("invalid peer certificate").then(|| {
        Failure::Refused(
            "the server there does not hold this secret's key (a wrong secret, or not a cnspr relay)"
                .into(),
        )
    })
}

enum Failure {
    /// The relay answered and said no (wrong secret, full): trying TCP would not help.
    Refused(String),
    Unreachable(String),
}

fn register_frame(spec: &RelaySpec) -> RelayFrame {
    RelayFrame::Register {
        version: VERSION,
        secret: spec.secret.clone(),
        tag: spec.tag.to_vec(),
    }
}

/// Reads the relay's answer to a registration.
async fn answer<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Result<SocketAddr, Failure> {
    match tokio::time::timeout(STEP_TIMEOUT, read_frame::<RelayFrame, _>(r, MAX_CONTROL)).await {
        Ok(Ok(Some(RelayFrame::Registered { observed }))) => Ok(canonical(observed)),
        Ok(Ok(Some(RelayFrame::Refused { reason }))) => Err(Failure::Refused(reason)),
        Ok(Ok(other)) => Err(Failure::Refused(format!("unexpected answer {other:?}"))),
        Ok(Err(e)) => Err(Failure::Unreachable(e.to_string())),
        Err(_) => Err(Failure::Unreachable("no answer to the registration".into())),
    }
}

fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(IDLE).ok());
    t.max_concurrent_bidi_streams(0u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    t
}

/// Records a registration that the relay accepted; returns its serial (for
/// [`Relays::remove_link`]).
fn registered(ctx: &LinkCtx, spec: &RelaySpec, path: LinkPath, observed: SocketAddr) -> u64 {
    let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
    ctx.relays.add_link(Link {
        label: spec.addr.clone(),
        path,
        observed,
        serial,
    });
    ctx.relays.set_problem(&spec.addr, None);
    serial
}

async fn over_udp(
    ctx: &LinkCtx,
    spec: &RelaySpec,
    addr: SocketAddr,
    tls: rustls::ClientConfig,
) -> Result<(), Failure> {
    let unreachable = |e: &dyn std::fmt::Display| Failure::Unreachable(e.to_string());
    let crypto = crate::tls::quic_client(tls).map_err(|e| unreachable(&e))?;
    let mut client = quinn::ClientConfig::new(crypto);
    client.transport_config(Arc::new(transport_config()));
    let q = ctx
        .quinn
        .iter()
        .find(|q| q.local_addr().is_ok_and(|l| l.is_ipv6() || addr.is_ipv4()))
        .ok_or_else(|| Failure::Unreachable("no socket of that address family".into()))?;
    let dest = socket_form(addr, q.local_addr().is_ok_and(|l| l.is_ipv6()));
    let connecting = q
        .connect_with(client, dest, "cnspr-relay")
        .map_err(|e| unreachable(&e))?;
    let conn = match tokio::time::timeout(UDP_TIMEOUT, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(quinn::ConnectionError::ApplicationClosed(c))) => {
            return Err(Failure::Refused(
                String::from_utf8_lossy(&c.reason).into_owned(),
            ))
        }
        Ok(Err(e)) => return Err(key_refused(&e).unwrap_or_else(|| unreachable(&e))),
        Err(_) => return Err(Failure::Unreachable("no answer over UDP".into())),
    };
    let observed = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| unreachable(&e))?;
        write_frame(&mut send, &register_frame(spec), MAX_CONTROL)
            .await
            .map_err(|e| unreachable(&e))?;
        let _ = send.finish();
        answer(&mut recv).await
    }
    .await;
    let observed = match observed {
        Ok(o) => o,
        Err(e) => {
            conn.close(0u32.into(), b"registration failed");
            return Err(e);
        }
    };
    let serial = registered(ctx, spec, LinkPath::Udp(addr), observed);
    info!(relay = %spec.addr, %observed, "registered with the relay (UDP)");
    let why = conn.closed().await;
    ctx.relays.remove_link(&spec.addr, serial);
    warn!(relay = %spec.addr, reason = %why, "relay registration lost");
    Ok(())
}

async fn over_tcp(
    ctx: &LinkCtx,
    spec: &RelaySpec,
    addr: SocketAddr,
    tls: rustls::ClientConfig,
) -> Result<(), Failure> {
    let unreachable = |e: &dyn std::fmt::Display| Failure::Unreachable(e.to_string());
    let stream = tokio::time::timeout(STEP_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| Failure::Unreachable("TCP connect timed out".into()))?
        .map_err(|e| unreachable(&e))?;
    let _ = stream.set_nodelay(true);
    let name =
        rustls::pki_types::ServerName::try_from("cnspr-relay").map_err(|e| unreachable(&e))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let mut tls = tokio::time::timeout(STEP_TIMEOUT, connector.connect(name, stream))
        .await
        .map_err(|_| Failure::Unreachable("TLS handshake timed out".into()))?
        .map_err(|e| key_refused(&e).unwrap_or_else(|| unreachable(&e)))?;
    if tls.get_ref().1.alpn_protocol() != Some(ALPN) {
        return Err(Failure::Refused("not a cnspr relay".into()));
    }
    write_frame(&mut tls, &register_frame(spec), MAX_CONTROL)
        .await
        .map_err(|e| unreachable(&e))?;
    let observed = answer(&mut tls).await?;
    let (mut rd, wr) = tokio::io::split(tls);
    let (tx, rx) = mpsc::channel(TCP_QUEUE);
    let serial = registered(ctx, spec, LinkPath::Tcp(tx), observed);
    info!(relay = %spec.addr, "registered with the relay (TCP: UDP does not get through)");
    let writer = tokio::spawn(write_tcp(wr, rx));
    let relays = ctx.relays.clone();
    let why = read_tcp(&mut rd, |frame| {
        if relays.deliver(frame) {
            relays.wake();
        }
    })
    .await;
    writer.abort();
    ctx.relays.remove_link(&spec.addr, serial);
    warn!(relay = %spec.addr, reason = %why, "relay registration lost (TCP)");
    Ok(())
}

/// Writes queued frames as `length (2, big-endian) | frame`, flushing when the queue is
/// empty.
pub async fn write_tcp<W: tokio::io::AsyncWrite + Unpin>(w: W, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut w = BufWriter::with_capacity(64 * 1024, w);
    while let Some(frame) = rx.recv().await {
        let mut next = Some(frame);
        while let Some(f) = next.take() {
            if w.write_all(&(f.len() as u16).to_be_bytes()).await.is_err()
                || w.write_all(&f).await.is_err()
            {
                return;
            }
            next = rx.try_recv().ok();
        }
        if w.flush().await.is_err() {
            return;
        }
    }
}

/// Reads `length | frame` records until the stream ends or breaks the format; gives each
/// frame to `each`. Returns why it stopped.
pub async fn read_tcp<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    mut each: impl FnMut(&[u8]),
) -> String {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let mut len = [0u8; 2];
        if let Err(e) = r.read_exact(&mut len).await {
            return e.to_string();
        }
        let len = usize::from(u16::from_be_bytes(len));
        if len == 0 || len > MAX_DATAGRAM {
            return format!("bad frame length {len}");
        }
        if let Err(e) = r.read_exact(&mut buf[..len]).await {
            return e.to_string();
        }
        each(&buf[..len]);
    }
}
