//! The CLI's side of the control socket: a small synchronous client with untyped
//! (`serde_json::Value`) results, re-exported as `client::Client`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde_json::Value;

use super::proto::DEFAULT_MAX_REPLY;
use crate::api::{ErrorBody, Reply, Request};

/// An error reply from the daemon, kept typed so the CLI can print its message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ApiError(pub ErrorBody);

pub struct Client {
    r: BufReader<UnixStream>,
    w: UnixStream,
    next_id: u64,
    socket: std::path::PathBuf,
}

impl Client {
    /// Connects to the daemon's socket; says how to start one when none runs.
    pub fn connect(socket: &Path) -> anyhow::Result<Self> {
        let s = UnixStream::connect(socket).map_err(|e| {
            use std::io::ErrorKind::*;
            match e.kind() {
                NotFound | ConnectionRefused => anyhow::anyhow!(
                    "no cnspr daemon is running on {} (start one with `cnspr serve`, or pass --socket)",
                    socket.display()
                ),
                PermissionDenied => anyhow::anyhow!(
                    "permission denied on {}: the daemon belongs to another user",
                    socket.display()
                ),
                _ => anyhow::anyhow!("cannot reach the daemon at {}: {e}", socket.display()),
            }
        })?;
        let w = s.try_clone()?;
        Ok(Client {
            r: BufReader::with_capacity(256 * 1024, s),
            w,
            next_id: 1,
            socket: socket.to_owned(),
        })
    }

    /// A new connection in place of this one: for a request made after waiting on the
    /// person (a question on the terminal), since the daemon may close a connection it
    /// served while all of its places were taken (docs/api.md, "Framing").
    pub fn reconnect(&mut self) -> anyhow::Result<()> {
        let socket = self.socket.clone();
        *self = Client::connect(&socket)?;
        Ok(())
    }

    fn write_request(&mut self, req: &Request) -> anyhow::Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let mut req = serde_json::to_value(req)?;
        if let Value::Object(m) = &mut req {
            m.insert("id".into(), Value::from(id));
        }
        let mut line = serde_json::to_vec(&req)?;
        line.push(b'\n');
        self.w.write_all(&line)?;
        Ok(id)
    }

    /// Sends a request and returns its result, or the daemon's error.
    pub fn request(&mut self, req: &Request) -> anyhow::Result<Value> {
        self.request_with_body(req, &[])
    }

    /// Sends a request followed by raw body bytes (for `send` with `body_len`).
    pub fn request_with_body(&mut self, req: &Request, body: &[u8]) -> anyhow::Result<Value> {
        let id = self.write_request(req)?;
        if !body.is_empty() {
            self.w.write_all(body)?;
        }
        loop {
            let v = self.next_line()?.ok_or_else(|| {
                anyhow::anyhow!("the daemon closed the connection without answering")
            })?;
            let reply: Reply = serde_json::from_value(v)?;
            if reply.id != id {
                continue;
            }
            return match (reply.ok, reply.error) {
                (true, _) => Ok(reply.result.unwrap_or(Value::Null)),
                (false, Some(e)) => Err(ApiError(e).into()),
                (false, None) => anyhow::bail!("the daemon reported an error without a message"),
            };
        }
    }

    /// Reads the next reply line (for commands that answer more than once, like `pair`).
    pub fn next_reply(&mut self) -> anyhow::Result<Value> {
        let v = self
            .next_line()?
            .ok_or_else(|| anyhow::anyhow!("the daemon closed the connection without answering"))?;
        let reply: Reply = serde_json::from_value(v)?;
        match (reply.ok, reply.error) {
            (true, _) => Ok(reply.result.unwrap_or(Value::Null)),
            (false, Some(e)) => Err(ApiError(e).into()),
            (false, None) => anyhow::bail!("the daemon reported an error without a message"),
        }
    }

    /// Gives up the JSON framing: the connection is a raw byte stream from here on (bytes
    /// already buffered are kept in the reader).
    pub fn into_raw(self) -> (BufReader<UnixStream>, UnixStream) {
        (self.r, self.w)
    }

    /// The next JSON line (events after `subscribe`); `None` at end of stream. A line is
    /// read up to [`DEFAULT_MAX_REPLY`] bytes, as the typed clients do: enough for the
    /// largest reply the daemon gives (an 8 MiB value in base64, a page of `kv.list`,
    /// handlers' replies to `send`), and a clear error beyond.
    pub fn next_line(&mut self) -> anyhow::Result<Option<Value>> {
        let mut line = Vec::new();
        let n = (&mut self.r)
            .take(DEFAULT_MAX_REPLY as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(None);
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        } else if line.len() > DEFAULT_MAX_REPLY {
            anyhow::bail!(
                "a reply from the daemon is longer than the client's limit of {} MiB",
                DEFAULT_MAX_REPLY / (1024 * 1024)
            );
        }
        Ok(Some(serde_json::from_slice(&line)?))
    }
}
