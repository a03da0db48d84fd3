//! Client side of dedicated streams: `cnspr connect`, `cnspr listen`, `cnspr expose`.

use std::io::{BufReader, IsTerminal, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command as Process, Stdio};
use std::time::Instant;

use serde_json::Value;

use crate::api::Request;
use crate::cli::Global;
use crate::client::Client;
use crate::fdpass;
use crate::output::print_json;
use crate::output::table;
use crate::paths::Paths;

const BUF: usize = 256 * 1024;

/// Copies until EOF; returns the byte count.
fn copy(r: &mut impl Read, w: &mut impl Write, mut tick: impl FnMut(u64)) -> std::io::Result<u64> {
    let mut buf = vec![0u8; BUF];
    let mut n = 0u64;
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..k])?;
        // Standard output is line-buffered: pass every chunk on at once.
        w.flush()?;
        n += k as u64;
        tick(n);
    }
}

/// How the daemon saw the stream end ("closed", "error: ..."; "open" if still running
/// after `wait_ms`).
fn stream_status(paths: &Paths, token: &str, wait_ms: u64) -> String {
    Client::connect(&paths.socket)
        .and_then(|mut c| {
            c.request(&Request::StreamStatus {
                stream: token.to_string(),
                wait_ms: Some(wait_ms),
            })
        })
        .ok()
        .and_then(|v| v["status"].as_str().map(String::from))
        .unwrap_or_else(|| "error: the daemon went away".into())
}

fn mib(n: u64) -> f64 {
    n as f64 / (1024.0 * 1024.0)
}

/// Pipes standard input/output through an open stream; exits non-zero if it broke.
fn pipe_stdio(
    r: BufReader<UnixStream>,
    mut w: UnixStream,
    paths: &Paths,
    token: &str,
    progress: bool,
) -> anyhow::Result<i32> {
    let upload = std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let res = copy(&mut stdin, &mut w, |_| {});
        let _ = w.shutdown(std::net::Shutdown::Write);
        res
    });
    let show = progress && !std::io::stdout().is_terminal();
    let start = Instant::now();
    let mut last = Instant::now();
    let mut r = r;
    let mut out = std::io::stdout().lock();
    let got = copy(&mut r, &mut out, |n| {
        if show && last.elapsed().as_secs_f64() >= 1.0 {
            last = Instant::now();
            eprint!(
                "\rcnspr: {:.1} MiB received, {:.1} MiB/s   ",
                mib(n),
                mib(n) / start.elapsed().as_secs_f64()
            );
        }
    });
    let _ = out.flush();
    let broken = |why: &str| -> ! {
        eprintln!(
            "cnspr: stream broken: {}",
            why.trim_start_matches("error: ")
        );
        std::process::exit(1)
    };
    if let Err(e) = &got {
        broken(&e.to_string());
    }
    // The far side finished sending. A broken stream is reported at once, even while
    // standard input stays open.
    let status = stream_status(paths, token, 500);
    if status.starts_with("error") {
        broken(&status);
    }
    let sent = upload
        .join()
        .map_err(|_| anyhow::anyhow!("stdin thread panicked"))?;
    let status = stream_status(paths, token, 2000);
    if status.starts_with("error") {
        broken(&status);
    }
    if let Err(e) = &sent {
        broken(&format!("sending failed: {e}"));
    }
    if show {
        let got = got.unwrap_or(0);
        eprintln!(
            "\rcnspr: {:.1} MiB received, {:.1} MiB sent, {:.1} MiB/s        ",
            mib(got),
            mib(*sent.as_ref().unwrap_or(&0)),
            mib(got) / start.elapsed().as_secs_f64().max(1e-9)
        );
    }
    Ok(0)
}

/// Whether to hand standard input and output to the daemon (`fds`): when one of them
/// is a pipe (the daemon then moves its bytes itself) and no progress is to be counted.
fn pass_stdio(progress: bool) -> bool {
    let show = progress && !std::io::stdout().is_terminal();
    !show && (fdpass::is_pipe(0) || fdpass::is_pipe(1))
}

/// The stream's ends as the daemon takes them: standard input and output where they are
/// pipes; for one that is not (a terminal, a file, `/dev/null`), a pipe of ours with a
/// thread copying between it and the standard descriptor.
struct Passed {
    input: OwnedFd,
    output: OwnedFd,
    /// Copies the daemon's output pipe to standard output (not a pipe); joined at the end.
    out_copy: Option<std::thread::JoinHandle<()>>,
    /// Standard input and output are given to the daemon and closed here once sent.
    hand_over: Vec<RawFd>,
}

