//! Tests of the roster merge.
use super::*;
use transport::Identity;

fn dev(name: &str) -> Identity {
    Identity::generate(name).unwrap()
}

fn roster(me: &Identity) -> MeshRoster {
    MeshRoster::empty(me.id, PathBuf::from("/nonexistent/roster.json"))
}

#[test]
fn entries_chain_from_a_trusted_signer_in_any_order() {
    let (a, b, c, d) = (dev("a"), dev("b"), dev("c"), dev("d"));
    // A trusts B; B added C; C added D: delivered to A in reverse order, one batch.
    let mut ra = roster(&a);
    ra.merge(RosterSnapshot {
        members: vec![MemberEntry::sign(&a, b.id, "b", 1)],
        removals: vec![],
    });
    let ch = ra.merge(RosterSnapshot {
        members: vec![
            MemberEntry::sign(&c, d.id, "d", 3),
            MemberEntry::sign(&b, c.id, "c", 2),
        ],
        removals: vec![],
    });
    assert_eq!(ch.joined.len(), 2);
    assert!(ra.is_member(&c.id) && ra.is_member(&d.id));
}

#[test]
fn a_newcomer_learns_every_member_from_the_signatures_a_member_holds() {
    // B's roster after the mesh settled: A's newest entry is the one C signed, C's the
    // one A signed, but B's own older signatures for both are still held. D trusts only
    // B: it learns A and C through them.
    let (a, b, c, d) = (dev("a"), dev("b"), dev("c"), dev("d"));
    let mut rb = roster(&b);
    rb.merge(RosterSnapshot {
        members: vec![
            MemberEntry::sign(&b, a.id, "a", 1),
            MemberEntry::sign(&b, c.id, "c", 2),
            MemberEntry::sign(&c, a.id, "a", 5),
            MemberEntry::sign(&a, c.id, "c", 4),
            MemberEntry::sign(&b, d.id, "d", 6),
        ],
        removals: vec![],
    });
    assert_eq!(
        rb.member(&a.id).unwrap().signer_id(),
        c.id,
        "newest names it"
    );
    let mut rd = roster(&d);
    rd.merge(RosterSnapshot {
        members: vec![MemberEntry::sign(&d, b.id, "b", 6)],
        removals: vec![],
    });
    let ch = rd.merge(rb.snapshot());
    assert_eq!(ch.joined.len(), 2);
    assert!(rd.is_member(&a.id) && rd.is_member(&c.id));
    // Entries that chain only through each other (no signature by anyone D trusts)
    // make nobody a member.
    let (x, y) = (dev("x"), dev("y"));
    let ch = rd.merge(RosterSnapshot {
        members: vec![
            MemberEntry::sign(&x, y.id, "y", 1),
            MemberEntry::sign(&y, x.id, "x", 1),
        ],
        removals: vec![],
    });
    assert!(ch.joined.is_empty() && !rd.is_member(&x.id));
}

#[test]
fn strangers_forged_and_oversized_gossip_are_refused() {
    let (a, b, x) = (dev("a"), dev("b"), dev("x"));
    let mut ra = roster(&a);
    // Signed by a device nobody trusts.
    let ch = ra.merge(RosterSnapshot {
        members: vec![
            MemberEntry::sign(&x, x.id, "x", 1),
            MemberEntry::sign(&x, b.id, "b", 1),
        ],
        removals: vec![Removal::sign(&x, b.id, 1)],
    });
    assert!(ch.is_empty());
    // Tampered name under a valid signature.
    ra.merge(RosterSnapshot {
        members: vec![MemberEntry::sign(&a, b.id, "b", 1)],
        removals: vec![],
    });
    let mut forged = MemberEntry::sign(&a, x.id, "x", 2);
    forged.name = "evil".into();
    assert!(ra
        .merge(RosterSnapshot {
            members: vec![forged],
            removals: vec![]
        })
        .is_empty());
    // Signer key that does not match: claims to be B but key is X's.
    let mut forged = MemberEntry::sign(&x, x.id, "x", 2);
    forged.signer = b.public_key();
    assert!(ra
        .merge(RosterSnapshot {
            members: vec![forged],
            removals: vec![]
        })
        .is_empty());
    // Too many entries: refused whole.
    let many = RosterSnapshot {
        members: vec![MemberEntry::sign(&a, x.id, "x", 1); MAX_MEMBERS * MAX_SIGNERS + 1],
        removals: vec![],
    };
    assert!(ra.merge(many).is_empty());
    assert!(!ra.is_member(&x.id));
}

