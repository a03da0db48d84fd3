//! `crate::daemon::sync`: the puller's state machine and what it needs.

#[path = "../../src/daemon/sync/error.rs"]
pub mod error;
#[path = "../../src/daemon/sync/protocol.rs"]
pub mod protocol;
#[path = "../../src/daemon/sync/puller.rs"]
pub mod puller;
