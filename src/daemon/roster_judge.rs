//! Who is a member, judged from everything the roster holds: a pure function of the
//! sets of support edges ("S signed an entry for X", "S vouched for X") and removal edges
//! ("S removed X"), so the order in which gossip delivered them cannot matter.
//!
//! Each device gets one of three labels, as the least fixed point of these rules (the
//! grounded labelling of an argumentation framework, with support):
//! - this device is `In`;
//! - X is `Out` when a device labelled `In` removed it, when it removed itself, when
//!   every device that supports it is `Out` (or nothing supports it), or when no chain
//!   of support from this device through devices not `Out` reaches it (a cycle of
//!   devices that only sign for each other);
//! - X is `In` when some `In` device supports it and every device that removed it is
//!   `Out`;
//! - what no rule decides is `Undecided`: two members that removed each other (or a
//!   cycle of removals, or a device that depends on such a member). The roster trusts
//!   neither side until the person decides on this device (a removal signed here is by an
//!   `In` device, so it settles the cycle).
//!
//! Labels only ever go from `Undecided` to a decision while iterating, and each rule looks
//! only at decided labels, so the result is the same whatever order the devices are
//! visited in.

use std::collections::{BTreeMap, BTreeSet};

use transport::DeviceId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    In,
    Out,
    Undecided,
}

/// The edges to judge.
#[derive(Debug, Default)]
pub struct Graph {
    /// Device → the devices that support it (signed an entry for it, or vouched for it).
    pub support: BTreeMap<DeviceId, BTreeSet<DeviceId>>,
    /// Device → the devices that removed it.
    pub removed_by: BTreeMap<DeviceId, BTreeSet<DeviceId>>,
}

impl Graph {
    pub fn support(&mut self, by: DeviceId, of: DeviceId) {
        self.support.entry(of).or_default().insert(by);
    }

    pub fn remove(&mut self, by: DeviceId, of: DeviceId) {
        self.removed_by.entry(of).or_default().insert(by);
    }

    /// Labels every device the graph names, as seen from `root` (always `In`).
    pub fn judge(&self, root: DeviceId) -> BTreeMap<DeviceId, Label> {
        let mut label: BTreeMap<DeviceId, Label> = BTreeMap::new();
        let all = self
            .support
            .iter()
            .chain(&self.removed_by)
            .flat_map(|(x, by)| std::iter::once(x).chain(by));
        for id in all {
            label.insert(*id, Label::Undecided);
        }
        label.insert(root, Label::In);
        let none = BTreeSet::new();
        loop {
            let mut changed = false;
            let ids: Vec<DeviceId> = label
                .iter()
                .filter(|(_, l)| **l == Label::Undecided)
                .map(|(id, _)| *id)
                .collect();
            for x in ids {
                let is = |id: &DeviceId, want: Label| label.get(id) == Some(&want);
                let removers = self.removed_by.get(&x).unwrap_or(&none);
                let supporters = self.support.get(&x).unwrap_or(&none);
                let next = if removers.contains(&x) || removers.iter().any(|r| is(r, Label::In)) {
                    Label::Out
                } else if supporters.iter().all(|s| is(s, Label::Out)) {
                    Label::Out
                } else if removers.iter().all(|r| is(r, Label::Out))
                    && supporters.iter().any(|s| is(s, Label::In))
                {
                    Label::In
                } else {
                    continue;
                };
                label.insert(x, next);
                changed = true;
            }
            if !changed {
                // Support must be founded on the root: what no chain of support through
                // devices not `Out` reaches is `Out`.
                let reached = self.reached(root, &label);
                for (id, l) in label.iter_mut() {
                    if *l == Label::Undecided && !reached.contains(id) {
                        *l = Label::Out;
                        changed = true;
                    }
                }
                if !changed {
                    return label;
                }
            }
        }
    }
}

