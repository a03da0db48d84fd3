//! Pairing (SPEC section 3): `cnspr pair` opens a window with a fresh one-time code;
//! `cnspr pair CODE` on the new device finds the window on the LAN (mDNS TXT `pair`) or
//! at `--addr`, and both run SPAKE2 over the code. See `docs/pairing.md`.
//!
//! Wire (one QUIC stream of a `cnspr-pair/1` connection, frames as everywhere else):
//!
//! ```text
//! joiner J                                     window W
//!   Start { name, port, nonce_j, spake_a }  ->
//!                                          <-  Reply { name, port, nonce_w, spake_b }
//!   Confirm { mac_j }                       ->
//!                                          <-  Welcome { mac_w, mesh_name, roster } | Fail
//!   Done                                    ->
//! ```
//!
//! SPAKE2 runs with the identities `J`'s and `W`'s device IDs as each side saw them in
//! the TLS handshake; the confirmation MACs cover the TLS exporter secret, both IDs, both
//! nonces and both names. A machine in the middle must run two TLS sessions with its own
//! certificate, so its IDs and exporter differ on each side: it gets one online guess per
//! attempt and nothing it can test offline. Three wrong codes close the window.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngCore;
use serde::Serialize;
use spake2::{Ed25519Group, Identity as SpakeId, Password, Spake2};
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};
use transport::frame::{read_frame, write_frame, MAX_CONTROL_FRAME};
use transport::{pairing, DeviceId};

use super::context::Daemon;
use super::nearby::NearbyInfo;
use super::wire::PairMsg;
use crate::api::{code, Code, ErrorBody};

/// Default lifetime of a pairing window.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(120);
/// Wrong codes before the window closes.
pub const MAX_FAILURES: u32 = 3;
/// Digits of a code.
pub const CODE_DIGITS: usize = 6;
/// Longest one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
const PAIR_VERSION: u16 = 1;
/// Longest wait for a pairing window's QUIC handshake.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// A completed pairing.
#[derive(Debug, Clone, Serialize)]
pub struct Paired {
    pub id: String,
    pub name: String,
    /// This device's new name in the mesh, when its own was taken by another member.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub self_name: Option<String>,
}

/// What `pair` answers as soon as the window is open.
#[derive(Debug, Clone, Serialize)]
pub struct WindowInfo {
    pub code: String,
    pub expires_in_s: u64,
    /// Where the window listens (for `cnspr pair CODE --addr` on networks without mDNS).
    pub addresses: Vec<String>,
    /// Devices seen on the LAN that are not in the mesh.
    pub nearby: Vec<NearbyInfo>,
}

fn err(c: Code, m: impl Into<String>) -> ErrorBody {
    ErrorBody::new(c, m)
}

/// A fresh code: `CODE_DIGITS` random decimal digits shown as `123-456`.
pub fn new_code() -> String {
    let n = rand::random::<u32>() % 10u32.pow(CODE_DIGITS as u32);
    let s = format!("{n:0width$}", width = CODE_DIGITS);
    format!("{}-{}", &s[..3], &s[3..])
}

/// The digits of a typed code (dashes and spaces allowed), or a clear error.
pub fn normalize_code(code: &str) -> Result<String, ErrorBody> {
    let digits: String = code.chars().filter(|c| !matches!(c, '-' | ' ')).collect();
    if code.len() > 32 || digits.len() != CODE_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(err(
            code::INVALID_CODE,
            format!("a pairing code is {CODE_DIGITS} digits, like 123-456 (shown by `cnspr pair` on the other device)"),
        ));
    }
    Ok(digits)
}


fn mac(key: &[u8], label: &[u8], transcript: &[u8]) -> Vec<u8> {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let mut ctx = ring::hmac::Context::with_key(&k);
    ctx.update(label);
    ctx.update(transcript);
    ctx.sign().as_ref().to_vec()
}

fn mac_ok(key: &[u8], label: &[u8], transcript: &[u8], tag: &[u8]) -> bool {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let mut msg = label.to_vec();
    msg.extend_from_slice(transcript);
    ring::hmac::verify(&k, &msg, tag).is_ok()
}

