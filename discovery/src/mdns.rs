//! [`Discovery`]: the thin I/O shell around `mdns-sd` and [`advert`](crate::advert).

use std::sync::mpsc::{self as std_mpsc, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mdns_sd::{
    IfKind, ResolvedService, ScopedIp, ServiceDaemon, ServiceEvent, ServiceInfo, UnregisterStatus,
};
use tokio::sync::mpsc;

use crate::advert::{self, Tracker};
use crate::types::{Announce, DiscoveryError, DiscoveryEvent, PROTOCOL_VERSION, SERVICE_TYPE};

/// Capacity of the event channel returned by [`Discovery::start`].
pub const EVENT_CHANNEL_CAPACITY: usize = 256;

/// How long [`Discovery::stop`] waits for each step (goodbye sent, goodbye repeated,
/// daemon exited).
const STOP_STEP_TIMEOUT: Duration = Duration::from_millis(500);

/// Delay of the follow-up announcement after the last [`Discovery::reannounce`].
///
/// Peers flush a cached address only when a cache-flush record arrives more than 1 s
/// after that address was last received (RFC 6762 §10.2), and mdns-sd 0.21 probes a new
/// address record for 750 ms and then does not announce it. A second announcement 1.5 s
/// after the last change is past both, so peers drop addresses we no longer have.
const FOLLOW_UP: Duration = Duration::from_millis(1500);

/// A second follow-up, after `mdns-sd`'s next interface check (every 5 s): an address
/// that `mdns-sd` had not seen at the first follow-up is announced by this one (its own
/// check only probes a new address and does not announce it).
const FOLLOW_UP_LATE: Duration = Duration::from_millis(6500);

/// Advertises this device and browses for other cnspr devices on the LAN.
///
/// Runs the `mdns-sd` daemon thread (`mDNS_daemon`, UDP port 5353 on `0.0.0.0` and `[::]`
/// with address/port reuse, so it coexists with avahi) plus one `cnspr-discovery` thread
/// that validates and de-duplicates what it reports. Loopback interfaces are not used.
///
/// `mdns-sd` itself re-reads the interface list every 5 s and joins/announces on new
/// interfaces; [`Discovery::reannounce`] makes an address change visible at once, and a
/// `cnspr-mdns-announce` thread repeats the announcement 1.5 s and 6.5 s after the last
/// call.
pub struct Discovery {
    daemon: ServiceDaemon,
    me: Arc<Mutex<Announce>>,
    fullname: String,
    follow_up: Option<(SyncSender<()>, JoinHandle<()>)>,
    stopped: bool,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("me", &self.me)
            .field("fullname", &self.fullname)
            .finish_non_exhaustive()
    }
}

