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

use transport::DeviceId;

use super::context::Daemon;
use super::peers::PeerState;

/// Routes every `indirect` peer's virtual address through the member its path goes
/// through, and dials the ones that have no connection; forgets the route of a peer
/// that has a direct connection. Other states keep what they have (the route learnt
/// from the peer's first relayed packets, for the answers).
pub fn update(d: &Arc<Daemon>) {
    if !d.cfg.relay_packets {
        return;
    }
    let relays = d.endpoint.relays().clone();
    let now = Instant::now();
    let mut dial = false;
    let changes: Vec<(DeviceId, Option<DeviceId>)> = {
        let mut table = d.peers();
        let mut changes = Vec::new();
        for p in table.peers.values_mut() {
            let want = match p.state {
                PeerState::Indirect => p.via.filter(|m| *m != p.id),
                _ => relays.via_of(&p.id),
            };
            let conn = d.endpoint.connection(&p.id);
            let direct = conn
                .as_ref()
                .is_some_and(|c| !transport::relay::is_virtual(&c.remote_address()));
            let want = want.filter(|_| !direct);
            if relays.via_of(&p.id) == want {
                continue;
            }
            changes.push((p.id, want));
            if want.is_some() && conn.is_none() {
                p.dial.reset(now);
                dial = true;
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
}
