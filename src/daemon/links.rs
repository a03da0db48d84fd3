//! Direct links: dialling trusted peers with backoff, liveness probes, and the peer states
//! that follow from them (`active`, `suspect`, `unreachable`, `left`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tracing::debug;
use transport::frame::{read_frame, write_frame, MAX_CONTROL_FRAME};
use transport::wire::ControlFrame;
use transport::{DownReason, PeerConn, StreamKind};

use super::conn_events::ConnEvent;
use super::context::Daemon;
use super::dial::Dial;
use super::errors::MessageError;
use super::peers::PeerState;
use crate::addr::canon;

/// First retry delay after a failed dial.
/// Supervisor tick.
const TICK: Duration = Duration::from_millis(1000);
/// The supervisor's tick while every peer is connected (it then only notes connections
/// that migrated to a new address).
const IDLE_TICK: Duration = Duration::from_secs(10);
/// The idle tick on battery: a connection going down brings the next tick forward
/// anyway, so the idle tick is only a backstop, and each one wakes the device.
const IDLE_TICK_GENTLE: Duration = Duration::from_secs(120);

pub fn start(d: &Arc<Daemon>) {
    tokio::spawn(transport_events(d.clone(), d.conn_events.subscribe()));
    tokio::spawn(supervise(d.clone(), d.conn_events.subscribe()));
    let (tx, rx) = mpsc::channel(16);
    d.members.appeal_sink(tx);
    tokio::spawn(appeals(d.clone(), rx));
}

/// Takes removed devices' appeals (see `told_removed`): at most one per device every
/// 10 s.
async fn appeals(d: Arc<Daemon>, mut rx: mpsc::Receiver<(transport::DeviceId, String)>) {
    let mut last: HashMap<transport::DeviceId, Instant> = HashMap::new();
    while let Some((from, text)) = rx.recv().await {
        let now = Instant::now();
        if last
            .get(&from)
            .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(10))
        {
            continue;
        }
        if last.len() >= 1024 {
            last.retain(|_, t| now.duration_since(*t) < Duration::from_secs(10));
        }
        last.insert(from, now);
        match d.members.take_appeal(from, &text) {
            Some(applied) => {
                tracing::warn!(peer = %from.short(), "a removed device appealed with the removal of the device that removed it");
                d.membership_changed(applied, None);
            }
            None => {
                tracing::debug!(peer = %from.short(), "an appeal that does not hold was ignored")
            }
        }
    }
}

async fn transport_events(d: Arc<Daemon>, mut rx: mpsc::Receiver<ConnEvent>) {
    while let Some(ev) = rx.recv().await {
        match ev {
            ConnEvent::Up(pc) => on_up(&d, pc),
            ConnEvent::Down { peer, reason } => on_down(&d, peer, reason),
            ConnEvent::Resync(conns) => {
                for pc in conns {
                    on_up(&d, pc);
                }
            }
        }
    }
}

