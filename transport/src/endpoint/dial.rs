//! The dialling side of the endpoint: racing a peer's addresses, the hello as dialler,
//! and the replacement of a connection whose local address vanished.

use tokio::task::JoinSet;

use super::*;

impl Endpoint {
    /// Dials `peer`, racing every candidate address; returns the connection that is up
    /// (an existing one if there is one).
    pub async fn connect(
        &self,
        peer: DeviceId,
        addrs: &[SocketAddr],
    ) -> Result<PeerConn, TransportError> {
        if !self.inner.roster.contains(&peer) {
            return Err(TransportError::NotInRoster(peer));
        }
        let dial_lock = lock(&self.inner.dial_locks)
            .entry(peer)
            .or_default()
            .clone();
        let _guard = dial_lock.lock().await;
        // Through a relay too, raced with the direct addresses: traffic never waits for
        // a direct path; hole punching upgrades later.
        let mut addrs = addrs.to_vec();
        if let Some(v) = self.relay_address(&peer) {
            addrs.push(v);
        }
        self.dial_unless_connected(peer, &addrs).await
    }

    /// Dials `peer` at `addrs` now, whether or not an ordinary dial is under way (hole
    /// punching: the moment matters, so it takes no dial lock); returns the connection
    /// that is up. If both sides' dials complete, the endpoint keeps one, as for any
    /// simultaneous dial.
    pub async fn punch(
        &self,
        peer: DeviceId,
        addrs: &[SocketAddr],
    ) -> Result<PeerConn, TransportError> {
        if !self.inner.roster.contains(&peer) {
            return Err(TransportError::NotInRoster(peer));
        }
        let addrs: Vec<SocketAddr> = addrs.iter().copied().filter(|a| !is_virtual(a)).collect();
        match self.connection(&peer) {
            // Connected through a relay: dial the direct path beside it.
            Some(c) if is_virtual(&c.remote_address()) && !addrs.is_empty() => {
                self.dial(Some(peer), &addrs, false).await
            }
            _ => self.dial_unless_connected(peer, &addrs).await,
        }
    }

    /// Dials `peer` at its virtual address, routed through the member that passes its
    /// packets on, now, whether or not an ordinary dial is under way: a peer whose
    /// connection closed before the membership core said it is reached through a member
    /// is being redialled at its direct addresses alone (unless a relay server is
    /// registered), a dial that runs to its handshake timeout when that path is cut.
    /// Takes no dial lock, like [`Self::punch`]; if both dials complete, the endpoint
    /// keeps one.
    pub async fn dial_through_member(&self, peer: DeviceId) -> Result<PeerConn, TransportError> {
        if !self.inner.roster.contains(&peer) {
            return Err(TransportError::NotInRoster(peer));
        }
        let relays = &self.inner.relays;
        let addrs: Vec<SocketAddr> = relays
            .via_of(&peer)
            .map(|_| relays.address_of(&peer))
            .into_iter()
            .collect();
        self.dial_unless_connected(peer, &addrs).await
    }

    /// The live connection to `peer`, else a dial of `addrs`.
    async fn dial_unless_connected(
        &self,
        peer: DeviceId,
        addrs: &[SocketAddr],
    ) -> Result<PeerConn, TransportError> {
        if let Some(c) = self.connection(&peer) {
            return Ok(c);
        }
        if addrs.is_empty() {
            return Err(TransportError::NoAddresses(peer));
        }
        self.dial(Some(peer), addrs, false).await
    }

    /// Dials an address without knowing which device listens there: any device in the
    /// roster is accepted (manual `--peer HOST:PORT` addresses).
    pub async fn connect_addr(&self, addr: SocketAddr) -> Result<PeerConn, TransportError> {
        self.dial(None, &[addr], false).await
    }

    /// Replaces `stale`, a connection this host accepted on an address it no longer has,
    /// by a fresh dial of its peer; the new connection replaces the old one on both sides
    /// ([`FEATURE_MOVED`]). QUIC lets only the client move, so `stale` cannot follow the
    /// change.
    ///
    /// Takes no dial lock: an ordinary dial under way (for instance one started while the
    /// link was down, to an address the peer has left, which only its handshake timeout
    /// ends) must not hold up the replacement. Replacements of one peer run one at a time,
    /// so that both sides keep the same one; `Ok(None)` when an earlier call already
    /// replaced `stale`.
    pub async fn reconnect(
        &self,
        stale: &PeerConn,
        addrs: &[SocketAddr],
    ) -> Result<Option<PeerConn>, TransportError> {
        let peer = stale.peer;
        if !self.inner.roster.contains(&peer) {
            return Err(TransportError::NotInRoster(peer));
        }
        if addrs.is_empty() {
            return Err(TransportError::NoAddresses(peer));
        }
        let move_lock = lock(&self.inner.move_locks)
            .entry(peer)
            .or_default()
            .clone();
        let _guard = move_lock.lock().await;
        if self
            .connection(&peer)
            .is_some_and(|c| c.conn.stable_id() != stale.conn.stable_id())
        {
            return Ok(None);
        }
        self.dial(Some(peer), addrs, true).await.map(Some)
    }

