//! The thin task that drives the `membership` state machine (see `docs/membership.md`):
//! QUIC links up/down and membership frames from mesh streams go in; the core's sends go
//! out on mesh streams, its state changes become the peer states of docs/api.md (`peers`)
//! (`active`, `suspect`, `indirect` with the relay, `unreachable`, `left`) and the
//! addresses it learns from other members are dialled.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use membership::{Input, Membership, Message, Output, State};
use tracing::{debug, info, warn};
use transport::heartbeat::{key_id, LinkKeys};
use transport::quinn::VarInt;
use transport::{close_code, DeviceId, DownReason, PeerConn};

use super::conn_events::ConnEvent;
use super::context::Daemon;
use super::peers::PeerState;
use super::power;
use super::unanswered::Unanswered;

/// How often the power supply is read (on battery, at each beat: every 20 s).
const POWER_CHECK: Duration = Duration::from_secs(10);
use super::wire::MeshFrame;

/// Runs `f` on the core, then carries out everything it asked for, and has the timer
/// task look at the core's next deadline again.
pub fn step(d: &Daemon, f: impl FnOnce(&mut Membership<DeviceId>, Instant)) {
    run(d, f);
    d.member.wake.notify_one();
}

/// [`step`] for the timer task itself, which looks at the next deadline anyway.
fn run(d: &Daemon, f: impl FnOnce(&mut Membership<DeviceId>, Instant)) {
    let outputs: Vec<Output<DeviceId>> = {
        let mut core = d.member.lock();
        f(&mut core, Instant::now());
        std::iter::from_fn(|| core.poll_output()).collect()
    };
    let mut heartbeats = Vec::new();
    for o in outputs {
        execute(d, o, &mut heartbeats);
    }
    if let (Some(twin), false) = (d.endpoint.twin(), heartbeats.is_empty()) {
        // All of this wake-up's heartbeats in one system call.
        twin.send_all(&heartbeats);
    }
}

fn send_over_quic(d: &Daemon, to: &DeviceId, msg: &Message<DeviceId>) {
    d.mesh.send(to, MeshFrame::Membership(msg.encode()));
}

/// One beat to `peer` over QUIC whatever its link carries beats on: for when a QUIC
/// packet is needed now (a connection this host dialled moves to a new local address
/// only with its next packet from there).
pub fn beat_over_quic(d: &Daemon, peer: &DeviceId) {
    send_over_quic(d, peer, &Message::Beat { digest: None });
}

/// Carries out one output; beats that go as heartbeats are added to `heartbeats`.
fn execute(
    d: &Daemon,
    o: Output<DeviceId>,
    heartbeats: &mut Vec<(std::net::SocketAddr, [u8; transport::heartbeat::LEN])>,
) {
    match o {
        Output::Send { to, mut msg } => {
            if let Message::Beat { digest } = msg {
                if let Some((addr, keys)) = d.endpoint.heartbeat_target(&to) {
                    heartbeats.push((addr, keys.seal(digest)));
                    return;
                }
            }
            // Our own records go out with our seal.
            d.records.seal_outgoing(&d.identity, &mut msg);
            send_over_quic(d, &to, &msg);
        }
        Output::State { peer, view } => {
            let state = match view.state {
                State::Active => PeerState::Active,
                State::Suspect => PeerState::Suspect,
                State::Indirect => PeerState::Indirect,
                State::Unreachable => PeerState::Unreachable,
                State::Left => PeerState::Left,
            };
            let now = Instant::now();
            {
                let mut table = d.peers();
                let Some(p) = table.peers.get_mut(&peer) else {
                    return;
                };
                p.path_rtt = view.rtt;
                for a in view.addrs {
                    let a = crate::addr::canon(a);
                    if !p.addrs.contains(&a) && p.addrs.len() < super::peers::MAX_ADDRS {
                        p.addrs.push(a);
                        if d.endpoint.connection(&peer).is_none() {
                            p.dial.soon(now);
                        }
                    }
                }
                if matches!(state, PeerState::Active | PeerState::Indirect) {
                    p.last_seen = Some(SystemTime::now());
                }
            }
            if d.set_state(peer, state, view.via) {
                super::candidates::nudge_dialled(d);
            }
            if state == PeerState::Indirect {
                d.punches.wake();
            }
            if state == PeerState::Unreachable {
                fall_back_to_relay(d, &peer);
            }
        }
        Output::Deliver { id, .. } => {
            debug!(origin = %id.origin.short(), seq = id.seq, "membership broadcast delivered");
        }
    }
}

