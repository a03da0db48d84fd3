//! Helpers the benchmarks share (benches/*.rs include this directory).

use std::io::Write;
use std::time::{Duration, Instant};

use super::nat::Internet;
use super::*;

const MIB: usize = 1 << 20;

pub fn quiet(mut n: Node) -> Node {
    n.rust_log = "cnspr=debug,warn".into();
    n
}

pub fn trust(x: &Node, y: &Node, addr: Option<&str>) {
    let mut args = vec!["trust", y.id.as_str()];
    if let Some(a) = addr {
        args.extend(["--addr", a]);
    }
    let out = x.cli(&args);
    assert!(out.status.success(), "trust: {}", stderr(&out));
}

/// Sends `a` → `b` until delivered; the time it took from `t0`.
pub fn first_message(a: &Node, t0: Instant) -> Duration {
    loop {
        let r = a.cli(&["send", "--timeout", "2", "b", "x.y", "hi"]);
        if r.status.success() {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no message got through"
        );
    }
}

pub fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// The median of three 64 MiB streams `from` → `to`; MiB/s.
pub fn stream(from: &Node, to: &Node, peer: &str) -> f64 {
    let mut v: Vec<f64> = (0..3).map(|_| stream_of(from, to, peer, 64)).collect();
    pct(&mut v, 0.5)
}

/// CPU seconds (user and system) the process `pid` has used so far; 0 once it is gone.
/// Linux's `/proc/PID/stat` counts in clock ticks of 1/100 s (`getconf CLK_TCK`).
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which ends with the last ')': the state is
    // field 3, utime 14 and stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds the whole machine has spent so far: busy (everything but idle and
/// waiting for I/O), and of that in soft interrupts (where packets crossing the lab's
/// veths and routers are handled), from `/proc/stat`.
pub fn machine_cpu_secs() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().find(|l| l.starts_with("cpu ")).unwrap_or("");
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0.0);
    // user nice system idle iowait irq softirq steal ...
    let busy: f64 = v.iter().take(8).sum::<f64>() - at(3) - at(4);
    (busy / 100.0, at(6) / 100.0)
}

/// One stream of `mib` MiB `from` → `to` (a listener named `sink` on `to`), timed from
/// the start of `cnspr connect` until the last byte is in the sink's file; MiB/s.
pub fn stream_of(from: &Node, to: &Node, peer: &str, mib: usize) -> f64 {
    let data = noise(mib * MIB, 9);
    let out = to.out().display().to_string();
    let mut lis = listen(to, "sink", Some(&format!("cat > {out}/sink")));
    let t0 = Instant::now();
    let mut cl = connect(from, peer, "sink");
    let mut stdin = cl.stdin.take().unwrap();
    let wrote = stdin.write_all(&data);
    drop(stdin);
    let (code, err) = finish(cl);
    assert!(
        wrote.is_ok() && code == Some(0),
        "connect: {wrote:?} {code:?} {err}\n{}",
        from.log()
    );
    // The file's length, not its bytes: reading up to the whole stream every 20 ms
    // would take the CPU the transfer is measured with.
    wait_until("the whole stream", || {
        std::fs::metadata(to.out().join("sink")).is_ok_and(|m| m.len() == data.len() as u64)
    });
    let took = t0.elapsed();
    let _ = lis.kill();
    let _ = lis.wait();
    let _ = std::fs::remove_file(to.out().join("sink"));
    mib as f64 / took.as_secs_f64()
}

/// The anchor: `p` at 203.0.113.21 and `q` (named `b`, like the device it stands in
/// for) at 203.0.113.22, on the wan with no NAT, started and trusting each other.
pub fn public_pair(net: &Internet, hp: usize, hq: usize) -> (Node, Node) {
    let mut p = quiet(net.node(hp, "p"));
    let mut q = quiet(net.node(hq, "b"));
    p.start();
    q.start();
    trust(&p, &q, Some("203.0.113.22:7373"));
    trust(&q, &p, Some("203.0.113.21:7373"));
    (p, q)
}

