//! Hole punching, driven from the daemon: when to punch, the exchange through a member,
//! and the dials (the exchange itself is described in `punch.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info};
use transport::DeviceId;

use super::context::Daemon;
use super::dial::Dial;
use super::peers::PeerState;
use super::punch::{admit, clean, Started, EXCHANGE_TIMEOUT, MAX_BACKOFF};
use super::wire::{MeshFrame, Punch, PunchStep};

/// Starts the punch scheduler.
pub fn start(d: &Arc<Daemon>) {
    let d = d.clone();
    tokio::spawn(async move {
        loop {
            super::member_relay::update(&d);
            // No timer at all while no peer is relayed: nothing wakes an idle LAN mesh.
            if initiate_due(&d) {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = d.punches.woken() => {}
                }
            } else {
                d.punches.woken().await;
            }
        }
    });
}

/// Starts an exchange with every relayed peer whose turn it is (this device initiates
/// when its ID is the lower one); false when there is no such peer.
fn initiate_due(d: &Arc<Daemon>) -> bool {
    let now = Instant::now();
    let relayed: Vec<(DeviceId, DeviceId)> = {
        let table = d.peers();
        table
            .peers
            .values()
            .filter(|p| d.id() < p.id)
            .filter_map(|p| match p.state {
                PeerState::Indirect => Some((p.id, p.via?)),
                // Connected through a relay: the exchange goes over that connection.
                PeerState::Active | PeerState::Suspect if p.relay.is_some() => Some((p.id, p.id)),
                _ => None,
            })
            .collect()
    };
    let any = !relayed.is_empty();
    let mut due = Vec::new();
    {
        let mut st = d.punches.lock();
        st.schedule
            .retain(|id, _| relayed.iter().any(|(p, _)| p == id));
        st.answered
            .retain(|_, (_, _, at)| now.duration_since(*at) < EXCHANGE_TIMEOUT);
        for (peer, via) in relayed {
            let sched = st.schedule.entry(peer).or_insert_with(|| Dial::new(now));
            if sched.start(now) {
                let session = rand::random::<u64>();
                st.started.insert(
                    peer,
                    Started {
                        session,
                        via,
                        at: now,
                    },
                );
                due.push((peer, via, session));
            }
        }
    }
    if due.is_empty() {
        return any;
    }
    let ours = clean(&super::candidates::dialable(d));
    for (peer, via, session) in due {
        debug!(peer = %peer.short(), via = %via.short(), "hole punching: starting an exchange");
        let sent = send_step(d, via, peer, session, PunchStep::Connect(ours.clone()));
        let dd = d.clone();
        tokio::spawn(async move {
            if sent {
                tokio::time::sleep(EXCHANGE_TIMEOUT).await;
            }
            let connected = direct(&dd, &peer);
            let mut st = dd.punches.lock();
            if st.started.get(&peer).is_some_and(|s| s.session == session) {
                st.started.remove(&peer);
            }
            if let Some(s) = st.schedule.get_mut(&peer) {
                if connected {
                    s.finished();
                    s.connected();
                } else {
                    s.failed(Instant::now(), MAX_BACKOFF);
                }
            }
        });
    }
    any
}

/// A punch frame from `conn`'s mesh stream.
pub fn received(d: &Arc<Daemon>, conn: DeviceId, p: Punch) {
    let now = Instant::now();
    if !admit(&mut d.punches.lock(), conn, now) {
        debug!(peer = %conn.short(), "punch frame over the rate limit dropped");
        return;
    }
    let to_member = p.to == d.id() || d.members.is_member(&p.to);
    if p.from == d.id() || !d.members.is_member(&p.from) || !to_member {
        debug!(from = %p.from.short(), to = %p.to.short(), "punch frame about a non-member dropped");
        return;
    }
    if p.to != d.id() {
        // Passed on between two members; the sender speaks only for itself.
        if p.from == conn && p.to != conn {
            let to = p.to;
            let frame = MeshFrame::Punch(p);
            let bytes = transport::frame::encode(&frame, usize::MAX).map_or(0, |v| v.len());
            let passed = d.mesh.send(&to, frame);
            debug!(from = %conn.short(), to = %to.short(), passed, bytes, "punch frame passed on");
        }
        return;
    }
    let peer = p.from;
    debug!(peer = %peer.short(), via = %conn.short(), step = ?p.step, "punch frame");
    match p.step {
        PunchStep::Connect(theirs) => {
            let theirs = clean(&theirs);
            d.punches
                .lock()
                .answered
                .insert(peer, (p.session, theirs, now));
            let ours = clean(&super::candidates::dialable(d));
            send_step(d, conn, peer, p.session, PunchStep::Reply(ours));
        }
        PunchStep::Reply(theirs) => {
            let rtt = {
                let mut st = d.punches.lock();
                match st.started.get(&peer) {
                    Some(s) if s.session == p.session && s.via == conn => {
                        let rtt = now.duration_since(s.at);
                        st.started.remove(&peer);
                        rtt
                    }
                    _ => return,
                }
            };
            send_step(d, conn, peer, p.session, PunchStep::Sync);
            let theirs = clean(&theirs);
            let dd = d.clone();
            tokio::spawn(async move {
                tokio::time::sleep(rtt / 2).await;
                dial(&dd, peer, theirs, rtt).await;
            });
        }
        PunchStep::Sync => {
            let theirs = match d.punches.lock().answered.remove(&peer) {
                Some((session, addrs, _)) if session == p.session => addrs,
                _ => return,
            };
            let dd = d.clone();
            tokio::spawn(async move { dial(&dd, peer, theirs, Duration::ZERO).await });
        }
    }
}

/// Sends this device's `step` of exchange `session` with `to` through the member `via`;
/// false when there is no mesh stream to `via`.
fn send_step(d: &Daemon, via: DeviceId, to: DeviceId, session: u64, step: PunchStep) -> bool {
    d.mesh.send(
        &via,
        MeshFrame::Punch(Punch {
            from: d.id(),
            to,
            session,
            step,
        }),
    )
}

/// Whether `peer` has a connection of its own that does not go through a relay.
fn direct(d: &Daemon, peer: &DeviceId) -> bool {
    d.endpoint
        .connection(peer)
        .is_some_and(|c| d.endpoint.relay_of(&c).is_none())
}

/// Dials `peer` at its candidates and the addresses known for it.
async fn dial(d: &Arc<Daemon>, peer: DeviceId, theirs: Vec<SocketAddr>, rtt: Duration) {
    let mut addrs = theirs;
    if let Some(p) = d.peers().peers.get(&peer) {
        addrs.extend(p.addrs.iter().copied());
    }
    let addrs = clean(&addrs);
    if addrs.is_empty() || direct(d, &peer) {
        return;
    }
    debug!(peer = %peer.short(), ?addrs, rtt_ms = rtt.as_millis() as u64, "hole punching: dialling");
    match d.endpoint.punch(peer, &addrs).await {
        Ok(pc) => {
            info!(peer = %pc.name, addr = %pc.remote_address(), "hole punching: direct connection up")
        }
        Err(e) => {
            debug!(peer = %peer.short(), error = %e, "hole punching: no direct path this time")
        }
    }
}
