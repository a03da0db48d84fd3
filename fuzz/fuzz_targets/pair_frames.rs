//! Pairing streams: `PairMsg` (`src/daemon/wire.rs`) read at `MAX_CONTROL_FRAME` as
//! `src/daemon/pair/io.rs` reads it, fed to the handshake's state machines
//! (`src/daemon/pair/handshake.rs`: `WindowHandshake` and `Joiner`).
//!
//! Input: byte 0 selects the mode.
//! - 0: the rest is what a joiner sends a window; every decoded message goes to
//!   `WindowHandshake::handle` until the attempt ends.
//! - 1: the rest is what a window sends a joiner; messages go to `Joiner::handle`.
//! - 2: an honest joiner and window run the whole handshake; the rest of the input says
//!   whether the joiner typed the right code and which byte of which message, if any,
//!   is damaged on the way.
//!
//! Checked: no panic; frames within the limit, decoders agree, canonical re-encoding
//! (`check::frames`). In mode 2: undamaged with the right code, both sides finish
//! paired; with a wrong code the window never admits the joiner, whatever else happens.
#![no_main]

use cnspr_fuzz::check::{frames, split};
use cnspr_fuzz::daemon::pair::handshake::{
    Joiner, JoinerStep, Me, Session, WindowHandshake, WindowStep,
};
use cnspr_fuzz::daemon::roster::RosterSnapshot;
use cnspr_fuzz::daemon::wire::PairMsg;
use libfuzzer_sys::fuzz_target;
use transport::frame::{decode_payload, encode, LEN_BYTES, MAX_CONTROL_FRAME};
use transport::DeviceId;

const JOINER: DeviceId = DeviceId([0x11; 32]);
const WINDOW: DeviceId = DeviceId([0x22; 32]);
const BINDING: [u8; 32] = [0x33; 32];
const CODE: &str = "123456";

fn window() -> WindowHandshake {
    WindowHandshake::new(
        CODE,
        Me { id: WINDOW, name: "window".into(), port: 7373 },
        Session { peer: JOINER, binding: BINDING },
        false,
        [0x44; 32],
    )
}

fn joiner(code: &str) -> (Joiner, PairMsg) {
    Joiner::start(
        code,
        Me { id: JOINER, name: "joiner".into(), port: 7374 },
        Session { peer: WINDOW, binding: BINDING },
        false,
        [0x55; 32],
    )
    .expect("a joiner starts")
}

fuzz_target!(|data: &[u8]| {
    let Some((sel, rest)) = split(data) else {
        return;
    };
    match sel % 3 {
        0 => {
            let mut w = window();
            let mut over = false;
            frames::<PairMsg>(rest, MAX_CONTROL_FRAME, |msg, _| {
                if over {
                    return;
                }
                match w.handle(msg) {
                    Ok(WindowStep::Send(_)) => {}
                    Ok(WindowStep::Admit(a)) => panic!("forged Confirm admitted {a:?}"),
                    Ok(WindowStep::Refuse { .. } | WindowStep::WrongCode { .. }) | Err(_) => {
                        over = true
                    }
                }
            });
        }
        1 => {
            let (mut j, _start) = joiner(CODE);
            let mut over = false;
            frames::<PairMsg>(rest, MAX_CONTROL_FRAME, |msg, _| {
                if over {
                    return;
                }
                match j.handle(msg) {
                    Ok(JoinerStep::Send(_)) => {}
                    Ok(JoinerStep::Paired { .. }) => panic!("forged Welcome accepted"),
                    Err(_) => over = true,
                }
            });
        }
        _ => honest(rest),
    }
});

/// Sends `msg` over a damaging wire: byte `damage.1` of the frame's payload is xored with
/// `damage.2` when `damage.0` names this message. `None`: the frame no longer decodes.
fn wire(msg: &PairMsg, n: u8, damage: (u8, usize, u8)) -> Option<PairMsg> {
    let mut f = encode(msg, MAX_CONTROL_FRAME).expect("encodes");
    if damage.0 == n && damage.2 != 0 {
        let payload = &mut f[LEN_BYTES..];
        let i = damage.1 % payload.len();
        payload[i] ^= damage.2;
    }
    decode_payload(&f[LEN_BYTES..]).ok()
}

fn honest(input: &[u8]) {
    let right = input.first().map_or(true, |b| b & 1 == 0);
    let damage = (
        input.get(1).copied().unwrap_or(0) % 4,
        u16::from_le_bytes([input.get(2).copied().unwrap_or(0), input.get(3).copied().unwrap_or(0)])
            as usize,
        input.get(4).copied().unwrap_or(0),
    );
    let damaged = damage.2 != 0;
    let (mut j, start) = joiner(if right { CODE } else { "654321" });
    let mut w = window();
    let expect_done = right && !damaged;

    let Some(start) = wire(&start, 0, damage) else {
        return assert!(!expect_done);
    };
    let reply = match w.handle(start) {
        Ok(WindowStep::Send(m)) => m,
        other => return assert!(!expect_done, "window refused an honest Start: {other:?}"),
    };
    let Some(reply) = wire(&reply, 1, damage) else {
        return assert!(!expect_done);
    };
    let confirm = match j.handle(reply) {
        Ok(JoinerStep::Send(m)) => m,
        other => return assert!(!expect_done, "joiner refused an honest Reply: {other:?}"),
    };
    let Some(confirm) = wire(&confirm, 2, damage) else {
        return assert!(!expect_done);
    };
    match w.handle(confirm) {
        Ok(WindowStep::Admit(_)) => {
            assert!(right, "the window admitted a joiner with the wrong code");
        }
        other => return assert!(!expect_done, "window refused an honest Confirm: {other:?}"),
    }
    let welcome = w
        .welcome("joiner".into(), RosterSnapshot::default())
        .expect("an admitted joiner is welcomed");
    let Some(welcome) = wire(&welcome, 3, damage) else {
        return assert!(!expect_done);
    };
    match j.handle(welcome) {
        Ok(JoinerStep::Paired { welcomed, .. }) => assert_eq!(welcomed.window, WINDOW),
        other => assert!(!expect_done, "joiner refused an honest Welcome: {other:?}"),
    }
}