/// `CNSPR_BENCH_STREAM_MIB` (at least 1), else `default`: MiB per stream.
pub fn stream_mib(default: usize) -> usize {
    env_count("CNSPR_BENCH_STREAM_MIB", default)
}

/// `CNSPR_BENCH_STREAM_ROUNDS` (at least 1), else `default`.
pub fn stream_rounds(default: usize) -> usize {
    env_count("CNSPR_BENCH_STREAM_ROUNDS", default)
}

fn env_count(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Err(_) => default,
        Ok(s) => match s.parse() {
            Ok(n) if n >= 1 => n,
            _ => panic!("{name} must be a whole number of at least 1, not {s:?}"),
        },
    }
}

/// `CNSPR_BENCH_TRIALS` (at least 1), else `default`.
pub fn trials(default: usize) -> usize {
    env_count("CNSPR_BENCH_TRIALS", default)
}

/// Daemons held to a share of one CPU each, as if each ran on a device of its own (a
/// cgroup's CPU quota per daemon, version 1's `cpu` controller or version 2's `cpu.max`);
/// put back when dropped. On this 2-CPU machine the daemons of a path otherwise share
/// the same two CPUs: a path through a member has three daemons to feed where a direct
/// one has two, which real devices do not.
pub struct DeviceCpu {
    /// Each daemon's group, and the file to move its PID back with.
    held: Vec<(u32, PathBuf, PathBuf)>,
}

impl Drop for DeviceCpu {
    fn drop(&mut self) {
        for (pid, dir, back) in self.held.drain(..) {
            let _ = std::fs::write(&back, pid.to_string());
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// Holds each of `nodes` to the share of one CPU that `CNSPR_BENCH_DEVICE_CPU` gives
/// (0.1 to 1; 0.5 when it is not set): `None` when it is 0; the reason when it cannot be
/// done here (no cgroup CPU controller to write to).
pub fn device_cpu(nodes: &[&Node]) -> Result<Option<(f64, DeviceCpu)>, String> {
    let share: f64 = match std::env::var("CNSPR_BENCH_DEVICE_CPU") {
        Err(_) => 0.5,
        Ok(s) => s.parse().unwrap_or(-1.0),
    };
    if share == 0.0 {
        return Ok(None);
    }
    assert!(
        (0.1..=1.0).contains(&share),
        "CNSPR_BENCH_DEVICE_CPU must be a share of one CPU, 0.1 to 1 (0: none)"
    );
    let v1 = Path::new("/sys/fs/cgroup/cpu");
    let v2 = Path::new("/sys/fs/cgroup");
    let (root, v1) = if v1.join("cpu.cfs_quota_us").exists() {
        (v1, true)
    } else {
        (v2, false)
    };
    if !v1 {
        // Version 2 gives a child group the CPU controller only when its parent hands it
        // down (an error here shows when the first group is written).
        let _ = std::fs::write(root.join("cgroup.subtree_control"), "+cpu");
    }
    let period = 100_000u64;
    let quota = (share * period as f64) as u64;
    let mut held = DeviceCpu { held: Vec::new() };
    for n in nodes {
        let pid = n.pid();
        let dir = root.join(format!("cnspr-bench-{}-{pid}", std::process::id()));
        let made = std::fs::create_dir(&dir).and_then(|()| {
            if v1 {
                std::fs::write(dir.join("cpu.cfs_period_us"), period.to_string())?;
                std::fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string())?;
            } else {
                std::fs::write(dir.join("cpu.max"), format!("{quota} {period}"))?;
            }
            std::fs::write(dir.join("cgroup.procs"), pid.to_string())
        });
        if let Err(e) = made {
            let _ = std::fs::remove_dir(&dir);
            // `held` puts back the daemons moved so far.
            return Err(format!("a CPU quota in {}: {e}", root.display()));
        }
        held.held.push((pid, dir, root.join("cgroup.procs")));
    }
    Ok(Some((share, held)))
}
