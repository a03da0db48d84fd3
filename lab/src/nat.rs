//! A small internet in network namespaces: a "wan" bridge with public addresses from
//! 203.0.113.0/24, hosts on it, and home networks behind routers that translate
//! addresses with nftables, as consumer routers do.
//!
//! - [`Nat::Cone`]: `masquerade`. The mapping keeps the source port and does not depend
//!   on the destination; replies come in only from where the inside host sent to (a
//!   port-restricted cone, the common home router).
//! - [`Nat::Symmetric`]: `masquerade random`, a new external port per destination.
//!
//! Routers drop unsolicited packets to themselves (input policy drop, as real routers do:
//! an accepting router makes a conntrack entry that later clashes with its own outbound
//! translation) and forward from the wan only what belongs to a flow started inside.
//! Their UDP mappings expire after 30 s of silence.

use std::io::Write;
use std::process::{Command, Stdio};

use super::lab::{ip, Lab};
use super::Node;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    Cone,
    Symmetric,
}

pub struct Internet {
    pub lab: Lab,
    homes: u8,
    /// The wan's /24, e.g. `203.0.113`.
    pub prefix: String,
    /// Port-mapping daemons started on routers, stopped (by PID) on drop.
    upnp: Vec<std::process::Child>,
}

impl Drop for Internet {
    fn drop(&mut self) {
        for c in &mut self.upnp {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `cmd` with `args` in namespace `ns`; panics when it fails.
pub fn netns_run(ns: &str, cmd: &str, args: &[&str]) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, cmd])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Loads an nftables ruleset into namespace `ns`.
pub fn nft(ns: &str, rules: &str) {
    let mut c = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nft (Debian package nftables) is needed for the NAT lab");
    c.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft in {ns}: {}\n{rules}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The ruleset of a home router: `lan0` inside, `wan0` outside. With `upnp`, the
/// table and chains are the ones miniupnpd adds its rules to (it makes none itself).
pub fn router_rules(nat: Nat, upnp: bool) -> String {
    let masq = match nat {
        Nat::Cone => "masquerade",
        Nat::Symmetric => "masquerade random",
    };
    let (table, jump_fwd, jump_pre, jump_post, chains) = if upnp {
        (
            "filter",
            "jump miniupnpd\n",
            "jump prerouting_miniupnpd\n",
            "jump postrouting_miniupnpd\n",
            "  chain miniupnpd { }\n  chain prerouting_miniupnpd { }\n  chain postrouting_miniupnpd { }\n",
        )
    } else {
        ("home", "", "", "", "")
    };
    format!(
        "table inet {table} {{
  chain input {{
    type filter hook input priority filter; policy drop;
    ct state established,related accept
    iifname {{ \"lo\", \"lan0\" }} accept
  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    {jump_fwd}
    iifname \"lan0\" oifname \"wan0\" accept
  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    {jump_pre}
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    {jump_post}
    oifname \"wan0\" {masq}
  }}
{chains}}}
"
    )
}

impl Internet {
    /// An empty internet; `None` (with a printed reason) where namespaces cannot be made
    /// or nftables is missing.
    pub fn new(tag: &str) -> Option<Internet> {
        Internet::with_prefix(tag, "203.0.113")
    }

    /// An internet whose public addresses are `{prefix}.0/24`.
    pub fn with_prefix(tag: &str, prefix: &str) -> Option<Internet> {
        if Command::new("nft").arg("--version").output().is_err()
            && Command::new("/usr/sbin/nft")
                .arg("--version")
                .output()
                .is_err()
        {
            eprintln!("skipping: nft (Debian package nftables) is not installed");
            return None;
        }
        let lab = Lab::with_bridges(tag, &["wan"])?;
        Some(Internet {
            lab,
            homes: 0,
            prefix: prefix.into(),
            upnp: Vec::new(),
        })
    }

    /// A host with a public address `{prefix}.{last}` on the wan; returns its index.
    pub fn public_host(&mut self, last: u8) -> usize {
        let i = self.lab.hosts.len();
        let addr = format!("{}.{last}/24", self.prefix);
        self.lab
            .add_host(&[("eth0", "wan", &addr, &format!("w{i}"))]);
        i
    }

    /// A home network `10.{k}.0.0/24` behind a router at `{prefix}.{wan_last}` that
    /// translates with `nat`, and one device at `10.{k}.0.2`; returns the indices of
    /// (router, device).
    pub fn home(&mut self, wan_last: u8, nat: Nat) -> (usize, usize) {
        self.home_with(wan_last, nat, false)
    }

    /// [`Internet::home`] whose router also runs miniupnpd (UPnP-IGD, NAT-PMP and PCP)
    /// for the devices inside; `None` (with a printed reason) where it is not installed.
    /// miniupnpd refuses to map on a reserved public address, such as the documentation
    /// ranges: use an internet [`Internet::with_prefix`] outside them (the namespaces
    /// have no way out, so nothing reaches the real owner of those addresses).
    pub fn upnp_home(&mut self, wan_last: u8, nat: Nat) -> Option<(usize, usize)> {
        if !std::path::Path::new("/usr/sbin/miniupnpd").exists() {
            eprintln!("skipping: miniupnpd (Debian package miniupnpd-nftables) is not installed");
            return None;
        }
        let (r, d) = self.home_with(wan_last, nat, true);
        let dir = std::env::temp_dir().join(format!("{}-upnp{r}", self.lab.switch));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("miniupnpd.conf");
        std::fs::write(
            &conf,
            "ext_ifname=wan0\nlistening_ip=lan0\nhttp_port=0\nenable_natpmp=yes\nenable_upnp=yes\n\
             secure_mode=yes\nsystem_uptime=yes\nuuid=3f2d6c1e-9a7b-4c1d-8e2f-0123456789ab\n\
             upnp_table_name=filter\nupnp_nat_table_name=filter\nupnp_forward_chain=miniupnpd\n\
             upnp_nat_chain=prerouting_miniupnpd\nupnp_nat_postrouting_chain=postrouting_miniupnpd\n\
             min_lifetime=120\nmax_lifetime=86400\n\
             allow 1024-65535 10.0.0.0/8 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n",
        )
        .unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                self.ns(r),
                "/usr/sbin/miniupnpd",
                "-d",
                "-f",
            ])
            .arg(&conf)
            .arg("-P")
            .arg(dir.join("pid"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("log")).unwrap())
            .spawn()
            .unwrap();
        self.upnp.push(child);
        Some((r, d))
    }

