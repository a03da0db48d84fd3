//! Pairing (SPEC section 3): `cnspr pair` opens a window with a fresh one-time code;
//! `cnspr pair CODE` on the new device finds the window on the LAN (mDNS TXT `pair`) or
//! at `--addr`, and both run SPAKE2 over the code. See `docs/pairing.md`.
//!
//! Wire (one QUIC stream of a `cnspr-pair/1` connection, frames as everywhere else):
//!
//! ```text
//! joiner J                                     window W
//!   Start { v, name, port, nonce_j, spake_a }  ->
//!                                          <-  Reply { name, port, nonce_w, spake_b } | Fail
//!   Confirm { mac_j }                       ->
//!                                          <-  Welcome { mac_w, mesh_name, roster } | Fail
//!   Done                                    ->
//! ```
//!
//! The decisions are pure state machines, tested without sockets or clocks:
//! [`handshake`] (SPAKE2, transcript, confirmation MACs, refusals), [`window`] (a window's
//! life: wrong codes, expiry, cancel, the time a closed window keeps answering why it
//! closed) and [`search`] (where the joiner looks and when it gives up). The tasks in
//! [`serve`] (the window's side) and [`join`] only carry their messages over QUIC.

mod addr;
mod code;
mod error;
mod handshake;
mod io;
mod join;
mod search;
mod serve;
mod window;

use std::net::SocketAddr;

pub use error::PairError;
pub use join::join;
pub use serve::{nearby, open, Update};
pub use window::DEFAULT_WINDOW;

/// Addresses at most a join is given.
pub const MAX_ADDRS: usize = crate::daemon::peers::MAX_ADDRS;

/// The addresses given to `pair CODE --addr`, resolved: `HOST:PORT`, or an IPv6
/// link-local address with its zone, `[fe80::1%eth0]:41532` (interface name or number),
/// the form `cnspr pair` shows.
pub async fn resolve_addrs(addrs: &[String]) -> Result<Vec<SocketAddr>, PairError> {
    if addrs.len() > MAX_ADDRS {
        return Err(PairError::TooManyAddresses(MAX_ADDRS));
    }
    let mut out = Vec::new();
    for a in addrs {
        out.extend(addr::parse(a).await?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn join_addresses_take_zones_and_are_bounded() {
        let got = resolve_addrs(&["[fe80::1%lo]:9".into(), "127.0.0.1:9".into()])
            .await
            .unwrap();
        assert_eq!(got.len(), 2);
        assert!(matches!(got[0], SocketAddr::V6(a) if a.scope_id() != 0));
        let many = vec!["127.0.0.1:9".to_string(); MAX_ADDRS + 1];
        let e = resolve_addrs(&many).await.unwrap_err();
        assert_eq!(e.code(), crate::api::code::INVALID_ADDRESS);
        let e = resolve_addrs(&["[fe80::1]:9".into()]).await.unwrap_err();
        assert_eq!(e.code(), crate::api::code::INVALID_ADDRESS);
    }
}
