use super::*;

const J: DeviceId = DeviceId([1; 32]);
const W: DeviceId = DeviceId([2; 32]);
const M: DeviceId = DeviceId([9; 32]);
const CODE: &str = "123456";

fn me(id: DeviceId, name: &str, port: u16) -> Me {
    Me {
        id,
        name: name.into(),
        port,
    }
}

fn session(peer: DeviceId, binding: u8) -> Session {
    Session {
        peer,
        binding: [binding; 32],
    }
}

/// A joiner and a window over one honest TLS session; the joiner's `Start` delivered.
fn begin(code_j: &str, code_w: &str) -> (Joiner, WindowHandshake, WindowStep) {
    let (j, start) = Joiner::start(code_j, me(J, "jay", 7), session(W, 5), false, [3; 32]).unwrap();
    let mut w = WindowHandshake::new(code_w, me(W, "dub", 8), session(J, 5), false, [4; 32]);
    let step = w.handle(start).unwrap();
    (j, w, step)
}

fn sent(step: WindowStep) -> PairMsg {
    match step {
        WindowStep::Send(m) => m,
        other => panic!("expected a message to send, got {other:?}"),
    }
}

fn joiner_sent(step: JoinerStep) -> PairMsg {
    match step {
        JoinerStep::Send(m) => m,
        other => panic!("expected a message to send, got {other:?}"),
    }
}

#[test]
fn the_same_code_pairs_and_both_sides_learn_each_other() {
    let (mut j, mut w, step) = begin(CODE, CODE);
    let confirm = joiner_sent(j.handle(sent(step)).unwrap());
    let WindowStep::Admit(adm) = w.handle(confirm).unwrap() else {
        panic!("the right code is admitted");
    };
    assert_eq!(
        adm,
        Admission {
            joiner: J,
            name: "jay".into(),
            port: 7
        }
    );
    assert_eq!(w.joiner_name(), Some("jay"));
    let welcome = w
        .welcome("jay-2".into(), RosterSnapshot::default())
        .unwrap();
    let JoinerStep::Paired { welcomed, send } = j.handle(welcome).unwrap() else {
        panic!("the window proved the code");
    };
    assert!(matches!(send, PairMsg::Done));
    assert_eq!(welcomed.window, W);
    assert_eq!(welcomed.name, "dub");
    assert_eq!(welcomed.port, 8);
    assert_eq!(welcomed.self_name, "jay-2");
    // Nothing more is expected on either side.
    assert!(matches!(
        j.handle(PairMsg::Done),
        Err(PairError::Unexpected { .. })
    ));
    assert!(w.welcome(String::new(), RosterSnapshot::default()).is_err());
}

#[test]
fn a_wrong_code_fails_on_both_sides_and_trusts_nothing() {
    let (mut j, mut w, step) = begin("123457", CODE);
    let confirm = joiner_sent(j.handle(sent(step)).unwrap());
    let WindowStep::WrongCode { send } = w.handle(confirm).unwrap() else {
        panic!("a wrong code is not admitted");
    };
    // The reason older joiners look for.
    assert!(matches!(&send, PairMsg::Fail { reason } if reason == "wrong code"));
    assert!(w.welcome(String::new(), RosterSnapshot::default()).is_err());
    assert!(matches!(j.handle(send), Err(PairError::WrongCode)));
}