pub fn start(d: &Arc<Daemon>) {
    let dd = d.clone();
    let mut rx = d.conn_events.subscribe();
    tokio::spawn(async move {
        for pc in dd.endpoint.connections() {
            link_up(&dd, &pc);
        }
        while let Some(ev) = rx.recv().await {
            match ev {
                ConnEvent::Up(pc) => link_up(&dd, &pc),
                ConnEvent::Down { peer, reason } => {
                    let leaving = matches!(reason, DownReason::Leaving);
                    step(&dd, |c, now| {
                        c.handle_input(Input::LinkDown { peer, leaving }, now)
                    });
                }
                ConnEvent::Resync(conns) => {
                    for pc in conns {
                        link_up(&dd, &pc);
                    }
                }
            }
        }
    });
    let dd = d.clone();
    tokio::spawn(async move {
        let mut last_rtt = Instant::now();
        let mut rx_seen = HashMap::new();
        let mut unanswered = Unanswered::default();
        // The power profile, read again every POWER_CHECK (at a wake-up there anyway).
        let power_dir = power::supply_dir();
        let mut power_read: Option<Instant> = None;
        // The connections, fetched again only when the endpoint's list changed.
        let mut conns: (Option<u64>, Vec<PeerConn>) = (None, Vec::new());
        // A timerfd: one wake-up per deadline (see transport::runtime).
        let mut timer = transport::runtime::Alarm::new(Instant::now());
        loop {
            let next = {
                let mut core = dd.member.lock();
                let now = Instant::now();
                if dd.member.take_queued() {
                    // Woken for outputs a component queued (a roster change reached
                    // the core's member set): carry them out.
                    drop(core);
                    run(&dd, |_, _| {});
                    core = dd.member.lock();
                }
                if core.poll_timeout().is_some_and(|t| t <= now) {
                    drop(core);
                    if power_read.is_none_or(|t| now.saturating_duration_since(t) >= POWER_CHECK) {
                        power_read = Some(now);
                        let gentle = power::gentle(dd.cfg.profile, &power_dir);
                        if gentle != dd.member.lock().is_gentle() {
                            info!(
                                gentle,
                                "power profile: {}",
                                if gentle { "battery" } else { "mains" }
                            );
                            run(&dd, |c, now| c.set_gentle(gentle, now));
                        }
                    }
                    let generation = dd.endpoint.generation();
                    if conns.0 != Some(generation) {
                        conns = (Some(generation), dd.endpoint.connections());
                        // Who may relay packets for us, and we for whom (nobody with
                        // `relay_packets = false`).
                        if dd.cfg.relay_packets {
                            dd.endpoint.relays().set_members(
                                conns.1.iter().map(|pc| (pc.peer, pc.remote_address())),
                            );
                            // Routes through members follow at once (member_relay.rs).
                            dd.punches.wake();
                        }
                    }
                    let conns = &conns.1;
                    let heard = transport_heard(&dd, conns, &mut rx_seen, now);
                    let beats = heartbeats(&dd, conns, now);
                    // Fresh QUIC RTTs, at most once a second, in the same pass.
                    let rtts = (now.saturating_duration_since(last_rtt) >= Duration::from_secs(1))
                        .then(|| {
                            last_rtt = now;
                            conns
                                .iter()
                                .map(|pc| (pc.peer, pc.rtt()))
                                .collect::<Vec<_>>()
                        });
                    run(&dd, |c, now| {
                        // All that the wake-up read, applied before any link is judged.
                        let rtts = rtts
                            .into_iter()
                            .flatten()
                            .map(|(peer, rtt)| Input::Rtt { peer, rtt });
                        let heard = heard
                            .into_iter()
                            .map(|(peer, at)| Input::Heard { peer, at });
                        let beats = beats.into_iter().map(|(peer, at, digest)| Input::Beat {
                            peer,
                            at,
                            digest,
                        });
                        c.handle_inputs(rtts.chain(heard).chain(beats), now);
                        c.handle_timeout(now)
                    });
                    close_silent(&dd, conns, now);
                    close_unanswered(&dd, conns, &mut unanswered, now);
                    core = dd.member.lock();
                }
                core.poll_timeout()
            };
            let at = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            timer.reset(at);
            tokio::select! {
                _ = timer.wait() => {}
                _ = dd.member.wake.notified() => {}
            }
        }
    });
}

