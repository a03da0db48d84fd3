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
/// way, see [`decide`]); forgets the route of a peer that has a direct connection. Other states keep what they have (the route learnt
/// from the peer's first relayed packets, for the answers).
pub fn update(d: &Arc<Daemon>) {
    if !d.cfg.relay_packets {
        return;
    }
    let relays = d.endpoint.relays().clone();
    let now = Instant::now();
    let relay_server = relays.current().is_some();
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
                dialing: p.dial.dialing(),
                relay_server,
                reachable: |m: &DeviceId| relays.is_member(m),
            };
            let Some(step) = decide(seen) else {
                continue;
            };
            changes.push((p.id, step.route));
            match step.dial {
                DialStep::Not => {}
                DialStep::Now => {
                    p.dial.reset(now);
                    dial = true;
                }
                DialStep::Beside => {
                    p.dial.reset(now);
                    beside.push((p.id, p.name.clone()));
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
    /// An ordinary dial of it is under way.
    dialing: bool,
    /// This device is registered with a relay server.
    relay_server: bool,
    /// Whether a member is connected to this device directly (only those can pass
    /// packets on).
    reachable: F,
}

/// A change of a peer's route (`None`: no route through a member), and whether to dial
/// it now.
#[derive(Debug, PartialEq, Eq)]
struct Step {
    route: Option<DeviceId>,
    dial: DialStep,
}

/// Whether and how a peer given a route is dialled.
#[derive(Debug, PartialEq, Eq)]
enum DialStep {
    Not,
    /// Through the link supervisor's schedule, at once (`links::dial_due`).
    Now,
    /// Through the member now, beside the ordinary dial under way
    /// (`Endpoint::dial_through_member`).
    Beside,
}

/// The route a peer should have; `None` when it has it already. An `indirect` peer goes
/// through its member when that member can pass packets on (is connected directly); a
/// peer with a direct connection through no member; others keep their route. A peer
/// given a route and no connection is dialled at once; a route that cannot be set (the
/// member is not connected directly) is no change, so the peer's dial schedule is not
/// reset on every pass while it waits.
///
/// A dial under way then most likely went to the peer's direct addresses alone (its
/// connection closed while the core still held it `suspect`), and would hold the dial
/// through the member back until its handshake timeout: the peer is dialled through the
/// member beside it. With a relay server, the dial under way went to the peer's virtual
/// address too, which now leads through the member.
fn decide(s: Seen<impl Fn(&DeviceId) -> bool>) -> Option<Step> {
    let want = if s.indirect {
        s.via.filter(|m| (s.reachable)(m))
    } else {
        s.routed
    };
    let want = want.filter(|_| !s.direct);
    let dial = if want.is_none() || s.connected {
        DialStep::Not
    } else if s.dialing && !s.relay_server {
        DialStep::Beside
    } else {
        DialStep::Now
    };
    (want != s.routed).then_some(Step { route: want, dial })
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
            dialing: false,
            relay_server: false,
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
        let dial = if dial { DialStep::Now } else { DialStep::Not };
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
    fn a_dial_under_way_gets_the_dial_through_the_member_beside_it() {
        let under_way = |relay_server| Seen {
            dialing: true,
            relay_server,
            ..seen(true, Some(1), None)
        };
        let beside = Some(Step {
            route: Some(id(1)),
            dial: DialStep::Beside,
        });
        assert_eq!(decide(under_way(false)), beside);
        // Through a relay server the dial under way reaches the member's route too.
        assert_eq!(decide(under_way(true)), step(Some(1), true));
        // Connected already (the dial under way won): no dial at all.
        assert_eq!(
            decide(connected(under_way(false), false)),
            step(Some(1), false)
        );
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