#[allow(clippy::too_many_arguments)]
fn transcript(
    cb: &[u8; 32],
    joiner: &DeviceId,
    window: &DeviceId,
    nonce_j: &[u8; 32],
    nonce_w: &[u8; 32],
    name_j: &str,
    name_w: &str,
) -> Vec<u8> {
    let mut t = b"cnspr pair v1\0".to_vec();
    t.extend_from_slice(cb);
    t.extend_from_slice(&joiner.0);
    t.extend_from_slice(&window.0);
    t.extend_from_slice(nonce_j);
    t.extend_from_slice(nonce_w);
    for n in [name_j, name_w] {
        t.extend_from_slice(&(n.len() as u32).to_be_bytes());
        t.extend_from_slice(n.as_bytes());
    }
    t
}

const LABEL_J: &[u8] = b"joiner confirms";
const LABEL_W: &[u8] = b"window confirms";

fn nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut n);
    n
}

fn main_port(d: &Daemon) -> u16 {
    d.endpoint.local_addrs().first().map_or(0, SocketAddr::port)
}

fn clean_name(name: &str, id: &DeviceId) -> String {
    if transport::identity::validate_name(name).is_ok() {
        name.to_string()
    } else {
        format!("device-{}", id.short().to_lowercase())
    }
}

/// Devices seen on the LAN that are not members.
pub fn nearby(d: &Daemon) -> Vec<NearbyInfo> {
    let roster = d.roster();
    let mut v: Vec<NearbyInfo> = d
        .nearby
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|(id, _)| !roster.is_member(id))
        .map(|(id, n)| NearbyInfo {
            id: id.to_string(),
            name: n.name.clone(),
            addresses: n.addrs.iter().map(ToString::to_string).collect(),
            pairing: !n.pairing.is_empty(),
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// An open window: the first answer, then the outcome. Dropping `cancel` closes it.
pub struct Window {
    pub info: WindowInfo,
    pub outcome: oneshot::Receiver<Result<Paired, ErrorBody>>,
    pub cancel: watch::Sender<bool>,
}

/// Opens a pairing window for `lifetime`.
pub fn open(d: &Arc<Daemon>, lifetime: Duration) -> Result<Window, ErrorBody> {
    {
        let mut busy = d.pairing_open.lock().unwrap_or_else(|p| p.into_inner());
        if *busy {
            return Err(err(
                code::BUSY,
                "a pairing window is already open on this device; finish or cancel that `cnspr pair` first",
            ));
        }
        *busy = true;
    }
    let ep = pairing::listen(&d.identity, "[::]:0".parse().expect("literal"))
        .or_else(|_| pairing::listen(&d.identity, "0.0.0.0:0".parse().expect("literal")));
    let ep = match ep {
        Ok(ep) => ep,
        Err(e) => {
            *d.pairing_open.lock().unwrap_or_else(|p| p.into_inner()) = false;
            return Err(err(
                code::INTERNAL,
                format!("cannot open the pairing port: {e}"),
            ));
        }
    };
    let port = ep.local_addr().map_or(0, |a| a.port());
    let code_shown = new_code();
    let digits = normalize_code(&code_shown).expect("generated codes are valid");
    let mut addresses: Vec<String> = Vec::new();
    if let Some(w) = d
        .netwatch
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
    {
        for ip in w.addresses() {
            addresses.push(SocketAddr::new(ip, port).to_string());
        }
    }
    if addresses.is_empty() {
        addresses.push(SocketAddr::from(([127, 0, 0, 1], port)).to_string());
    }
    if let Some(m) = d.mdns.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        if let Err(e) = m.set_pairing(Some(port)) {
            warn!(error = %e, "could not advertise the pairing window by mDNS");
        }
    }
    let info = WindowInfo {
        code: code_shown,
        expires_in_s: lifetime.as_secs(),
        addresses,
        nearby: nearby(d),
    };
    let (done_tx, done_rx) = oneshot::channel();
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let dd = d.clone();
    tokio::spawn(async move {
        let outcome = run_window(&dd, &ep, &digits, lifetime, cancel_rx).await;
        ep.close(0u32.into(), b"pairing window closed");
        if let Some(m) = dd.mdns.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            let _ = m.set_pairing(None);
        }
        *dd.pairing_open.lock().unwrap_or_else(|p| p.into_inner()) = false;
        let _ = done_tx.send(outcome);
    });
    info!(port, "pairing window open");
    Ok(Window {
        info,
        outcome: done_rx,
        cancel: cancel_tx,
    })
}

