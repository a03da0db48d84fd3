//! The blocking typed client: one request at a time on one connection; `kv_watch`,
//! `subscribe` and `connect_stream` open connections of their own.
//!
//! ```no_run
//! use cnspr::client::blocking::Client;
//! use cnspr::client::Condition;
//!
//! # fn main() -> Result<(), cnspr::client::Error> {
//! let mut c = Client::connect_default()?;
//! let w = c.kv_put("notes/today", b"buy milk")?;
//! // Replace it only if nobody changed it since.
//! match c.kv_put_if("notes/today", b"buy bread", Condition::IfVersion(w.version)) {
//!     Ok(_) => {}
//!     Err(e) if e.is_conflict() => println!("changed meanwhile: {:?}", e.conflict_current()),
//!     Err(e) => return Err(e),
//! }
//! for entry in c.kv_list("notes/") {
//!     let entry = entry?;
//!     println!("{} = {}", entry.key, String::from_utf8_lossy(&entry.value));
//! }
//! # Ok(()) }
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::client::error::{Error, Result};
use crate::client::proto::{self, Call, Lines, Pager};
use crate::client::types::{
    BatchOp, Condition, Event, HandlersResult, KvBatch, KvChange, KvCounter, KvDeleted, KvEntry,
    KvPage, KvValue, KvWrite, Message, PeerInfo, PingResult, SendResult, ServiceInfo, Status,
};

/// One connection in line mode.
struct Conn {
    r: BufReader<UnixStream>,
    w: UnixStream,
    lines: Lines,
    next_id: u64,
}

impl Conn {
    fn open(path: &Path, max_line: usize) -> Result<Conn> {
        let s = UnixStream::connect(path).map_err(|e| proto::connect_error(path, e))?;
        let w = s.try_clone()?;
        Ok(Conn {
            r: BufReader::with_capacity(64 * 1024, s),
            w,
            lines: Lines::new(max_line),
            next_id: 1,
        })
    }

    /// Writes the request (and its raw bytes) and reads its reply.
    fn call<T>(&mut self, c: Call<'_, T>) -> Result<T> {
        let id = self.next_id;
        self.next_id += 1;
        self.w.write_all(&c.line(id)?)?;
        if !c.body.is_empty() {
            self.w.write_all(&c.body)?;
        }
        loop {
            let line = self.read_line()?.ok_or_else(proto::closed)?;
            if let Some(r) = proto::reply_to(&line, id) {
                return (c.parse)(r);
            }
        }
    }

    fn set_read_timeout(&self, t: Option<Duration>) -> Result<()> {
        Ok(self.r.get_ref().set_read_timeout(t)?)
    }

