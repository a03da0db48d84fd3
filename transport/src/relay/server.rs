//! The relay itself (`cnspr relay`): registrations over QUIC and TLS-over-TCP, and the
//! forwarding of relayed datagrams between devices registered with the same mesh tag.
//! It keeps everything in memory, within bounds: at most `max_devices` registrations, a
//! byte rate per device, a short queue per TCP device.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use quinn::Runtime;
use rustls::crypto::CryptoProvider;
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::link::{read_tcp, write_tcp};
pub use super::registry::ServerStats;
use super::registry::{Path, ServerSocket, State};
use super::{canonical, check_secret, relay_identity, server_tls, RelayFrame, MAX_CONTROL};
use crate::frame::{read_frame, write_frame};
use crate::id::DeviceId;
use crate::identity::{peer_id, spki_id};
use crate::settings::TransportError;

const STEP_TIMEOUT: Duration = Duration::from_secs(5);
const IDLE: Duration = Duration::from_secs(40);
/// Frames waiting for one TCP device's writer.
const TCP_QUEUE: usize = 128;
/// Handshakes (QUIC or TCP) under way at once beyond the registered devices.
const SPARE_HANDSHAKES: usize = 256;

/// How to run a relay.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// UDP address (QUIC registrations and relayed datagrams).
    pub listen: SocketAddr,
    /// TCP address for networks that drop UDP (`None`: no TCP).
    pub tcp: Option<SocketAddr>,
    pub secret: String,
    /// Most devices registered at once.
    pub max_devices: usize,
    /// Bytes per second one device may send through the relay (0: no limit).
    pub rate: u64,
}

/// A running relay.
pub struct RelayServer {
    state: Arc<State>,
    quinn: quinn::Endpoint,
    id: DeviceId,
    udp: SocketAddr,
    tcp: Option<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for RelayServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayServer")
            .field("udp", &self.udp)
            .field("tcp", &self.tcp)
            .finish()
    }
}

fn config_error(e: impl std::fmt::Display) -> TransportError {
    TransportError::Config(e.to_string())
}

impl RelayServer {
    /// Binds the addresses and starts serving. Must run inside a tokio runtime.
    pub async fn bind(
        cfg: RelayConfig,
        provider: Arc<CryptoProvider>,
    ) -> Result<RelayServer, TransportError> {
        check_secret(&cfg.secret).map_err(TransportError::Config)?;
        let identity = relay_identity(&cfg.secret);
        let tls = server_tls(&identity, provider)?;
        let tls_tcp = Arc::new(tls.clone());
        let mut server = quinn::ServerConfig::with_crypto(crate::tls::quic_server(tls)?);
        let mut t = quinn::TransportConfig::default();
        t.max_idle_timeout(quinn::IdleTimeout::try_from(IDLE).ok());
        t.max_concurrent_bidi_streams(1u32.into());
        t.max_concurrent_uni_streams(0u32.into());
        t.stream_receive_window(quinn::VarInt::from_u32(8192));
        t.receive_window(quinn::VarInt::from_u32(16384));
        t.send_window(16384);
        t.datagram_receive_buffer_size(None);
        server.transport_config(Arc::new(t));
        let std_socket =
            crate::socket::bind_udp(cfg.listen, 8 * 1024 * 1024).map_err(|source| {
                TransportError::Bind {
                    addr: cfg.listen,
                    source,
                }
            })?;
        let udp = std_socket.local_addr().map_err(config_error)?;
        let inner = quinn::TokioRuntime
            .wrap_udp_socket(std_socket)
            .map_err(config_error)?;
        let state = Arc::new(State::new(
            cfg.secret.clone(),
            cfg.max_devices.max(1),
            cfg.rate,
            udp.is_ipv6(),
        ));
        let _ = state.socket.set(inner.clone());
        let socket = Arc::new(ServerSocket {
            inner,
            state: state.clone(),
        });
        let mut ep_cfg = quinn::EndpointConfig::default();
        ep_cfg.grease_quic_bit(false);
        let quinn = quinn::Endpoint::new_with_abstract_socket(
            ep_cfg,
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(config_error)?;
        let mut tasks = vec![tokio::spawn(accept_quic(state.clone(), quinn.clone()))];
        let tcp = match cfg.tcp {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| TransportError::Bind { addr, source })?;
                let local = listener.local_addr().map_err(config_error)?;
                tasks.push(tokio::spawn(accept_tcp(state.clone(), listener, tls_tcp)));
                Some(local)
            }
            None => None,
        };
        let st = state.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                st.refresh_addrs();
            }
        }));
        info!(%udp, ?tcp, id = %identity.id, "relay listening");
        Ok(RelayServer {
            state,
            quinn,
            id: identity.id,
            udp,
            tcp,
            tasks,
        })
    }

    pub fn udp_addr(&self) -> SocketAddr {
        self.udp
    }

    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp
    }

    /// The relay's key, as devices pin it.
    pub fn id(&self) -> DeviceId {
        self.id
    }

    /// Devices registered now.
    pub fn devices(&self) -> usize {
        self.state.devices()
    }

    pub fn stats(&self) -> &ServerStats {
        &self.state.stats
    }

    /// Stops serving: registrations end, devices are told.
    pub async fn close(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.quinn.close(0u32.into(), b"relay stopping");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.quinn.wait_idle()).await;
    }
}