#[test]
fn removal_is_final_and_beats_readding() {
    let (a, b, c) = (dev("a"), dev("b"), dev("c"));
    let mut ra = roster(&a);
    ra.merge(RosterSnapshot {
        members: vec![
            MemberEntry::sign(&a, b.id, "b", 1),
            MemberEntry::sign(&a, c.id, "c", 1),
        ],
        removals: vec![],
    });
    let ch = ra.merge(RosterSnapshot {
        members: vec![],
        removals: vec![Removal::sign(&b, c.id, 5)],
    });
    assert_eq!(ch.removed, vec![(c.id, "c".to_string())]);
    assert!(!ra.is_member(&c.id));
    // C re-adds itself, B re-adds C with a later version: still removed.
    let ch = ra.merge(RosterSnapshot {
        members: vec![
            MemberEntry::sign(&c, c.id, "c", 9),
            MemberEntry::sign(&b, c.id, "c", 9),
        ],
        removals: vec![],
    });
    assert!(ch.is_empty());
    assert!(ra.is_removed(&c.id) && !ra.is_member(&c.id));
    // A removed member can no longer vouch for anyone.
    let d = dev("d");
    assert!(ra
        .merge(RosterSnapshot {
            members: vec![MemberEntry::sign(&c, d.id, "d", 9)],
            removals: vec![]
        })
        .is_empty());
}

#[test]
fn merge_is_order_independent() {
    let (a, b, c, d) = (dev("a"), dev("b"), dev("c"), dev("d"));
    let parts = [
        RosterSnapshot {
            members: vec![MemberEntry::sign(&a, b.id, "b", 1)],
            removals: vec![],
        },
        RosterSnapshot {
            members: vec![MemberEntry::sign(&b, c.id, "c", 2)],
            removals: vec![],
        },
        RosterSnapshot {
            members: vec![MemberEntry::sign(&b, c.id, "c-2", 3)],
            removals: vec![],
        },
        RosterSnapshot {
            members: vec![MemberEntry::sign(&c, d.id, "d", 4)],
            removals: vec![],
        },
        RosterSnapshot {
            members: vec![],
            removals: vec![Removal::sign(&b, d.id, 5)],
        },
    ];
    let mut results = Vec::new();
    for perm in [
        [0, 1, 2, 3, 4],
        [4, 3, 2, 1, 0],
        [2, 0, 4, 1, 3],
        [1, 3, 0, 4, 2],
    ] {
        let mut r = roster(&a);
        // Deliver repeatedly until stable, as gossip does.
        for _ in 0..5 {
            for i in perm {
                r.merge(parts[i].clone());
            }
        }
        results.push(r.snapshot());
    }
    assert!(results.windows(2).all(|w| w[0] == w[1]));
    let r = &results[0];
    assert_eq!(r.members.iter().find(|m| m.id == c.id).unwrap().name, "c-2");
    assert!(r.removals.iter().any(|x| x.id == d.id));
}

#[test]
fn unique_names_get_a_visible_suffix() {
    let (a, b, c, d) = (dev("a"), dev("b"), dev("c"), dev("d"));
    let mut ra = roster(&a);
    ra.merge(RosterSnapshot {
        members: vec![
            MemberEntry::sign(&a, b.id, "laptop", 1),
            MemberEntry::sign(&a, c.id, "laptop-2", 1),
        ],
        removals: vec![],
    });
    assert_eq!(ra.unique_name("laptop", &d.id, "desk"), "laptop-3");
    assert_eq!(ra.unique_name("LAPTOP", &d.id, "desk"), "LAPTOP-3");
    assert_eq!(ra.unique_name("laptop", &b.id, "desk"), "laptop");
    assert_eq!(ra.unique_name("desk", &d.id, "desk"), "desk-2");
    let long = "x".repeat(64);
    ra.merge(RosterSnapshot {
        members: vec![MemberEntry::sign(&a, c.id, &long, 2)],
        removals: vec![],
    });
    let n = ra.unique_name(&long, &d.id, "desk");
    assert_eq!(n.len(), 64);
    assert!(n.ends_with("-2"));
}