#[test]
fn a_window_that_closed_during_an_attempt_says_why_instead_of_wrong_code() {
    let (mut j, _w, step) = begin(CODE, CODE);
    joiner_sent(j.handle(sent(step)).unwrap());
    let why = "the pairing window was already used by another device";
    match j.handle(PairMsg::Fail { reason: why.into() }) {
        Err(PairError::Refused { reason }) => assert_eq!(reason, why),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_machine_in_the_middle_fails_even_with_the_right_code() {
    // It relays every message unchanged, but each side's TLS session is with M: the
    // joiner sees M's ID and one exporter secret, the window another pair.
    for (window_sees, binding_w) in [(M, 6), (J, 6), (M, 5)] {
        let (mut j, start) =
            Joiner::start(CODE, me(J, "jay", 7), session(M, 5), false, [3; 32]).unwrap();
        let mut w = WindowHandshake::new(
            CODE,
            me(W, "dub", 8),
            session(window_sees, binding_w),
            false,
            [4; 32],
        );
        let reply = sent(w.handle(start).unwrap());
        let confirm = joiner_sent(j.handle(reply).unwrap());
        assert!(
            matches!(w.handle(confirm).unwrap(), WindowStep::WrongCode { .. }),
            "window saw {window_sees:?} with binding {binding_w}"
        );
    }
}

#[test]
fn a_welcome_without_the_code_is_not_trusted() {
    let (mut j, _w, step) = begin(CODE, CODE);
    joiner_sent(j.handle(sent(step)).unwrap());
    let forged = PairMsg::Welcome {
        mac: vec![0; 32],
        mesh_name: "jay".into(),
        roster: RosterSnapshot::default(),
    };
    assert!(matches!(j.handle(forged), Err(PairError::WindowUnproven)));
}

#[test]
fn refusals_say_why_and_do_not_count() {
    let start = |version| PairMsg::Start {
        version,
        name: "jay".into(),
        port: 7,
        nonce: [3; 32],
        spake: vec![0; 33],
    };
    let cases = [
        (W, false, 2, Refusal::Version(2)),
        (W, false, PAIR_VERSION, Refusal::Itself),
        (J, true, PAIR_VERSION, Refusal::Removed),
    ];
    for (peer, removed, version, want) in cases {
        let mut w = WindowHandshake::new(CODE, me(W, "dub", 8), session(peer, 5), removed, [4; 32]);
        let WindowStep::Refuse { send, why } = w.handle(start(version)).unwrap() else {
            panic!("{want:?} is refused");
        };
        assert_eq!(why, want);
        let PairMsg::Fail { reason } = send else {
            panic!("a refusal is a Fail")
        };
        assert_eq!(reason, want.to_string());
    }
    assert!(Refusal::Version(2)
        .to_string()
        .contains("version 2 is not supported"));
    // The joiner shows the reason, made safe for a terminal.
    let (mut j, _) = Joiner::start(CODE, me(J, "jay", 7), session(W, 5), false, [3; 32]).unwrap();
    let reason = format!("closed\x1b[2J{}", "x".repeat(1000));
    match j.handle(PairMsg::Fail { reason }) {
        Err(PairError::Refused { reason }) => {
            assert!(reason.starts_with("closed [2J"), "{reason}");
            assert_eq!(reason.chars().count(), MAX_REASON);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_joiner_refuses_its_own_window_and_removed_devices() {
    let mine = Joiner::start(CODE, me(J, "jay", 7), session(J, 5), false, [3; 32]);
    assert!(matches!(mine, Err(PairError::OwnWindow)));
    let removed = Joiner::start(CODE, me(J, "jay", 7), session(W, 5), true, [3; 32]);
    assert!(matches!(removed, Err(PairError::WindowRemoved(id)) if id == W));
}

#[test]
fn messages_out_of_order_end_the_attempt() {
    let mut w = WindowHandshake::new(CODE, me(W, "dub", 8), session(J, 5), false, [4; 32]);
    assert!(matches!(
        w.handle(PairMsg::Confirm { mac: vec![] }),
        Err(PairError::Unexpected {
            expected: "Start",
            got: "Confirm"
        })
    ));
    let (mut j, _) = Joiner::start(CODE, me(J, "jay", 7), session(W, 5), false, [3; 32]).unwrap();
    assert!(matches!(
        j.handle(PairMsg::Done),
        Err(PairError::Unexpected { got: "Done", .. })
    ));
    // A malformed SPAKE2 message from the window.
    let (mut j, _) = Joiner::start(CODE, me(J, "jay", 7), session(W, 5), false, [3; 32]).unwrap();
    let reply = PairMsg::Reply {
        name: "dub".into(),
        port: 8,
        nonce: [4; 32],
        spake: vec![1, 2, 3],
    };
    assert!(matches!(j.handle(reply), Err(PairError::Exchange(_))));
    // One from the joiner counts as a wrong code.
    let mut w = WindowHandshake::new(CODE, me(W, "dub", 8), session(J, 5), false, [4; 32]);
    let start = PairMsg::Start {
        version: PAIR_VERSION,
        name: "jay".into(),
        port: 7,
        nonce: [3; 32],
        spake: vec![1, 2, 3],
    };
    sent(w.handle(start).unwrap());
    assert!(matches!(
        w.handle(PairMsg::Confirm { mac: vec![0; 32] }).unwrap(),
        WindowStep::WrongCode { .. }
    ));
}

#[test]
fn invalid_names_from_the_network_are_replaced() {
    let mut w = WindowHandshake::new(CODE, me(W, "dub", 8), session(J, 5), false, [4; 32]);
    let (_, PairMsg::Start { spake, .. }) =
        Joiner::start(CODE, me(J, "jay", 7), session(W, 5), false, [3; 32]).unwrap()
    else {
        unreachable!()
    };
    let start = PairMsg::Start {
        version: PAIR_VERSION,
        name: "bad\nname".into(),
        port: 7,
        nonce: [3; 32],
        spake,
    };
    sent(w.handle(start).unwrap());
    assert_eq!(w.joiner_name(), Some(clean_name("", &J).as_str()));
    assert!(clean_name("", &J).starts_with("device-"));
}

/// The transcript's layout is part of the wire format (docs/pairing.md).
#[test]
fn the_transcript_layout_is_fixed() {
    let t = Transcript {
        binding: &[7; 32],
        joiner: &J,
        window: &W,
        nonce_j: &[3; 32],
        nonce_w: &[4; 32],
        name_j: "jay",
        name_w: "dub",
    }
    .bytes();
    let mut want = b"cnspr pair v1\0".to_vec();
    for part in [[7u8; 32], [1; 32], [2; 32], [3; 32], [4; 32]] {
        want.extend_from_slice(&part);
    }
    want.extend_from_slice(&[0, 0, 0, 3]);
    want.extend_from_slice(b"jay");
    want.extend_from_slice(&[0, 0, 0, 3]);
    want.extend_from_slice(b"dub");
    assert_eq!(t, want);
    let tag = mac(b"key", LABEL_J, &t);
    assert!(mac_ok(b"key", LABEL_J, &t, &tag));
    assert!(!mac_ok(b"key", LABEL_W, &t, &tag));
    assert!(!mac_ok(b"other key", LABEL_J, &t, &tag));
}
