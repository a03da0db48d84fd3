//! `peers` and `ping`.

use std::sync::Arc;
use std::time::Instant;

use transport::DeviceId;

use super::super::framing::timeout_of;
use crate::api::{ErrorBody, PingResult};
use crate::daemon::context::Daemon;

/// The peer table, with the devices in a conflict of removals as `conflict` rows.
pub fn list(d: &Arc<Daemon>) -> Vec<crate::api::PeerInfo> {
    let conns = d.endpoint.connections();
    let mut v = {
        let mut table = d.peers();
        table.refresh_rtts(&conns);
        table.infos()
    };
    for (id, name) in d.conflicts() {
        v.push(crate::api::PeerInfo {
            id: id.to_string(),
            name,
            state: crate::daemon::peers::PeerState::Conflict.as_str().into(),
            addresses: vec![],
            rtt_ms: None,
            via: None,
            last_seen: None,
            path: None,
            interfaces: Vec::new(),
        });
    }
    v
}

pub async fn ping(
    d: &Arc<Daemon>,
    peer: DeviceId,
    timeout_ms: Option<u64>,
) -> Result<PingResult, ErrorBody> {
    if let Some(e) = d.removed_refusal() {
        return Err(e);
    }
    let deadline = Instant::now() + timeout_of(timeout_ms);
    let (rtt, via, pc) = crate::daemon::messages::ping(d, peer, deadline).await?;
    let (name, via) = {
        let table = d.peers();
        let name = table
            .peers
            .get(&peer)
            .map(|p| p.name.clone())
            .unwrap_or_default();
        let via: Vec<String> = via
            .map(|v| {
                table
                    .peers
                    .get(&v)
                    .map_or_else(|| v.short(), |p| p.name.clone())
            })
            .into_iter()
            .collect();
        (name, via)
    };
    // Through a `cnspr relay`: the relay is the path, and its address the one to show
    // (the peer's own address here is only a virtual one). Relayed by a member: the
    // connection is the member's (or, passed on by a member packet by packet, goes to
    // a virtual address), so no address of the peer's own is known here.
    let relay = d
        .endpoint
        .relay_of(&pc)
        .filter(|_| d.endpoint.relaying_member(&pc).is_none());
    let (address, via) = match relay {
        Some(relay) => (relay.clone(), vec![relay]),
        None if !via.is_empty() => (String::new(), via),
        None => (crate::addr::canon(pc.remote_address()).to_string(), via),
    };
    Ok(PingResult {
        peer: name,
        id: peer.to_string(),
        rtt_ms: (rtt.as_secs_f64() * 1e6).round() / 1e3,
        address,
        via,
    })
}