fn on_up(d: &Arc<Daemon>, pc: PeerConn) {
    let remote = canon(pc.remote_address());
    // Through a relay: the address is virtual, worth neither keeping nor announcing.
    let relay = match d.endpoint.relaying_member(&pc) {
        // Relayed by a member: shown by that member's name.
        Some(m) => Some(d.peers().display_name(&m)),
        None => d.endpoint.relay_of(&pc),
    };
    let (seen_first, new_addr, name, state, via) = {
        let mut table = d.peers();
        let Some(p) = table.peers.get_mut(&pc.peer) else {
            return;
        };
        let seen_first = p.last_heard.is_none();
        let new_addr = relay.is_none() && p.remember(remote);
        // The device's own name replaces a placeholder or an old name, unless another
        // member (or this device) has it: then the mesh name (with its suffix) stays.
        let adopt = p.name != pc.name
            && transport::identity::validate_name(&pc.name).is_ok()
            && !pc.name.eq_ignore_ascii_case(&d.identity.name)
            && !d.roster().name_taken(&pc.name, &pc.peer);
        if adopt {
            p.name = pc.name.clone();
        }
        p.addr = relay.is_none().then_some(remote);
        p.relay = relay;
        p.last_heard = Some(Instant::now());
        p.last_seen = Some(SystemTime::now());
        p.rtt = Some(pc.rtt());
        p.dial.connected();
        (seen_first, new_addr, p.name.clone(), p.state, p.via)
    };
    // The same state, maybe by another path (a direct connection replacing one through
    // a relay): `peer.path_changed` when it is.
    let _ = d.set_state(pc.peer, state, via);
    if d.endpoint.relay_of(&pc).is_some() {
        d.punches.wake();
    }
    d.save_peers();
    let applied = d.members.sign_name(pc.peer, &name);
    d.membership_changed(applied, None);
    // The state itself (`active`) comes from the membership core, which hears of the
    // link from the same transport event.
    let remote = (!transport::relay::is_virtual(&remote)).then_some(remote);
    if seen_first {
        d.peer_event("peer.seen", pc.peer, &name, PeerState::Active, remote);
    }
    if new_addr {
        d.peer_event(
            "peer.new_address",
            pc.peer,
            &name,
            PeerState::Active,
            remote,
        );
    }
}

/// Connection bookkeeping; the state (`left`, `indirect`, `suspect`, `unreachable`) is
/// the membership core's decision.
fn on_down(d: &Arc<Daemon>, peer: transport::DeviceId, _reason: DownReason) {
    let indirect = {
        let mut table = d.peers();
        let Some(p) = table.peers.get_mut(&peer) else {
            return;
        };
        p.addr = None;
        p.relay = None;
        p.rtt = None;
        p.dial.lost(Instant::now());
        p.state == PeerState::Indirect
    };
    // A peer already reached through a member (its direct connection died before it
    // closed) is routed through that member and dialled there at once, the member's
    // route beside its direct addresses (`member_relay::update`, run by the punch
    // scheduler). Left to the redial below, it would be dialled at its direct addresses
    // only, whose handshake runs out (3 s) before the member is tried, and its streams
    // would meanwhile be joined by the member. (A peer the core still holds `suspect`
    // when its connection closes gets that redial; when the core says `indirect` while
    // it runs, `member_relay::update` dials through the member beside it.)
    if indirect {
        d.punches.wake();
    }
    // Dial again as soon as the shortest backoff has passed (not at the next tick).
    let d = d.clone();
    tokio::spawn(async move {
        tokio::time::sleep(super::dial::MIN_BACKOFF).await;
        dial_due(&d);
    });
}

/// News of a peer outside the membership protocol (a ping it sent): the connection's
/// bookkeeping here, the liveness evidence to the core, which alone decides the state.
fn heard(d: &Arc<Daemon>, pc: &PeerConn) {
    let now = Instant::now();
    let moved = {
        let mut table = d.peers();
        let Some(p) = table.peers.get_mut(&pc.peer) else {
            return;
        };
        p.last_heard = Some(now);
        p.last_seen = Some(SystemTime::now());
        p.rtt = Some(pc.rtt());
        p.relay.is_none() && p.addr != Some(canon(pc.remote_address()))
    };
    if moved {
        follow_migrations(d, std::slice::from_ref(pc));
    }
    let peer = pc.peer;
    super::membership::step(d, |c, now| {
        c.handle_input(membership::Input::Heard { peer, at: now }, now)
    });
}

fn heard_from(d: &Arc<Daemon>, peer: &transport::DeviceId) {
    if let Some(pc) = d.endpoint.connection(peer) {
        heard(d, &pc);
    }
}

