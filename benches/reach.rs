//! Reach benchmark in a NAT lab (network namespaces; root or a user namespace, and
//! nftables; skips with a reason otherwise): a public member m, devices a and b behind
//! two home routers (port-restricted cone NAT), and, as the anchor measured in the same
//! run, two devices p and q with public addresses on the same wan (no NAT).
//!
//! Prints, each with its target and its ratio to the anchor:
//! - time from both devices up (started and trusting each other) until a reaches b by a
//!   direct path, p50 and p99 over `CNSPR_BENCH_TRIALS` trials (default 20), fresh
//!   identities each trial; anchor: p and q until active;
//! - time until a first message from a is delivered to b (through m or direct, whichever
//!   is up first); anchor: the same between p and q;
//! - bytes the member in between passes on per punch exchange (its `Punch` frames);
//! - a stream's throughput (256 MiB, `CNSPR_BENCH_STREAM_MIB`; medians of 5 rounds,
//!   `CNSPR_BENCH_STREAM_ROUNDS`), the rounds alternating between a→b through m (a
//!   firewall between their routers, and between theirs and c's and d's, so that m is the
//!   only member both reach directly; over a and b's own connection, whose packets m
//!   passes on), c→d directly across two other home routers of the same kind, and p→q
//!   with no NAT; with each round's figures.
//!
//! No delay is added where the kernel has no `netem` (it says so).
//!
//! Also prints the CPU time per GiB of each path's streams: each daemon's, and the whole
//! machine's (busy, of it soft interrupts, where the routers' and veths' packets are
//! handled; on the member path, the members that may pass the packets on, m, c and d,
//! together), and which members a→b and b→a went through each round. With
//! `CNSPR_BENCH_PERF=DIR`, perf samples a, b, m, c and d during the first stream through
//! a member (`DIR/reach-a.data` and so on; `perf report -i FILE`).
//!
//! The lab's links get GRO and threaded NAPI first (`Lab::device_links`; needs ethtool),
//! as on devices' network cards: each hop's receive work runs in a kernel thread of its
//! own, not in the sending daemon's system call.
//!
//! The stream rounds run twice: with the daemons sharing the machine's CPUs, then with
//! every daemon held to a share of one CPU (a cgroup CPU quota each;
//! `CNSPR_BENCH_DEVICE_CPU`, 0.1 to 1, 0.5 unless set, 0 to leave it out), as if each ran
//! on a device of its own: sharing, the three daemons of the member path have the CPUs
//! the direct path gives two.
//!
//! Run: `cargo bench --bench reach`

use cnspr_lab as common;

use std::time::{Duration, Instant};

use common::bench::*;
use common::nat::*;
use common::*;

/// m, a and b trust each other; a and b know m's address. m first, as a person would
/// set it up.
fn join(m: &Node, a: &Node, b: &Node, m_addr: &str) {
    trust(m, a, None);
    trust(m, b, None);
    trust(a, b, None);
    trust(b, a, None);
    trust(a, m, Some(m_addr));
    trust(b, m, Some(m_addr));
}

