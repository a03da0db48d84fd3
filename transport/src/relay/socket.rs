//! The daemon's UDP socket as quinn sees it: datagrams to a virtual address go through a
//! relay, relayed datagrams come back from the sender's virtual address.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;

use super::keys::RelayKeys;
use super::member::{self, Members, FORWARD};
use super::{header_id, is_virtual, virtual_addr, HEADER, MARKER, MAX_DATAGRAM};
use crate::id::DeviceId;
use crate::roster::Roster;

mod forward;
mod frames;
pub use frames::take_frames;
use frames::{holds, stride_of};

/// Relayed datagrams waiting for quinn when they came faster than it reads (TCP links).
const MAX_INBOX: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How a registered relay is reached.
#[derive(Debug, Clone)]
pub enum LinkPath {
    /// Datagrams from this socket to the relay's UDP address.
    Udp(SocketAddr),
    /// Frames on a TLS-over-TCP connection (its writer task reads this channel).
    Tcp(mpsc::Sender<Vec<u8>>),
}

/// One relay this device is registered with.
#[derive(Debug, Clone)]
pub struct Link {
    /// The relay as configured (`HOST:PORT`).
    pub label: String,
    pub path: LinkPath,
    /// This device's address as the relay sees it.
    pub observed: SocketAddr,
    /// Tells links of one relay apart (a new registration replaces the old one).
    pub serial: u64,
}

/// Counters shown by `status`.
#[derive(Debug, Default)]
pub struct RelayStats {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    /// Datagrams for a peer that had no relay to go through (lost, like any datagram).
    pub unroutable: AtomicU64,
    /// Datagrams passed on for other members (`member.rs`).
    pub forwarded: AtomicU64,
    /// Relayed datagrams dropped because their sender is no device this endpoint accepts
    /// (see [`Relays::accepts`]), and datagrams from the network with a source address in
    /// the virtual ranges (spoofed).
    pub strangers: AtomicU64,
}

/// What the socket and the endpoint share about relays.
#[derive(Debug)]
pub struct Relays {
    v6: bool,
    /// The endpoint's roster: only its devices' relayed datagrams are taken.
    roster: Roster,
    /// Virtual addresses of the devices that were dialled or sent through a relay (only
    /// devices [`Relays::accepts`] takes: at most the roster and its removed devices).
    names: Mutex<HashMap<SocketAddr, DeviceId>>,
    links: Mutex<Vec<Link>>,
    /// Members connected directly: they may relay for us and we for them.
    members: Mutex<Members>,
    /// Peers reached through a member: that member's ID and address.
    via: Mutex<HashMap<DeviceId, (DeviceId, SocketAddr)>>,
    inbox: Mutex<VecDeque<(SocketAddr, Vec<u8>)>>,
    waker: Mutex<Option<Waker>>,
    /// Why a configured relay has no link now, by label.
    problems: Mutex<HashMap<String, String>>,
    /// Notified when a relay link comes or goes.
    changed: tokio::sync::Notify,
    pub stats: RelayStats,
    /// The relays' keys, derived from their secrets.
    pub keys: Arc<RelayKeys>,
}

impl Relays {
    /// `roster`: the endpoint's (relayed datagrams are taken from its devices only).
    pub fn new(v6: bool, roster: Roster) -> Arc<Relays> {
        Arc::new(Relays {
            v6,
            roster,
            names: Mutex::new(HashMap::new()),
            links: Mutex::new(Vec::new()),
            members: Mutex::new(Members::default()),
            via: Mutex::new(HashMap::new()),
            inbox: Mutex::new(VecDeque::new()),
            waker: Mutex::new(None),
            problems: Mutex::new(HashMap::new()),
            changed: tokio::sync::Notify::new(),
            stats: RelayStats::default(),
            keys: Arc::new(RelayKeys::new()),
        })
    }

    /// Whether relayed datagrams from `id` are taken: the devices the endpoint could
    /// accept a connection from (the roster, and removed devices that are to be told so,
    /// as `InRoster` in `crate::tls`). Others could only make the endpoint remember
    /// their names.
    pub fn accepts(&self, id: &DeviceId) -> bool {
        self.roster.contains(id) || self.roster.notice(id).is_some()
    }

    /// Forgets the virtual addresses and routes of the devices `keep` refuses (removed
    /// from the roster), and routes through such a device.
    pub fn forget(&self, keep: impl Fn(&DeviceId) -> bool) {
        lock(&self.names).retain(|_, id| keep(id));
        lock(&self.via).retain(|peer, (m, _)| keep(peer) && keep(m));
    }

