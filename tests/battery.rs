//! The battery profile (docs/membership.md, "Battery profile"): a device on battery sends
//! one heartbeat per 20 s and nothing else while idle, is shown `active` with its last
//! seen time, is reached at once, and its absence is seen within a minute; `auto`
//! follows the power supply.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::lab::*;
use common::*;

/// The counters of chain `chain` of the namespace's nftables table, in rule order.
fn counters(ns: &str, chain: &str) -> Vec<u64> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "nft",
            "list",
            "chain",
            "ip",
            "cnsprcount",
            chain,
        ])
        .output()
        .expect("nft");
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == "packets")
        .map(|w| {
            w[1].parse()
                .unwrap_or_else(|_| panic!("bad counter in: {text}"))
        })
        .collect()
}

/// What the namespace sent and received since `count_traffic`: (heartbeats sent, other
/// IP packets sent, IP packets received). A heartbeat is a 42-byte UDP datagram (UDP
/// length 50). ARP is not IP and is not counted.
fn traffic(ns: &str) -> (u64, u64, u64) {
    let out = counters(ns, "out");
    let inp = counters(ns, "in");
    assert!(out.len() == 2 && inp.len() == 1, "{out:?} {inp:?}");
    (out[0], out[1] - out[0], inp[0])
}

fn count_traffic(ns: &str) {
    for rule in [
        "add table ip cnsprcount",
        "add chain ip cnsprcount out { type filter hook output priority 0 ; }",
        "add rule ip cnsprcount out udp length 50 counter",
        "add rule ip cnsprcount out counter",
        "add chain ip cnsprcount in { type filter hook input priority 0 ; }",
        "add rule ip cnsprcount in counter",
    ] {
        let ok = Command::new("ip")
            .args(["netns", "exec", ns, "nft"])
            .args(rule.split(' '))
            .status()
            .expect("nft")
            .success();
        assert!(ok, "nft {rule}");
    }
}

/// Voluntary context switches of every thread of `pid`: its wake-ups.
fn wakeups(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

fn wait_long(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    t0.elapsed()
}

#[test]
fn a_device_on_battery_is_watched_gently_and_still_reached_at_once() {
    let Some(lab) = Lab::new("bat", 4) else {
        return;
    };
    let mut nodes: Vec<Node> = ["phone", "desk", "laptop", "tv"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut n = lab.node(i, name);
            // mDNS is measured apart: this counts what membership costs.
            n.mdns = false;
            n
        })
        .collect();
    std::fs::write(nodes[0].path("config.toml"), "profile = \"battery\"\n").unwrap();
    nodes[0].handler("hello", "echo hi");
    for n in nodes.iter_mut() {
        n.start();
    }
    lab.trust_all(&nodes);
    for a in &nodes {
        for b in &nodes {
            if a.name != b.name {
                a.wait_state(&b.name, "active");
            }
        }
    }
    let phone = &nodes[0];
    let st = phone.json(&["status"]);
    assert_eq!(st["profile"]["current"], "battery", "{st}");
    assert_eq!(st["profile"]["source"], "config", "{st}");
    assert_eq!(nodes[1].json(&["status"])["profile"]["current"], "mains");

    // Settled (the monitors took the new profile, the first beats went out), then a
    // minute of idle traffic counted.
    std::thread::sleep(Duration::from_secs(25));
    count_traffic(&lab.hosts[0]);
    let (b0, o0, r0) = traffic(&lab.hosts[0]);
    let (w0, t0) = (wakeups(phone.pid()), Instant::now());
    let window = Duration::from_secs(60);
    let mut checks = 0;
    while t0.elapsed() < window {
        std::thread::sleep(Duration::from_secs(5));
        // The others read the phone `active` (reading their socket costs the phone
        // nothing) with a last-seen time.
        for n in &nodes[1..] {
            let p = n.peer("phone").expect("listed");
            assert_eq!(p["state"], "active", "{} sees {p}", n.name);
            assert!(p["last_seen"].is_u64(), "{p}");
        }
        checks += 1;
    }
    let secs = t0.elapsed().as_secs_f64();
    let (b1, o1, r1) = traffic(&lab.hosts[0]);
    let (beats, other, received) = (b1 - b0, o1 - o0, r1 - r0);
    let woke = wakeups(phone.pid()) - w0;
    println!(
        "battery profile: in {secs:.1} s the phone sent {beats} heartbeats and {other} other \
         packets, and received {received}; {woke} voluntary context switches of its \
         threads; {checks} checks, always active"
    );
    assert!(
        beats as f64 <= (secs / 20.0).ceil(),
        "{beats} heartbeats in {secs:.1} s: more than one per 20 s"
    );
    // Anything else it sent answers what came to it: QUIC acknowledges each packet at
    // once, and a digest exchange its beat started costs one reply more. What comes is
    // the others' news (a record re-published when a round-trip time moved, on a busy
    // machine). On a quiet mesh both are 0.
    assert!(
        other <= 2 * received,
        "{other} packets sent besides heartbeats for {received} received: it started traffic"
    );

    // Messages and streams start at once: direct, no wake-up to wait for.
    let out = nodes[1].cli(&["ping", "phone"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("direct"), "{text}");
    let out = nodes[2].cli(&["send", "phone", "hello", "--reply"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Gone: everyone sees it within a minute (the deadline is only there to end a hang).
    let mut phone = nodes.remove(0);
    phone.kill9();
    let took = wait_long(
        "everyone to see the phone gone",
        Duration::from_secs(90),
        || {
            nodes
                .iter()
                .all(|n| n.peer("phone").is_some_and(|p| p["state"] == "unreachable"))
        },
    );
    println!("battery profile: the phone's absence seen everywhere {took:.1?} after its kill");
}

#[test]
fn auto_follows_the_power_supply() {
    let supply = tempfile::tempdir().unwrap();
    let write = |name: &str, attrs: &[(&str, &str)]| {
        let d = supply.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        for (k, v) in attrs {
            std::fs::write(d.join(k), format!("{v}\n")).unwrap();
        }
    };
    write("AC", &[("type", "Mains"), ("online", "0")]);
    write("BAT0", &[("type", "Battery"), ("status", "Discharging")]);
    // Only this test's daemon reads it (each test file is its own process).
    std::env::set_var("CNSPR_POWER_SUPPLY_DIR", supply.path());
    let mut n = Node::new("laptop", "");
    n.start();
    let profile = |n: &Node| n.json(&["status"])["profile"].clone();
    wait_until("the laptop on battery", || {
        profile(&n)["current"] == "battery"
    });
    assert_eq!(profile(&n)["source"], "auto");
    let text = String::from_utf8_lossy(&n.cli(&["status"]).stdout).to_string();
    assert!(text.contains("Profile:   battery (auto)"), "{text}");
    // Plugged in: within a check period (10 s; on battery at its next beat, 20 s).
    write("AC", &[("online", "1")]);
    write("BAT0", &[("status", "Charging")]);
    wait_long("the laptop on mains", Duration::from_secs(40), || {
        profile(&n)["current"] == "mains"
    });
    write("AC", &[("online", "0")]);
    write("BAT0", &[("status", "Discharging")]);
    wait_long(
        "the laptop on battery again",
        Duration::from_secs(40),
        || profile(&n)["current"] == "battery",
    );
    n.stop();
}
