//! `status`: this device, its listening addresses, counters.

use std::sync::atomic::Ordering;

use crate::api::{
    GossipCounters, HandshakeCounters, HeartbeatCounters, ProfileInfo, RecordCounters, Status,
};
use crate::config::Profile;
use crate::daemon::context::Daemon;
use crate::daemon::peers::PeerState;

pub fn status(d: &Daemon) -> Status {
    let candidates = crate::daemon::candidates::candidates(d);
    // Before the table's lock is taken: it takes that lock itself.
    let conflicts = d
        .conflicts()
        .iter()
        .map(|(id, _)| d.conflict_text(id))
        .collect();
    let gentle = d.member.lock().is_gentle();
    let table = d.peers();
    Status {
        id: d.id().to_string(),
        name: d.identity.name.clone(),
        listen: d
            .endpoint
            .local_addrs()
            .iter()
            .map(|a| a.to_string())
            .collect(),
        peers: table.peers.len(),
        active: table
            .peers
            .values()
            .filter(|p| p.state == PeerState::Active)
            .count(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_s: d.started.elapsed().as_secs(),
        pid: std::process::id(),
        state_dir: d.paths.state_dir.display().to_string(),
        socket: d.paths.socket.display().to_string(),
        handlers: d.handlers_dir.display().to_string(),
        gossip: GossipCounters {
            roster_sent: d.mesh.roster_sent.load(Ordering::Relaxed),
            roster_received: d.mesh.roster_received.load(Ordering::Relaxed),
        },
        heartbeats: d.endpoint.twin().map(|t| HeartbeatCounters {
            sent: t.stats.sent.load(Ordering::Relaxed),
            received: t.stats.received.load(Ordering::Relaxed),
            rejected: t.stats.rejected.load(Ordering::Relaxed),
        }),
        records: {
            let s = d.records.stats();
            RecordCounters {
                verified: s.verified,
                known: s.known,
                refused: s.refused,
                unchecked: s.unchecked,
            }
        },
        candidates,
        relays: super::relays::list(d),
        forwarded_for_members: d.endpoint.relays().stats.forwarded.load(Ordering::Relaxed),
        handshakes: {
            let h = d.endpoint.handshakes();
            HandshakeCounters {
                under_way: h.under_way,
                peak: h.peak,
                accepted: h.accepted,
                retried: h.retried,
                refused: h.refused,
                evicted: h.evicted,
            }
        },
        removed: d.removed.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        conflicts,
        profile: Some(ProfileInfo {
            current: if gentle { "battery" } else { "mains" }.into(),
            source: if d.cfg.profile == Profile::Auto {
                "auto"
            } else {
                "config"
            }
            .into(),
        }),
    }
}
