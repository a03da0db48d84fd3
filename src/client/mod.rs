//! Clients of the daemon's control socket (docs/api.md), for the CLI and for other Rust
//! programs.
//!
//! - [`blocking::Client`] and [`asynchronous::Client`] (tokio) speak the protocol with
//!   typed requests and replies: [`Status`], [`KvEntry`], [`SendResult`], ... and a typed
//!   [`Error`] whose [`Error::Api`] carries the daemon's [`Code`]. Both have the same
//!   methods; they share the code that builds each request and reads each reply.
//! - [`Client`] is the CLI's untyped client (results as `serde_json::Value`, errors as
//!   `anyhow::Error` holding an [`ApiError`]).
//!
//! Every line from the socket is read with a size limit and checked; replies tolerate
//! fields this version does not know, so a newer daemon still works.
//!
//! ```no_run
//! use cnspr::client::blocking::Client;
//! use cnspr::client::{Code, Error};
//!
//! # fn main() -> Result<(), Error> {
//! let mut c = Client::connect_default()?;
//! let status = c.status()?;
//! println!("{} has {} peers, {} active", status.name, status.peers, status.active);
//!
//! c.kv_put("photos/cat.jpg", &[0xff, 0xd8, 0xff])?;
//! let v = c.kv_get("photos/cat.jpg")?.expect("just written");
//! assert_eq!(&v.bytes()[..], &[0xff, 0xd8, 0xff]);
//!
//! match c.ping("laptop") {
//!     Ok(p) => println!("laptop: {:.1} ms", p.rtt_ms),
//!     Err(Error::Api { code: Code::Unreachable, message, .. }) => println!("{message}"),
//!     Err(e) => return Err(e),
//! }
//! # Ok(()) }
//! ```

pub mod asynchronous;
pub mod blocking;
mod error;
mod proto;
mod raw;
mod types;

pub use error::{Error, Result};
pub use proto::{default_socket, DEFAULT_MAX_REPLY};
pub use raw::{ApiError, Client};
pub use types::*;

#[cfg(test)]
mod tests;
