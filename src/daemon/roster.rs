//! The mesh roster: the member devices with their names, as signed entries that every
//! member keeps (`STATE_DIR/roster.json`) and gossips (see `mesh`).
//!
//! - A [`MemberEntry`] says "device ID is a member, named NAME" and is signed by a
//!   member (its raw Ed25519 key travels with it; the key must hash to the signer's
//!   device ID).
//! - A [`Removal`] says "device ID is revoked", signed the same way.
//! - The roster holds every valid entry and removal whose signer it can chain to
//!   (newest entry per signer and device, a few signers per device), so the history of
//!   who signed for whom survives a newer entry. Who is a member, who is removed and
//!   who is in conflict is then judged
//!   from all of it at once ([`super::roster_judge`]): a removal counts only when its
//!   signer is trusted, so a removal signed by a device that is itself validly removed
//!   is void, whatever arrived first; two members that removed each other are both
//!   refused until the person decides on this device (`cnspr remove` of one of them).
//!   A removed device cannot be re-added: its removal stands as long as its signer does.
//! - A member's name is that of the newest entry for it signed by a trusted device, so
//!   a rename spreads like an addition (and raises `peer.renamed`).
//!
//! Merging is a pure function of the sets of valid entries and removals: gossip may
//! deliver them in any order, repeatedly, and every member that holds the same sets
//! judges the same roster.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use transport::DeviceId;

// Paths spelt out: the fuzz crate compiles this file by `#[path]`.
#[path = "roster/bound.rs"]
mod bound;
#[path = "roster/signed.rs"]
mod signed;
pub use signed::{MemberEntry, Removal, RosterSnapshot, MAX_MEMBERS, MAX_SIGNERS};

use super::roster_judge::{Graph, Label};

/// File of the signed roster inside the state directory.
pub const ROSTER_FILE: &str = "roster.json";

/// What a merge changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RosterChanges {
    /// New members `(id, name)`, including devices trusted again after a removal that
    /// became void or a conflict that was settled.
    pub joined: Vec<(DeviceId, String)>,
    /// Members whose name changed `(id, old name, new name)`.
    pub renamed: Vec<(DeviceId, String, String)>,
    /// Revoked devices `(id, last known name)`, including ones never seen as members.
    pub removed: Vec<(DeviceId, String)>,
    /// Members no longer trusted because of a conflict of removals `(id, name)`.
    pub conflicted: Vec<(DeviceId, String)>,
    /// Members no longer trusted because no trusted device signed for them any more (the
    /// only members that had signed for them were removed) `(id, name)`.
    pub dropped: Vec<(DeviceId, String)>,
}

impl RosterChanges {
    pub fn is_empty(&self) -> bool {
        self.joined.is_empty()
            && self.renamed.is_empty()
            && self.removed.is_empty()
            && self.conflicted.is_empty()
            && self.dropped.is_empty()
    }
}

/// A device this roster trusts no more and no less until the person decides: it was
/// removed by a member it removed (directly or through others).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub id: DeviceId,
    pub name: String,
    /// Undecided devices that removed it.
    pub removed_by: Vec<DeviceId>,
    /// Undecided devices it removed.
    pub removes: Vec<DeviceId>,
}

/// The accepted roster of this device: everything valid it holds, and who is a member,
/// who is removed and who is in conflict, judged from all of it ([`roster_judge`]).
#[derive(Debug)]
pub struct MeshRoster {
    me: DeviceId,
    /// Held entries: per device, the newest by each signer (at most [`MAX_SIGNERS`]).
    entries: BTreeMap<DeviceId, BTreeMap<DeviceId, MemberEntry>>,
    /// Held removals: per removed device, one per signer (at most [`MAX_SIGNERS`]).
    pool: BTreeMap<DeviceId, BTreeMap<DeviceId, Removal>>,
    /// Judged: the members (not this device), each with the entry that names it.
    members: BTreeMap<DeviceId, MemberEntry>,
    /// Judged: removed devices, each with a removal signed by a trusted device.
    removals: BTreeMap<DeviceId, Removal>,
    /// Judged: devices in a conflict of removals.
    conflicts: BTreeMap<DeviceId, Conflict>,
    path: PathBuf,
}

impl MeshRoster {
    fn empty(me: DeviceId, path: PathBuf) -> Self {
        MeshRoster {
            me,
            entries: BTreeMap::new(),
            pool: BTreeMap::new(),
            members: BTreeMap::new(),
            removals: BTreeMap::new(),
            conflicts: BTreeMap::new(),
            path,
        }
    }

