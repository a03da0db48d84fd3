//! The result types of `wake` and the interfaces `peers` shows (docs/api.md, "wake").

use serde::{Deserialize, Serialize};

/// An Ethernet interface a peer announced: `mac` as `aa:bb:cc:dd:ee:ff`, `addr` as
/// `A.B.C.D/N`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IfaceInfo {
    pub mac: String,
    pub addr: String,
}

/// `wake` result: who sent the magic packets, and where.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WakeResult {
    /// The sleeping peer's name and ID.
    pub peer: String,
    pub id: String,
    /// The device that sent the packets (this one or a member on the peer's LAN).
    pub by: String,
    pub by_id: String,
    /// The peer's state here when asked (`unreachable`, `left`, ... or `active` with
    /// `force`).
    pub state: String,
    pub sent: Vec<WakeSentInfo>,
}

/// One magic packet: for `mac`, out of `interface` on the sender, to each of `to`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WakeSentInfo {
    pub mac: String,
    pub interface: String,
    pub to: Vec<String>,
}
