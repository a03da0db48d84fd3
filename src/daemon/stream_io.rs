//! What both ends of an application stream and a relay in between share: the stream's
//! limits and error codes, and copying bytes between two halves with half-close.

use std::io::IoSlice;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use transport::quinn::{RecvStream, SendStream};

use super::errors::StreamError;
use super::wire::AppFrame;
use crate::api::Code;

/// QUIC error code for a stream that broke on one side.
pub const STREAM_BROKEN: u32 = 1;

pub const MAX_APP_FRAME: usize = 4096;

/// Copy buffer for each direction.
pub const BUF: usize = 256 * 1024;

/// Chunks taken from a QUIC stream at once: each is one received STREAM frame (up to a
/// datagram's worth), so one read of many, then one vectored write of them all, instead of
/// a system call per datagram.
pub const CHUNKS: usize = 64;

/// Writes all of `chunks` with vectored writes (as few system calls as the socket takes);
/// returns the byte count.
pub async fn write_chunks<W>(w: &mut W, chunks: &mut [Bytes]) -> std::io::Result<u64>
where
    W: AsyncWrite + Unpin,
{
    let total: usize = chunks.iter().map(Bytes::len).sum();
    let mut i = 0;
    while i < chunks.len() {
        if chunks[i].is_empty() {
            i += 1;
            continue;
        }
        let slices: [IoSlice<'_>; CHUNKS] =
            std::array::from_fn(|j| IoSlice::new(chunks.get(i + j).map_or(&[], |c| &c[..])));
        let count = (chunks.len() - i).min(CHUNKS);
        let mut k = w.write_vectored(&slices[..count]).await?;
        if k == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while k > 0 {
            let c = &mut chunks[i];
            if k >= c.len() {
                k -= c.len();
                i += 1;
            } else {
                c.advance(k);
                k = 0;
            }
        }
    }
    Ok(total as u64)
}

/// Copies both ways between a local byte stream and a QUIC stream until both directions
/// ended. A FIN in one direction is passed on as a half-close; an error in either
/// direction ends both. Returns the bytes moved (up, down).
pub async fn splice<R, W>(
    r: R,
    w: W,
    send: SendStream,
    recv: RecvStream,
) -> Result<(u64, u64), StreamError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    splice_until(r, w, send, recv, std::future::pending()).await
}

/// [`splice`], broken off (both directions reset) if `abort` completes first with the
/// reason.
pub async fn splice_until<R, W>(
    mut r: R,
    mut w: W,
    mut send: SendStream,
    mut recv: RecvStream,
    abort: impl std::future::Future<Output = std::io::Error>,
) -> Result<(u64, u64), StreamError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let res = {
        let (send, recv) = (&mut send, &mut recv);
        let up = async {
            // Read into a buffer the stream then owns (no copy into quinn's send buffer).
            let mut buf = bytes::BytesMut::with_capacity(BUF);
            let mut n = 0u64;
            loop {
                if buf.capacity() < BUF / 4 {
                    buf.reserve(BUF);
                }
                let k = r.read_buf(&mut buf).await.map_err(StreamError::LocalRead)?;
                if k == 0 {
                    let _ = send.finish();
                    return Ok::<u64, StreamError>(n);
                }
                send.write_chunk(buf.split().freeze()).await?;
                n += k as u64;
            }
        };
        let down = async {
            let mut n = 0u64;
            let mut chunks: [Bytes; CHUNKS] = std::array::from_fn(|_| Bytes::new());
            loop {
                match recv.read_chunks(&mut chunks).await {
                    Ok(Some(k)) => {
                        n += write_chunks(&mut w, &mut chunks[..k])
                            .await
                            .map_err(StreamError::LocalWrite)?;
                    }
                    Ok(None) => {
                        let _ = w.shutdown().await;
                        return Ok::<u64, StreamError>(n);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        tokio::pin!(up, down, abort);
        let (mut up_n, mut down_n) = (None, None);
        loop {
            if let (Some(u), Some(d)) = (up_n, down_n) {
                break Ok((u, d));
            }
            tokio::select! {
                e = &mut abort => break Err(StreamError::LocalRead(e)),
                r = &mut up, if up_n.is_none() => match r {
                    Ok(n) => up_n = Some(n),
                    Err(e) => break Err(e),
                },
                r = &mut down, if down_n.is_none() => match r {
                    Ok(n) => down_n = Some(n),
                    Err(e) => break Err(e),
                },
            }
        }
    };
    if res.is_err() {
        // Tell the far side this was no clean end: reset what we send, stop what we receive.
        let _ = send.reset(STREAM_BROKEN.into());
        let _ = recv.stop(STREAM_BROKEN.into());
    }
    res
}

pub fn app_err(code_: Code, message: impl Into<String>) -> AppFrame {
    AppFrame::Err {
        code: code_.as_str().to_string(),
        message: message.into(),
    }
}
