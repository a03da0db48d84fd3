//! Mesh streams: `MeshFrame` (`src/daemon/wire.rs`) read with `transport::frame::read_frame`
//! at `MAX_CONTROL_FRAME` as `src/daemon/mesh.rs` reads it, the link control stream's
//! `transport::wire::ControlFrame`, and the membership crate's wire format
//! (`membership::Message::<DeviceId>::decode`, the payload of `MeshFrame::Membership`).
//!
//! Input: byte 0 selects the stream (0: mesh, 1: link control, else: one membership
//! message); the rest is the stream's bytes.
//!
//! Checked: no panic; frames within the limit; stream and slice decoders agree; decoded
//! frames re-encode canonically (`check::frames`). Membership messages: the decoder's
//! limits hold (`MAX_MESSAGE_BYTES`, `MAX_LIST`, `MAX_LINKS`, `MAX_PAYLOAD`, `MAX_SEAL`), a
//! decoded message round-trips through `encode`/`decode`, and feeding it to a `Membership` core
//! (as `src/daemon/membership.rs` does) neither panics nor stalls. The message also goes
//! through the daemon's record gate (`src/daemon/record_gate.rs`), which must let no record
//! through (none is sealed by its origin's key here) and keep everything else; the core
//! is fed the message as it came, as if a member had sealed every record in it. Signed parts are fed to
//! their verification: a `Roster` is merged into a `MeshRoster`, `Relays` into a relay
//! map, with every signer trusted (so only the signature checks stand).
#![no_main]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cnspr_fuzz::check::{frames, split};
use cnspr_fuzz::daemon::record_gate::RecordGate;
use cnspr_fuzz::daemon::relays;
use cnspr_fuzz::daemon::roster::MeshRoster;
use cnspr_fuzz::daemon::wire::MeshFrame;
use libfuzzer_sys::fuzz_target;
use membership::message::{MAX_LINKS, MAX_LIST, MAX_MESSAGE_BYTES, MAX_PAYLOAD, MAX_SEAL};
use membership::{Config, Input, Item, Membership, Message};
use transport::frame::MAX_CONTROL_FRAME;
use transport::wire::ControlFrame;
use transport::DeviceId;

const ME: DeviceId = DeviceId([1; 32]);
const PEER: DeviceId = DeviceId([2; 32]);

fuzz_target!(|data: &[u8]| {
    let Some((sel, rest)) = split(data) else {
        return;
    };
    match sel % 3 {
        0 => {
            let mut core = None;
            frames::<MeshFrame>(rest, MAX_CONTROL_FRAME, |frame, _| match frame {
                MeshFrame::Roster(snap) => {
                    let dir = std::path::Path::new("/nonexistent-cnspr-fuzz");
                    let mut roster = MeshRoster::load(dir, ME).expect("no file: empty roster");
                    let changes = roster.merge(snap);
                    // Nothing here is signed by a member: nothing may be accepted.
                    assert!(changes.is_empty(), "unsigned roster accepted: {changes:?}");
                }
                MeshFrame::Relays(entries) => {
                    let mut into = BTreeMap::new();
                    relays::merge(&mut into, entries, |_| true);
                    assert!(into.len() <= relays::MAX_ENTRIES);
                    assert!(into.values().all(|e| e.well_formed()));
                }
                MeshFrame::Membership(bytes) => membership(&mut core, &bytes),
                MeshFrame::Lan(list) => {
                    let merged = cnspr_fuzz::daemon::wol::merge(&[], &list);
                    assert!(merged.is_none_or(|l| l.len() <= cnspr_fuzz::daemon::wol::MAX_IFACES));
                }
                MeshFrame::Addrs(_) | MeshFrame::Punch(_) | MeshFrame::Wake(_) => {}
            });
        }
        1 => frames::<ControlFrame>(rest, MAX_CONTROL_FRAME, |_, _| {}),
        _ => membership(&mut None, rest),
    }
});

fn membership(core: &mut Option<(Membership<DeviceId>, Instant, RecordGate)>, bytes: &[u8]) {
    let Ok(msg) = Message::<DeviceId>::decode(bytes) else {
        return;
    };
    assert!(bytes.len() <= MAX_MESSAGE_BYTES);
    match &msg {
        Message::Gossip { items } => {
            assert!(items.len() <= MAX_LIST);
            for item in items {
                match item {
                    Item::Record(r) => {
                        assert!(r.links.len() <= MAX_LINKS && r.seal.len() <= MAX_SEAL)
                    }
                    Item::Event(e) => assert!(e.payload.len() <= MAX_PAYLOAD),
                }
            }
        }
        Message::DigestFull {
            records, events, ..
        } => assert!(records.len() <= MAX_LIST && events.len() <= MAX_LIST),
        _ => {}
    }
    let encoded = msg.encode();
    assert!(encoded.len() <= bytes.len(), "re-encoding longer than the input");
    assert_eq!(
        Message::<DeviceId>::decode(&encoded).as_ref(),
        Ok(&msg),
        "membership message does not round-trip"
    );

    let (m, now, gate) = core.get_or_insert_with(|| {
        let now = Instant::now();
        let mut m = Membership::new(ME, 1, Config::lan(), now);
        m.set_members([PEER, DeviceId([3; 32])]);
        m.handle_input(
            Input::LinkUp {
                peer: PEER,
                rtt: Duration::from_millis(1),
                addr: None,
                datagram: false,
            },
            now,
        );
        (m, now, RecordGate::default())
    });
    *now += Duration::from_millis(10);

    let mut gated = msg.clone();
    gate.admit(PEER, &mut gated, *now);
    match (&msg, &gated) {
        (Message::Gossip { items }, Message::Gossip { items: kept }) => {
            let events = |l: &[Item<DeviceId>]| {
                l.iter()
                    .filter_map(|i| match i {
                        Item::Event(e) => Some(e.clone()),
                        Item::Record(_) => None,
                    })
                    .collect::<Vec<_>>()
            };
            assert!(
                kept.iter().all(|i| matches!(i, Item::Event(_))),
                "a record without its origin's seal passed the gate"
            );
            assert_eq!(events(items), events(kept), "the gate changed the events");
        }
        _ => assert_eq!(msg, gated, "the gate changed a message without records"),
    }
    let stats = gate.stats();
    assert_eq!(stats.verified + stats.known, 0, "a record was taken: {stats:?}");

    m.handle_input(Input::Message { from: PEER, msg }, *now);
    let mut outputs = 0usize;
    while m.poll_output().is_some() {
        outputs += 1;
        assert!(outputs < 1_000_000, "membership core keeps producing output");
    }
    m.handle_timeout(*now + Duration::from_secs(1));
    while m.poll_output().is_some() {}
}