/// Waits until `n` sees `peer` in `state` (and, if given, by a `kind` path).
fn wait_for(n: &Node, peer: &str, state: &str, kind: Option<&str>, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if n.peer(peer)
            .is_some_and(|p| p["state"] == state && kind.is_none_or(|k| p["path"]["kind"] == k))
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

fn main() {
    let trials = trials(20);
    let Some(mut net) = Internet::new("bre") else {
        return;
    };
    let hm = net.public_host(10);
    let (ra, ha) = net.home(1, Nat::Cone);
    let (rb, hb) = net.home(2, Nat::Cone);
    let (rc, hc) = net.home(3, Nat::Cone);
    let (rd, hd) = net.home(4, Nat::Cone);
    let hp = net.public_host(21);
    let hq = net.public_host(22);
    let delayed = [ra, rb, rc, rd]
        .map(|r| net.delay(r, 20))
        .iter()
        .all(|d| *d);
    let mut m = quiet(net.node(hm, "m"));
    m.start();
    let m_addr = "203.0.113.10:7373";

    let mut direct = Vec::new();
    let mut msg = Vec::new();
    let mut anchor_direct = Vec::new();
    let mut anchor_msg = Vec::new();
    let mut punch_bytes = Vec::new();
    for t in 0..trials {
        for r in [ra, rb] {
            netns_run(net.ns(r), "conntrack", &["-F"]);
        }
        let mut a = quiet(net.node(ha, "a"));
        let mut b = quiet(net.node(hb, "b"));
        a.start();
        b.start();
        let before = m.log().matches("punch frame passed on").count();
        join(&m, &a, &b, m_addr);
        let t0 = Instant::now();
        msg.push(first_message(&a, t0).as_secs_f64());
        assert!(
            wait_for(&a, "b", "active", Some("direct"), Duration::from_secs(30)),
            "trial {t}: no direct path\n{}",
            a.log()
        );
        direct.push(t0.elapsed().as_secs_f64());
        let log = m.log();
        let frames: Vec<usize> = log
            .lines()
            .filter(|l| l.contains("punch frame passed on"))
            .skip(before)
            .filter_map(|l| {
                l.split("bytes=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        if !frames.is_empty() {
            punch_bytes.push(frames.iter().sum::<usize>() as f64 / (frames.len() as f64 / 3.0));
        }
        // Forget them at m (the next trial has fresh identities).
        for n in [&a, &b] {
            let _ = m.cli(&["remove", &n.id]);
        }
        drop(a);
        drop(b);

        let (p, _q) = public_pair(&net, hp, hq);
        let t0 = Instant::now();
        anchor_msg.push(first_message(&p, t0).as_secs_f64());
        assert!(wait_for(&p, "b", "active", None, Duration::from_secs(30)));
        anchor_direct.push(t0.elapsed().as_secs_f64());
    }

    // Throughput, in rounds that alternate between three transfers so that what else the
    // machine runs weighs on each alike: a→b through a member (a firewall between their
    // routers; over a and b's own connection, whose packets m passes on), c→d
    // directly across two other home routers of the same kind, and p→q with no NAT.
    let mut a = quiet(net.node(ha, "a"));
    let mut b = quiet(net.node(hb, "b"));
    let mut c = quiet(net.node(hc, "c"));
    let mut d = quiet(net.node(hd, "d"));
    for n in [&mut a, &mut b, &mut c, &mut d] {
        n.start();
    }
    join(&m, &a, &b, m_addr);
    join(&m, &c, &d, m_addr);
    // A firewall between a's and b's routers, and between theirs and c's and d's: the
    // only member both reach directly is m (else c or d, behind home routers of their
    // own, may pass the packets on, which here costs the shared machine more: their
    // routers' crossings too).
    let a_log_from = a.log().len();
    net.block(ra, "{ 203.0.113.2, 203.0.113.3, 203.0.113.4 }");
    net.block(rb, "{ 203.0.113.3, 203.0.113.4 }");
    assert!(wait_for(
        &a,
        "b",
        "indirect",
        Some("member"),
        Duration::from_secs(30)
    ));
    wait_until("a and b to go through m", || {
        [(&a, "b"), (&b, "a")]
            .iter()
            .all(|(n, to)| n.peer(to).is_some_and(|p| p["via"][0] == "m"))
    });
    // a and b then get a connection of their own whose packets m passes on (a's
    // connections to c and d may go through m too).
    wait_until("a connection to b through m", || {
        a.log().get(a_log_from..).is_some_and(|l| {
            l.contains("connection through a member that passes the packets on peer=b via=m")
        })
    });
    assert!(wait_for(
        &c,
        "d",
        "active",
        Some("direct"),
        Duration::from_secs(30)
    ));
    let (p, q) = public_pair(&net, hp, hq);
    assert!(wait_for(&p, "b", "active", None, Duration::from_secs(30)));
    let daemons = Daemons {
        a: &a,
        b: &b,
        c: &c,
        d: &d,
        m: &m,
        p: &p,
        q: &q,
    };
    let mib = stream_mib(256);
    let rounds = stream_rounds(5);
    // Every link like a device's network card (GRO, a receive thread of its own), so
    // that no daemon's CPU time carries the routers' work.
    let links = match net.lab.device_links() {
        Ok(n) => format!("{n} links with GRO and threaded NAPI, as devices' network cards"),
        Err(why) => format!("links as the kernel makes them (not changed: {why})"),
    };
    let shared = streams(&daemons, mib, rounds, true);
    // Then again with every daemon held to a share of one CPU, as on devices of their
    // own (CNSPR_BENCH_DEVICE_CPU, 0.5 unless set; 0 leaves it out).
    let held = match device_cpu(&[&m, &a, &b, &c, &d, &p, &q]) {
        Ok(Some((share, hold))) => {
            let text = streams(&daemons, mib, rounds, false);
            drop(hold);
            format!("each daemon held to {share} of a CPU, as on a device of its own:\n{text}")
        }
        Ok(None) => {
            "each daemon held to a share of a CPU: left out (CNSPR_BENCH_DEVICE_CPU=0)".into()
        }
        Err(why) => format!("each daemon held to a share of a CPU: not measured ({why})"),
    };
    // The paths were what the figures say until the end.
    assert!(wait_for(
        &a,
        "b",
        "indirect",
        Some("member"),
        Duration::from_secs(2)
    ));
    assert!(wait_for(
        &c,
        "d",
        "active",
        Some("direct"),
        Duration::from_secs(2)
    ));
    net.unblock(ra);
    net.unblock(rb);

    let d50 = pct(&mut direct, 0.5);
    let d99 = pct(&mut direct, 0.99);
    let a50 = pct(&mut anchor_direct, 0.5);
    let a99 = pct(&mut anchor_direct, 0.99);
    let m50 = pct(&mut msg, 0.5);
    let am50 = pct(&mut anchor_msg, 0.5);
    println!(
        "reach: {trials} trials, {}",
        if delayed {
            "20 ms added per router"
        } else {
            "no added delay (no tc netem in this kernel)"
        }
    );
    println!(
        "  both up -> direct path across two NATs: p50 {d50:.3} s (target 3 s, {:.2}x), p99 {d99:.3} s (target 10 s, {:.2}x); no-NAT anchor p50 {a50:.3} s, p99 {a99:.3} s: ratio {:.2}x / {:.2}x",
        d50 / 3.0,
        d99 / 10.0,
        d50 / a50,
        d99 / a99
    );
    println!(
        "  both up -> first message delivered: p50 {m50:.3} s (target 1 s, {:.2}x); no-NAT anchor p50 {am50:.3} s: ratio {:.2}x",
        m50 / 1.0,
        m50 / am50
    );
    if punch_bytes.is_empty() {
        println!("  punch exchanges through m: none (the routers let the first dials through)");
    } else {
        let pb = pct(&mut punch_bytes, 0.5);
        println!(
            "  bytes m passes on per punch exchange (3 frames, frame payloads): p50 {pb:.0} B (target 4096 B, {:.2}x)",
            pb / 4096.0
        );
    }
    println!("  streams over {links}; sharing the machine's CPUs:\n{shared}\n  {held}");
    drop((a, b, c, d, p, q, m));
}

/// The daemons of the stream rounds: a and b (through m), c and d (direct, across two
/// other home routers), p and q (no NAT).
struct Daemons<'a> {
    a: &'a Node,
    b: &'a Node,
    c: &'a Node,
    d: &'a Node,
    m: &'a Node,
    p: &'a Node,
    q: &'a Node,
}

/// `rounds` rounds of one `mib` MiB stream on each path (with `perf`, the first through
/// a member sampled when `CNSPR_BENCH_PERF` is set); their medians, every round's
/// figures, and the CPU they cost.
fn streams(l: &Daemons, mib: usize, rounds: usize, perf: bool) -> String {
    let Daemons {
        a,
        b,
        c,
        d,
        m,
        p,
        q,
    } = *l;
    let (mut thr_direct, mut thr_member, mut thr_plain) = (Vec::new(), Vec::new(), Vec::new());
    let (mut cpu_direct, mut cpu_member) = (Cpu::default(), Cpu::default());
    // The member that passes a and b's packets on is m, the only member both reach
    // directly. The member column still sums m's, c's and d's CPU (c and d carry no
    // stream of their own in those rounds), and each round says the routes before and
    // after it, should a route change all the same.
    let route = |from: &Node, to: &str| {
        from.peer(to)
            .and_then(|p| p["via"][0].as_str().map(str::to_string))
            .unwrap_or_else(|| "none".to_string())
    };
    let routes = || format!("{}/{}", route(a, "b"), route(b, "a"));
    // Datagrams m passed on so far: a round whose stream m joined instead (its own
    // streams to a and b, decrypted and encrypted again) passes next to none on.
    let passed = || forwarded_for_members(m);
    let mut went = Vec::new();
    let mut joined = Vec::new();
    for round in 0..rounds {
        thr_direct.push(cpu_direct.of(&[&[c], &[d]], mib, || stream_of(c, d, "d", mib)));
        let before = routes();
        let perf = (perf && round == 0)
            .then(|| perf_of(&[("a", a), ("b", b), ("m", m), ("c", c), ("d", d)]));
        let members: &[&Node] = &[m, c, d];
        let passed_before = passed();
        thr_member.push(cpu_member.of(&[&[a], &[b], members], mib, || stream_of(a, b, "b", mib)));
        // Fewer datagrams passed on than half the stream's 1,452-byte ones: joined.
        if passed().saturating_sub(passed_before) < ((mib as u64) << 20) / 1452 / 2 {
            joined.push(round + 1);
        }
        drop(perf);
        let after = routes();
        went.push(if after == before {
            before
        } else {
            format!("{before} then {after}")
        });
        thr_plain.push(stream_of(p, q, "b", mib));
    }
    let ratios: Vec<String> = thr_member
        .iter()
        .zip(&thr_direct)
        .map(|(m, d)| format!("{:.2}", m / d))
        .collect();
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let rounds_text = format!(
        "rounds: direct {}, through a member {}, no NAT {} MiB/s; member/direct per round {}; the members a→b/b→a went through (a's and b's routes): {}",
        list(&thr_direct),
        list(&thr_member),
        list(&thr_plain),
        ratios.join(" "),
        went.join(", ")
    );
    let joined_text = if joined.is_empty() {
        "m passed the packets on in every round".to_string()
    } else {
        format!(
            "m joined the stream (decrypted and encrypted it) instead of passing the packets on in round(s) {joined:?}"
        )
    };
    let thr_direct = pct(&mut thr_direct, 0.5);
    let thr_member = pct(&mut thr_member, 0.5);
    let thr_plain = pct(&mut thr_plain, 0.5);
    format!(
        "  {mib} MiB stream, medians of {rounds}: direct across NATs {thr_direct:.1} MiB/s, through a member {thr_member:.1} MiB/s (target 0.80x direct), no NAT {thr_plain:.1} MiB/s; direct/no-NAT {:.2}x, member/direct {:.2}x\n    {rounds_text}\n    {joined_text}\n  CPU seconds per GiB of the stream, medians (sender, receiver[, the members m, c and d together]; the whole machine, of it soft interrupts):\n    direct {}\n    through a member {}",
        thr_direct / thr_plain,
        thr_member / thr_direct,
        cpu_direct.text(),
        cpu_member.text()
    )
}

/// With `CNSPR_BENCH_PERF=DIR`: perf samples each of `nodes` (software clock, call
/// graphs) for 2 s from half a second on, into `DIR/reach-NAME.data` (`perf report -i
/// FILE`). Waits for the samplers when dropped.
fn perf_of(nodes: &[(&str, &Node)]) -> Perf {
    let Ok(dir) = std::env::var("CNSPR_BENCH_PERF") else {
        return Perf(Vec::new());
    };
    std::fs::create_dir_all(&dir).expect("CNSPR_BENCH_PERF: a directory");
    let samplers = nodes
        .iter()
        .filter_map(|(name, n)| {
            let script = format!(
                "sleep 0.5; exec perf record -q -g -e cpu-clock -p {} -o {dir}/reach-{name}.data -- sleep 2",
                n.pid()
            );
            std::process::Command::new("sh")
                .args(["-c", &script])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .inspect_err(|e| println!("  perf: {e}"))
                .ok()
        })
        .collect();
    Perf(samplers)
}

struct Perf(Vec<std::process::Child>);

impl Drop for Perf {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// CPU seconds per GiB spent during each round of one path's streams: by each daemon
/// on it, and by the whole machine (busy; soft interrupts).
#[derive(Default)]
struct Cpu {
    daemons: Vec<Vec<f64>>,
    machine: Vec<f64>,
    softirq: Vec<f64>,
}

impl Cpu {
    /// Runs `stream` and records the CPU each group of daemons spent on it (summed
    /// within a group) per GiB.
    fn of(&mut self, groups: &[&[&Node]], mib: usize, stream: impl FnOnce() -> f64) -> f64 {
        let spent = |g: &[&Node]| g.iter().map(|n| cpu_secs(n.pid())).sum::<f64>();
        let before: Vec<f64> = groups.iter().map(|g| spent(g)).collect();
        let (busy0, soft0) = machine_cpu_secs();
        let thr = stream();
        let (busy1, soft1) = machine_cpu_secs();
        let gib = mib as f64 / 1024.0;
        self.daemons.resize(groups.len(), Vec::new());
        for (i, g) in groups.iter().enumerate() {
            self.daemons[i].push((spent(g) - before[i]) / gib);
        }
        self.machine.push((busy1 - busy0) / gib);
        self.softirq.push((soft1 - soft0) / gib);
        thr
    }

    fn text(&mut self) -> String {
        let daemons: Vec<String> = self
            .daemons
            .iter_mut()
            .map(|v| format!("{:.2}", pct(v, 0.5)))
            .collect();
        format!(
            "daemons {} s; machine {:.2} s, soft interrupts {:.2} s",
            daemons.join(" / "),
            pct(&mut self.machine, 0.5),
            pct(&mut self.softirq, 0.5)
        )
    }
}
