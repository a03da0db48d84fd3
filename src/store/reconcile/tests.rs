use super::*;
use proptest::prelude::*;
use std::collections::BTreeSet;

fn encoded_len<T: Serialize>(v: &T) -> usize {
    bincode::serde::encode_to_vec(v, bincode::config::standard())
        .unwrap()
        .len()
        + 4
}

/// Runs a whole session; returns the positions sent, rounds and bytes both ways.
fn run(responder: &MemSet, initiator: &MemSet) -> (BTreeSet<u64>, u32, usize) {
    let (mut r, mut msg) = Responder::start(responder).unwrap();
    // Exactly the responder's size: an honest session stays within the bounds it sets.
    let mut i = Initiator::new(responder.0.len() as u64);
    let mut sent = BTreeSet::new();
    let mut bytes = 0;
    loop {
        bytes += encoded_len(&msg);
        let reply = i.on_msg(initiator, msg).unwrap().unwrap();
        bytes += encoded_len(&reply);
        let step = r.on_reply(responder, reply).unwrap().unwrap();
        sent.extend(step.send);
        match step.msg {
            Some(m) => msg = m,
            None => break,
        }
    }
    assert!(i.done(), "initiator still waits for ranges");
    (sent, r.rounds(), bytes)
}

/// The positions the initiator must receive: items it lacks or holds differently.
fn lacking(responder: &MemSet, initiator: &MemSet) -> BTreeSet<u64> {
    responder
        .0
        .keys()
        .filter(|k| !initiator.0.contains_key(k))
        .map(|(p, _)| *p)
        .collect()
}

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[test]
fn range_bounds() {
    assert_eq!(Range::ROOT.lo(), 0);
    assert_eq!(Range::ROOT.hi(), u64::MAX);
    let kids: Vec<Range> = Range::ROOT.children().collect();
    assert_eq!(kids[0].lo(), 0);
    assert_eq!(kids[0].hi(), (1 << 60) - 1);
    assert_eq!(kids[15].hi(), u64::MAX);
    let leaf = Range {
        level: MAX_LEVEL,
        prefix: 42,
    };
    assert!(leaf.valid() && leaf.contains(42) && !leaf.contains(43));
    assert!(!Range {
        level: 1,
        prefix: 16
    }
    .valid());
}

#[test]
fn equal_sets_cost_one_round() {
    let mut a = MemSet::default();
    for k in 0..10_000u64 {
        a.insert(mix(k), u128::from(mix(k + 1)));
    }
    let (sent, rounds, bytes) = run(&a, &a.clone());
    assert!(sent.is_empty());
    assert_eq!(rounds, 1);
    assert!(bytes < 512, "{bytes} bytes");
}

#[test]
fn one_difference_among_many_is_cheap() {
    let mut a = MemSet::default();
    for k in 0..200_000u64 {
        a.insert(mix(k), u128::from(mix(k + 1)));
    }
    let mut b = a.clone();
    b.0.remove(&(mix(77), u128::from(mix(78))));
    b.insert(mix(77), 5);
    let (sent, rounds, bytes) = run(&a, &b);
    assert_eq!(sent, BTreeSet::from([mix(77)]));
    assert!(rounds <= 6, "{rounds} rounds");
    assert!(bytes < 8 * 1024, "{bytes} bytes");
}

#[test]
fn positions_shared_by_two_keys_are_handled() {
    let mut a = MemSet::default();
    let mut b = MemSet::default();
    for d in 0..40u128 {
        a.insert(7, d);
        if d % 3 != 0 {
            b.insert(7, d);
        }
    }
    let (sent, _, _) = run(&a, &b);
    assert_eq!(sent, BTreeSet::from([7]));
}

