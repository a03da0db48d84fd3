//! The daemon's shared context: the components (each the owner of its state) that the
//! tasks reach through one `Arc<Daemon>`, and the events they raise.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use tokio::sync::{broadcast, watch};
use tracing::{info, warn};
use transport::{DeviceId, Endpoint, Identity};

use super::members::{Applied, Members, RosterRef};
use super::peers::{PeerState, PeerTable, Route};
use super::wire::MeshFrame;
use super::{conn_events, core, handler_cache, lanes, nearby, outbox, services};
use crate::api::{Event, PeerRef};
use crate::config::Config;
use crate::handlers::{self, EventKind, Invocation, Origin, Runner};
use crate::paths::Paths;

/// Everything the daemon's tasks share.
pub struct Daemon {
    pub identity: Arc<Identity>,
    pub endpoint: Endpoint,
    pub cfg: Config,
    pub paths: Paths,
    pub handlers_dir: PathBuf,
    pub handlers: handler_cache::HandlerCache,
    /// Mesh membership: roster, peer table, TLS trust set, the core's member set.
    pub members: Members,
    /// Message lanes by peer (see `messages`).
    pub lanes: lanes::Lanes,
    /// Events for socket subscribers and the dashboard. Shared (`Arc`), so that each of
    /// the channel's slots is a pointer, not an event: the slots are allocated, and
    /// resident, for the daemon's whole life.
    pub events: broadcast::Sender<Arc<Event>>,
    pub runner: Runner,
    pub streams: services::Streams,
    pub store: crate::store::Store,
    pub mesh: outbox::Mesh,
    /// The one reader of the transport's connection events (see `conn_events`).
    pub conn_events: conn_events::ConnEvents,
    /// Store sync state that outlives sessions (see `sync`).
    pub sync: Arc<super::sync::SyncState>,
    /// The membership core (states, relays, gossip).
    pub member: Arc<core::Member>,
    /// Devices seen on the LAN by mDNS, trusted or not.
    pub nearby: Mutex<std::collections::HashMap<DeviceId, nearby::Nearby>>,
    /// A pairing window is open.
    pub pairing_open: Mutex<bool>,
    pub mdns: Mutex<Option<discovery::Discovery>>,
    pub netwatch: Mutex<Option<discovery::NetWatcher>>,
    /// The router's port mapping for this device.
    pub portmap: Arc<super::portmap::Portmap>,
    /// Where members see this device from.
    pub reach: super::reach::Reach,
    /// Hole-punching exchanges.
    pub punches: super::punch::Punches,
    /// The mesh's relays (`cnspr relay add`).
    pub relays: super::relays::RelayBook,
    /// Set when a member told this device it was removed from the mesh.
    pub removed: Mutex<Option<crate::api::RemovedInfo>>,
    /// What each member may make this device hold (message bodies, streams read).
    pub budgets: super::budget::Budgets,
    /// Wake requests waiting on members, and the wake-up rate limit (`wake.rs`).
    pub wakes: super::wakes::Wakes,
    /// Origin proofs taken recently (relayed messages and streams): none is taken twice.
    pub origins: super::origin::ReplayGuard,
    /// Membership records are taken only with their origin's seal; ours are sealed.
    pub records: super::record_gate::RecordGate,
    pub started: Instant,
    /// Manual addresses (`--peer`, config `peers`) dialled until a device answers there.
    pub manual: Vec<SocketAddr>,
    pub stop: watch::Sender<bool>,
    /// The web dashboard, once started (src/ui/).
    pub ui: crate::ui::slot::Slot,
}

