//! Heartbeats: small authenticated liveness datagrams beside QUIC, on the same UDP port,
//! that a daemon reads only when it wakes up anyway.
//!
//! Every QUIC packet that carries data must be acknowledged, and on a LAN at once, so a
//! liveness beat over QUIC costs three wake-ups per link and interval: the beat, its
//! receipt, the acknowledgement back. A heartbeat is not QUIC: nothing answers it, and
//! the kernel hands it to a second socket (the "twin") that is not watched for
//! readiness. A daemon sends its heartbeats and reads the ones that arrived in the same
//! wake-up, so an idle daemon wakes once per interval whatever the number of peers.
//!
//! Routing on one port: the QUIC socket and its twin form a `SO_REUSEPORT` group whose
//! classic BPF program looks at the first byte of the datagram. Every QUIC packet has the
//! fixed bit (`0x40`) set (this endpoint never advertises `grease_quic_bit`, and quinn
//! never clears the bit itself); a heartbeat starts with [`MARKER`], which has it clear.
//!
//! Keys: both sides of a connection derive them from its TLS session with the exporter
//! (RFC 5705, label [`LABEL`]), one key per direction, so a heartbeat proves it comes
//! from the device at the other end of that very connection. A datagram is
//! `MARKER | key id (8) | counter (8) | flags (1) | digest (8) | tag (16)`: the tag is
//! ChaCha20-Poly1305 over the first 26 bytes with the counter as nonce, and a counter not
//! above the last one accepted is a replay and refused.

use std::io;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// Hello feature: this side reads heartbeats (both sides must say it).
pub const FEATURE_HEARTBEAT: &str = "heartbeat";
/// First byte of a heartbeat: QUIC's fixed bit (0x40) clear.
pub const MARKER: u8 = 0x21;
/// Length of a heartbeat datagram.
pub const LEN: usize = 42;
/// TLS exporter label of the heartbeat keys.
pub const LABEL: &[u8] = b"cnspr heartbeat v1";
const HEADER: usize = 26;
const TAG: usize = 16;

/// One direction's key and its public id.
struct DirKey {
    id: [u8; 8],
    key: LessSafeKey,
}

impl DirKey {
    fn new(material: &[u8]) -> Self {
        let mut id = [0u8; 8];
        id.copy_from_slice(&material[32..40]);
        let key = UnboundKey::new(&CHACHA20_POLY1305, &material[..32]).expect("32-byte key");
        DirKey {
            id,
            key: LessSafeKey::new(key),
        }
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// The heartbeat keys of one connection: what this side sends with and what it accepts.
pub struct LinkKeys {
    tx: DirKey,
    rx: DirKey,
    sent: AtomicU64,
    accepted: AtomicU64,
}

impl std::fmt::Debug for LinkKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkKeys").finish_non_exhaustive()
    }
}

impl LinkKeys {
    /// Derives the keys of `conn`; `dialled_here`: this side opened the connection.
    pub fn derive(conn: &quinn::Connection, dialled_here: bool) -> Option<Self> {
        let mut material = [0u8; 80];
        conn.export_keying_material(&mut material, LABEL, b"")
            .ok()?;
        Some(Self::from_material(&material, dialled_here))
    }

    /// Keys from 80 bytes of exporter output: 40 for each direction (key, then id).
    pub fn from_material(material: &[u8; 80], dialled_here: bool) -> Self {
        let from_dialer = DirKey::new(&material[..40]);
        let to_dialer = DirKey::new(&material[40..]);
        let (tx, rx) = if dialled_here {
            (from_dialer, to_dialer)
        } else {
            (to_dialer, from_dialer)
        };
        LinkKeys {
            tx,
            rx,
            sent: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
        }
    }

    /// The id the peer's heartbeats carry.
    pub fn rx_id(&self) -> [u8; 8] {
        self.rx.id
    }

    /// The next heartbeat to send, carrying `digest`.
    pub fn seal(&self, digest: Option<u64>) -> [u8; LEN] {
        let counter = self.sent.fetch_add(1, Ordering::Relaxed) + 1;
        let mut pkt = [0u8; LEN];
        pkt[0] = MARKER;
        pkt[1..9].copy_from_slice(&self.tx.id);
        pkt[9..17].copy_from_slice(&counter.to_be_bytes());
        if let Some(d) = digest {
            pkt[17] = 1;
            pkt[18..26].copy_from_slice(&d.to_be_bytes());
        }
        let (head, tail) = pkt.split_at_mut(HEADER);
        let tag = self
            .tx
            .key
            .seal_in_place_separate_tag(nonce(counter), Aad::from(&*head), &mut [])
            .expect("an empty message seals");
        tail.copy_from_slice(tag.as_ref());
        pkt
    }

