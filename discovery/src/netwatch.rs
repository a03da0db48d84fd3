//! [`NetWatcher`]: the host's usable addresses, followed through rtnetlink notifications.
//!
//! [`NetState`] is the pure part (netlink facts in, usable address set out); the
//! `cnspr-netwatch` thread feeds it from a netlink socket subscribed to the link, IPv4
//! address and IPv6 address groups, and turns set differences into [`NetEvent`]s.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{LinkFlags, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use tokio::sync::mpsc;

use crate::types::{DiscoveryError, NetEvent};

/// Capacity of the event channel returned by [`NetWatcher::start`].
pub const NET_EVENT_CHANNEL_CAPACITY: usize = 256;

const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
/// How often the thread looks at its stop flag while no notification arrives (each look
/// is a wake-up of an otherwise idle daemon; a dropped watcher's thread only lingers).
const STOP_CHECK: Duration = Duration::from_secs(60);
const RECV_BUF: usize = 64 * 1024;

/// Facts about links and addresses, as reported by the kernel.
#[derive(Debug, Default, Clone)]
pub(crate) struct NetState {
    /// ifindex -> (up and running, loopback).
    links: HashMap<u32, (bool, bool)>,
    /// (ifindex, address) -> ready (not tentative, not duplicate).
    addrs: HashMap<(u32, IpAddr), bool>,
}

impl NetState {
    pub(crate) fn link(&mut self, index: u32, running: bool, loopback: bool) {
        self.links.insert(index, (running, loopback));
    }

    pub(crate) fn del_link(&mut self, index: u32) {
        self.links.remove(&index);
        self.addrs.retain(|(i, _), _| *i != index);
    }

    pub(crate) fn addr(&mut self, index: u32, ip: IpAddr, ready: bool) {
        self.addrs.insert((index, ip), ready);
    }

    pub(crate) fn del_addr(&mut self, index: u32, ip: IpAddr) {
        self.addrs.remove(&(index, ip));
    }

    /// Usable addresses (see [`NetEvent`] for the definition).
    pub(crate) fn usable(&self) -> BTreeSet<IpAddr> {
        self.addrs
            .iter()
            .filter(|((index, ip), ready)| {
                **ready
                    && !ip.is_loopback()
                    && !ip.is_unspecified()
                    && matches!(self.links.get(index), Some((true, false)))
            })
            .map(|((_, ip), _)| *ip)
            .collect()
    }

    fn apply(&mut self, msg: &RouteNetlinkMessage) {
        match msg {
            RouteNetlinkMessage::NewLink(m) => {
                let (running, loopback) = link_flags(m);
                self.link(m.header.index, running, loopback);
            }
            RouteNetlinkMessage::DelLink(m) => self.del_link(m.header.index),
            RouteNetlinkMessage::NewAddress(m) => {
                if let Some((ip, ready)) = address(m) {
                    self.addr(m.header.index, ip, ready);
                }
            }
            RouteNetlinkMessage::DelAddress(m) => {
                if let Some((ip, _)) = address(m) {
                    self.del_addr(m.header.index, ip);
                }
            }
            _ => {}
        }
    }
}

/// Events that turn the usable set `old` into `new`: removals, additions, then the
/// `Active`/`Inactive` transition if any.
pub(crate) fn diff(old: &BTreeSet<IpAddr>, new: &BTreeSet<IpAddr>) -> Vec<NetEvent> {
    let mut out: Vec<NetEvent> = old
        .difference(new)
        .map(|ip| NetEvent::AddressRemoved(*ip))
        .collect();
    out.extend(new.difference(old).map(|ip| NetEvent::AddressAdded(*ip)));
    match (old.is_empty(), new.is_empty()) {
        (true, false) => out.push(NetEvent::Active),
        (false, true) => out.push(NetEvent::Inactive),
        _ => {}
    }
    out
}

fn link_flags(m: &LinkMessage) -> (bool, bool) {
    let f = m.header.flags;
    (
        f.contains(LinkFlags::Up) && f.contains(LinkFlags::Running),
        f.contains(LinkFlags::Loopback),
    )
}

