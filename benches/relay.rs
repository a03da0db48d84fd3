//! `cnspr relay` benchmark in a NAT lab (network namespaces; root or a user namespace,
//! and nftables; skips with a reason otherwise): devices a and b behind two home routers
//! (port-restricted cone NAT), no public member, a relay r on the wan; as the anchor
//! measured in the same run, p and q with public addresses on the same wan (no NAT).
//!
//! Prints, each with its target and its ratio to the anchor:
//! - time from b's start (a already up and registered; both know the relay from
//!   pairing) until a first message from a is delivered to b, p50 and p99 over
//!   `CNSPR_BENCH_TRIALS` trials (default 10); anchor: p and q, from their trusting each
//!   other until a first message is delivered;
//! - one 64 MiB stream's throughput (median of 3) a→b through the relay (a firewall
//!   between the routers keeps them off the direct path), a→b directly across the NATs,
//!   and p→q with no NAT;
//! - the relay's CPU time per GB it forwarded (from /proc, over those streams);
//! - the relay's memory (RSS) with 1,000 idle registered devices (registered from this
//!   process over loopback, outside the lab), against the relay with none.
//!
//! Run: `cargo bench --bench relay`

use cnspr_lab as common;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::bench::*;
use common::nat::*;
use common::*;

const SECRET: &str = "bench-relay-secret-0123456789";

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cnspr relay` (in namespace `ns`, if any) listening on `listen`; returns it and
/// the UDP address it printed.
fn relay(ns: Option<&str>, listen: &str) -> (Proc, String) {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, bin()]);
            c
        }
        None => Command::new(bin()),
    };
    let mut child = cmd
        .args(["relay", "--listen", listen, "--tcp", "off", "--rate", "0"])
        .args(["--secret", SECRET])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line
        .split_whitespace()
        .nth(4)
        .unwrap_or_else(|| panic!("relay: {line}"))
        .to_string();
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    (Proc(child), addr)
}

/// a and b trust each other and both know the relay (as if learnt while pairing: the
/// entry recorded on a is copied to b, which is then started again); returns them with b
/// stopped: starting it is the "both up" moment.
fn pair_with_relay(net: &Internet, ha: usize, hb: usize, relay: &str) -> (Node, Node) {
    let mut a = quiet(net.node(ha, "a"));
    let mut b = quiet(net.node(hb, "b"));
    a.start();
    b.start();
    trust(&a, &b, None);
    trust(&b, &a, None);
    b.stop();
    let out = a.cli(&["relay", "add", relay, SECRET]);
    assert!(out.status.success(), "relay add: {}", stderr(&out));
    std::fs::copy(a.path("state/relays.json"), b.path("state/relays.json")).unwrap();
    (a, b)
}

fn wait_for(n: &Node, peer: &str, kind: &str, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if n.peer(peer)
            .is_some_and(|p| p["state"] == "active" && p["path"]["kind"] == kind)
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// User plus system CPU seconds of process `pid`.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // SAFETY: sysconf reads a constant of the system.
    #[allow(unsafe_code)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

/// The relay's PID: `ip netns exec` execs the relay, so it is the child's own.
fn relay_pid(p: &Proc) -> u32 {
    p.0.id()
}

/// RSS of the relay with `n` idle devices registered from this process over loopback.
fn idle_memory(n: usize) -> (u64, u64) {
    let (r, addr) = relay(None, "127.0.0.1:0");
    let pid = relay_pid(&r);
    std::thread::sleep(Duration::from_millis(200));
    let before = rss_kib(pid);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let after = rt.block_on(async {
        let spec = transport::relay::link::RelaySpec {
            addr: addr.clone(),
            secret: SECRET.into(),
            tag: [7; 16],
        };
        let mut eps = Vec::new();
        for i in 0..n {
            let id = Arc::new(transport::Identity::generate(&format!("d{i}")).unwrap());
            let cfg = transport::EndpointConfig {
                socket_buffer: 64 * 1024,
                heartbeats: false,
                ..transport::EndpointConfig::for_test()
            };
            let ep = transport::Endpoint::bind(id, transport::Roster::new(), cfg).unwrap();
            ep.set_relays(std::slice::from_ref(&spec));
            eps.push(ep);
        }
        let t0 = Instant::now();
        while eps
            .iter()
            .filter(|e| e.relays().current().is_some())
            .count()
            < n
        {
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "devices did not all register"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Idle for a moment: what stays is what an idle registration costs.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = rss_kib(pid);
        drop(eps);
        after
    });
    (before, after)
}

fn main() {
    let trials = trials(10);
    let Some(mut net) = Internet::new("brl") else {
        return;
    };
    let hr = net.public_host(20);
    let (ra, ha) = net.home(1, Nat::Cone);
    let (rb, hb) = net.home(2, Nat::Cone);
    let hp = net.public_host(21);
    let hq = net.public_host(22);
    let delayed = net.delay(ra, 20) & net.delay(rb, 20);
    let (r, _) = relay(Some(net.ns(hr)), "0.0.0.0:7374");
    let relay_addr = "203.0.113.20:7374";

    let mut msg = Vec::new();
    let mut anchor_msg = Vec::new();
    for _ in 0..trials {
        for r in [ra, rb] {
            netns_run(net.ns(r), "conntrack", &["-F"]);
        }
        let (a, mut b) = pair_with_relay(&net, ha, hb, relay_addr);
        // From b's start (a is up and registered): b starts, registers, and a message
        // from a gets through.
        let t0 = Instant::now();
        b.start();
        msg.push(first_message(&a, t0).as_secs_f64());
        drop((a, b));

        let (p, _q) = public_pair(&net, hp, hq);
        let t0 = Instant::now();
        anchor_msg.push(first_message(&p, t0).as_secs_f64());
    }

    // Throughput through the relay (a firewall between the routers), then direct.
    let (a, mut b) = pair_with_relay(&net, ha, hb, relay_addr);
    net.block(ra, "203.0.113.2");
    b.start();
    assert!(
        wait_for(&a, "b", "relay", Duration::from_secs(30)),
        "{}",
        a.log()
    );
    let pid = relay_pid(&r);
    let cpu0 = cpu_s(pid);
    let thr_relay = stream(&a, &b, "b");
    let cpu = cpu_s(pid) - cpu0;
    net.unblock(ra);
    assert!(
        wait_for(&a, "b", "direct", Duration::from_secs(60)),
        "{}",
        a.log()
    );
    let thr_direct = stream(&a, &b, "b");
    let (p, q) = public_pair(&net, hp, hq);
    assert!(wait_for(&p, "b", "direct", Duration::from_secs(30)));
    let thr_plain = stream(&p, &q, "b");
    drop((a, b, p, q, r));

    let devices = 1000;
    let (mem0, mem) = idle_memory(devices);

    let m50 = pct(&mut msg, 0.5);
    let m99 = pct(&mut msg, 0.99);
    let a50 = pct(&mut anchor_msg, 0.5);
    println!(
        "relay: {trials} trials, {}",
        if delayed {
            "20 ms added per router"
        } else {
            "no added delay (no tc netem in this kernel)"
        }
    );
    println!(
        "  both up -> first message through the relay: p50 {m50:.3} s (target 1 s, {:.2}x), p99 {m99:.3} s; no-NAT anchor p50 {a50:.3} s: ratio {:.2}x",
        m50 / 1.0,
        m50 / a50
    );
    println!(
        "  64 MiB stream: through cnspr relay {thr_relay:.1} MiB/s, direct across NATs {thr_direct:.1} MiB/s, no NAT {thr_plain:.1} MiB/s; relay/direct {:.2}x (target 0.80x), relay/no-NAT {:.2}x",
        thr_relay / thr_direct,
        thr_relay / thr_plain
    );
    // Three streams went through; each byte arrives at the relay once and leaves once.
    let gb = 3.0 * 64.0 / 1024.0;
    println!(
        "  relay CPU: {:.2} s per GB forwarded ({cpu:.2} s for {gb:.3} GB)",
        cpu / gb
    );
    println!(
        "  relay memory: {:.1} MiB RSS with {devices} idle registered devices ({:.1} MiB with none: {:.1} KiB per device)",
        mem as f64 / 1024.0,
        mem0 as f64 / 1024.0,
        (mem.saturating_sub(mem0)) as f64 / devices as f64
    );
}
