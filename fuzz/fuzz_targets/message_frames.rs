//! Message and application streams (`src/daemon/wire.rs`), each read as its stream reads
//! it: a message stream's `MsgHeader` and a lane's `LaneMsg` at `MAX_HEADER`
//! (`src/daemon/lanes.rs`, 64 KiB), the answers `MsgResult` and `LaneResult` at
//! `MAX_RESULT` (24 MiB), an application stream's `AppFrame` at `MAX_APP_FRAME`
//! (`src/daemon/stream_io.rs`, 4096 bytes). The limits are restated here: their modules
//! are private and pull in the whole daemon.
//!
//! Input: byte 0 selects the frame type; the rest is the stream's bytes.
//!
//! Checked: no panic; frames within their stream's limit; stream and slice decoders
//! agree; decoded frames re-encode canonically (`check::frames`); the strings and bytes a
//! decoded value holds fit in the payload they came from.
#![no_main]

use cnspr_fuzz::check::{frames, split};
use cnspr_fuzz::daemon::wire::{AppFrame, LaneMsg, LaneResult, MsgHeader, MsgResult};
use libfuzzer_sys::fuzz_target;

/// `src/daemon/lanes.rs`.
const MAX_HEADER: usize = 64 * 1024;
/// `src/daemon/lanes.rs`.
const MAX_RESULT: usize = 24 * 1024 * 1024;
/// `src/daemon/stream_io.rs`.
const MAX_APP_FRAME: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((sel, rest)) = split(data) else {
        return;
    };
    match sel % 5 {
        0 => frames::<MsgHeader>(rest, MAX_HEADER, |h, len| header(&h, len)),
        1 => frames::<LaneMsg>(rest, MAX_HEADER, |m, len| header(&m.header, len)),
        2 => frames::<MsgResult>(rest, MAX_RESULT, |r, len| result(&r, len)),
        3 => frames::<LaneResult>(rest, MAX_RESULT, |r, len| result(&r.result, len)),
        _ => frames::<AppFrame>(rest, MAX_APP_FRAME, |f, len| {
            let text = match &f {
                AppFrame::Open { service }
                | AppFrame::Relay { service, .. }
                | AppFrame::Relayed { service, .. } => service.len(),
                AppFrame::SignedRelay { service, proof, .. }
                | AppFrame::SignedRelayed { service, proof, .. } => service.len() + proof.sig.len(),
                AppFrame::Err { code, message } => code.len() + message.len(),
                AppFrame::Ok => 0,
            };
            assert!(text <= len);
        }),
    }
});

/// Every string of a decoded header came out of its payload.
fn header(h: &MsgHeader, len: usize) {
    assert!(h.id.len() + h.tag.len() <= len);
}

fn result(r: &MsgResult, len: usize) {
    if let MsgResult::Replies(replies) = r {
        let bytes: usize = replies.iter().map(|w| w.handler.len() + w.stdout.len()).sum();
        assert!(bytes <= len, "replies hold more bytes than their frame");
    }
}
