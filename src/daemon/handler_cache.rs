//! The handler directory, scanned again only when inotify reports a change in it.
//!
//! Watches are placed on every directory of the tree (symlinks followed) *before* the scan,
//! so a change made after the scan started is always seen by the next dispatch. Without
//! inotify (or past the kernel's watch limit) every dispatch scans the directory.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use inotify::{Inotify, WatchMask};
use tracing::{debug, warn};

use crate::handlers::{self, HandlerSet};

const MAX_DEPTH: usize = 16;
const MAX_DIRS: usize = 10_000;

pub struct HandlerCache {
    dir: PathBuf,
    state: Mutex<State>,
}

struct State {
    set: Arc<HandlerSet>,
    inotify: Option<Inotify>,
    valid: bool,
    warned: Vec<String>,
}

fn mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::ATTRIB
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
}

/// Every directory of the tree at `root`, symlinks followed, loops cut.
fn dirs(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((d, depth)) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&d) else {
            continue;
        };
        if !meta.is_dir() || !seen.insert((meta.dev(), meta.ino())) || out.len() >= MAX_DIRS {
            continue;
        }
        out.push(d.clone());
        if depth >= MAX_DEPTH {
            continue;
        }
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                let p = e.path();
                if std::fs::metadata(&p).map(|m| m.is_dir()).unwrap_or(false) {
                    stack.push((p, depth + 1));
                }
            }
        }
    }
    out
}

impl HandlerCache {
    pub fn new(dir: PathBuf) -> Self {
        HandlerCache {
            dir,
            state: Mutex::new(State {
                set: Arc::new(HandlerSet::default()),
                inotify: None,
                valid: false,
                warned: Vec::new(),
            }),
        }
    }

    /// The handlers as they are on disk now.
    pub fn current(&self) -> Arc<HandlerSet> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.valid {
            let mut buf = [0u8; 4096];
            let mut changed = false;
            if let Some(ino) = st.inotify.as_mut() {
                loop {
                    match ino.read_events(&mut buf) {
                        Ok(mut events) => {
                            if events.next().is_some() {
                                changed = true;
                            } else {
                                break;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            changed = true;
                            break;
                        }
                    }
                }
            }
            if !changed {
                return st.set.clone();
            }
        }
        // Watch first, then scan: nothing that changes after this point can be missed.
        let mut valid = true;
        let inotify = match Inotify::init() {
            Ok(i) => Some(i),
            Err(e) => {
                debug!(error = %e, "inotify unavailable; scanning handlers on every event");
                valid = false;
                None
            }
        };
        if let Some(ino) = &inotify {
            // The parent tells when the handler directory itself appears or goes.
            if let Some(parent) = self.dir.parent() {
                if ino.watches().add(parent, mask()).is_err() {
                    valid = false;
                }
            }
            for d in dirs(&self.dir) {
                if let Err(e) = ino.watches().add(&d, mask()) {
                    debug!(dir = %d.display(), error = %e, "cannot watch handler directory");
                    valid = false;
                    break;
                }
            }
        }
        let set = handlers::scan(&self.dir);
        for w in &set.warnings {
            if !st.warned.contains(w) {
                warn!("handlers: {w}");
            }
        }
        st.warned = set.warnings.clone();
        st.set = Arc::new(set);
        st.inotify = inotify;
        st.valid = valid;
        st.set.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(p: &Path, mode: u32) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn every_change_is_seen_at_the_next_lookup() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("handlers");
        let cache = HandlerCache::new(dir.clone());
        assert!(cache.current().handlers.is_empty());
        // The directory appears.
        script(&dir.join("a/b.sh"), 0o755);
        assert_eq!(cache.current().handlers.len(), 1);
        let same = cache.current();
        assert!(
            Arc::ptr_eq(&same, &cache.current()),
            "unchanged tree was scanned again"
        );
        // A new file in a new subdirectory.
        script(&dir.join("x/y/z.sh"), 0o755);
        assert_eq!(cache.current().handlers.len(), 2);
        // chmod -x.
        std::fs::set_permissions(dir.join("x/y/z.sh"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        assert_eq!(cache.current().handlers.len(), 1);
        // A rename.
        std::fs::rename(dir.join("a/b.sh"), dir.join("a/c.sh")).unwrap();
        assert_eq!(cache.current().handlers[0].tag, "a.c");
        // Removal of the whole directory.
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(cache.current().handlers.is_empty());
    }
}
