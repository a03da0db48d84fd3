//! The daemon: wires the transport endpoint, the peer table, messages, handlers and the
//! control socket together.

mod budget;
pub(crate) mod candidates;
mod conn_events;
pub(crate) mod context;
pub(crate) mod control;
mod core;
mod dial;
mod errors;
mod handler_cache;
mod inbox;
mod incoming;
mod lan;
mod lanes;
mod links;
mod lookup;
mod member_relay;
mod members;
mod membership;
mod mesh;
mod messages;
mod nearby;
mod origin;
mod outbox;
pub(crate) mod pair;
pub mod peers;
mod portmap;
mod power;
mod punch;
mod punching;
mod reach;
mod record_gate;
mod record_seal;
mod relay_stream;
mod relays;
mod removal_notice;
mod reply_wait;
mod roster;
mod roster_gossip;
mod roster_judge;
mod services;
mod stream_io;
pub mod streams;
mod sync;
mod trim;
mod unanswered;
mod wake;
mod wakes;
mod wire;
mod wol;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{broadcast, watch};
use tracing::{debug, info};
use transport::{Endpoint, EndpointConfig, Identity, Roster};

use crate::api::Event;
use crate::cli::ServeArgs;
use crate::config::Config;
use crate::handlers::{Runner, RunnerConfig};
use crate::paths::Paths;
use context::Daemon;

/// QUIC keep-alive of daemon connections (see `start`).
const QUIC_KEEP_ALIVE: Duration = Duration::from_secs(20);

/// `cnspr serve`.
pub async fn serve(paths: Paths, args: ServeArgs) -> anyhow::Result<()> {
    let cfg = Config::load(&paths.config, paths.config_explicit)?;
    let name = args.name.clone().or(cfg.name.clone());
    let listen = if !args.listen.is_empty() {
        args.listen.clone()
    } else if !cfg.listen.is_empty() {
        cfg.listen.clone()
    } else {
        EndpointConfig::default().listen
    };
    // A first start that cannot listen leaves no identity or state behind.
    if matches!(
        Identity::load(&paths.state_dir),
        Err(transport::IdentityError::Missing(_))
    ) {
        ports_free(&listen).context("starting the QUIC endpoint")?;
    }
    let (identity, created) = Identity::load_or_create(&paths.state_dir, name.as_deref())?;
    if created {
        info!(state_dir = %paths.state_dir.display(), "created a new device identity");
    }
    let identity = Arc::new(identity);
    let roster = Roster::new();
    let member = Arc::new(core::Member::new(identity.id, core::config(&cfg)));
    // The roster decides who is trusted: the TLS set and the core start from it.
    let members = members::Members::load(
        identity.clone(),
        &paths.state_dir,
        roster.clone(),
        member.clone(),
    )?;
    // Entries in the file were checked when they came (signatures are checked again); a
    // signer removed since then does not take the relay with it.
    let relays = relays::RelayBook::load(&paths.state_dir, |_| true)?;
    let ep_cfg = EndpointConfig {
        listen,
        // Liveness comes from heartbeats (not QUIC) or beats; the membership loop closes
        // a connection silent for `idle_timeout_ms`. QUIC's keep-alive and idle timeout
        // apply only to connections dialled to a public address (a NAT may need the
        // keep-alive); a connection on a private path carries nothing when idle
        // (docs/membership.md, "Idle links").
        keep_alive: QUIC_KEEP_ALIVE,
        idle_timeout: Duration::from_millis(cfg.idle_timeout_ms.saturating_mul(3))
            .max(QUIC_KEEP_ALIVE * 3),
        handshake_timeout: Duration::from_millis(cfg.idle_timeout_ms.min(5000)),
        heartbeats: cfg.heartbeats,
        ..EndpointConfig::default()
    };
    let streams = services::Streams::default();
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
    // Subscribed before any connection can come up; read by `conn_events` only.
    let transport_events = endpoint.subscribe();
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
    let port_mapping = !args.no_port_mapping && cfg.port_mapping;
    let handler_queue = cfg.handler_queue;
    let told_removed = removal_notice::load(&paths.state_dir);
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
    let daemon = Arc::new(Daemon {
        identity,
        endpoint,
        cfg,
        paths,
        handlers: handler_cache::HandlerCache::new(handlers_dir.clone()),
        handlers_dir,
        members,
        lanes: Default::default(),
        events,
        runner,
        streams,
        store,
        mesh: outbox::Mesh::default(),
        conn_events: conn_events::ConnEvents::default(),
        sync: Arc::default(),
        member,
        nearby: Mutex::new(std::collections::HashMap::new()),
        pairing_open: Mutex::new(false),
        mdns: Mutex::new(None),
        netwatch: Mutex::new(None),
        portmap: Default::default(),
        punches: Default::default(),
        relays,
        removed: Mutex::new(told_removed),
        budgets: budget::Budgets::new(handler_queue),
        origins: origin::ReplayGuard::default(),
        records: record_gate::RecordGate::default(),
        reach: Default::default(),
        wakes: Default::default(),
        started: Instant::now(),
        manual,
        stop,
        ui: Default::default(),
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
    if daemon.cfg.ui {
        if let Err(e) = crate::ui::server::ensure(&daemon, daemon.cfg.ui_port).await {
            tracing::error!(error = %format!("{e:#}"), "web dashboard not started");
        }
    }
    lan::start(&daemon, mdns);
    sync::start(&daemon);
    match daemon
        .endpoint
        .local_addrs()
        .first()
        .map(|a| std::num::NonZeroU16::new(a.port()))
    {
        Some(Some(port)) if port_mapping => {
            let d = daemon.clone();
            daemon.portmap.start(port, move || mesh::announce(&d));
        }
        _ => debug!("port mapping off"),
    }
    punching::start(&daemon);
    daemon.endpoint.set_relays(&daemon.relays.specs());
    trim::start(daemon.member.clone(), daemon.endpoint.clone());
    // Last: every component has subscribed, so none misses an event.
    let dd = daemon.clone();
    tokio::spawn(async move { dd.conn_events.run(&dd.endpoint, transport_events).await });
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
    daemon.portmap.release(Duration::from_secs(1)).await;
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

/// Fails as the endpoint would when a UDP port in `listen` is taken (binds each address
/// for a moment and lets it go). An IPv6 wildcard serves IPv4 too, as the endpoint binds
/// it; an address family the host lacks is left to the endpoint.
fn ports_free(listen: &[std::net::SocketAddr]) -> Result<(), transport::TransportError> {
    for addr in listen {
        let covered = addr.is_ipv4()
            && addr.ip().is_unspecified()
            && listen
                .iter()
                .any(|b| b.is_ipv6() && b.ip().is_unspecified() && b.port() == addr.port());
        if addr.port() == 0 || covered {
            continue;
        }
        match transport::socket::bind_udp(*addr, 0) {
            Err(source) if source.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(transport::TransportError::Bind {
                    addr: *addr,
                    source,
                })
            }
            _ => {}
        }
    }
    Ok(())
}
