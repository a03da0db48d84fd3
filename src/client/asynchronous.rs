//! The async typed client, on tokio: the same methods as [`blocking`](crate::client::blocking),
//! as futures. Requests on one client go one at a time (`&mut self`); open more clients
//! for requests in parallel. `kv_watch` and `subscribe` give their items with
//! `next().await`.
//!
//! ```no_run
//! use cnspr::client::asynchronous::Client;
//!
//! # async fn run() -> Result<(), cnspr::client::Error> {
//! let mut c = Client::connect_default().await?;
//! let status = c.status().await?;
//! println!("{} ({}), {} peers", status.name, status.id, status.peers);
//! c.kv_put("notes/today", b"buy milk").await?;
//! let mut changes = c.kv_watch("notes/", None).await?;
//! while let Some(change) = changes.next().await {
//!     let change = change?;
//!     println!("{} at feed seq {}", change.key, change.feed_seq);
//! }
//! # Ok(()) }
//! ```
//!
//! A call's future may be dropped before it completes (e.g. by `tokio::time::timeout`):
//! the reply it did not read is skipped by the next call. Only a request cut short while
//! being written leaves the connection unusable; later calls then fail with
//! [`Error::Protocol`].

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use crate::client::error::{Error, Result};
use crate::client::proto::{self, Call, Lines, Pager};
use crate::client::types::{
    BatchOp, Condition, Event, HandlersResult, KvBatch, KvChange, KvCounter, KvDeleted, KvEntry,
    KvPage, KvValue, KvWrite, Message, PeerInfo, PingResult, SendResult, ServiceInfo, Status,
};

/// One connection in line mode.
struct Conn {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
    lines: Lines,
    next_id: u64,
    /// A request's write was cut short: the daemon would read garbage.
    torn: bool,
}

impl Conn {
    async fn open(path: &Path, max_line: usize) -> Result<Conn> {
        let s = UnixStream::connect(path)
            .await
            .map_err(|e| proto::connect_error(path, e))?;
        let (r, w) = s.into_split();
        Ok(Conn {
            r: BufReader::with_capacity(64 * 1024, r),
            w,
            lines: Lines::new(max_line),
            next_id: 1,
            torn: false,
        })
    }

    async fn call<T>(&mut self, c: Call<'_, T>) -> Result<T> {
        if self.torn {
            return Err(Error::protocol(
                "an earlier request was cut short while being written; connect again",
            ));
        }
        let id = self.next_id;
        self.next_id += 1;
        let line = c.line(id)?;
        self.torn = true;
        self.w.write_all(&line).await?;
        if !c.body.is_empty() {
            self.w.write_all(&c.body).await?;
        }
        self.torn = false;
        loop {
            let line = self.read_line().await?.ok_or_else(proto::closed)?;
            if let Some(r) = proto::reply_to(&line, id) {
                return (c.parse)(r);
            }
        }
    }

    /// The next line, at most `lines.max` bytes; `None` at end of stream. Cancel-safe:
    /// a partial line stays in `lines`.
    async fn read_line(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            let avail = self.r.fill_buf().await?;
            if avail.is_empty() {
                return self.lines.eof();
            }
            let (used, done) = self.lines.feed(avail);
            self.r.consume(used);
            if done {
                return self.lines.take().map(Some);
            }
        }
    }

    /// The next event parsed by `parse`; `None` at end of stream (and after a read
    /// error). A line that does not parse is reported, and the stream goes on.
    async fn next_event<T>(
        &mut self,
        done: &mut bool,
        parse: fn(&[u8]) -> Result<Option<T>>,
    ) -> Option<Result<T>> {
        while !*done {
            let line = match self.read_line().await {
                Ok(Some(l)) => l,
                Ok(None) => break,
                Err(e) => {
                    *done = !matches!(e, Error::Protocol(_));
                    return Some(Err(e));
                }
            };
            if let Some(ev) = parse(&line).transpose() {
                return Some(ev);
            }
        }
        *done = true;
        None
    }
}

/// An async typed client of the daemon's control socket.
pub struct Client {
    path: PathBuf,
    conn: Conn,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("socket", &self.path)
            .finish()
    }
}

impl Client {
    /// Connects to the daemon listening on `socket`.
    pub async fn connect(socket: impl AsRef<Path>) -> Result<Client> {
        let path = socket.as_ref().to_path_buf();
        let conn = Conn::open(&path, proto::DEFAULT_MAX_REPLY).await?;
        Ok(Client { path, conn })
    }

    /// Connects to the socket the CLI would use ([`default_socket`](crate::client::default_socket)).
    pub async fn connect_default() -> Result<Client> {
        Client::connect(proto::default_socket()).await
    }

    /// The socket's path.
    pub fn socket(&self) -> &Path {
        &self.path
    }

    /// Sets the longest reply line accepted (64 MiB by default).
    pub fn set_max_reply(&mut self, bytes: usize) {
        self.conn.lines.max = bytes;
    }