/// Every order of `parts`, each delivered until stable, gives the same judged roster.
fn judged_in_every_order(me: &Identity, parts: &[RosterSnapshot]) -> MeshRoster {
    let n = parts.len();
    let mut orders: Vec<Vec<usize>> = vec![(0..n).collect(), (0..n).rev().collect()];
    for k in 1..n {
        let mut o: Vec<usize> = (0..n).collect();
        o.rotate_left(k);
        orders.push(o);
    }
    let mut seen: Option<(Vec<DeviceId>, Vec<DeviceId>, Vec<DeviceId>)> = None;
    let mut last = None;
    for order in orders {
        let mut r = roster(me);
        for _ in 0..3 {
            for i in &order {
                r.merge(parts[*i].clone());
            }
        }
        let view = (
            r.members().map(|m| m.id).collect(),
            r.removed().map(|x| x.id).collect(),
            r.conflicts().map(|c| c.id).collect(),
        );
        if let Some(s) = &seen {
            assert_eq!(*s, view, "order {order:?}");
        }
        seen = Some(view);
        last = Some(r);
    }
    last.unwrap()
}

/// The fuzzer's finding: with A the receiver, "A removes D1" and "D1 removes D2" used to
/// leave D2 a member in one order and removed in the other.
#[test]
fn a_removal_signed_by_a_removed_device_is_void_in_any_order() {
    let (a, d1, d2) = (dev("a"), dev("d1"), dev("d2"));
    let parts = [
        RosterSnapshot {
            members: vec![
                MemberEntry::sign(&a, d1.id, "d1", 1),
                MemberEntry::sign(&a, d2.id, "d2", 1),
            ],
            removals: vec![],
        },
        RosterSnapshot {
            members: vec![],
            removals: vec![Removal::sign(&a, d1.id, 2)],
        },
        RosterSnapshot {
            members: vec![],
            removals: vec![Removal::sign(&d1, d2.id, 3)],
        },
    ];
    let r = judged_in_every_order(&a, &parts);
    assert!(r.is_removed(&d1.id));
    assert!(r.is_member(&d2.id), "d1's removal of d2 is void");
}

/// Issue scenario: the desktop H removes the phone R while the laptop O sleeps; the
/// thief removes H from R. O, hearing both in any order, trusts neither until it
/// decides; removing R on O settles it.
#[test]
fn two_members_that_removed_each_other_are_refused_until_this_device_decides() {
    let (h, o, r) = (dev("desk"), dev("laptop"), dev("phone"));
    let parts = [
        RosterSnapshot {
            members: vec![
                MemberEntry::sign(&o, h.id, "desk", 1),
                MemberEntry::sign(&h, o.id, "laptop", 1),
                MemberEntry::sign(&h, r.id, "phone", 2),
                MemberEntry::sign(&o, r.id, "phone", 2),
                MemberEntry::sign(&r, h.id, "desk", 3),
            ],
            removals: vec![],
        },
        RosterSnapshot {
            members: vec![],
            removals: vec![Removal::sign(&h, r.id, 10)],
        },
        RosterSnapshot {
            members: vec![],
            removals: vec![Removal::sign(&r, h.id, 5)],
        },
    ];
    let mut ro = judged_in_every_order(&o, &parts);
    assert!(!ro.is_member(&r.id) && !ro.is_member(&h.id));
    let conflicts: Vec<DeviceId> = ro.conflicts().map(|c| c.id).collect();
    assert_eq!(conflicts.len(), 2);
    let c = ro.conflicts().find(|c| c.id == h.id).unwrap();
    assert_eq!(
        (c.removed_by.clone(), c.removes.clone()),
        (vec![r.id], vec![r.id])
    );
    // Only the removal R signed: O follows it (it cannot know better yet), but only
    // while it has not heard H's; once it has, the conflict above.
    let mut early = roster(&o);
    early.merge(parts[0].clone());
    early.merge(parts[2].clone());
    assert!(early.is_removed(&h.id) && early.is_member(&r.id));
    early.merge(parts[1].clone());
    assert!(
        !early.is_member(&r.id),
        "never trusted again once both are heard"
    );
    // The person decides on O: `cnspr remove phone`.
    let ch = ro.merge(RosterSnapshot {
        members: vec![],
        removals: vec![Removal::sign(&o, r.id, 20)],
    });
    assert!(ro.is_member(&h.id) && ro.is_removed(&r.id));
    assert_eq!(ch.joined, vec![(h.id, "desk".to_string())]);
    assert!(ro.conflicts().next().is_none());
}

