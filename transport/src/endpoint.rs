//! The quinn endpoint: at most one live, authenticated connection per device pair.
//!
//! A connection counts as up only after the hello round trip on its first stream: in TLS
//! 1.3 a client finishes its handshake before the server has checked the client's
//! certificate, so `connect()` alone proves nothing. Simultaneous dials are resolved the
//! same way on both sides: the connection dialled by the lower device ID wins; between two
//! connections dialled by the same side, the newer one wins.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, info, warn};

use crate::frame::{read_frame, write_frame, MAX_CONTROL_FRAME};
use crate::heartbeat::{LinkKeys, Twin, FEATURE_HEARTBEAT};
use crate::id::DeviceId;
use crate::identity::Identity;
use crate::relay::is_virtual;
use crate::relay::link::RelaySpec;
use crate::relay::socket::{RelaySocket, Relays};
use crate::roster::Roster;
use crate::settings::Side;
pub use crate::settings::{
    close_code, private_path, DownReason, EndpointConfig, HandshakeLimits, TransportError,
};
use crate::socket::bind_udp;
use crate::tls;
use crate::wire::{self, ControlFrame, Hello, StreamKind, PROTOCOL_VERSION};
pub use gate::HandshakeCounters;
use gate::{Admission, Gate, Ticket};

mod accept;
mod dial;
mod gate;
mod large;
mod relays;
mod revocation;

/// Hello feature of a connection dialled because the dialler's address changed under the
/// old one: it replaces the old connection on both sides, whichever side dialled that one.
pub const FEATURE_MOVED: &str = "moved";

/// Hello feature (prefix) of a removed device's appeal to a member that told it it was
/// removed: the signed removal of the device that removed it (see `Roster::set_appeal`).
pub const FEATURE_APPEAL: &str = "appeal=";

/// Connection-level events, in order per peer.
#[derive(Debug, Clone)]
pub enum TransportEvent {
    /// A connection to the peer is up (sent again when a duplicate replaced the old one).
    Up(PeerConn),
    /// The peer has no connection any more.
    Down { peer: DeviceId, reason: DownReason },
}

/// A live, authenticated connection to one peer.
#[derive(Debug, Clone)]
pub struct PeerConn {
    pub peer: DeviceId,
    /// The name the peer gave in its hello.
    pub name: String,
    /// Which side dialled this connection.
    pub dialer: DeviceId,
    pub conn: Connection,
    /// Heartbeat keys, when both sides read heartbeats (see [`crate::heartbeat`]).
    pub heartbeat: Option<Arc<LinkKeys>>,
    /// Where the peer saw this connection come from, as it said in its hello.
    observed: Option<SocketAddr>,
}

impl PeerConn {
    /// Current round-trip time estimate.
    pub fn rtt(&self) -> Duration {
        self.conn.rtt()
    }