    async fn dial(
        &self,
        expected: Option<DeviceId>,
        addrs: &[SocketAddr],
        moved: bool,
    ) -> Result<PeerConn, TransportError> {
        let label = expected.unwrap_or(self.id());
        let client_tls = tls::rustls_client_config_for(
            &self.inner.identity,
            &self.inner.roster,
            expected,
            self.inner.cfg.provider.clone(),
        )?;
        let client = quinn::ClientConfig::new(tls::quic_client(client_tls)?);
        let timeout = self.inner.cfg.handshake_timeout;
        let mut race = JoinSet::new();
        let mut errors = Vec::new();
        for addr in addrs {
            let Some(q) = self.endpoint_for(addr) else {
                errors.push(format!("{addr}: no socket of that address family"));
                continue;
            };
            let mut client = client.clone();
            let addr = *addr;
            // Transport settings for this path: the side that dials sends the
            // keep-alives (see `EndpointConfig::transport`).
            let path = large::path_payload(addr);
            // A relayed path keeps its keep-alive and idle timeout: the relay's state and
            // the relay link are what carry it.
            let side = if private_path(&addr) && !is_virtual(&addr) {
                Side::DialPrivate
            } else {
                Side::DialPublic
            };
            client.transport_config(Arc::new(self.inner.cfg.transport(side, path)?));
            race.spawn(async move {
                let connecting = q
                    .connect_with(client, addr, tls::SERVER_NAME)
                    .map_err(|e| format!("{addr}: {e}"))?;
                match tokio::time::timeout(timeout, connecting).await {
                    Ok(Ok(c)) => Ok(c),
                    Ok(Err(e)) => Err(format!("{addr}: {e}")),
                    Err(_) => Err(format!("{addr}: handshake timed out after {timeout:?}")),
                }
            });
        }
        let mut winner = None;
        while let Some(res) = race.join_next().await {
            match res {
                Ok(Ok(conn)) => {
                    winner = Some(conn);
                    break;
                }
                Ok(Err(e)) => errors.push(e),
                Err(e) => errors.push(e.to_string()),
            }
        }
        // Close every other attempt, including ones that complete later.
        race.abort_all();
        while let Some(res) = race.join_next().await {
            if let Ok(Ok(c)) = res {
                c.close(
                    VarInt::from_u32(close_code::RACE_LOST),
                    b"another address won",
                );
            }
        }
        let Some(conn) = winner else {
            return Err(TransportError::Unreachable {
                peer: label,
                reason: errors.join("; "),
            });
        };
        let Some(peer) = peer_id(&conn) else {
            conn.close(VarInt::from_u32(close_code::PROTOCOL), b"no certificate");
            return Err(TransportError::Refused {
                peer: label,
                reason: "no certificate".into(),
            });
        };
        if peer == self.id() {
            conn.close(VarInt::from_u32(close_code::PROTOCOL), b"self");
            return Err(TransportError::Refused {
                peer,
                reason: "that address is this device itself".into(),
            });
        }
        match tokio::time::timeout(timeout, self.hello_as_dialer(peer, &conn, moved)).await {
            Ok(Ok(pc)) => Ok(pc),
            Ok(Err(e)) => {
                conn.close(VarInt::from_u32(close_code::PROTOCOL), b"hello failed");
                Err(e)
            }
            Err(_) => {
                conn.close(VarInt::from_u32(close_code::PROTOCOL), b"hello timed out");
                Err(TransportError::Timeout(timeout))
            }
        }
    }

    fn endpoint_for(&self, addr: &SocketAddr) -> Option<quinn::Endpoint> {
        let bound: Vec<(SocketAddr, &quinn::Endpoint)> = self
            .inner
            .quinns
            .iter()
            .filter_map(|q| Some((q.local_addr().ok()?, q)))
            .collect();
        bound
            .iter()
            .find(|(l, _)| l.is_ipv4() == addr.is_ipv4())
            .or_else(|| {
                bound
                    .iter()
                    .find(|(l, _)| addr.is_ipv4() && l.is_ipv6() && l.ip().is_unspecified())
            })
            .map(|(_, q)| (*q).clone())
    }

    async fn hello_as_dialer(
        &self,
        peer: DeviceId,
        conn: &Connection,
        moved: bool,
    ) -> Result<PeerConn, TransportError> {
        let refused = |e: &dyn std::fmt::Display| TransportError::Refused {
            peer,
            reason: e.to_string(),
        };
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| refused(&e))?;
        send.write_all(&StreamKind::Hello.header())
            .await
            .map_err(|e| refused(&e))?;
        let mut hello = self.our_hello(moved, conn);
        if let Some(appeal) = self.inner.roster.appeal(&peer) {
            hello.features.push(format!("{FEATURE_APPEAL}{appeal}"));
        }
        write_frame(&mut send, &ControlFrame::Hello(hello), MAX_CONTROL_FRAME).await?;
        let _ = send.finish();
        let reply: Option<ControlFrame> =
            read_frame(&mut recv, MAX_CONTROL_FRAME)
                .await
                .map_err(|e| match conn.close_reason() {
                    Some(reason) => refused(&reason),
                    None => refused(&e),
                })?;
        match reply {
            Some(ControlFrame::HelloAck(h)) if h.version != u16::from(PROTOCOL_VERSION) => {
                Err(refused(&format!(
                    "it speaks protocol version {}, this device speaks {PROTOCOL_VERSION}",
                    h.version
                )))
            }
            Some(ControlFrame::HelloAck(h)) => self.register(
                PeerConn {
                    peer,
                    heartbeat: self.heartbeat_keys(conn, &h.features, true),
                    observed: wire::observed(&h.features),
                    name: h.name,
                    dialer: self.id(),
                    conn: conn.clone(),
                },
                moved,
            ),
            Some(ControlFrame::HelloReject { reason }) => Err(refused(&reason)),
            Some(other) => Err(refused(&format!("unexpected {other:?}"))),
            None => Err(refused(
                &conn
                    .close_reason()
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "stream closed".into()),
            )),
        }
    }
}
