//! The window's side: opens the pairing port, serves attempts through [`WindowHandshake`]
//! and follows the window's life with [`WindowState`]. Everything decided is decided
//! there; this task only moves messages and applies the outcome. Attempts run side by side
//! up to the message that tries their code (a stalled one holds up no other); codes are
//! tried, and attempts concluded, one at a time by the window's task, so the count of
//! wrong codes and the one pairing a window allows stay exact.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tracing::{info, warn};
use transport::pairing;
use transport::quinn::{Connection, Endpoint, Incoming, RecvStream, SendStream};

use super::addr::{window_addresses, Shown};
use super::code::{new_code, normalize_code};
use super::error::PairError;
use super::handshake::{Admission, Session, WindowHandshake, WindowStep};
use super::io;
use super::window::{
    Attempt, AttemptReport, Closed, Paired, Phase, Who, WindowOutput, WindowState, LINGER,
};
use crate::api::{code, ErrorBody};
use crate::daemon::context::Daemon;
use crate::daemon::nearby::NearbyInfo;
use crate::daemon::wire::PairMsg;

/// Longest one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for an attempt's QUIC handshake (the joiner gives up after 2 s; one that
/// went away must not hold up the next attempt for long).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a closed window spends telling one device that it closed.
const CLOSED_ANSWER_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest the window spends delivering its welcome to a device that proved the code
/// (and hearing its `Done`).
const WELCOME_TIMEOUT: Duration = Duration::from_secs(3);
/// Attempts under way beyond which an address not validated gets a QUIC Retry.
const RETRY_ABOVE: usize = 2;
/// Attempts under way at once before their code is tried; a newer one takes the place of
/// the oldest.
const MAX_PREPARING: usize = 4;
/// Devices told at once that the window closed; more are turned away unanswered.
const MAX_LATE: usize = 4;
/// Windows (open or closed and still answering) at most in this process; beyond it a
/// closed window stops listening at once.
const MAX_WINDOWS: usize = 4;
/// Failed attempts waiting for the window's client.
const REPORTS: usize = 16;

static WINDOWS: AtomicUsize = AtomicUsize::new(0);

/// Counts a window task while it runs.
struct Counted;

