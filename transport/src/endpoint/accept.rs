//! The accepting side of the endpoint: incoming connections (admitted by `gate`) and the
//! hello as acceptor.

use super::*;

impl Endpoint {
    /// The incoming handshakes: under way now, the most at once, and what became of the
    /// connection attempts (see `endpoint/gate.rs`).
    pub fn handshakes(&self) -> HandshakeCounters {
        self.inner.gate.counters()
    }

    pub(super) async fn accept_loop(self, q: quinn::Endpoint) {
        while let Some(incoming) = q.accept().await {
            let remote = incoming.remote_address();
            // Decided before any cryptography: a Retry or a refusal is one small
            // stateless packet.
            match self
                .inner
                .gate
                .admit(&remote, incoming.remote_address_validated())
            {
                Admission::Accept(ticket, evicted) => {
                    let ep = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = ep.accept_one(incoming, ticket, evicted).await {
                            debug!(%remote, error = %e, "incoming connection failed");
                        }
                    });
                }
                Admission::Retry => {
                    debug!(%remote, "handshakes under way: incoming connection sent a retry");
                    if let Err(e) = incoming.retry() {
                        self.inner.gate.retry_failed();
                        e.into_incoming().refuse();
                    }
                }
                Admission::Refuse => {
                    debug!(%remote, "handshakes under way: incoming connection refused");
                    incoming.refuse();
                }
            }
        }
    }

    async fn accept_one(
        &self,
        incoming: quinn::Incoming,
        ticket: Ticket,
        evicted: tokio::sync::oneshot::Receiver<()>,
    ) -> Result<(), TransportError> {
        let timeout = self.inner.cfg.handshake_timeout;
        let mut server = self.inner.server.clone();
        let path = large::path_payload(incoming.remote_address());
        server.transport_config(Arc::new(self.inner.cfg.transport(Side::Accept, path)?));
        let mut connecting = incoming.accept_with(Arc::new(server))?;
        let handshake = async {
            // Ready once this side has read the ClientHello and answered it.
            if connecting.handshake_data().await.is_ok() {
                ticket.answered(std::time::Instant::now());
            }
            connecting.await
        };
        // Dropping `connecting` (its place given to another) closes the connection.
        let conn = tokio::select! {
            done = tokio::time::timeout(timeout, handshake) => {
                done.map_err(|_| TransportError::Timeout(timeout))??
            }
            _ = evicted => return Err(TransportError::Evicted),
        };
        // The handshake is over: its place goes to the next.
        drop(ticket);
        let Some(peer) = peer_id(&conn) else {
            conn.close(VarInt::from_u32(close_code::PROTOCOL), b"no certificate");
            return Ok(());
        };
        if let Some(notice) = self.inner.roster.notice(&peer) {
            // A removed device: it is told why (its hello is answered with the notice),
            // and nothing else.
            let _ = tokio::time::timeout(timeout, async {
                let (mut send, mut recv) = conn.accept_bi().await?;
                // Its hello may carry an appeal: the removal of the device that removed
                // it (the daemon judges it).
                let mut header = [0u8; 2];
                if recv.read_exact(&mut header).await.is_ok()
                    && header == StreamKind::Hello.header()
                {
                    if let Ok(Some(ControlFrame::Hello(h))) =
                        read_frame::<ControlFrame, _>(&mut recv, MAX_CONTROL_FRAME).await
                    {
                        for f in h.features {
                            if let Some(a) = f.strip_prefix(FEATURE_APPEAL) {
                                self.inner.roster.appealed(peer, a.to_string());
                            }
                        }
                    }
                }
                write_frame(
                    &mut send,
                    &ControlFrame::HelloReject { reason: notice },
                    MAX_CONTROL_FRAME,
                )
                .await?;
                let _ = send.finish();
                // The dialler closes once it has read it.
                conn.closed().await;
                Ok::<(), TransportError>(())
            })
            .await;
            conn.close(
                VarInt::from_u32(close_code::REVOKED),
                b"removed from the mesh",
            );
            return Err(TransportError::NotInRoster(peer));
        }
        // A member (the TLS verifier takes only IDs of the roster): its source comes first
        // when handshakes are many (`gate.rs`).
        self.inner.gate.member_from(&conn.remote_address());
        let res = tokio::time::timeout(timeout, async {
            let (mut send, mut recv) = conn.accept_bi().await?;
            let mut header = [0u8; 2];
            recv.read_exact(&mut header).await.map_err(|e| TransportError::Refused {
                peer,
                reason: e.to_string(),
            })?;
            if header != StreamKind::Hello.header() {
                write_frame(
                    &mut send,
                    &ControlFrame::HelloReject {
                        reason: format!("unsupported stream header {header:?}, this device speaks version {PROTOCOL_VERSION}"),
                    },
                    MAX_CONTROL_FRAME,
                )
                .await?;
                let _ = send.finish();
                return Err(TransportError::Refused {
                    peer,
                    reason: "bad hello header".into(),
                });
            }
            let hello: Option<ControlFrame> = read_frame(&mut recv, MAX_CONTROL_FRAME).await?;
            let Some(ControlFrame::Hello(h)) = hello else {
                return Err(TransportError::Refused {
                    peer,
                    reason: "no hello".into(),
                });
            };
            if h.version != u16::from(PROTOCOL_VERSION) {
                let reason = format!(
                    "protocol version {} is not supported; this device speaks version {PROTOCOL_VERSION}",
                    h.version
                );
                let reject = ControlFrame::HelloReject { reason: reason.clone() };
                write_frame(&mut send, &reject, MAX_CONTROL_FRAME).await?;
                let _ = send.finish();
                let _ = send.stopped().await;
                return Err(TransportError::Refused { peer, reason });
            }
            let moved = h.features.iter().any(|f| f == FEATURE_MOVED);
            let pc = self.register(
                PeerConn {
                    peer,
                    heartbeat: self.heartbeat_keys(&conn, &h.features, false),
                    observed: wire::observed(&h.features),
                    name: h.name,
                    dialer: peer,
                    conn: conn.clone(),
                },
                moved,
            )?;
            write_frame(&mut send, &ControlFrame::HelloAck(self.our_hello(false, &conn)), MAX_CONTROL_FRAME).await?;
            let _ = send.finish();
            Ok(pc)
        })
        .await;
        match res {
            Ok(Ok(_)) => Ok(()),
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
}
