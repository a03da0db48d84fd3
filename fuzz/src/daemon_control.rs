//! `crate::daemon::control`: the socket's line and body framing.

#[path = "../../src/daemon/control/framing.rs"]
pub mod framing;
