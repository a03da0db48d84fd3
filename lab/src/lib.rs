//! The test and benchmark harness of cnspr: real `cnspr serve` processes on loopback,
//! each in its own temp dir ([`Node`]), network labs of namespaces ([`lab`], [`nat`]) and
//! the benchmarks' shared helpers ([`bench`]). The integration tests (`tests/common`)
//! and the benchmarks (`benches/`) use it as a dev-dependency.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod bench;
pub mod capture;
pub mod lab;
pub mod nat;

pub const DEADLINE: Duration = Duration::from_secs(20);

/// `cnspr serve` on loopback at a port the kernel picks, without mDNS or port mapping
/// (what every daemon outside a lab's namespaces runs with).
pub const SERVE_LOOPBACK: [&str; 5] = [
    "serve",
    "--no-mdns",
    "--no-port-mapping",
    "--listen",
    "127.0.0.1:0",
];

/// Waits for a child's exit within the deadline (kills it and panics after); returns its
/// exit code and standard error.
pub fn finish(mut c: Child) -> (Option<i32>, String) {
    let start = Instant::now();
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            let mut e = String::new();
            if let Some(mut s) = c.stderr.take() {
                let _ = s.read_to_string(&mut e);
            }
            return (st.code(), e);
        }
        if start.elapsed() > DEADLINE {
            let _ = c.kill();
            let _ = c.wait();
            panic!("process did not exit within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `cnspr` binary under test: `CNSPR_BIN` if set, else the one cargo built beside the
/// running test or benchmark (`target/PROFILE/cnspr`, the parent of its `deps/`).
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(b) = std::env::var_os("CNSPR_BIN") {
            return b.to_string_lossy().into_owned();
        }
        let exe = std::env::current_exe().expect("the running executable's path");
        let dir = exe.parent().expect("the executable's directory");
        let dir = if dir.ends_with("deps") {
            dir.parent().expect("the profile directory")
        } else {
            dir
        };
        let bin = dir.join("cnspr");
        assert!(
            bin.exists(),
            "no cnspr binary at {} (build it, or set CNSPR_BIN)",
            bin.display()
        );
        bin.to_string_lossy().into_owned()
    })
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `DEADLINE`.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > DEADLINE {
            panic!("timed out after {DEADLINE:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Node {
    pub name: String,
    pub dir: tempfile::TempDir,
    pub id: String,
    pub port: u16,
    pub child: Option<Child>,
    /// Network namespace the daemon runs in (tests of several hosts).
    pub netns: Option<String>,
    /// Listen address (default 127.0.0.1 with the previous port).
    pub listen: Option<String>,
    pub mdns: bool,
    /// Asks the router for a port mapping (only in a lab's namespaces: never from the
    /// machine's own network).
    pub portmap: bool,
    /// `RUST_LOG` of the daemon and the client commands (benchmarks turn it down).
    pub rust_log: String,
}

impl Node {
    /// A node with an identity and a config file (`extra` appended to it).
    pub fn new(name: &str, extra: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("handlers")).unwrap();
        std::fs::create_dir_all(dir.path().join("out")).unwrap();
        std::fs::write(dir.path().join("config.toml"), extra).unwrap();
        let mut node = Node {
            name: name.into(),
            dir,
            id: String::new(),
            port: 0,
            child: None,
            netns: None,
            listen: None,
            mdns: false,
            portmap: false,
            rust_log: "cnspr=debug,transport=debug,info".into(),
        };
        let out = node.cli(&["init", "--name", name, "--json"]);
        assert!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        node.id = v["id"].as_str().unwrap().to_string();
        node
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn socket(&self) -> PathBuf {
        self.path("cnspr.sock")
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(bin());
        c.env_remove("XDG_RUNTIME_DIR")
            .env_remove("CNSPR_SOCKET")
            .env_remove("CNSPR_STATE_DIR")
            .env_remove("CNSPR_CONFIG")
            .env("RUST_LOG", &self.rust_log)
            .arg("--state-dir")
            .arg(self.path("state"))
            .arg("--socket")
            .arg(self.socket())
            .arg("--config")
            .arg(self.path("config.toml"));
        c
    }

    /// Starts the daemon (on the port it had before, if any) and waits until it answers.
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("daemon.log"))
            .unwrap();
        let mut cmd = self.command();
        if let Some(ns) = &self.netns {
            // The same command, run inside the host's namespace (ip execs it: same PID).
            let mut wrapped = Command::new("ip");
            wrapped
                .args(["netns", "exec", ns])
                .arg(cmd.get_program())
                .args(cmd.get_args());
            for (k, v) in cmd.get_envs() {
                match v {
                    Some(v) => wrapped.env(k, v),
                    None => wrapped.env_remove(k),
                };
            }
            cmd = wrapped;
        }
        cmd.arg("serve");
        if !self.mdns {
            cmd.arg("--no-mdns");
        }
        if !self.portmap {
            cmd.arg("--no-port-mapping");
        }
        let listen = self
            .listen
            .clone()
            .unwrap_or_else(|| format!("127.0.0.1:{}", self.port));
        let child = cmd
            .arg("--listen")
            .arg(listen)
            .arg("--handlers")
            .arg(self.path("handlers"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let mut status = Value::Null;
        wait_until(&format!("{} to answer on its socket", self.name), || {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("daemon {} exited early: {st}\n{}", self.name, self.log());
                }
            }
            match self.try_json(&["status"]) {
                Some(v) => {
                    status = v;
                    true
                }
                None => false,
            }
        });
        let listen = status["listen"][0].as_str().unwrap();
        self.port = listen.rsplit(':').next().unwrap().parse().unwrap();
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("daemon.log")).unwrap_or_default()
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        self.command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    pub fn cli_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let data = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        out
    }

    /// Sends one request (a JSON line) on a new connection to the daemon's socket; the
    /// connection, still open, and the first reply line parsed.
    pub fn request(&self, req: Value) -> (UnixStream, Value) {
        let mut s = UnixStream::connect(self.socket()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        writeln!(s, "{req}").unwrap();
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        (s, serde_json::from_slice(&line).unwrap())
    }

    /// Listens for `service` and accepts every stream announced, each on a connection of
    /// its own that comes out of the receiver (keep it to keep the stream); until the
    /// receiver is dropped and the next stream is announced, or the daemon stops.
    pub fn accept_all(&self, service: &str) -> std::sync::mpsc::Receiver<UnixStream> {
        let (listener, v) =
            self.request(serde_json::json!({"id": 1, "cmd": "listen", "service": service}));
        assert_eq!(v["ok"], true, "listen {service}: {v}");
        listener.set_read_timeout(None).unwrap();
        let (tx, accepted) = std::sync::mpsc::channel();
        let sock = self.socket();
        let what = format!("listen {service}: not a stream announced");
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(listener)) {
                let Ok(line) = line else { break };
                let ev: Value = serde_json::from_str(&line).unwrap();
                let token = ev["stream"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{what}: {line}"));
                let mut s = UnixStream::connect(&sock).unwrap();
                let req = serde_json::json!({"id": 1, "cmd": "accept", "stream": token});
                writeln!(s, "{req}").unwrap();
                if tx.send(s).is_err() {
                    break;
                }
            }
        });
        accepted
    }

    /// Runs a client command with `--json` and parses its output; panics on failure.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.cli(&a);
        assert!(
            out.status.success(),
            "cnspr {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn try_json(&self, args: &[&str]) -> Option<Value> {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.cli(&a);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn trust(&self, other: &Node) {
        let addr = other.addr();
        let out = self.cli(&["trust", &other.id, "--addr", &addr]);
        assert!(
            out.status.success(),
            "trust: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn peer(&self, name: &str) -> Option<Value> {
        let peers = self.try_json(&["peers"])?;
        peers
            .as_array()?
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
    }

    pub fn wait_state(&self, peer: &str, state: &str) {
        wait_until(&format!("{} to see {peer} {state}", self.name), || {
            self.peer(peer).is_some_and(|p| p["state"] == state)
        });
    }

    /// Writes an executable handler script at `rel` inside the handler directory.
    pub fn handler(&self, rel: &str, script: &str) {
        let path = self.path("handlers").join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    pub fn out(&self) -> PathBuf {
        self.path("out")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `cnspr stop`, then waits for the process to exit.
    pub fn stop(&mut self) {
        let out = self.cli(&["stop"]);
        assert!(
            out.status.success(),
            "stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(mut c) = self.child.take() {
            let start = Instant::now();
            loop {
                if c.try_wait().unwrap().is_some() {
                    break;
                }
                assert!(start.elapsed() < DEADLINE, "daemon did not exit after stop");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Starts `names` and makes every pair trust each other; waits until all see all active.
pub fn mesh(names: &[&str], extra: &str) -> Vec<Node> {
    let mut nodes: Vec<Node> = names.iter().map(|n| Node::new(n, extra)).collect();
    for n in nodes.iter_mut() {
        n.start();
    }
    for a in &nodes {
        for b in &nodes {
            if a.id != b.id {
                a.trust(b);
            }
        }
    }
    for a in &nodes {
        for b in &nodes {
            if a.id != b.id {
                a.wait_state(&b.name, "active");
            }
        }
    }
    nodes
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn file(p: &Path) -> Option<Vec<u8>> {
    std::fs::read(p).ok()
}

/// Deterministic pseudo-random bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Lower-case hex of `b`.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Starts `cnspr listen` on `n` (with `--exec E --keep` when given) and waits until the
/// daemon lists the service.
pub fn listen(n: &Node, service: &str, exec: Option<&str>) -> Child {
    match exec {
        Some(e) => listen_with(n, service, &["--exec", e, "--keep"]),
        None => listen_with(n, service, &[]),
    }
}

/// Starts `cnspr listen SERVICE ARGS...` on `n` and waits until the daemon lists the
/// service.
pub fn listen_with(n: &Node, service: &str, args: &[&str]) -> Child {
    let mut c = n.command();
    c.args(["listen", service]).args(args);
    let child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("listener registered", || {
        n.try_json(&["expose"])
            .is_some_and(|v| v.to_string().contains(&format!("\"{service}\"")))
    });
    child
}

/// `cnspr connect PEER SERVICE` on `n`, all three standard streams piped.
pub fn connect(n: &Node, peer: &str, service: &str) -> Child {
    n.command()
        .args(["connect", peer, service])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A device of its own (not a daemon) that `node` trusts, connected to it: for tests that
/// speak the wire protocol directly. Returns the runtime, the endpoint and the connection.
pub fn rogue_connection(
    node: &Node,
) -> (
    tokio::runtime::Runtime,
    transport::Endpoint,
    transport::PeerConn,
    tempfile::TempDir,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (identity, _) = transport::Identity::load_or_create(dir.path(), Some("rogue")).unwrap();
    let identity = std::sync::Arc::new(identity);
    let rogue_id = identity.id.to_string();
    let (ep, pc) = rt.block_on(async {
        let roster = transport::Roster::new();
        let id: transport::DeviceId = node.id.parse().unwrap();
        roster.insert(id);
        let cfg = transport::EndpointConfig {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            ..Default::default()
        };
        let ep = transport::Endpoint::bind(identity.clone(), roster, cfg).unwrap();
        // Trusted by ID only: the node has no address to dial, so the one connection is
        // this one (no duplicate to race with).
        let o = node.cli(&["trust", &rogue_id]);
        assert!(o.status.success(), "trust: {}", stderr(&o));
        let peer_addr: std::net::SocketAddr = node.addr().parse().unwrap();
        let pc = ep
            .connect(id, &[peer_addr])
            .await
            .expect("connect to the node");
        (ep, pc)
    });
    (rt, ep, pc, dir)
}

/// Resident memory of process `pid` in KiB (0 if it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|x| x.parse().ok()))
        })
        .unwrap_or(0)
}

/// `cnspr --json kv watch PREFIX` on `n`; its events arrive on the receiver as parsed.
pub fn kv_watch(n: &Node, prefix: &str) -> (Child, std::sync::mpsc::Receiver<Value>) {
    let mut w = n
        .command()
        .args(["--json", "kv", "watch", prefix])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = w.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(serde_json::from_str(&l).unwrap());
        }
    });
    (w, rx)
}

/// Peer events as `cnspr monitor --json --event peer` printed them: (arrival, node, event).
pub type EventLog = std::sync::Arc<std::sync::Mutex<Vec<(Instant, usize, Value)>>>;

/// [`monitor_peers`] on every node, into one new log.
pub fn monitor_all(nodes: &[Node]) -> (EventLog, Vec<Child>) {
    let log: EventLog = Default::default();
    let monitors = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| monitor_peers(node, i, &log))
        .collect();
    (log, monitors)
}

/// Runs `cnspr monitor --json --event peer` on `node` and logs each event in `log`,
/// stamped on arrival with the node's index `i`, until the returned child is killed.
pub fn monitor_peers(node: &Node, i: usize, log: &EventLog) -> Child {
    use std::io::BufRead;
    let mut child = node
        .command()
        .args(["--json", "monitor", "--event", "peer"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let log = log.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                log.lock().unwrap().push((Instant::now(), i, v));
            }
        }
    });
    child
}
