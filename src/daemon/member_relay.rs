//! Members relaying packets for each other (`transport::relay::member`): which member a
//! peer that is reachable only through one (`indirect`) is dialled through.
//!
//! The membership core names, for each `indirect` peer, the member its path goes
//! through. When that member is connected to this device directly, the peer's virtual
//! address is routed through it and the peer is dialled there at once: the two devices
//! get a QUIC connection of their own whose packets the member passes on without
//! decrypting them, so streams between them no longer have every byte decrypted and
//! encrypted again in the member. Hole punching
//! goes on beside it and a direct connection, when one comes, replaces it.

use std::sync::Arc;
use std::time::Instant;

use tracing::debug;
use transport::DeviceId;

use super::context::Daemon;
use super::peers::PeerState;

/// Routes every `indirect` peer's virtual address through the member its path goes
/// through, and dials the ones that have no connection (beside a dial already under
/// way, which most likely went to the direct addresses alone); forgets the route of a peer
/// that has a direct connection. Other states keep what they have (the route learnt
/// from the peer's first relayed packets, for the answers).
pub fn update(d: &Arc<Daemon>) {
    if !d.cfg.relay_packets {
        return;
    }
    let relays = d.endpoint.relays().clone();
    let now = Instant::now();
    let mut dial = false;
    // Peers to dial through their member beside a dial under way.
    let mut beside = Vec::new();
    let changes: Vec<(DeviceId, Option<DeviceId>)> = {
        let mut table = d.peers();
        let mut changes = Vec::new();
        for p in table.peers.values_mut() {
            let conn = d.endpoint.connection(&p.id);
            let seen = Seen {
                indirect: p.state == PeerState::Indirect,
                via: p.via.filter(|m| *m != p.id),
                routed: relays.via_of(&p.id),
                connected: conn.is_some(),
                direct: conn
                    .as_ref()
                    .is_some_and(|c| !transport::relay::is_virtual(&c.remote_address())),
                reachable: |m: &DeviceId| relays.is_member(m),
            };
            let Some(step) = decide(seen) else {
                continue;
            };
            changes.push((p.id, step.route));
            if step.dial {
                p.dial.reset(now);
                if p.dial.dialing() && relays.current().is_none() {
                    // A redial of its direct addresses alone, most likely (the
                    // connection closed while the peer was still `suspect`): it would
                    // hold the dial through the member back until its handshake
                    // timeout. (With a relay server, the dial under way went to the
                    // peer's virtual address too, which now leads through the member.)
                    beside.push((p.id, p.name.clone()));
                } else {
                    dial = true;
                }
            }
        }
        changes
    };
    for (peer, via) in changes {
        relays.set_via(peer, via);
    }
    if dial {
        super::links::dial_due(d);
    }
    for (peer, name) in beside {
        debug!(peer = %name, "dialling through the member beside a dial under way");
        let d = d.clone();
        tokio::spawn(async move {
            if let Err(e) = d.endpoint.dial_through_member(peer).await {
                debug!(peer = %name, error = %e, "dial through the member failed");
            }
        });
    }
}

/// What [`update`] knows of one peer.
struct Seen<F> {
    /// The peer is `indirect`.
    indirect: bool,
    /// The member its path goes through, as the membership core says.
    via: Option<DeviceId>,
    /// The member its virtual address is routed through now.
    routed: Option<DeviceId>,
    /// It has a connection.
    connected: bool,
    /// That connection is direct (not through a relay or a member).
    direct: bool,
    /// Whether a member is connected to this device directly (only those can pass
    /// packets on).
    reachable: F,
}

/// A change of a peer's route (`None`: no route through a member), and whether to dial
/// it now.
#[derive(Debug, PartialEq, Eq)]
struct Step {
    route: Option<DeviceId>,
    dial: bool,
}

/// The route a peer should have; `None` when it has it already. An `indirect` peer goes
/// through its member when that member can pass packets on (is connected directly); a
/// peer with a direct connection through no member; others keep their route. A peer
/// given a route and no connection is dialled at once; a route that cannot be set (the
/// member is not connected directly) is no change, so the peer's dial schedule is not
/// reset on every pass while it waits.
fn decide(s: Seen<impl Fn(&DeviceId) -> bool>) -> Option<Step> {
    let want = if s.indirect {
        s.via.filter(|m| (s.reachable)(m))
    } else {
        s.routed
    };
    let want = want.filter(|_| !s.direct);
    (want != s.routed).then_some(Step {
        route: want,
        dial: want.is_some() && !s.connected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> DeviceId {
        DeviceId([b; 32])
    }

    /// A peer (`indirect` or not, its member, its route now) with no connection; only
    /// member 1 is connected to this device directly.
    fn seen(indirect: bool, via: Option<u8>, routed: Option<u8>) -> Seen<fn(&DeviceId) -> bool> {
        Seen {
            indirect,
            via: via.map(id),
            routed: routed.map(id),
            connected: false,
            direct: false,
            reachable: |m| *m == DeviceId([1; 32]),
        }
    }

    /// The same peer with a connection, direct or through a member.
    fn connected<F>(s: Seen<F>, direct: bool) -> Seen<F> {
        Seen {
            connected: true,
            direct,
            ..s
        }
    }

    fn step(route: Option<u8>, dial: bool) -> Option<Step> {
        Some(Step {
            route: route.map(id),
            dial,
        })
    }

    #[test]
    fn an_indirect_peer_is_routed_through_its_member_and_dialled_once() {
        assert_eq!(decide(seen(true, Some(1), None)), step(Some(1), true));
        // Routed already: nothing, so its dial schedule is left alone.
        assert_eq!(decide(seen(true, Some(1), Some(1))), None);
        // Connected through the member already: the route, no dial.
        let s = connected(seen(true, Some(1), None), false);
        assert_eq!(decide(s), step(Some(1), false));
    }

    #[test]
    fn a_member_not_connected_directly_gives_no_route_and_no_dial_on_every_pass() {
        // Member 2 has no direct connection to this device: nothing to change, pass
        // after pass (the dial schedule would otherwise restart each time).
        assert_eq!(decide(seen(true, Some(2), None)), None);
        // A route through it that was set while it was connected is taken away, without
        // a dial.
        assert_eq!(decide(seen(true, Some(2), Some(2))), step(None, false));
    }

    #[test]
    fn a_direct_connection_drops_the_route_and_other_states_keep_theirs() {
        let s = connected(seen(true, Some(1), Some(1)), true);
        assert_eq!(decide(s), step(None, false));
        let s = connected(seen(false, None, Some(1)), true);
        assert_eq!(decide(s), step(None, false));
        // An active peer whose answers go back the way its packets came keeps that way.
        let s = connected(seen(false, None, Some(1)), false);
        assert_eq!(decide(s), None);
    }
}