    /// The peer's current address (changes under migration).
    pub fn remote_address(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// The address this device's packets came from as the peer saw them when the
    /// connection was set up (its hello's `observed=` feature): behind a NAT, this
    /// device's public address and port towards that peer. `None` when the peer did not
    /// say (an older version) or said something unusable.
    pub fn observed(&self) -> Option<SocketAddr> {
        self.observed
    }

    /// Path, frame and UDP statistics.
    pub fn stats(&self) -> quinn::ConnectionStats {
        self.conn.stats()
    }

    /// Opens a bidirectional stream of `kind` (the two header bytes are already sent).
    pub async fn open(&self, kind: StreamKind) -> Result<(SendStream, RecvStream), TransportError> {
        let (mut send, recv) = self.conn.open_bi().await?;
        send.write_all(&kind.header()).await?;
        Ok((send, recv))
    }
}

/// A stream a peer opened, with its kind read from the header.
#[derive(Debug)]
pub struct IncomingStream {
    pub peer: DeviceId,
    pub kind: StreamKind,
    pub send: SendStream,
    pub recv: RecvStream,
}

struct Inner {
    identity: Arc<Identity>,
    roster: Roster,
    cfg: EndpointConfig,
    /// What connections this endpoint accepts start from; each gets transport settings
    /// for its path ([`large::path_payload`]).
    server: quinn::ServerConfig,
    quinns: Vec<quinn::Endpoint>,
    /// The sockets under `quinns`, to give their receive buffers back when idle.
    sockets: Vec<Arc<large::SplitSocket>>,
    /// The heartbeat socket beside the one QUIC socket (none with several sockets).
    twin: Option<Arc<Twin>>,
    conns: Mutex<HashMap<DeviceId, PeerConn>>,
    /// Bumped at every change of `conns` (see [`Endpoint::generation`]).
    generation: std::sync::atomic::AtomicU64,
    dial_locks: Mutex<HashMap<DeviceId, Arc<tokio::sync::Mutex<()>>>>,
    /// One replacement ([`Endpoint::reconnect`]) at a time per peer.
    move_locks: Mutex<HashMap<DeviceId, Arc<tokio::sync::Mutex<()>>>>,
    events: broadcast::Sender<TransportEvent>,
    incoming_tx: mpsc::Sender<IncomingStream>,
    incoming_rx: Mutex<Option<mpsc::Receiver<IncomingStream>>>,
    /// Relays this device is registered with, shared with the sockets.
    relays: Arc<Relays>,
    /// One task per configured relay (see [`Endpoint::set_relays`]).
    relay_tasks: Mutex<HashMap<RelaySpec, tokio::task::JoinHandle<()>>>,
    /// The incoming handshakes under way, bounded ([`gate`]).
    gate: Arc<Gate>,
}

/// One daemon's QUIC endpoint. Cloning shares it.
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &self.inner.identity.id)
            .field("local", &self.local_addrs())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Collapses `[::]:P` + `0.0.0.0:P` into the dual-stack `[::]:P`.
fn plan_sockets(listen: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in listen {
        let covered = a.is_ipv4()
            && a.ip().is_unspecified()
            && listen.iter().any(|b| {
                b.is_ipv6() && b.ip().is_unspecified() && b.port() == a.port() && a.port() != 0
            });
        if !covered && !out.contains(a) {
            out.push(*a);
        }
    }
    out
}

