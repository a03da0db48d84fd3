//! Message lanes: the long-lived stream per connection that carries small messages (see
//! `messages.rs`); one [`Lane`] per peer, owned by the daemon's lane map.

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::wire::{MsgHeader, MsgResult};

pub struct LaneReq {
    pub header: MsgHeader,
    pub body: Bytes,
    pub done: oneshot::Sender<MsgResult>,
}

/// The sending side of one lane.
pub struct Lane {
    pub conn: usize,
    pub tx: mpsc::Sender<LaneReq>,
}