enum Attempt {
    Paired(Paired),
    WrongCode,
    Aborted(String),
}

async fn run_window(
    d: &Arc<Daemon>,
    ep: &transport::quinn::Endpoint,
    digits: &str,
    lifetime: Duration,
    mut cancel: watch::Receiver<bool>,
) -> Result<Paired, ErrorBody> {
    let deadline = tokio::time::Instant::now() + lifetime;
    let mut failures = 0;
    loop {
        let incoming = tokio::select! {
            i = ep.accept() => i,
            _ = tokio::time::sleep_until(deadline) => {
                return Err(err(code::TIMEOUT, "the pairing window expired before another device entered the code"));
            }
            _ = cancel.wait_for(|c| *c) => {
                return Err(err(code::CANCELLED, "pairing cancelled"));
            }
        };
        let Some(incoming) = incoming else {
            return Err(err(code::INTERNAL, "the pairing port closed"));
        };
        let attempt =
            tokio::time::timeout(ATTEMPT_TIMEOUT, window_attempt(d, incoming, digits)).await;
        match attempt {
            Ok(Attempt::Paired(p)) => return Ok(p),
            Ok(Attempt::WrongCode) => {
                failures += 1;
                warn!(failures, "pairing attempt with a wrong code");
                if failures >= MAX_FAILURES {
                    return Err(err(
                        code::WRONG_CODE,
                        format!("{MAX_FAILURES} attempts with a wrong code: the pairing window is closed; run `cnspr pair` again for a new code"),
                    ));
                }
            }
            Ok(Attempt::Aborted(why)) => info!(reason = %why, "pairing attempt abandoned"),
            Err(_) => info!("pairing attempt timed out"),
        }
    }
}

