//! Feeds arbitrary bytes to the frame decoder: it must return a value or a typed error,
//! never panic, and never allocate beyond the frame limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use transport::frame::{decode, decode_payload, MAX_CONTROL_FRAME};
use transport::wire::ControlFrame;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((_, used))) = decode::<ControlFrame>(data, MAX_CONTROL_FRAME) {
        assert!(used <= data.len());
    }
    let _ = decode_payload::<ControlFrame>(data);
});
