//! Running one handler: a process group with the body on stdin, stdout captured
//! up to a limit, stderr logged line by line, and a deadline after which the
//! whole group gets SIGKILL.

use std::io;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tokio::time::{sleep_until, timeout, Instant};

use super::env::HANDLER_VARS;
use super::layout::HandlerSpec;

/// What one handler did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerOutcome {
    /// The handler's `rel` path.
    pub handler: String,
    /// `None` when killed by a signal, timed out, or not started.
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    /// The first `max_stdout` bytes of its standard output.
    pub stdout: Vec<u8>,
    /// Whether stdout went past `max_stdout`.
    pub truncated: bool,
    /// Why it could not be started or waited for.
    pub error: Option<String>,
}

impl HandlerOutcome {
    /// Exited with status 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// After the handler exits, how long its output pipes may stay open (held by
/// a process it left in the background) before we stop reading them.
pub(crate) const IO_GRACE: Duration = Duration::from_millis(500);
/// How long to wait for a killed group leader to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Longest stderr line logged; the rest of the line is replaced by "[...]".
pub(crate) const STDERR_MAX_LINE: usize = 4096;
/// Most stderr lines logged per run; the rest are read and dropped.
pub(crate) const STDERR_MAX_LINES: usize = 1000;

/// A spawned handler and its process group. Dropping it while the leader is
/// not yet reaped kills the whole group (then `kill_on_drop` the leader).
struct Proc {
    child: Child,
    /// The group ID (= the leader's pid) while the leader is unreaped, so the
    /// ID cannot have been reused by an unrelated process.
    pgid: Option<i32>,
}

impl Proc {
    fn kill_group(&mut self) {
        if let Some(pgid) = self.pgid {
            kill_group(pgid);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_group();
    }
}

fn kill_group(pgid: i32) {
    // Never 0 (our own group) or 1/-1 (every process we may signal).
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill(2) only sends a signal and touches no memory of ours. The
    // group is the handler's own (`process_group(0)`) and its leader is not yet
    // reaped, so the ID still names that group.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(-pgid, libc::SIGKILL) };
    if rc != 0 {
        tracing::debug!(pgid, error = %io::Error::last_os_error(), "kill of handler process group");
    }
}

/// Runs `spec` to completion or until `limit` and reports what happened.
pub(crate) async fn run_one(
    spec: HandlerSpec,
    env: &[(String, String)],
    body: Bytes,
    limit: Duration,
    max_stdout: usize,
) -> HandlerOutcome {
    let rel = spec.rel.clone();
    let mut outcome = HandlerOutcome {
        handler: rel.clone(),
        exit_code: None,
        timed_out: false,
        stdout: Vec::new(),
        truncated: false,
        error: None,
    };
    let started = Instant::now();
    let mut proc = match spawn(&spec.path, env).await {
        Ok(proc) => proc,
        Err(e) => {
            tracing::warn!(handler = %rel, "cannot start handler: {e}");
            outcome.error = Some(format!("cannot start {}: {e}", spec.path.display()));
            return outcome;
        }
    };
    let stdin = proc.child.stdin.take();
    let stdout = proc.child.stdout.take();
    let stderr = proc.child.stderr.take();
    let deadline = started + limit;
    let (mut captured, mut truncated) = (Vec::new(), false);

    let status: io::Result<ExitStatus> = {
        let io = async {
            tokio::join!(
                write_body(stdin, body, &rel),
                read_capped(stdout, max_stdout, &mut captured, &mut truncated),
                log_stderr(stderr, &rel),
            )
        };
        tokio::pin!(io);
        let mut io_done = false;
        let sleep = sleep_until(deadline);
        tokio::pin!(sleep);
        let exited = loop {
            tokio::select! {
                st = proc.child.wait() => break Some(st),
                _ = &mut io, if !io_done => io_done = true,
                _ = &mut sleep => break None,
            }
        };
        let status = match exited {
            Some(st) => {
                proc.pgid = None;
                st
            }
            None => {
                outcome.timed_out = true;
                tracing::warn!(handler = %rel, "handler timed out after {limit:?}; killing its process group");
                proc.kill_group();
                let st = timeout(KILL_WAIT, proc.child.wait()).await;
                let st =
                    st.unwrap_or_else(|_| Err(io::Error::other("killed handler did not exit")));
                if st.is_ok() {
                    proc.pgid = None;
                }
                st
            }
        };
        if !io_done && timeout(IO_GRACE, &mut io).await.is_err() {
            tracing::debug!(handler = %rel, "output still open after exit (background process?); stopped reading");
        }
        status
    };

    outcome.stdout = captured;
    outcome.truncated = truncated;
    match status {
        Ok(st) if !outcome.timed_out => outcome.exit_code = st.code(),
        Ok(_) => {}
        Err(e) => outcome.error = Some(format!("waiting for handler: {e}")),
    }
    tracing::debug!(
        handler = %rel,
        exit_code = ?outcome.exit_code,
        timed_out = outcome.timed_out,
        elapsed = ?started.elapsed(),
        "handler finished"
    );
    outcome
}

async fn spawn(path: &std::path::Path, env: &[(String, String)]) -> io::Result<Proc> {
    let path: PathBuf = std::path::absolute(path)?;
    let dir = path.parent().unwrap_or(std::path::Path::new("/"));
    let mut cmd = Command::new(&path);
    cmd.current_dir(dir)
        .process_group(0)
        .kill_on_drop(true)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for name in HANDLER_VARS {
        cmd.env_remove(name);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    // ETXTBSY: the file is open for writing somewhere, typically because a
    // fork in another thread inherited the descriptor of a script being
    // written. It clears within milliseconds, so retry briefly.
    let mut attempt = 0;
    let child = loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < 10 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(10 * attempt)).await;
            }
            other => break other?,
        }
    };
    let pgid = child.id().and_then(|id| i32::try_from(id).ok());
    Ok(Proc { child, pgid })
}