fn stdio_ends() -> anyhow::Result<Passed> {
    let mut hand_over = Vec::new();
    let input = if fdpass::is_pipe(0) {
        hand_over.push(0);
        std::io::stdin().as_fd().try_clone_to_owned()?
    } else {
        let (r, w) = fdpass::pipe()?;
        std::thread::spawn(move || {
            let mut w = std::fs::File::from(w);
            let _ = copy(&mut std::io::stdin().lock(), &mut w, |_| {});
        });
        r
    };
    let (output, out_copy) = if fdpass::is_pipe(1) {
        hand_over.push(1);
        (std::io::stdout().as_fd().try_clone_to_owned()?, None)
    } else {
        let (r, w) = fdpass::pipe()?;
        let t = std::thread::spawn(move || {
            let mut r = std::fs::File::from(r);
            let _ = copy(&mut r, &mut std::io::stdout().lock(), |_| {});
        });
        (w, Some(t))
    };
    Ok(Passed {
        input,
        output,
        out_copy,
        hand_over,
    })
}

/// The stream runs in the daemon between the pipes passed to it: hand them over, let go
/// of our copies (so that the daemon closing them is an end of file for the other
/// processes on them), wait for the daemon to close the connection, and tell how the
/// stream ended.
fn pipe_passed(
    r: BufReader<UnixStream>,
    w: UnixStream,
    paths: &Paths,
    token: &str,
) -> anyhow::Result<i32> {
    let ends = stdio_ends()?;
    fdpass::send(
        w.as_raw_fd(),
        &[ends.input.as_raw_fd(), ends.output.as_raw_fd()],
    )
    .map_err(|e| anyhow::anyhow!("passing standard input and output to the daemon: {e}"))?;
    drop((ends.input, ends.output));
    for fd in ends.hand_over {
        fdpass::close_to_null(fd)?;
    }
    // The daemon closes the connection when the stream ended (or never opened).
    let mut r = r;
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    let status = stream_status(paths, token, 2000);
    if let Some(t) = ends.out_copy {
        let _ = t.join();
    }
    if status.starts_with("error") || status == "open" {
        eprintln!(
            "cnspr: stream broken: {}",
            status.trim_start_matches("error: ")
        );
        return Ok(1);
    }
    Ok(0)
}

/// `cnspr connect`: `req` builds the request (`true`: standard input and output are passed
/// to the daemon).
pub fn connect(
    mut c: Client,
    paths: &Paths,
    progress: bool,
    req: impl FnOnce(bool) -> Request,
) -> anyhow::Result<i32> {
    let fds = pass_stdio(progress);
    let v = c.request(&req(fds))?;
    let token = v["stream"].as_str().unwrap_or_default().to_string();
    let (r, w) = c.into_raw();
    if fds {
        return pipe_passed(r, w, paths, &token);
    }
    pipe_stdio(r, w, paths, &token, progress)
}

/// The command `cmd` for one accepted stream, with the stream's details in its
/// environment.
fn handler(cmd: &str, ev: &Value, stdin: Stdio, stdout: Stdio) -> std::io::Result<Child> {
    Process::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("CNSPR_SERVICE", ev["service"].as_str().unwrap_or(""))
        .env("CNSPR_PEER", ev["peer"]["name"].as_str().unwrap_or(""))
        .env("CNSPR_PEER_ID", ev["peer"]["id"].as_str().unwrap_or(""))
        .stdin(stdin)
        .stdout(stdout)
        .spawn()
}

/// Runs `cmd` on one accepted stream; returns its exit code. `passed`: the stream was
/// accepted with `fds`, so the command's standard input and output are pipes whose other
/// ends go to the daemon, which moves the bytes itself.
fn serve_with(
    cmd: &str,
    r: BufReader<UnixStream>,
    w: UnixStream,
    ev: &Value,
    passed: bool,
) -> anyhow::Result<i32> {
    if passed {
        let (to_cmd_r, to_cmd_w) = fdpass::pipe()?;
        let (from_cmd_r, from_cmd_w) = fdpass::pipe()?;
        fdpass::send(
            w.as_raw_fd(),
            &[from_cmd_r.as_raw_fd(), to_cmd_w.as_raw_fd()],
        )?;
        drop((from_cmd_r, to_cmd_w));
        let mut child = handler(cmd, ev, to_cmd_r.into(), from_cmd_w.into())?;
        let status = child.wait()?;
        // The daemon closes the connection once the stream ended.
        let mut r = r;
        let _ = r.read_to_end(&mut Vec::new());
        return Ok(status.code().unwrap_or(1));
    }
    let mut child = handler(cmd, ev, Stdio::piped(), Stdio::piped())?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdin"))?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut r = r;
    let down = std::thread::spawn(move || {
        let _ = copy(&mut r, &mut stdin, |_| {});
    });
    let mut w2 = w;
    let up = std::thread::spawn(move || {
        let _ = copy(&mut stdout, &mut w2, |_| {});
        let _ = w2.shutdown(std::net::Shutdown::Write);
    });
    let status = child.wait()?;
    let _ = up.join();
    let _ = down.join();
    Ok(status.code().unwrap_or(1))
}

