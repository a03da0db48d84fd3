//! How much the roster holds, and what gives way when a member signs for more than a
//! person's mesh ever has.
//!
//! A person's mesh has a few devices, far below [`MAX_MEMBERS`]; only a member that signs
//! for made-up devices (or removals of them) reaches the bound: a stolen device, until
//! its removal. Were the bound a wall, such a member could fill it and make its own
//! removal impossible everywhere. So:
//!
//! - what this device signs itself is always held (the person's own `trust`, pairing,
//!   `remove`);
//! - a removal of a current member, signed by a member, is always taken: the removal of
//!   the device that filled the bound is one (there are never more such removals held
//!   than members);
//! - past the bound, other entries and removals signed by a member are taken up to twice
//!   the bound, and after each merge what nobody trusted vouches for gives way until the
//!   bound holds again: devices that are neither members nor in a conflict and that this
//!   device never signed for; then removals of devices no held entry names; then
//!   removals that no trusted or undecided device (nor this one) signed.
//!
//! Once the filling member is removed, the devices only it vouched for are trusted by no
//! one, and they give way as soon as the bound is reached again. What gives way is
//! whatever the order of arrival left over the bound: only past the bound does the
//! roster depend on that order.

use transport::DeviceId;

use super::{MemberEntry, MeshRoster, Removal, RosterSnapshot, MAX_MEMBERS};

/// No more devices than this with entries (or with removals), whoever signed.
pub(super) const HARD_BOUND: usize = 2 * MAX_MEMBERS;

impl MeshRoster {
    /// Whether an entry for a device not held yet may be taken.
    pub(super) fn room_for_entry(&self, m: &MemberEntry) -> bool {
        let held = self.entries.len();
        let signer = m.signer_id();
        held < MAX_MEMBERS
            || signer == self.me
            || (held < HARD_BOUND && self.members.contains_key(&signer))
    }

    /// Whether a removal of a device no removal is held for yet may be taken.
    pub(super) fn room_for_removal(&self, r: &Removal) -> bool {
        let held = self.pool.len();
        let signer = r.signer_id();
        let by_member = self.members.contains_key(&signer);
        held < MAX_MEMBERS
            || signer == self.me
            || (by_member && self.members.contains_key(&r.id))
            || (by_member && held < HARD_BOUND)
    }

    /// Over the bound after a merge: lets go of what nobody trusted vouches for (see the
    /// module's text), and judges again if anything went.
    pub(super) fn shed(&mut self) {
        let me = self.me;
        let mut shed = false;
        if self.entries.len() > MAX_MEMBERS {
            let over = self.entries.len() - MAX_MEMBERS;
            let idle: Vec<DeviceId> = self
                .entries
                .iter()
                .filter(|(id, by)| {
                    !self.members.contains_key(id)
                        && !self.conflicts.contains_key(id)
                        && !by.contains_key(&me)
                })
                .map(|(id, _)| *id)
                .take(over)
                .collect();
            for id in &idle {
                self.entries.remove(id);
            }
            shed |= !idle.is_empty();
        }
        if self.pool.len() > MAX_MEMBERS {
            let unnamed = |id: &DeviceId| !self.entries.contains_key(id);
            let void = |by: &std::collections::BTreeMap<DeviceId, Removal>| {
                by.keys().all(|s| {
                    *s != me && !self.members.contains_key(s) && !self.conflicts.contains_key(s)
                })
            };
            let mut over = self.pool.len() - MAX_MEMBERS;
            let mut gone = Vec::new();
            for pass in [0, 1] {
                for (id, by) in &self.pool {
                    if over == 0 {
                        break;
                    }
                    let own = by.contains_key(&me);
                    let drop = !own
                        && if pass == 0 {
                            unnamed(id)
                        } else {
                            !unnamed(id) && void(by)
                        };
                    if drop {
                        gone.push(*id);
                        over -= 1;
                    }
                }
            }
            for id in &gone {
                self.pool.remove(id);
            }
            shed |= !gone.is_empty();
        }
        if shed {
            self.rejudge();
        }
    }
}

/// Room for a roster in one mesh frame, with some to spare for the frame's own fields.
const WIRE_BUDGET: usize = transport::frame::MAX_CONTROL_FRAME - 4096;

/// Encoded length of one item (without a frame's prefix).
fn wire_len<T: serde::Serialize>(item: &T) -> usize {
    transport::frame::encode(item, transport::frame::MAX_FRAME)
        .map_or(usize::MAX, |f| f.len().saturating_sub(4))
}

impl MeshRoster {
    /// What this device gossips: everything held when it fits in a mesh frame (always,
    /// in a person's mesh). Past that, what matters most goes first and the rest is
    /// left out: the removals that hold, what this device signed, the entry that names
    /// each member, then what members signed, then the rest. A member that filled the
    /// roster can thus never keep its own removal, nor the mesh stream, from getting
    /// through (a roster over the frame's size could not be sent at all).
    pub fn wire_snapshot(&self) -> RosterSnapshot {
        let all = self.snapshot();
        if wire_len(&all) <= WIRE_BUDGET {
            return all;
        }
        // Ranks as in the text above: 0 the removals that hold, 1 what this device signed,
        // 2 the entry naming each member, 3 what members signed, 4 the rest.
        let me = self.me;
        let by_signer = |s: DeviceId| match s {
            s if s == me => 1,
            s if self.members.contains_key(&s) => 3,
            _ => 4,
        };
        let held = self.removals.values().map(|r| (0, Part::Removal(r)));
        let pooled = (self.pool.values().flat_map(|by| by.values()))
            .filter(|r| self.removals.get(&r.id) != Some(*r))
            .map(|r| (by_signer(r.signer_id()), Part::Removal(r)));
        let entries = self.entries.values().flat_map(|by| by.values()).map(|e| {
            let rank = match e.signer_id() {
                s if s != me && self.members.get(&e.id) == Some(e) => 2,
                s => by_signer(s),
            };
            (rank, Part::Entry(e))
        });
        let mut parts: Vec<(u8, Part)> = held.chain(pooled).chain(entries).collect();
        // Stable: within a rank, entries before removals, each in the roster's order.
        parts.sort_by_key(|(rank, part)| (*rank, matches!(part, Part::Removal(_))));
        let mut out = RosterSnapshot::default();
        let mut used = 0usize;
        for (_, part) in parts {
            let len = match part {
                Part::Removal(r) => wire_len(r),
                Part::Entry(e) => wire_len(e),
            };
            if used.saturating_add(len) > WIRE_BUDGET {
                continue;
            }
            used += len;
            match part {
                Part::Removal(r) => out.removals.push(r.clone()),
                Part::Entry(e) => out.members.push(e.clone()),
            }
        }
        out
    }
}

/// One item of a roster on its way to the wire.
enum Part<'a> {
    Removal(&'a Removal),
    Entry(&'a MemberEntry),
}
