//! Memory hygiene of a long-running daemon (see `docs/performance.md`, "Idle memory").
//!
//! An idle daemon runs a small part of its code: timers, probes, the odd message. Start-up
//! (configuration, identity, store opening, clap, TLS set-up) touches far more, and the
//! kernel's fault-around maps 64 KiB of the executable around every page touched, so
//! after start-up most of the 12 MB of code stays mapped into the process although it
//! will not run again; a burst of work (a large stream, thousands of messages) does the
//! same and leaves free heap behind. Once the daemon is quiet again after start-up or
//! after such work (see [`Schedule`]), it drops its executable's code pages from its own
//! page tables (`madvise(MADV_DONTNEED)` on the read-only, executable, file-backed
//! mapping: nothing is lost, a page used again comes back from the page cache with a
//! minor fault), hands free heap back to the system (`malloc_trim`) and has the QUIC
//! sockets give back the pages of quinn's receive buffers (filled by a burst of GRO
//! batches, see `transport::endpoint::large`). The resident set is then what the daemon
//! really uses while idle.

use std::time::{Duration, Instant};

use tracing::debug;

/// How often the daemon looks at how much CPU it used (and trims if due, see
/// [`Schedule`]): a trim comes 1–2 intervals after the work ends.
pub const INTERVAL: Duration = Duration::from_secs(20);
/// The first check, once start-up is over.
pub const FIRST: Duration = Duration::from_secs(10);

/// How often on battery (each check wakes the device).
pub const INTERVAL_GENTLE: Duration = Duration::from_secs(600);

/// Share of a core under which an interval counts as quiet. An idle daemon uses about
/// 0.05 % (its heartbeats and probes), a burst of work tens of per cent.
const QUIET_SHARE: f64 = 0.01;

pub fn start(member: std::sync::Arc<super::core::Member>, endpoint: transport::Endpoint) {
    tokio::spawn(async move {
        // A timerfd wakes the process once at the deadline; a long tokio sleep also
        // wakes it at the timer wheel's level boundaries on the way.
        let mut alarm = transport::runtime::Alarm::new(Instant::now() + FIRST);
        let mut schedule = Schedule::default();
        let mut last = (Instant::now(), cpu_time());
        loop {
            alarm.wait().await;
            let now = (Instant::now(), cpu_time());
            let busy = match (last.1, now.1) {
                (Some(a), Some(b)) => busy(b.saturating_sub(a), now.0 - last.0),
                _ => false,
            };
            if schedule.check(busy, file_resident()) {
                let before = resident();
                let released = trim();
                // quinn's receive buffers: given back at the sockets' next receive.
                endpoint.release_receive_buffers();
                debug!(
                    mapped_kib = released / 1024,
                    before_kib = before.map(|b| b / 1024),
                    after_kib = resident().map(|b| b / 1024),
                    "trimmed idle memory"
                );
            }
            // The trim's own work belongs to no interval.
            last = (Instant::now(), cpu_time());
            let every = if member.lock().is_gentle() {
                INTERVAL_GENTLE
            } else {
                INTERVAL
            };
            alarm.reset(Instant::now() + every);
        }
    });
}

/// When to trim: once the daemon is quiet after work. Start-up is work; so is any
/// interval that used more than [`QUIET_SHARE`] of a core. An idle daemon is not trimmed
/// again and again: a trim reads /proc/self/smaps, and every page the idle daemon still
/// uses comes back with a fault, so trimming it every minute released nothing it did not
/// take back. Nor is a busy one: what it maps, it is using. Work too small to make an
/// interval busy (the first tombstone collection, a message now and then) can still map
/// code that idle paths never run: when the file-backed resident set has grown by
/// [`REGROWTH`] over what it settled at after the last trim, a quiet check trims again,
/// at most once every [`REGROWTH_CHECKS`] checks.
#[derive(Debug)]
struct Schedule {
    /// Whether there was work since the last trim.
    worked: bool,
    /// File-backed resident bytes at the first quiet check after the last trim (the idle
    /// paths have faulted their pages back by then).
    settled: Option<u64>,
    /// Checks since the last trim.
    since: u32,
}

/// Growth of the file-backed resident set over its settled size that trims again.
const REGROWTH: u64 = 1024 * 1024;
/// Fewest checks between two trims for growth (2 minutes at [`INTERVAL`]).
const REGROWTH_CHECKS: u32 = 6;

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            worked: true,
            settled: None,
            since: 0,
        }
    }
}

