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

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use transport::frame::{read_frame, write_frame, MAX_CONTROL_FRAME};
use transport::{DeviceId, IncomingStream, PeerConn, StreamKind, TransportEvent};

use super::peers::{Peer, PeerState};
use super::roster::{RosterChanges, RosterSnapshot};
use super::Daemon;
use super::wire::MeshFrame;

/// Frames queued per connection before senders see "full" (frames are then dropped:
/// gossip is repaired by the next exchange).
const OUTBOX: usize = 256;

/// Most entries of an `Addrs` frame, and addresses per entry.
const MAX_ADDR_ENTRIES: usize = 1024;
const MAX_ADDRS_EACH: usize = 16;

struct Outbox {
    conn: usize,
    tx: mpsc::Sender<MeshFrame>,
    /// Fingerprint of the last roster sent as an answer on this connection.
    answered: Option<u64>,
}

/// The send side of every connection's mesh stream.
#[derive(Default)]
pub struct Mesh {
    outboxes: Mutex<HashMap<DeviceId, Outbox>>,
    /// Roster frames sent and received since start (shown by `status`).
    pub roster_sent: AtomicU64,
    pub roster_received: AtomicU64,
}

impl Mesh {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, Outbox>> {
        self.outboxes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `frame` for `peer`; false when there is no mesh stream to it (or it is full).
    pub fn send(&self, peer: &DeviceId, frame: MeshFrame) -> bool {
        let is_roster = matches!(frame, MeshFrame::Roster(_));
        let sent = match self.lock().get(peer) {
            Some(o) => o.tx.try_send(frame).is_ok(),
            None => false,
        };
        if sent && is_roster {
            self.roster_sent.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    /// Sends `snap` to `peer` as an answer, unless this very roster was already the
    /// answer on the current connection.
    fn answer(&self, peer: &DeviceId, snap: RosterSnapshot) {
        let print = fingerprint(&snap);
        {
            let mut boxes = self.lock();
            let Some(o) = boxes.get_mut(peer) else { return };
            if o.answered == Some(print) {
                return;
            }
            o.answered = Some(print);
        }
        self.send(peer, MeshFrame::Roster(snap));
    }

    /// Every queued frame has been handed to its stream.
    pub fn drained(&self) -> bool {
        self.lock()
            .values()
            .all(|o| o.tx.capacity() == o.tx.max_capacity())
    }

    /// Peers with a mesh stream.
    pub fn connected(&self) -> Vec<DeviceId> {
        self.lock().keys().copied().collect()
    }
}

pub fn start(d: &Arc<Daemon>) {
    let d = d.clone();
    tokio::spawn(async move {
        let mut rx = d.endpoint.subscribe();
        for pc in d.endpoint.connections() {
            open(&d, pc);
        }
        loop {
            match rx.recv().await {
                Ok(TransportEvent::Up(pc)) => open(&d, pc),
                Ok(TransportEvent::Down { .. }) => {}
                Err(RecvError::Lagged(_)) => {
                    let have: HashSet<DeviceId> = d.mesh.connected().into_iter().collect();
                    for pc in d.endpoint.connections() {
                        if !have.contains(&pc.peer) {
                            open(&d, pc);
                        }
                    }
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
}

/// Opens our mesh stream on a new connection and greets with the roster.
fn open(d: &Arc<Daemon>, pc: PeerConn) {
    let (tx, mut rx) = mpsc::channel::<MeshFrame>(OUTBOX);
    let conn = pc.conn.stable_id();
    if tx
        .try_send(MeshFrame::Roster(d.roster().snapshot()))
        .is_ok()
    {
        d.mesh.roster_sent.fetch_add(1, Ordering::Relaxed);
    }
    let _ = tx.try_send(MeshFrame::Addrs(known_addrs(d, Some(pc.peer))));
    d.mesh.lock().insert(
        pc.peer,
        Outbox {
            conn,
            tx,
            answered: None,
        },
    );
    // Tell the others where this peer is now.
    let here = crate::addr::canon(pc.remote_address());
    for other in d.mesh.connected() {
        if other != pc.peer {
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
        let mut boxes = d.mesh.lock();
        if boxes.get(&peer).is_some_and(|o| o.conn == conn) {
            boxes.remove(&peer);
        }
    });
}

/// Reads the frames of a peer's mesh stream.
pub async fn serve(d: Arc<Daemon>, mut s: IncomingStream) {
    loop {
        match read_frame::<MeshFrame, _>(&mut s.recv, MAX_CONTROL_FRAME).await {
            Ok(Some(frame)) => handle(&d, s.peer, frame),
            Ok(None) => return,
            Err(e) => {
                warn!(peer = %s.peer.short(), error = %e, "bad mesh frame; closing that stream");
                let _ = s.send.reset(1u32.into());
                return;
            }
        }
    }
}

fn handle(d: &Arc<Daemon>, from: DeviceId, frame: MeshFrame) {
    match frame {
        MeshFrame::Membership(bytes) => super::membership::received(d, from, &bytes),
        MeshFrame::Addrs(list) => {
            if list.len() > MAX_ADDR_ENTRIES {
                return;
            }
            let now = std::time::Instant::now();
            let mut table = d.peers();
            let mut changed = false;
            for (id, addrs) in list.into_iter() {
                if id == d.id() || addrs.len() > MAX_ADDRS_EACH {
                    continue;
                }
                let Some(p) = table.peers.get_mut(&id) else {
                    continue;
                };
                for a in addrs {
                    let a = crate::addr::canon(a);
                    if a.port() == 0 || a.ip().is_unspecified() || a.ip().is_multicast() {
                        continue;
                    }
                    if !p.addrs.contains(&a) {
                        // Learnt from a member: tried after what we found ourselves.
                        if p.addrs.len() < super::peers::MAX_ADDRS {
                            p.addrs.push(a);
                        }
                        changed = true;
                        if p.addr.is_none() {
                            p.next_dial = now;
                        }
                    }
                }
            }
            drop(table);
            if changed {
                d.save_peers();
                super::links::dial_due(d);
            }
        }
        MeshFrame::Roster(snap) => {
            d.mesh.roster_received.fetch_add(1, Ordering::Relaxed);
            if !snap.within_limits() {
                warn!(peer = %from.short(), "oversized roster gossip ignored");
                return;
            }
            let theirs = snap.clone();
            let changes = d.roster().merge_from(snap, from);
            debug!(
                peer = %from.short(),
                entries = theirs.members.len(),
                removals = theirs.removals.len(),
                joined = changes.joined.len(),
                removed = changes.removed.len(),
                "roster gossip received"
            );
            if !changes.is_empty() {
                d.apply_roster_changes(changes);
                d.gossip_roster(Some(from));
            }
            // They lack something we have: answer with ours.
            let ours = d.roster().snapshot();
            if lacks(&theirs, &ours, from) {
                d.mesh.answer(&from, ours);
            }
        }
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

/// `theirs` (the roster of member `them`) misses an entry or removal of `ours` (compared
/// by ID, version and signer). Entries about `them` do not count: no member keeps one
/// about itself.
fn lacks(theirs: &RosterSnapshot, ours: &RosterSnapshot, them: DeviceId) -> bool {
    let m: HashSet<_> = theirs
        .members
        .iter()
        .map(|e| (e.id, e.version, e.signer))
        .collect();
    let r: HashSet<_> = theirs.removals.iter().map(|e| (e.id, e.version)).collect();
    ours.members
        .iter()
        .any(|e| e.id != them && !m.contains(&(e.id, e.version, e.signer)))
        || ours
            .removals
            .iter()
            .any(|e| e.id != them && !r.contains(&(e.id, e.version)))
}

/// Order-independent fingerprint of a roster's entries and removals.
fn fingerprint(snap: &RosterSnapshot) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut m: Vec<_> = snap
        .members
        .iter()
        .map(|e| (e.id, e.version, e.signer))
        .collect();
    m.sort();
    let mut r: Vec<_> = snap.removals.iter().map(|e| (e.id, e.version)).collect();
    r.sort();
    m.hash(&mut h);
    r.hash(&mut h);
    h.finish()
}

impl Daemon {
    /// Records `name` for member `id` in the roster (signed by this device) when the
    /// roster has another name for it; the change spreads by gossip.
    pub fn sign_name(&self, id: DeviceId, name: &str) {
        let current = self.roster().member(&id).map(|m| m.name.clone());
        if current.as_deref() == Some(name) || !self.roster().is_member(&id) {
            return;
        }
        let version = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let entry = super::roster::MemberEntry::sign(&self.identity, id, name, version);
        let changes = self.roster().merge(RosterSnapshot {
            members: vec![entry],
            removals: vec![],
        });
        if !changes.is_empty() {
            self.apply_roster_changes(changes);
            self.gossip_roster(None);
        }
    }

    /// Sends our roster to every connected member except `except`.
    pub fn gossip_roster(&self, except: Option<DeviceId>) {
        let snap = self.roster().snapshot();
        for peer in self.mesh.connected() {
            if Some(peer) != except {
                self.mesh.send(&peer, MeshFrame::Roster(snap.clone()));
            }
        }
    }

    /// Applies what a roster merge changed to the peer table, the TLS roster and the
    /// membership core; raises `peer.joined` / `peer.removed`; persists both files.
    pub fn apply_roster_changes(&self, changes: RosterChanges) {
        if let Err(e) = self.roster().save() {
            warn!(error = %e, "could not save the roster");
        }
        let mut joined = Vec::new();
        let mut removed = Vec::new();
        {
            let mut table = self.peers();
            for (id, name) in &changes.joined {
                if id == &self.id() {
                    continue;
                }
                if !table.peers.contains_key(id) {
                    table
                        .peers
                        .insert(*id, Peer::new(*id, name.clone(), Vec::new()));
                    joined.push((*id, name.clone()));
                } else if let Some(p) = table.peers.get_mut(id) {
                    p.name.clone_from(name);
                }
            }
            for (id, name) in &changes.renamed {
                if let Some(p) = table.peers.get_mut(id) {
                    p.name.clone_from(name);
                }
            }
            for (id, name) in &changes.removed {
                let name = table
                    .peers
                    .remove(id)
                    .map(|p| p.name)
                    .unwrap_or_else(|| name.clone());
                table.removed.insert(*id, name.clone());
                removed.push((*id, name));
            }
        }
        self.save_peers();
        for (id, name) in joined {
            self.endpoint.roster().insert(id);
            super::membership::member(self, id, true);
            info!(peer = %name, id = %id.short(), "member joined the mesh");
            self.peer_event("peer.joined", id, &name, PeerState::Unreachable, None);
        }
        for (id, name) in removed {
            self.endpoint.roster().remove(&id);
            super::membership::member(self, id, false);
            info!(peer = %name, id = %id.short(), "member removed from the mesh");
            self.peer_event("peer.removed", id, &name, PeerState::Removed, None);
            self.peer_event("peer.status_changed", id, &name, PeerState::Removed, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::roster::MemberEntry;
    use transport::Identity;

    fn snap(members: Vec<MemberEntry>) -> RosterSnapshot {
        RosterSnapshot {
            members,
            removals: vec![],
        }
    }

    #[test]
    fn a_member_never_lacks_an_entry_about_itself() {
        let (a, b, c) = (
            Identity::generate("a").unwrap(),
            Identity::generate("b").unwrap(),
            Identity::generate("c").unwrap(),
        );
        // A and B trust each other: each holds only an entry about the other.
        let ours = snap(vec![MemberEntry::sign(&a, b.id, "b", 1)]);
        let theirs = snap(vec![MemberEntry::sign(&b, a.id, "a", 1)]);
        assert!(!lacks(&theirs, &ours, b.id));
        assert!(!lacks(&ours, &theirs, a.id));
        // A also knows C: B lacks that, until it holds the same entry.
        let ours = snap(vec![
            MemberEntry::sign(&a, b.id, "b", 1),
            MemberEntry::sign(&a, c.id, "c", 2),
        ]);
        assert!(lacks(&theirs, &ours, b.id));
        let theirs = snap(vec![
            MemberEntry::sign(&b, a.id, "a", 1),
            MemberEntry::sign(&a, c.id, "c", 2),
        ]);
        assert!(!lacks(&theirs, &ours, b.id));
        // Same entries in another order: same fingerprint.
        let mut rev = ours.clone();
        rev.members.reverse();
        assert_eq!(fingerprint(&rev), fingerprint(&ours));
        assert_ne!(fingerprint(&theirs), fingerprint(&ours));
    }
}
