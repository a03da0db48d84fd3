//! The mesh roster: the member devices with their names, as signed entries that every
//! member keeps (`STATE_DIR/roster.json`) and gossips (see `mesh`).
//!
//! - A [`MemberEntry`] says "device ID is a member, named NAME" and is signed by the member
//!   that added it (its raw Ed25519 key travels with it; the key must hash to the signer's
//!   device ID). It is accepted when its signer is this device or an accepted member, or,
//!   in a roster delivered by a member over its authenticated connection (gossip, or the
//!   window's roster when pairing), a member of that roster: only one entry per ID is
//!   kept everywhere (below), so the entry that chains to us may have been replaced by
//!   a newer one whose signer we only know through the deliverer. This trusts no more
//!   than before: any member may sign entries of its own.
//! - A [`Removal`] says "device ID is revoked", signed the same way. Removals are kept
//!   forever and beat every entry: a removed device cannot be re-added, by itself or by
//!   anyone, and entries it signed after we learnt of its removal are refused.
//! - Several entries for one ID: the highest `version` wins (then the greater signer), so
//!   a rename (e.g. resolving a name clash) spreads like an addition.
//!
//! Merging is a pure function of the sets of valid entries and removals: gossip may
//! deliver them in any order, repeatedly, and every member ends with the same roster.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use transport::identity::{ed25519_id, verify_signature};
use transport::{DeviceId, Identity};

/// File of the signed roster inside the state directory.
pub const ROSTER_FILE: &str = "roster.json";
/// Most members (and most removals) a roster holds; larger gossip is refused.
pub const MAX_MEMBERS: usize = 1024;

const DOMAIN_MEMBER: &[u8] = b"cnspr roster member v1\0";
const DOMAIN_REMOVAL: &[u8] = b"cnspr roster removal v1\0";

/// "`id` is a member named `name`", signed by `signer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEntry {
    pub id: DeviceId,
    pub name: String,
    /// Milliseconds since the Unix epoch when signed; later versions replace earlier ones.
    pub version: u64,
    /// The signer's raw Ed25519 public key.
    pub signer: [u8; 32],
    pub sig: Vec<u8>,
}

/// "`id` is revoked", signed by `signer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    pub id: DeviceId,
    pub version: u64,
    pub signer: [u8; 32],
    pub sig: Vec<u8>,
}

fn member_msg(id: &DeviceId, name: &str, version: u64) -> Vec<u8> {
    let mut m = DOMAIN_MEMBER.to_vec();
    m.extend_from_slice(&id.0);
    m.extend_from_slice(&version.to_be_bytes());
    m.extend_from_slice(name.as_bytes());
    m
}

fn removal_msg(id: &DeviceId, version: u64) -> Vec<u8> {
    let mut m = DOMAIN_REMOVAL.to_vec();
    m.extend_from_slice(&id.0);
    m.extend_from_slice(&version.to_be_bytes());
    m
}

impl MemberEntry {
    pub fn sign(me: &Identity, id: DeviceId, name: &str, version: u64) -> Self {
        MemberEntry {
            id,
            name: name.to_string(),
            version,
            signer: me.public_key(),
            sig: me.sign(&member_msg(&id, name, version)),
        }
    }

    pub fn signer_id(&self) -> DeviceId {
        ed25519_id(&self.signer)
    }

    /// Signature and name are valid (says nothing about whether the signer is trusted).
    pub fn well_formed(&self) -> bool {
        transport::identity::validate_name(&self.name).is_ok()
            && verify_signature(
                &self.signer,
                &member_msg(&self.id, &self.name, self.version),
                &self.sig,
            )
    }
}

impl Removal {
    pub fn sign(me: &Identity, id: DeviceId, version: u64) -> Self {
        Removal {
            id,
            version,
            signer: me.public_key(),
            sig: me.sign(&removal_msg(&id, version)),
        }
    }

    pub fn signer_id(&self) -> DeviceId {
        ed25519_id(&self.signer)
    }

    pub fn well_formed(&self) -> bool {
        verify_signature(
            &self.signer,
            &removal_msg(&self.id, self.version),
            &self.sig,
        )
    }
}