async fn window_attempt(
    d: &Arc<Daemon>,
    incoming: transport::quinn::Incoming,
    digits: &str,
) -> Attempt {
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => return Attempt::Aborted(format!("handshake: {e}")),
    };
    let (Some(joiner), Some(cb)) = (pairing::peer_id(&conn), pairing::channel_binding(&conn))
    else {
        return Attempt::Aborted("no device certificate".into());
    };
    let remote = conn.remote_address();
    let Ok((mut send, mut recv)) = conn.accept_bi().await else {
        return Attempt::Aborted("no stream".into());
    };
    let start = match read_frame::<PairMsg, _>(&mut recv, MAX_CONTROL_FRAME).await {
        Ok(Some(m)) => m,
        _ => return Attempt::Aborted("no start".into()),
    };
    let PairMsg::Start {
        version,
        name: name_j,
        port: port_j,
        nonce: nonce_j,
        spake: spake_a,
    } = start
    else {
        return Attempt::Aborted("unexpected first message".into());
    };
    let refusal = if version != PAIR_VERSION {
        Some(format!("pairing protocol version {version} is not supported (this device speaks {PAIR_VERSION}); update cnspr"))
    } else if joiner == d.id() {
        Some("a device cannot pair with itself".to_string())
    } else if d.roster().is_removed(&joiner) {
        Some("this device was removed from the mesh and cannot join it again (a new identity is needed: move its state directory away)".to_string())
    } else {
        None
    };
    if let Some(reason) = refusal {
        let _ = write_frame(
            &mut send,
            &PairMsg::Fail {
                reason: reason.clone(),
            },
            MAX_CONTROL_FRAME,
        )
        .await;
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.closed()).await;
        return Attempt::Aborted(reason);
    }
    let name_j = clean_name(&name_j, &joiner);
    let me = d.id();
    let (spake, spake_b) = Spake2::<Ed25519Group>::start_b(
        &Password::new(digits.as_bytes()),
        &SpakeId::new(&joiner.0),
        &SpakeId::new(&me.0),
    );
    let nonce_w = nonce();
    let reply = PairMsg::Reply {
        name: d.identity.name.clone(),
        port: main_port(d),
        nonce: nonce_w,
        spake: spake_b,
    };
    if write_frame(&mut send, &reply, MAX_CONTROL_FRAME)
        .await
        .is_err()
    {
        return Attempt::Aborted("joiner went away".into());
    }
    let key = spake.finish(&spake_a);
    let confirm = match read_frame::<PairMsg, _>(&mut recv, MAX_CONTROL_FRAME).await {
        Ok(Some(PairMsg::Confirm { mac })) => mac,
        _ => return Attempt::Aborted("no confirmation".into()),
    };
    let t = transcript(
        &cb,
        &joiner,
        &me,
        &nonce_j,
        &nonce_w,
        &name_j,
        &d.identity.name,
    );
    let key = match key {
        Ok(k) if mac_ok(&k, LABEL_J, &t, &confirm) => k,
        _ => {
            let _ = write_frame(
                &mut send,
                &PairMsg::Fail {
                    reason: "wrong code".into(),
                },
                MAX_CONTROL_FRAME,
            )
            .await;
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.closed()).await;
            return Attempt::WrongCode;
        }
    };
    // The joiner proved the code over this very TLS session: it becomes a member.
    let mesh_name = d.roster().unique_name(&name_j, &joiner, &d.identity.name);
    let applied = d.members.add(joiner, &mesh_name);
    d.membership_changed(applied, None);
    if port_j != 0 {
        let addr = SocketAddr::new(remote.ip().to_canonical(), port_j);
        if let Some(p) = d.peers().peers.get_mut(&joiner) {
            p.remember(addr);
            p.next_dial = Instant::now();
        }
        d.save_peers();
        super::links::dial_due(d);
    }
    let welcome = PairMsg::Welcome {
        mac: mac(&key, LABEL_W, &t),
        mesh_name: mesh_name.clone(),
        roster: d.roster().snapshot(),
    };
    if write_frame(&mut send, &welcome, MAX_CONTROL_FRAME)
        .await
        .is_err()
    {
        warn!("the joining device went away after proving the code; it is trusted here and will learn the roster when it connects");
    } else {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            read_frame::<PairMsg, _>(&mut recv, 1024),
        )
        .await;
    }
    conn.close(0u32.into(), b"paired");
    if mesh_name != name_j {
        info!(peer = %mesh_name, asked = %name_j, "name taken in the mesh: paired device renamed");
    }
    info!(peer = %mesh_name, id = %joiner.short(), "paired");
    Attempt::Paired(Paired {
        id: joiner.to_string(),
        name: mesh_name,
        self_name: None,
    })
}

/// `cnspr pair CODE`: finds a window (at `addrs`, else by mDNS) and pairs with it.
pub async fn join(
    d: &Arc<Daemon>,
    code: &str,
    addrs: Vec<SocketAddr>,
    timeout: Duration,
) -> Result<Paired, ErrorBody> {
    let digits = normalize_code(code)?;
    let deadline = Instant::now() + timeout;
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut last_error: Option<ErrorBody> = None;
    // Every candidate is dialled at once, and new ones (a window that mDNS reports only
    // now) join the race while earlier dials are still waiting: a window seen earlier
    // that closed since never holds up the others.
    let mut dials = tokio::task::JoinSet::new();
    let mut next_look = Instant::now();
    loop {
        if Instant::now() >= next_look {
            let candidates: Vec<SocketAddr> = if !addrs.is_empty() {
                addrs.clone()
            } else {
                d.nearby
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .flat_map(|n| n.pairing.iter().copied())
                    .collect()
            };
            for addr in candidates {
                if tried.contains(&addr) {
                    continue;
                }
                tried.push(addr);
                let identity = d.identity.clone();
                dials.spawn(async move {
                    let r =
                        tokio::time::timeout(DIAL_TIMEOUT, pairing::dial(&identity, addr)).await;
                    (addr, r)
                });
            }
            next_look = Instant::now() + Duration::from_millis(50);
        }
        if Instant::now() >= deadline {
            return Err(last_error.unwrap_or_else(|| {
                err(
                    code::TIMEOUT,
                    "no pairing window found on the LAN; run `cnspr pair` on a device of the mesh first (or give its address with --addr)",
                )
            }));
        }
        let done = tokio::select! {
            Some(done) = dials.join_next() => done,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                if dials.is_empty() && !addrs.is_empty() {
                    // Explicit addresses: retry them until the deadline (the window may
                    // open late).
                    tried.clear();
                    next_look = Instant::now() + Duration::from_millis(200);
                }
                continue;
            }
        };
        let Ok((addr, dialled)) = done else { continue };
        let conn = match dialled {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                last_error = Some(err(code::UNREACHABLE, e));
                continue;
            }
            Err(_) => {
                last_error = Some(err(code::TIMEOUT, format!("{addr}: no answer")));
                continue;
            }
        };
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        match tokio::time::timeout(
            left.min(ATTEMPT_TIMEOUT),
            join_attempt(d, conn, addr, &digits),
        )
        .await
        {
            Ok(Ok(p)) => return Ok(p),
            Ok(Err(JoinError::Unreachable(e))) => last_error = Some(err(code::UNREACHABLE, e)),
            Ok(Err(JoinError::Refused(e))) if e.code == code::WRONG_CODE => return Err(e),
            Ok(Err(JoinError::Refused(e))) => last_error = Some(e),
            Err(_) => last_error = Some(err(code::TIMEOUT, format!("{addr}: no answer"))),
        }
    }
}