/// Answers pings on a control stream the peer opened.
/// Each ping is also news of the peer: the side that does not probe learns liveness here.
pub async fn serve_control(d: Arc<Daemon>, mut s: transport::IncomingStream) {
    while let Ok(Some(frame)) = read_frame::<ControlFrame, _>(&mut s.recv, MAX_CONTROL_FRAME).await
    {
        if let ControlFrame::Ping { nonce } = frame {
            heard_from(&d, &s.peer);
            if write_frame(
                &mut s.send,
                &ControlFrame::Pong { nonce },
                MAX_CONTROL_FRAME,
            )
            .await
            .is_err()
            {
                return;
            }
        }
    }
}

/// A peer whose connection migrated (it changed address and its packets now come from
/// the new one) is recorded at that address, first in its list: it is where to dial it
/// should the connection drop. Raises `peer.new_address` for an address never seen.
fn follow_migrations(d: &Arc<Daemon>, conns: &[PeerConn]) {
    let mut moved = Vec::new();
    {
        let mut table = d.peers();
        for pc in conns {
            let remote = canon(pc.remote_address());
            let Some(p) = table.peers.get_mut(&pc.peer) else {
                continue;
            };
            if p.addr == Some(remote) || transport::relay::is_virtual(&remote) {
                continue;
            }
            p.addr = Some(remote);
            let new = p.remember(remote);
            moved.push((pc.peer, p.name.clone(), remote, new));
        }
    }
    if moved.is_empty() {
        return;
    }
    d.save_peers();
    for (id, name, addr, new) in moved {
        debug!(peer = %name, %addr, "the peer's connection moved to a new address");
        // Tell the peer where it is seen now (an entry about itself, which older
        // versions skip) and the other members where it is.
        for other in d.mesh.connected() {
            d.mesh.send(
                &other,
                super::wire::MeshFrame::Addrs(vec![(id, vec![addr])]),
            );
        }
        if new {
            d.peer_event("peer.new_address", id, &name, PeerState::Active, Some(addr));
        }
    }
}

/// Dials disconnected peers with exponential backoff (and manual addresses).
async fn supervise(d: Arc<Daemon>, mut events: mpsc::Receiver<ConnEvent>) {
    let max_backoff = Duration::from_millis(d.cfg.max_backoff_ms);
    let mut manual_next: HashMap<SocketAddr, Dial> = HashMap::new();
    // A timerfd (see transport::runtime): one wake-up per tick, none in between. While
    // every peer is connected the tick slows to IDLE_TICK; a connection going down (or
    // up) brings the next one forward.
    let mut tick = transport::runtime::Alarm::new(Instant::now());
    loop {
        tokio::select! {
            _ = tick.wait() => {}
            ev = events.recv() => {
                if ev.is_none() {
                    return;
                }
            }
            // A relay registration came (or went): every peer not connected is worth a
            // dial through it now.
            _ = d.endpoint.relays().changed() => {
                let now = Instant::now();
                for p in d.peers().peers.values_mut() {
                    p.dial.reset(now);
                }
            }
        }
        let now = Instant::now();
        follow_migrations(&d, &d.endpoint.connections());
        dial_due(&d);
        let mut idle = d
            .peers()
            .peers
            .values()
            .all(|p| !dialable(&d, p) || d.endpoint.connection(&p.id).is_some());
        // Manual addresses: dial while no live connection comes from there.
        for addr in &d.manual {
            let served = d
                .endpoint
                .connections()
                .iter()
                .any(|c| canon(c.remote_address()) == *addr)
                || d.peers().peers.values().any(|p| p.addr == Some(*addr));
            let entry = manual_next.entry(*addr).or_insert_with(|| Dial::new(now));
            if served {
                entry.reset(now);
                continue;
            }
            idle = false;
            // The dial's outcome is not waited for: each one counts as failed until a
            // connection from there is served (which resets the schedule).
            if !entry.start(now) {
                continue;
            }
            entry.failed(now, max_backoff);
            let d = d.clone();
            let addr = *addr;
            tokio::spawn(async move {
                if let Err(e) = d.endpoint.connect_addr(addr).await {
                    debug!(%addr, error = %e, "manual address not reachable");
                }
            });
        }
        let wait = match idle {
            false => TICK,
            true if d.member.lock().is_gentle() => IDLE_TICK_GENTLE,
            true => IDLE_TICK,
        };
        tick.reset(now + wait);
    }
}