impl Discovery {
    /// Advertises this device and browses for others; events arrive on the returned
    /// receiver (bounded, [`EVENT_CHANNEL_CAPACITY`]). Repeated resolutions with the same
    /// ID and address set produce no new event, and our own announcement is ignored.
    ///
    /// Keep draining the receiver: while it is full the discovery thread waits, and if
    /// `mdns-sd`'s own queue (1000 events) overflows meanwhile, browsing stops.
    /// Needs no async runtime.
    pub fn start(
        me: Announce,
    ) -> Result<(Discovery, mpsc::Receiver<DiscoveryEvent>), DiscoveryError> {
        if !advert::is_valid_id(&me.id) {
            return Err(DiscoveryError::InvalidId(me.id));
        }
        if !advert::is_valid_name(&me.name) {
            return Err(DiscoveryError::InvalidName(me.name));
        }
        let daemon = ServiceDaemon::new()?;
        let started = Self::setup(&daemon, &me);
        let (browse, fullname) = match started {
            Ok(v) => v,
            Err(e) => {
                let _ = daemon.shutdown();
                return Err(e);
            }
        };
        let (tx, rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
        let tracker = Tracker::new(&me.id);
        let spawned = thread::Builder::new()
            .name("cnspr-discovery".into())
            .spawn(move || pump(browse, tx, tracker));
        if let Err(e) = spawned {
            let _ = daemon.shutdown();
            return Err(DiscoveryError::Thread("cnspr-discovery", e));
        }
        let (follow_tx, follow_rx) = std_mpsc::sync_channel(1);
        let me = Arc::new(Mutex::new(me));
        let (thread_daemon, thread_me) = (daemon.clone(), me.clone());
        let spawned = thread::Builder::new()
            .name("cnspr-mdns-announce".into())
            .spawn(move || follow_up(&thread_daemon, &thread_me, &follow_rx));
        let follower = match spawned {
            Ok(handle) => handle,
            Err(e) => {
                let _ = daemon.shutdown();
                return Err(DiscoveryError::Thread("cnspr-mdns-announce", e));
            }
        };
        let port = me.lock().unwrap_or_else(|p| p.into_inner()).port;
        tracing::info!(instance = %fullname, port, "mDNS: advertising and browsing {SERVICE_TYPE}");
        let follow_up = Some((follow_tx, follower));
        Ok((
            Discovery {
                daemon,
                me,
                fullname,
                follow_up,
                stopped: false,
            },
            rx,
        ))
    }

    fn setup(
        daemon: &ServiceDaemon,
        me: &Announce,
    ) -> Result<(mdns_sd::Receiver<ServiceEvent>, String), DiscoveryError> {
        daemon.disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6])?;
        let info = service_info(me)?;
        let fullname = info.get_fullname().to_owned();
        daemon.register(info)?;
        let browse = daemon.browse(SERVICE_TYPE)?;
        Ok((browse, fullname))
    }

    /// Re-announces with the interface addresses the host has now (call after every
    /// address change), and again 1.5 s and 6.5 s after the last call. The announcements
    /// set the cache-flush bit, so peers replace the addresses they had for this device
    /// within about 2.5 s. An address `mdns-sd` has not seen yet (it re-reads the
    /// interfaces every 5 s) is announced by the 6.5 s one at the latest.
    pub fn reannounce(&self) -> Result<(), DiscoveryError> {
        let info = service_info(&self.me.lock().unwrap_or_else(|p| p.into_inner()))?;
        self.daemon.register(info)?;
        if let Some((tx, _)) = &self.follow_up {
            match tx.try_send(()) {
                Ok(()) | Err(TrySendError::Full(())) => {}
                Err(TrySendError::Disconnected(())) => {
                    tracing::warn!("mDNS: follow-up announcer is gone")
                }
            }
        }
        tracing::debug!(instance = %self.fullname, "mDNS: re-announced");
        Ok(())
    }

    /// Opens (`Some(port)`) or closes (`None`) the pairing window advertised in the TXT
    /// record (key `pair`), and re-announces at once.
    pub fn set_pairing(&mut self, port: Option<u16>) -> Result<(), DiscoveryError> {
        {
            let mut me = self.me.lock().unwrap_or_else(|p| p.into_inner());
            if me.pair_port == port {
                return Ok(());
            }
            me.pair_port = port;
        }
        self.reannounce()
    }

    /// Sends goodbye (unregister) and stops, waiting at most about 1.5 s in total for the
    /// goodbye and its repetition to go out and for the daemon thread to exit.
    pub fn stop(mut self) {
        self.stopped = true;
        self.end_follow_up();
        let deadline = Instant::now() + STOP_STEP_TIMEOUT;
        match self.daemon.unregister(&self.fullname) {
            Ok(status) => match status.recv_timeout(STOP_STEP_TIMEOUT) {
                Ok(UnregisterStatus::OK) => {
                    self.wait_goodbye_repeated(deadline + STOP_STEP_TIMEOUT)
                }
                Ok(UnregisterStatus::NotFound) => tracing::debug!("mDNS: nothing to unregister"),
                Err(e) => tracing::warn!("mDNS: goodbye not confirmed: {e}"),
            },
            Err(e) => tracing::warn!("mDNS: cannot send goodbye: {e}"),
        }
        match self.daemon.shutdown() {
            Ok(status) => {
                if let Err(e) = status.recv_timeout(STOP_STEP_TIMEOUT) {
                    tracing::warn!("mDNS: daemon did not confirm shutdown: {e}");
                }
            }
            Err(e) => tracing::debug!("mDNS: shutdown: {e}"),
        }
    }

    /// No re-registration may follow the goodbye: end the follow-up thread first. It only
    /// waits on its channel, which this disconnects, so the join is immediate.
    fn end_follow_up(&mut self) {
        if let Some((tx, handle)) = self.follow_up.take() {
            drop(tx);
            let _ = handle.join();
        }
    }

    /// `mdns-sd` repeats a goodbye once, 120 ms after the first; wait for its counter.
    fn wait_goodbye_repeated(&self, deadline: Instant) {
        while Instant::now() < deadline {
            let Ok(metrics) = self.daemon.get_metrics() else {
                return;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            match metrics.recv_timeout(left) {
                Ok(m) if m.get("unregister-resend").copied().unwrap_or(0) > 0 => return,
                Ok(_) => thread::sleep(Duration::from_millis(20)),
                Err(_) => return,
            }
        }
    }
}

