//! Mesh membership, with one owner.
//!
//! Who is a member lives in four places: the signed roster (`roster.json`, the
//! authority), the peer table (`peers.json`: names, addresses, states), the TLS trust set
//! (`transport::Roster`, which decides who may connect) and the membership core's member
//! set. [`Members`] alone changes them, all four in one call ([`Members::apply`]), and
//! [`Members::is_member`] is the one answer to "is X a member".
//!
//! Persistence: the roster is written (and synced) before the peer table, and at start the
//! peer table is made to agree with the roster, never the other way round for removals: a
//! device the roster has removed is dropped from the table, and the TLS set and the core
//! start from the roster's members. So no crash between the two writes, no full disk and
//! no restored copy of `peers.json` lets a removed device back in; a restored `roster.json`
//! that predates a removal gets the removal back from `peers.json` (signed again by this
//! device), and from the other members by gossip.

use std::ops::Deref;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::warn;
use transport::{DeviceId, Identity};

use super::core::Member;
use super::peers::{Peer, PeerTable};
use super::roster::{MemberEntry, MeshRoster, Removal, RosterChanges, RosterSnapshot};

/// What a change of membership did, for the events and gossip that follow it.
#[derive(Debug, Default)]
pub struct Applied {
    /// New members `(id, name)`.
    pub joined: Vec<(DeviceId, String)>,
    /// Removed members `(id, last known name)`.
    pub removed: Vec<(DeviceId, String)>,
    /// Members renamed `(id, old name, new name)`.
    pub renamed: Vec<(DeviceId, String, String)>,
    /// Members no longer trusted until the person decides: a conflict of removals
    /// `(id, name)`.
    pub conflicted: Vec<(DeviceId, String)>,
    /// Every device no longer trusted without a removal (conflicts, and members that
    /// only removed devices had signed for).
    pub untrusted: Vec<DeviceId>,
    /// The roster changed (joined, renamed or removed): worth gossiping.
    pub roster_changed: bool,
}

/// Read access to the signed roster; changes go through [`Members`].
pub struct RosterRef<'a>(MutexGuard<'a, MeshRoster>);

impl Deref for RosterRef<'_> {
    type Target = MeshRoster;
    fn deref(&self) -> &MeshRoster {
        &self.0
    }
}

/// The owner of mesh membership (see the module documentation).
pub struct Members {
    identity: Arc<Identity>,
    roster: Mutex<MeshRoster>,
    table: Mutex<PeerTable>,
    tls: transport::Roster,
    core: Arc<Member>,
}