/// True unless the interface tracker knows the host has no usable address (then a dial
/// could only wait for its handshake timeout, and would hold up the dial that the next
/// address change starts).
fn online(d: &Daemon) -> bool {
    d.netwatch
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .is_none_or(|w| w.is_active())
}

/// Whether there is a way to dial `p`: an address, or a relay this device is registered
/// with.
fn dialable(d: &Daemon, p: &super::peers::Peer) -> bool {
    !p.addrs.is_empty() || !p.heard.is_empty() || d.endpoint.relays().current().is_some()
}

/// Starts a dial to every peer that has no connection, is due (its backoff passed) and
/// has an address or a relay; each failure doubles that peer's backoff.
pub fn dial_due(d: &Arc<Daemon>) {
    if !online(d) {
        return;
    }
    let max_backoff = Duration::from_millis(d.cfg.max_backoff_ms);
    let now = Instant::now();
    let mut dials = Vec::new();
    {
        let mut table = d.peers();
        for p in table.peers.values_mut() {
            if d.endpoint.connection(&p.id).is_some() {
                continue;
            }
            if !dialable(d, p) || !p.dial.start(now) {
                continue;
            }
            dials.push((p.id, p.name.clone(), p.dial_addrs()));
        }
    }
    for (id, name, addrs) in dials {
        debug!(peer = %name, ?addrs, "dialling");
        let d = d.clone();
        tokio::spawn(async move {
            let res = d.endpoint.connect(id, &addrs).await;
            let retry = {
                let mut table = d.peers();
                let Some(p) = table.peers.get_mut(&id) else {
                    return;
                };
                match res {
                    Ok(_) => {
                        p.dial.finished();
                        None
                    }
                    Err(e) => {
                        told_removed(&d, &id, &e);
                        debug!(peer = %p.name, error = %e, "dial failed");
                        p.dial.failed(Instant::now(), max_backoff);
                        Some(p.dial.backoff())
                    }
                }
            };
            // The supervisor may be sleeping its idle tick (this peer was trusted while
            // every other one was connected): come back when the backoff ends.
            if let Some(wait) = retry {
                tokio::time::sleep(wait).await;
                dial_due(&d);
            }
        });
    }
}

/// After a change of this host's addresses: every peer without a connection is dialled
/// now at all its known addresses (learnt from earlier connections, mDNS, gossip or
/// typed), its backoff forgotten; and every connection this host accepted on an address
/// it no longer has is replaced by a fresh one dialled from here. Those are the unicast
/// "I am here" of a host that moved: they reach peers on networks that drop multicast.
/// Connections this host dialled need nothing: their packets leave from the new address
/// and the peer's QUIC migrates them (path validation), streams and all.
pub fn after_address_change(d: &Arc<Daemon>, usable: &[IpAddr]) {
    let now = Instant::now();
    for p in d.peers().peers.values_mut() {
        p.dial.reset(now);
    }
    dial_due(d);
    if usable.is_empty() {
        return;
    }
    let me = d.id();
    for pc in d.endpoint.connections() {
        if pc.dialer == me {
            // Our side of a connection we dialled moves with us once it sends from the new
            // address (QUIC migration). Heartbeats are not QUIC, and an idle link has no
            // QUIC packet to send until its peer turns suspect: one beat over QUIC now.
            super::membership::beat_over_quic(d, &pc.peer);
            continue;
        }
        let stale = pc.dialer != me
            && pc
                .conn
                .local_ip()
                .is_some_and(|ip| !usable.contains(&ip.to_canonical()));
        if !stale {
            continue;
        }
        // Not held back by an ordinary dial of this peer that may be under way (begun
        // while the link was down, perhaps to an address the peer has left, and ended only
        // by its handshake timeout): the endpoint runs the replacement beside it.
        let addrs = {
            let table = d.peers();
            let Some(p) = table.peers.get(&pc.peer) else {
                continue;
            };
            let mut addrs = p.addrs.clone();
            let remote = canon(pc.remote_address());
            if !addrs.contains(&remote) {
                addrs.insert(0, remote);
            }
            addrs
        };
        let d = d.clone();
        tokio::spawn(async move {
            let local = pc.conn.local_ip();
            match d.endpoint.reconnect(&pc, &addrs).await {
                Ok(Some(n)) => {
                    debug!(peer = %pc.peer.short(), ?local, new = ?n.conn.local_ip(), "connection accepted on a vanished address replaced")
                }
                Ok(None) => {
                    debug!(peer = %pc.peer.short(), "connection accepted on a vanished address already replaced")
                }
                Err(e) => {
                    debug!(peer = %pc.peer.short(), error = %e, "could not redial from the new address; the old connection will time out")
                }
            }
        });
    }
}

