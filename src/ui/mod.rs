//! The local web dashboard (`cnspr ui`, config `ui`; docs/ui.md): an HTTP server inside
//! the daemon, on loopback only, behind a random token. It answers through the control
//! socket's own command handlers and feeds pages the same events as `subscribe`.
//!
//! `server` binds and guards requests (`auth` holds the pure checks, `limit` caps the
//! connections), `api` has the JSON
//! endpoints, `state` the shared state and the event feed, `pairing` a pairing window
//! opened from a page, `qr` the QR code of its code, `slot` the daemon's handle on the
//! running server.

pub mod api;
pub mod auth;
pub mod clock;
pub mod limit;
pub mod open;
pub mod pairing;
pub mod qr;
pub mod server;
pub mod slot;
pub mod state;
