//! At most [`MAX_CONNECTIONS`] dashboard connections at once, over both listeners, so
//! that local processes opening connections cannot take the daemon's file descriptors;
//! a connection beyond them is closed as soon as it is accepted. A connection that
//! neither reads nor writes a byte for [`IDLE`] is closed too (the live feed writes a
//! keep-alive every 10 s), so idle connections cannot hold the slots.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use std::future::Future;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;

pub const MAX_CONNECTIONS: usize = 64;
/// A connection silent both ways for this long is closed.
pub const IDLE: Duration = Duration::from_secs(20);

/// A listener that keeps a connection only while a slot is free.
pub struct Limited {
    pub inner: TcpListener,
    pub slots: Arc<Semaphore>,
}

/// An accepted connection holding its slot until it is dropped.
pub struct Counted {
    io: TcpStream,
    _slot: OwnedSemaphorePermit,
    /// When the connection is closed unless a byte moves before.
    idle: Pin<Box<tokio::time::Sleep>>,
}

impl Counted {
    fn moved(&mut self) {
        self.idle.as_mut().reset(tokio::time::Instant::now() + IDLE);
    }
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
                        let idle = Box::pin(tokio::time::sleep(IDLE));
                        return (
                            Counted {
                                io,
                                _slot: slot,
                                idle,
                            },
                            addr,
                        );
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
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                self.moved();
                Poll::Ready(Ok(()))
            }
            Poll::Pending if self.idle.as_mut().poll(cx).is_ready() => Poll::Ready(Err(
                io::Error::new(io::ErrorKind::TimedOut, "idle connection"),
            )),
            other => other,
        }
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        r
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
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
