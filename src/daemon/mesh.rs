//! Daemon-to-daemon mesh frames on `StreamKind::Mesh` streams: each side of a connection
//! opens one such stream when the connection comes up and sends its frames on it; the
//! other side reads them. Carries signed roster gossip (below).
//!
//! Roster gossip: on every new connection both sides send their whole signed roster
//! (small: one entry per device), so a member that was offline learns every addition and
//! removal when it comes back. A change (pairing, `trust`, `remove`, or gossip that taught
//! us something) is sent at once to every connected member, which merges it and passes
//! it on only if it learnt something: the flood stops by itself. A member answers a
//! roster that lacks something it has with its own, so both ends converge. What the other
//! side can never hold is not counted as lacking: its own entry (a member keeps no entry
//! about itself) and its own removal. And the same answer is never sent twice on one
//! connection, so no pair of members can bounce rosters back and forth forever.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tracing::{debug, warn};
use transport::frame::{read_frame, write_frame, FrameError, MAX_CONTROL_FRAME};
use transport::{DeviceId, IncomingStream, PeerConn, StreamKind};

use super::conn_events::ConnEvent;
use super::context::Daemon;
use super::roster_gossip::{Admit, Gate};
use super::wire::MeshFrame;

/// Most entries of an `Addrs` frame, and addresses per entry.
const MAX_ADDR_ENTRIES: usize = 1024;
const MAX_ADDRS_EACH: usize = 16;

pub fn start(d: &Arc<Daemon>) {
    let d = d.clone();
    let mut rx = d.conn_events.subscribe();
    tokio::spawn(async move {
        for pc in d.endpoint.connections() {
            open(&d, pc);
        }
        while let Some(ev) = rx.recv().await {
            match ev {
                ConnEvent::Up(pc) => open(&d, pc),
                ConnEvent::Down { .. } => {}
                ConnEvent::Resync(conns) => {
                    let have: HashSet<DeviceId> = d.mesh.connected().into_iter().collect();
                    for pc in conns {
                        if !have.contains(&pc.peer) {
                            open(&d, pc);
                        }
                    }
                }
            }
        }
    });
}

/// Opens our mesh stream on a new connection and greets with the roster.
fn open(d: &Arc<Daemon>, pc: PeerConn) {
    let (tx, mut rx) = mpsc::channel::<MeshFrame>(super::outbox::OUTBOX);
    let conn = pc.conn.stable_id();
    if tx
        .try_send(MeshFrame::Roster(d.roster().wire_snapshot()))
        .is_ok()
    {
        d.mesh.roster_sent.fetch_add(1, Ordering::Relaxed);
    }
    let relays = d.relays.entries();
    if !relays.is_empty() {
        let _ = tx.try_send(MeshFrame::Relays(relays));
    }
    let mut addrs = known_addrs(d, Some(pc.peer));
    let ours = super::candidates::announced(d);
    if !ours.is_empty() {
        addrs.push((d.id(), ours));
    }
    let _ = tx.try_send(MeshFrame::Addrs(addrs));
    if let Some(lan) = super::wake::lan_frame() {
        let _ = tx.try_send(lan);
    }
    d.mesh.attach(pc.peer, conn, tx);
    // Tell the others where this peer is now.
    let here = crate::addr::canon(pc.remote_address());
    for other in d.mesh.connected() {
        // A peer behind a relay has only a virtual address, meaningful here alone.
        if other != pc.peer && !transport::relay::is_virtual(&here) {
            d.mesh
                .send(&other, MeshFrame::Addrs(vec![(pc.peer, vec![here])]));
        }
    }
    let d = d.clone();
    tokio::spawn(async move {
        let peer = pc.peer;
        if let Ok((mut send, _recv)) = pc.open(StreamKind::Mesh).await {
            while let Some(frame) = rx.recv().await {
                if let Err(e) = write_frame(&mut send, &frame, MAX_CONTROL_FRAME).await {
                    debug!(peer = %peer.short(), error = %e, "mesh stream ended");
                    break;
                }
            }
        }
        d.mesh.detach(&peer, conn);
    });
}

/// Reads the frames of a peer's mesh stream.
pub async fn serve(d: Arc<Daemon>, mut s: IncomingStream) {
    loop {
        match read_frame::<MeshFrame, _>(&mut s.recv, MAX_CONTROL_FRAME).await {
            Ok(Some(frame)) => handle(&d, s.peer, frame),
            Ok(None) => return,
            Err(FrameError::Malformed(e)) => {
                // The whole frame was read: a kind this version does not know (a newer
                // peer's), or garbage. Skip it; the stream stays in step.
                debug!(peer = %s.peer.short(), error = %e, "mesh frame not understood; skipped");
            }
            Err(e) => {
                warn!(peer = %s.peer.short(), error = %e, "bad mesh frame; closing that stream");
                let _ = s.send.reset(1u32.into());
                return;
            }
        }
    }
}

/// Tells every connected member where this device may be reached from beyond the LAN
/// (its public interface addresses and mapped port; see `reach.rs`), and its Ethernet
/// interfaces (Wake-on-LAN, `wake.rs`).
pub fn announce(d: &Daemon) {
    super::wake::announce(d);
    let ours = super::candidates::announced(d);
    if ours.is_empty() {
        return;
    }
    for peer in d.mesh.connected() {
        d.mesh
            .send(&peer, MeshFrame::Addrs(vec![(d.id(), ours.clone())]));
    }
}

