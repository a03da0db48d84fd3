//! The handler directory as `cnspr handlers` shows it (the daemon's answer, and the
//! CLI's own reading when no daemon runs).

use std::path::Path;

use crate::api::{HandlerInfo, HandlersResult};

use super::{scan, PeerFilter};

/// What `dir` holds: each handler with what it matches, and the warnings of the scan.
pub fn listing(dir: &Path) -> HandlersResult {
    let set = scan(dir);
    HandlersResult {
        dir: dir.display().to_string(),
        handlers: set
            .handlers
            .iter()
            .map(|h| HandlerInfo {
                path: h.rel.clone(),
                matches: h.describe(),
                tag: h.tag.clone(),
                full_tag: h.full_tag.clone(),
                from: h.peer.as_ref().map(|p| match p {
                    PeerFilter::Name(n) => n.clone(),
                    PeerFilter::IdPrefix(p) => format!("[{p}]"),
                }),
            })
            .collect(),
        warnings: set.warnings.clone(),
    }
}
