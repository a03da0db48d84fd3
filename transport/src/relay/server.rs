//! The relay itself (`cnspr relay`): registrations over QUIC and TLS-over-TCP, and the
//! forwarding of relayed datagrams between devices registered with the same mesh tag.
//! It keeps everything in memory, within bounds: at most `max_devices` registrations, a
//! byte rate per device, a short queue per TCP device.

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, UdpPoller};
use rustls::crypto::CryptoProvider;
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::link::{read_tcp, write_tcp};
use super::socket::take_frames;
use super::{
    canonical, check_secret, header_id, relay_identity, same_secret, server_tls, socket_form,
    RelayFrame, HEADER, MAX_CONTROL, TAG_LEN, VERSION,
};
use crate::frame::{read_frame, write_frame};
use crate::id::DeviceId;
use crate::identity::{peer_id, spki_id};
use crate::settings::TransportError;

const STEP_TIMEOUT: Duration = Duration::from_secs(5);
const IDLE: Duration = Duration::from_secs(40);
/// Frames waiting for one TCP device's writer.
const TCP_QUEUE: usize = 128;
/// Handshakes (QUIC or TCP) under way at once beyond the registered devices.
const SPARE_HANDSHAKES: usize = 256;

/// How to run a relay.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// UDP address (QUIC registrations and relayed datagrams).
    pub listen: SocketAddr,
    /// TCP address for networks that drop UDP (`None`: no TCP).
    pub tcp: Option<SocketAddr>,
    pub secret: String,
    /// Most devices registered at once.
    pub max_devices: usize,
    /// Bytes per second one device may send through the relay (0: no limit).
    pub rate: u64,
}

/// Counters of a running relay.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub forwarded: AtomicU64,
    pub forwarded_bytes: AtomicU64,
    /// Datagrams from an address no device is registered at, or for a device not
    /// registered with the sender's tag.
    pub unknown: AtomicU64,
    /// Datagrams over a device's byte rate.
    pub limited: AtomicU64,
    /// Registrations refused.
    pub refused: AtomicU64,
}

enum Path {
    Udp(quinn::Connection),
    Tcp(mpsc::Sender<Vec<u8>>),
}

struct Client {
    tag: [u8; TAG_LEN],
    path: Path,
    serial: u64,
    /// Token bucket: bytes available, refilled at the rate.
    tokens: f64,
    refilled: Instant,
}

struct State {
    secret: String,
    max_devices: usize,
    rate: u64,
    v6: bool,
    clients: Mutex<HashMap<DeviceId, Client>>,
    /// Source address of each device registered over UDP.
    by_addr: Mutex<HashMap<SocketAddr, DeviceId>>,
    socket: OnceLock<Arc<dyn AsyncUdpSocket>>,
    serial: AtomicU64,
    stats: ServerStats,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Forwarded datagrams to one destination, gathered to go out in one system call
/// (UDP segmentation offload: equal sizes, the last one may be shorter).
struct Batch {
    to: Option<SocketAddr>,
    buf: Vec<u8>,
    seg: usize,
    count: usize,
    /// The last datagram was shorter than `seg`: nothing may follow it.
    closed: bool,
    max: usize,
}

/// Most bytes one segmented send carries.
const MAX_BATCH_BYTES: usize = 60_000;

impl Batch {
    fn new(max_segments: usize) -> Batch {
        Batch {
            to: None,
            buf: Vec::with_capacity(MAX_BATCH_BYTES),
            seg: 0,
            count: 0,
            closed: false,
            max: max_segments.max(1),
        }
    }

    /// Adds `frame` with `src` written into its header, for `to`.
    fn push(&mut self, sock: &dyn AsyncUdpSocket, to: SocketAddr, src: &DeviceId, frame: &[u8]) {
        let len = frame.len();
        let fits = self.to == Some(to)
            && !self.closed
            && self.count < self.max
            && len <= self.seg
            && self.buf.len() + len <= MAX_BATCH_BYTES;
        if !fits {
            self.flush(sock);
            self.to = Some(to);
            self.seg = len;
        }
        let start = self.buf.len();
        self.buf.extend_from_slice(frame);
        self.buf[start + 1..start + HEADER].copy_from_slice(&src.0);
        self.count += 1;
        self.closed = len < self.seg;
    }

    fn flush(&mut self, sock: &dyn AsyncUdpSocket) {
        if let (Some(to), true) = (self.to, self.count > 0) {
            let _ = sock.try_send(&Transmit {
                destination: to,
                ecn: None,
                contents: &self.buf,
                segment_size: (self.count > 1).then_some(self.seg),
                src_ip: None,
            });
        }
        self.buf.clear();
        self.count = 0;
        self.closed = false;
        self.to = None;
    }
}

impl State {
    /// A batch for this relay's socket.
    fn batch(&self) -> Batch {
        Batch::new(self.socket.get().map_or(1, |s| s.max_transmit_segments()))
    }