impl Counted {
    /// `None` when there are already `MAX_WINDOWS`.
    fn new() -> Option<Counted> {
        let before = WINDOWS.fetch_add(1, Ordering::SeqCst);
        if before >= MAX_WINDOWS {
            WINDOWS.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Counted)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        WINDOWS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What `pair` answers as soon as the window is open.
#[derive(Debug, Clone, Serialize)]
pub struct WindowInfo {
    pub code: String,
    pub expires_in_s: u64,
    /// Where the window listens (for `cnspr pair CODE --addr` on networks without mDNS);
    /// link-local IPv6 addresses carry their interface (`[fe80::1%eth0]:41532`).
    pub addresses: Vec<String>,
    /// Devices seen on the LAN that are not in the mesh.
    pub nearby: Vec<NearbyInfo>,
}

/// An open window: the first answer, failed attempts as they happen, then the outcome.
/// Dropping `cancel` (or sending `true`) closes it.
pub struct Window {
    pub info: WindowInfo,
    pub outcome: oneshot::Receiver<Result<Paired, ErrorBody>>,
    pub cancel: watch::Sender<bool>,
    /// Wrong codes and refused devices, each before the outcome it may lead to.
    pub attempts: mpsc::Receiver<AttemptReport>,
}

/// The next thing to tell a window's client.
#[derive(Debug)]
pub enum Update {
    /// An attempt failed (`{"attempt": ...}`).
    Attempt(AttemptReport),
    /// The window's outcome; the last update.
    Done(Result<Paired, ErrorBody>),
}

impl Window {
    /// Failed attempts as they happen, then the outcome. Cancel-safe (it can be one arm of
    /// a `select!`); not to be called again after [`Update::Done`].
    pub async fn next_update(&mut self) -> Update {
        tokio::select! {
            biased;
            Some(a) = self.attempts.recv() => Update::Attempt(a),
            o = &mut self.outcome => Update::Done(o.unwrap_or_else(|_| {
                Err(ErrorBody::new(code::INTERNAL, "pairing task ended"))
            })),
        }
    }
}

/// Devices seen on the LAN that are not members.
pub fn nearby(d: &Daemon) -> Vec<NearbyInfo> {
    let roster = d.roster();
    let mut v: Vec<NearbyInfo> = d
        .nearby
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|(id, _)| !roster.is_member(id) && !roster.is_removed(id))
        .map(|(id, n)| NearbyInfo {
            id: id.to_string(),
            name: n.name.clone(),
            addresses: n.addrs.iter().map(|a| Shown(*a).to_string()).collect(),
            pairing: !n.pairing.is_empty(),
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// Opens a pairing window for `lifetime`.
pub fn open(d: &Arc<Daemon>, lifetime: Duration) -> Result<Window, ErrorBody> {
    open_window(d, lifetime).map_err(ErrorBody::from)
}

fn set_open(d: &Daemon, open: bool) {
    *d.pairing_open.lock().unwrap_or_else(|p| p.into_inner()) = open;
}

fn open_window(d: &Arc<Daemon>, lifetime: Duration) -> Result<Window, PairError> {
    {
        let mut busy = d.pairing_open.lock().unwrap_or_else(|p| p.into_inner());
        if *busy {
            return Err(PairError::Busy);
        }
        *busy = true;
    }
    let ep = pairing::listen(&d.identity, "[::]:0".parse().expect("literal"))
        .or_else(|_| pairing::listen(&d.identity, "0.0.0.0:0".parse().expect("literal")))
        .inspect_err(|_| set_open(d, false))?;
    let port = ep.local_addr().map_or(0, |a| a.port());
    let code_shown = new_code();
    let digits = normalize_code(&code_shown)?;
    let ips = d
        .netwatch
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|w| w.addresses())
        .unwrap_or_default();
    let mut addresses: Vec<String> = window_addresses(&ips, port)
        .into_iter()
        .map(|a| Shown(a).to_string())
        .collect();
    if addresses.is_empty() {
        addresses.push(SocketAddr::from(([127, 0, 0, 1], port)).to_string());
    }
    if let Some(m) = d.mdns.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        if let Err(e) = m.set_pairing(Some(port)) {
            warn!(error = %e, "could not advertise the pairing window by mDNS");
        }
    }
    let info = WindowInfo {
        code: code_shown,
        expires_in_s: lifetime.as_secs(),
        addresses,
        nearby: nearby(d),
    };
    let (done_tx, done_rx) = oneshot::channel();
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let (reports_tx, reports_rx) = mpsc::channel(REPORTS);
    let counted = Counted::new();
    let linger = if counted.is_some() {
        LINGER
    } else {
        Duration::ZERO
    };
    let state = WindowState::new(Instant::now(), lifetime, linger);
    let task = Task {
        daemon: Some(d.clone()),
        ep,
        digits,
        state,
        done: Some(done_tx),
        reports: reports_tx,
    };
    tokio::spawn(async move {
        let _counted = counted;
        task.run(cancel_rx).await;
    });
    info!(port, "pairing window open");
    Ok(Window {
        info,
        outcome: done_rx,
        cancel: cancel_tx,
        attempts: reports_rx,
    })
}

struct Task {
    /// Held while the window is open.
    daemon: Option<Arc<Daemon>>,
    ep: Endpoint,
    digits: String,
    state: WindowState,
    done: Option<oneshot::Sender<Result<Paired, ErrorBody>>>,
    reports: mpsc::Sender<AttemptReport>,
}

impl Task {
    async fn run(mut self, mut cancel: watch::Receiver<bool>) {
        // Attempts up to their code's try run side by side; the code is tried, and the
        // attempt concluded, here, one at a time.
        let mut preparing = Preparing::default();
        // Devices being told that the window closed.
        let mut late = tokio::task::JoinSet::new();
        loop {
            let wake = self
                .state
                .poll_timeout()
                .map(tokio::time::Instant::from_std);
            let sleep = async {
                match wake {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let outputs = match (*self.state.phase(), &self.daemon) {
                (Phase::Gone, _) => break,
                (Phase::Open, Some(d)) => {
                    // In this order: a cancel or the deadline closes the window before
                    // another code is tried; attempts that ended are taken before new
                    // connections.
                    tokio::select! {
                        biased;
                        // Also when the window's client dropped its end.
                        _ = cancelled(&mut cancel) => self.state.cancel(Instant::now()),
                        _ = sleep => self.state.handle_timeout(Instant::now()),
                        Some(p) = preparing.next() => {
                            let a = match p {
                                Prepared::Ended(a) => a,
                                Prepared::Confirm(a, msg) => a.conclude(d, msg).await,
                            };
                            self.state.handle_attempt(a, Instant::now())
                        }
                        i = self.ep.accept() => match i {
                            Some(incoming) => {
                                preparing.start(d, incoming, &self.digits);
                                Vec::new()
                            }
                            None => self.state.port_closed(),
                        },
                    }
                }
                (Phase::Open, None) => self.state.port_closed(),
                (Phase::Closed(why), _) => {
                    tokio::select! {
                        biased;
                        _ = sleep => self.state.handle_timeout(Instant::now()),
                        i = self.ep.accept() => match i {
                            Some(incoming) if late.len() < MAX_LATE => {
                                late.spawn(answer_closed(incoming, why));
                                Vec::new()
                            }
                            Some(incoming) => {
                                incoming.refuse();
                                Vec::new()
                            }
                            None => self.state.port_closed(),
                        },
                        // Attempts that were under way when the window closed: their
                        // code is not tried, they hear why.
                        Some(p) = preparing.next() => {
                            if let Prepared::Confirm(a, _) = p {
                                late.spawn(a.told_closed(why));
                            }
                            Vec::new()
                        }
                        Some(_) = late.join_next(), if !late.is_empty() => Vec::new(),
                    }
                }
            };
            for o in outputs {
                match o {
                    WindowOutput::Report(r) => {
                        if self.reports.try_send(r).is_err() {
                            warn!("a failed pairing attempt was not reported: the window's client is not reading");
                        }
                    }
                    WindowOutput::Outcome(r) => self.finish(r),
                }
            }
        }
        self.finish(Err(PairError::PortClosed));
    }

    /// The window closed: it is no longer advertised and another may open; then the
    /// client hears the outcome (once).
    fn finish(&mut self, outcome: Result<Paired, PairError>) {
        if let Some(d) = self.daemon.take() {
            if let Some(m) = d.mdns.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                let _ = m.set_pairing(None);
            }
            set_open(&d, false);
        }
        if let Some(tx) = self.done.take() {
            let _ = tx.send(outcome.map_err(ErrorBody::from));
        }
    }
}

/// Resolves when the window's client asks to close it or drops its end.
async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    let _ = cancel.wait_for(|c| *c).await;
}

/// Attempts up to their code's try, run side by side: a device that connects and then
/// stalls (gone from the network, or holding the port on purpose) does not hold up the
/// others. At most [`MAX_PREPARING`]; a newer one takes the place of the oldest.
#[derive(Default)]
struct Preparing {
    tasks: tokio::task::JoinSet<Prepared>,
    /// Oldest first, each with whether its QUIC handshake is done.
    started: VecDeque<(AbortHandle, Arc<AtomicBool>)>,
}

impl Preparing {
    fn start(&mut self, d: &Arc<Daemon>, incoming: Incoming, digits: &str) {
        self.started.retain(|(h, _)| !h.is_finished());
        // An address not shown to receive (it may be spoofed: a flood of Initials from
        // made-up addresses is cheap) gets a QUIC Retry once two attempts are under way;
        // a real device comes back with the token one round trip later.
        if self.started.len() >= RETRY_ABOVE && incoming.may_retry() {
            let _ = incoming.retry();
            return;
        }
        if self.started.len() >= MAX_PREPARING {
            // The oldest still in its QUIC handshake gives way first (a device that
            // answers is through it in a round trip), else the oldest.
            let at = self
                .started
                .iter()
                .position(|(_, done)| !done.load(Ordering::Relaxed))
                .unwrap_or(0);
            if let Some((oldest, _)) = self.started.remove(at) {
                info!("pairing attempt dropped for a newer one: too many under way");
                oldest.abort();
            }
        }
        let (d, digits) = (d.clone(), digits.to_string());
        let from = Shown(crate::addr::canon(incoming.remote_address()));
        let done = Arc::new(AtomicBool::new(false));
        let handshake_done = done.clone();
        let task = self.tasks.spawn(async move {
            let attempt = prepare(&d, incoming, &digits, &handshake_done);
            match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    info!(from = %from, error = %e, "pairing attempt abandoned");
                    Prepared::Ended(Attempt::Abandoned)
                }
                Err(_) => {
                    info!(from = %from, "pairing attempt timed out");
                    Prepared::Ended(Attempt::Abandoned)
                }
            }
        });
        self.started.push_back((task, done));
    }

