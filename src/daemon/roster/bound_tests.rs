//! Tests of the roster's bounds: a member that signs for made-up devices cannot keep its
//! own removal out, nor the roster off the wire.
use super::bound::HARD_BOUND;
use super::*;
use transport::Identity;

fn dev(name: &str) -> Identity {
    Identity::generate(name).unwrap()
}

fn roster(me: &Identity) -> MeshRoster {
    MeshRoster::empty(me.id, PathBuf::from("/nonexistent/roster.json"))
}

/// A made-up device ID, `n` apart from every other one made here.
fn made_up(tag: u8, n: usize) -> DeviceId {
    let mut id = [tag; 32];
    id[..8].copy_from_slice(&(n as u64).to_be_bytes());
    DeviceId(id)
}

/// What a stolen member `t` sends: entries for `n` made-up devices, removals of half of
/// them, and removals of `n` devices nobody named.
fn filling(t: &Identity, n: usize) -> Vec<RosterSnapshot> {
    let members: Vec<MemberEntry> = (0..n)
        .map(|i| MemberEntry::sign(t, made_up(1, i), &format!("s{i}"), 5))
        .collect();
    let removals: Vec<Removal> = (0..n / 2)
        .map(|i| Removal::sign(t, made_up(1, i), 6))
        .chain((0..n).map(|i| Removal::sign(t, made_up(2, i), 6)))
        .collect();
    // In pieces of the size one mesh frame carries.
    let mut out = Vec::new();
    for chunk in members.chunks(600) {
        out.push(RosterSnapshot {
            members: chunk.to_vec(),
            removals: vec![],
        });
    }
    for chunk in removals.chunks(600) {
        out.push(RosterSnapshot {
            members: vec![],
            removals: chunk.to_vec(),
        });
    }
    out
}

#[test]
fn a_member_that_fills_the_roster_can_still_be_removed_everywhere() {
    let (a, b, t, n) = (dev("a"), dev("b"), dev("thief"), dev("new"));
    // A and B trust each other and T; B hears T's filling first.
    let base = RosterSnapshot {
        members: vec![
            MemberEntry::sign(&a, b.id, "b", 1),
            MemberEntry::sign(&b, a.id, "a", 1),
            MemberEntry::sign(&a, t.id, "thief", 1),
        ],
        removals: vec![],
    };
    let (mut ra, mut rb) = (roster(&a), roster(&b));
    ra.merge(base.clone());
    rb.merge(base);
    for part in filling(&t, 2 * MAX_MEMBERS + 100) {
        rb.merge(part.clone());
        ra.merge(part);
    }
    for r in [&ra, &rb] {
        assert!(r.entries.len() <= HARD_BOUND && r.pool.len() <= HARD_BOUND);
        assert!(r.is_member(&t.id));
    }
    // The filling reached the bounds: before, the removal below was refused here.
    assert!(
        rb.entries.len() >= MAX_MEMBERS && rb.pool.len() >= MAX_MEMBERS,
        "{} {}",
        rb.entries.len(),
        rb.pool.len()
    );
    // The roster still goes out in one frame, and the newest of it.
    let wire = rb.wire_snapshot();
    let frame = transport::frame::encode(
        &crate::daemon::wire::MeshFrame::Roster(wire),
        transport::frame::MAX_CONTROL_FRAME,
    );
    assert!(frame.is_ok(), "{frame:?}");

    // A removes T (and pairs a new device): both hold here, and reach B whole.
    ra.merge(RosterSnapshot {
        members: vec![MemberEntry::sign(&a, n.id, "new", 9)],
        removals: vec![Removal::sign(&a, t.id, 9)],
    });
    assert!(ra.is_removed(&t.id) && ra.is_member(&n.id));
    let ch = rb.merge(ra.wire_snapshot());
    assert!(rb.is_removed(&t.id), "{ch:?}");
    // T's made-up devices are trusted by nobody now: they gave way.
    assert!(rb.entries.len() <= MAX_MEMBERS && rb.pool.len() <= MAX_MEMBERS);
    assert!(!rb.is_member(&made_up(1, 0)) && !rb.is_member(&made_up(1, MAX_MEMBERS)));
    // A new device A signs for is taken (it may have come before the room was made:
    // A's next gossip carries it).
    rb.merge(ra.wire_snapshot());
    assert!(rb.is_member(&n.id) && rb.is_member(&a.id));
    assert!(rb.is_removed(&t.id) && ra.is_removed(&t.id));
}

#[test]
fn a_roster_within_the_bounds_goes_out_whole() {
    let (a, b) = (dev("a"), dev("b"));
    let mut ra = roster(&a);
    ra.merge(RosterSnapshot {
        members: vec![MemberEntry::sign(&a, b.id, "b", 1)],
        removals: vec![Removal::sign(&a, made_up(3, 1), 2)],
    });
    assert_eq!(ra.wire_snapshot(), ra.snapshot());
}