impl Schedule {
    /// Takes whether the interval that just ended was busy and the file-backed resident
    /// bytes now; returns whether to trim now.
    fn check(&mut self, busy: bool, file: Option<u64>) -> bool {
        self.since = self.since.saturating_add(1);
        if busy {
            self.worked = true;
            return false;
        }
        let grown = match (self.settled, file) {
            (Some(s), Some(f)) => f > s + REGROWTH && self.since > REGROWTH_CHECKS,
            (None, f) => {
                self.settled = f;
                false
            }
            _ => false,
        };
        if !(self.worked || grown) {
            return false;
        }
        *self = Schedule {
            worked: false,
            settled: None,
            since: 0,
        };
        true
    }
}

/// Whether `cpu` used over `wall` is more than [`QUIET_SHARE`] of a core.
fn busy(cpu: Duration, wall: Duration) -> bool {
    cpu.as_secs_f64() > wall.as_secs_f64() * QUIET_SHARE
}

/// CPU time of the whole process (all threads, user and system).
fn cpu_time() -> Option<Duration> {
    // SAFETY: getrusage writes into the zeroed struct it is given and nothing else.
    #[allow(unsafe_code)]
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        (libc::getrusage(libc::RUSAGE_SELF, &mut u) == 0).then_some(u)
    }?;
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    Some(tv(usage.ru_utime) + tv(usage.ru_stime))
}

/// Resident set size in bytes (from /proc/self/statm: cheap, unlike smaps).
fn resident() -> Option<u64> {
    statm_bytes(1)
}

/// The file-backed part of the resident set, in bytes (statm's "shared").
fn file_resident() -> Option<u64> {
    statm_bytes(2)
}

/// Field `n` of /proc/self/statm (counted in pages), in bytes.
fn statm_bytes(n: usize) -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(n)?.parse().ok()?;
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
    fn trims_once_after_start_up_and_once_after_each_burst_of_work() {
        let mut s = super::Schedule::default();
        let file = Some(6 << 20);
        assert!(!s.check(true, file), "still starting: busy");
        assert!(s.check(false, file), "quiet after start-up: trim");
        assert!(!s.check(false, file), "idle: nothing to trim again");
        assert!(!s.check(false, file));
        assert!(!s.check(true, file), "a burst: not while it lasts");
        assert!(!s.check(true, file));
        assert!(s.check(false, file), "quiet after the burst: trim");
        assert!(!s.check(false, file));
        assert!(!s.check(false, None), "no reading: idle as before");
    }

    #[test]
    fn trims_again_when_quiet_work_mapped_code_but_not_often() {
        use super::{REGROWTH, REGROWTH_CHECKS};
        let mut s = super::Schedule::default();
        let settled = 6u64 << 20;
        assert!(s.check(false, Some(settled)), "after start-up");
        assert!(!s.check(false, Some(settled)), "settles");
        // Idle paths come and go within the margin: never a trim.
        for _ in 0..100 {
            assert!(!s.check(false, Some(settled + REGROWTH)));
        }
        // Small work mapped more code: one trim, then it settles again.
        assert!(s.check(false, Some(settled + REGROWTH + 4096)));
        assert!(!s.check(false, Some(settled)), "settles after the trim");
        // Grown again at once: not before REGROWTH_CHECKS checks since the trim.
        let mut n = 1;
        while !s.check(false, Some(settled + 2 * REGROWTH)) {
            n += 1;
            assert!(n <= REGROWTH_CHECKS + 1, "never trimmed again");
        }
        assert_eq!(n, REGROWTH_CHECKS, "checks until the growth trim");
    }

    #[test]
    fn an_interval_is_busy_above_one_percent_of_a_core() {
        use std::time::Duration;
        let wall = Duration::from_secs(20);
        // An idle daemon: 0.05 % of a core.
        assert!(!super::busy(Duration::from_millis(10), wall));
        assert!(!super::busy(Duration::from_millis(200), wall));
        assert!(super::busy(Duration::from_millis(201), wall));
        assert!(super::busy(Duration::from_secs(20), wall));
        // The process's CPU time moves while it computes.
        let a = super::cpu_time().expect("getrusage");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut x = 0u64;
        while super::cpu_time().expect("getrusage") <= a {
            assert!(std::time::Instant::now() < deadline, "CPU time never moved");
            for i in 0..100_000u64 {
                x = x.wrapping_mul(31).wrapping_add(std::hint::black_box(i));
            }
        }
        std::hint::black_box(x);
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