/// Writes the body; a handler that does not read it (EPIPE) is fine.
async fn write_body(stdin: Option<ChildStdin>, body: Bytes, rel: &str) {
    let Some(mut stdin) = stdin else { return };
    if let Err(e) = stdin.write_all(&body).await {
        if e.kind() != io::ErrorKind::BrokenPipe {
            tracing::debug!(handler = %rel, "writing handler stdin: {e}");
        }
    }
    // Dropping `stdin` closes it: the handler sees end of file.
}

/// Reads `r` to the end, keeping the first `max` bytes in `out`.
async fn read_capped(
    r: Option<impl AsyncRead + Unpin>,
    max: usize,
    out: &mut Vec<u8>,
    truncated: &mut bool,
) {
    let Some(mut r) = r else { return };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let keep = n.min(max.saturating_sub(out.len()));
        out.extend_from_slice(&buf[..keep]);
        if keep < n {
            *truncated = true;
        }
    }
}

/// Logs `r` line by line through tracing, bounded in line length and count.
async fn log_stderr(r: Option<impl AsyncRead + Unpin>, rel: &str) {
    let Some(mut r) = r else { return };
    let mut log = LineLog {
        rel,
        line: Vec::new(),
        overlong: false,
        lines: 0,
    };
    let mut buf = vec![0u8; 8 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            log.byte(b);
        }
    }
    if !log.line.is_empty() || log.overlong {
        log.emit();
    }
}

struct LineLog<'a> {
    rel: &'a str,
    line: Vec<u8>,
    overlong: bool,
    lines: usize,
}

