//! Socket address helpers shared by the daemon and the CLI.

use std::net::{SocketAddr, ToSocketAddrs};

/// Resolves `HOST:PORT` (names allowed) to addresses.
pub fn resolve_addr(s: &str) -> anyhow::Result<Vec<SocketAddr>> {
    if s.len() > 300 {
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