/// The whole signed roster, as stored and as gossiped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterSnapshot {
    pub members: Vec<MemberEntry>,
    pub removals: Vec<Removal>,
}

impl RosterSnapshot {
    /// Refuses snapshots beyond the size limits (checked before anything is verified).
    pub fn within_limits(&self) -> bool {
        self.members.len() <= MAX_MEMBERS && self.removals.len() <= MAX_MEMBERS
    }
}

/// What a merge changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RosterChanges {
    /// New members `(id, name)`.
    pub joined: Vec<(DeviceId, String)>,
    /// Members whose name changed `(id, new name)`.
    pub renamed: Vec<(DeviceId, String)>,
    /// Revoked devices `(id, last known name)`, including ones never seen as members.
    pub removed: Vec<(DeviceId, String)>,
}

impl RosterChanges {
    pub fn is_empty(&self) -> bool {
        self.joined.is_empty() && self.renamed.is_empty() && self.removed.is_empty()
    }
}

/// The accepted roster of this device.
#[derive(Debug)]
pub struct MeshRoster {
    me: DeviceId,
    members: BTreeMap<DeviceId, MemberEntry>,
    removals: BTreeMap<DeviceId, Removal>,
    path: PathBuf,
}

impl MeshRoster {
    /// Loads `STATE_DIR/roster.json` (missing: empty). Entries are re-verified; a corrupt
    /// file is an error, never an empty roster.
    pub fn load(state_dir: &Path, me: DeviceId) -> anyhow::Result<Self> {
        let path = state_dir.join(ROSTER_FILE);
        let mut r = MeshRoster {
            me,
            members: BTreeMap::new(),
            removals: BTreeMap::new(),
            path: path.clone(),
        };
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

    pub fn snapshot(&self) -> RosterSnapshot {
        RosterSnapshot {
            members: self.members.values().cloned().collect(),
            removals: self.removals.values().cloned().collect(),
        }
    }

    pub fn is_member(&self, id: &DeviceId) -> bool {
        self.members.contains_key(id) && !self.removals.contains_key(id)
    }

    pub fn is_removed(&self, id: &DeviceId) -> bool {
        self.removals.contains_key(id)
    }

    pub fn member(&self, id: &DeviceId) -> Option<&MemberEntry> {
        self.members.get(id)
    }

    pub fn members(&self) -> impl Iterator<Item = &MemberEntry> {
        self.members.values()
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

    fn trusted_signer(
        &self,
        signer: &DeviceId,
        vouched: &std::collections::HashSet<DeviceId>,
    ) -> bool {
        *signer == self.me || self.is_member(signer) || vouched.contains(signer)
    }

    /// Merges gossip (or a stored file). Invalid, oversized or untrusted parts are
    /// ignored; what could only be verified after another part (an entry signed by a
    /// member added in the same batch) is picked up by repeating until nothing changes.
    pub fn merge(&mut self, snap: RosterSnapshot) -> RosterChanges {
        self.merge_inner(snap, None)
    }

    /// Merges the roster a member (`from`, authenticated by its connection) delivered:
    /// entries signed by members of that roster count as chained, through `from`.
    /// Without `from` being a member here, the same as [`MeshRoster::merge`].
    pub fn merge_from(&mut self, snap: RosterSnapshot, from: DeviceId) -> RosterChanges {
        let voucher = from == self.me || self.is_member(&from);
        self.merge_inner(snap, voucher.then_some(from))
    }

    fn merge_inner(&mut self, snap: RosterSnapshot, voucher: Option<DeviceId>) -> RosterChanges {
        let mut changes = RosterChanges::default();
        if !snap.within_limits() {
            return changes;
        }

        let mut members: Vec<MemberEntry> = snap
            .members
            .into_iter()
            .filter(|m| m.id != self.me && m.well_formed())
            .collect();
        let mut removals: Vec<Removal> = snap
            .removals
            .into_iter()
            .filter(|r| r.well_formed())
            .collect();
        let removed_in_snap: std::collections::HashSet<DeviceId> =
            removals.iter().map(|r| r.id).collect();
        let vouched: std::collections::HashSet<DeviceId> = match voucher {
            Some(v) => members
                .iter()
                .map(|m| m.id)
                .chain([v])
                .filter(|id| !removed_in_snap.contains(id) && !self.removals.contains_key(id))
                .collect(),
            None => Default::default(),
        };
        loop {
            let mut progress = false;
            let mut i = 0;
            while i < removals.len() {
                let r = &removals[i];
                if self.removals.contains_key(&r.id) {
                    removals.swap_remove(i);
                    continue;
                }
                if r.id != self.me && self.trusted_signer(&r.signer_id(), &vouched) {
                    let r = removals.swap_remove(i);
                    // The entry goes: a removed device is only a removal from now on, so
                    // every member ends with the same roster whatever the order.
                    let name = self
                        .members
                        .remove(&r.id)
                        .map(|m| m.name)
                        .unwrap_or_default();
                    if self.removals.len() < MAX_MEMBERS {
                        changes.removed.push((r.id, name));
                        self.removals.insert(r.id, r);
                        progress = true;
                    }
                    continue;
                }
                i += 1;
            }
            let mut i = 0;
            while i < members.len() {
                let m = &members[i];
                if self.removals.contains_key(&m.id) {
                    members.swap_remove(i);
                    continue;
                }
                if !self.trusted_signer(&m.signer_id(), &vouched) {
                    i += 1;
                    continue;
                }
                let m = members.swap_remove(i);
                match self.members.get(&m.id) {
                    Some(old) if (old.version, old.signer_id()) >= (m.version, m.signer_id()) => {}
                    Some(old) => {
                        if old.name != m.name {
                            changes.renamed.push((m.id, m.name.clone()));
                        }
                        self.members.insert(m.id, m);
                        progress = true;
                    }
                    None if self.members.len() < MAX_MEMBERS => {
                        changes.joined.push((m.id, m.name.clone()));
                        self.members.insert(m.id, m);
                        progress = true;
                    }
                    None => {}
                }
            }
            if !progress || (members.is_empty() && removals.is_empty()) {
                break;
            }
        }
        changes
            .joined
            .retain(|(id, _)| !self.removals.contains_key(id));
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(name: &str) -> Identity {
        Identity::generate(name).unwrap()
    }

    fn roster(me: &Identity) -> MeshRoster {
        MeshRoster {
            me: me.id,
            members: BTreeMap::new(),
            removals: BTreeMap::new(),
            path: PathBuf::from("/nonexistent/roster.json"),
        }
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
    fn a_roster_delivered_by_a_member_vouches_for_its_members() {
        // B's roster after the mesh settled: A's entry is the newer one C signed, C's
        // the one A signed. D trusts only B: neither entry chains to D by itself.
        let (a, b, c, d) = (dev("a"), dev("b"), dev("c"), dev("d"));
        let snap = RosterSnapshot {
            members: vec![
                MemberEntry::sign(&c, a.id, "a", 5),
                MemberEntry::sign(&a, c.id, "c", 4),
                MemberEntry::sign(&b, d.id, "d", 6),
            ],
            removals: vec![],
        };
        let fresh = || {
            let mut rd = roster(&d);
            rd.merge(RosterSnapshot {
                members: vec![MemberEntry::sign(&d, b.id, "b", 6)],
                removals: vec![],
            });
            rd
        };
        let mut rd = fresh();
        assert!(rd.merge(snap.clone()).joined.is_empty());
        let mut rd = fresh();
        let ch = rd.merge_from(snap.clone(), b.id);
        assert_eq!(ch.joined.len(), 2);
        assert!(rd.is_member(&a.id) && rd.is_member(&c.id));
        // Only a member vouches: the same roster from a stranger adds nothing.
        let x = dev("x");
        let mut rd = fresh();
        assert!(rd.merge_from(snap.clone(), x.id).joined.is_empty());
        // Nor does a member vouch for a device its roster says is removed.
        let mut with_removal = snap;
        with_removal.removals.push(Removal::sign(&b, a.id, 7));
        let mut rd = fresh();
        rd.merge_from(with_removal, b.id);
        assert!(!rd.is_member(&a.id));
        assert!(rd.is_removed(&a.id));
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
            members: vec![MemberEntry::sign(&a, x.id, "x", 1); MAX_MEMBERS + 1],
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
}
