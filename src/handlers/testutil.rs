//! Helpers for tests that run real processes.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use super::layout::HandlerSpec;

/// Writes an executable `/bin/sh` script at `dir/rel` and returns its spec.
pub(crate) fn script(dir: &Path, rel: &str, body: &str) -> HandlerSpec {
    let path = dir.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    HandlerSpec::from_rel(path, rel).unwrap()
}

/// Polls `cond` every 10 ms until it holds; panics with `what` after `limit`.
pub(crate) async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The process is gone: no /proc entry, or a zombie waiting for its reaper.
pub(crate) fn pid_gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// Reads a pid written by a script, waiting until the file is complete.
pub(crate) async fn read_pid(path: &Path) -> u32 {
    let mut pid = None;
    wait_for("a pid file", Duration::from_secs(10), || {
        // Complete once the newline is there (`echo` writes it all at once).
        pid = fs::read_to_string(path)
            .ok()
            .filter(|s| s.ends_with('\n'))
            .and_then(|s| s.trim().parse().ok());
        pid.is_some()
    })
    .await;
    pid.unwrap()
}

/// `len` bytes covering every byte value, not a repeating short pattern.
pub(crate) fn binary_body(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