impl Drop for Discovery {
    /// Dropping without [`Discovery::stop`] still queues the goodbye and the shutdown,
    /// without waiting for them.
    fn drop(&mut self) {
        if !self.stopped {
            self.end_follow_up();
            let _ = self.daemon.unregister(&self.fullname);
            let _ = self.daemon.shutdown();
        }
    }
}

/// The `cnspr-mdns-announce` thread: announcements [`FOLLOW_UP`] and [`FOLLOW_UP_LATE`]
/// after the last request.
fn follow_up(daemon: &ServiceDaemon, me: &Mutex<Announce>, requests: &std_mpsc::Receiver<()>) {
    // Pending announcement times, earliest first.
    let mut due: Vec<Instant> = Vec::new();
    loop {
        let wait = due.first().map_or(Duration::from_secs(3600), |d| {
            d.saturating_duration_since(Instant::now())
        });
        match requests.recv_timeout(wait) {
            Ok(()) => {
                let now = Instant::now();
                due = vec![now + FOLLOW_UP, now + FOLLOW_UP_LATE];
            }
            Err(RecvTimeoutError::Timeout) => {
                if due.first().is_some_and(|d| *d <= Instant::now()) {
                    due.remove(0);
                    let info = service_info(&me.lock().unwrap_or_else(|p| p.into_inner()));
                    let sent = info.and_then(|info| Ok(daemon.register(info)?));
                    if let Err(e) = sent {
                        tracing::warn!("mDNS: follow-up announcement: {e}");
                    }
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn service_info(me: &Announce) -> Result<ServiceInfo, DiscoveryError> {
    let pair = me.pair_port.map(|p| p.to_string());
    let mut props = vec![
        ("id", me.id.as_str()),
        ("v", PROTOCOL_VERSION),
        ("name", me.name.as_str()),
    ];
    if let Some(pair) = &pair {
        props.push(("pair", pair.as_str()));
    }
    let instance = advert::instance_name(&me.name, &me.id);
    let info = ServiceInfo::new(
        SERVICE_TYPE,
        &instance,
        &advert::host_name(&me.id),
        (),
        me.port,
        &props[..],
    )?;
    Ok(info.enable_addr_auto())
}

/// The `cnspr-discovery` thread: mdns-sd events in, validated and de-duplicated events out.
fn pump(
    browse: mdns_sd::Receiver<ServiceEvent>,
    tx: mpsc::Sender<DiscoveryEvent>,
    mut tracker: Tracker,
) {
    while let Ok(event) = browse.recv() {
        let out = match event {
            ServiceEvent::ServiceResolved(svc) => on_resolved(&mut tracker, &svc),
            ServiceEvent::ServiceRemoved(_, fullname) => {
                tracker.removed(&fullname).into_iter().collect()
            }
            ServiceEvent::SearchStopped(ty) => {
                tracing::warn!("mDNS: browsing {ty} stopped");
                break;
            }
            _ => Vec::new(),
        };
        for event in out {
            tracing::debug!(?event, "mDNS");
            if tx.blocking_send(event).is_err() {
                return; // receiver dropped: nobody is interested any more
            }
        }
    }
}

fn on_resolved(tracker: &mut Tracker, svc: &ResolvedService) -> Vec<DiscoveryEvent> {
    if svc.port == 0 {
        return Vec::new();
    }
    let pairs = svc.txt_properties.iter().map(|p| (p.key(), p.val()));
    let advert = match advert::parse_txt(pairs) {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(instance = %svc.fullname, "mDNS: ignoring advertisement: {e}");
            return Vec::new();
        }
    };
    let addrs = svc.addresses.iter().filter_map(|a| match a {
        ScopedIp::V4(v4) => Some((
            (*v4.addr()).into(),
            v4.interface_ids().first().map_or(0, |i| i.index),
        )),
        ScopedIp::V6(v6) => Some(((*v6.addr()).into(), v6.scope_id().index)),
        _ => None,
    });
    let addrs = advert::socket_addrs(addrs, svc.port);
    tracker.resolved(&svc.fullname, advert, addrs)
}