/// Which peers' connections received packets since the last call, dated at the last
/// call (the earliest they can have arrived). The beating side learns this way that the
/// other side's QUIC stack acknowledged its beat: the answer costs the other side no
/// application message and no wake-up of its own (see docs/membership.md).
fn transport_heard(
    d: &Daemon,
    conns: &[PeerConn],
    seen: &mut HashMap<DeviceId, (u64, Instant)>,
    now: Instant,
) -> Vec<(DeviceId, Instant)> {
    let mut heard = Vec::new();
    let mut next = HashMap::new();
    // Heartbeat links need no help: both sides beat.
    for pc in conns.iter().filter(|pc| pc.heartbeat.is_none()) {
        let rx = pc.conn.stats().udp_rx.datagrams;
        if let Some((old, at)) = seen.get(&pc.peer) {
            if *old != rx {
                heard.push((pc.peer, *at));
            }
        }
        next.insert(pc.peer, (rx, now));
    }
    *seen = next;
    note_heard(d, heard.iter().map(|(p, at)| (*p, *at)), now);
    heard
}

/// Peers heard from at the given instants: `last_heard` and `last_seen` in the table.
fn note_heard(d: &Daemon, heard: impl Iterator<Item = (DeviceId, Instant)>, now: Instant) {
    let mut heard = heard.peekable();
    if heard.peek().is_none() {
        return;
    }
    let mut table = d.peers();
    let wall = SystemTime::now();
    for (peer, at) in heard {
        if let Some(p) = table.peers.get_mut(&peer) {
            if p.last_heard.is_none_or(|h| h < at) {
                p.last_heard = Some(at);
                p.last_seen = Some(wall - now.saturating_duration_since(at));
            }
        }
    }
}

/// The heartbeats that arrived since the last wake-up (see `transport::heartbeat`),
/// checked against the keys of the live connections: per peer, the newest one's arrival
/// (the kernel's receive timestamp) and digest.
fn heartbeats(
    d: &Daemon,
    conns: &[PeerConn],
    now: Instant,
) -> Vec<(DeviceId, Instant, Option<u64>)> {
    let Some(twin) = d.endpoint.twin() else {
        return Vec::new();
    };
    // A device has a handful of peers: a linear scan beats hashing here.
    let keys: Vec<([u8; 8], &PeerConn, &LinkKeys)> = conns
        .iter()
        .filter_map(|pc| {
            let k = pc.heartbeat.as_deref()?;
            Some((k.rx_id(), pc, k))
        })
        .collect();
    let mut got: Vec<(DeviceId, Instant, Option<u64>)> = Vec::with_capacity(keys.len());
    let (mut ok, mut bad) = (0u64, 0u64);
    twin.drain(now, |pkt, at| {
        let opened = key_id(pkt)
            .and_then(|id| keys.iter().find(|(k, _, _)| *k == id))
            .and_then(|(_, pc, k)| Some((pc.peer, k.open(pkt)?)));
        match opened {
            Some((peer, digest)) => {
                ok += 1;
                // Counters only go up (replays are refused), so the last is the newest.
                match got.iter_mut().find(|(p, _, _)| *p == peer) {
                    Some(g) => *g = (peer, at, digest),
                    None => got.push((peer, at, digest)),
                }
            }
            None => bad += 1,
        }
    });
    twin.stats
        .received
        .fetch_add(ok, std::sync::atomic::Ordering::Relaxed);
    twin.stats
        .rejected
        .fetch_add(bad, std::sync::atomic::Ordering::Relaxed);
    note_heard(d, got.iter().map(|(p, at, _)| (*p, *at)), now);
    got
}