impl Graph {
    fn reached(&self, root: DeviceId, label: &BTreeMap<DeviceId, Label>) -> BTreeSet<DeviceId> {
        let mut supports: BTreeMap<DeviceId, Vec<DeviceId>> = BTreeMap::new();
        for (of, by) in &self.support {
            for b in by {
                supports.entry(*b).or_default().push(*of);
            }
        }
        let mut seen = BTreeSet::from([root]);
        let mut todo = vec![root];
        while let Some(x) = todo.pop() {
            for y in supports.get(&x).into_iter().flatten() {
                if label.get(y) != Some(&Label::Out) && seen.insert(*y) {
                    todo.push(*y);
                }
            }
        }
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> DeviceId {
        DeviceId([n; 32])
    }

    /// Every insertion order of `edges` (support when the flag is true) gives `want`.
    fn same_in_any_order(edges: &[(bool, u8, u8)], want: &[(u8, Label)]) {
        let n = edges.len();
        let mut order: Vec<usize> = (0..n).collect();
        // Heap's algorithm over all permutations (small inputs only).
        let mut c = vec![0; n];
        let check = |order: &[usize]| {
            let mut g = Graph::default();
            for &i in order {
                let (sup, by, of) = edges[i];
                if sup {
                    g.support(id(by), id(of));
                } else {
                    g.remove(id(by), id(of));
                }
            }
            let l = g.judge(id(0));
            for (d, w) in want {
                assert_eq!(l.get(&id(*d)), Some(w), "device {d} in order {order:?}");
            }
        };
        check(&order);
        let mut i = 0;
        while i < n {
            if c[i] < i {
                if i % 2 == 0 {
                    order.swap(0, i);
                } else {
                    order.swap(c[i], i);
                }
                check(&order);
                c[i] += 1;
                i = 0;
            } else {
                c[i] = 0;
                i += 1;
            }
        }
    }

    #[test]
    fn members_chain_from_the_root() {
        // 0 signed 1, 1 signed 2; 3 is signed only by a stranger (9, unsupported).
        same_in_any_order(
            &[(true, 0, 1), (true, 1, 2), (true, 9, 3)],
            &[
                (1, Label::In),
                (2, Label::In),
                (3, Label::Out),
                (9, Label::Out),
            ],
        );
    }

    #[test]
    fn a_cycle_of_devices_signing_for_each_other_needs_a_chain_from_the_root() {
        // 1 and 2 signed each other, and only the removed 3 signed 1.
        same_in_any_order(
            &[
                (true, 0, 3),
                (true, 3, 1),
                (true, 1, 2),
                (true, 2, 1),
                (false, 0, 3),
            ],
            &[(1, Label::Out), (2, Label::Out), (3, Label::Out)],
        );
        same_in_any_order(
            &[(true, 0, 3), (true, 3, 1), (true, 1, 2), (true, 2, 1)],
            &[(1, Label::In), (2, Label::In), (3, Label::In)],
        );
    }

    #[test]
    fn a_removal_by_a_removed_device_is_void() {
        // H (1) removed R (2); R removed O's other member L (3). L stays.
        same_in_any_order(
            &[
                (true, 0, 1),
                (true, 1, 2),
                (true, 1, 3),
                (false, 1, 2),
                (false, 2, 3),
            ],
            &[(1, Label::In), (2, Label::Out), (3, Label::In)],
        );
    }

    #[test]
    fn two_members_that_removed_each_other_are_both_refused_until_the_root_decides() {
        // The laptop O (0) knows the desktop H (1) and the phone R (2); H removed R
        // while O slept, R removed H.
        let base = [
            (true, 0, 1),
            (true, 1, 0),
            (true, 1, 2),
            (false, 1, 2),
            (false, 2, 1),
        ];
        same_in_any_order(&base, &[(1, Label::Undecided), (2, Label::Undecided)]);
        // The person removes R on O: H is trusted again.
        let mut decided = base.to_vec();
        decided.push((false, 0, 2));
        same_in_any_order(&decided, &[(1, Label::In), (2, Label::Out)]);
    }

    #[test]
    fn a_puppet_of_a_removed_device_cannot_remove_for_it() {
        // R (2) signed a puppet P (4); H (1) removed R; P removed H. No capture: undecided.
        same_in_any_order(
            &[
                (true, 0, 1),
                (true, 1, 2),
                (true, 2, 4),
                (false, 1, 2),
                (false, 4, 1),
            ],
            &[
                (1, Label::Undecided),
                (2, Label::Undecided),
                (4, Label::Undecided),
            ],
        );
        // Without the puppet's removal, P falls with R.
        same_in_any_order(
            &[(true, 0, 1), (true, 1, 2), (true, 2, 4), (false, 1, 2)],
            &[(1, Label::In), (2, Label::Out), (4, Label::Out)],
        );
    }

    #[test]
    fn the_root_is_never_removed_and_self_removal_holds() {
        same_in_any_order(
            &[(true, 0, 1), (false, 1, 0), (true, 0, 2), (false, 2, 2)],
            &[(0, Label::In), (1, Label::In), (2, Label::Out)],
        );
    }
}
