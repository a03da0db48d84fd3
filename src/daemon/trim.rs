//! Memory hygiene of a long-running daemon (see `docs/performance.md`, "Idle memory").
//!
//! An idle daemon runs a small part of its code: timers, probes, the odd message. Start-up
//! (configuration, identity, store opening, clap, TLS set-up) touches far more, and the
//! kernel's fault-around maps 64 KiB of the executable around every page touched, so
//! after start-up most of the 12 MB of code stays mapped into the process although it
//! will not run again. After start-up, and then whenever a check every [`INTERVAL`]
//! finds the resident set grown by [`REGROWTH`] since the last time (see [`due`]), the
//! daemon drops its executable's code pages from its own page tables (`madvise(MADV_DONTNEED)` on the read-only, executable,
//! file-backed mapping: nothing is lost, a page used again comes back from the page cache
//! with a minor fault) and hands free heap back to the system (`malloc_trim`). The
//! resident set is then what the daemon really uses while idle.

use std::time::Duration;

use tracing::debug;

/// How often the resident set is checked (and memory trimmed if it grew, see [`due`]).
pub const INTERVAL: Duration = Duration::from_secs(60);
/// The first trim, once start-up is over.
pub const FIRST: Duration = Duration::from_secs(10);

/// Growth of the resident set since the last trim that makes a check trim again: more
/// than the idle paths take back after a trim (about 1 MiB).
pub const REGROWTH: u64 = 2 * 1024 * 1024;

/// How often on battery (each check wakes the device).
pub const INTERVAL_GENTLE: Duration = Duration::from_secs(600);

pub fn start(member: std::sync::Arc<super::core::Member>) {
    tokio::spawn(async move {
        // A timerfd wakes the process once at the deadline; a long tokio sleep also
        // wakes it at the timer wheel's level boundaries on the way.
        let mut alarm = transport::runtime::Alarm::new(std::time::Instant::now() + FIRST);
        let mut after_trim: Option<u64> = None;
        loop {
            alarm.wait().await;
            if due(after_trim, resident()) {
                let released = trim();
                after_trim = resident();
                debug!(mapped_kib = released / 1024, "trimmed idle memory");
            }
            let every = if member.lock().is_gentle() {
                INTERVAL_GENTLE
            } else {
                INTERVAL
            };
            alarm.reset(std::time::Instant::now() + every);
        }
    });
}

/// Whether a check trims: the first one does, then one that finds the resident set grown
/// by [`REGROWTH`] since the last trim (a burst of work mapped code or grew the heap). A
/// trim reads /proc/self/smaps, and every page an idle daemon still uses comes back with
/// a fault: trimming an idle daemon every minute released nothing it did not take back.
fn due(after_trim: Option<u64>, rss: Option<u64>) -> bool {
    match (after_trim, rss) {
        (Some(base), Some(r)) => r > base + REGROWTH,
        _ => true,
    }
}

/// Resident set size in bytes (from /proc/self/statm: cheap, unlike smaps).
fn resident() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    #[allow(unsafe_code)]
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// Mappings whose pages can be dropped: private, not writable, backed by a regular file
/// (the executable's code and read-only data, the shared libraries' code), and holding no
/// anonymous (copy-on-write) page. `(start, length)` of each, from /proc/self/smaps.
fn clean_file_mappings() -> Vec<(usize, usize)> {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let Some(first) = f.next() else { continue };
        if let Some((a, b)) = first
            .split_once('-')
            .filter(|(a, _)| a.bytes().all(|c| c.is_ascii_hexdigit()))
        {
            // "start-end perms offset dev inode path"
            current = None;
            let perms = f.next().unwrap_or("");
            let path = f.nth(3).unwrap_or("");
            let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            else {
                continue;
            };
            let private_read_only = perms.len() == 4 && &perms[1..2] == "-" && perms.ends_with('p');
            if private_read_only && path.starts_with('/') && b > a {
                current = Some((a, b - a));
            }
        } else if first == "Anonymous:" {
            if let Some(m) = current.take() {
                if f.next() == Some("0") {
                    out.push(m);
                }
            }
        }
    }
    out
}

/// Drops the clean file-backed pages from this process and trims the heap; returns the
/// bytes of mappings released.
pub fn trim() -> usize {
    let mut released = 0;
    for (start, len) in clean_file_mappings() {
        // SAFETY: the range is a private mapping of a regular file that is not writable and
        // has no anonymous page (from /proc/self/smaps): every page in it holds exactly the
        // file's bytes. MADV_RANDOM stops fault-around (only pages really used come back);
        // MADV_DONTNEED unmaps the pages, and a later access maps the same bytes again
        // from the file. Neither changes what any address reads.
        #[allow(unsafe_code)]
        let rc = unsafe {
            let addr = start as *mut libc::c_void;
            libc::madvise(addr, len, libc::MADV_RANDOM);
            libc::madvise(addr, len, libc::MADV_DONTNEED)
        };
        if rc == 0 {
            released += len;
        }
    }
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: malloc_trim only returns free heap memory to the system.
        #[allow(unsafe_code)]
        unsafe {
            libc::malloc_trim(0);
        }
    }
    released
}

#[cfg(test)]
mod tests {
    /// Read-only data of the executable (`.rodata`): must read the same after a trim.
    static TABLE: [u32; 4096] = {
        let mut t = [0u32; 4096];
        let mut i = 0;
        while i < t.len() {
            t[i] = (i as u32).wrapping_mul(2_654_435_761);
            i += 1;
        }
        t
    };

    fn checksum() -> u64 {
        TABLE
            .iter()
            .map(|v| u64::from(std::hint::black_box(*v)))
            .sum()
    }

    #[test]
    fn trims_first_then_only_when_memory_grew_since() {
        use super::due;
        let mib = 1024 * 1024;
        assert!(due(None, Some(20 * mib)), "the first check trims");
        assert!(
            !due(Some(8 * mib), Some(9 * mib)),
            "idle paths mapped again"
        );
        assert!(!due(Some(8 * mib), Some(10 * mib)));
        assert!(due(Some(8 * mib), Some(10 * mib + 1)), "a burst: trim");
        assert!(due(Some(8 * mib), None), "no measurement: trim as before");
        assert!(super::resident().is_some_and(|r| r > 0));
    }

    #[test]
    fn trims_clean_file_mappings_and_everything_reads_the_same() {
        let maps = super::clean_file_mappings();
        let here = trims_clean_file_mappings_and_everything_reads_the_same as *const () as usize;
        assert!(
            maps.iter().any(|(s, l)| (*s..s + l).contains(&here)),
            "this function's code is in a clean file mapping"
        );
        let before = checksum();
        assert!(super::trim() > 0);
        // Code keeps running and read-only data reads the same after their pages went.
        assert_eq!(checksum(), before);
        assert!(super::trim() > 0);
        assert_eq!(checksum(), before);
    }
}