/// Closes the connections whose link has been silent for `idle_timeout_ms` (no
/// heartbeat, no packet): a dead peer's connection goes, and the link supervisor dials
/// again. QUIC's own idle timeout is only a backstop, since heartbeats are not QUIC.
/// A peer the core declared unreachable while its connection is a direct one: with a
/// relay at hand, that connection is closed now (it is dead as far as liveness knows)
/// so that the next dial, through the relay among others, starts at once instead of
/// after the silence timeout.
fn fall_back_to_relay(d: &Daemon, peer: &DeviceId) {
    if d.endpoint.relays().current().is_none() {
        return;
    }
    if let Some(pc) = d.endpoint.connection(peer) {
        if d.endpoint.relay_of(&pc).is_none() {
            info!(peer = %pc.name, "unreachable directly; trying the relay");
            pc.conn.close(
                VarInt::from_u32(close_code::SILENT),
                b"unreachable: trying the relay",
            );
        }
    }
}

fn close_silent(d: &Daemon, conns: &[PeerConn], now: Instant) {
    let limit = Duration::from_millis(d.cfg.idle_timeout_ms);
    let silent: Vec<&PeerConn> = {
        let core = d.member.lock();
        conns
            .iter()
            .filter(|pc| core.silence(&pc.peer, now).is_some_and(|s| s >= limit))
            .collect()
    };
    for pc in silent {
        info!(peer = %pc.name, silent_ms = limit.as_millis() as u64, "nothing heard from the peer; closing its connection");
        pc.conn
            .close(VarInt::from_u32(close_code::SILENT), b"silent");
    }
}

/// Closes the connections that asked for an answer (stream data, a PING) and heard
/// nothing for `idle_timeout_ms` (see `unanswered`): a cut link nobody watches.
fn close_unanswered(d: &Daemon, conns: &[PeerConn], seen: &mut Unanswered, now: Instant) {
    let limit = Duration::from_millis(d.cfg.idle_timeout_ms);
    let counters = conns.iter().map(|pc| {
        let s = pc.conn.stats();
        (
            pc.conn.stable_id(),
            s.udp_rx.datagrams,
            s.frame_tx.stream + s.frame_tx.ping,
        )
    });
    let dead = seen.observe(counters, limit, now);
    for pc in conns
        .iter()
        .filter(|pc| dead.contains(&pc.conn.stable_id()))
    {
        info!(peer = %pc.name, silent_ms = limit.as_millis() as u64, "the peer answers nothing sent to it; closing its connection");
        pc.conn
            .close(VarInt::from_u32(close_code::SILENT), b"unanswered");
    }
}

fn link_up(d: &Arc<Daemon>, pc: &transport::PeerConn) {
    if let Some(m) = d.endpoint.relaying_member(pc) {
        // Passed on packet by packet by a member: no direct link, the peer stays
        // `indirect` through that member (member_relay.rs).
        let via = d.peers().display_name(&m);
        info!(peer = %pc.name, %via, "connection through a member that passes the packets on");
        return;
    }
    let (peer, rtt, addr) = (pc.peer, pc.rtt(), crate::addr::canon(pc.remote_address()));
    // Keys exist only when this endpoint has a heartbeat socket and the peer reads them.
    let datagram = pc.heartbeat.is_some();
    step(d, |c, now| {
        c.add_member(peer);
        c.handle_input(
            Input::LinkUp {
                peer,
                rtt,
                addr: Some(addr),
                datagram,
            },
            now,
        )
    });
}

/// A membership frame from `from`'s mesh stream: its records are taken only with their
/// origin's seal (`record_gate`).
pub fn received(d: &Arc<Daemon>, from: DeviceId, bytes: &[u8]) {
    let me = d.id();
    let known = |o: &DeviceId| *o == me || d.members.is_member(o);
    match d.records.take_frame(from, bytes, Instant::now(), known) {
        Ok(msg) => {
            if let Some(p) = d.peers().peers.get_mut(&from) {
                p.last_seen = Some(SystemTime::now());
                p.last_heard = Some(Instant::now());
            }
            step(d, |c, now| {
                c.handle_input(Input::Message { from, msg }, now)
            });
        }
        Err(e) => warn!(peer = %from.short(), error = %e, "bad membership message ignored"),
    }
}

/// Graceful stop: every member learns `left` now; waits briefly for the sends to go out.
pub async fn leave(d: &Arc<Daemon>) {
    step(d, |c, now| c.leave(now));
    let deadline = Instant::now() + Duration::from_millis(300);
    while !d.mesh.drained() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
