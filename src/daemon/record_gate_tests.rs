//! The gate as the daemon uses it: membership frames from members, through
//! [`RecordGate::take_frame`], into a membership core.

use std::time::{Duration, Instant};

use membership::{Config, Input, Item, LinkEntry, Membership, Message, Record, State, Watch};
use transport::{DeviceId, Identity};

use super::*;

fn id(name: &str) -> Identity {
    Identity::generate(name).unwrap()
}

fn record(origin: DeviceId, incarnation: u64, left: bool, peers: &[DeviceId]) -> Record<DeviceId> {
    Record {
        origin,
        incarnation,
        version: 1,
        left,
        gentle: false,
        links: peers
            .iter()
            .map(|&peer| LinkEntry {
                peer,
                rtt_us: 2000,
                addr: None,
                watch: Watch::Alive,
            })
            .collect(),
        seal: Vec::new(),
    }
}

fn sealed_by(by: &Identity, mut rec: Record<DeviceId>) -> Record<DeviceId> {
    rec.seal = record_seal::seal(by, &rec);
    rec
}

fn frame(records: Vec<Record<DeviceId>>) -> Vec<u8> {
    Message::Gossip {
        items: records.into_iter().map(Item::Record).collect(),
    }
    .encode()
}

/// This device (`me`) with direct links to each of `peers`, as the daemon holds it.
fn core(me: &Identity, peers: &[DeviceId], now: Instant) -> Membership<DeviceId> {
    let mut c = Membership::new(me.id, 1_000, Config::default(), now);
    c.set_members(peers.iter().copied().chain([me.id]));
    for &peer in peers {
        c.handle_input(
            Input::LinkUp {
                peer,
                rtt: Duration::from_millis(2),
                addr: None,
                datagram: false,
            },
            now,
        );
    }
    while c.poll_output().is_some() {}
    c
}

/// A frame from `from` as `membership::received` takes it.
fn receive(
    gate: &RecordGate,
    c: &mut Membership<DeviceId>,
    from: DeviceId,
    bytes: &[u8],
    now: Instant,
) {
    let msg = gate
        .take_frame(from, bytes, now, |_| true)
        .expect("decodes");
    c.handle_input(Input::Message { from, msg }, now);
    while c.poll_output().is_some() {}
}

fn state(c: &Membership<DeviceId>, peer: &DeviceId) -> State {
    c.peer(peer).expect("a view of the peer").state
}

#[test]
fn records_forged_by_a_member_in_anothers_name_are_not_taken() {
    let (me, x, m, n) = (id("me"), id("x"), id("m"), id("n"));
    let t0 = Instant::now();
    let mut c = core(&me, &[x.id, m.id, n.id], t0);
    let gate = RecordGate::default();
    let before = state(&c, &x.id);
    assert_ne!(before, State::Left);

    // M says X left, sealing the record with its own key, or with none.
    let by_m = sealed_by(&m, record(x.id, 5_000, true, &[]));
    receive(&gate, &mut c, m.id, &frame(vec![by_m]), t0);
    assert_eq!(state(&c, &x.id), before, "a left record of X sealed by M");
    let unsealed = record(x.id, 6_000, true, &[]);
    receive(&gate, &mut c, n.id, &frame(vec![unsealed]), t0);
    assert_eq!(state(&c, &x.id), before, "an unsealed left record of X");

    // N puts a record of this device at the last incarnation: no refutation is owed,
    // and this device can go on refuting what is owed.
    let mut top = record(me.id, u64::MAX, true, &[]);
    top.seal = sealed_by(&n, top.clone()).seal;
    top.seal[..32].copy_from_slice(&me.public_key());
    receive(&gate, &mut c, n.id, &frame(vec![top]), t0);
    assert_eq!(c.incarnation(), 1_000);

    let stats = gate.stats();
    assert_eq!(stats.verified, 0, "{stats:?}");
    assert_eq!(stats.refused + stats.unchecked, 3, "{stats:?}");
}

#[test]
fn records_sealed_by_their_origin_are_taken_from_any_member() {
    let (me, x, m) = (id("me"), id("x"), id("m"));
    let t0 = Instant::now();
    let mut c = core(&me, &[x.id, m.id], t0);
    let gate = RecordGate::default();
    assert_ne!(state(&c, &x.id), State::Left);

    // X's own left record, passed on by M, with an event beside it.
    let left = sealed_by(&x, record(x.id, 5_000, true, &[]));
    receive(&gate, &mut c, m.id, &frame(vec![left]), t0);
    assert_eq!(state(&c, &x.id), State::Left);

    // A record of this device from an earlier run, passed on by M: refuted above it.
    let earlier = sealed_by(&me, record(me.id, 7_000, false, &[m.id]));
    receive(&gate, &mut c, m.id, &frame(vec![earlier]), t0);
    assert_eq!(c.incarnation(), 7_001);
    assert_eq!(gate.stats().verified, 2);
}

#[test]
fn a_bad_record_drops_only_itself_from_its_message() {
    let (x, m) = (id("x"), id("m"));
    let gate = RecordGate::default();
    let now = Instant::now();
    let good = sealed_by(&x, record(x.id, 1, false, &[m.id]));
    let bad = sealed_by(&m, record(x.id, 2, true, &[]));
    let event = Item::Event(membership::Event {
        id: membership::EventId {
            origin: x.id,
            seq: 1,
        },
        lamport: 1,
        payload: b"hello".to_vec(),
    });
    let mut msg = Message::Gossip {
        items: vec![Item::Record(good.clone()), Item::Record(bad), event.clone()],
    };
    gate.admit(m.id, &mut msg, now);
    assert_eq!(
        msg,
        Message::Gossip {
            items: vec![Item::Record(good), event]
        }
    );
}