impl Daemon {
    pub fn peers(&self) -> MutexGuard<'_, PeerTable> {
        self.members.table()
    }

    pub fn roster(&self) -> RosterRef<'_> {
        self.members.roster()
    }

    pub fn id(&self) -> DeviceId {
        self.identity.id
    }

    /// Asks the daemon to stop gracefully.
    pub fn request_stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Publishes an event to socket subscribers and runs the matching handlers.
    pub fn emit(&self, event: Event) {
        let self_id = self.id().to_plain();
        let name = &self.identity.name;
        let (kind, tag, env, origin_name, origin_id, name_unique) = match &event {
            Event::Peer {
                tag,
                peer,
                state,
                address,
                path,
                ..
            } => {
                let id = peer.id.replace('-', "");
                // Not under the table's lock here (see `peer_event_with`).
                let name_unique = peer
                    .id
                    .parse::<DeviceId>()
                    .is_ok_and(|i| self.peers().name_unique(&i, name));
                let origin = Origin {
                    name: &peer.name,
                    id: &id,
                    name_unique,
                };
                let env = handlers::peer_env(
                    name,
                    &self_id,
                    tag,
                    &origin,
                    state,
                    address.as_deref().unwrap_or(""),
                    path.as_ref(),
                );
                (
                    EventKind::Peer,
                    tag.clone(),
                    env,
                    Some(peer.name.clone()),
                    Some(id.clone()),
                    name_unique,
                )
            }
            Event::Daemon { tag, state } => (
                EventKind::Daemon,
                tag.clone(),
                handlers::daemon_env(name, &self_id, tag, state),
                None,
                None,
                false,
            ),
            Event::Message { .. } => {
                let _ = self.events.send(Arc::new(event));
                return;
            }
        };
        let _ = self.events.send(Arc::new(event));
        let set = self.handlers.current();
        let origin = match (&origin_name, &origin_id) {
            (Some(n), Some(i)) => Some(Origin {
                name: n,
                id: i,
                name_unique,
            }),
            _ => None,
        };
        let matched: Vec<_> = set
            .matching(kind, &tag, origin.as_ref())
            .into_iter()
            .cloned()
            .collect();
        if matched.is_empty() {
            return;
        }
        let inv = Invocation {
            kind,
            tag: tag.clone(),
            env,
            body: bytes::Bytes::new(),
            handlers: matched,
        };
        match self.runner.submit(inv) {
            Ok(fut) => {
                tokio::spawn(async move {
                    for o in fut.await {
                        if !o.success() {
                            warn!(handler = %o.handler, exit = ?o.exit_code, timed_out = o.timed_out, error = ?o.error, "event handler failed");
                        }
                    }
                });
            }
            Err(e) => warn!(%tag, error = %e, "event handler not run"),
        }
    }

    pub fn peer_event(
        &self,
        tag: &str,
        id: DeviceId,
        name: &str,
        state: PeerState,
        address: Option<SocketAddr>,
    ) {
        self.peer_event_with(tag, id, name, state, address, None);
    }

    /// [`Daemon::peer_event`] with what happened in words.
    pub fn peer_event_with(
        &self,
        tag: &str,
        id: DeviceId,
        name: &str,
        state: PeerState,
        address: Option<SocketAddr>,
        detail: Option<String>,
    ) {
        let path = {
            let table = self.peers();
            table.peers.get(&id).and_then(|p| table.path_info(p))
        };
        self.emit(Event::Peer {
            tag: tag.to_string(),
            peer: PeerRef {
                id: id.to_string(),
                name: name.to_string(),
            },
            state: state.as_str().to_string(),
            address: address.map(|a| a.to_string()),
            path,
            detail,
        });
    }

    /// Changes a peer's state (and the member relaying it while `indirect`); raises
    /// `peer.status_changed` when the state really changed, and `peer.path_changed`
    /// when the peer is now reached in another way than before (directly, or through
    /// another member). True when the peer was reached directly and is no more.
    pub fn set_state(&self, id: DeviceId, state: PeerState, via: Option<DeviceId>) -> bool {
        let lost_direct;
        let (changed, rerouted) = {
            let mut table = self.peers();
            let Some(p) = table.peers.get_mut(&id) else {
                return false;
            };
            p.via = via.filter(|_| state == PeerState::Indirect);
            let changed = (p.state != state).then(|| {
                p.state = state;
                (p.name.clone(), p.addr.or(p.addrs.first().copied()))
            });
            let route = Route::of(state, p.via, p.relay.is_some());
            lost_direct =
                matches!(p.route, Some((Route::Direct, _))) && route != Some(Route::Direct);
            let rerouted = match (route, p.route) {
                (r, Some((old, _))) if r == Some(old) => None,
                (r, _) => {
                    p.route = r.map(|r| (r, SystemTime::now()));
                    r.map(|_| (p.name.clone(), p.addr.or(p.addrs.first().copied())))
                }
            };
            (changed, rerouted)
        };
        if let Some((name, addr)) = changed {
            info!(peer = %name, state = state.as_str(), "peer state");
            self.peer_event("peer.status_changed", id, &name, state, addr);
        }
        if let Some((name, addr)) = rerouted {
            info!(peer = %name, "peer reached by a new path");
            self.peer_event("peer.path_changed", id, &name, state, addr);
        }
        lost_direct
    }

    /// The error every command that needs the mesh gives once this device was told it
    /// was removed from it.
    pub fn removed_refusal(&self) -> Option<crate::api::ErrorBody> {
        let removed = self.removed.lock().unwrap_or_else(|p| p.into_inner());
        removed.as_ref().map(|r| {
            crate::api::ErrorBody::new(
                crate::api::code::UNREACHABLE,
                format!("this device was removed from the mesh by {}", r.by),
            )
        })
    }

    pub fn save_peers(&self) {
        self.members.save_table();
    }

    /// After the relay entries changed: the endpoint registers with the relays now in
    /// use, and the entries go to every connected member but `from` (who told us).
    pub fn relays_changed(&self, from: Option<DeviceId>) {
        self.endpoint.set_relays(&self.relays.specs());
        let entries = self.relays.entries();
        for peer in self.mesh.connected() {
            if Some(peer) != from {
                self.mesh.send(&peer, MeshFrame::Relays(entries.clone()));
            }
        }
    }

    /// Sends our roster to every connected member except `except`.
    pub fn gossip_roster(&self, except: Option<DeviceId>) {
        let snap = self.roster().wire_snapshot();
        for peer in self.mesh.connected() {
            if Some(peer) != except {
                self.mesh.send(&peer, MeshFrame::Roster(snap.clone()));
            }
        }
    }

    /// The devices in a conflict of removals `(id, name)`.
    pub fn conflicts(&self) -> Vec<(DeviceId, String)> {
        let ids: Vec<(DeviceId, String)> = self
            .roster()
            .conflicts()
            .map(|c| (c.id, c.name.clone()))
            .collect();
        let table = self.peers();
        ids.into_iter()
            .map(|(id, n)| (id, table.conflicted.get(&id).cloned().unwrap_or(n)))
            .collect()
    }

    /// Who removed whom in the conflict `id` is part of, and how to decide, in words.
    pub fn conflict_text(&self, id: &DeviceId) -> String {
        let names = self.peers().conflicted.clone();
        let r = self.roster();
        let Some(c) = r.conflicts().find(|c| c.id == *id) else {
            return String::new();
        };
        let name = |x: &DeviceId| {
            names
                .get(x)
                .cloned()
                .or_else(|| r.name_of(x))
                .unwrap_or_else(|| x.short())
        };
        let by: Vec<String> = c.removed_by.iter().map(name).collect();
        let of: Vec<String> = c.removes.iter().map(name).collect();
        let mut s = format!("{} is not trusted until you decide:", name(id));
        if !by.is_empty() {
            s.push_str(&format!(" removed by {};", by.join(", ")));
        }
        if !of.is_empty() {
            s.push_str(&format!(" it removed {};", of.join(", ")));
        }
        if by.is_empty() && of.is_empty() {
            s.push_str(" only devices in a conflict signed for it;");
        }
        let culprit = by
            .first()
            .or(of.first())
            .cloned()
            .unwrap_or_else(|| c.name.clone());
        s.push_str(&format!(
            " run `cnspr remove {culprit}` (or `cnspr remove {}`) on this device to decide",
            c.name
        ));
        s
    }

    /// After a membership change: raises `peer.joined` / `peer.removed` and gossips the
    /// roster to the connected members but `from` (who told us).
    pub fn membership_changed(&self, applied: Applied, from: Option<DeviceId>) {
        for (id, name) in &applied.joined {
            info!(peer = %name, id = %id.short(), "member joined the mesh");
            self.peer_event("peer.joined", *id, name, PeerState::Unreachable, None);
        }
        for (id, name) in &applied.removed {
            info!(peer = %name, id = %id.short(), "member removed from the mesh");
            self.peer_event("peer.removed", *id, name, PeerState::Removed, None);
            self.peer_event("peer.status_changed", *id, name, PeerState::Removed, None);
        }
        for (id, old, name) in &applied.renamed {
            info!(peer = %name, old = %old, id = %id.short(), "member renamed");
            let state = self
                .peers()
                .peers
                .get(id)
                .map_or(PeerState::Unreachable, |p| p.state);
            let detail = Some(format!("was {old}"));
            self.peer_event_with("peer.renamed", *id, name, state, None, detail);
        }
        for (id, name) in &applied.conflicted {
            let detail = self.conflict_text(id);
            warn!(peer = %name, id = %id.short(), "{detail}");
            for tag in ["peer.conflict", "peer.status_changed"] {
                let d = Some(detail.clone());
                self.peer_event_with(tag, *id, name, PeerState::Conflict, None, d);
            }
        }
        if applied.roster_changed {
            self.gossip_roster(from);
        }
    }
}