    /// The virtual address of `peer` on this socket (remembered, to send to it).
    pub fn address_of(&self, peer: &DeviceId) -> SocketAddr {
        let addr = virtual_addr(peer, self.v6);
        lock(&self.names).insert(addr, *peer);
        addr
    }

    /// The peer behind a virtual address.
    pub fn peer_at(&self, addr: &SocketAddr) -> Option<DeviceId> {
        lock(&self.names).get(addr).copied()
    }

    /// Adds (or replaces, same label) a registered relay.
    pub fn add_link(&self, link: Link) {
        let mut links = lock(&self.links);
        links.retain(|l| l.label != link.label);
        // Links over UDP first: they are the ones used.
        if matches!(link.path, LinkPath::Udp(_)) {
            links.insert(0, link);
        } else {
            links.push(link);
        }
        drop(links);
        self.changed.notify_waiters();
    }

    /// Waits until a relay link comes or goes.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// Removes the link `serial` of `label`, if it is still the current one.
    pub fn remove_link(&self, label: &str, serial: u64) {
        lock(&self.links).retain(|l| !(l.label == label && l.serial == serial));
        self.changed.notify_waiters();
    }

    /// Records (or clears) why the relay `label` has no link.
    pub fn set_problem(&self, label: &str, problem: Option<String>) {
        let mut p = lock(&self.problems);
        match problem {
            Some(e) => {
                p.insert(label.to_string(), e);
            }
            None => {
                p.remove(label);
            }
        }
    }

    /// Why a relay has no link, by label.
    pub fn problems(&self) -> HashMap<String, String> {
        lock(&self.problems).clone()
    }

    /// Forgets relays that are no longer configured.
    pub fn retain_labels(&self, keep: impl Fn(&str) -> bool) {
        lock(&self.links).retain(|l| keep(&l.label));
        lock(&self.problems).retain(|l, _| keep(l));
    }

    /// The registered relays.
    pub fn links(&self) -> Vec<Link> {
        lock(&self.links).clone()
    }

    /// The relay datagrams go through (none: no relay registered).
    pub fn current(&self) -> Option<Link> {
        lock(&self.links).first().cloned()
    }

    /// The members this device is connected to directly (ID, address of the
    /// connection); virtual addresses are left out.
    ///
    /// The routes through members follow: one whose member now connects from another
    /// address goes there, one whose member is no longer connected directly is
    /// forgotten (its peer's datagrams could not be passed on).
    pub fn set_members(&self, list: impl IntoIterator<Item = (DeviceId, SocketAddr)>) {
        // In the order `set_via` takes the two locks.
        let mut via = lock(&self.via);
        let mut members = lock(&self.members);
        members.set(list);
        via.retain(|_, (m, addr)| match members.addr_of(m) {
            Some(now) => {
                *addr = now;
                true
            }
            None => false,
        });
    }

    /// Sends what goes to `peer`'s virtual address through `member` (which must be a
    /// member connected directly); `None` stops.
    pub fn set_via(&self, peer: DeviceId, member: Option<DeviceId>) {
        let mut via = lock(&self.via);
        match member.and_then(|m| Some((m, lock(&self.members).addr_of(&m)?))) {
            Some(v) if peer != v.0 => {
                via.insert(peer, v);
            }
            _ => {
                via.remove(&peer);
            }
        }
    }

    /// Whether `member` is connected to this device directly (only such a member can
    /// pass packets on for it).
    pub fn is_member(&self, member: &DeviceId) -> bool {
        lock(&self.members).addr_of(member).is_some()
    }

    /// The member `peer`'s relayed datagrams go through, if any.
    pub fn via_of(&self, peer: &DeviceId) -> Option<DeviceId> {
        lock(&self.via).get(peer).map(|v| v.0)
    }

    fn is_relay(&self, addr: &SocketAddr) -> bool {
        let addr = super::canonical(*addr);
        lock(&self.links)
            .iter()
            .any(|l| matches!(l.path, LinkPath::Udp(a) if a == addr))
            || lock(&self.members).at(&addr).is_some()
    }

    /// A datagram relayed by member `relay` came from `sender`: answers go back the same
    /// way, unless another member already carries them.
    fn learn_via(&self, sender: DeviceId, relay: &SocketAddr) {
        let Some(m) = lock(&self.members).at(relay) else {
            return;
        };
        if m != sender {
            lock(&self.via)
                .entry(sender)
                .or_insert((m, super::canonical(*relay)));
        }
    }