impl Endpoint {
    /// Binds the configured addresses and starts accepting connections. Must run inside a
    /// tokio runtime.
    pub fn bind(
        identity: Arc<Identity>,
        roster: Roster,
        cfg: EndpointConfig,
    ) -> Result<Self, TransportError> {
        let server_tls = tls::rustls_server_config(&identity, &roster, cfg.provider.clone())?;
        let mut server = quinn::ServerConfig::with_crypto(tls::quic_server(server_tls)?);
        server.transport_config(Arc::new(cfg.transport(Side::Accept, None)?));
        // Connection attempts quinn holds before the accept loop decides about them (it
        // does at once: see `gate`): beyond these, quinn refuses by itself. Without 0-RTT
        // a client sends little before it is answered, so little is buffered for each.
        let limits = cfg.handshakes;
        server
            .max_incoming(limits.max.saturating_mul(4).max(64))
            .incoming_buffer_size(64 * 1024)
            .incoming_buffer_size_total(4 * 1024 * 1024);
        let mut quinns = Vec::new();
        let mut sockets = Vec::new();
        let mut twin = None;
        let planned = plan_sockets(&cfg.listen);
        let mut relays = None;
        for addr in planned.iter().copied() {
            let socket = match bind_udp(addr, cfg.socket_buffer) {
                Ok(s) => s,
                Err(e)
                    if addr.is_ipv6()
                        && addr.ip().is_unspecified()
                        && cfg.listen.iter().any(|a| a.is_ipv4()) =>
                {
                    // No IPv6 on this host: serve the IPv4 wildcard alone.
                    warn!(%addr, error = %e, "IPv6 unavailable, listening on IPv4 only");
                    let v4 = SocketAddr::from(([0, 0, 0, 0], addr.port()));
                    bind_udp(v4, cfg.socket_buffer)
                        .map_err(|source| TransportError::Bind { addr: v4, source })?
                }
                Err(source) => return Err(TransportError::Bind { addr, source }),
            };
            if cfg.heartbeats && planned.len() == 1 {
                match Twin::bind(&socket) {
                    Ok(t) => twin = Some(Arc::new(t)),
                    Err(e) => {
                        warn!(%addr, error = %e, "no heartbeat socket; liveness beats go over QUIC")
                    }
                }
            }
            // Never invite peers to clear QUIC's fixed bit: the heartbeat socket gets the
            // datagrams that have it clear.
            let mut ep_cfg = quinn::EndpointConfig::default();
            ep_cfg.grease_quic_bit(false);
            // Datagrams up to the largest this side takes: path MTU discovery on the
            // peer's side goes no higher than this.
            ep_cfg
                .max_udp_payload_size(cfg.max_udp_payload)
                .map_err(|e| TransportError::Config(format!("max_udp_payload: {e}")))?;
            // Peers behind a relay have virtual addresses of the first socket's family.
            let bound = socket
                .local_addr()
                .map_err(|source| TransportError::Bind { addr, source })?;
            let relays = relays
                .get_or_insert_with(|| Relays::new(bound.is_ipv6(), roster.clone()))
                .clone();
            let runtime = Arc::new(crate::runtime::QuietRuntime);
            let inner = quinn::Runtime::wrap_udp_socket(&*runtime, socket)
                .map_err(|source| TransportError::Bind { addr, source })?;
            let split = large::SplitSocket::new(RelaySocket::new(inner, relays));
            let ep = quinn::Endpoint::new_with_abstract_socket(
                ep_cfg,
                Some(server.clone()),
                split.clone(),
                runtime,
            )
            .map_err(|source| TransportError::Bind { addr, source })?;
            quinns.push(ep);
            sockets.push(split);
        }
        // All slots are allocated at once; a subscriber that lags reads `connections()`.
        let (events, _) = broadcast::channel(128);
        let (incoming_tx, incoming_rx) = mpsc::channel(256);
        let relays = relays.unwrap_or_else(|| Relays::new(true, roster.clone()));
        let ep = Endpoint {
            inner: Arc::new(Inner {
                identity,
                roster,
                cfg,
                server,
                quinns,
                sockets,
                twin,
                conns: Mutex::new(HashMap::new()),
                generation: std::sync::atomic::AtomicU64::new(0),
                dial_locks: Mutex::new(HashMap::new()),
                move_locks: Mutex::new(HashMap::new()),
                events,
                incoming_tx,
                incoming_rx: Mutex::new(Some(incoming_rx)),
                relays,
                relay_tasks: Mutex::new(HashMap::new()),
                gate: Gate::new(limits),
            }),
        };
        for q in &ep.inner.quinns {
            tokio::spawn(ep.clone().accept_loop(q.clone()));
        }
        tokio::spawn(ep.clone().revocation_loop());
        Ok(ep)
    }

    pub fn id(&self) -> DeviceId {
        self.inner.identity.id
    }

    /// Gives the pages of quinn's receive buffers back to the system (for a daemon gone
    /// quiet), see [`large::SplitSocket::release_receive_buffers`].
    pub fn release_receive_buffers(&self) {
        for s in &self.inner.sockets {
            s.release_receive_buffers();
        }
    }

    pub fn identity(&self) -> &Arc<Identity> {
        &self.inner.identity
    }

    pub fn roster(&self) -> &Roster {
        &self.inner.roster
    }

    /// The heartbeat socket, if this endpoint reads heartbeats.
    pub fn twin(&self) -> Option<&Arc<Twin>> {
        self.inner.twin.as_ref()
    }

    /// Heartbeat keys for `conn` when the peer's hello features say it reads heartbeats
    /// and so does this endpoint.
    fn heartbeat_keys(
        &self,
        conn: &Connection,
        features: &[String],
        dialled_here: bool,
    ) -> Option<Arc<LinkKeys>> {
        self.inner.twin.as_ref()?;
        // Heartbeats are plain datagrams: they cannot go through a relay.
        if is_virtual(&conn.remote_address()) {
            return None;
        }
        if !features.iter().any(|f| f == FEATURE_HEARTBEAT) {
            return None;
        }
        LinkKeys::derive(conn, dialled_here).map(Arc::new)
    }

