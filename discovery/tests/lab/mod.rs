//! Test harness: throw-away network namespaces joined by a bridge, and discovery nodes
//! running in them (this test binary re-executed inside `ip netns exec`, see
//! `node_helper` in `netns.rs`). Nodes talk line by line: commands on stdin, `@@ ...`
//! reports on stdout.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Environment variable that turns `node_helper` into a node: `ID NAME PORT`.
pub const NODE_ENV: &str = "CNSPR_DISCOVERY_TEST_NODE";

static LAB_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Runs a command, returning its stdout or a description of the failure.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            out.status
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Why the namespace tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    match run("id", &["-u"]) {
        Ok(uid) if uid.trim() == "0" => {}
        Ok(uid) => return Some(format!("needs root (uid is {})", uid.trim())),
        Err(e) => return Some(format!("cannot tell the uid: {e}")),
    }
    if let Err(e) = run("ip", &["-V"]) {
        return Some(format!("needs iproute2 (`ip`): {e}"));
    }
    None
}

/// Namespaces `cd<pid>x<n>s` (the bridge `sw0`) and `cd<pid>x<n>h<i>` (hosts, each with
/// `eth0` plugged into the bridge, an IPv4 address and a default route on `eth0`).
/// Deleted on drop, whatever happened.
pub struct Lab {
    pub switch: String,
    pub hosts: Vec<String>,
}

impl Lab {
    /// Builds the lab, or returns why it cannot (the caller prints it and skips).
    pub fn create(addrs: &[&str]) -> Result<Lab, String> {
        if let Some(why) = unavailable() {
            return Err(why);
        }
        let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let base = format!("cd{}x{n}", std::process::id());
        let mut lab = Lab {
            switch: format!("{base}s"),
            hosts: Vec::new(),
        };
        run("ip", &["netns", "add", &lab.switch])?;
        let sw = lab.switch.clone();
        lab.ip(&sw, "link add sw0 type bridge mcast_snooping 0")?;
        lab.ip(&sw, "link set sw0 up")?;
        for (i, addr) in addrs.iter().enumerate() {
            let host = format!("{base}h{i}");
            run("ip", &["netns", "add", &host])?;
            lab.hosts.push(host.clone());
            let port = format!("p{i}");
            lab.ip(
                &host,
                &format!("link add eth0 type veth peer name {port} netns {sw}"),
            )?;
            lab.ip(&sw, &format!("link set {port} master sw0"))?;
            lab.ip(&sw, &format!("link set {port} up"))?;
            lab.ip(&host, "link set lo up")?;
            lab.ip(&host, &format!("addr add {addr} dev eth0"))?;
            lab.ip(&host, "link set eth0 up")?;
            lab.ip(&host, "route add default dev eth0")?;
        }
        Ok(lab)
    }

    /// `ip -n NS ARGS...` (ARGS split on spaces).
    pub fn ip(&self, ns: &str, args: &str) -> Result<String, String> {
        let mut all = vec!["-n", ns];
        all.extend(args.split(' '));
        run("ip", &all)
    }

    /// Interface index of `dev` in `ns`.
    pub fn ifindex(&self, ns: &str, dev: &str) -> u32 {
        let out = self
            .ip(ns, &format!("-o link show dev {dev}"))
            .expect("ip link show");
        out.split(':')
            .next()
            .and_then(|s| s.trim().parse().ok())
            .expect("ifindex")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain([&self.switch]) {
            if let Err(e) = run("ip", &["netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// Wall-clock microseconds, comparable between processes of this host.
pub fn now_us() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

/// A child process in a namespace whose output lines are read by a thread.
pub struct Proc {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    pub log: Vec<String>,
}

impl Proc {
    pub fn spawn(name: &str, ns: &str, program: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, program]).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ip netns exec");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let tx2 = tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx2.send(format!("stderr: {line}"));
            }
        });
        let stdin = child.stdin.take();
        Proc {
            name: name.to_owned(),
            child,
            stdin,
            lines,
            log: Vec::new(),
        }
    }

    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .expect("write to node");
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits until a line `@@ <rest>` satisfies `pred`, returns `rest`; panics with the
    /// log at the deadline.
    pub fn expect(&mut self, what: &str, within: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if let Some(rest) = line.strip_prefix("@@ ") {
                        if pred(rest) {
                            return rest.to_owned();
                        }
                    }
                }
                Err(_) => panic!(
                    "{}: no `{what}` within {within:?}; output so far:\n{}",
                    self.name,
                    self.log.join("\n")
                ),
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            self.log.extend(self.lines.try_iter());
            eprintln!("---- output of {} ----\n{}", self.name, self.log.join("\n"));
        }
    }
}

/// A discovery node: this test binary's `node_helper` inside a namespace.
pub fn node(name: &str, ns: &str, id: &str, port: u16) -> Proc {
    let exe = std::env::current_exe().expect("current_exe");
    let spec = format!("{id} {name} {port}");
    Proc::spawn(
        name,
        ns,
        exe.to_str().expect("utf-8 path"),
        &[
            "node_helper",
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ],
        &[(NODE_ENV, &spec)],
    )
}

/// A parsed `found` report: `found <us> <id> <version> <addr,...> <name>`.
#[derive(Debug)]
pub struct Found {
    pub at_us: u128,
    pub id: String,
    pub version: String,
    pub addrs: Vec<SocketAddr>,
    pub name: String,
}

pub fn parse_found(line: &str) -> Option<Found> {
    let mut it = line.splitn(6, ' ');
    if it.next()? != "found" {
        return None;
    }
    let at_us = it.next()?.parse().ok()?;
    let id = it.next()?.to_owned();
    let version = it.next()?.to_owned();
    let addrs = it
        .next()?
        .split(',')
        .filter_map(|a| a.parse().ok())
        .collect();
    let name = it.next().unwrap_or("").to_owned();
    Some(Found {
        at_us,
        id,
        version,
        addrs,
        name,
    })
}

/// Waits for a `found` of `id` whose addresses satisfy `pred`.
pub fn expect_found(
    p: &mut Proc,
    id: &str,
    within: Duration,
    what: &str,
    pred: impl Fn(&Found) -> bool,
) -> Found {
    let line = p.expect(what, within, |l| {
        parse_found(l).is_some_and(|f| f.id == id && pred(&f))
    });
    parse_found(&line).expect("parsed above")
}
