//! The roster's signed statements: entries ("ID is a member named NAME") and removals
//! ("ID is revoked"), and the snapshot that carries them.

use serde::{Deserialize, Serialize};
use transport::identity::{ed25519_id, verify_signature};
use transport::{DeviceId, Identity};

/// Most members (and most removals) a roster holds; larger gossip is refused.
pub const MAX_MEMBERS: usize = 1024;
/// Most entries (and removals) kept for one device: one per signer, the newest versions.
pub const MAX_SIGNERS: usize = 16;

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
        self.members.len() <= MAX_MEMBERS * MAX_SIGNERS
            && self.removals.len() <= MAX_MEMBERS * MAX_SIGNERS
    }
}
