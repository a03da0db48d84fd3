//! Several hosts on one machine: network namespaces joined by a bridge (root only).

mod common;

use common::lab::*;
use common::*;

#[test]
fn trusted_devices_find_each_other_by_mdns_and_follow_address_changes() {
    let Some(lab) = Lab::new("m", 3) else { return };
    let mut a = lab.node(0, "alpha");
    let mut b = lab.node(1, "beta");
    let mut c = lab.node(2, "gamma");
    let out = b.out().display().to_string();
    b.handler("daemon/inactive", &format!("echo inactive >> {out}/net"));
    b.handler("daemon/active", &format!("echo active >> {out}/net"));
    for n in [&mut a, &mut b, &mut c] {
        n.start();
    }
    // Trust by ID only: no address typed anywhere.
    assert!(a.cli(&["trust", &b.id]).status.success());
    assert!(b.cli(&["trust", &a.id]).status.success());
    a.wait_state("beta", "active");
    b.wait_state("alpha", "active");
    let addr = a.peer("beta").unwrap()["addresses"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(addr.starts_with("10.77.0.2:"), "{addr}");
    // gamma is on the LAN but trusted by nobody: it is never a peer.
    assert!(a.peer("gamma").is_none() && c.json(&["peers"]).as_array().unwrap().is_empty());

    // beta moves to another address: its links come back by themselves, and its
    // daemon/inactive then daemon/active handlers ran.
    let h = &lab.hosts[1];
    assert!(ip(&["-n", h, "addr", "del", "10.77.0.2/24", "dev", "eth0"]));
    wait_until("daemon/inactive on beta", || {
        file(&b.out().join("net")).is_some_and(|f| String::from_utf8_lossy(&f).contains("inactive"))
    });
    assert!(ip(&[
        "-n",
        h,
        "addr",
        "add",
        "10.77.0.12/24",
        "dev",
        "eth0"
    ]));
    assert!(ip(&["-n", h, "route", "replace", "default", "dev", "eth0"]));
    wait_until("daemon/active again on beta", || {
        file(&b.out().join("net"))
            .is_some_and(|f| String::from_utf8_lossy(&f).ends_with("inactive\nactive\n"))
    });
    wait_reached_at(&a, "beta", "10.77.0.12:");
    b.wait_state("alpha", "active");
    let r = a.cli(&["ping", "beta"]);
    assert!(r.status.success(), "{}", stderr(&r));
}

/// `cnspr pair` / `cnspr pair CODE` on a LAN: the window is found by mDNS (no address
/// typed), the joiner then knows the whole mesh, and nearby untrusted devices are listed.
#[test]
fn pairing_by_mdns_joins_the_mesh() {
    let Some(lab) = Lab::new("p", 3) else { return };
    let mut a = lab.node(0, "alpha");
    let mut b = lab.node(1, "beta");
    let mut c = lab.node(2, "gamma");
    for n in [&mut a, &mut b, &mut c] {
        n.start();
    }
    // `pair CODE` waits (up to --timeout) for the window to show up by mDNS.
    pair_by_mdns(&a, &b, None);
    a.wait_state("beta", "active");
    b.wait_state("alpha", "active");
    // gamma, untrusted, is listed as nearby by `cnspr pair` on beta.
    wait_until("beta to list gamma as nearby", || {
        let out = b.cli(&["--json", "pair", "--timeout", "1"]);
        let first = String::from_utf8_lossy(&out.stdout);
        let first = first.lines().next().unwrap_or("");
        serde_json::from_str::<serde_json::Value>(first).is_ok_and(|v| {
            v["nearby"]
                .as_array()
                .is_some_and(|n| n.iter().any(|d| d["name"] == "gamma"))
        })
    });
    // gamma pairs with beta; alpha learns it by gossip and they connect.
    pair_by_mdns(&b, &c, Some("gamma"));
    a.wait_state("gamma", "active");
    c.wait_state("alpha", "active");
}

#[test]
fn line_topology_relays_through_the_middle_member() {
    let Some(lab) = line_lab("l") else { return };
    let mut a = lab.node(0, "alpha");
    let mut b = lab.node(1, "beta");
    let mut c = lab.node(2, "gamma");
    for (n, who) in [(&b, "beta"), (&c, "gamma")] {
        let out = n.out().display().to_string();
        n.handler(
            "x/hello",
            &format!("echo \"$CNSPR_FROM $(cat)\" >> {out}/hello"),
        );
        n.handler("x/all", &format!("echo \"{who} $CNSPR_FROM\" >> {out}/all"));
    }
    for n in [&mut a, &mut b, &mut c] {
        n.start();
    }
    // Everyone trusts everyone by ID only; mDNS finds the direct neighbours.
    for x in [&a, &b, &c] {
        for y in [&a, &b, &c] {
            if x.id != y.id {
                assert!(x.cli(&["trust", &y.id]).status.success());
            }
        }
    }
    a.wait_state("beta", "active");
    c.wait_state("beta", "active");
    // A has no path of its own to C: it is reached through B.
    let started = std::time::Instant::now();
    while !a
        .peer("gamma")
        .is_some_and(|p| p["state"] == "indirect" && p["via"][0] == "beta")
    {
        if started.elapsed() > DEADLINE {
            panic!(
                "alpha never saw gamma indirect via beta: {:?}\nbeta: {:?}\nALPHA LOG\n{}",
                a.peer("gamma"),
                b.peer("gamma"),
                a.log()
                    .lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    wait_until("gamma to see alpha indirect via beta", || {
        c.peer("alpha")
            .is_some_and(|p| p["state"] == "indirect" && p["via"][0] == "beta")
    });
    let p = a.peer("gamma").unwrap();
    assert!(p["rtt_ms"].as_f64().is_some(), "path RTT shown: {p}");
    // A message from A runs C's handler, relayed and acknowledged end to end.
    let r = a.cli(&["send", "gamma", "x.hello", "over the bridge"]);
    assert!(r.status.success(), "{}\n{}", stderr(&r), b.log());
    wait_until("gamma's handler to run", || {
        file(&c.out().join("hello")).is_some()
    });
    wait_until("gamma's handler to finish", || {
        file(&c.out().join("hello")).is_some_and(|f| f.ends_with(b"\n"))
    });
    let got = String::from_utf8(file(&c.out().join("hello")).unwrap()).unwrap();
    assert_eq!(got, "alpha over the bridge\n");
    // ping says which way it went.
    let r = a.cli(&["ping", "gamma"]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(
        String::from_utf8_lossy(&r.stdout).contains("via beta"),
        "{}",
        String::from_utf8_lossy(&r.stdout)
    );
    // send --all reaches B and C exactly once each.
    let r = a.cli(&["send", "--all", "x.all"]);
    assert!(r.status.success(), "{}", stderr(&r));
    for n in [&b, &c] {
        wait_until("the --all handlers", || {
            file(&n.out().join("all")).is_some_and(|f| f.ends_with(b"\n"))
        });
    }
    assert_eq!(
        String::from_utf8(file(&b.out().join("all")).unwrap()).unwrap(),
        "beta alpha\n"
    );
    assert_eq!(
        String::from_utf8(file(&c.out().join("all")).unwrap()).unwrap(),
        "gamma alpha\n"
    );
    // A graceful stop of C is known to A (through B) as `left`.
    c.stop();
    a.wait_state("gamma", "left");
    b.wait_state("gamma", "left");
}

/// Opens a pairing window on `node` (`cnspr pair --json`); returns the client and its
/// first line (`code`, `nearby`...).
fn open_window(node: &Node) -> (std::process::Child, serde_json::Value) {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut child = node
        .command()
        .args(["--json", "pair", "--timeout", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    (child, serde_json::from_str(&first).unwrap())
}

/// `joiner` pairs with `window` by code, the window found by mDNS; with `expect_nearby`,
/// the window must list that device as nearby. Prints the time once the code is entered.
fn pair_by_mdns(window: &Node, joiner: &Node, expect_nearby: Option<&str>) {
    let (child, first) = open_window(window);
    if let Some(name) = expect_nearby {
        let nearby = first["nearby"].as_array().unwrap();
        assert!(
            nearby.iter().any(|n| n["name"] == name),
            "{name} should be listed as nearby: {first}"
        );
    }
    let code = first["code"].as_str().unwrap();
    let started = std::time::Instant::now();
    let out = joiner.cli(&["--json", "pair", code, "--timeout", "20"]);
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "join: {}\n{}",
        stderr(&out),
        joiner.log()
    );
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "window: {}", stderr(&out));
    println!(
        "pairing {} with {} took {took:?} once the code was entered",
        joiner.name, window.name
    );
}

/// A host that is not part of a pairing cannot pair itself in with a guess, and a removal
/// reaches a member that was cut off (its bridge port down) while it was made: once back,
/// it refuses the removed device too.
#[test]
fn a_stranger_cannot_pair_in_and_a_removal_reaches_a_cut_off_member() {
    let Some(lab) = Lab::new("r", 5) else { return };
    let names = ["alpha", "beta", "gamma", "delta", "mallory"];
    let mut n: Vec<Node> = names
        .iter()
        .enumerate()
        .map(|(i, name)| lab.node(i, name))
        .collect();
    for node in n.iter_mut() {
        node.start();
    }
    // mallory guesses while alpha's window waits for beta: refused; beta then joins.
    let (window, first) = open_window(&n[0]);
    let code = first["code"].as_str().unwrap();
    let digits: String = code.chars().filter(char::is_ascii_digit).collect();
    let guess = format!("{:06}", (digits.parse::<u32>().unwrap() + 1) % 1_000_000);
    let out = n[4].cli(&["pair", &guess, "--timeout", "20"]);
    assert!(!out.status.success(), "a wrong code must fail");
    assert!(stderr(&out).contains("wrong code"), "{}", stderr(&out));
    let out = n[1].cli(&["--json", "pair", code, "--timeout", "20"]);
    assert!(out.status.success(), "join: {}", stderr(&out));
    let out = window.wait_with_output().unwrap();
    assert!(out.status.success(), "window: {}", stderr(&out));
    pair_by_mdns(&n[0], &n[2], None);
    pair_by_mdns(&n[1], &n[3], None);
    for (i, a) in n[..4].iter().enumerate() {
        for (j, b) in n[..4].iter().enumerate() {
            if i != j {
                let start = std::time::Instant::now();
                while !a.peer(&b.name).is_some_and(|p| p["state"] == "active") {
                    if start.elapsed() > DEADLINE {
                        panic!(
                            "{} never saw {} active: {:?}\n--- {} log\n{}\n--- {} log\n{}\n--- beta log\n{}",
                            a.name,
                            b.name,
                            a.json(&["peers"]),
                            a.name,
                            a.log(),
                            b.name,
                            b.log(),
                            n[1].log()
                        );
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
        }
    }
    for member in &n[..4] {
        assert!(member.peer("mallory").is_none(), "mallory got in");
    }
    assert!(n[4].json(&["peers"]).as_array().unwrap().is_empty());

    // gamma is cut off while alpha removes delta.
    lab.cut(2);
    for i in [0, 1, 3] {
        n[i].wait_state("gamma", "unreachable");
    }
    let out = n[0].cli(&["remove", "delta"]);
    assert!(out.status.success(), "{}", stderr(&out));
    n[0].wait_state("delta", "removed");
    n[1].wait_state("delta", "removed");
    for i in [0, 1] {
        wait_until("delta to lose alpha and beta", || {
            n[3].peer(names[i]).is_some_and(|p| p["state"] != "active")
        });
    }
    // gamma comes back: it learns the removal and refuses delta from then on.
    lab.heal(2);
    n[2].wait_state("alpha", "active");
    n[2].wait_state("delta", "removed");
    wait_until("delta to lose gamma", || {
        n[3].peer("gamma").is_some_and(|p| p["state"] != "active")
    });
    assert!(n[2].log().contains("member removed from the mesh"));
    // The three remaining members are whole.
    for i in [0, 1] {
        n[2].wait_state(names[i], "active");
        n[i].wait_state("gamma", "active");
    }
}

/// A host name given to `trust --addr` whose resolver never answers (a VPN's DNS that
/// went away) fails that request, after 5 s, and holds up nothing else: while it waits,
/// the daemon answers other requests and keeps its peer. Before, the lookup ran on the
/// daemon's only thread and stopped everything for the resolver's timeouts.
#[test]
fn a_resolver_that_never_answers_holds_up_only_the_request_that_needs_it() {
    let Some(lab) = Lab::new("dns", 2) else {
        return;
    };
    // `ip netns exec` puts /etc/netns/NS/resolv.conf in place of /etc/resolv.conf: the
    // other host as nameserver, waited for 30 s; that host drops DNS queries unanswered.
    let dir = std::path::PathBuf::from("/etc/netns").join(&lab.hosts[0]);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("skipping: cannot create {}: {e}", dir.display());
        return;
    }
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _remove = Remove(dir.clone());
    std::fs::write(
        dir.join("resolv.conf"),
        "nameserver 10.77.0.2\noptions timeout:30 attempts:1\n",
    )
    .unwrap();
    let nft = |rule: &str| {
        std::process::Command::new("ip")
            .args(["netns", "exec", &lab.hosts[1], "nft", rule])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !nft("add table inet dns; add chain inet dns input { type filter hook input priority 0; }; add rule inet dns input udp dport 53 drop; add rule inet dns input tcp dport 53 drop") {
        eprintln!("skipping: nft could not make the silent nameserver");
        return;
    }
    let mut nodes = [lab.node(0, "alpha"), lab.node(1, "beta")];
    for n in &mut nodes {
        n.start();
    }
    lab.trust_all(&nodes);
    let [a, b] = &nodes;
    a.wait_state("beta", "active");
    b.wait_state("alpha", "active");
    let mut trust = a
        .command()
        .args(["trust", &b.id, "--addr", "beta.nosuch.example:7373"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("alpha to look the name up", || {
        a.log()
            .contains("looking up a host name given over the socket")
    });
    // The lookup is under way: the daemon still answers, and still has its peer.
    let status = a.json(&["status"]);
    assert!(status.is_object(), "{status}");
    assert_eq!(a.peer("beta").unwrap()["state"], "active");
    assert!(
        trust.try_wait().unwrap().is_none(),
        "the daemon answered only once the lookup had ended"
    );
    let out = trust.wait_with_output().unwrap();
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("did not resolve within 5 s"), "{e}");
    assert_eq!(a.peer("beta").unwrap()["state"], "active", "{}", a.log());
    assert_eq!(b.peer("alpha").unwrap()["state"], "active", "{}", b.log());
}