fn address(m: &AddressMessage) -> Option<(IpAddr, bool)> {
    let mut flags = AddressFlags::from_bits_truncate(u32::from(m.header.flags.bits()));
    let (mut local, mut addr) = (None, None);
    for attr in &m.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => addr = Some(*ip),
            AddressAttribute::Flags(f) => flags = *f,
            _ => {}
        }
    }
    // For point-to-point IPv4 links IFA_ADDRESS is the peer; IFA_LOCAL is ours.
    let ip = local.or(addr)?;
    let ready = !flags.intersects(AddressFlags::Tentative | AddressFlags::Dadfailed);
    Some((ip, ready))
}

/// Follows the host's usable addresses through netlink (no polling).
///
/// The state at start is read synchronously ([`NetWatcher::is_active`],
/// [`NetWatcher::addresses`] are right as soon as `start` returns); the receiver gets only
/// later changes. Runs one `cnspr-netwatch` thread, which ends within a minute of the
/// watcher being dropped. Needs no async runtime.
#[derive(Debug)]
pub struct NetWatcher {
    usable: Arc<Mutex<BTreeSet<IpAddr>>>,
    stop: Arc<AtomicBool>,
}

impl NetWatcher {
    /// Starts watching; the receiver (bounded, [`NET_EVENT_CHANNEL_CAPACITY`]) gets address
    /// changes and `Active`/`Inactive` transitions. Keep draining it: while it is full the
    /// watcher thread waits.
    pub fn start() -> Result<(NetWatcher, mpsc::Receiver<NetEvent>), DiscoveryError> {
        let mut events = Socket::new(NETLINK_ROUTE).map_err(DiscoveryError::Netlink)?;
        events
            .bind(&SocketAddr::new(
                0,
                RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR,
            ))
            .map_err(DiscoveryError::Netlink)?;
        socket2::SockRef::from(&events)
            .set_read_timeout(Some(STOP_CHECK))
            .map_err(DiscoveryError::Netlink)?;
        // Subscribed before the dump, so no change falls between the two.
        let state = dump().map_err(DiscoveryError::Netlink)?;
        let usable = Arc::new(Mutex::new(state.usable()));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel(NET_EVENT_CHANNEL_CAPACITY);
        let (thread_usable, thread_stop) = (usable.clone(), stop.clone());
        thread::Builder::new()
            .name("cnspr-netwatch".into())
            .spawn(move || watch(events, state, thread_usable, thread_stop, tx))
            .map_err(|e| DiscoveryError::Thread("cnspr-netwatch", e))?;
        Ok((NetWatcher { usable, stop }, rx))
    }

    /// True while at least one address is usable.
    pub fn is_active(&self) -> bool {
        !self
            .usable
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// Current usable addresses, sorted.
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.usable
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect()
    }
}