enum JoinError {
    Unreachable(String),
    Refused(ErrorBody),
}

async fn join_attempt(
    d: &Arc<Daemon>,
    conn: transport::quinn::Connection,
    addr: SocketAddr,
    digits: &str,
) -> Result<Paired, JoinError> {
    let (Some(window), Some(cb)) = (pairing::peer_id(&conn), pairing::channel_binding(&conn))
    else {
        return Err(JoinError::Unreachable(format!(
            "{addr}: no device certificate"
        )));
    };
    if window == d.id() {
        return Err(JoinError::Unreachable(
            "that is this device's own window".into(),
        ));
    }
    if d.roster().is_removed(&window) {
        return Err(JoinError::Refused(err(
            code::REMOVED,
            format!("device {window} was removed from this device's mesh; not pairing with it"),
        )));
    }
    let gone = |e: String| JoinError::Unreachable(format!("{addr}: {e}"));
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| gone(e.to_string()))?;
    let me = d.id();
    let (spake, spake_a) = Spake2::<Ed25519Group>::start_a(
        &Password::new(digits.as_bytes()),
        &SpakeId::new(&me.0),
        &SpakeId::new(&window.0),
    );
    let nonce_j = nonce();
    let name_j = d.identity.name.clone();
    let start = PairMsg::Start {
        version: PAIR_VERSION,
        name: name_j.clone(),
        port: main_port(d),
        nonce: nonce_j,
        spake: spake_a,
    };
    write_frame(&mut send, &start, MAX_CONTROL_FRAME)
        .await
        .map_err(|e| gone(e.to_string()))?;
    let (name_w, port_w, nonce_w, spake_b) =
        match read_frame::<PairMsg, _>(&mut recv, MAX_CONTROL_FRAME).await {
            Ok(Some(PairMsg::Reply {
                name,
                port,
                nonce,
                spake,
            })) => (name, port, nonce, spake),
            Ok(Some(PairMsg::Fail { reason })) => {
                return Err(JoinError::Refused(err(
                    code::REFUSED,
                    format!("the other device refused: {reason}"),
                )))
            }
            _ => return Err(gone("unexpected answer".into())),
        };
    let name_w = clean_name(&name_w, &window);
    let Ok(key) = spake.finish(&spake_b) else {
        return Err(JoinError::Refused(err(
            code::WRONG_CODE,
            "wrong code (the exchange failed)",
        )));
    };
    let t = transcript(&cb, &me, &window, &nonce_j, &nonce_w, &name_j, &name_w);
    write_frame(
        &mut send,
        &PairMsg::Confirm {
            mac: mac(&key, LABEL_J, &t),
        },
        MAX_CONTROL_FRAME,
    )
    .await
    .map_err(|e| gone(e.to_string()))?;
    let (mac_w, mesh_name, roster) = match read_frame::<PairMsg, _>(&mut recv, MAX_CONTROL_FRAME).await {
        Ok(Some(PairMsg::Welcome {
            mac,
            mesh_name,
            roster,
        })) => (mac, mesh_name, roster),
        Ok(Some(PairMsg::Fail { reason })) if reason == "wrong code" => {
            return Err(JoinError::Refused(err(
                code::WRONG_CODE,
                "wrong code: check the code shown by `cnspr pair` on the other device (three wrong codes close its window)",
            )))
        }
        Ok(Some(PairMsg::Fail { reason })) => {
            return Err(JoinError::Refused(err(code::REFUSED, format!("the other device refused: {reason}"))))
        }
        _ => return Err(gone("the other device went away".into())),
    };
    if !mac_ok(&key, LABEL_W, &t, &mac_w) {
        return Err(JoinError::Refused(err(
            code::WRONG_CODE,
            "the other device could not prove it knows the code: nothing was trusted (someone may be interfering on this network)",
        )));
    }
    // Trust the window's device (signed by us), then the mesh roster it vouches for.
    let applied = d.members.add(window, &name_w);
    d.membership_changed(applied, None);
    if roster.within_limits() {
        let applied = d.members.merge_from(roster, window);
        d.membership_changed(applied, None);
    }
    if port_w != 0 {
        let addr = SocketAddr::new(conn.remote_address().ip().to_canonical(), port_w);
        if let Some(p) = d.peers().peers.get_mut(&window) {
            p.remember(addr);
            p.next_dial = Instant::now();
            p.backoff = Duration::ZERO;
        }
        d.save_peers();
        super::links::dial_due(d);
    }
    let self_name = if transport::identity::validate_name(&mesh_name).is_ok() {
        mesh_name
    } else {
        name_j.clone()
    };
    if self_name != name_j {
        warn!(asked = %name_j, given = %self_name, "the name {name_j} is taken in the mesh: this device is {self_name} there");
        let path = d.paths.state_dir.join(transport::identity::NAME_FILE);
        if let Err(e) = std::fs::write(&path, format!("{self_name}\n")) {
            warn!(error = %e, "could not record the new name");
        }
    }
    let _ = write_frame(&mut send, &PairMsg::Done, MAX_CONTROL_FRAME).await;
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.closed()).await;
    info!(peer = %name_w, id = %window.short(), "paired");
    Ok(Paired {
        id: window.to_string(),
        name: name_w,
        self_name: (self_name != name_j).then_some(self_name),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        for _ in 0..200 {
            let c = new_code();
            assert_eq!(c.len(), CODE_DIGITS + 1);
            assert_eq!(normalize_code(&c).unwrap().len(), CODE_DIGITS);
        }
        assert_eq!(normalize_code("123 456").unwrap(), "123456");
        assert_eq!(normalize_code("123456").unwrap(), "123456");
        for bad in [
            "12345",
            "1234567",
            "12a456",
            "",
            "１２３４５６",
            &"1".repeat(40),
        ] {
            assert!(normalize_code(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn spake_agrees_only_with_the_same_code_and_ids() {
        let (j, w) = ([1u8; 32], [2u8; 32]);
        let run = |code_a: &str, code_b: &str, ids_b: ([u8; 32], [u8; 32])| {
            let (a, ma) = Spake2::<Ed25519Group>::start_a(
                &Password::new(code_a.as_bytes()),
                &SpakeId::new(&j),
                &SpakeId::new(&w),
            );
            let (b, mb) = Spake2::<Ed25519Group>::start_b(
                &Password::new(code_b.as_bytes()),
                &SpakeId::new(&ids_b.0),
                &SpakeId::new(&ids_b.1),
            );
            a.finish(&mb).unwrap() == b.finish(&ma).unwrap()
        };
        assert!(run("123456", "123456", (j, w)));
        assert!(!run("123456", "123457", (j, w)));
        // A machine in the middle with its own certificate: the IDs differ.
        assert!(!run("123456", "123456", ([9u8; 32], w)));
    }
}
