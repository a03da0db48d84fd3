//! Daemon benchmark: two real `cnspr serve` processes on loopback.
//!
//! Prints: `send` -> ack latency and `send` -> remote handler's first instruction over an
//! open socket connection (p50/p99 of 200), `cnspr send` end to end, messages per second
//! from one device to a socket subscriber on the other (1 KiB bodies), and idle RSS/CPU of
//! a daemon with two peers. `CNSPR_BENCH_SECONDS` (default 10) sets the throughput run,
//! `CNSPR_BENCH_IDLE_S` (default 60) the idle measurement, `CNSPR_BENCH_CONFIG` lines of
//! config.toml for every daemon.
//!
//! Run: `cargo bench --bench daemon`; the idle trade-off with a slower beat:
//! `CNSPR_BENCH_CONFIG=$'probe_interval_ms = 1000\nsuspect_after_ms = 4000\nidle_timeout_ms = 5000' cargo bench --bench daemon`

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_cnspr");

struct Daemon {
    dir: PathBuf,
    child: Child,
    id: String,
    port: u16,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cmd(dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("XDG_RUNTIME_DIR")
        .env("RUST_LOG", "warn")
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--socket")
        .arg(dir.join("sock"))
        .arg("--config")
        .arg(dir.join("config.toml"));
    c
}

fn start(dir: &Path, name: &str, fifo: &Path) -> Daemon {
    std::fs::create_dir_all(dir.join("handlers/bench")).unwrap();
    // CNSPR_BENCH_CONFIG: config.toml lines for every daemon (e.g. a slower beat, to
    // measure the idle trade-off of docs/performance.md).
    let extra = std::env::var("CNSPR_BENCH_CONFIG").unwrap_or_default();
    std::fs::write(dir.join("config.toml"), extra).unwrap();
    let out = cmd(dir)
        .args(["--json", "init", "--name", name])
        .output()
        .unwrap();
    let id = serde_json::from_slice::<Value>(&out.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let child = cmd(dir)
        .env("CNSPR_BENCH_FIFO", fifo)
        .args([
            "serve",
            "--no-mdns",
            "--no-port-mapping",
            "--listen",
            "127.0.0.1:0",
            "--handlers",
        ])
        .arg(dir.join("handlers"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut d = Daemon {
        dir: dir.to_path_buf(),
        child,
        id,
        port: 0,
    };
    let start = Instant::now();
    loop {
        if let Ok(mut c) = Conn::open(&d.dir.join("sock")) {
            let st = c.call(json!({"cmd": "status"}));
            d.port = st["result"]["listen"][0]
                .as_str()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            return d;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Conn {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Conn {
    fn open(p: &Path) -> std::io::Result<Conn> {
        let s = UnixStream::connect(p)?;
        Ok(Conn {
            w: s.try_clone()?,
            r: BufReader::new(s),
        })
    }
    fn call(&mut self, v: Value) -> Value {
        self.w.write_all(format!("{v}\n").as_bytes()).unwrap();
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    }
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

/// CPU time of every thread of `pid`, in nanoseconds (schedstat is exact, unlike ticks).
/// CPU time (ns) and times scheduled in (wake-ups) of all threads of `pid`.
fn schedstat(pid: u32) -> (u64, u64) {
    let mut total = (0, 0);
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in rd.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                let f: Vec<u64> = s
                    .split_whitespace()
                    .map(|x| x.parse::<u64>().unwrap_or(0))
                    .collect();
                if f.len() >= 3 {
                    total.0 += f[0];
                    total.1 += f[2];
                }
            }
        }
    }
    total
}

/// What one empty wake-up costs on this machine: a thread that only sleeps 30 ms at a
/// time, measured over `secs`. Idle CPU is mostly wake-ups times this.
fn empty_wakeup_cost(secs: u64) -> f64 {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        // The thread's own id: /proc/thread-self links to /proc/PID/task/TID.
        let me = std::fs::read_link("/proc/thread-self")
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default();
        tx.send(me).ok();
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(30));
        }
    });
    let tid = rx.recv().unwrap_or_default();
    let read = || -> (u64, u64) {
        let s =
            std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).unwrap_or_default();
        let f: Vec<u64> = s
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        (
            f.first().copied().unwrap_or(0),
            f.get(2).copied().unwrap_or(0),
        )
    };
    let a = read();
    std::thread::sleep(Duration::from_secs(secs));
    let b = read();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    h.join().ok();
    (b.0 - a.0) as f64 / 1e3 / (b.1 - a.1).max(1) as f64
}

/// VmRSS and its anonymous part (heap, stacks), in KiB.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|x| x.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let seconds: u64 = std::env::var("CNSPR_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let idle_s: u64 = std::env::var("CNSPR_BENCH_IDLE_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let a = start(&tmp.path().join("a"), "alpha", &fifo);
    let b = start(&tmp.path().join("b"), "beta", &fifo);
    let c = start(&tmp.path().join("c"), "gamma", &fifo);
    let script = "#!/bin/sh\necho x > \"$CNSPR_BENCH_FIFO\"\n";
    let h = b.dir.join("handlers/bench/fifo");
    std::fs::write(&h, script).unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&h)
        .status()
        .unwrap();
    for (x, others) in [(&a, [&b, &c]), (&b, [&a, &c]), (&c, [&a, &b])] {
        let mut conn = Conn::open(&x.dir.join("sock")).unwrap();
        for o in others {
            let r = conn.call(
                json!({"cmd": "trust", "device": o.id, "addrs": [format!("127.0.0.1:{}", o.port)]}),
            );
            assert_eq!(r["ok"], true, "{r}");
        }
    }
    let mut conn = Conn::open(&a.dir.join("sock")).unwrap();
    let start_wait = Instant::now();
    loop {
        let p = conn.call(json!({"cmd": "peers"}));
        let peers = p["result"].as_array().unwrap();
        // Active, and known by the names their hellos gave (the bench sends by name).
        let named = |n: &str| peers.iter().any(|p| p["name"] == n);
        if peers.iter().all(|p| p["state"] == "active") && named("beta") && named("gamma") {
            break;
        }
        assert!(
            start_wait.elapsed() < Duration::from_secs(20),
            "peers not active: {p}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("cnspr daemon benchmark: three daemons on loopback");

    // send -> ack, over an open socket connection.
    let mut acks = Vec::new();
    for i in 0..220 {
        let t = Instant::now();
        let r = conn.call(json!({"cmd": "send", "peer": "beta", "tag": "bench.ack", "body": "x"}));
        if i >= 20 {
            acks.push(t.elapsed());
        }
        assert_eq!(r["ok"], true, "{r}");
    }
    // send -> the remote handler's first instruction.
    let mut fifo_r = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let mut starts = Vec::new();
    for i in 0..220 {
        let t = Instant::now();
        conn.w
            .write_all(
                format!(
                    "{}\n",
                    json!({"cmd": "send", "peer": "beta", "tag": "bench.fifo", "body": "x"})
                )
                .as_bytes(),
            )
            .unwrap();
        let mut byte = [0u8; 2];
        fifo_r.read_exact(&mut byte).unwrap();
        if i >= 20 {
            starts.push(t.elapsed());
        }
        let mut line = String::new();
        conn.r.read_line(&mut line).unwrap();
    }
    // `cnspr send` end to end (process start included).
    let mut e2e = Vec::new();
    for _ in 0..100 {
        let t = Instant::now();
        let st = cmd(&a.dir)
            .args(["send", "beta", "bench.ack", "x"])
            .status()
            .unwrap();
        e2e.push(t.elapsed());
        assert!(st.success());
    }
    println!(
        "send -> ack            p50 {:7.3} ms  p99 {:7.3} ms  (target p50 < 1 ms)",
        pct(&mut acks, 0.5),
        pct(&mut acks, 0.99)
    );
    let hs50 = pct(&mut starts, 0.5);
    println!(
        "send -> handler start  p50 {:7.3} ms  p99 {:7.3} ms  (target p50 < 5 ms; CNSPRCY ~11 ms: {:.1}x faster)",
        hs50,
        pct(&mut starts, 0.99),
        11.0 / hs50
    );
    println!(
        "cnspr send end to end  p50 {:7.3} ms  p99 {:7.3} ms  (target p50 < 10 ms)",
        pct(&mut e2e, 0.5),
        pct(&mut e2e, 0.99)
    );

    // Messages per second to a subscriber on another device.
    let mut sub = Conn::open(&b.dir.join("sock")).unwrap();
    let r = sub.call(json!({"cmd": "subscribe", "events": ["message"]}));
    assert_eq!(r["ok"], true);
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    {
        let received = received.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while sub.r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                received.fetch_add(1, Ordering::Relaxed);
                line.clear();
            }
        });
    }
    let body = data_encoding::BASE64.encode(&[0x42u8; 1024]);
    // 4 socket connections, each with up to 256 requests in flight (replies carry ids).
    const CONNS: usize = 4;
    const WINDOW: usize = 256;
    let mut senders = Vec::new();
    for _ in 0..CONNS {
        let stop = stop.clone();
        let req = format!(
            "{}\n",
            json!({"cmd": "send", "peer": "beta", "tag": "bench.tput", "body_b64": body})
        );
        let Conn { mut r, mut w } = Conn::open(&a.dir.join("sock")).unwrap();
        let (tok_tx, tok_rx) = std::sync::mpsc::sync_channel::<()>(WINDOW);
        for _ in 0..WINDOW {
            tok_tx.send(()).unwrap();
        }
        senders.push(std::thread::spawn(move || {
            let mut line = String::new();
            while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                assert!(line.contains("\"ok\":true"), "{line}");
                line.clear();
                if tok_tx.send(()).is_err() {
                    break;
                }
            }
        }));
        senders.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if tok_rx.recv_timeout(Duration::from_secs(5)).is_err() {
                    break;
                }
                if w.write_all(req.as_bytes()).is_err() {
                    break;
                }
            }
            let _ = w.shutdown(std::net::Shutdown::Both);
        }));
    }
    std::thread::sleep(Duration::from_secs(1));
    let r0 = received.load(Ordering::Relaxed);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let n = received.load(Ordering::Relaxed) - r0;
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        let _ = s.join();
    }
    println!(
        "to a remote subscriber {:9.0} msg/s (1 KiB bodies, {seconds} s, {CONNS} pipelined socket connections; target >= 50000: {:.0}%)",
        rate,
        100.0 * rate / 50_000.0
    );

    // Dedicated streams: one `connect` stream through the daemons into a TCP sink, and
    // time to first byte through an echo service, on the existing connection.
    let stream_bytes: u64 = std::env::var("CNSPR_BENCH_STREAM_BYTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2 << 30);
    let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_addr = sink.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in sink.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let mut w = s;
                let mut buf = vec![0u8; 1 << 20];
                let mut n = 0u64;
                while let Ok(k) = r.read(&mut buf) {
                    if k == 0 {
                        break;
                    }
                    n += k as u64;
                }
                let _ = w.write_all(&n.to_be_bytes());
            });
        }
    });
    let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_addr = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in echo.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut r = s.try_clone().unwrap();
                let mut w = s;
                let _ = std::io::copy(&mut r, &mut w);
            });
        }
    });
    let mut bconn = Conn::open(&b.dir.join("sock")).unwrap();
    for (svc, addr) in [("sink", sink_addr), ("echo", echo_addr)] {
        let r = bconn.call(json!({"cmd": "expose", "service": svc, "target": addr.to_string()}));
        assert_eq!(r["ok"], true, "{r}");
    }
    let open_stream = |svc: &str| {
        let mut c = Conn::open(&a.dir.join("sock")).unwrap();
        let r = c.call(json!({"cmd": "connect", "peer": "beta", "service": svc}));
        assert_eq!(r["ok"], true, "{r}");
        c
    };
    let mut sc = open_stream("sink");
    let chunk = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    let mut left = stream_bytes;
    while left > 0 {
        let k = left.min(chunk.len() as u64) as usize;
        sc.w.write_all(&chunk[..k]).unwrap();
        left -= k as u64;
    }
    sc.w.shutdown(std::net::Shutdown::Write).unwrap();
    let mut count = [0u8; 8];
    sc.r.read_exact(&mut count).unwrap();
    let elapsed = t.elapsed();
    assert_eq!(u64::from_be_bytes(count), stream_bytes);
    let stream_mbps = stream_bytes as f64 / elapsed.as_secs_f64() / 1e6;
    let mut ttfb = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let mut ec = open_stream("echo");
        ec.w.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        ec.r.read_exact(&mut one).unwrap();
        ttfb.push(t.elapsed());
    }
    println!(
        "cnspr connect stream   {stream_mbps:7.1} MB/s ({} MiB into a TCP sink through both daemons; `bash bench/streams.sh` compares the CLI stream with dumbpipe (target 3x) and a bare quinn stream (target 100%) in one run)",
        stream_bytes >> 20,
    );
    println!(
        "stream first byte      p50 {:7.3} ms  p99 {:7.3} ms  (connect request to first echoed byte; target p50 < 5 ms)",
        pct(&mut ttfb, 0.5),
        pct(&mut ttfb, 0.99)
    );

    // Idle: RSS and CPU of a daemon with two peers. Gamma took no part in the load above;
    // alpha sent the messages and the stream, beta received them (each keeps what its
    // connections and allocator hold on to after such a load).
    std::thread::sleep(Duration::from_secs(3));
    let pids = [
        ("gamma", c.child.id()),
        ("alpha", a.child.id()),
        ("beta", b.child.id()),
    ];
    let before: Vec<(u64, u64)> = pids.iter().map(|(_, p)| schedstat(*p)).collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(idle_s));
    let secs = t0.elapsed().as_secs_f64();
    for (i, (name, pid)) in pids.iter().enumerate() {
        let (rss, anon) = rss(*pid);
        let now = schedstat(*pid);
        let cpu = (now.0 - before[i].0) as f64 / 1e9 / secs * 100.0;
        let wakeups = (now.1 - before[i].1) as f64 / secs;
        println!(
            "idle {name:5} (2 peers)  RSS {:.1} MiB ({:.1} anonymous; target < 10; CNSPRCY 10.5, Serf 14.6), CPU {:.3}% of a core over {idle_s} s (target < 0.05%: {:.1}x), {wakeups:.1} wake-ups/s",
            rss as f64 / 1024.0,
            anon as f64 / 1024.0,
            cpu,
            cpu / 0.05
        );
    }
    println!(
        "empty wake-up on this machine  {:.1} us of CPU (a thread sleeping 30 ms at a time; idle CPU is mostly wake-ups x this)",
        empty_wakeup_cost(10)
    );
}