    /// A relayed datagram (`MARKER | sender | packet`) from a relay's TCP link, for
    /// quinn; true when it was queued (false: it is not one, its sender is not accepted,
    /// or quinn is too far behind).
    pub fn deliver(&self, frame: &[u8]) -> bool {
        self.take(None, frame) == Some(true)
    }

    /// A relayed datagram that came from `relay` (the address of a relay or of a member
    /// connected directly; `None`: a relay's TCP link): queued for quinn if its sender is
    /// a device [`Relays::accepts`], else dropped and counted. `None` when it is not a
    /// relayed datagram; else whether it was queued.
    fn take(&self, relay: Option<&SocketAddr>, frame: &[u8]) -> Option<bool> {
        let from = header_id(frame)?;
        if !self.accepts(&from) {
            self.stats.strangers.fetch_add(1, Ordering::Relaxed);
            return Some(false);
        }
        if let Some(relay) = relay {
            self.learn_via(from, relay);
        }
        let addr = self.address_of(&from);
        {
            let mut inbox = lock(&self.inbox);
            if inbox.len() >= MAX_INBOX {
                return Some(false);
            }
            inbox.push_back((addr, frame[HEADER..].to_vec()));
        }
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        Some(true)
    }

    /// Turns an entry of relayed datagrams from one sender (GRO puts a burst from the
    /// relay in one entry) into that sender's packets in place: each header goes, the
    /// stride shrinks by its length, and the entry comes from the sender's virtual
    /// address; an entry from a sender that is not accepted is emptied (length 0). False
    /// (nothing changed) when the entry is anything else.
    fn unwrap_in_place(&self, buf: &mut [u8], m: &mut RecvMeta) -> bool {
        let stride = stride_of(m);
        if buf.first() != Some(&MARKER) || !self.is_relay(&m.addr) {
            return false;
        }
        let Some(sender) = member::one_header(buf, m.len, stride, MARKER) else {
            return false;
        };
        if !self.accepts(&sender) {
            self.drop_strangers(m);
            return true;
        }
        let (mut out, mut at, mut count) = (0, 0, 0u64);
        while at < m.len {
            let end = (at + stride).min(m.len);
            buf.copy_within(at + HEADER..end, out);
            out += end - at - HEADER;
            at = end;
            count += 1;
        }
        self.learn_via(sender, &m.addr);
        m.addr = self.address_of(&sender);
        m.len = out;
        m.stride = stride - HEADER;
        m.dst_ip = None;
        self.stats.received.fetch_add(count, Ordering::Relaxed);
        true
    }

    /// Empties the entry `m` (length 0), its datagrams counted as strangers'.
    fn drop_strangers(&self, m: &mut RecvMeta) {
        let count = m.len.div_ceil(stride_of(m).max(1)) as u64;
        self.stats.strangers.fetch_add(count, Ordering::Relaxed);
        m.len = 0;
    }

    /// Wakes quinn's receiving task after [`Relays::deliver`] from elsewhere (TCP).
    pub fn wake(&self) {
        if let Some(w) = lock(&self.waker).take() {
            w.wake();
        }
    }

    /// Fills `bufs`/`meta` from the inbox; returns how many entries it filled.
    fn drain(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> usize {
        let mut inbox = lock(&self.inbox);
        let mut n = 0;
        while n < bufs.len().min(meta.len()) {
            let Some((addr, pkt)) = inbox.pop_front() else {
                break;
            };
            if pkt.len() > bufs[n].len() {
                continue;
            }
            bufs[n][..pkt.len()].copy_from_slice(&pkt);
            meta[n] = RecvMeta {
                addr,
                len: pkt.len(),
                stride: pkt.len(),
                ecn: None,
                dst_ip: None,
            };
            n += 1;
        }
        n
    }
}

/// The wrapped socket (see the module documentation).
#[derive(Debug)]
pub struct RelaySocket {
    inner: Arc<dyn AsyncUdpSocket>,
    relays: Arc<Relays>,
    /// Entries passed on together are copied here ([`member::join`]).
    joined: Mutex<Vec<u8>>,
}

impl RelaySocket {
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, relays: Arc<Relays>) -> Arc<RelaySocket> {
        Arc::new(RelaySocket {
            inner,
            relays,
            joined: Mutex::new(Vec::with_capacity(member::SEND_BYTES)),
        })
    }

