//! What a running relay knows and does per datagram: the registered devices (by ID and
//! by source address), their byte rates, and the forwarding of relayed datagrams in
//! segmented sends; the relay's UDP socket as quinn sees it.

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;
use tracing::debug;

use super::socket::take_frames;
use super::{canonical, header_id, same_secret, socket_form, RelayFrame, HEADER, TAG_LEN, VERSION};
use crate::id::DeviceId;

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

pub(super) enum Path {
    Udp(quinn::Connection),
    Tcp(mpsc::Sender<Vec<u8>>),
}

pub(super) struct Client {
    tag: [u8; TAG_LEN],
    path: Path,
    serial: u64,
    /// Token bucket: bytes available, refilled at the rate.
    tokens: f64,
    refilled: Instant,
}

pub(super) struct State {
    pub(super) secret: String,
    pub(super) max_devices: usize,
    pub(super) rate: u64,
    v6: bool,
    pub(super) clients: Mutex<HashMap<DeviceId, Client>>,
    /// Source address of each device registered over UDP.
    pub(super) by_addr: Mutex<HashMap<SocketAddr, DeviceId>>,
    pub(super) socket: OnceLock<Arc<dyn AsyncUdpSocket>>,
    pub(super) serial: AtomicU64,
    pub(super) stats: ServerStats,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Forwarded datagrams to one destination, gathered to go out in one system call
/// (UDP segmentation offload: equal sizes, the last one may be shorter).
pub(super) struct Batch {
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
    pub(super) fn batch(&self) -> Batch {
        Batch::new(self.socket.get().map_or(1, |s| s.max_transmit_segments()))
    }

    /// Sends what `batch` gathered.
    pub(super) fn flush(&self, batch: &mut Batch) {
        if let Some(sock) = self.socket.get() {
            batch.flush(&**sock);
        }
    }

    /// A datagram that came over UDP from `from`.
    pub(super) fn udp_datagram(&self, from: SocketAddr, frame: &[u8], batch: &mut Batch) {
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
    pub(super) fn forward(&self, src: DeviceId, frame: &[u8], batch: &mut Batch) {
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
    pub(super) fn check(
        &self,
        id: &DeviceId,
        frame: Option<RelayFrame>,
    ) -> Result<[u8; TAG_LEN], String> {
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
    pub(super) fn register(&self, id: DeviceId, tag: [u8; TAG_LEN], path: Path) -> u64 {
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

    pub(super) fn unregister(&self, id: &DeviceId, serial: u64) {
        let mut clients = lock(&self.clients);
        if clients.get(id).is_some_and(|c| c.serial == serial) {
            clients.remove(id);
            lock(&self.by_addr).retain(|_, v| v != id);
        }
    }

    /// Follows devices whose address changed under their QUIC connection (NAT rebinding);
    /// of two at one address, the later registration has it.
    pub(super) fn refresh_addrs(&self) {
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
pub(super) struct ServerSocket {
    pub(super) inner: Arc<dyn AsyncUdpSocket>,
    pub(super) state: Arc<State>,
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
                self.state.udp_datagram(from, frame, &mut batch);
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

impl State {
    pub(super) fn new(secret: String, max_devices: usize, rate: u64, v6: bool) -> State {
        State {
            secret,
            max_devices,
            rate,
            v6,
            clients: Mutex::new(HashMap::new()),
            by_addr: Mutex::new(HashMap::new()),
            socket: OnceLock::new(),
            serial: AtomicU64::new(1),
            stats: ServerStats::default(),
        }
    }

    /// Devices registered now.
    pub(super) fn devices(&self) -> usize {
        lock(&self.clients).len()
    }
}
