//! Strangers that start QUIC handshakes with a device (for `tests/handshakes.rs` and
//! `benches/handshakes.rs`): quinn clients with a certificate outside the device's
//! roster, whose sockets stop hearing the device after a given number of datagrams.
//!
//! - `hears = 0`: the ClientHello goes out and nothing comes back, as for a spoofed
//!   source address; the client sends its Initial again when its timer fires.
//! - `hears = 1`: the client hears the first answer only: a Retry, which it follows with
//!   the token (its address is then validated), or the server's first flight. Either
//!   way the handshake stalls with the server, which holds it until its timeout.
//! - `hears = usize::MAX`: the client hears everything; the server refuses its
//!   certificate at the end of the handshake.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use transport::quinn::udp::{RecvMeta, Transmit};
use transport::quinn::{self, AsyncUdpSocket, Runtime, UdpPoller};
use transport::{tls, DeviceId, Identity, Roster};

/// A UDP socket that delivers only the first `hears` datagrams it receives.
pub struct Deafening {
    inner: Arc<dyn AsyncUdpSocket>,
    hears: AtomicUsize,
}

impl fmt::Debug for Deafening {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deafening")
            .field("hears", &self.hears)
            .finish()
    }
}

impl AsyncUdpSocket for Deafening {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(_)) => {
                    let left = self.hears.load(Ordering::Relaxed);
                    if left > 0 {
                        self.hears.store(left - 1, Ordering::Relaxed);
                        // One datagram per call, to count them.
                        meta[0].len = meta[0].len.min(meta[0].stride);
                        return Poll::Ready(Ok(1));
                    }
                    // Dropped; read on (the inner socket registers the waker when empty).
                }
                other => return other,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// The client configuration of a stranger (a new identity, outside any roster) that
/// dials `server` (its ID is public).
pub fn client_config(server: DeviceId) -> anyhow::Result<quinn::ClientConfig> {
    let me = Identity::generate("stranger")?;
    let roster = Roster::new();
    roster.insert(server);
    let cfg = tls::rustls_client_config(&me, &roster, server, Arc::new(tls::chacha_provider()))?;
    Ok(quinn::ClientConfig::new(tls::quic_client(cfg)?))
}

/// A stranger's client endpoint bound to `ip`, hearing `hears` datagrams.
pub struct Stranger {
    pub endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
}

impl Stranger {
    pub fn new(client: &quinn::ClientConfig, ip: &str, hears: usize) -> anyhow::Result<Stranger> {
        let socket = std::net::UdpSocket::bind(SocketAddr::new(ip.parse()?, 0))?;
        let runtime = Arc::new(quinn::TokioRuntime);
        let inner = runtime.wrap_udp_socket(socket)?;
        let socket = Arc::new(Deafening {
            inner,
            hears: AtomicUsize::new(hears),
        });
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            quinn::EndpointConfig::default(),
            None,
            socket,
            runtime,
        )?;
        Ok(Stranger {
            endpoint,
            client: client.clone(),
        })
    }

    /// Starts a handshake with the device at `to`; the outcome is left to the caller.
    pub fn dial(&self, to: SocketAddr) -> anyhow::Result<quinn::Connecting> {
        Ok(self
            .endpoint
            .connect_with(self.client.clone(), to, tls::SERVER_NAME)?)
    }
}