    /// Sends what `batch` gathered.
    fn flush(&self, batch: &mut Batch) {
        if let Some(sock) = self.socket.get() {
            batch.flush(&**sock);
        }
    }

    /// A datagram that came over UDP from `from`.
    fn from_udp(&self, from: SocketAddr, frame: &[u8], batch: &mut Batch) {
        let src = lock(&self.by_addr).get(&canonical(from)).copied();
        match src {
            Some(src) => self.forward(src, frame, batch),
            None => {
                self.stats.unknown.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Passes `frame` (`MARKER | dest | packet`) from `src` to its destination (over UDP
    /// through `batch`, which the caller flushes).
    fn forward(&self, src: DeviceId, frame: &[u8], batch: &mut Batch) {
        let Some(dest) = header_id(frame) else {
            return;
        };
        let mut clients = lock(&self.clients);
        let tag = {
            let Some(s) = clients.get_mut(&src) else {
                self.stats.unknown.fetch_add(1, Ordering::Relaxed);
                return;
            };
            if self.rate > 0 {
                let now = Instant::now();
                let burst = (self.rate as f64 / 4.0).max(1_048_576.0);
                s.tokens = (s.tokens
                    + now.duration_since(s.refilled).as_secs_f64() * self.rate as f64)
                    .min(burst);
                s.refilled = now;
                if s.tokens < frame.len() as f64 {
                    self.stats.limited.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                s.tokens -= frame.len() as f64;
            }
            s.tag
        };
        let Some(d) = clients.get(&dest).filter(|d| d.tag == tag && dest != src) else {
            self.stats.unknown.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match &d.path {
            Path::Udp(conn) => {
                let to = socket_form(conn.remote_address(), self.v6);
                drop(clients);
                if let Some(sock) = self.socket.get() {
                    batch.push(&**sock, to, &src, frame);
                }
            }
            Path::Tcp(tx) => {
                let mut out = frame.to_vec();
                out[1..HEADER].copy_from_slice(&src.0);
                let _ = tx.try_send(out);
            }
        }
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        self.stats
            .forwarded_bytes
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
    }

    /// Checks a registration; the mesh tag when it is accepted.
    fn check(&self, id: &DeviceId, frame: Option<RelayFrame>) -> Result<[u8; TAG_LEN], String> {
        let Some(RelayFrame::Register {
            version,
            secret,
            tag,
        }) = frame
        else {
            return Err("expected a registration".into());
        };
        if version != VERSION {
            return Err(format!(
                "relay protocol version {version} is not supported (this relay speaks {VERSION})"
            ));
        }
        if !same_secret(&secret, &self.secret) {
            return Err("wrong relay secret".into());
        }
        let tag: [u8; TAG_LEN] = tag
            .as_slice()
            .try_into()
            .map_err(|_| "a mesh tag has 16 bytes".to_string())?;
        let clients = lock(&self.clients);
        if clients.len() >= self.max_devices && !clients.contains_key(id) {
            return Err("the relay is full".into());
        }
        Ok(tag)
    }

    /// Registers `id`; returns the serial that [`State::unregister`] needs. A
    /// registration over UDP from an address another device was registered at replaces
    /// that one: the address (a NAT's mapping) is the new device's now, and datagrams
    /// from it must not count as the other's.
    fn register(&self, id: DeviceId, tag: [u8; TAG_LEN], path: Path) -> u64 {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        if let Path::Udp(conn) = &path {
            let addr = canonical(conn.remote_address());
            let mut clients = lock(&self.clients);
            let stale: Vec<DeviceId> = clients
                .iter()
                .filter(|(other, c)| {
                    **other != id
                        && matches!(&c.path, Path::Udp(o) if canonical(o.remote_address()) == addr)
                })
                .map(|(other, _)| *other)
                .collect();
            for other in stale {
                if let Some(Client {
                    path: Path::Udp(c), ..
                }) = clients.remove(&other)
                {
                    debug!(stale = %other.short(), device = %id.short(), %addr, "a registration from the same address replaces another device's");
                    c.close(0u32.into(), b"another device registered from this address");
                }
            }
            drop(clients);
            lock(&self.by_addr).insert(addr, id);
        }
        let old = lock(&self.clients).insert(
            id,
            Client {
                tag,
                path,
                serial,
                tokens: 0.0,
                refilled: Instant::now(),
            },
        );
        if let Some(Client {
            path: Path::Udp(c), ..
        }) = old
        {
            c.close(0u32.into(), b"registered again");
        }
        serial
    }

    fn unregister(&self, id: &DeviceId, serial: u64) {
        let mut clients = lock(&self.clients);
        if clients.get(id).is_some_and(|c| c.serial == serial) {
            clients.remove(id);
            lock(&self.by_addr).retain(|_, v| v != id);
        }
    }

    /// Follows devices whose address changed under their QUIC connection (NAT rebinding);
    /// of two at one address, the later registration has it.
    fn refresh_addrs(&self) {
        let mut fresh: HashMap<SocketAddr, (u64, DeviceId)> = HashMap::new();
        for (id, c) in lock(&self.clients).iter() {
            if let Path::Udp(conn) = &c.path {
                let e = fresh
                    .entry(canonical(conn.remote_address()))
                    .or_insert((c.serial, *id));
                if c.serial > e.0 {
                    *e = (c.serial, *id);
                }
            }
        }
        *lock(&self.by_addr) = fresh.into_iter().map(|(a, (_, id))| (a, id)).collect();
    }
}

/// The relay's UDP socket as quinn sees it: relayed datagrams are forwarded on arrival
/// and never reach quinn.
#[derive(Debug)]
struct ServerSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    state: Arc<State>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").finish_non_exhaustive()
    }
}

impl AsyncUdpSocket for ServerSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let n = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            let mut batch = self.state.batch();
            let n = take_frames(bufs, meta, n, |from, frame| {
                self.state.from_udp(from, frame, &mut batch);
                true
            });
            self.state.flush(&mut batch);
            if n > 0 {
                return Poll::Ready(Ok(n));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// A running relay.
pub struct RelayServer {
    state: Arc<State>,
    quinn: quinn::Endpoint,
    id: DeviceId,
    udp: SocketAddr,
    tcp: Option<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for RelayServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayServer")
            .field("udp", &self.udp)
            .field("tcp", &self.tcp)
            .finish()
    }
}

fn config_error(e: impl std::fmt::Display) -> TransportError {
    TransportError::Config(e.to_string())
}

impl RelayServer {
    /// Binds the addresses and starts serving. Must run inside a tokio runtime.
    pub async fn bind(
        cfg: RelayConfig,
        provider: Arc<CryptoProvider>,
    ) -> Result<RelayServer, TransportError> {
        check_secret(&cfg.secret).map_err(TransportError::Config)?;
        let identity = relay_identity(&cfg.secret);
        let tls = server_tls(&identity, provider)?;
        let tls_tcp = Arc::new(tls.clone());
        let mut server = quinn::ServerConfig::with_crypto(crate::tls::quic_server(tls)?);
        let mut t = quinn::TransportConfig::default();
        t.max_idle_timeout(quinn::IdleTimeout::try_from(IDLE).ok());
        t.max_concurrent_bidi_streams(1u32.into());
        t.max_concurrent_uni_streams(0u32.into());
        t.stream_receive_window(quinn::VarInt::from_u32(8192));
        t.receive_window(quinn::VarInt::from_u32(16384));
        t.send_window(16384);
        t.datagram_receive_buffer_size(None);
        server.transport_config(Arc::new(t));
        let std_socket =
            crate::socket::bind_udp(cfg.listen, 8 * 1024 * 1024).map_err(|source| {
                TransportError::Bind {
                    addr: cfg.listen,
                    source,
                }
            })?;
        let udp = std_socket.local_addr().map_err(config_error)?;
        let inner = quinn::TokioRuntime
            .wrap_udp_socket(std_socket)
            .map_err(config_error)?;
        let state = Arc::new(State {
            secret: cfg.secret.clone(),
            max_devices: cfg.max_devices.max(1),
            rate: cfg.rate,
            v6: udp.is_ipv6(),
            clients: Mutex::new(HashMap::new()),
            by_addr: Mutex::new(HashMap::new()),
            socket: OnceLock::new(),
            serial: AtomicU64::new(1),
            stats: ServerStats::default(),
        });
        let _ = state.socket.set(inner.clone());
        let socket = Arc::new(ServerSocket {
            inner,
            state: state.clone(),
        });
        let mut ep_cfg = quinn::EndpointConfig::default();
        ep_cfg.grease_quic_bit(false);
        let quinn = quinn::Endpoint::new_with_abstract_socket(
            ep_cfg,
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(config_error)?;
        let mut tasks = vec![tokio::spawn(accept_quic(state.clone(), quinn.clone()))];
        let tcp = match cfg.tcp {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| TransportError::Bind { addr, source })?;
                let local = listener.local_addr().map_err(config_error)?;
                tasks.push(tokio::spawn(accept_tcp(state.clone(), listener, tls_tcp)));
                Some(local)
            }
            None => None,
        };
        let st = state.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                st.refresh_addrs();
            }
        }));
        info!(%udp, ?tcp, id = %identity.id, "relay listening");
        Ok(RelayServer {
            state,
            quinn,
            id: identity.id,
            udp,
            tcp,
            tasks,
        })
    }