    /// The next line, at most `lines.max` bytes; `None` at end of stream. A read that
    /// times out keeps the partial line, to go on with.
    fn read_line(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            let avail = match self.r.fill_buf() {
                Ok(a) => a,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
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
}

/// A typed client of the daemon's control socket.
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
    pub fn connect(socket: impl AsRef<Path>) -> Result<Client> {
        let path = socket.as_ref().to_path_buf();
        let conn = Conn::open(&path, proto::DEFAULT_MAX_REPLY)?;
        Ok(Client { path, conn })
    }

    /// Connects to the socket the CLI would use ([`default_socket`](crate::client::default_socket)).
    pub fn connect_default() -> Result<Client> {
        Client::connect(proto::default_socket())
    }

    /// The socket's path.
    pub fn socket(&self) -> &Path {
        &self.path
    }

    /// Sets the longest reply line accepted (64 MiB by default); a longer one is read
    /// to its end, dropped and reported as [`Error::Protocol`].
    pub fn set_max_reply(&mut self, bytes: usize) {
        self.conn.lines.max = bytes;
    }

    /// Bounds each wait for the daemon (`None`, the default: no bound). A call that
    /// times out fails with [`Error::Io`] (`WouldBlock` or `TimedOut`); the connection
    /// stays usable, and the late reply is skipped.
    pub fn set_read_timeout(&mut self, t: Option<Duration>) -> Result<()> {
        self.conn.set_read_timeout(t)
    }

    /// This daemon and device.
    pub fn status(&mut self) -> Result<Status> {
        self.conn.call(proto::status())
    }

    /// Every trusted peer and every removed device.
    pub fn peers(&mut self) -> Result<Vec<PeerInfo>> {
        self.conn.call(proto::peers())
    }

    /// Times one round trip to `peer` (a name or an ID prefix), connecting if needed.
    pub fn ping(&mut self, peer: &str) -> Result<PingResult> {
        self.conn.call(proto::ping(peer, None))
    }

    /// As [`ping`](Self::ping), waiting at most `timeout`.
    pub fn ping_timeout(&mut self, peer: &str, timeout: Duration) -> Result<PingResult> {
        self.conn.call(proto::ping(peer, Some(timeout)))
    }

    /// Sends a tagged message to `peer`; answered once the receiving daemon took it. A
    /// failed delivery is an error (`unreachable`, `timeout`, `queue_full`, ...).
    pub fn send(&mut self, peer: &str, tag: &str, body: &[u8]) -> Result<SendResult> {
        self.send_message(&Message::to(peer, tag, body))
    }

    /// Sends a tagged message to `peer` and waits for its handlers' output
    /// (`outcomes[0].replies`).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cnspr::client::Error> {
    /// let mut c = cnspr::client::blocking::Client::connect_default()?;
    /// let r = c.send_reply("laptop", "sys.uptime", b"")?;
    /// for reply in &r.outcomes[0].replies {
    ///     println!("{}: {}", reply.handler, reply.stdout);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn send_reply(&mut self, peer: &str, tag: &str, body: &[u8]) -> Result<SendResult> {
        self.send_message(&Message::to(peer, tag, body).reply())
    }

    /// Sends a message built with [`Message`] (to all peers, with a timeout, ...).
    pub fn send_message(&mut self, m: &Message<'_>) -> Result<SendResult> {
        self.conn.call(proto::send(m)?)
    }

    /// The handler directory as the daemon reads it.
    pub fn handlers(&mut self) -> Result<HandlersResult> {
        self.conn.call(proto::handlers())
    }

    /// The services this daemon serves (exposed and listened for).
    pub fn services(&mut self) -> Result<Vec<ServiceInfo>> {
        self.conn.call(proto::services())
    }

    /// How a stream ended (`closed`, `error: ...`), waiting up to `wait` for its end;
    /// `open` while it runs.
    pub fn stream_status(&mut self, token: &str, wait: Option<Duration>) -> Result<String> {
        self.conn.call(proto::stream_status(token, wait))
    }

    /// Stores `value` (any bytes, at most 8 MiB) under `key`; answered once durable.
    pub fn kv_put(&mut self, key: &str, value: &[u8]) -> Result<KvWrite> {
        self.conn.call(proto::kv_put(key, value, None)?)
    }

    /// Stores `value` only if `cond` holds; otherwise fails with a `conflict`
    /// ([`Error::is_conflict`], [`Error::conflict_current`]) and writes nothing.
    pub fn kv_put_if(&mut self, key: &str, value: &[u8], cond: Condition) -> Result<KvWrite> {
        self.conn.call(proto::kv_put(key, value, Some(cond))?)
    }

    /// The value under `key`, or its counter; `None` when absent.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cnspr::client::Error> {
    /// let mut c = cnspr::client::blocking::Client::connect_default()?;
    /// if let Some(v) = c.kv_get("notes/today")? {
    ///     println!("{}", String::from_utf8_lossy(&v.bytes()));
    /// }
    /// # Ok(()) }
    /// ```
    pub fn kv_get(&mut self, key: &str) -> Result<Option<KvValue>> {
        self.conn.call(proto::kv_get(key, false))
    }

    /// As [`kv_get`](Self::kv_get), with the concurrent versions that lost
    /// ([`KvEntry::siblings`]).
    pub fn kv_get_all_versions(&mut self, key: &str) -> Result<Option<KvValue>> {
        self.conn.call(proto::kv_get(key, true))
    }