async fn accept_quic(state: Arc<State>, q: quinn::Endpoint) {
    while let Some(incoming) = q.accept().await {
        if q.open_connections() > state.max_devices + SPARE_HANDSHAKES {
            incoming.refuse();
            continue;
        }
        let state = state.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            if let Err(e) = serve_quic(state, incoming).await {
                debug!(%remote, error = %e, "relay registration failed");
            }
        });
    }
}

async fn serve_quic(state: Arc<State>, incoming: quinn::Incoming) -> Result<(), String> {
    let conn = tokio::time::timeout(STEP_TIMEOUT, incoming.accept().map_err(|e| e.to_string())?)
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let id = peer_id(&conn).ok_or("no certificate")?;
    let (mut send, mut recv) = tokio::time::timeout(STEP_TIMEOUT, conn.accept_bi())
        .await
        .map_err(|_| "no registration".to_string())?
        .map_err(|e| e.to_string())?;
    let tag = match registration(&state, &id, &mut recv, &mut send).await {
        Ok(tag) => tag,
        Err(reason) => {
            let _ = send.finish();
            // The device closes once it has read the answer.
            let _ = tokio::time::timeout(STEP_TIMEOUT, conn.closed()).await;
            conn.close(1u32.into(), reason.as_bytes());
            return Err(reason);
        }
    };
    let observed = canonical(conn.remote_address());
    let serial = state.register(id, tag, Path::Udp(conn.clone()));
    let answer = write_frame(&mut send, &RelayFrame::Registered { observed }, MAX_CONTROL).await;
    let _ = send.finish();
    if answer.is_ok() {
        debug!(device = %id.short(), %observed, "device registered (UDP)");
        conn.closed().await;
    }
    state.unregister(&id, serial);
    Ok(())
}

/// Reads a device's registration from `r` and checks it; a refusal is answered on `w`
/// (and counted) and returned as the reason.
async fn registration<R, W>(
    state: &State,
    id: &DeviceId,
    r: &mut R,
    w: &mut W,
) -> Result<[u8; super::TAG_LEN], String>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let frame = tokio::time::timeout(STEP_TIMEOUT, read_frame(r, MAX_CONTROL))
        .await
        .map_err(|_| "registration timed out".to_string())?
        .map_err(|e| e.to_string())?;
    match state.check(id, frame) {
        Ok(tag) => Ok(tag),
        Err(reason) => {
            state.stats.refused.fetch_add(1, Ordering::Relaxed);
            let refused = RelayFrame::Refused {
                reason: reason.clone(),
            };
            let _ = write_frame(w, &refused, MAX_CONTROL).await;
            let _ = tokio::io::AsyncWriteExt::flush(w).await;
            Err(reason)
        }
    }
}

async fn accept_tcp(
    state: Arc<State>,
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let slots = Arc::new(tokio::sync::Semaphore::new(
        state.max_devices + SPARE_HANDSHAKES,
    ));
    loop {
        let Ok((stream, from)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let (state, acceptor) = (state.clone(), acceptor.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_tcp(state, acceptor, stream, from).await {
                debug!(%from, error = %e, "relay registration over TCP failed");
            }
            drop(permit);
        });
    }
}

async fn serve_tcp(
    state: Arc<State>,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    from: SocketAddr,
) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    let tls = tokio::time::timeout(STEP_TIMEOUT, acceptor.accept(stream))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let id = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(spki_id)
        .ok_or("no certificate")?;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let tag = registration(&state, &id, &mut rd, &mut wr).await?;
    write_frame(
        &mut wr,
        &RelayFrame::Registered {
            observed: canonical(from),
        },
        MAX_CONTROL,
    )
    .await
    .map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel(TCP_QUEUE);
    let serial = state.register(id, tag, Path::Tcp(tx));
    debug!(device = %id.short(), %from, "device registered (TCP)");
    let writer = tokio::spawn(write_tcp(wr, rx));
    let st = state.clone();
    let mut batch = st.batch();
    read_tcp(&mut rd, |frame| {
        st.forward(id, frame, &mut batch);
        st.flush(&mut batch);
    })
    .await;
    writer.abort();
    state.unregister(&id, serial);
    Ok(())
}
