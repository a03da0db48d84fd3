//! At most [`MAX_CONNECTIONS`] dashboard connections at once, over both listeners, so
//! that local processes opening connections cannot take the daemon's file descriptors;
//! a connection beyond them is closed as soon as it is accepted.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;

pub const MAX_CONNECTIONS: usize = 64;

/// A listener that keeps a connection only while a slot is free.
pub struct Limited {
    pub inner: TcpListener,
    pub slots: Arc<Semaphore>,
}

/// An accepted connection holding its slot until it is dropped.
pub struct Counted {
    io: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl axum::serve::Listener for Limited {
    type Io = Counted;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Counted, std::net::SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((io, addr)) => match self.slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        let _ = io.set_nodelay(true);
                        return (Counted { io, _slot: slot }, addr);
                    }
                    // Closed at once: its file descriptor is not kept.
                    Err(_) => {
                        debug!(%addr, "web dashboard: {MAX_CONNECTIONS} connections open, one more closed")
                    }
                },
                Err(e) => {
                    debug!(error = %e, "web dashboard: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