fn handle(d: &Arc<Daemon>, from: DeviceId, frame: MeshFrame) {
    match frame {
        MeshFrame::Membership(bytes) => super::membership::received(d, from, &bytes),
        MeshFrame::Punch(p) => super::punching::received(d, from, p),
        MeshFrame::Lan(list) => super::wake::lan_received(d, from, list),
        MeshFrame::Wake(msg) => super::wake::received(d, from, msg),
        MeshFrame::Addrs(list) => {
            if list.len() > MAX_ADDR_ENTRIES {
                return;
            }
            let now = Instant::now();
            let mut table = d.peers();
            let mut changed = false;
            // What the sender announces about itself is passed on, one hop.
            let mut pass_on = Vec::new();
            for (id, addrs) in list.into_iter() {
                if addrs.len() > MAX_ADDRS_EACH {
                    continue;
                }
                if id == d.id() {
                    // Where the sender sees this device's connection come from now.
                    if let (Some(pc), [seen]) = (d.endpoint.connection(&from), &addrs[..]) {
                        d.reach
                            .observed_by(from, pc.conn.stable_id(), crate::addr::canon(*seen));
                    }
                    continue;
                }
                let Some(p) = table.peers.get_mut(&id) else {
                    continue;
                };
                for a in addrs {
                    let a = crate::addr::canon(a);
                    if a.port() == 0
                        || a.ip().is_unspecified()
                        || a.ip().is_multicast()
                        || transport::relay::is_virtual(&a)
                    {
                        continue;
                    }
                    if id == from && !pass_on.contains(&a) {
                        pass_on.push(a);
                    }
                    // Learnt from a member: tried after what we found ourselves. A full
                    // list takes nothing, and changes nothing (no save, no dial): a
                    // member repeating addresses cannot make every device write its
                    // peer table once per frame.
                    if !p.addrs.contains(&a) && p.addrs.len() < super::peers::MAX_ADDRS {
                        d.punches.candidate_changed(&id);
                        p.addrs.push(a);
                        changed = true;
                        if p.addr.is_none() {
                            p.dial.soon(now);
                        }
                    }
                }
            }
            drop(table);
            if changed {
                d.save_peers();
                super::links::dial_due(d);
                if !pass_on.is_empty() {
                    for other in d.mesh.connected() {
                        if other != from {
                            d.mesh
                                .send(&other, MeshFrame::Addrs(vec![(from, pass_on.clone())]));
                        }
                    }
                }
            }
        }
        MeshFrame::Relays(entries) => {
            if entries.len() > super::relays::MAX_ENTRIES {
                warn!(peer = %from.short(), "oversized relay gossip ignored");
                return;
            }
            // A few at once, then one per interval (`RELAYS_BURST`, `RELAYS_INTERVAL`).
            through_gate(d, from, entries, |d| d.relays.gate(), merge_relays);
        }
        MeshFrame::Roster(snap) => {
            d.mesh.roster_received.fetch_add(1, Ordering::Relaxed);
            if !snap.within_limits() {
                warn!(peer = %from.short(), "oversized roster gossip ignored");
                return;
            }
            through_gate(d, from, snap, |d| &d.mesh.roster_gate, on_roster);
        }
    }
}

/// Hands `frame` of `from` to `apply` now, or, past the gate's burst, the latest frame of
/// `from` when the gate gives it its turn.
fn through_gate<T: Send + 'static>(
    d: &Arc<Daemon>,
    from: DeviceId,
    frame: T,
    gate: fn(&Daemon) -> &Gate<T>,
    apply: fn(&Arc<Daemon>, DeviceId, T),
) {
    match gate(d).admit(from, frame, Instant::now()) {
        Admit::Now(frame) => apply(d, from, frame),
        Admit::Queued => {}
        Admit::Later(wait) => {
            let d = d.clone();
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                if let Some(frame) = gate(&d).take_pending(&from, Instant::now()) {
                    apply(&d, from, frame);
                }
            });
        }
    }
}

/// Merges a relay frame of `from` (its turn come: see [`through_gate`]).
fn merge_relays(d: &Arc<Daemon>, from: DeviceId, entries: Vec<super::relays::RelayEntry>) {
    let (members, me) = (&d.members, d.id());
    if d.relays
        .merge(entries, |s| *s == me || members.is_member(s))
    {
        d.relays_changed(Some(from));
    }
}

/// Merges a roster frame of `from` (its turn come: see `RosterGate`) and answers it
/// when it lacks something.
fn on_roster(d: &Arc<Daemon>, from: DeviceId, snap: super::roster::RosterSnapshot) {
    let theirs = snap.clone();
    let applied = d.members.merge_from(snap, from);
    debug!(
        peer = %from.short(),
        entries = theirs.members.len(),
        removals = theirs.removals.len(),
        joined = applied.joined.len(),
        removed = applied.removed.len(),
        "roster gossip received"
    );
    d.membership_changed(applied, Some(from));
    // They lack something we have: answer with ours (once per roster).
    let ours = d.roster().wire_snapshot();
    if let Some(print) =
        super::roster_gossip::answer(&theirs, &ours, from, d.mesh.last_answer(&from))
    {
        d.mesh.answer(&from, print, ours);
    }
}

/// Current connection addresses of our active peers (except `except`), for gossip.
fn known_addrs(d: &Daemon, except: Option<DeviceId>) -> Vec<(DeviceId, Vec<SocketAddr>)> {
    d.peers()
        .peers
        .values()
        .filter(|p| Some(p.id) != except)
        .filter_map(|p| p.addr.map(|a| (p.id, vec![a])))
        .take(MAX_ADDR_ENTRIES)
        .collect()
}