/// A rename is a newer entry; the change names the old and the new name.
#[test]
fn a_rename_reports_the_old_name() {
    let (a, b) = (dev("a"), dev("b"));
    let mut ra = roster(&a);
    ra.merge(RosterSnapshot {
        members: vec![MemberEntry::sign(&a, b.id, "laptop", 1)],
        removals: vec![],
    });
    let ch = ra.merge(RosterSnapshot {
        members: vec![MemberEntry::sign(&b, b.id, "desk", 2)],
        removals: vec![],
    });
    assert_eq!(ch.renamed, vec![(b.id, "laptop".into(), "desk".into())]);
}

/// Found by the fuzzer: one signer, one version, two names. Either order keeps the same.
#[test]
fn two_names_signed_with_one_version_are_kept_alike_in_any_order() {
    let (a, b) = (dev("a"), dev("b"));
    let parts = [
        RosterSnapshot {
            members: vec![MemberEntry::sign(&a, b.id, "laptop", 7)],
            removals: vec![],
        },
        RosterSnapshot {
            members: vec![MemberEntry::sign(&a, b.id, "LAPTOP", 7)],
            removals: vec![],
        },
    ];
    let r = judged_in_every_order(&a, &parts);
    let mut other = roster(&a);
    other.merge(parts[1].clone());
    other.merge(parts[0].clone());
    assert_eq!(r.snapshot(), other.snapshot());
    assert_eq!(r.member(&b.id).unwrap().name, "laptop");
}

/// Found by the 10-host monitoring test: every member signs every other, so a device
/// held more signatures than the bound and this device's own went first (the oldest);
/// nothing chained back to this device any more and the whole mesh fell out of it.
#[test]
fn this_device_s_own_signature_is_never_crowded_out() {
    let me = dev("me");
    let x = dev("x");
    let others: Vec<Identity> = (0..MAX_SIGNERS + 4)
        .map(|i| dev(&format!("o{i}")))
        .collect();
    let mut r = roster(&me);
    r.merge(RosterSnapshot {
        members: vec![MemberEntry::sign(&me, x.id, "x", 1)],
        removals: vec![],
    });
    // The others are members (signed by x), and each signs x, all newer than ours.
    let mut members: Vec<MemberEntry> = others
        .iter()
        .map(|o| MemberEntry::sign(&x, o.id, &o.name, 2))
        .collect();
    members.extend(
        others
            .iter()
            .enumerate()
            .map(|(i, o)| MemberEntry::sign(o, x.id, "x", 10 + i as u64)),
    );
    r.merge(RosterSnapshot {
        members,
        removals: vec![],
    });
    assert!(r.signed_by(&x.id, &me.id).is_some(), "own signature kept");
    assert_eq!(r.signers(&x.id), MAX_SIGNERS);
    assert!(r.is_member(&x.id));
    assert!(others.iter().all(|o| r.is_member(&o.id)));
}