    /// Checks a heartbeat meant for these keys (see [`key_id`]): the digest it carries,
    /// or `None` if it is forged, damaged or a replay.
    pub fn open(&self, pkt: &[u8]) -> Option<Option<u64>> {
        if key_id(pkt) != Some(self.rx.id) {
            return None;
        }
        let counter = u64::from_be_bytes(pkt[9..17].try_into().ok()?);
        let flags = pkt[17];
        if flags > 1 || counter <= self.accepted.load(Ordering::Relaxed) {
            return None;
        }
        let mut tag = [0u8; TAG];
        tag.copy_from_slice(&pkt[HEADER..]);
        self.rx
            .key
            .open_in_place(nonce(counter), Aad::from(&pkt[..HEADER]), &mut tag)
            .ok()?;
        self.accepted.fetch_max(counter, Ordering::Relaxed);
        let digest = u64::from_be_bytes(pkt[18..26].try_into().ok()?);
        Some((flags == 1).then_some(digest))
    }
}

/// The key id of a datagram that looks like a heartbeat.
pub fn key_id(pkt: &[u8]) -> Option<[u8; 8]> {
    if pkt.len() != LEN || pkt[0] != MARKER {
        return None;
    }
    pkt[1..9].try_into().ok()
}

/// Counters shown by `status`.
#[derive(Debug, Default)]
pub struct TwinStats {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    /// Datagrams on the twin that were not a valid heartbeat of a live connection.
    pub rejected: AtomicU64,
}

/// The socket that receives heartbeats: bound to the QUIC socket's address, never
/// registered for readiness.
#[derive(Debug)]
pub struct Twin {
    socket: UdpSocket,
    v6: bool,
    pub stats: TwinStats,
    /// When the last [`Twin::drain`] ran: what it reads arrived after that.
    last_drain: Mutex<Option<Instant>>,
}

/// Most datagrams read in one drain (the rest waits, or the kernel drops it).
pub const MAX_DRAIN: usize = 4096;

