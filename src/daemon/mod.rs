//! The daemon: wires the transport endpoint, the peer table, messages, handlers and the
//! control socket together.

mod control;
mod handler_cache;
mod incoming;
mod kv;
mod lan;
mod links;
mod membership;
mod mesh;
mod messages;
mod pair;
pub mod peers;
mod relay_stream;
mod roster;
pub mod streams;
mod sync;
mod trim;
mod trust;
mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{broadcast, watch};
use tracing::{info, warn};
use transport::{DeviceId, Endpoint, EndpointConfig, Identity, Roster};

use crate::api::{Event, PeerRef};
use crate::cli::ServeArgs;
use crate::config::Config;
use crate::handlers::{self, EventKind, Invocation, Origin, Runner, RunnerConfig};
use crate::paths::Paths;
use peers::{PeerState, PeerTable};

/// QUIC keep-alive of daemon connections (see `start`).
const QUIC_KEEP_ALIVE: Duration = Duration::from_secs(20);

/// Everything the daemon's tasks share.
pub struct Daemon {
    pub identity: Arc<Identity>,
    pub endpoint: Endpoint,
    pub cfg: Config,
    pub paths: Paths,
    pub handlers_dir: PathBuf,
    pub handlers: handler_cache::HandlerCache,
    pub peers: Mutex<PeerTable>,
    /// Message lanes by peer (see `messages`).
    pub lanes: Mutex<std::collections::HashMap<DeviceId, messages::Lane>>,
    pub events: broadcast::Sender<Event>,
    pub runner: Runner,
    pub streams: streams::Streams,
    pub store: crate::store::Store,
    /// The signed mesh roster (see `roster`).
    pub mesh_roster: Mutex<roster::MeshRoster>,
    pub mesh: mesh::Mesh,
    /// The membership core (states, relays, gossip).
    pub member: membership::Member,
    /// Devices seen on the LAN by mDNS, trusted or not.
    pub nearby: Mutex<std::collections::HashMap<DeviceId, pair::Nearby>>,
    /// A pairing window is open.
    pairing_open: Mutex<bool>,
    mdns: Mutex<Option<discovery::Discovery>>,
    netwatch: Mutex<Option<discovery::NetWatcher>>,
    pub started: Instant,
    /// Manual addresses (`--peer`, config `peers`) dialled until a device answers there.
    pub manual: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
}

