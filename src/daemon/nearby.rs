//! Devices seen on the LAN by mDNS, trusted or not (offered by `cnspr pair`).

use std::net::SocketAddr;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct NearbyInfo {
    pub id: String,
    pub name: String,
    pub addresses: Vec<String>,
    /// It has a pairing window open.
    pub pairing: bool,
}

/// A device seen on the LAN (by mDNS), trusted or not.
#[derive(Debug, Clone)]
pub struct Nearby {
    pub name: String,
    pub addrs: Vec<SocketAddr>,
    pub pairing: Vec<SocketAddr>,
}