/// Gossip of a mesh of `n` members that all trust each other, simulated with the
/// daemon's rules (a merge that changes the judged roster floods it to every connected
/// member but the sender; a member that lacks something is answered once per distinct
/// roster and connection): the messages sent until nothing is left to send.
fn gossip_until_quiet(n: usize, seed: u64) -> (usize, Vec<MeshRoster>) {
    use crate::daemon::roster_gossip::answer;
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let ids: Vec<Identity> = (0..n).map(|i| dev(&format!("m{i}"))).collect();
    let mut rs: Vec<MeshRoster> = ids.iter().map(roster).collect();
    let mut version = 1;
    for i in 0..n {
        for j in (0..n).filter(|j| *j != i) {
            let e = MemberEntry::sign(&ids[i], ids[j].id, &format!("m{j}"), version);
            version += 1;
            rs[i].merge(RosterSnapshot {
                members: vec![e],
                removals: vec![],
            });
        }
    }
    // Every connection opens with a greeting both ways.
    let mut queue: Vec<(usize, usize, RosterSnapshot)> = Vec::new();
    for (i, r) in rs.iter().enumerate() {
        for j in (0..n).filter(|j| *j != i) {
            queue.push((i, j, r.snapshot()));
        }
    }
    let mut answered: HashMap<(usize, usize), u64> = HashMap::new();
    let mut sent = queue.len();
    while !queue.is_empty() {
        let (from, to, theirs) = queue.swap_remove(rng.gen_range(0..queue.len()));
        let new = rs[to].unheld(&theirs);
        if !rs[to].merge(new).is_empty() {
            for k in (0..n).filter(|k| *k != to && *k != from) {
                queue.push((to, k, rs[to].snapshot()));
                sent += 1;
            }
        }
        let ours = rs[to].snapshot();
        let last = answered.get(&(to, from)).copied();
        if let Some(print) = answer(&theirs, &ours, ids[from].id, last) {
            answered.insert((to, from), print);
            queue.push((to, from, ours));
            sent += 1;
        }
        assert!(
            sent < 100 * n * n,
            "roster gossip of {n} members does not end"
        );
    }
    (sent, rs)
}

#[test]
fn a_mesh_whose_members_all_trust_each_other_falls_quiet() {
    for n in [10, 20] {
        let (sent, rs) = gossip_until_quiet(n, 7);
        eprintln!("{n} members: {sent} roster messages");
        for r in &rs {
            assert_eq!(r.members().count(), n - 1);
        }
    }
}

/// A device trusted without a name is signed under a placeholder with the placeholder
/// version: it never renames a member another member named, whatever the order.
#[test]
fn a_placeholder_entry_never_renames_a_named_member() {
    use crate::daemon::members::PLACEHOLDER_VERSION;
    let (a, b, x) = (dev("a"), dev("b"), dev("x"));
    let named = MemberEntry::sign(&a, x.id, "laptop", 1_700_000_000_000);
    let placeholder = MemberEntry::sign(&b, x.id, "device-x", PLACEHOLDER_VERSION);
    let trust_a = MemberEntry::sign(&b, a.id, "a", 1_700_000_000_001);
    // B knew the name before it trusted X without one.
    let mut rb = roster(&b);
    rb.merge(RosterSnapshot {
        members: vec![trust_a.clone(), named.clone()],
        removals: vec![],
    });
    let ch = rb.merge(RosterSnapshot {
        members: vec![placeholder.clone()],
        removals: vec![],
    });
    assert!(ch.is_empty(), "{ch:?}");
    assert_eq!(rb.member(&x.id).unwrap().name, "laptop");
    // B trusted X first: the name replaces the placeholder when it arrives, once.
    let mut rb = roster(&b);
    rb.merge(RosterSnapshot {
        members: vec![trust_a, placeholder],
        removals: vec![],
    });
    assert_eq!(rb.member(&x.id).unwrap().name, "device-x");
    let ch = rb.merge(RosterSnapshot {
        members: vec![named],
        removals: vec![],
    });
    assert_eq!(ch.renamed, vec![(x.id, "device-x".into(), "laptop".into())]);
}
