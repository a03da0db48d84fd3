//! Telling a removed device that it was removed, and by whom.
//!
//! Every member keeps, for each removed device, a notice: the signed removal and the
//! name of the member that signed it. The endpoint lets a removed device finish its
//! handshake only to answer its hello with that notice (`transport::Roster::set_notice`)
//! and close. The removed device checks the removal (its own ID, a valid signature by a
//! member it knows) and from then on shows it in `status` and `peers`, and its commands
//! say "this device was removed from the mesh by NAME".

use serde::{Deserialize, Serialize};
use transport::DeviceId;

use super::roster::Removal;

/// Start of a notice in a hello's refusal.
pub const PREFIX: &str = "cnspr-removed ";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Notice {
    /// The name of the member that signed the removal, as the sender knows it.
    pub by: String,
    pub removal: Removal,
}

/// The text of the notice for `removal`, signed by the member named `by`.
pub fn text(by: &str, removal: &Removal) -> String {
    let n = Notice {
        by: by.to_string(),
        removal: removal.clone(),
    };
    format!("{PREFIX}{}", serde_json::to_string(&n).unwrap_or_default())
}

/// The notice in a refusal's reason, if it is one.
pub fn parse(reason: &str) -> Option<Notice> {
    let json = reason.strip_prefix(PREFIX)?;
    if json.len() > 4096 {
        return None;
    }
    serde_json::from_str(json).ok()
}

/// Whether `n` really says that `me` was removed: its own ID, a valid signature, by a
/// member (`is_member`) or by the member that sent it (`from`).
pub fn checks_out(
    n: &Notice,
    me: &DeviceId,
    from: &DeviceId,
    is_member: impl Fn(&DeviceId) -> bool,
) -> bool {
    let signer = n.removal.signer_id();
    n.removal.id == *me && n.removal.well_formed() && (is_member(&signer) || signer == *from)
}

/// File in the state directory that keeps what a member said of this device's removal.
const FILE: &str = "removed.json";

/// Keeps `info` in the state directory (best effort: it is learnt again at the next dial).
pub fn save(state_dir: &std::path::Path, info: &crate::api::RemovedInfo) {
    let path = state_dir.join(FILE);
    if let Ok(json) = serde_json::to_vec(info) {
        if let Err(e) = std::fs::write(&path, json) {
            tracing::warn!(error = %e, path = %path.display(), "could not keep the removal notice");
        }
    }
}

/// What a member said of this device's removal, if it was kept (a file that does not
/// parse, or is oversized, counts as none).
pub fn load(state_dir: &std::path::Path) -> Option<crate::api::RemovedInfo> {
    let text = std::fs::read(state_dir.join(FILE)).ok()?;
    if text.len() > 4096 {
        return None;
    }
    let info: crate::api::RemovedInfo = serde_json::from_slice(&text).ok()?;
    transport::identity::validate_name(&info.by).ok()?;
    Some(info)
}