    /// The next attempt prepared or ended (aborted ones are skipped); pending while there
    /// is none under way.
    async fn next(&mut self) -> Option<Prepared> {
        loop {
            match self.tasks.join_next().await {
                Some(Ok(p)) => return Some(p),
                Some(Err(_)) => continue,
                None => std::future::pending::<()>().await,
            }
        }
    }
}

/// Where an attempt stands when its task ends.
enum Prepared {
    /// It ended before its code was tried.
    Ended(Attempt),
    /// The joiner's confirmation arrived: the code is to be tried.
    Confirm(Box<Attempting>, PairMsg),
}

/// One attempt's connection and handshake.
struct Attempting {
    conn: Connection,
    send: SendStream,
    recv: RecvStream,
    hs: WindowHandshake,
    session: Session,
    from: Shown,
}

/// Runs an attempt up to the message that tries its code; `handshake_done` is set once
/// its QUIC handshake is.
async fn prepare(
    d: &Arc<Daemon>,
    incoming: Incoming,
    digits: &str,
    handshake_done: &AtomicBool,
) -> Result<Prepared, PairError> {
    let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming)
        .await
        .map_err(|_| PairError::AttemptTimeout(HANDSHAKE_TIMEOUT))??;
    handshake_done.store(true, Ordering::Relaxed);
    let session = io::session(&conn)?;
    let from = Shown(crate::addr::canon(conn.remote_address()));
    let (send, recv) = conn.accept_bi().await?;
    let removed = d.roster().is_removed(&session.peer);
    let hs = WindowHandshake::new(digits, io::me(d), session, removed, io::nonce());
    let mut a = Attempting {
        conn,
        send,
        recv,
        hs,
        session,
        from,
    };
    loop {
        let msg = io::read(&mut a.recv).await?;
        if a.hs.tries_code_next() {
            return Ok(Prepared::Confirm(Box::new(a), msg));
        }
        if let Some(end) = a.step(d, msg).await? {
            return Ok(Prepared::Ended(end));
        }
    }
}