impl LineLog<'_> {
    fn byte(&mut self, b: u8) {
        if b == b'\n' {
            self.emit();
        } else if self.line.len() < STDERR_MAX_LINE {
            self.line.push(b);
        } else {
            self.overlong = true;
        }
    }

    fn emit(&mut self) {
        self.lines += 1;
        if self.lines <= STDERR_MAX_LINES {
            let text = String::from_utf8_lossy(&self.line);
            let text = text.trim_end_matches('\r');
            let more = if self.overlong { " [...]" } else { "" };
            tracing::info!(handler = %self.rel, "stderr: {text}{more}");
        } else if self.lines == STDERR_MAX_LINES + 1 {
            tracing::warn!(handler = %self.rel, "more than {STDERR_MAX_LINES} stderr lines; the rest is not logged");
        }
        self.line.clear();
        self.overlong = false;
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{binary_body, pid_gone, read_pid, script, wait_for};
    use super::*;
    use std::fs;

    const MIB: usize = 1024 * 1024;
    const LONG: Duration = Duration::from_secs(60);

    async fn run(spec: &HandlerSpec, body: &[u8], limit: Duration, max: usize) -> HandlerOutcome {
        let body = Bytes::copy_from_slice(body);
        run_one(spec.clone(), &[], body, limit, max).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn body_on_stdin_stdout_and_exit_code() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = script(tmp.path(), "h/x.sh", "cat > body.bin\necho ok\nexit 3");
        let body = binary_body(16 * MIB);
        let out = run(&spec, &body, LONG, MIB).await;
        assert_eq!(out.exit_code, Some(3), "{out:?}");
        assert_eq!(out.stdout, b"ok\n");
        assert!(!out.timed_out && !out.truncated && out.error.is_none());
        assert!(fs::read(tmp.path().join("h/body.bin")).unwrap() == body);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn handler_ignoring_a_large_body_completes() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = script(tmp.path(), "x", "echo hi");
        let out = run(&spec, &binary_body(16 * MIB), LONG, MIB).await;
        assert_eq!(
            (out.exit_code, out.stdout.as_slice()),
            (Some(0), &b"hi\n"[..])
        );
        assert!(out.error.is_none() && !out.timed_out);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn echoing_a_large_body_is_capped_without_deadlock() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = script(tmp.path(), "x", "cat");
        let body = binary_body(16 * MIB);
        let out = run(&spec, &body, LONG, MIB).await;
        assert_eq!(out.exit_code, Some(0));
        assert!(out.truncated);
        assert!(out.stdout == body[..MIB]);
    }

    #[tokio::test]
    async fn own_directory_and_process_group() {
        let tmp = tempfile::tempdir().unwrap();
        let body = "pwd -P\nread pid comm state ppid pgrp rest < /proc/$$/stat\necho $pgrp $$";
        let spec = script(tmp.path(), "d/e/x", body);
        let out = run(&spec, b"", LONG, MIB).await;
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines();
        let dir = tmp.path().join("d/e").canonicalize().unwrap();
        assert_eq!(lines.next(), Some(dir.to_str().unwrap()));
        let ids: Vec<&str> = lines.next().unwrap().split(' ').collect();
        assert_eq!(ids[0], ids[1], "handler leads its own process group");
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = script(
            tmp.path(),
            "hang",
            "sleep 1000 &\necho $! > child.pid\necho $$ > leader.pid\nsleep 1000",
        );
        let started = Instant::now();
        let out = run(&spec, b"", Duration::from_secs(2), MIB).await;
        assert!(out.timed_out, "{out:?}");
        assert_eq!(out.exit_code, None);
        assert!(started.elapsed() < Duration::from_secs(15));
        let child = read_pid(&tmp.path().join("child.pid")).await;
        let leader = read_pid(&tmp.path().join("leader.pid")).await;
        wait_for("the leader to die", Duration::from_secs(10), || {
            pid_gone(leader)
        })
        .await;
        wait_for(
            "the background child to die",
            Duration::from_secs(10),
            || pid_gone(child),
        )
        .await;
    }

    #[tokio::test]
    async fn background_process_left_after_exit_does_not_block() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = script(
            tmp.path(),
            "bg",
            "sleep 1000 &\necho $! > child.pid\necho done",
        );
        let started = Instant::now();
        let out = run(&spec, b"", LONG, MIB).await;
        let child = read_pid(&tmp.path().join("child.pid")).await;
        let alive = !pid_gone(child);
        let _ = std::process::Command::new("kill")
            .args(["-9", &child.to_string()])
            .status();
        assert_eq!(
            (out.exit_code, out.stdout.as_slice()),
            (Some(0), &b"done\n"[..])
        );
        assert!(!out.timed_out);
        assert!(started.elapsed() < IO_GRACE + Duration::from_secs(10));
        assert!(
            alive,
            "a handler that exits normally keeps its background jobs"
        );
    }

    #[tokio::test]
    async fn spawn_failures_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let mut spec = script(tmp.path(), "x", "true");
        spec.path = tmp.path().join("missing");
        let out = run(&spec, b"", LONG, MIB).await;
        assert_eq!(out.exit_code, None);
        assert!(
            out.error.as_deref().unwrap().contains("cannot start"),
            "{out:?}"
        );
        // No "#!" line: exec fails with ENOEXEC (it is not run by a shell).
        let spec = script(tmp.path(), "noshebang", "");
        fs::write(&spec.path, "echo hi\n").unwrap();
        let out = run(&spec, b"", LONG, MIB).await;
        assert!(out.error.is_some(), "{out:?}");
    }

    #[tokio::test]
    async fn killed_by_signal_has_no_exit_code() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = script(tmp.path(), "x", "echo partial\nkill -9 $$");
        let out = run(&spec, b"", LONG, MIB).await;
        assert_eq!(out.exit_code, None);
        assert!(!out.timed_out && out.error.is_none());
        assert_eq!(out.stdout, b"partial\n");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stderr_flood_is_drained() {
        let tmp = tempfile::tempdir().unwrap();
        let body = "i=0\nwhile [ $i -lt 3000 ]; do echo line $i >&2; i=$((i+1)); done\n\
                    head -c 100000 /dev/zero | tr '\\0' x >&2\necho ok";
        let spec = script(tmp.path(), "x", body);
        let out = run(&spec, b"", LONG, MIB).await;
        assert_eq!(
            (out.exit_code, out.stdout.as_slice()),
            (Some(0), &b"ok\n"[..])
        );
    }

    #[test]
    fn stderr_lines_are_bounded() {
        let mut log = LineLog {
            rel: "x",
            line: Vec::new(),
            overlong: false,
            lines: 0,
        };
        for _ in 0..STDERR_MAX_LINE * 3 {
            log.byte(b'a');
        }
        assert_eq!(log.line.len(), STDERR_MAX_LINE);
        assert!(log.overlong);
        log.byte(b'\n');
        assert!(log.line.is_empty() && !log.overlong);
        assert_eq!(log.lines, 1);
    }
}
