//! The signed mesh roster (`src/daemon/roster.rs`): `RosterSnapshot` as it arrives
//! (bincode inside `MeshFrame::Roster` / `PairMsg::Welcome`, or the JSON of
//! `roster.json`) and its verification and merge (`MeshRoster::merge`, `merge_from`).
//!
//! Input: byte 0 selects the mode.
//! - even: the rest is a stream of bincode frames (`MAX_CONTROL_FRAME`) of snapshots, or,
//!   when it parses as such, the JSON of a stored roster; each is merged into a roster
//!   that knows one member. Nothing the fuzzer writes is validly signed, so nothing
//!   may be accepted.
//! - odd: the rest is a script of genuinely signed entries and removals among six
//!   devices (4 bytes each: kind and batch break, subject, signer, version and name),
//!   cut into batches that are delivered as gossip.
//!
//! Checked: no panic; nothing unsigned accepted; after every merge no device is both a
//! member and removed, every kept entry verifies, this device is never an entry, the
//! roster is within `MAX_MEMBERS`, and merging the roster's own snapshot again changes
//! nothing. Unless `CNSPR_FUZZ_ROSTER_ORDER=0`: the module's promise that merging "is a
//! pure function of the sets of valid entries and removals: gossip may deliver them in
//! any order, repeatedly, and every member ends with the same roster" -- the batches
//! delivered forwards and backwards, repeatedly, give the same roster.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use cnspr_fuzz::check::{frames, split};
use cnspr_fuzz::daemon::roster::{
    MemberEntry, MeshRoster, Removal, RosterSnapshot, MAX_MEMBERS, MAX_SIGNERS,
};
use libfuzzer_sys::fuzz_target;
use transport::frame::MAX_CONTROL_FRAME;
use transport::{DeviceId, Identity};

const DEVICES: usize = 6;
const NAMES: [&str; 4] = ["laptop", "phone", "LAPTOP", "nas-2"];
const MAX_OPS: usize = 12;
const ROUNDS: usize = 4;

fn devices() -> &'static [Identity] {
    static D: OnceLock<Vec<Identity>> = OnceLock::new();
    D.get_or_init(|| {
        (0..DEVICES)
            .map(|i| Identity::from_seed(&[i as u8 + 1; 32], &format!("dev{i}")).unwrap())
            .collect()
    })
}

fn order_checked() -> bool {
    static O: OnceLock<bool> = OnceLock::new();
    *O.get_or_init(|| std::env::var("CNSPR_FUZZ_ROSTER_ORDER").map_or(true, |v| v != "0"))
}

fn empty(me: DeviceId) -> MeshRoster {
    MeshRoster::load(Path::new("/nonexistent-cnspr-fuzz"), me).expect("no file: empty roster")
}

fn check(r: &mut MeshRoster, me: DeviceId) {
    let snap = r.snapshot();
    assert!(snap.within_limits() && snap.members.len() <= MAX_MEMBERS * MAX_SIGNERS);
    for m in &snap.members {
        assert!(m.well_formed(), "kept a member entry that does not verify");
        assert!(m.id != me, "this device is an entry of its own roster");
    }
    for m in r.members() {
        assert!(!r.is_removed(&m.id), "device {:?} both member and removed", m.id);
        assert!(r.conflicts().all(|c| c.id != m.id), "member and in conflict");
    }
    assert!(snap.removals.iter().all(Removal::well_formed));
    let again = r.merge(snap.clone());
    assert!(again.is_empty(), "merging the roster's own snapshot changed it: {again:?}");
    assert_eq!(r.snapshot(), snap);
}

fuzz_target!(|data: &[u8]| {
    let Some((sel, rest)) = split(data) else {
        return;
    };
    if sel % 2 == 0 {
        unsigned(rest);
    } else {
        signed(rest);
    }
});

fn unsigned(rest: &[u8]) {
    let d = devices();
    let me = d[0].id;
    let mut r = empty(me);
    r.merge(RosterSnapshot {
        members: vec![MemberEntry::sign(&d[0], d[1].id, "phone", 1)],
        removals: vec![],
    });
    let before = r.snapshot();
    let mut merge = |snap: RosterSnapshot| {
        let ch = r.merge(snap);
        assert!(ch.is_empty(), "unsigned roster accepted: {ch:?}");
        assert_eq!(r.snapshot(), before);
    };
    if let Ok(snap) = serde_json::from_slice::<RosterSnapshot>(rest) {
        merge(snap);
    }
    frames::<RosterSnapshot>(rest, MAX_CONTROL_FRAME, |snap, _| merge(snap));
}

fn signed(rest: &[u8]) {
    let d = devices();
    let me = d[0].id;
    let mut batches: Vec<RosterSnapshot> = vec![RosterSnapshot::default()];
    for op in rest.chunks_exact(4).take(MAX_OPS) {
        if op[0] & 0x80 != 0 {
            batches.push(RosterSnapshot::default());
        }
        let subject = d[op[1] as usize % DEVICES].id;
        let signer = &d[op[2] as usize % DEVICES];
        let version = u64::from(op[3] & 0x1f);
        let b = batches.last_mut().unwrap();
        if op[0] & 1 == 0 {
            let name = NAMES[(op[3] >> 5) as usize % NAMES.len()];
            b.members.push(MemberEntry::sign(signer, subject, name, version));
        } else {
            b.removals.push(Removal::sign(signer, subject, version));
        }
    }
    let deliver = |order: &mut dyn Iterator<Item = &RosterSnapshot>| {
        let order: Vec<&RosterSnapshot> = order.collect();
        let mut r = empty(me);
        for _ in 0..ROUNDS {
            for b in &order {
                r.merge((*b).clone());
                check(&mut r, me);
            }
        }
        r
    };
    let forwards = deliver(&mut batches.iter());
    let backwards = deliver(&mut batches.iter().rev());
    if order_checked() {
        assert_eq!(
            forwards.snapshot(),
            backwards.snapshot(),
            "the same gossip in another order gave another roster"
        );
        let judged = |r: &MeshRoster| {
            (
                r.members().cloned().collect::<Vec<_>>(),
                r.removed().cloned().collect::<Vec<_>>(),
                r.conflicts().cloned().collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            judged(&forwards),
            judged(&backwards),
            "the same gossip in another order was judged otherwise"
        );
    }
}
