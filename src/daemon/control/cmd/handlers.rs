//! `handlers`: the handler directory as the daemon reads it.

use crate::api::HandlersResult;
use crate::daemon::context::Daemon;

pub fn list(d: &Daemon) -> HandlersResult {
    crate::handlers::listing::listing(&d.handlers_dir)
}
