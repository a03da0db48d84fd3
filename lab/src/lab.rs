//! Several hosts on one machine: network namespaces joined by bridges. Every name carries
//! the test process ID; `Drop` deletes the namespaces even when a test panics.
//!
//! As root the lab is built directly. Without root, a test that asks for a lab runs
//! itself again inside a user, network and mount namespace of its own (`unshare -Urnm`),
//! where it is root for networking and nothing else: the same scenario, no privilege.
//! The outer test passes or fails with the inner one.

use std::process::Command;

use super::{wait_until, Node};

pub struct Lab {
    pub switch: String,
    pub hosts: Vec<String>,
}

/// Runs `args` in namespace `ns`; `Err` says what failed and why.
fn in_ns(ns: &str, args: &[&str]) -> Result<(), String> {
    let what = args.join(" ");
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

pub fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Set in a test run again by [`rerun_in_user_namespace`].
const USERNS_ENV: &str = "CNSPR_TEST_USERNS";

/// Runs the calling test (its thread carries the test's name) again in a user, network
/// and mount namespace where this user maps to root, with a private `/run` for the
/// namespaces' mount points; panics when that run fails. Prints why and returns when
/// user namespaces are not available (the caller then skips).
fn rerun_in_user_namespace() {
    if std::env::var_os(USERNS_ENV).is_some() {
        eprintln!("skipping: not root even inside a user namespace");
        return;
    }
    let Some(test) = std::thread::current().name().map(str::to_string) else {
        eprintln!("skipping: network namespaces need root (test name unknown)");
        return;
    };
    let exe = std::env::current_exe().unwrap();
    let probe = Command::new("unshare")
        .args(["-Urnm", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !probe {
        eprintln!("skipping: network namespaces need root or unprivileged user namespaces (unshare -Urnm)");
        return;
    }
    eprintln!("not root: running {test} in a user namespace of its own");
    let out = Command::new("unshare")
        .args(["-Urnm", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs tmpfs /run && exec \"$0\" \"$@\"")
        .arg(&exe)
        .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(USERNS_ENV, "1")
        .env(
            "PATH",
            format!(
                "{}:/usr/sbin:/sbin",
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{test} failed in its user namespace:\n{text}"
    );
    assert!(
        text.contains("1 passed"),
        "{test} did not run in its user namespace:\n{text}"
    );
}

impl Lab {
    /// `n` hosts at 10.77.0.1.. on one bridge; `None` (with a printed reason) if not possible.
    /// Host `i`'s bridge port is `p{i}`.
    pub fn new(tag: &str, n: usize) -> Option<Lab> {
        let mut lab = Lab::with_bridges(tag, &["sw0"])?;
        for i in 0..n {
            let addr = format!("10.77.0.{}/24", i + 1);
            lab.add_host(&[("eth0", "sw0", &addr, &format!("p{i}"))]);
        }
        Some(lab)
    }

    /// A switch namespace with these bridges and no host yet.
    pub fn with_bridges(tag: &str, bridges: &[&str]) -> Option<Lab> {
        if !is_root() {
            rerun_in_user_namespace();
            return None;
        }
        let switch = format!("cl{}{tag}s", std::process::id());
        if !ip(&["netns", "add", &switch]) {
            eprintln!("skipping: cannot create network namespaces here");
            return None;
        }
        let lab = Lab {
            switch: switch.clone(),
            hosts: Vec::new(),
        };
        // The bridges forward frames as a switch does. Where the host has loaded
        // br_netfilter, every frame a bridge carries would also cross the switch
        // namespace's IP firewall hooks: work no switch does, charged to the CPU of the
        // device whose send crossed the bridge.
        for family in ["iptables", "ip6tables", "arptables"] {
            let key = format!("net.bridge.bridge-nf-call-{family}=0");
            let _ = Command::new("ip")
                .args(["netns", "exec", &switch, "sysctl", "-qw", &key])
                .stderr(std::process::Stdio::null())
                .status();
        }
        for br in bridges {
            assert!(ip(&[
                "-n", &switch, "link", "add", "name", br, "type", "bridge"
            ]));
            assert!(ip(&["-n", &switch, "link", "set", br, "up"]));
        }
        Some(lab)
    }

    /// Adds a host with one interface per leg `(interface, bridge, address/prefix, bridge
    /// port)`; a host with one leg gets a default route through it (needed for multicast).
    pub fn add_host(&mut self, legs: &[(&str, &str, &str, &str)]) {
        let base = self.switch.strip_suffix('s').unwrap_or(&self.switch);
        let h = format!("{base}h{}", self.hosts.len());
        assert!(ip(&["netns", "add", &h]));
        self.hosts.push(h.clone());
        // IPv4 only, so that removing the one address leaves the host with no usable
        // address at all (an IPv6 link-local address would count as usable).
        for k in ["all", "default"] {
            let _ = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &h,
                    "sysctl",
                    "-qw",
                    &format!("net.ipv6.conf.{k}.disable_ipv6=1"),
                ])
                .status();
        }
        for (ifname, br, addr, port) in legs {
            assert!(ip(&[
                "-n",
                &h,
                "link",
                "add",
                ifname,
                "type",
                "veth",
                "peer",
                "name",
                port,
                "netns",
                &self.switch
            ]));
            assert!(ip(&["-n", &self.switch, "link", "set", port, "master", br]));
            assert!(ip(&["-n", &self.switch, "link", "set", port, "up"]));
            assert!(ip(&["-n", &h, "addr", "add", addr, "dev", ifname]));
            assert!(ip(&["-n", &h, "link", "set", ifname, "up"]));
        }
        assert!(ip(&["-n", &h, "link", "set", "lo", "up"]));
        if let [(ifname, ..)] = legs {
            assert!(ip(&["-n", &h, "route", "add", "default", "dev", ifname]));
        }
    }

    /// Gives every veth of the lab what a device's network card has: GRO, and its
    /// received packets handled by a kernel thread of its own (threaded NAPI) instead of
    /// in the system call of whoever sent them. Without it, one send runs the switch,
    /// every router and the receiver's delivery on the sender's CPU time: a daemon held
    /// to a CPU budget (`bench::device_cpu`) would pay for the routers on its path.
    /// Returns how many links changed; `Err` says why not (`ethtool`, Debian package
    /// ethtool, is needed).
    pub fn device_links(&self) -> Result<usize, String> {
        let mut changed = 0;
        for ns in std::iter::once(&self.switch).chain(&self.hosts) {
            let out = Command::new("ip")
                .args(["-n", ns, "-o", "link", "show", "type", "veth"])
                .output()
                .map_err(|e| format!("ip: {e}"))?;
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            // Lines are `INDEX: NAME@PEER: <FLAGS> ...`.
            let names = text
                .lines()
                .filter_map(|l| l.split(": ").nth(1)?.split('@').next());
            for dev in names {
                in_ns(ns, &["ethtool", "-K", dev, "gro", "on"])?;
                let threaded = format!("echo 1 > /sys/class/net/{dev}/threaded");
                in_ns(ns, &["sh", "-c", &threaded])?;
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Cuts host `i` off the bridge (its port goes down): a partition.
    pub fn cut(&self, i: usize) {
        self.set_port(i, "down");
    }

    /// Puts host `i` back on the bridge.
    pub fn heal(&self, i: usize) {
        self.set_port(i, "up");
    }

    fn set_port(&self, i: usize, state: &str) {
        let port = format!("p{i}");
        assert!(ip(&["-n", &self.switch, "link", "set", &port, state]));
    }

    /// Every node trusts every other, at its host's address (hosts of [`Lab::new`], node
    /// `j` on host `j`, listening on port 7373).
    pub fn trust_all(&self, nodes: &[Node]) {
        for (i, a) in nodes.iter().enumerate() {
            for (j, b) in nodes.iter().enumerate() {
                if i != j {
                    let addr = format!("10.77.0.{}:7373", j + 1);
                    let out = a.cli(&["trust", &b.id, "--addr", &addr]);
                    assert!(out.status.success(), "trust: {}", super::stderr(&out));
                }
            }
        }
    }

    /// Host `i` (one interface, `eth0`, /24) loses its address `old` and gets `new`
    /// (break before make), its default route put back.
    pub fn move_host(&self, i: usize, old: &str, new: &str) {
        let h = &self.hosts[i];
        let (old, new) = (format!("{old}/24"), format!("{new}/24"));
        assert!(ip(&["-n", h, "addr", "del", &old, "dev", "eth0"]));
        assert!(ip(&["-n", h, "addr", "add", &new, "dev", "eth0"]));
        assert!(ip(&["-n", h, "route", "replace", "default", "dev", "eth0"]));
    }

    pub fn node(&self, i: usize, name: &str) -> Node {
        let mut n = Node::new(name, "");
        n.netns = Some(self.hosts[i].clone());
        n.listen = Some("0.0.0.0:7373".into());
        n.mdns = true;
        n
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for h in &self.hosts {
            ip(&["netns", "del", h]);
        }
        ip(&["netns", "del", &self.switch]);
    }
}

/// Waits until `n` sees `peer` active with an address starting with `prefix` first.
pub fn wait_reached_at(n: &Node, peer: &str, prefix: &str) {
    wait_until(&format!("{} to reach {peer} at {prefix}", n.name), || {
        n.peer(peer).is_some_and(|p| {
            p["state"] == "active"
                && p["addresses"][0]
                    .as_str()
                    .is_some_and(|s| s.starts_with(prefix))
        })
    });
}

/// Line topology A — B — C: B has a leg on two bridges, A and C share none.
pub fn line_lab(tag: &str) -> Option<Lab> {
    let mut lab = Lab::with_bridges(tag, &["sw0", "sw1"])?;
    lab.add_host(&[("eth0", "sw0", "10.77.0.1/24", "p00")]);
    lab.add_host(&[
        ("eth0", "sw0", "10.77.0.2/24", "p10"),
        ("eth1", "sw1", "10.78.0.2/24", "p11"),
    ]);
    lab.add_host(&[("eth0", "sw1", "10.78.0.3/24", "p20")]);
    Some(lab)
}