    pub fn udp_addr(&self) -> SocketAddr {
        self.udp
    }

    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp
    }

    /// The relay's key, as devices pin it.
    pub fn id(&self) -> DeviceId {
        self.id
    }

    /// Devices registered now.
    pub fn devices(&self) -> usize {
        lock(&self.state.clients).len()
    }

    pub fn stats(&self) -> &ServerStats {
        &self.state.stats
    }

    /// Stops serving: registrations end, devices are told.
    pub async fn close(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.quinn.close(0u32.into(), b"relay stopping");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.quinn.wait_idle()).await;
    }
}

async fn accept_quic(state: Arc<State>, q: quinn::Endpoint) {
    while let Some(incoming) = q.accept().await {
        if q.open_connections() > state.max_devices + SPARE_HANDSHAKES {
            incoming.refuse();
            continue;
        }
        let state = state.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            if let Err(e) = serve_quic(state, incoming).await {
                debug!(%remote, error = %e, "relay registration failed");
            }
        });
    }
}

async fn serve_quic(state: Arc<State>, incoming: quinn::Incoming) -> Result<(), String> {
    let conn = tokio::time::timeout(STEP_TIMEOUT, incoming.accept().map_err(|e| e.to_string())?)
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let id = peer_id(&conn).ok_or("no certificate")?;
    let (mut send, mut recv) = tokio::time::timeout(STEP_TIMEOUT, conn.accept_bi())
        .await
        .map_err(|_| "no registration".to_string())?
        .map_err(|e| e.to_string())?;
    let frame = tokio::time::timeout(STEP_TIMEOUT, read_frame(&mut recv, MAX_CONTROL))
        .await
        .map_err(|_| "registration timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let tag = match state.check(&id, frame) {
        Ok(tag) => tag,
        Err(reason) => {
            state.stats.refused.fetch_add(1, Ordering::Relaxed);
            let _ = write_frame(
                &mut send,
                &RelayFrame::Refused {
                    reason: reason.clone(),
                },
                MAX_CONTROL,
            )
            .await;
            let _ = send.finish();
            // The device closes once it has read the answer.
            let _ = tokio::time::timeout(STEP_TIMEOUT, conn.closed()).await;
            conn.close(1u32.into(), reason.as_bytes());
            return Err(reason);
        }
    };
    let observed = canonical(conn.remote_address());
    let serial = state.register(id, tag, Path::Udp(conn.clone()));
    let answer = write_frame(&mut send, &RelayFrame::Registered { observed }, MAX_CONTROL).await;
    let _ = send.finish();
    if answer.is_ok() {
        debug!(device = %id.short(), %observed, "device registered (UDP)");
        conn.closed().await;
    }
    state.unregister(&id, serial);
    Ok(())
}