impl Drop for NetWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn watch(
    socket: Socket,
    mut state: NetState,
    usable: Arc<Mutex<BTreeSet<IpAddr>>>,
    stop: Arc<AtomicBool>,
    tx: mpsc::Sender<NetEvent>,
) {
    let mut buf = Vec::with_capacity(RECV_BUF);
    let mut current = state.usable();
    let mut receiver_open = true;
    while !stop.load(Ordering::Relaxed) {
        buf.clear();
        match socket.recv(&mut buf, 0) {
            Ok(_) => {
                for msg in parse(&buf) {
                    state.apply(&msg);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // ENOBUFS: notifications were dropped; read the whole state again.
                tracing::debug!("netlink: {e}; reading the interface state again");
                match dump() {
                    Ok(fresh) => state = fresh,
                    Err(e) => {
                        tracing::warn!("netlink: cannot read interface state: {e}; network changes are no longer followed");
                        return;
                    }
                }
            }
        }
        let next = state.usable();
        if next == current {
            continue;
        }
        let events = diff(&current, &next);
        *usable.lock().unwrap_or_else(PoisonError::into_inner) = next.clone();
        current = next;
        for event in events {
            tracing::debug!(?event, "netlink");
            if receiver_open && tx.blocking_send(event).is_err() {
                receiver_open = false; // keep the state fresh for is_active()/addresses()
            }
        }
    }
}

/// Reads all links and addresses on a fresh socket.
fn dump() -> io::Result<NetState> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket2::SockRef::from(&socket).set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut state = NetState::default();
    let requests = [
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
    ];
    for (seq, request) in (1u32..).zip(requests) {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(request));
        msg.finalize();
        let mut out = vec![0; msg.buffer_len()];
        msg.serialize(&mut out);
        socket.send(&out, 0)?;
        let mut buf = Vec::with_capacity(RECV_BUF);
        'reply: loop {
            buf.clear();
            socket.recv(&mut buf, 0)?;
            for msg in parse_all(&buf) {
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::InnerMessage(m) => state.apply(&m),
                    NetlinkPayload::Done(_) => break 'reply,
                    NetlinkPayload::Error(e) => {
                        let code = e.code.map_or(0, |c| c.get());
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(state)
}

fn parse(buf: &[u8]) -> impl Iterator<Item = RouteNetlinkMessage> + '_ {
    parse_all(buf).filter_map(|m| match m.payload {
        NetlinkPayload::InnerMessage(inner) => Some(inner),
        _ => None,
    })
}

/// Splits a datagram into netlink messages; a message that does not decode is skipped.
fn parse_all(buf: &[u8]) -> impl Iterator<Item = NetlinkMessage<RouteNetlinkMessage>> + '_ {
    let mut offset = 0;
    std::iter::from_fn(move || loop {
        let rest = buf.get(offset..)?;
        let len = NetlinkBuffer::new_checked(rest).ok()?.length() as usize;
        if len == 0 {
            return None;
        }
        let one = rest.get(..len)?;
        offset += (len + 3) & !3;
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(one) {
            Ok(m) => return Some(m),
            Err(e) => tracing::debug!("netlink: skipping a message: {e}"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn usable_rules() {
        let mut s = NetState::default();
        s.link(1, true, true); // lo
        s.addr(1, ip("127.0.0.1"), true);
        s.addr(1, ip("::1"), true);
        assert!(s.usable().is_empty());
        s.link(2, false, false); // eth0, down
        s.addr(2, ip("10.0.0.2"), true);
        assert!(s.usable().is_empty());
        s.link(2, true, false);
        s.addr(2, ip("fe80::1"), false); // tentative
        assert_eq!(s.usable(), [ip("10.0.0.2")].into());
        s.addr(2, ip("fe80::1"), true);
        assert_eq!(s.usable(), [ip("10.0.0.2"), ip("fe80::1")].into());
        s.del_addr(2, ip("10.0.0.2"));
        assert_eq!(s.usable(), [ip("fe80::1")].into());
        s.del_link(2);
        assert!(s.usable().is_empty());
        assert!(s.addrs.keys().all(|(i, _)| *i == 1));
    }

    #[test]
    fn diff_orders_transitions() {
        let empty = BTreeSet::new();
        let one: BTreeSet<IpAddr> = [ip("10.0.0.2")].into();
        let other: BTreeSet<IpAddr> = [ip("10.0.0.3")].into();
        assert_eq!(
            diff(&empty, &one),
            vec![NetEvent::AddressAdded(ip("10.0.0.2")), NetEvent::Active]
        );
        assert_eq!(
            diff(&one, &empty),
            vec![NetEvent::AddressRemoved(ip("10.0.0.2")), NetEvent::Inactive]
        );
        assert_eq!(
            diff(&one, &other),
            vec![
                NetEvent::AddressRemoved(ip("10.0.0.2")),
                NetEvent::AddressAdded(ip("10.0.0.3"))
            ]
        );
        assert!(diff(&one, &one).is_empty());
    }

    #[test]
    fn parse_garbage() {
        assert_eq!(parse(&[]).count(), 0);
        assert_eq!(parse(&[0xff; 3]).count(), 0);
        // A header claiming more bytes than present.
        let mut bogus = vec![0u8; 16];
        bogus[0] = 200;
        assert_eq!(parse(&bogus).count(), 0);
        // Zero length must not loop forever.
        assert_eq!(parse(&[0u8; 32]).count(), 0);
    }

    /// Reads this host's real state through netlink (no root needed).
    #[test]
    fn dump_reads_loopback() {
        let state = dump().expect("netlink dump");
        assert!(
            state.links.values().any(|(_, loopback)| *loopback),
            "{state:?}"
        );
    }
}