    /// The addresses really bound (ports resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.inner
            .quinns
            .iter()
            .filter_map(|q| q.local_addr().ok())
            .collect()
    }

    /// Connection events. Slow receivers may lag; re-read [`Endpoint::connections`] then.
    pub fn subscribe(&self) -> broadcast::Receiver<TransportEvent> {
        self.inner.events.subscribe()
    }

    /// The streams peers open, once; `None` if already taken.
    pub fn take_incoming(&self) -> Option<mpsc::Receiver<IncomingStream>> {
        lock(&self.inner.incoming_rx).take()
    }

    /// The live connection to `peer`, if any.
    pub fn connection(&self, peer: &DeviceId) -> Option<PeerConn> {
        lock(&self.inner.conns)
            .get(peer)
            .filter(|c| c.conn.close_reason().is_none())
            .cloned()
    }

    /// Where and with which keys to send `peer` a heartbeat (without cloning the whole
    /// connection: this runs every beat).
    pub fn heartbeat_target(&self, peer: &DeviceId) -> Option<(SocketAddr, Arc<LinkKeys>)> {
        let conns = lock(&self.inner.conns);
        let pc = conns.get(peer)?;
        let keys = pc.heartbeat.clone()?;
        Some((pc.conn.remote_address(), keys))
    }

    /// Changes whenever a connection is registered or removed: a caller that keeps the
    /// list of [`Endpoint::connections`] needs a new one only then (read this first).
    /// A connection that is closing stays in the list until it is removed.
    pub fn generation(&self) -> u64 {
        self.inner
            .generation
            .load(std::sync::atomic::Ordering::Acquire)
    }

    fn bump(&self) {
        self.inner
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Has the heartbeat socket's kernel filter let through the heartbeats of the
    /// connections in `conns`, and nothing else (see [`Twin::accept_only`]). Called with
    /// `conns` locked, so the filter follows the changes in their order.
    fn refilter(&self, conns: &HashMap<DeviceId, PeerConn>) {
        let Some(twin) = &self.inner.twin else {
            return;
        };
        let ids: Vec<[u8; 8]> = conns
            .values()
            .filter_map(|pc| Some(pc.heartbeat.as_ref()?.rx_id()))
            .collect();
        if let Err(e) = twin.accept_only(&ids) {
            warn!(error = %e, "cannot update the heartbeat socket's filter");
        }
    }

    /// All live connections.
    pub fn connections(&self) -> Vec<PeerConn> {
        lock(&self.inner.conns)
            .values()
            .filter(|c| c.conn.close_reason().is_none())
            .cloned()
            .collect()
    }

    /// QUIC connections open at the socket level (including ones not yet up or being closed).
    pub fn open_connections(&self) -> usize {
        self.inner.quinns.iter().map(|q| q.open_connections()).sum()
    }

    /// This side's hello on `conn`: what it reads, and where it sees the peer.
    fn our_hello(&self, moved: bool, conn: &Connection) -> Hello {
        let mut features: Vec<String> = [
            moved.then_some(FEATURE_MOVED),
            self.inner.twin.is_some().then_some(FEATURE_HEARTBEAT),
        ]
        .into_iter()
        .flatten()
        .map(String::from)
        .collect();
        // A virtual address (a relayed peer) says nothing about where the peer is.
        if !is_virtual(&conn.remote_address()) {
            features.push(wire::observed_feature(conn.remote_address()));
        }
        Hello {
            version: u16::from(PROTOCOL_VERSION),
            name: self.inner.identity.name.clone(),
            features,
        }
    }

    /// Makes `pc` the peer's connection unless a preferred one exists (`moved`: in any
    /// case); returns the survivor.
    fn register(&self, pc: PeerConn, moved: bool) -> Result<PeerConn, TransportError> {
        let peer = pc.peer;
        let survivor = {
            let mut conns = lock(&self.inner.conns);
            if !self.inner.roster.contains(&peer) {
                pc.conn
                    .close(VarInt::from_u32(close_code::REVOKED), b"not in roster");
                return Err(TransportError::NotInRoster(peer));
            }
            let preferred = self.id().min(peer);
            // A direct connection beats one through a relay, whoever dialled either.
            let relayed = |c: &PeerConn| is_virtual(&c.remote_address());
            let (old_relayed, new_relayed) = (conns.get(&peer).is_some_and(relayed), relayed(&pc));
            match conns.get(&peer) {
                Some(old)
                    if !moved
                        && old.conn.close_reason().is_none()
                        && ((new_relayed && !old_relayed)
                            || (new_relayed == old_relayed
                                && old.dialer == preferred
                                && pc.dialer != preferred)) =>
                {
                    debug!(peer = %peer.short(), "duplicate connection closed, keeping the preferred one");
                    pc.conn
                        .close(VarInt::from_u32(close_code::DUPLICATE), b"duplicate");
                    return Ok(old.clone());
                }
                Some(old) if old_relayed && !new_relayed => {
                    info!(peer = %peer.short(), addr = %pc.remote_address(), "a direct connection replaces the one through the relay");
                    // Streams under way on it finish there; new ones take the direct one.
                    self.retire(old.conn.clone());
                }
                Some(old) if moved => {
                    info!(peer = %peer.short(), addr = %pc.remote_address(), "the peer moved: its new connection replaces the old one");
                    old.conn
                        .close(VarInt::from_u32(close_code::DUPLICATE), b"duplicate");
                }
                Some(old) => {
                    // The two sides dialled each other: both keep the same one. Streams
                    // one side already opened on the other finish there.
                    self.retire(old.conn.clone());
                }
                None => {}
            }
            conns.insert(peer, pc.clone());
            self.bump();
            self.refilter(&conns);
            pc
        };
        info!(peer = %peer.short(), name = %survivor.name, addr = %survivor.remote_address(), "connection up");
        let _ = self.inner.events.send(TransportEvent::Up(survivor.clone()));
        tokio::spawn(self.clone().serve_connection(survivor.clone()));
        Ok(survivor)
    }

    /// Accepts the peer's streams until the connection closes, then reports it down.
    async fn serve_connection(self, pc: PeerConn) {
        let stable = pc.conn.stable_id();
        let reason = loop {
            match pc.conn.accept_bi().await {
                Ok((send, mut recv)) => {
                    let tx = self.inner.incoming_tx.clone();
                    let peer = pc.peer;
                    tokio::spawn(async move {
                        let mut header = [0u8; 2];
                        let read = tokio::time::timeout(
                            Duration::from_secs(5),
                            recv.read_exact(&mut header),
                        )
                        .await;
                        let kind = match read {
                            Ok(Ok(())) if header[1] == PROTOCOL_VERSION => {
                                StreamKind::from_u8(header[0])
                            }
                            _ => None,
                        };
                        match kind {
                            Some(kind) if kind != StreamKind::Hello => {
                                let _ = tx
                                    .send(IncomingStream {
                                        peer,
                                        kind,
                                        send,
                                        recv,
                                    })
                                    .await;
                            }
                            _ => {
                                let mut send = send;
                                let _ = send.reset(VarInt::from_u32(1));
                                let _ = recv.stop(VarInt::from_u32(1));
                            }
                        }
                    });
                }
                Err(e) => break DownReason::from_error(&e),
            }
        };
        let removed = {
            let mut conns = lock(&self.inner.conns);
            match conns.get(&pc.peer) {
                Some(c) if c.conn.stable_id() == stable => {
                    conns.remove(&pc.peer);
                    self.bump();
                    self.refilter(&conns);
                    true
                }
                _ => false,
            }
        };
        if removed {
            info!(peer = %pc.peer.short(), ?reason, "connection down");
            let _ = self.inner.events.send(TransportEvent::Down {
                peer: pc.peer,
                reason,
            });
        }
    }

    /// Closes every connection with `code` (e.g. [`close_code::LEAVING`]) and waits, at most
    /// `wait`, for the peers to receive it.
    pub async fn shutdown(&self, code: u32, reason: &str, wait: Duration) {
        for q in &self.inner.quinns {
            q.close(VarInt::from_u32(code), reason.as_bytes());
        }
        let idle = async {
            for q in &self.inner.quinns {
                q.wait_idle().await;
            }
        };
        let _ = tokio::time::timeout(wait, idle).await;
    }
}

pub use crate::identity::peer_id;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dual_stack_wildcards_collapse() {
        let v: Vec<SocketAddr> = vec![
            "[::]:7373".parse().unwrap(),
            "0.0.0.0:7373".parse().unwrap(),
        ];
        assert_eq!(plan_sockets(&v), vec![v[0]]);
        let w: Vec<SocketAddr> = vec![
            "[::]:7373".parse().unwrap(),
            "0.0.0.0:7374".parse().unwrap(),
        ];
        assert_eq!(plan_sockets(&w), w);
        let x: Vec<SocketAddr> = vec![
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        ];
        assert_eq!(plan_sockets(&x).len(), 1);
    }
}
