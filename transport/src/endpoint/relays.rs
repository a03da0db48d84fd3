//! The endpoint's side of relaying (`crate::relay`): the registrations it keeps, the
//! virtual addresses of peers behind a relay; and the end of a replaced connection (one
//! through a relay that a direct one replaced, or the loser of two simultaneous dials).

use crate::relay::link::LinkCtx;

use super::*;

impl Endpoint {
    /// Lets `conn`, a connection that another one replaced, finish what is under way on
    /// it, then closes it (code 2).
    pub(super) fn retire(&self, conn: Connection) {
        tokio::spawn(close_when_quiet(conn));
    }

    /// The relays this device is registered with, and their counters.
    pub fn relays(&self) -> &Arc<Relays> {
        &self.inner.relays
    }

    /// Keeps this device registered with exactly the relays of `specs` (tasks for new
    /// ones are started, removed ones stopped).
    pub fn set_relays(&self, specs: &[RelaySpec]) {
        let mut tasks = lock(&self.inner.relay_tasks);
        tasks.retain(|spec, task| {
            let keep = specs.contains(spec);
            if !keep {
                task.abort();
            }
            keep
        });
        self.inner
            .relays
            .retain_labels(|l| specs.iter().any(|s| s.addr == l));
        for spec in specs {
            if tasks.contains_key(spec) {
                continue;
            }
            let ctx = LinkCtx {
                quinn: self.inner.quinns.clone(),
                identity: self.inner.identity.clone(),
                provider: self.inner.cfg.provider.clone(),
                relays: self.inner.relays.clone(),
            };
            tasks.insert(
                spec.clone(),
                tokio::spawn(crate::relay::link::run(ctx, spec.clone())),
            );
        }
    }

    /// Where to dial `peer` through a relay (its virtual address), while this device is
    /// registered with one or a member relays for that peer.
    pub fn relay_address(&self, peer: &DeviceId) -> Option<SocketAddr> {
        let relays = &self.inner.relays;
        if relays.via_of(peer).is_none() {
            relays.current()?;
        }
        Some(relays.address_of(peer))
    }

    /// The member that passes `pc`'s packets on (`crate::relay::member`), if it is such a
    /// connection.
    pub fn relaying_member(&self, pc: &PeerConn) -> Option<DeviceId> {
        if !is_virtual(&pc.remote_address()) {
            return None;
        }
        self.inner.relays.via_of(&pc.peer)
    }

    /// The relay a connection to a virtual address goes through (its label), if any.
    pub fn relay_of(&self, pc: &PeerConn) -> Option<String> {
        if !is_virtual(&pc.remote_address()) {
            return None;
        }
        Some(
            self.inner
                .relays
                .current()
                .map_or_else(|| "relay".to_string(), |l| l.label),
        )
    }
}

/// Closes a replaced connection once no stream data has moved on it for a second (at
/// most a minute later).
async fn close_when_quiet(conn: Connection) {
    let moved = |c: &Connection| {
        let s = c.stats();
        (s.frame_rx.stream, s.frame_tx.stream)
    };
    let mut last = moved(&conn);
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = moved(&conn);
        if now == last {
            break;
        }
        last = now;
    }
    conn.close(
        VarInt::from_u32(close_code::DUPLICATE),
        b"replaced by a direct path",
    );
}
