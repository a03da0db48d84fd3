//! Socket address helpers shared by the daemon and the CLI.

use std::net::{SocketAddr, ToSocketAddrs};

/// Longest `HOST:PORT` taken.
pub const MAX_ADDR_LEN: usize = 300;

/// Resolves `HOST:PORT` (names allowed) to addresses. A name blocks the calling thread
/// while it is looked up: the daemon uses `daemon::lookup` instead.
pub fn resolve_addr(s: &str) -> anyhow::Result<Vec<SocketAddr>> {
    if s.len() > MAX_ADDR_LEN {
        anyhow::bail!("address too long");
    }
    let addrs: Vec<SocketAddr> = s
        .to_socket_addrs()
        .map_err(|e| anyhow::anyhow!("{s:?} is not a usable HOST:PORT ({e})"))?
        .collect();
    if addrs.is_empty() {
        anyhow::bail!("{s:?} resolves to no address");
    }
    Ok(addrs)
}

/// The plain form of an address (an IPv4-mapped IPv6 address becomes IPv4).
pub fn canon(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}