    /// This daemon and device.
    pub async fn status(&mut self) -> Result<Status> {
        self.conn.call(proto::status()).await
    }

    /// Every trusted peer and every removed device.
    pub async fn peers(&mut self) -> Result<Vec<PeerInfo>> {
        self.conn.call(proto::peers()).await
    }

    /// Times one round trip to `peer`, connecting if needed.
    pub async fn ping(&mut self, peer: &str) -> Result<PingResult> {
        self.conn.call(proto::ping(peer, None)).await
    }

    /// As [`ping`](Self::ping), waiting at most `timeout`.
    pub async fn ping_timeout(&mut self, peer: &str, timeout: Duration) -> Result<PingResult> {
        self.conn.call(proto::ping(peer, Some(timeout))).await
    }

    /// Sends a tagged message to `peer`; answered once the receiving daemon took it.
    pub async fn send(&mut self, peer: &str, tag: &str, body: &[u8]) -> Result<SendResult> {
        self.send_message(&Message::to(peer, tag, body)).await
    }

    /// Sends a tagged message to `peer` and waits for its handlers' output.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), cnspr::client::Error> {
    /// let mut c = cnspr::client::asynchronous::Client::connect_default().await?;
    /// let r = c.send_reply("laptop", "sys.uptime", b"").await?;
    /// println!("{}", r.outcomes[0].replies[0].stdout);
    /// # Ok(()) }
    /// ```
    pub async fn send_reply(&mut self, peer: &str, tag: &str, body: &[u8]) -> Result<SendResult> {
        self.send_message(&Message::to(peer, tag, body).reply())
            .await
    }

    /// Sends a message built with [`Message`].
    pub async fn send_message(&mut self, m: &Message<'_>) -> Result<SendResult> {
        self.conn.call(proto::send(m)?).await
    }

    /// The handler directory as the daemon reads it.
    pub async fn handlers(&mut self) -> Result<HandlersResult> {
        self.conn.call(proto::handlers()).await
    }

    /// The services this daemon serves.
    pub async fn services(&mut self) -> Result<Vec<ServiceInfo>> {
        self.conn.call(proto::services()).await
    }

    /// How a stream ended (`closed`, `error: ...`), waiting up to `wait`; `open` while
    /// it runs.
    pub async fn stream_status(&mut self, token: &str, wait: Option<Duration>) -> Result<String> {
        self.conn.call(proto::stream_status(token, wait)).await
    }

    /// Stores `value` (any bytes, at most 8 MiB) under `key`; answered once durable.
    pub async fn kv_put(&mut self, key: &str, value: &[u8]) -> Result<KvWrite> {
        self.conn.call(proto::kv_put(key, value, None)?).await
    }

    /// Stores `value` only if `cond` holds; otherwise a `conflict`.
    pub async fn kv_put_if(&mut self, key: &str, value: &[u8], cond: Condition) -> Result<KvWrite> {
        self.conn.call(proto::kv_put(key, value, Some(cond))?).await
    }

    /// The value under `key`, or its counter; `None` when absent.
    pub async fn kv_get(&mut self, key: &str) -> Result<Option<KvValue>> {
        self.conn.call(proto::kv_get(key, false)).await
    }

    /// As [`kv_get`](Self::kv_get), with the concurrent versions that lost.
    pub async fn kv_get_all_versions(&mut self, key: &str) -> Result<Option<KvValue>> {
        self.conn.call(proto::kv_get(key, true)).await
    }

    /// Deletes `key`; `None` when it had no value.
    pub async fn kv_del(&mut self, key: &str) -> Result<Option<KvDeleted>> {
        self.conn.call(proto::kv_del(key, None)).await
    }

    /// Deletes `key` only if `cond` holds (else a `conflict`).
    pub async fn kv_del_if(&mut self, key: &str, cond: Condition) -> Result<Option<KvDeleted>> {
        self.conn.call(proto::kv_del(key, Some(cond))).await
    }