/// `cnspr listen`: without `exec`, one stream on standard input/output; with it, each
/// stream with a process of its own until interrupted, or only the first with `once`
/// (then CMD's exit status is the command's). `keep` is what `exec` does anyway.
pub fn listen(
    mut c: Client,
    paths: &Paths,
    service: &str,
    exec: Option<String>,
    keep: bool,
    once: bool,
) -> anyhow::Result<i32> {
    if keep && exec.is_none() {
        anyhow::bail!("--keep serves many streams and needs --exec CMD to run for each");
    }
    c.request(&Request::Listen {
        service: service.to_string(),
    })?;
    // Say what it waits for (on standard error: standard output is the stream's).
    eprintln!(
        "listening for streams to {service:?} (cnspr connect PEER {service}); Ctrl-C to stop"
    );
    let mut workers = Vec::new();
    loop {
        let Some(ev) = c.next_line()? else {
            anyhow::bail!("the daemon closed the listening connection");
        };
        if ev["event"] != "incoming" {
            continue;
        }
        let offered = ev["stream"].as_str().unwrap_or_default().to_string();
        let mut a = Client::connect(&paths.socket)?;
        // The accepted stream has a token of its own (the offer's is spent): that is
        // the one `stream_status` knows, to tell why the stream ended.
        // A command gets pipes whose other ends go to the daemon; standard input and
        // output go to it when either is a pipe.
        let fds = exec.is_some() || pass_stdio(false);
        let token = match a.request(&Request::Accept {
            stream: offered.to_string(),
            fds,
        }) {
            Ok(v) => v["stream"].as_str().unwrap_or_default().to_string(),
            Err(e) => {
                eprintln!("cnspr: could not accept a stream: {e}");
                continue;
            }
        };
        let (r, w) = a.into_raw();
        match &exec {
            None if fds => return pipe_passed(r, w, paths, &token),
            None => return pipe_stdio(r, w, paths, &token, false),
            Some(cmd) if once => return serve_with(cmd, r, w, &ev, fds),
            Some(cmd) => {
                let (cmd, ev) = (cmd.clone(), ev.clone());
                workers.push(std::thread::spawn(move || {
                    if let Err(e) = serve_with(&cmd, r, w, &ev, fds) {
                        eprintln!("cnspr: {e}");
                    }
                }));
                workers.retain(|w| !w.is_finished());
            }
        }
    }
}

pub fn expose(
    mut c: Client,
    g: &Global,
    service: Option<String>,
    target: Option<String>,
    remove: bool,
) -> anyhow::Result<i32> {
    match (service, target, remove) {
        (Some(s), None, true) => {
            let v = c.request(&Request::Unexpose { service: s.clone() })?;
            if g.json {
                print_json(&v)?;
            } else {
                println!("{s} is no longer exposed");
            }
        }
        (Some(s), Some(t), false) => {
            let v = c.request(&Request::Expose {
                service: s.clone(),
                target: t.clone(),
            })?;
            if g.json {
                print_json(&v)?;
            } else {
                println!("{s} -> {}", v["target"].as_str().unwrap_or(&t));
            }
        }
        (None, None, false) => {
            let v = c.request(&Request::Services {})?;
            if g.json {
                print_json(&v)?;
            } else {
                let rows: Vec<Vec<String>> = v
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|s| {
                                vec![
                                    s["service"].as_str().unwrap_or("").to_string(),
                                    s["kind"].as_str().unwrap_or("").to_string(),
                                    s["target"].as_str().unwrap_or("-").to_string(),
                                ]
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                print!("{}", table(&["SERVICE", "KIND", "TARGET"], &rows));
            }
        }
        _ => anyhow::bail!("use `cnspr expose SERVICE TARGET`, `cnspr expose --remove SERVICE`, or `cnspr expose` to list"),
    }
    Ok(0)
}