/// The version of an entry signed under a placeholder name ([`Members::add_placeholder`]);
/// entries signed with a name carry their signing time in milliseconds.
pub const PLACEHOLDER_VERSION: u64 = 1;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Members {
    /// Loads the roster and the peer table from `state_dir` and makes them agree (see the
    /// module documentation); the TLS set and the core's member set start from the
    /// roster's members.
    pub fn load(
        identity: Arc<Identity>,
        state_dir: &Path,
        tls: transport::Roster,
        core: Arc<Member>,
    ) -> anyhow::Result<Self> {
        let mut table = PeerTable::load(state_dir)?;
        let mut roster = MeshRoster::load(state_dir, identity.id)?;
        reconcile(&identity, &mut table, &mut roster);
        let members = Members {
            identity,
            roster: Mutex::new(roster),
            table: Mutex::new(table),
            tls,
            core,
        };
        let ids = members.ids();
        for id in &ids {
            members.tls.insert(*id);
        }
        members.core.set_members(ids);
        members.notify_removed(&members.removed_ids());
        Ok(members)
    }

    /// The devices removed from the mesh.
    pub fn removed_ids(&self) -> Vec<DeviceId> {
        self.roster().removed().map(|r| r.id).collect()
    }

    /// The one answer to "is `id` a member of the mesh": it has a valid roster entry and
    /// no removal.
    pub fn is_member(&self, id: &DeviceId) -> bool {
        self.roster().is_member(id)
    }

    /// Every member but this device.
    pub fn ids(&self) -> Vec<DeviceId> {
        let r = self.roster();
        r.members()
            .map(|m| m.id)
            .filter(|id| r.is_member(id) && *id != self.identity.id)
            .collect()
    }

    /// The peer table (names, addresses, states). Adding or dropping a peer is
    /// [`Members`]' business; its state is the membership driver's.
    pub fn table(&self) -> MutexGuard<'_, PeerTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The signed roster, read-only.
    pub fn roster(&self) -> RosterRef<'_> {
        RosterRef(self.roster_mut())
    }

    fn roster_mut(&self) -> MutexGuard<'_, MeshRoster> {
        self.roster.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn save_table(&self) {
        if let Err(e) = self.table().save() {
            warn!(error = %e, "could not save the peer table");
        }
    }

    /// Merges entries and removals this device signed (trust, remove, pairing).
    pub fn merge(&self, snap: RosterSnapshot) -> Applied {
        let changes = self.roster_mut().merge(snap);
        self.apply(changes)
    }

    /// Merges a roster member `from` delivered over its authenticated connection. Only
    /// what this device does not hold yet is looked at: entries it already has, the same
    /// to the signature, and removals it already knows are dropped first (under the lock,
    /// a comparison each), and the rest has its signatures checked before the lock is
    /// taken again, so a member's gossip costs the others verifications only for what is
    /// new to them.
    pub fn merge_from(&self, snap: RosterSnapshot, from: DeviceId) -> Applied {
        if from != self.identity.id && !self.is_member(&from) {
            return Applied::default();
        }
        let mut new = self.roster().unheld(&snap);
        new.members.retain(|m| m.well_formed());
        new.removals.retain(|r| r.well_formed());
        if new.members.is_empty() && new.removals.is_empty() {
            return Applied::default();
        }
        let changes = self.roster_mut().merge_checked(new);
        self.apply(changes)
    }

    /// Signs `id` into the roster as `name` (a member already keeps its entry when the
    /// name is the same).
    pub fn add(&self, id: DeviceId, name: &str) -> Applied {
        self.add_at(id, name, now_ms())
    }

    /// Signs `id` into the roster under a placeholder name (trusted without a name, not
    /// known yet): version [`PLACEHOLDER_VERSION`], older than any entry signed with a
    /// name, so it never renames a member the mesh already named (each such rename
    /// would flood the roster, and be undone when the device connects and its own name
    /// is signed).
    pub fn add_placeholder(&self, id: DeviceId, name: &str) -> Applied {
        self.add_at(id, name, PLACEHOLDER_VERSION)
    }

    fn add_at(&self, id: DeviceId, name: &str, version: u64) -> Applied {
        let entry = MemberEntry::sign(&self.identity, id, name, version);
        let applied = self.merge(RosterSnapshot {
            members: vec![entry],
            removals: vec![],
        });
        if !applied.roster_changed {
            // A newer entry with the same name: nothing to apply, but keep it.
            if let Err(e) = self.roster_mut().save() {
                warn!(error = %e, "could not save the roster");
            }
        }
        applied
    }

    /// Signs the removal of `id` (named `name` here). The members only `id` had signed
    /// for are signed for again first, so that they stay members everywhere (a removal
    /// does not cascade); the removals `id` had signed become void (see `roster`), and
    /// the devices that brings back are in [`Applied::joined`]. Also returns the names
    /// of the members kept that way: if `id` was stolen, they are the devices it may have
    /// added.
    pub fn remove(&self, id: DeviceId, name: &str) -> (Applied, Vec<String>) {
        let now = now_ms();
        let mut snap = RosterSnapshot::default();
        let mut kept = Vec::new();
        {
            let r = self.roster();
            for m in r.kept_only_by(&id) {
                kept.push(m.name.clone());
                snap.members.push(MemberEntry::sign(
                    &self.identity,
                    m.id,
                    &m.name,
                    now.max(m.version + 1),
                ));
            }
        }
        snap.removals.push(Removal::sign(&self.identity, id, now));
        let mut changes = self.roster_mut().merge(snap);
        if changes.removed.is_empty() && !self.roster().is_removed(&id) {
            // Not a signed member (should not happen): still drop it locally.
            changes.removed.push((id, name.to_string()));
        }
        (self.apply(changes), kept)
    }

    /// Records `name` for member `id` (signed by this device) when the roster has
    /// another name for it.
    /// Also when only this device's own entry for it has another name (or there is
    /// none): so the name does not hang on another member's signature alone (it would
    /// fall back to an old one if that member were removed). The roster never lets
    /// this device's own signature go for others'.
    pub fn sign_name(&self, id: DeviceId, name: &str) -> Applied {
        {
            let r = self.roster();
            let me = self.identity.id;
            let current = r.member(&id).is_some_and(|m| m.name == name);
            let own = r.signed_by(&id, &me).is_some_and(|m| m.name == name);
            if !r.is_member(&id) || (current && own) {
                return Applied::default();
            }
        }
        self.add(id, name)
    }

    /// Carries a roster change into the table, the TLS set and the core, and persists
    /// the roster (first) and the table.
    fn apply(&self, changes: RosterChanges) -> Applied {
        let mut applied = Applied {
            roster_changed: !changes.is_empty(),
            ..Applied::default()
        };
        if changes.is_empty() {
            return applied;
        }
        if let Err(e) = self.roster_mut().save() {
            warn!(error = %e, "could not save the roster");
        }
        {
            let mut table = self.table();
            for (id, name) in &changes.joined {
                if *id == self.identity.id {
                    continue;
                }
                table.removed.remove(id);
                table.conflicted.remove(id);
                match table.peers.get_mut(id) {
                    Some(p) => p.name.clone_from(name),
                    None => {
                        table
                            .peers
                            .insert(*id, Peer::new(*id, name.clone(), Vec::new()));
                        applied.joined.push((*id, name.clone()));
                    }
                }
            }
            for (id, old, name) in &changes.renamed {
                if let Some(p) = table.peers.get_mut(id) {
                    p.name.clone_from(name);
                }
                applied.renamed.push((*id, old.clone(), name.clone()));
            }
            // Not trusted any more, but not removed: they leave the table (and the TLS
            // set and the core below) without a removal of their own.
            for (id, name) in &changes.conflicted {
                let name = take_name(&mut table, id, name);
                table.conflicted.insert(*id, name.clone());
                applied.untrusted.push(*id);
                applied.conflicted.push((*id, name));
            }
            for (id, name) in &changes.dropped {
                take_name(&mut table, id, name);
                applied.untrusted.push(*id);
            }
            for (id, name) in &changes.removed {
                let name = take_name(&mut table, id, name);
                table.removed.insert(*id, name.clone());
                applied.removed.push((*id, name));
            }
        }
        self.save_table();
        for (id, _) in &applied.joined {
            self.tls.insert(*id);
            self.core.add(*id);
        }
        for id in applied
            .removed
            .iter()
            .map(|(id, _)| id)
            .chain(&applied.untrusted)
        {
            self.tls.remove(id);
            self.core.remove(*id);
        }
        // A device no longer removed (its removal became void or disputed) is not told.
        for id in applied
            .untrusted
            .iter()
            .chain(applied.joined.iter().map(|(id, _)| id))
        {
            self.tls.set_notice(*id, None);
        }
        let removed: Vec<DeviceId> = applied.removed.iter().map(|(id, _)| *id).collect();
        self.notify_removed(&removed);
        applied
    }

    /// Appeals to member `to` with `text` in the next hello; true when it is new.
    pub fn appeal(&self, to: DeviceId, text: String) -> bool {
        let new = self.tls.appeal(&to).as_ref() != Some(&text);
        self.tls.set_appeal(to, Some(text));
        new
    }

    /// Where the endpoint delivers removed devices' appeals.
    pub fn appeal_sink(&self, sink: tokio::sync::mpsc::Sender<(DeviceId, String)>) {
        self.tls.set_appeal_sink(sink);
    }

    /// Removed device `from` appealed with `text`: the removal of a device that removed
    /// it, signed by itself. Taken like gossip (the judgement decides); anything else is
    /// ignored.
    pub fn take_appeal(&self, from: DeviceId, text: &str) -> Option<Applied> {
        let r: Removal = serde_json::from_str(text).ok()?;
        let fair = r.signer_id() == from && {
            let roster = self.roster();
            roster.removal(&from).is_some_and(|x| x.signer_id() == r.id)
        };
        if !fair || !r.well_formed() {
            return None;
        }
        Some(self.merge(RosterSnapshot {
            members: vec![],
            removals: vec![r],
        }))
    }

    /// Has the endpoint tell each of `removed` that it was removed, and by whom, when it
    /// next connects (`removal_notice`).
    fn notify_removed(&self, removed: &[DeviceId]) {
        let roster = self.roster();
        for r in roster.removed().filter(|r| removed.contains(&r.id)) {
            let signer = r.signer_id();
            let by = if signer == self.identity.id {
                self.identity.name.clone()
            } else {
                roster
                    .member(&signer)
                    .map_or_else(|| signer.short(), |m| m.name.clone())
            };
            self.tls
                .set_notice(r.id, Some(super::removal_notice::text(&by, r)));
        }
    }
}