    /// Every key under `prefix` in key order, read a page at a time:
    /// `while let Some(e) = list.next().await`.
    pub fn kv_list(&mut self, prefix: &str) -> KvList<'_> {
        self.kv_list_paged(prefix, proto::LIST_PAGE)
    }

    /// As [`kv_list`](Self::kv_list), `page` keys per request (at most 10,000).
    pub fn kv_list_paged(&mut self, prefix: &str, page: usize) -> KvList<'_> {
        KvList {
            conn: &mut self.conn,
            pager: Pager::new(prefix, page),
        }
    }

    /// One page of keys under `prefix` after the key `after`.
    pub async fn kv_list_page(
        &mut self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KvPage> {
        self.conn.call(proto::kv_list(prefix, after, limit)).await
    }

    /// Adds `by` (may be negative) to the counter `key`; its new value.
    pub async fn kv_incr(&mut self, key: &str, by: i64) -> Result<KvCounter> {
        self.conn.call(proto::kv_incr(key, by)).await
    }

    /// Writes `ops` in one transaction (puts and deletes, each with an optional
    /// condition): all or none; a condition that fails is a `conflict`. Needs a daemon
    /// that knows `kv.batch` (else `unknown_command`).
    pub async fn kv_batch(&mut self, ops: &[BatchOp<'_>]) -> Result<KvBatch> {
        self.conn.call(proto::kv_batch(ops)?).await
    }

    /// Changes under `prefix`, on a connection of their own: first those after feed
    /// seq `from_seq` (`None`: the whole feed), then live ones, each once.
    pub async fn kv_watch(&self, prefix: &str, from_seq: Option<u64>) -> Result<Watch> {
        let mut conn = Conn::open(&self.path, self.conn.lines.max).await?;
        conn.call(proto::kv_watch(prefix, from_seq)).await?;
        Ok(Watch { conn, done: false })
    }

    /// Every event, on a connection of its own.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), cnspr::client::Error> {
    /// let c = cnspr::client::asynchronous::Client::connect_default().await?;
    /// let mut events = c.subscribe().await?;
    /// while let Some(ev) = events.next().await {
    ///     println!("{:?}", ev?);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn subscribe(&self) -> Result<Events> {
        self.subscribe_to(&[]).await
    }

    /// The events of these kinds (`message`, `peer`, `daemon`; empty: all).
    pub async fn subscribe_to(&self, kinds: &[&str]) -> Result<Events> {
        let mut conn = Conn::open(&self.path, self.conn.lines.max).await?;
        conn.call(proto::subscribe(kinds)).await?;
        Ok(Events { conn, done: false })
    }

    /// Opens a byte stream to `service` on `peer`, on a connection of its own.
    pub async fn connect_stream(&self, peer: &str, service: &str) -> Result<Stream> {
        self.connect_stream_timeout(peer, service, None).await
    }

    /// As [`connect_stream`](Self::connect_stream), waiting at most `timeout` for a
    /// connection to the peer.
    pub async fn connect_stream_timeout(
        &self,
        peer: &str,
        service: &str,
        timeout: Option<Duration>,
    ) -> Result<Stream> {
        let mut s = UnixStream::connect(&self.path)
            .await
            .map_err(|e| proto::connect_error(&self.path, e))?;
        let call = proto::connect(peer, service, timeout);
        s.write_all(&call.line(1)?).await?;
        // Unbuffered, a byte at a time: the stream's bytes follow the reply at once and
        // must stay in the socket.
        let mut lines = Lines::new(proto::MAX_STREAM_REPLY);
        let mut byte = [0u8; 1];
        loop {
            let line = match s.read(&mut byte).await? {
                0 => lines.eof()?.ok_or_else(proto::closed)?,
                _ => match lines.feed(&byte) {
                    (_, true) => lines.take()?,
                    _ => continue,
                },
            };
            if let Some(r) = proto::reply_to(&line, 1) {
                let token = (call.parse)(r)?;
                return Ok(Stream { token, inner: s });
            }
        }
    }
}

/// The keys of [`Client::kv_list`], page by page.
pub struct KvList<'a> {
    conn: &'a mut Conn,
    pager: Pager,
}

impl KvList<'_> {
    /// The next key; `None` after the last.
    pub async fn next(&mut self) -> Option<Result<KvEntry>> {
        loop {
            if let Some(e) = self.pager.pop() {
                return Some(Ok(e));
            }
            let call = self.pager.next_call()?;
            let page = self.conn.call(call).await;
            if let Err(e) = self.pager.feed(page) {
                return Some(Err(e));
            }
        }
    }
}

/// The changes of [`Client::kv_watch`]; ends when the daemon closes the connection.
pub struct Watch {
    conn: Conn,
    done: bool,
}

impl Watch {
    /// The next change. Cancel-safe: a change is never lost to a dropped future.
    pub async fn next(&mut self) -> Option<Result<KvChange>> {
        self.conn
            .next_event(&mut self.done, proto::watch_line)
            .await
    }
}

/// The events of [`Client::subscribe`]; ends when the daemon closes the connection.
pub struct Events {
    conn: Conn,
    done: bool,
}

impl Events {
    /// The next event. Cancel-safe.
    pub async fn next(&mut self) -> Option<Result<Event>> {
        self.conn
            .next_event(&mut self.done, proto::event_line)
            .await
    }
}

/// A byte stream to a service on a peer ([`Client::connect_stream`]): the socket
/// connection itself, in raw mode. `AsyncWriteExt::shutdown` ends the direction to the
/// peer; the other keeps flowing.
#[derive(Debug)]
pub struct Stream {
    token: String,
    inner: UnixStream,
}

impl Stream {
    /// This end's token, for [`Client::stream_status`].
    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn into_inner(self) -> UnixStream {
        self.inner
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
