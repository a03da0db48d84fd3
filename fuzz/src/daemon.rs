//! `crate::daemon`: the files of `src/daemon/` that the targets need.

#[path = "../../src/daemon/wire.rs"]
pub mod wire;

#[path = "../../src/daemon/wol.rs"]
pub mod wol;

#[path = "../../src/daemon/roster.rs"]
pub mod roster;

#[path = "../../src/daemon/roster_judge.rs"]
pub mod roster_judge;

/// The seals of membership records, and the gate that takes records only with theirs.
#[path = "../../src/daemon/record_seal.rs"]
pub mod record_seal;

#[path = "../../src/daemon/record_gate.rs"]
pub mod record_gate;

#[path = "../../src/daemon/relays.rs"]
pub mod relays;

/// The gate `relays` takes members' relay frames through.
#[path = "../../src/daemon/roster_gossip.rs"]
pub mod roster_gossip;

#[path = "daemon_control.rs"]
pub mod control;

#[path = "daemon_sync.rs"]
pub mod sync;

#[path = "daemon_pair.rs"]
pub mod pair;

// Host names in the pairing addresses (`pair::addr::parse`).
#[path = "../../src/daemon/lookup.rs"]
pub mod lookup;