    /// Deletes `key`; `None` when it had no value.
    pub fn kv_del(&mut self, key: &str) -> Result<Option<KvDeleted>> {
        self.conn.call(proto::kv_del(key, None))
    }

    /// Deletes `key` only if `cond` holds (else a `conflict`).
    pub fn kv_del_if(&mut self, key: &str, cond: Condition) -> Result<Option<KvDeleted>> {
        self.conn.call(proto::kv_del(key, Some(cond)))
    }

    /// Every key under `prefix` in key order, with its value, read a page at a time.
    /// Each page comes whole in one reply line: with large values, lower the page size
    /// with [`kv_list_paged`](Self::kv_list_paged).
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
    pub fn kv_list_page(
        &mut self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KvPage> {
        self.conn.call(proto::kv_list(prefix, after, limit))
    }

    /// Adds `by` (may be negative) to the counter `key`; its new value.
    pub fn kv_incr(&mut self, key: &str, by: i64) -> Result<KvCounter> {
        self.conn.call(proto::kv_incr(key, by))
    }

    /// Writes `ops` in one transaction (puts and deletes, each with an optional
    /// condition): all or none; a condition that fails is a `conflict`. Needs a daemon
    /// that knows `kv.batch` (else `unknown_command`).
    pub fn kv_batch(&mut self, ops: &[BatchOp<'_>]) -> Result<KvBatch> {
        self.conn.call(proto::kv_batch(ops)?)
    }

    /// Changes under `prefix`, on a connection of their own: first those after feed
    /// seq `from_seq` (`None`: the whole feed), then live ones, each once.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), cnspr::client::Error> {
    /// let c = cnspr::client::blocking::Client::connect_default()?;
    /// let mut last = 0; // kept across restarts, to resume
    /// for change in c.kv_watch("notes/", Some(last))? {
    ///     let change = change?;
    ///     last = change.feed_seq;
    ///     println!("{} {}", change.key, if change.deleted { "deleted" } else { "set" });
    /// }
    /// # Ok(()) }
    /// ```
    pub fn kv_watch(&self, prefix: &str, from_seq: Option<u64>) -> Result<Watch> {
        let mut conn = Conn::open(&self.path, self.conn.lines.max)?;
        conn.call(proto::kv_watch(prefix, from_seq))?;
        Ok(Watch { conn, done: false })
    }

    /// Every event (messages, peers, the daemon), on a connection of its own.
    ///
    /// ```no_run
    /// use cnspr::client::Event;
    /// # fn main() -> Result<(), cnspr::client::Error> {
    /// let c = cnspr::client::blocking::Client::connect_default()?;
    /// for ev in c.subscribe()? {
    ///     if let Event::Message(m) = ev? {
    ///         println!("{} from {}", m.tag, m.from.name);
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn subscribe(&self) -> Result<Events> {
        self.subscribe_to(&[])
    }

    /// The events of these kinds (`message`, `peer`, `daemon`; empty: all).
    pub fn subscribe_to(&self, kinds: &[&str]) -> Result<Events> {
        let mut conn = Conn::open(&self.path, self.conn.lines.max)?;
        conn.call(proto::subscribe(kinds))?;
        Ok(Events { conn, done: false })
    }

    /// Opens a byte stream to `service` on `peer`, on a connection of its own.
    ///
    /// ```no_run
    /// use std::io::{Read, Write};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let c = cnspr::client::blocking::Client::connect_default()?;
    /// let mut s = c.connect_stream("laptop", "echo")?;
    /// s.write_all(b"hello")?;
    /// s.shutdown_write()?;
    /// let mut back = Vec::new();
    /// s.read_to_end(&mut back)?;
    /// # Ok(()) }
    /// ```
    pub fn connect_stream(&self, peer: &str, service: &str) -> Result<Stream> {
        self.connect_stream_timeout(peer, service, None)
    }

    /// As [`connect_stream`](Self::connect_stream), waiting at most `timeout` for a
    /// connection to the peer.
    pub fn connect_stream_timeout(
        &self,
        peer: &str,
        service: &str,
        timeout: Option<Duration>,
    ) -> Result<Stream> {
        let mut s =
            UnixStream::connect(&self.path).map_err(|e| proto::connect_error(&self.path, e))?;
        let call = proto::connect(peer, service, timeout);
        s.write_all(&call.line(1)?)?;
        // Unbuffered, a byte at a time: the stream's bytes follow the reply at once and
        // must stay in the socket.
        let mut lines = Lines::new(proto::MAX_STREAM_REPLY);
        let mut byte = [0u8; 1];
        loop {
            let line = match s.read(&mut byte) {
                Ok(0) => lines.eof()?.ok_or_else(proto::closed)?,
                Ok(_) => match lines.feed(&byte) {
                    (_, true) => lines.take()?,
                    _ => continue,
                },
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
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

impl Iterator for KvList<'_> {
    type Item = Result<KvEntry>;

    fn next(&mut self) -> Option<Result<KvEntry>> {
        loop {
            if let Some(e) = self.pager.pop() {
                return Some(Ok(e));
            }
            let call = self.pager.next_call()?;
            let page = self.conn.call(call);
            if let Err(e) = self.pager.feed(page) {
                return Some(Err(e));
            }
        }
    }
}

/// A read error after which the connection is still in step: a line over the limit
/// (skipped), or a read timeout.
fn resumable(e: &Error) -> bool {
    match e {
        Error::Protocol(_) => true,
        Error::Io(e) => matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        _ => false,
    }
}

/// Reads the next event line with `parse`; `None` at end of stream, and after a read
/// error. A line that does not parse is reported, and the stream goes on.
fn next_event<T>(
    conn: &mut Conn,
    done: &mut bool,
    parse: fn(&[u8]) -> Result<Option<T>>,
) -> Option<Result<T>> {
    while !*done {
        let line = match conn.read_line() {
            Ok(Some(l)) => l,
            Ok(None) => break,
            Err(e) => {
                *done = !resumable(&e);
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

/// The changes of [`Client::kv_watch`]; ends when the daemon closes the connection.
pub struct Watch {
    conn: Conn,
    done: bool,
}

impl Watch {
    /// Bounds the wait for the next change: `next` then gives an [`Error::Io`]
    /// (`WouldBlock` or `TimedOut`) and may be called again.
    pub fn set_read_timeout(&self, t: Option<Duration>) -> Result<()> {
        self.conn.set_read_timeout(t)
    }
}

impl Iterator for Watch {
    type Item = Result<KvChange>;

    fn next(&mut self) -> Option<Result<KvChange>> {
        next_event(&mut self.conn, &mut self.done, proto::watch_line)
    }
}

/// The events of [`Client::subscribe`]; ends when the daemon closes the connection.
pub struct Events {
    conn: Conn,
    done: bool,
}

impl Events {
    /// Bounds the wait for the next event: `next` then gives an [`Error::Io`]
    /// (`WouldBlock` or `TimedOut`) and may be called again.
    pub fn set_read_timeout(&self, t: Option<Duration>) -> Result<()> {
        self.conn.set_read_timeout(t)
    }
}

impl Iterator for Events {
    type Item = Result<Event>;

    fn next(&mut self) -> Option<Result<Event>> {
        next_event(&mut self.conn, &mut self.done, proto::event_line)
    }
}

/// A byte stream to a service on a peer ([`Client::connect_stream`]): the socket
/// connection itself, in raw mode (docs/api.md, "Raw mode").
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

    /// Ends the direction to the peer (it reads end of file); the other keeps flowing.
    pub fn shutdown_write(&self) -> std::io::Result<()> {
        self.inner.shutdown(std::net::Shutdown::Write)
    }

    /// The socket connection, e.g. to `try_clone` it for a second thread.
    pub fn get_ref(&self) -> &UnixStream {
        &self.inner
    }

    pub fn into_inner(self) -> UnixStream {
        self.inner
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