#[test]
fn bad_replies_are_refused() {
    let mut a = MemSet::default();
    for k in 0..1000u64 {
        a.insert(mix(k), 1);
    }
    let (mut r, msg) = Responder::start(&a).unwrap();
    let offered: Vec<Range> = msg.splits[0]
        .parent
        .children()
        .zip(&msg.splits[0].children)
        .filter(|(_, c)| matches!(c, Child::Fp(_)))
        .map(|(r, _)| r)
        .collect();
    assert!(!offered.is_empty());
    let never = Range {
        level: 3,
        prefix: 1,
    };
    let bad = ReconReply {
        split: vec![never],
        want: vec![],
    };
    assert!(r.on_reply(&a, bad).unwrap().is_err());
    let (mut r, _) = Responder::start(&a).unwrap();
    let bad = ReconReply {
        split: vec![],
        want: vec![12345],
    };
    assert!(r.on_reply(&a, bad).unwrap().is_err());
    // Asking twice for the same range is refused too.
    let (mut r, _) = Responder::start(&a).unwrap();
    let twice = ReconReply {
        split: vec![offered[0], offered[0]],
        want: vec![],
    };
    assert!(r.on_reply(&a, twice).unwrap().is_err());
}

#[test]
fn bad_messages_are_refused() {
    let a = MemSet::default();
    let mut i = Initiator::new(u64::MAX);
    let unasked = ReconMsg {
        splits: vec![Split {
            parent: Range {
                level: 2,
                prefix: 3,
            },
            children: vec![Child::Items(vec![]); FANOUT],
        }],
    };
    assert!(i.on_msg(&a, unasked).unwrap().is_err());
    let mut i = Initiator::new(u64::MAX);
    let short = ReconMsg {
        splits: vec![Split {
            parent: Range::ROOT,
            children: vec![Child::Items(vec![])],
        }],
    };
    assert!(i.on_msg(&a, short).unwrap().is_err());
    let mut i = Initiator::new(u64::MAX);
    let mut children = vec![Child::Items(vec![]); FANOUT];
    children[0] = Child::Items(vec![(u64::MAX, [0; 8])]); // not in child 0
    let outside = ReconMsg {
        splits: vec![Split {
            parent: Range::ROOT,
            children,
        }],
    };
    assert!(i.on_msg(&a, outside).unwrap().is_err());
}

/// A split of `parent` by a responder that makes up its fingerprints: every child that
/// may be a fingerprint is one (of 17 items, more than a leaf lists), the others are empty.
fn made_up(parent: Range) -> Split {
    let children = parent
        .children()
        .map(|c| match c.level {
            MAX_LEVEL => Child::Items(vec![]),
            _ => Child::Fp(Fp {
                count: LEAF_ITEMS + 1,
                hash: [7; 8],
            }),
        })
        .collect();
    Split { parent, children }
}

/// The bound [`Initiator::new`] sets on ranges asked for at once.
fn max_open(max_items: u64) -> usize {
    (max_items / (LEAF_ITEMS + 1)) as usize
}

#[test]
fn made_up_fingerprints_cannot_grow_what_the_initiator_asks_for() {
    // The responder answers every range asked for, as many as a message holds, each with
    // 16 made-up fingerprints: without a bound, each message adds 3,840 ranges to ask for.
    let max_items = 10_000;
    let mut i = Initiator::new(max_items);
    let mut asked = VecDeque::from([Range::ROOT]);
    for _ in 0..100 {
        let n = asked.len().min(MAX_SPLITS_PER_MSG);
        let splits = asked.drain(..n).map(made_up).collect();
        match i.on_msg(&MemSet::default(), ReconMsg { splits }).unwrap() {
            Ok(reply) => asked.extend(reply.split),
            Err(ReconError::Protocol(e)) => {
                assert!(e.contains("at once"), "{e}");
                assert!(i.open() <= max_open(max_items));
                return;
            }
        }
        assert!(i.open() <= max_open(max_items));
    }
    panic!("still asking for {} ranges after 100 messages", i.open());
}

#[test]
fn made_up_fingerprints_cannot_keep_a_session_going() {
    // The responder answers one range a message, the deepest first: what is asked for at
    // once stays small (16 per level), but the tree of made-up ranges has 16^15 leaves.
    let max_items = 10_000;
    let mut i = Initiator::new(max_items);
    let mut asked = vec![Range::ROOT];
    for _ in 0..20_000 {
        let parent = asked.pop().expect("the made-up tree never ends");
        let msg = ReconMsg {
            splits: vec![made_up(parent)],
        };
        match i.on_msg(&MemSet::default(), msg).unwrap() {
            Ok(reply) => asked.extend(reply.split),
            Err(ReconError::Protocol(e)) => {
                assert!(e.contains("in one session"), "{e}");
                return;
            }
        }
        assert!(i.open() <= max_open(max_items));
    }
    panic!("still going after 20,000 messages");
}

