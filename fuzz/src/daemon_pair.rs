//! `crate::daemon::pair`: the pairing handshake's state machines and their errors.

#[path = "../../src/daemon/pair/addr.rs"]
pub mod addr;
#[path = "../../src/daemon/pair/error.rs"]
pub mod error;
#[path = "../../src/daemon/pair/handshake.rs"]
pub mod handshake;