    /// Sends what quinn wrote to the virtual address of a peer through the member that
    /// relays for it, else through the current relay.
    fn send_relayed(&self, t: &Transmit<'_>) -> io::Result<()> {
        let Some(peer) = self.relays.peer_at(&t.destination) else {
            self.relays.stats.unroutable.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        let member = lock(&self.relays.via).get(&peer).map(|v| v.1);
        let link = self.relays.current();
        let size = t.segment_size.unwrap_or(t.contents.len()).max(1);
        if HEADER + size > MAX_DATAGRAM {
            // Too large for the path through the relay: lost, like a path MTU probe that
            // is too large.
            return Ok(());
        }
        let count = t.contents.len().div_ceil(size);
        let path = match (member, link) {
            (Some(addr), _) => (FORWARD, LinkPath::Udp(addr)),
            (None, Some(l)) => (MARKER, l.path),
            (None, None) => {
                self.relays.stats.unroutable.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        };
        let frame = |seg: &[u8], out: &mut Vec<u8>| {
            out.push(path.0);
            out.extend_from_slice(&peer.0);
            out.extend_from_slice(seg);
        };
        match &path.1 {
            LinkPath::Udp(relay) => {
                // Every datagram of the transmit in as few system calls as the socket
                // segments (they keep their sizes: all equal, the last maybe shorter).
                let mut buf = Vec::with_capacity((HEADER + size) * count);
                for seg in t.contents.chunks(size) {
                    frame(seg, &mut buf);
                }
                let to = super::socket_form(*relay, self.relays.v6);
                let sent = &self.relays.stats.sent;
                return self.send_segmented(to, HEADER + size, &buf, sent);
            }
            LinkPath::Tcp(tx) => {
                for seg in t.contents.chunks(size) {
                    let mut out = Vec::with_capacity(HEADER + seg.len());
                    frame(seg, &mut out);
                    // A full queue loses the datagram; QUIC's congestion control slows
                    // down.
                    let _ = tx.try_send(out);
                }
            }
        }
        self.relays
            .stats
            .sent
            .fetch_add(count as u64, Ordering::Relaxed);
        Ok(())
    }
}

impl RelaySocket {
    /// One entry received from the network, before quinn sees it: a member's request to
    /// pass datagrams on (rewritten, used up, and returned to be sent), relayed
    /// datagrams (unwrapped, from their sender's virtual address), or the rest. A
    /// datagram straight from the network whose source lies in the virtual ranges is
    /// spoofed (relayed peers get those addresses only here): it is dropped, or it would
    /// pass for a relayed peer's, which the handshake gate counts as validated and as a
    /// source of its own.
    fn screen_entry(&self, buf: &mut [u8], m: &mut RecvMeta) -> Option<member::Pass> {
        if is_virtual(&m.addr) {
            self.relays.drop_strangers(m);
            return None;
        }
        if buf.first() == Some(&FORWARD) {
            return self.forward_target(buf, m);
        }
        self.relays.unwrap_in_place(buf, m);
        None
    }
}

impl AsyncUdpSocket for RelaySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        if is_virtual(&transmit.destination) {
            self.send_relayed(transmit)
        } else {
            self.inner.try_send(transmit)
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let queued = self.relays.drain(bufs, meta);
        if queued > 0 {
            return Poll::Ready(Ok(queued));
        }
        loop {
            *lock(&self.relays.waker) = Some(cx.waker().clone());
            let n = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            let relays = &self.relays;
            // Entries to pass on: where each lies in `bufs`, and where it goes.
            let (mut at, mut passes) = (Vec::new(), Vec::new());
            for i in 0..n {
                if let Some(pass) = self.screen_entry(&mut bufs[i], &mut meta[i]) {
                    at.push(i);
                    passes.push(pass);
                } else if holds(&bufs[i], &meta[i], |b| b == FORWARD) {
                    // Requests mixed with other datagrams (or not to be honoured): one by
                    // one, after the entries before them, so that what goes to one
                    // address keeps its order.
                    self.pass_on(bufs, &at, &passes);
                    at.clear();
                    passes.clear();
                    self.forward_each(&mut bufs[i..=i], &mut meta[i..=i]);
                }
            }
            self.pass_on(bufs, &at, &passes);
            // What is left: relayed datagrams mixed with others, one by one.
            let mut n = take_frames(bufs, meta, n, |from, frame| {
                relays.is_relay(&from) && relays.take(Some(&from), frame).is_some()
            });
            n += relays.drain(&mut bufs[n..], &mut meta[n..]);
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

#[cfg(test)]
mod tests;