impl Daemon {
    pub fn peers(&self) -> MutexGuard<'_, PeerTable> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn roster(&self) -> MutexGuard<'_, roster::MeshRoster> {
        self.mesh_roster.lock().unwrap_or_else(|p| p.into_inner())
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
        let (kind, tag, env, origin_name, origin_id) = match &event {
            Event::Peer {
                tag,
                peer,
                state,
                address,
            } => {
                let id = peer.id.replace('-', "");
                let origin = Origin {
                    name: &peer.name,
                    id: &id,
                };
                let env = handlers::peer_env(
                    name,
                    &self_id,
                    tag,
                    &origin,
                    state,
                    address.as_deref().unwrap_or(""),
                );
                (
                    EventKind::Peer,
                    tag.clone(),
                    env,
                    Some(peer.name.clone()),
                    Some(id.clone()),
                )
            }
            Event::Daemon { tag, state } => (
                EventKind::Daemon,
                tag.clone(),
                handlers::daemon_env(name, &self_id, tag, state),
                None,
                None,
            ),
            Event::Message { .. } => {
                let _ = self.events.send(event);
                return;
            }
        };
        let _ = self.events.send(event);
        let set = self.handlers.current();
        let origin = match (&origin_name, &origin_id) {
            (Some(n), Some(i)) => Some(Origin { name: n, id: i }),
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
        self.emit(Event::Peer {
            tag: tag.to_string(),
            peer: PeerRef {
                id: id.to_string(),
                name: name.to_string(),
            },
            state: state.as_str().to_string(),
            address: address.map(|a| a.to_string()),
        });
    }

    /// Changes a peer's state; raises `peer.status_changed` when it really changed.
    pub fn set_state(&self, id: DeviceId, state: PeerState) {
        let changed = {
            let mut table = self.peers();
            match table.peers.get_mut(&id) {
                Some(p) if p.state != state => {
                    p.state = state;
                    Some((p.name.clone(), p.addr.or(p.addrs.first().copied())))
                }
                _ => None,
            }
        };
        if let Some((name, addr)) = changed {
            info!(peer = %name, state = state.as_str(), "peer state");
            self.peer_event("peer.status_changed", id, &name, state, addr);
        }
    }

    pub fn save_peers(&self) {
        if let Err(e) = self.peers().save() {
            warn!(error = %e, "could not save the peer table");
        }
    }
}

/// Devices trusted before the signed roster existed (or by hand) get an entry signed by
/// this device, so that the rest of the mesh learns them; removals likewise.
fn migrate_roster(identity: &Identity, table: &mut PeerTable, r: &mut roster::MeshRoster) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut snap = roster::RosterSnapshot::default();
    for p in table.peers.values() {
        if !r.is_member(&p.id) && !r.is_removed(&p.id) {
            snap.members
                .push(roster::MemberEntry::sign(identity, p.id, &p.name, now));
        }
    }
    for id in table.removed.keys() {
        if !r.is_removed(id) {
            snap.removals
                .push(roster::Removal::sign(identity, *id, now));
        }
    }
    if !snap.members.is_empty() || !snap.removals.is_empty() {
        r.merge(snap);
        if let Err(e) = r.save() {
            warn!(error = %e, "could not save the roster");
        }
    }
    // And the other way: members learnt by gossip that the peer table lacks.
    for m in r.members() {
        if r.is_removed(&m.id) {
            let name = table
                .peers
                .remove(&m.id)
                .map_or_else(|| m.name.clone(), |p| p.name);
            table.removed.insert(m.id, name);
        } else {
            table
                .peers
                .entry(m.id)
                .or_insert_with(|| peers::Peer::new(m.id, m.name.clone(), Vec::new()));
        }
    }
}

