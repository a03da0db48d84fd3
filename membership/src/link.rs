//! A direct link as the core knows it: its timing, whether it is watched, what its
//! probes are doing.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::message::Watch;

/// What this member knows of a direct link. `Unwatched`: nobody here expects its
/// peer's beats (the peer's liveness comes from its monitors); otherwise the link is
/// watched and its status comes from its silence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LinkStatus {
    Unwatched,
    Active,
    Suspect,
    Dead,
}

impl LinkStatus {
    /// What a link record says of the peer.
    pub(crate) fn watch(self) -> Watch {
        match self {
            LinkStatus::Unwatched => Watch::Unwatched,
            LinkStatus::Active => Watch::Alive,
            LinkStatus::Suspect => Watch::Suspect,
            LinkStatus::Dead => Watch::Lost,
        }
    }
}

/// Our beats do not reach a monitor: its record, `key`, said `entry` of us.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Broken {
    pub(crate) since: Instant,
    pub(crate) key: (u64, u64),
    pub(crate) entry: Option<Watch>,
}

pub(crate) struct Link<I> {
    pub(crate) rtt: Duration,
    pub(crate) addr: Option<SocketAddr>,
    pub(crate) announced_rtt: Duration,
    pub(crate) last_heard: Instant,
    pub(crate) ping: Option<(u64, Instant)>,
    pub(crate) srtt: Option<Duration>,
    pub(crate) rttvar: Duration,
    pub(crate) status: LinkStatus,
    /// When the link became watched: its silence counts from then at the earliest.
    pub(crate) watch_since: Instant,
    /// When we last sent a beat.
    pub(crate) beat_sent: Instant,
    /// When the peer's last beat arrived (any channel): postpones our beat over QUIC.
    pub(crate) beat_rcvd: Instant,
    /// When the peer's last beat arrived on the link's beat channel: the peer beats us.
    pub(crate) beat_in: Option<Instant>,
    /// A beat came since the link last turned active.
    pub(crate) beat_seen: bool,
    /// When we last sent a ping (not a beat).
    pub(crate) ping_sent: Option<Instant>,
    /// We expect this peer's beats and pinged it once to start watching it.
    pub(crate) contacted: bool,
    /// Indirect probe of a suspected link: its nonce and the best helper that reached it.
    pub(crate) indirect: Option<(u64, Option<(I, Duration)>)>,
    /// Beats travel as unacknowledged datagrams: each side beats its monitors only.
    pub(crate) datagram: bool,
    /// Since when we beat this peer as one of our monitors (heartbeat links).
    pub(crate) beat_out_since: Option<Instant>,
    /// Our beats do not reach it (heartbeat links): not a monitor, not a direct path.
    pub(crate) broken: Option<Broken>,
    /// When its peer went down in our view (unwatched links): for the silence the daemon reads.
    pub(crate) down_since: Option<Instant>,
    /// Its peer was down in our view and nothing came on this link since: the connection
    /// may belong to a process that is gone (the peer restarted).
    pub(crate) unverified: bool,
}

impl<I> Link<I> {
    pub(crate) fn new(
        now: Instant,
        rtt: Duration,
        addr: Option<SocketAddr>,
        datagram: bool,
    ) -> Self {
        Link {
            rtt,
            addr,
            announced_rtt: rtt,
            last_heard: now,
            ping: None,
            srtt: None,
            rttvar: Duration::ZERO,
            status: LinkStatus::Unwatched,
            watch_since: now,
            beat_sent: now,
            beat_rcvd: now,
            beat_in: None,
            beat_seen: false,
            ping_sent: None,
            contacted: false,
            indirect: None,
            datagram,
            beat_out_since: None,
            broken: None,
            down_since: None,
            unverified: false,
        }
    }

    /// Over QUIC, this side beats the link: it sent the last beat, not the peer.
    pub(crate) fn beaten_here(&self) -> bool {
        self.beat_sent >= self.beat_rcvd
    }

    pub(crate) fn watched(&self) -> bool {
        self.status != LinkStatus::Unwatched
    }

    /// Usable to send through: not known broken, not dead.
    pub(crate) fn usable(&self) -> bool {
        self.broken.is_none() && self.status != LinkStatus::Dead
    }

    /// Silence of a watched link: since last heard, or since watching began.
    pub(crate) fn silence(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_heard.max(self.watch_since))
    }
}

pub(crate) struct Relay<I> {
    pub(crate) requester: I,
    pub(crate) nonce: u64,
    pub(crate) target: I,
    pub(crate) sent: Instant,
    pub(crate) deadline: Instant,
}
