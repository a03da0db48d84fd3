//! The joining side: dials the addresses [`Search`] gives (all at once, each with a probe
//! that notices a closed port), runs one attempt at a time through [`Joiner`], and trusts
//! the window's device and roster when it proved the code.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tracing::{info, warn};
use transport::pairing;
use transport::quinn::Connection;
use transport::Identity;

use super::addr::Shown;
use super::code::normalize_code;
use super::error::PairError;
use super::handshake::{Joiner, JoinerStep, Welcomed};
use super::io;
use super::search::{Search, Source};
use super::window::Paired;
use crate::daemon::context::Daemon;

/// Longest wait for a pairing window's QUIC handshake.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest one attempt may take once connected.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the windows advertised by mDNS are looked at.
const LOOK_EVERY: Duration = Duration::from_millis(50);
/// How often a probe datagram goes to a window's port while its dial runs.
const PROBE_EVERY: Duration = Duration::from_millis(400);

/// `cnspr pair CODE`: finds a window (at `addrs`, else by mDNS) and pairs with it.
pub async fn join(
    d: &Arc<Daemon>,
    code: &str,
    addrs: Vec<SocketAddr>,
    timeout: Duration,
) -> Result<Paired, PairError> {
    let digits = normalize_code(code)?;
    let started = Instant::now();
    let deadline = started + timeout;
    let source = if addrs.is_empty() {
        Source::Mdns
    } else {
        Source::Given
    };
    let mut search = Search::new(source, &addrs, started, timeout);
    // Every candidate is dialled at once, and new ones (a window that mDNS reports only
    // now) join the race while earlier dials are still waiting.
    let mut dials = tokio::task::JoinSet::new();
    loop {
        let now = Instant::now();
        if source == Source::Mdns {
            search.advertised(&advertised(d), now);
        }
        for addr in search.due(now) {
            let identity = d.identity.clone();
            dials.spawn(async move { (addr, dial(&identity, addr).await) });
        }
        if let Some(e) = search.verdict(now) {
            return Err(e);
        }
        let mut wake = search.poll_timeout();
        if source == Source::Mdns {
            wake = wake.min(now + LOOK_EVERY);
        }
        let (addr, dialled) = tokio::select! {
            Some(done) = dials.join_next() => match done {
                Ok(done) => done,
                Err(_) => continue,
            },
            _ = tokio::time::sleep_until(wake.into()) => continue,
        };
        let failure = match dialled {
            Ok(conn) => {
                let left = deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1))
                    .min(ATTEMPT_TIMEOUT);
                match tokio::time::timeout(left, attempt(d, conn, &digits)).await {
                    Ok(Ok(p)) => return Ok(p),
                    Ok(Err(e)) => e,
                    Err(_) => PairError::AttemptTimeout(left),
                }
            }
            Err(e) => e,
        };
        info!(at = %Shown(addr), error = %failure, "pairing try failed");
        if let Some(e) = search.failed(addr, failure, Instant::now()) {
            return Err(e);
        }
    }
}

/// Pairing windows advertised on the LAN now.
fn advertised(d: &Daemon) -> Vec<SocketAddr> {
    d.nearby
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .flat_map(|n| n.pairing.iter().copied())
        .collect()
}

/// Connects to a window, or says why not: no answer, or nothing listening on that port.
async fn dial(identity: &Identity, addr: SocketAddr) -> Result<Connection, PairError> {
    tokio::select! {
        r = tokio::time::timeout(DIAL_TIMEOUT, pairing::dial(identity, addr)) => match r {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(reason)) => {
                // The text often starts with the address already.
                let prefix = format!("{addr}: ");
                let reason = reason.strip_prefix(&prefix).unwrap_or(&reason).to_string();
                Err(PairError::Dial(Shown(addr), reason))
            }
            Err(_) => Err(PairError::NoAnswer(Shown(addr))),
        },
        true = port_closed(addr, DIAL_TIMEOUT) => Err(PairError::WindowGone(Shown(addr))),
    }
}

/// True when nothing listens on `addr`'s UDP port: a connected UDP socket learns of the
/// ICMP "port unreachable" the other host sends back as `ECONNREFUSED`. QUIC itself
/// ignores ICMP, so without this a closed window looks like one that does not answer.
/// False when nothing is learnt within `within` (no ICMP: filtered, or the host is gone)
/// or something answered. The probe is one byte, which a QUIC endpoint drops.
async fn port_closed(addr: SocketAddr, within: Duration) -> bool {
    let bind = if addr.is_ipv6() {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    };
    let Ok(sock) = UdpSocket::bind(bind).await else {
        return false;
    };
    if sock.connect(addr).await.is_err() {
        return false;
    }
    let refused = |e: &std::io::Error| e.kind() == ErrorKind::ConnectionRefused;
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 64];
    loop {
        if let Err(e) = sock.send(&[0]).await {
            return refused(&e);
        }
        let next = (tokio::time::Instant::now() + PROBE_EVERY).min(deadline);
        tokio::select! {
            r = sock.recv(&mut buf) => return matches!(r, Err(e) if refused(&e)),
            _ = tokio::time::sleep_until(next) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
    }
}

async fn attempt(d: &Arc<Daemon>, conn: Connection, digits: &str) -> Result<Paired, PairError> {
    let session = io::session(&conn)?;
    let removed = d.roster().is_removed(&session.peer);
    let (mut joiner, start) = Joiner::start(digits, io::me(d), session, removed, io::nonce())?;
    let (mut send, mut recv) = conn.open_bi().await?;
    io::write(&mut send, &start).await?;
    loop {
        let msg = io::read(&mut recv).await?;
        match joiner.handle(msg)? {
            JoinerStep::Send(m) => io::write(&mut send, &m).await?,
            JoinerStep::Paired {
                welcomed,
                send: done,
            } => {
                let paired = trust(d, &conn, welcomed);
                io::last_word(&conn, &mut send, &done).await;
                return Ok(paired);
            }
        }
    }
}

/// Trusts the window's device (an entry signed by this device), then the mesh roster it
/// vouches for, and takes the name the mesh gave this device.
fn trust(d: &Arc<Daemon>, conn: &Connection, w: Welcomed) -> Paired {
    let applied = d.members.add(w.window, &w.name);
    d.membership_changed(applied, None);
    if w.roster.within_limits() {
        let applied = d.members.merge_from(w.roster, w.window);
        d.membership_changed(applied, None);
    }
    if w.port != 0 {
        let addr = io::main_addr(conn.remote_address(), w.port);
        io::remember(d, w.window, addr, true);
    }
    let name = &d.identity.name;
    let renamed = w.self_name != *name;
    if renamed {
        warn!(asked = %name, given = %w.self_name, "the name {name} is taken in the mesh: this device is {} there", w.self_name);
        let path = d.paths.state_dir.join(transport::identity::NAME_FILE);
        if let Err(e) = std::fs::write(&path, format!("{}\n", w.self_name)) {
            warn!(error = %e, "could not record the new name");
        }
    }
    info!(peer = %w.name, id = %w.window.short(), "paired");
    Paired {
        id: w.window.to_string(),
        name: w.name,
        self_name: renamed.then_some(w.self_name),
    }
}