/// `cnspr serve`.
pub async fn serve(paths: Paths, args: ServeArgs) -> anyhow::Result<()> {
    let cfg = Config::load(&paths.config, paths.config_explicit)?;
    let name = args.name.clone().or(cfg.name.clone());
    let (identity, created) = Identity::load_or_create(&paths.state_dir, name.as_deref())?;
    if created {
        info!(state_dir = %paths.state_dir.display(), "created a new device identity");
    }
    let identity = Arc::new(identity);
    let mut table = PeerTable::load(&paths.state_dir)?;
    let mut mesh_roster = roster::MeshRoster::load(&paths.state_dir, identity.id)?;
    migrate_roster(&identity, &mut table, &mut mesh_roster);
    let roster = Roster::new();
    for id in table.peers.keys() {
        roster.insert(*id);
    }
    let listen = if !args.listen.is_empty() {
        args.listen.clone()
    } else if !cfg.listen.is_empty() {
        cfg.listen.clone()
    } else {
        EndpointConfig::default().listen
    };
    let ep_cfg = EndpointConfig {
        listen,
        // Liveness comes from heartbeats (not QUIC) or beats; the membership loop closes
        // a connection silent for `idle_timeout_ms`. QUIC's own timers are a backstop
        // that costs an idle connection one round trip per keep-alive interval.
        keep_alive: QUIC_KEEP_ALIVE,
        idle_timeout: Duration::from_millis(cfg.idle_timeout_ms.saturating_mul(3))
            .max(QUIC_KEEP_ALIVE * 3),
        handshake_timeout: Duration::from_millis(cfg.idle_timeout_ms.min(5000)),
        heartbeats: cfg.heartbeats,
        ..EndpointConfig::default()
    };
    let streams = streams::Streams::default();
    let config_exposes: Vec<(String, String)> = cfg
        .expose
        .iter()
        .map(|e| (e.service.clone(), e.target.clone()))
        .collect();
    streams
        .load(&paths.state_dir, &config_exposes)
        .with_context(|| format!("config {}", paths.config.display()))?;
    // The socket first: a second daemon must fail before it touches the UDP port.
    let listener = control::bind(&paths.socket)?;
    let endpoint = match Endpoint::bind(identity.clone(), roster, ep_cfg) {
        Ok(e) => e,
        Err(e) => {
            control::unbind(&paths.socket);
            return Err(anyhow::Error::new(e).context("starting the QUIC endpoint"));
        }
    };
    let handlers_dir = args
        .handlers
        .clone()
        .or(cfg.handlers.clone())
        .unwrap_or_else(crate::paths::default_handlers);
    let mut manual = Vec::new();
    for p in args.peers.iter().chain(cfg.peers.iter()) {
        manual.extend(crate::addr::resolve_addr(p).with_context(|| format!("peer address {p:?}"))?);
    }
    let mdns = !args.no_mdns && cfg.mdns;
    let runner = Runner::new(RunnerConfig {
        timeout: cfg.handler_timeout(),
        max_concurrent: cfg.handler_concurrency,
        queue_limit: cfg.handler_queue,
        ..RunnerConfig::default()
    });
    let store_path = paths.state_dir.join("store.redb");
    let store = crate::store::Store::open(&store_path, identity.id.0)
        .with_context(|| format!("opening the store {}", store_path.display()))?;
    let (events, _) = broadcast::channel(4096);
    let (stop, mut stopped) = watch::channel(false);
    let member = membership::Member::new(identity.id, membership::config(&cfg));
    let daemon = Arc::new(Daemon {
        identity,
        endpoint,
        cfg,
        paths,
        handlers: handler_cache::HandlerCache::new(handlers_dir.clone()),
        handlers_dir,
        peers: Mutex::new(table),
        lanes: Mutex::new(std::collections::HashMap::new()),
        events,
        runner,
        streams,
        store,
        mesh_roster: Mutex::new(mesh_roster),
        mesh: mesh::Mesh::default(),
        member,
        nearby: Mutex::new(std::collections::HashMap::new()),
        pairing_open: Mutex::new(false),
        mdns: Mutex::new(None),
        netwatch: Mutex::new(None),
        started: Instant::now(),
        manual,
        stop,
    });
    let addrs: Vec<String> = daemon
        .endpoint
        .local_addrs()
        .iter()
        .map(|a| a.to_string())
        .collect();
    info!(id = %daemon.id(), name = %daemon.identity.name, listen = ?addrs, socket = %daemon.paths.socket.display(), "cnspr daemon running");
    links::start(&daemon);
    incoming::start(&daemon);
    mesh::start(&daemon);
    membership::start(&daemon);
    tokio::spawn(control::run(daemon.clone(), listener));
    lan::start(&daemon, mdns);
    sync::start(&daemon);
    trim::start();
    daemon.emit(Event::Daemon {
        tag: "daemon.start".into(),
        state: "start".into(),
    });

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT: stopping"),
        _ = term.recv() => info!("SIGTERM: stopping"),
        _ = stopped.wait_for(|s| *s) => info!("stop requested: stopping"),
    }
    daemon.emit(Event::Daemon {
        tag: "daemon.stop".into(),
        state: "stop".into(),
    });
    membership::leave(&daemon).await;
    lan::stop(&daemon).await;
    daemon
        .endpoint
        .shutdown(
            transport::close_code::LEAVING,
            "daemon stopping",
            Duration::from_millis(500),
        )
        .await;
    control::unbind(&daemon.paths.socket);
    // Give daemon/stop handlers a moment to start before the runtime goes away.
    let deadline = Instant::now() + Duration::from_secs(2);
    while daemon.runner.queued() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    info!("stopped");
    Ok(())
}