impl Attempting {
    fn who(&self) -> Who {
        Who {
            id: self.session.peer,
            name: self.hs.joiner_name().unwrap_or_default().to_string(),
            addr: self.from,
        }
    }

    /// Tries the code with `msg` and takes the attempt to its end (the window's task, one
    /// attempt at a time). The outcome is decided at once, and the I/O after it is
    /// bounded (`io::last_word`, [`WELCOME_TIMEOUT`]): a joiner that holds back cannot
    /// turn a tried code into an abandoned attempt, nor hold the window's task for long.
    async fn conclude(mut self: Box<Self>, d: &Arc<Daemon>, msg: PairMsg) -> Attempt {
        if self.conn.close_reason().is_some() {
            // The joiner gave up while this attempt waited its turn: its code is not
            // tried (a pairing it would never hear of).
            info!(from = %self.from, "pairing attempt abandoned before its code was tried: the device went away");
            return Attempt::Abandoned;
        }
        match self.step(d, msg).await {
            Ok(Some(a)) => a,
            Ok(None) => {
                info!(from = %self.from, "pairing attempt abandoned: a message out of turn");
                Attempt::Abandoned
            }
            Err(e) => {
                info!(from = %self.from, error = %e, "pairing attempt abandoned");
                Attempt::Abandoned
            }
        }
    }