async fn accept_tcp(
    state: Arc<State>,
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let slots = Arc::new(tokio::sync::Semaphore::new(
        state.max_devices + SPARE_HANDSHAKES,
    ));
    loop {
        let Ok((stream, from)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let (state, acceptor) = (state.clone(), acceptor.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_tcp(state, acceptor, stream, from).await {
                debug!(%from, error = %e, "relay registration over TCP failed");
            }
            drop(permit);
        });
    }
}

async fn serve_tcp(
    state: Arc<State>,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    from: SocketAddr,
) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    let mut tls = tokio::time::timeout(STEP_TIMEOUT, acceptor.accept(stream))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let id = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(spki_id)
        .ok_or("no certificate")?;
    let frame = tokio::time::timeout(STEP_TIMEOUT, read_frame(&mut tls, MAX_CONTROL))
        .await
        .map_err(|_| "registration timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let tag = match state.check(&id, frame) {
        Ok(tag) => tag,
        Err(reason) => {
            state.stats.refused.fetch_add(1, Ordering::Relaxed);
            let _ = write_frame(
                &mut tls,
                &RelayFrame::Refused {
                    reason: reason.clone(),
                },
                MAX_CONTROL,
            )
            .await;
            return Err(reason);
        }
    };
    write_frame(
        &mut tls,
        &RelayFrame::Registered {
            observed: canonical(from),
        },
        MAX_CONTROL,
    )
    .await
    .map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel(TCP_QUEUE);
    let serial = state.register(id, tag, Path::Tcp(tx));
    debug!(device = %id.short(), %from, "device registered (TCP)");
    let (mut rd, wr) = tokio::io::split(tls);
    let writer = tokio::spawn(write_tcp(wr, rx));
    let st = state.clone();
    let mut batch = st.batch();
    read_tcp(&mut rd, |frame| {
        st.forward(id, frame, &mut batch);
        st.flush(&mut batch);
    })
    .await;
    writer.abort();
    state.unregister(&id, serial);
    Ok(())
}