impl Twin {
    /// Joins `quic` (already bound) in a reuseport group with a new socket that gets
    /// the datagrams whose first byte has QUIC's fixed bit clear. The QUIC socket was
    /// bound alone first, so the port was free; only a socket of this user that also
    /// asks for `SO_REUSEPORT` could join later, and the group's program never hands it
    /// a datagram.
    pub fn bind(quic: &UdpSocket) -> io::Result<Twin> {
        let local = quic.local_addr()?;
        let quic_ref = SockRef::from(quic);
        set_reuse_port(&quic_ref)?;
        let socket = Socket::new(Domain::for_address(local), Type::DGRAM, Some(Protocol::UDP))?;
        if local.is_ipv6() {
            socket.set_only_v6(quic_ref.only_v6()?)?;
        }
        set_reuse_port(&SockRef::from(&socket))?;
        // Before it can receive anything, the socket lets through only the self-test's
        // probe; from then on, only heartbeats of live connections ([`Twin::accept_only`]).
        let mut probe = [0u8; LEN];
        probe[0] = MARKER;
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut probe[1..9])
            .map_err(|_| io::Error::other("no random bytes for the heartbeat self-test"))?;
        let probe_id: [u8; 8] = probe[1..9].try_into().expect("8 bytes");
        filter::attach_filter(&SockRef::from(&socket), MARKER, LEN, &[probe_id])?;
        socket.bind(&local.into())?;
        socket.set_nonblocking(true)?;
        let _ = socket.set_recv_buffer_size(256 * 1024);
        // Receive timestamps: a heartbeat read late is still dated when it came.
        let one: libc::c_int = 1;
        let _ = crate::socket::set_option(&socket, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, &one);
        filter::attach_group_program(&SockRef::from(&socket), MARKER)?;
        let twin = Twin {
            socket: socket.into(),
            v6: local.is_ipv6(),
            stats: TwinStats::default(),
            last_drain: Mutex::new(None),
        };
        twin.self_test(local, &probe)?;
        twin.accept_only(&[])?;
        Ok(twin)
    }

    /// Lets through only heartbeats whose key id is one of `ids` (the peers' ids of the
    /// live connections, [`LinkKeys::rx_id`]): the kernel drops every other datagram that
    /// comes to this socket before it takes room in the receive buffer, so garbage sent
    /// to the port cannot crowd out real heartbeats between two reads. Replaces the
    /// previous list at once; with more than 800 ids, only the length and the marker
    /// are checked.
    pub fn accept_only(&self, ids: &[[u8; 8]]) -> io::Result<()> {
        filter::attach_filter(&SockRef::from(&self.socket), MARKER, LEN, ids)
    }

    /// Sends `probe` to our own port over loopback and expects it on the twin (not on
    /// the QUIC socket): the kernel really routes by the first byte, and the twin's
    /// filter lets a heartbeat of a listed key id through. Without a usable loopback (a
    /// fresh network namespace) there is nothing to test with; the programs are then
    /// trusted.
    fn self_test(&self, local: SocketAddr, probe: &[u8; LEN]) -> io::Result<()> {
        let to: SocketAddr = match local {
            SocketAddr::V4(a) if a.ip().is_unspecified() => {
                SocketAddr::from(([127, 0, 0, 1], a.port()))
            }
            SocketAddr::V6(a) if a.ip().is_unspecified() => {
                SocketAddr::from((Ipv6Addr::LOCALHOST, a.port()))
            }
            other => other,
        };
        let send = |to: SocketAddr| self.socket.send_to(probe, self.target(to));
        let v4_loopback = SocketAddr::from(([127, 0, 0, 1], local.port()));
        if send(to).is_err() && !(to.is_ipv6() && send(v4_loopback).is_ok()) {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_millis(500);
        let mut buf = [0u8; 64];
        loop {
            match self.socket.recv_from(&mut buf) {
                Ok((LEN, _)) if buf[..LEN] == probe[..] => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(io::Error::other(
                            "heartbeat self-test: the kernel did not route the probe to the heartbeat socket",
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The bound address (the QUIC socket's).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Datagrams the kernel dropped on their way to this socket (a full receive buffer),
    /// since it was bound (`SO_MEMINFO`; 0 where the kernel does not say).
    #[allow(unsafe_code)]
    pub fn dropped(&self) -> u64 {
        use std::os::fd::AsRawFd;
        let mut info = [0u32; libc::SK_MEMINFO_DROPS as usize + 1];
        let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `info`, which is live and
        // that large, and sets `len` to what it wrote.
        let rc = unsafe {
            libc::getsockopt(
                self.socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_MEMINFO,
                info.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let drops = libc::SK_MEMINFO_DROPS as usize;
        if rc != 0 || (len as usize) < (drops + 1) * std::mem::size_of::<u32>() {
            return 0;
        }
        u64::from(info[drops])
    }

    /// Sends every `(to, heartbeat)` from the QUIC port, in one system call
    /// (`sendmmsg`). Returns how many went out; a datagram that cannot be sent is
    /// skipped and lost like any datagram.
    #[allow(unsafe_code)]
    pub fn send_all(&self, out: &[(SocketAddr, [u8; LEN])]) -> usize {
        use std::os::fd::AsRawFd;
        let addrs: Vec<socket2::SockAddr> =
            out.iter().map(|(to, _)| self.target(*to).into()).collect();
        let mut iovs: Vec<libc::iovec> = out
            .iter()
            .map(|(_, pkt)| libc::iovec {
                iov_base: pkt.as_ptr() as *mut libc::c_void,
                iov_len: pkt.len(),
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = addrs
            .iter()
            .zip(iovs.iter_mut())
            .map(|(a, iov)| message(iov, Some(a)))
            .collect();
        // `done`: handed to the kernel or skipped; `sent`: handed to the kernel.
        let (mut done, mut sent) = (0, 0);
        while done < msgs.len() {
            let rest = &mut msgs[done..];
            // SAFETY: `rest` is a live slice of initialised headers whose pointers stay
            // valid for the call (see above).
            let n = unsafe {
                libc::sendmmsg(
                    self.socket.as_raw_fd(),
                    rest.as_mut_ptr(),
                    rest.len().min(1024) as libc::c_uint,
                    libc::MSG_NOSIGNAL,
                )
            };
            if n <= 0 {
                // The first remaining one failed (unreachable, no buffer): skip it.
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                done += 1;
                continue;
            }
            self.stats.sent.fetch_add(n as u64, Ordering::Relaxed);
            done += n as usize;
            sent += n as usize;
        }
        sent
    }

    fn target(&self, to: SocketAddr) -> SocketAddr {
        match to {
            SocketAddr::V4(a) if self.v6 => {
                SocketAddr::V6(SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0))
            }
            other => other,
        }
    }

    /// Reads what arrived since the last drain, at most [`MAX_DRAIN`] datagrams (32 per
    /// system call, `recvmmsg`), handing each to `each` with the instant it arrived: the
    /// kernel's receive timestamp, kept between the previous drain and `now` (a datagram
    /// without one, or with one the wall clock moved past, is dated at the previous
    /// drain, the earliest it can have come).
    #[allow(unsafe_code)]
    pub fn drain(&self, now: Instant, mut each: impl FnMut(&[u8], Instant)) {
        use std::os::fd::AsRawFd;
        const BATCH: usize = 32;
        const SIZE: usize = 64;
        // Room for one SCM_TIMESTAMPNS (a timespec), aligned for cmsghdr.
        const CMSG: usize = 64;
        #[repr(C, align(8))]
        struct Control([u8; CMSG]);
        let since = self
            .last_drain
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(now);
        let wall = std::time::SystemTime::now();
        let date = |ts: Option<Duration>| -> Instant {
            let floor = since.unwrap_or(now).min(now);
            let Some(ts) = ts else { return floor };
            let Ok(wall_now) = wall.duration_since(std::time::UNIX_EPOCH) else {
                return floor;
            };
            match wall_now.checked_sub(ts) {
                Some(ago) => now.checked_sub(ago).unwrap_or(floor).clamp(floor, now),
                None => floor,
            }
        };
        let mut bufs = [[0u8; SIZE]; BATCH];
        let mut controls: Vec<Control> = (0..BATCH).map(|_| Control([0; CMSG])).collect();
        let mut read = 0;
        while read < MAX_DRAIN {
            let mut iovs: Vec<libc::iovec> = bufs
                .iter_mut()
                .map(|b| libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: SIZE,
                })
                .collect();
            let mut msgs: Vec<libc::mmsghdr> = iovs
                .iter_mut()
                .zip(controls.iter_mut())
                .map(|(iov, c)| {
                    let mut m = message(iov, None);
                    m.msg_hdr.msg_control = c.0.as_mut_ptr().cast();
                    m.msg_hdr.msg_controllen = CMSG as _;
                    m
                })
                .collect();
            // SAFETY: BATCH initialised headers, each pointing at a live SIZE-byte buffer
            // and a live CMSG-byte control buffer.
            let n = unsafe {
                libc::recvmmsg(
                    self.socket.as_raw_fd(),
                    msgs.as_mut_ptr(),
                    BATCH as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n < 0 {
                match io::Error::last_os_error().kind() {
                    io::ErrorKind::WouldBlock => break,
                    // EINTR, or an ICMP error of an earlier send: read on.
                    _ => {
                        read += 1;
                        continue;
                    }
                }
            }
            let n = n as usize;
            let got: Vec<(usize, bool, Option<Duration>)> = msgs[..n]
                .iter()
                .map(|m| {
                    (
                        m.msg_len as usize,
                        m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
                        // SAFETY: the kernel filled msg_control up to msg_controllen.
                        unsafe { timestamp(&m.msg_hdr) },
                    )
                })
                .collect();
            drop(msgs);
            drop(iovs);
            for (buf, (len, truncated, ts)) in bufs.iter().zip(got) {
                // A truncated datagram is longer than any heartbeat: pass it on as such.
                let len = if truncated { SIZE } else { len.min(SIZE) };
                each(&buf[..len], date(ts));
            }
            read += n;
            if n < BATCH {
                break;
            }
        }
    }
}

/// The receive timestamp (`SCM_TIMESTAMPNS`, wall-clock time) of a received message.
///
/// # Safety
/// `h` must be a header the kernel filled: its control pointer valid for
/// `msg_controllen` bytes.
#[allow(unsafe_code)]
unsafe fn timestamp(h: &libc::msghdr) -> Option<Duration> {
    if h.msg_control.is_null() || h.msg_flags & libc::MSG_CTRUNC != 0 {
        return None;
    }
    let mut c = libc::CMSG_FIRSTHDR(h);
    while !c.is_null() {
        let hdr = &*c;
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_TIMESTAMPNS {
            let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
            return Some(Duration::new(
                u64::try_from(ts.tv_sec).ok()?,
                u32::try_from(ts.tv_nsec).ok()?.min(999_999_999),
            ));
        }
        c = libc::CMSG_NXTHDR(h, c);
    }
    None
}

/// One entry of a `sendmmsg`/`recvmmsg` batch: one buffer, and the address to send to
/// (none when receiving). The pointers it holds are only valid while `iov` and `to` are.
#[allow(unsafe_code)]
fn message(iov: &mut libc::iovec, to: Option<&socket2::SockAddr>) -> libc::mmsghdr {
    // SAFETY: an all-zero msghdr is valid (no name, no buffers, no control data).
    let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
    if let Some(a) = to {
        h.msg_name = a.as_ptr() as *mut libc::c_void;
        h.msg_namelen = a.len();
    }
    h.msg_iov = iov;
    h.msg_iovlen = 1;
    libc::mmsghdr {
        msg_hdr: h,
        msg_len: 0,
    }
}

fn set_reuse_port(s: &SockRef<'_>) -> io::Result<()> {
    let one: libc::c_int = 1;
    crate::socket::set_option(&**s, libc::SOL_SOCKET, libc::SO_REUSEPORT, &one)
}

mod filter;

#[cfg(test)]
mod tests;