/// Takes `id` out of the table's lists, with the name people know it by there (its own,
/// from its hello), else `fallback` (the roster's).
fn take_name(table: &mut PeerTable, id: &DeviceId, fallback: &str) -> String {
    table
        .peers
        .remove(id)
        .map(|p| p.name)
        .or_else(|| table.removed.remove(id))
        .or_else(|| table.conflicted.remove(id))
        .unwrap_or_else(|| fallback.to_string())
}

/// Makes the peer table and the roster agree at start. Devices trusted before the signed
/// roster existed (in the table, unknown to the roster) get an entry signed by this
/// device, and removals the table remembers but the roster lacks are signed again; then
/// the table follows the roster: removed devices leave it, members it lacks join it.
fn reconcile(identity: &Identity, table: &mut PeerTable, roster: &mut MeshRoster) {
    let now = now_ms();
    let mut snap = RosterSnapshot::default();
    for id in table.removed.keys() {
        // Only when the roster holds no removal of it at all (a restored roster.json
        // older than the removal): a void or disputed removal is not signed again here.
        if !roster.has_removal_for(id) {
            snap.removals.push(Removal::sign(identity, *id, now));
        }
    }
    for p in table.peers.values() {
        let disputed = roster.has_removal_for(&p.id) || table.removed.contains_key(&p.id);
        if !disputed && roster.name_of(&p.id).is_none() {
            snap.members
                .push(MemberEntry::sign(identity, p.id, &p.name, now));
        }
    }
    let mut changed = false;
    if !snap.members.is_empty() || !snap.removals.is_empty() {
        roster.merge(snap);
        if let Err(e) = roster.save() {
            warn!(error = %e, "could not save the roster");
        }
    }
    // The table follows the roster.
    let stale: Vec<DeviceId> = table
        .peers
        .keys()
        .filter(|id| !roster.is_member(id))
        .copied()
        .collect();
    for id in stale {
        if let Some(p) = table.peers.remove(&id) {
            if roster.is_removed(&id) {
                warn!(peer = %p.name, id = %id.short(), "the peer table listed a removed device; it stays removed");
                table.removed.insert(id, p.name);
            } else {
                warn!(peer = %p.name, id = %id.short(), "the roster does not trust this device now (a conflict of removals, or nobody trusted signed for it)");
            }
            changed = true;
        }
    }
    for m in roster.members() {
        if table.removed.remove(&m.id).is_some() {
            changed = true;
        }
        if m.id != identity.id && !table.peers.contains_key(&m.id) {
            table
                .peers
                .insert(m.id, Peer::new(m.id, m.name.clone(), Vec::new()));
            changed = true;
        }
    }
    if changed {
        if let Err(e) = table.save() {
            warn!(error = %e, "could not save the peer table");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(name: &str) -> Identity {
        Identity::generate(name).unwrap()
    }

    fn roster(me: &Identity, dir: &Path) -> MeshRoster {
        MeshRoster::load(dir, me.id).unwrap()
    }

    /// The desktop added the laptop and the phone; the phone, once paired, signed the
    /// laptop's entry again (the name it adopted); then the desktop removed the phone and
    /// paired a new phone, which learns the roster from the desktop. The desktop's older
    /// signature for the laptop is still held, so the laptop stays a member everywhere.
    #[test]
    fn removing_a_signer_keeps_the_members_it_signed_for() {
        let (desk, laptop, phone, phone2) =
            (dev("desk"), dev("laptop"), dev("phone"), dev("phone2"));
        let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut rd = roster(&desk, dirs[0].path());
        rd.merge(RosterSnapshot {
            members: vec![
                MemberEntry::sign(&desk, laptop.id, "laptop", 1),
                MemberEntry::sign(&desk, phone.id, "phone", 2),
                MemberEntry::sign(&phone, laptop.id, "laptop", 3),
            ],
            removals: vec![],
        });
        assert_eq!(rd.member(&laptop.id).unwrap().signer_id(), phone.id);
        assert!(rd.kept_only_by(&phone.id).is_empty());
        // `cnspr remove phone` on the desktop.
        let removed = rd.merge(RosterSnapshot {
            members: vec![],
            removals: vec![Removal::sign(&desk, phone.id, 4)],
        });
        assert_eq!(removed.removed.len(), 1);
        assert!(removed.dropped.is_empty());
        assert_eq!(rd.member(&laptop.id).unwrap().signer_id(), desk.id);
        assert_eq!(rd.member(&laptop.id).unwrap().name, "laptop", "unchanged");
        // The new phone pairs with the desktop and gets its roster from it.
        let mut rn = roster(&phone2, dirs[1].path());
        rn.merge(RosterSnapshot {
            members: vec![MemberEntry::sign(&phone2, desk.id, "desk", 5)],
            removals: vec![],
        });
        rn.merge_checked(rd.snapshot());
        assert!(rn.is_member(&laptop.id), "the new phone knows the laptop");
        assert!(rn.is_removed(&phone.id));
    }

    /// A member only the removed device had signed for (the laptop paired through the
    /// phone): the remover signs for it first (as `Members::remove` does), so it stays.
    #[test]
    fn the_remover_signs_for_members_only_the_removed_device_had_signed_for() {
        let (desk, laptop, phone, other) = (dev("desk"), dev("laptop"), dev("phone"), dev("o"));
        let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut rd = roster(&desk, dirs[0].path());
        let history = RosterSnapshot {
            members: vec![
                MemberEntry::sign(&desk, phone.id, "phone", 2),
                MemberEntry::sign(&phone, laptop.id, "laptop", 3),
            ],
            removals: vec![],
        };
        rd.merge(history.clone());
        let kept: Vec<DeviceId> = rd.kept_only_by(&phone.id).iter().map(|m| m.id).collect();
        assert_eq!(kept, vec![laptop.id]);
        // Without signing for it, removing the phone drops the laptop.
        let mut bare = roster(&desk, dirs[1].path());
        bare.merge(history.clone());
        let ch = bare.merge(RosterSnapshot {
            members: vec![],
            removals: vec![Removal::sign(&desk, phone.id, 4)],
        });
        assert_eq!(ch.dropped, vec![(laptop.id, "laptop".to_string())]);
        // Signing first keeps it, here and at a member that hears both.
        let ch = rd.merge(RosterSnapshot {
            members: vec![MemberEntry::sign(&desk, laptop.id, "laptop", 4)],
            removals: vec![Removal::sign(&desk, phone.id, 4)],
        });
        assert!(ch.dropped.is_empty() && rd.is_member(&laptop.id));
        let mut ro = MeshRoster::load(tempfile::tempdir().unwrap().path(), other.id).unwrap();
        ro.merge(RosterSnapshot {
            members: vec![MemberEntry::sign(&other, desk.id, "desk", 1)],
            removals: vec![],
        });
        ro.merge(history);
        assert!(ro.is_member(&laptop.id));
        ro.merge_checked(rd.snapshot());
        assert!(ro.is_member(&laptop.id) && ro.is_removed(&phone.id));
    }

    /// A member that signs itself an entry with another member's name is renamed (the
    /// change names the old name), and the name then finds no one: never the impostor.
    #[test]
    fn a_member_taking_another_s_name_is_shown_and_never_guessed() {
        let (laptop, desk, phone) = (dev("laptop"), dev("desk"), dev("phone"));
        let dir = tempfile::tempdir().unwrap();
        let mut r = roster(&laptop, dir.path());
        r.merge(RosterSnapshot {
            members: vec![
                MemberEntry::sign(&laptop, desk.id, "desk", 1),
                MemberEntry::sign(&laptop, phone.id, "phone", 1),
            ],
            removals: vec![],
        });
        let ch = r.merge(RosterSnapshot {
            members: vec![MemberEntry::sign(&phone, phone.id, "desk", 9)],
            removals: vec![],
        });
        assert_eq!(ch.renamed, vec![(phone.id, "phone".into(), "desk".into())]);
        let mut table = PeerTable::load(dir.path()).unwrap();
        for m in r.members() {
            table
                .peers
                .insert(m.id, Peer::new(m.id, m.name.clone(), Vec::new()));
        }
        let e = table.resolve("desk").unwrap_err();
        assert_eq!(e.code, crate::api::code::AMBIGUOUS_PEER, "{}", e.message);
        assert_eq!(table.resolve(&desk.id.to_string()).unwrap(), desk.id);
        // Nor does a `@desk` handler filter match either of them.
        assert!(!table.name_unique(&phone.id, "laptop"));
        assert!(!table.name_unique(&desk.id, "laptop"));
        // A name is its peer's alone only if this device does not carry it either.
        table.peers.remove(&phone.id);
        assert!(table.name_unique(&desk.id, "laptop"));
        assert!(!table.name_unique(&desk.id, "desk"));
    }
}