    fn home_with(&mut self, wan_last: u8, nat: Nat, upnp: bool) -> (usize, usize) {
        self.homes += 1;
        let k = self.homes;
        let br = format!("lan{k}");
        assert!(ip(&[
            "-n",
            &self.lab.switch,
            "link",
            "add",
            "name",
            &br,
            "type",
            "bridge"
        ]));
        assert!(ip(&["-n", &self.lab.switch, "link", "set", &br, "up"]));
        let r = self.lab.hosts.len();
        self.lab.add_host(&[
            (
                "wan0",
                "wan",
                &format!("{}.{wan_last}/24", self.prefix),
                &format!("w{r}"),
            ),
            ("lan0", &br, &format!("10.{k}.0.1/24"), &format!("l{r}")),
        ]);
        let router = self.lab.hosts[r].clone();
        netns_run(&router, "sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        nft(&router, &router_rules(nat, upnp));
        netns_run(
            &router,
            "sysctl",
            &["-qw", "net.netfilter.nf_conntrack_udp_timeout=30"],
        );
        let d = self.lab.hosts.len();
        self.lab
            .add_host(&[("eth0", &br, &format!("10.{k}.0.2/24"), &format!("d{d}"))]);
        assert!(ip(&[
            "-n",
            &self.lab.hosts[d],
            "route",
            "replace",
            "default",
            "via",
            &format!("10.{k}.0.1"),
            "dev",
            "eth0"
        ]));
        (r, d)
    }

    /// Adds `ms` of delay to everything router `r` sends to the wan; false (with a
    /// printed reason) where the kernel has no netem.
    pub fn delay(&self, r: usize, ms: u32) -> bool {
        let d = format!("{ms}ms");
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                self.ns(r),
                "tc",
                "qdisc",
                "replace",
                "dev",
                "wan0",
            ])
            .args(["root", "netem", "delay", &d])
            .output()
            .unwrap();
        if !out.status.success() {
            eprintln!(
                "no added delay (tc netem: {})",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        out.status.success()
    }

    /// Router `r` forwards nothing to or from `addr` (a firewall in the way) until
    /// [`Internet::unblock`].
    pub fn block(&self, r: usize, addr: &str) {
        self.block_each(r, &[addr]);
    }

    /// Router `r` forwards nothing to or from any of `addrs` until [`Internet::unblock`].
    pub fn block_each(&self, r: usize, addrs: &[&str]) {
        assert!(!addrs.is_empty(), "block_each: no address to block");
        let set = addrs.join(", ");
        nft(
            self.ns(r),
            &format!(
                "table inet block {{
  chain forward {{
    type filter hook forward priority filter - 10; policy accept;
    ip daddr {{ {set} }} drop
    ip saddr {{ {set} }} drop
  }}
}}
"
            ),
        );
    }

    pub fn unblock(&self, r: usize) {
        nft(self.ns(r), "delete table inet block\n");
    }

    /// The namespace of host `i`.
    pub fn ns(&self, i: usize) -> &str {
        &self.lab.hosts[i]
    }

    /// A node on host `i`, listening on port 7373 of every address, without mDNS (the
    /// hosts of this lab share no LAN), asking its router for a port mapping.
    pub fn node(&self, i: usize, name: &str) -> Node {
        let mut n = self.lab.node(i, name);
        n.mdns = false;
        n.portmap = true;
        n
    }

    /// Router `r` "reboots": it forgets every translation and comes back with the
    /// public address `{prefix}.{new_last}` instead of `{prefix}.{old_last}`.
    pub fn reboot(&self, r: usize, old_last: u8, new_last: u8) {
        let ns = self.ns(r).to_string();
        assert!(ip(&[
            "-n",
            &ns,
            "addr",
            "del",
            &format!("{}.{old_last}/24", self.prefix),
            "dev",
            "wan0"
        ]));
        netns_run(&ns, "conntrack", &["-F"]);
        assert!(ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}.{new_last}/24", self.prefix),
            "dev",
            "wan0"
        ]));
    }
}

/// Datagrams `n` has passed on for other members so far (`forwarded_for_members` in its
/// status): a stream it joins instead (decrypting and encrypting it) passes next to none.
pub fn forwarded_for_members(n: &Node) -> u64 {
    n.json(&["status"])["forwarded_for_members"]
        .as_u64()
        .unwrap_or(0)
}
