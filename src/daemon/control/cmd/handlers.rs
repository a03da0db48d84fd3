//! `handlers`: the handler directory as the daemon reads it.

use crate::api::{HandlerInfo, HandlersResult};
use crate::daemon::context::Daemon;
use crate::handlers;

pub fn list(d: &Daemon) -> HandlersResult {
    let set = handlers::scan(&d.handlers_dir);
    HandlersResult {
        dir: d.handlers_dir.display().to_string(),
        handlers: set
            .handlers
            .iter()
            .map(|h| HandlerInfo {
                path: h.rel.clone(),
                matches: h.describe(),
                tag: h.tag.clone(),
                full_tag: h.full_tag.clone(),
                from: h.peer.as_ref().map(|p| match p {
                    handlers::PeerFilter::Name(n) => n.clone(),
                    handlers::PeerFilter::IdPrefix(p) => format!("[{p}]"),
                }),
            })
            .collect(),
        warnings: set.warnings.clone(),
    }
}