/// A dial failed with `e`: if a member refused this device with a valid notice of its
/// removal (`removal_notice`), the daemon remembers it (once).
fn told_removed(d: &Daemon, from: &transport::DeviceId, e: &transport::TransportError) {
    let transport::TransportError::Refused { reason, .. } = e else {
        return;
    };
    let Some(n) = super::removal_notice::parse(reason) else {
        return;
    };
    let signer = n.removal.signer_id();
    // Removed by a device this device has itself removed: appeal, with that removal, in
    // the next hello to `from` (it then sees two devices that removed each other).
    if n.removal.id == d.id() && n.removal.well_formed() {
        let appeal = d
            .roster()
            .removal(&signer)
            .and_then(|r| serde_json::to_string(r).ok());
        if let Some(text) = appeal {
            if d.members.appeal(*from, text) {
                tracing::warn!(peer = %from.short(), by = %signer.short(), "told this device was removed by a device it removed: appealing");
            }
            return;
        }
    }
    if !super::removal_notice::checks_out(&n, &d.id(), from, |s| d.members.is_member(s)) {
        tracing::warn!(peer = %from.short(), "a removal notice that does not check out was ignored");
        return;
    }
    let by = d
        .roster()
        .member(&signer)
        .map(|m| m.name.clone())
        .unwrap_or(n.by);
    let mut removed = d.removed.lock().unwrap_or_else(|p| p.into_inner());
    if removed.is_none() {
        tracing::warn!(by = %by, "this device was removed from the mesh");
        let info = crate::api::RemovedInfo {
            by,
            at: n.removal.version / 1000,
        };
        // Kept across restarts: this identity stays removed.
        super::removal_notice::save(&d.paths.state_dir, &info);
        *removed = Some(info);
    }
}

/// One ping on a fresh control stream; the round-trip time when the pong came back.
pub async fn ping_once(pc: &PeerConn, timeout: Duration) -> Result<Duration, MessageError> {
    let exchange = async {
        let (mut send, mut recv) = pc.open(StreamKind::Control).await?;
        let nonce = rand::random::<u64>();
        let start = Instant::now();
        write_frame(&mut send, &ControlFrame::Ping { nonce }, MAX_CONTROL_FRAME).await?;
        loop {
            match read_frame::<ControlFrame, _>(&mut recv, MAX_CONTROL_FRAME).await {
                Ok(Some(ControlFrame::Pong { nonce: n })) if n == nonce => {
                    let _ = send.finish();
                    return Ok(start.elapsed());
                }
                Ok(Some(_)) => continue,
                Ok(None) => return Err(MessageError::StreamClosed),
                Err(e) => return Err(e.into()),
            }
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(MessageError::Timeout),
    }
}