#[test]
fn records_of_devices_outside_the_mesh_cost_no_verification() {
    let (x, m) = (id("x"), id("m"));
    let gate = RecordGate::default();
    let now = Instant::now();
    // Sealed by their own (made-up) keys: each would pass its check.
    let strangers: Vec<_> = (0..3)
        .map(|i| {
            let s = id(&format!("s{i}"));
            sealed_by(&s, record(s.id, 1, false, &[]))
        })
        .collect();
    let member = sealed_by(&x, record(x.id, 1, false, &[]));
    let mut all = strangers.clone();
    all.push(member.clone());
    let msg = gate
        .take_frame(m.id, &frame(all), now, |o| *o == x.id)
        .unwrap();
    assert_eq!(
        msg,
        Message::Gossip {
            items: vec![Item::Record(member)]
        }
    );
    let s = gate.stats();
    assert_eq!((s.verified, s.unchecked, s.refused), (1, 3, 0), "{s:?}");
}

#[test]
fn a_record_heard_again_is_not_verified_again() {
    let (x, a, b) = (id("x"), id("a"), id("b"));
    let gate = RecordGate::default();
    let now = Instant::now();
    let rec = sealed_by(&x, record(x.id, 1, false, &[a.id]));
    for from in [a.id, b.id, a.id] {
        let mut msg = Message::Gossip {
            items: vec![Item::Record(rec.clone())],
        };
        gate.admit(from, &mut msg, now);
        assert_eq!(msg.kind(), "gossip");
        assert!(matches!(&msg, Message::Gossip { items } if items.len() == 1));
    }
    let s = gate.stats();
    assert_eq!((s.verified, s.known), (1, 2), "{s:?}");
    // The same statement with another seal is not the same record.
    let mut other = rec.clone();
    other.seal[40] ^= 1;
    let mut msg = Message::Gossip {
        items: vec![Item::Record(other)],
    };
    gate.admit(b.id, &mut msg, now);
    assert!(matches!(&msg, Message::Gossip { items } if items.is_empty()));
    assert_eq!(gate.stats().refused, 1);
}

#[test]
fn a_member_that_sent_a_bad_seal_is_not_heard_for_a_while() {
    let (x, m) = (id("x"), id("m"));
    let gate = RecordGate::default();
    let t0 = Instant::now();
    let take = |rec: &Record<DeviceId>, now: Instant| {
        let mut msg = Message::Gossip {
            items: vec![Item::Record(rec.clone())],
        };
        gate.admit(m.id, &mut msg, now);
        matches!(&msg, Message::Gossip { items } if items.len() == 1)
    };
    assert!(!take(&sealed_by(&m, record(x.id, 1, true, &[])), t0));
    let genuine = sealed_by(&x, record(x.id, 2, false, &[]));
    assert!(!take(&genuine, t0 + BLOCK - Duration::from_millis(1)));
    assert_eq!(gate.stats().unchecked, 1);
    assert!(take(&genuine, t0 + BLOCK));
}

#[test]
fn what_a_member_can_make_this_device_verify_is_bounded() {
    let (x, m) = (id("x"), id("m"));
    let gate = RecordGate::default();
    let t0 = Instant::now();
    // Distinct genuine records (versions of X), as a member replaying them might send.
    let recs: Vec<Record<DeviceId>> = (0..(BURST + RATE + 1) as u64)
        .map(|v| {
            let mut r = record(x.id, 1, false, &[]);
            r.version = v;
            sealed_by(&x, r)
        })
        .collect();
    let mut msg = Message::Gossip {
        items: recs[..BURST as usize + 1]
            .iter()
            .cloned()
            .map(Item::Record)
            .collect(),
    };
    gate.admit(m.id, &mut msg, t0);
    let s = gate.stats();
    assert_eq!((s.verified, s.unchecked), (BURST as u64, 1), "{s:?}");
    // A second later, RATE more.
    let mut msg = Message::Gossip {
        items: recs[BURST as usize..]
            .iter()
            .cloned()
            .map(Item::Record)
            .collect(),
    };
    gate.admit(m.id, &mut msg, t0 + Duration::from_secs(1));
    let s = gate.stats();
    assert_eq!(s.verified, (BURST + RATE) as u64, "{s:?}");
    assert_eq!(s.unchecked, 2, "{s:?}");
}

#[test]
fn own_records_are_sealed_on_their_way_out_and_others_left_as_they_are() {
    let (me, x) = (id("me"), id("x"));
    let gate = RecordGate::default();
    let theirs = sealed_by(&x, record(x.id, 1, false, &[]));
    let mut msg = Message::Gossip {
        items: vec![
            Item::Record(record(me.id, 3, false, &[x.id])),
            Item::Record(theirs.clone()),
        ],
    };
    gate.seal_outgoing(&me, &mut msg);
    let Message::Gossip { items } = &msg else {
        unreachable!()
    };
    let Item::Record(ours) = &items[0] else {
        unreachable!()
    };
    assert_eq!(record_seal::check(ours), Ok(()));
    assert_eq!(items[1], Item::Record(theirs));
    // Sealed once: the same statement again takes the remembered seal.
    let mut again = Message::Gossip {
        items: vec![Item::Record(record(me.id, 3, false, &[x.id]))],
    };
    gate.seal_outgoing(&me, &mut again);
    assert_eq!(
        again,
        Message::Gossip {
            items: items[..1].to_vec()
        }
    );
    // What goes out is what the receiving gate takes.
    let other = RecordGate::default();
    let taken = other
        .take_frame(me.id, &msg.encode(), Instant::now(), |_| true)
        .unwrap();
    assert_eq!(taken, msg);
}
