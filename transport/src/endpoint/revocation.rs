//! A device removed from the roster: its connection is closed, and what the relay socket
//! remembered of it forgotten.

use std::collections::HashSet;

use super::*;

impl Endpoint {
    pub(super) async fn revocation_loop(self) {
        let mut removals = self.inner.roster.subscribe_removals();
        loop {
            let victims: Vec<PeerConn> = match removals.recv().await {
                Ok(id) => self.connection(&id).into_iter().collect(),
                Err(broadcast::error::RecvError::Lagged(_)) => self
                    .connections()
                    .into_iter()
                    .filter(|c| !self.inner.roster.contains(&c.peer))
                    .collect(),
                Err(broadcast::error::RecvError::Closed) => return,
            };
            self.forget_removed();
            for c in victims {
                info!(peer = %c.peer.short(), "removed from roster, closing its connection");
                c.conn.close(
                    VarInt::from_u32(close_code::REVOKED),
                    b"removed from roster",
                );
            }
        }
    }

    /// Forgets the virtual addresses and routes of devices whose relayed datagrams are no
    /// longer taken. A device still connected keeps them until a later removal (the
    /// closing of its connection may have to go through a relay): at any time the relay
    /// socket remembers at most the roster, the removed devices to be told, and those
    /// removed since the last removal.
    fn forget_removed(&self) {
        let live: HashSet<DeviceId> = self.connections().iter().map(|c| c.peer).collect();
        let relays = &self.inner.relays;
        relays.forget(|id| live.contains(id) || relays.accepts(id));
    }
}
