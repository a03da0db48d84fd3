//! Store sync streams (`src/daemon/wire.rs`): the puller's `Up` frames at `MAX_UP` and the
//! server's `Down` frames at `MAX_DOWN` (`src/daemon/sync/protocol.rs`), read with
//! `transport::frame::read_frame`. Decoded `Down` frames go through the puller's state
//! machine (`src/daemon/sync/puller.rs`, `Puller::on_frame`, and `Puller::answer` on a
//! small in-memory item set) and the store's checks of what a peer sends
//! (`Change::validate`, `store::claims::check_changes`, `check_vector`); decoded `Up`
//! frames go to the checks the server makes (`check_vector`) and their reconciliation
//! replies to a `store::reconcile::Responder`.
//!
//! Input: byte 0 selects the direction (even: `Down` to a puller, odd: `Up`); the rest
//! is the stream's bytes.
//!
//! Checked: no panic; frames within the limit, decoders agree, canonical re-encoding
//! (`check::frames`); a delta the puller accepts is within `DELTA_MAX_CHANGES` and its
//! changes lie within the vector it claims.
#![no_main]

use cnspr::store::claims::{check_changes, check_vector};
use cnspr::store::reconcile::{MemSet, Responder};
use cnspr::store::{Origin, Own, VersionVector};
use cnspr_fuzz::check::{frames, split};
use cnspr_fuzz::daemon::sync::protocol::{DELTA_MAX_CHANGES, MAX_DOWN, MAX_UP};
use cnspr_fuzz::daemon::sync::puller::{Puller, Pulled};
use cnspr_fuzz::daemon::wire::{Down, Up};
use libfuzzer_sys::fuzz_target;

const OWN: Own = Own {
    origin: Origin::new([7; 32], 1),
    held: 100,
};

fn set() -> MemSet {
    let mut s = MemSet::default();
    for i in 0..16u64 {
        s.insert(i.wrapping_mul(0x9e37_79b9_7f4a_7c15), u128::from(i) * 0x1_0000_0001);
    }
    s
}

fuzz_target!(|data: &[u8]| {
    let Some((sel, rest)) = split(data) else {
        return;
    };
    let set = set();
    if sel % 2 == 0 {
        let mut vv = VersionVector::new();
        vv.raise(OWN.origin, OWN.held);
        let (mut puller, _hello) = Puller::start([9; 32], vv, set.0.len() as u64);
        let now = tokio::time::Instant::now();
        let mut alive = true;
        frames::<Down>(rest, MAX_DOWN, |frame, _| {
            if !alive {
                return;
            }
            let changes = match &frame {
                Down::Delta(d) => {
                    let _ = check_vector(&d.through, OWN);
                    d.changes.as_slice()
                }
                Down::ReconChanges(c) => c.as_slice(),
                Down::Recon(_) | Down::ReconBatches(_) => &[],
            };
            for c in changes {
                let _ = c.validate();
            }
            let _ = check_changes(changes, OWN);
            match puller.on_frame(frame, now) {
                Ok(Pulled::Delta { delta, .. }) => {
                    assert!(delta.changes.len() <= DELTA_MAX_CHANGES);
                    assert!(delta.batches.len() <= DELTA_MAX_CHANGES);
                    for c in &delta.changes {
                        assert!(
                            delta.through.covers(c.version.dot()),
                            "accepted a change beyond the delta's vector"
                        );
                    }
                }
                Ok(Pulled::Answer { msg, .. }) => {
                    if puller.answer(&set, msg).is_err() {
                        alive = false;
                    }
                }
                Ok(Pulled::Reconciled(_) | Pulled::Nothing) => {}
                // A bad frame ends the session.
                Err(_) => alive = false,
            }
        });
    } else {
        let mut responder = None;
        frames::<Up>(rest, MAX_UP, |frame, _| match frame {
            Up::Hello { vv, .. } | Up::Seen { vv } => {
                let _ = check_vector(&vv, OWN);
            }
            Up::Recon(reply) => {
                let r = responder.get_or_insert_with(|| {
                    let Ok((r, _first)) = Responder::start(&set);
                    r
                });
                let _ = r.on_reply(&set, reply);
            }
        });
    }
});