    /// Loads `STATE_DIR/roster.json` (missing: empty). Entries are re-verified; a corrupt
    /// file is an error, never an empty roster.
    pub fn load(state_dir: &Path, me: DeviceId) -> anyhow::Result<Self> {
        let path = state_dir.join(ROSTER_FILE);
        let mut r = MeshRoster::empty(me, path.clone());
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(r),
            Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
        };
        let snap: RosterSnapshot = serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "{} is corrupt ({e}); restore it or remove it (the roster is then learnt again from the other members)",
                path.display()
            )
        })?;
        r.merge(snap);
        Ok(r)
    }

    pub fn save(&self) -> std::io::Result<()> {
        let json = serde_json::to_vec(&self.snapshot()).map_err(std::io::Error::other)?;
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }

    /// Everything held, as gossiped: every entry and every removal, judged or not, so
    /// that every member judges from the same sets.
    pub fn snapshot(&self) -> RosterSnapshot {
        RosterSnapshot {
            members: self
                .entries
                .values()
                .flat_map(|m| m.values())
                .cloned()
                .collect(),
            removals: self
                .pool
                .values()
                .flat_map(|m| m.values())
                .cloned()
                .collect(),
        }
    }

    /// Holds this very entry (same signature) already.
    pub fn holds_entry(&self, e: &MemberEntry) -> bool {
        self.entries
            .get(&e.id)
            .and_then(|m| m.get(&e.signer_id()))
            .is_some_and(|h| h == e)
    }

    /// Holds this very removal already.
    pub fn holds_removal(&self, r: &Removal) -> bool {
        self.pool
            .get(&r.id)
            .and_then(|m| m.get(&r.signer_id()))
            .is_some_and(|h| h == r)
    }

    /// Some removal of `id` is held, valid or void.
    pub fn has_removal_for(&self, id: &DeviceId) -> bool {
        self.pool.contains_key(id)
    }

    pub fn is_member(&self, id: &DeviceId) -> bool {
        self.members.contains_key(id)
    }

    pub fn is_removed(&self, id: &DeviceId) -> bool {
        self.removals.contains_key(id)
    }

    /// The removal that holds for removed device `id`.
    pub fn removal(&self, id: &DeviceId) -> Option<&Removal> {
        self.removals.get(id)
    }

    pub fn removed(&self) -> impl Iterator<Item = &Removal> {
        self.removals.values()
    }

    pub fn conflicts(&self) -> impl Iterator<Item = &Conflict> {
        self.conflicts.values()
    }

    /// The entry that names member `id`.
    pub fn member(&self, id: &DeviceId) -> Option<&MemberEntry> {
        self.members.get(id)
    }

    /// The entry `signer` signed for `id`, if held.
    pub fn signed_by(&self, id: &DeviceId, signer: &DeviceId) -> Option<&MemberEntry> {
        self.entries.get(id)?.get(signer)
    }

    /// How many signers' entries are held for `id`.
    pub fn signers(&self, id: &DeviceId) -> usize {
        self.entries.get(id).map_or(0, |m| m.len())
    }

    /// A device's last known name, member or not.
    pub fn name_of(&self, id: &DeviceId) -> Option<String> {
        self.members
            .get(id)
            .or_else(|| self.entries.get(id)?.values().max_by_key(|e| e.version))
            .map(|e| e.name.clone())
    }

    /// The members (not this device), each with the entry that names it.
    pub fn members(&self) -> impl Iterator<Item = &MemberEntry> {
        self.members.values()
    }

    /// Members that only `id` keeps in the mesh: every trusted device that signed an
    /// entry for them is `id` or themselves. Removing `id` alone
    /// would drop them; the remover signs them again first.
    pub fn kept_only_by(&self, id: &DeviceId) -> Vec<&MemberEntry> {
        self.members
            .values()
            .filter(|m| m.id != *id)
            .filter(|m| {
                self.entries
                    .get(&m.id)
                    .into_iter()
                    .flat_map(|by| by.keys())
                    .filter(|s| **s != m.id && (**s == self.me || self.is_member(s)))
                    .all(|s| s == id)
            })
            .collect()
    }

    /// A member other than `except` already called `name`.
    pub fn name_taken(&self, name: &str, except: &DeviceId) -> bool {
        self.members
            .values()
            .any(|m| m.id != *except && m.name.eq_ignore_ascii_case(name))
    }

    /// `name`, or `name-2`, `name-3`... : the first not taken by another member (and not
    /// `reserved`, this device's own name).
    pub fn unique_name(&self, name: &str, id: &DeviceId, reserved: &str) -> String {
        let free = |n: &str| !self.name_taken(n, id) && !n.eq_ignore_ascii_case(reserved);
        if free(name) {
            return name.to_string();
        }
        for i in 2.. {
            let suffix = format!("-{i}");
            let mut base = name.to_string();
            while base.len() + suffix.len() > 64 {
                base.pop();
            }
            let candidate = format!("{base}{suffix}");
            if free(&candidate) {
                return candidate;
            }
        }
        unreachable!("some suffix is free")
    }

    /// A device that may sign what this roster takes in: this device, or a device some
    /// held entry names. Whether its signatures count is judged afterwards.
    fn known(&self, signer: &DeviceId) -> bool {
        *signer == self.me || self.entries.contains_key(signer)
    }

    /// Merges gossip (or a stored file). Invalid, oversized or unchained parts are
    /// ignored; what could only be chained after another part (an entry signed by a
    /// device added in the same batch) is picked up by repeating until nothing changes.
    pub fn merge(&mut self, snap: RosterSnapshot) -> RosterChanges {
        let before = self.judged();
        self.take_in(snap, false);
        self.rejudge();
        self.shed();
        self.changes_since(before)
    }

    /// Merges what a member delivered: `new`, the part of its roster not held yet
    /// (see [`MeshRoster::unheld`]), with its signatures already checked.
    pub fn merge_checked(&mut self, new: RosterSnapshot) -> RosterChanges {
        let before = self.judged();
        self.take_in(new, true);
        self.rejudge();
        self.shed();
        self.changes_since(before)
    }

    /// The part of `snap` this roster does not hold yet (one comparison each).
    pub fn unheld(&self, snap: &RosterSnapshot) -> RosterSnapshot {
        RosterSnapshot {
            members: snap
                .members
                .iter()
                .filter(|m| !self.holds_entry(m))
                .cloned()
                .collect(),
            removals: snap
                .removals
                .iter()
                .filter(|r| !self.holds_removal(r))
                .cloned()
                .collect(),
        }
    }

    /// Holds what in `snap` is valid (signatures checked unless `checked`) and signed by
    /// a device it can chain to.
    fn take_in(&mut self, snap: RosterSnapshot, checked: bool) {
        if !snap.within_limits() {
            return;
        }
        let mut members: Vec<MemberEntry> = snap
            .members
            .into_iter()
            .filter(|m| m.id != self.me && !self.holds_entry(m) && (checked || m.well_formed()))
            .collect();
        let mut removals: Vec<Removal> = snap
            .removals
            .into_iter()
            .filter(|r| r.id != self.me && !self.holds_removal(r) && (checked || r.well_formed()))
            .collect();
        loop {
            let mut progress = false;
            let mut i = 0;
            while i < members.len() {
                if self.known(&members[i].signer_id()) {
                    let m = members.swap_remove(i);
                    progress |= self.hold_entry(m);
                } else {
                    i += 1;
                }
            }
            let mut i = 0;
            while i < removals.len() {
                if self.known(&removals[i].signer_id()) {
                    let r = removals.swap_remove(i);
                    progress |= self.hold_removal(r);
                } else {
                    i += 1;
                }
            }
            if !progress || (members.is_empty() && removals.is_empty()) {
                break;
            }
        }
    }

    fn hold_entry(&mut self, m: MemberEntry) -> bool {
        if !self.entries.contains_key(&m.id) && !self.room_for_entry(&m) {
            return false;
        }
        let me = self.me;
        let held = self.entries.entry(m.id).or_default();
        let signer = m.signer_id();
        // The newest; of two with one version (a signer that signed two names at once),
        // the greater name: a function of what was delivered, not of its order.
        let rank = |e: &MemberEntry| (e.version, e.name.clone(), e.sig.clone());
        if held.get(&signer).is_some_and(|o| rank(o) >= rank(&m)) {
            return false;
        }
        held.insert(signer, m);
        if held.len() > MAX_SIGNERS {
            // The oldest signature goes (by version, then signer): a function of the set.
            // This device's own never goes: it is what grounds the device as a member
            // here, whatever others signed since (docs/security.md).
            let oldest = held
                .iter()
                .filter(|(s, _)| **s != me)
                .min_by_key(|(s, e)| (e.version, **s))
                .map(|(s, _)| *s);
            if let Some(s) = oldest {
                held.remove(&s);
                return s != signer;
            }
        }
        true
    }

    fn hold_removal(&mut self, r: Removal) -> bool {
        if !self.pool.contains_key(&r.id) && !self.room_for_removal(&r) {
            return false;
        }
        let held = self.pool.entry(r.id).or_default();
        let signer = r.signer_id();
        // One removal per signer is enough (removals are final): the oldest is kept,
        // and of more signers than the bound the lowest IDs, so what is held is a
        // function of what was delivered, not of its order.
        if held.get(&signer).is_some_and(|o| o.version <= r.version) {
            return false;
        }
        held.insert(signer, r);
        if held.len() > MAX_SIGNERS {
            if let Some(last) = held.keys().next_back().copied() {
                held.remove(&last);
                return last != signer;
            }
        }
        true
    }

    fn graph(&self) -> Graph {
        let mut g = Graph::default();
        for (id, by) in &self.entries {
            for s in by.keys() {
                g.support(*s, *id);
            }
        }
        for (id, by) in &self.pool {
            for s in by.keys() {
                g.remove(*s, *id);
            }
        }
        g
    }

    /// Judges the members, removals and conflicts again from everything held.
    fn rejudge(&mut self) {
        let label = self.graph().judge(self.me);
        let is = |id: &DeviceId, l: Label| label.get(id) == Some(&l);
        self.members.clear();
        self.removals.clear();
        self.conflicts.clear();
        for (id, l) in &label {
            if *id == self.me {
                continue;
            }
            match l {
                Label::In => {
                    let by = self.entries.get(id);
                    // The newest entry signed by a trusted device names it.
                    let best = by
                        .into_iter()
                        .flat_map(|m| m.iter())
                        .filter(|(s, _)| is(s, Label::In))
                        .max_by_key(|(s, e)| (e.version, **s));
                    if let Some((_, e)) = best {
                        self.members.insert(*id, e.clone());
                    }
                }
                Label::Out => {
                    let effective = self.pool.get(id).and_then(|by| {
                        by.iter()
                            .find(|(s, _)| is(s, Label::In) || *s == id)
                            .map(|(_, r)| r.clone())
                    });
                    if let Some(r) = effective {
                        self.removals.insert(*id, r);
                    }
                }
                Label::Undecided => {
                    let Some(name) = self.name_of(id) else {
                        continue;
                    };
                    let removed_by = self
                        .pool
                        .get(id)
                        .into_iter()
                        .flat_map(|m| m.keys())
                        .filter(|s| is(s, Label::Undecided))
                        .copied()
                        .collect();
                    let removes = self
                        .pool
                        .iter()
                        .filter(|(t, by)| by.contains_key(id) && is(t, Label::Undecided))
                        .map(|(t, _)| *t)
                        .collect();
                    self.conflicts.insert(
                        *id,
                        Conflict {
                            id: *id,
                            name,
                            removed_by,
                            removes,
                        },
                    );
                }
            }
        }
    }

    fn judged(&self) -> Judged {
        Judged {
            members: self
                .members
                .iter()
                .map(|(id, e)| (*id, e.name.clone()))
                .collect(),
            removed: self.removals.keys().copied().collect(),
            conflicts: self.conflicts.keys().copied().collect(),
        }
    }

    fn changes_since(&self, before: Judged) -> RosterChanges {
        let mut ch = RosterChanges::default();
        for (id, e) in &self.members {
            match before.members.get(id) {
                None => ch.joined.push((*id, e.name.clone())),
                Some(old) if *old != e.name => ch.renamed.push((*id, old.clone(), e.name.clone())),
                Some(_) => {}
            }
        }
        let name = |id: &DeviceId| {
            before
                .members
                .get(id)
                .cloned()
                .or_else(|| self.name_of(id))
                .unwrap_or_default()
        };
        for id in self.removals.keys() {
            if !before.removed.contains(id) {
                ch.removed.push((*id, name(id)));
            }
        }
        for id in self.conflicts.keys() {
            if !before.conflicts.contains(id) {
                ch.conflicted.push((*id, name(id)));
            }
        }
        for id in before.members.keys() {
            let gone = !self.members.contains_key(id)
                && !self.removals.contains_key(id)
                && !self.conflicts.contains_key(id);
            if gone {
                ch.dropped.push((*id, name(id)));
            }
        }
        ch
    }
}

/// What the judgement said before a merge, to tell what changed.
struct Judged {
    members: BTreeMap<DeviceId, String>,
    removed: BTreeSet<DeviceId>,
    conflicts: BTreeSet<DeviceId>,
}

#[cfg(test)]
#[path = "roster/tests.rs"]
mod tests;

#[cfg(test)]
#[path = "roster/bound_tests.rs"]
mod bound_tests;