    /// The window closed while this attempt was under way: its code is not tried.
    async fn told_closed(mut self: Box<Self>, why: Closed) {
        let fail = PairMsg::Fail {
            reason: why.reason(),
        };
        // Bounded by `last_word` itself.
        io::last_word(&self.conn, &mut self.send, &fail).await;
        info!(from = %self.from, "told a pairing attempt under way that the window closed");
    }

    /// Handles one message from the joiner; the attempt's end once it ended.
    async fn step(&mut self, d: &Arc<Daemon>, msg: PairMsg) -> Result<Option<Attempt>, PairError> {
        let from = self.from;
        match self.hs.handle(msg)? {
            WindowStep::Send(m) => {
                io::write(&mut self.send, &m).await?;
                Ok(None)
            }
            WindowStep::Refuse { send: fail, why } => {
                io::last_word(&self.conn, &mut self.send, &fail).await;
                info!(from = %from, reason = %why, "pairing attempt refused");
                Ok(Some(Attempt::Refused(self.who(), why)))
            }
            WindowStep::WrongCode { send: fail } => {
                io::last_word(&self.conn, &mut self.send, &fail).await;
                warn!(from = %from, id = %self.session.peer.short(), "pairing attempt with a wrong code");
                Ok(Some(Attempt::WrongCode(self.who())))
            }
            WindowStep::Admit(adm) => {
                let mesh_name = admit(d, &adm, self.conn.remote_address());
                let welcome = self
                    .hs
                    .welcome(mesh_name.clone(), d.roster().wire_snapshot())?;
                let (send, recv) = (&mut self.send, &mut self.recv);
                let delivered = tokio::time::timeout(WELCOME_TIMEOUT, async move {
                    io::write(send, &welcome).await?;
                    // Its `Done`, or its going away.
                    let _ = io::read(recv).await;
                    Ok::<_, PairError>(())
                })
                .await;
                if !matches!(delivered, Ok(Ok(()))) {
                    warn!("the joining device went away after proving the code; it is trusted here and will learn the roster when it connects");
                }
                self.conn.close(0u32.into(), b"paired");
                Ok(Some(Attempt::Paired(Paired {
                    id: adm.joiner.to_string(),
                    name: mesh_name,
                    self_name: None,
                })))
            }
        }
    }
}

/// The joiner proved the code over this very TLS session: it becomes a member. Returns
/// its name in the mesh.
fn admit(d: &Arc<Daemon>, adm: &Admission, remote: SocketAddr) -> String {
    let mesh_name = d
        .roster()
        .unique_name(&adm.name, &adm.joiner, &d.identity.name);
    let applied = d.members.add(adm.joiner, &mesh_name);
    d.membership_changed(applied, None);
    if adm.port != 0 {
        io::remember(d, adm.joiner, io::main_addr(remote, adm.port), false);
    }
    if mesh_name != adm.name {
        info!(peer = %mesh_name, asked = %adm.name, "name taken in the mesh: paired device renamed");
    }
    info!(peer = %mesh_name, id = %adm.joiner.short(), "paired");
    mesh_name
}

/// Tells a device that tried the window after it closed why it closed (a `Fail`
/// answering its `Start`).
async fn answer_closed(incoming: Incoming, why: Closed) {
    let answer = async {
        let conn = incoming.await?;
        let (mut send, mut recv) = conn.accept_bi().await?;
        io::read(&mut recv).await?;
        let fail = PairMsg::Fail {
            reason: why.reason(),
        };
        io::last_word(&conn, &mut send, &fail).await;
        Ok::<_, PairError>(())
    };
    match tokio::time::timeout(CLOSED_ANSWER_TIMEOUT, answer).await {
        Ok(Ok(())) => info!("told a late pairing attempt that the window closed"),
        Ok(Err(e)) => info!(error = %e, "late pairing attempt abandoned"),
        Err(_) => info!("late pairing attempt timed out"),
    }
}