/// An [`ItemSet`] that counts its item look-ups.
struct Counted(MemSet, std::cell::Cell<usize>);

impl ItemSet for Counted {
    type Error = std::convert::Infallible;
    fn sum(&self, range: Range) -> Result<Sum, Self::Error> {
        self.0.sum(range)
    }
    fn items(&self, range: Range, limit: usize) -> Result<Vec<(u64, u128)>, Self::Error> {
        self.1.set(self.1.get() + 1);
        self.0.items(range, limit)
    }
}

#[test]
fn a_long_list_at_one_position_costs_one_look_up() {
    // A one-position range may list any number of items (keys whose positions collide);
    // a responder that repeats one the initiator holds costs it one look-up, not one each.
    let (pos, digest) = (0x0123_4567_89ab_cdef_u64, 42u128);
    let mut held = MemSet::default();
    held.insert(pos, digest);
    let set = Counted(held, Default::default());
    let mut i = Initiator::new(u64::MAX);
    let mut parent = Range::ROOT;
    // Made-up fingerprints down to the one-position range of `pos`.
    while parent.level < MAX_LEVEL - 1 {
        let reply = i.on_msg(
            &set,
            ReconMsg {
                splits: vec![made_up(parent)],
            },
        );
        let next = Range {
            level: parent.level + 1,
            prefix: pos >> (64 - 4 * u32::from(parent.level + 1)),
        };
        assert!(reply.unwrap().unwrap().split.contains(&next));
        parent = next;
    }
    let mut children = vec![Child::Items(vec![]); FANOUT];
    children[(pos & 0xf) as usize] = Child::Items(vec![(pos, fold(digest)); 10_000]);
    set.1.set(0);
    let reply = i
        .on_msg(
            &set,
            ReconMsg {
                splits: vec![Split { parent, children }],
            },
        )
        .unwrap()
        .unwrap();
    assert!(reply.want.is_empty(), "the item is held");
    assert_eq!(set.1.get(), 1);
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// Two random sets with overlapping content: the initiator receives exactly what it
    /// lacks, within the round bound, with bytes bounded by the differences.
    #[test]
    fn random_sets_reconcile(
        shared in 0usize..3000,
        only_r in 0usize..60,
        only_i in 0usize..60,
        changed in 0usize..60,
        seed in any::<u64>(),
    ) {
        let mut r = MemSet::default();
        let mut i = MemSet::default();
        let mut n = seed;
        let mut next = || { n = mix(n); n };
        for _ in 0..shared {
            let (p, d) = (next(), u128::from(next()));
            r.insert(p, d);
            i.insert(p, d);
        }
        for _ in 0..only_r { r.insert(next(), u128::from(next())); }
        for _ in 0..only_i { i.insert(next(), u128::from(next())); }
        for _ in 0..changed {
            let p = next();
            r.insert(p, 1);
            i.insert(p, 2);
        }
        let (sent, rounds, bytes) = run(&r, &i);
        prop_assert_eq!(&sent, &lacking(&r, &i));
        prop_assert!(rounds <= u32::from(MAX_LEVEL) + 1);
        let d = only_r + only_i + changed;
        // Each difference costs at most one path of expanded ranges (16 children of
        // at most ~19 bytes per level; with at most ~3,200 items a range holds at most
        // 16 items by level 3, so 4 levels is a safe bound) plus a leaf of 16 items, in
        // each direction (the responder's split and the initiator's answer to it).
        prop_assert!(bytes <= 512 + d * 2 * (4 * 16 * 19 + 16 * 19), "{} bytes for {} differences", bytes, d);
        // After receiving what it lacks the initiator holds the responder's items.
        let mut merged = i.clone();
        for (k, _) in r.0.iter() {
            if sent.contains(&k.0) { merged.0.insert(*k, ()); }
        }
        prop_assert!(lacking(&r, &merged).is_empty());
    }

    #[test]
    fn initiator_survives_arbitrary_messages(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Ok((msg, _)) = bincode::serde::decode_from_slice::<ReconMsg, _>(&bytes, bincode::config::standard().with_limit::<4096>()) {
            let mut i = Initiator::new(u64::MAX);
            let _ = i.on_msg(&MemSet::default(), msg);
        }
    }
}
