//! `cnspr wake` in network namespaces (root, or a user namespace of its own): a
//! capture on the sleeping host's link sees the magic packet with its MAC, asked on a
//! device of its LAN and on a device of another network through a member; and the
//! errors (awake, no MAC known, no member on its LAN, rate limit).
//!
//! Topology (`line_lab`): sleeper 10.77.0.1 on sw0; alpha on sw0 (10.77.0.2) and sw1
//! (10.78.0.2); gamma 10.78.0.3 on sw1 only, so it reaches the sleeper only through alpha.

mod common;

use std::process::Output;

use common::capture::Capture;
use common::lab::*;
use common::*;
use serde_json::Value;

/// The MAC of `iface` in namespace `ns`, from `ip -o link`.
fn mac_of(ns: &str, iface: &str) -> [u8; 6] {
    let out = std::process::Command::new("ip")
        .args(["-n", ns, "-o", "link", "show", iface])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let word = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {text:?}"));
    let bytes: Vec<u8> = word
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn magic(mac: &[u8; 6]) -> Vec<u8> {
    let mut p = vec![0xff; 6];
    for _ in 0..16 {
        p.extend_from_slice(mac);
    }
    p
}

fn wake(n: &Node, peer: &str) -> Output {
    n.cli(&["--json", "wake", peer])
}

/// The result of a `wake` that must have worked.
fn woke(n: &Node, peer: &str) -> Value {
    let out = wake(n, peer);
    assert!(
        out.status.success(),
        "wake {peer} on {}: {}",
        n.name,
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The error code and message of a `wake` that must have failed.
fn refused(n: &Node, peer: &str) -> (String, String) {
    let out = wake(n, peer);
    assert!(!out.status.success(), "wake {peer} on {} worked", n.name);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["error"]["code"].as_str().unwrap().to_string(),
        v["error"]["message"].as_str().unwrap().to_string(),
    )
}

/// Magic packets for `mac` the capture holds, sent from `src` to UDP port 9.
fn magic_from(cap: &Capture, mac: &[u8; 6], src: &str) -> usize {
    let want = magic(mac);
    cap.udp()
        .iter()
        .filter(|d| d.dst_port == 9 && d.payload == want && d.src.to_string() == src)
        .count()
}

/// `peers --json` on `n` lists `peer` with an interface `mac` at `addr`.
fn knows_interface(n: &Node, peer: &str, mac: &str, addr: &str) -> bool {
    n.peer(peer).is_some_and(|p| {
        p["interfaces"]
            .as_array()
            .is_some_and(|l| l.iter().any(|i| i["mac"] == mac && i["addr"] == addr))
    })
}

#[test]
fn wake_sends_the_magic_packet_on_the_sleepers_lan_also_when_asked_from_afar() {
    let Some(lab) = line_lab("w") else { return };
    let mut nodes = vec![
        lab.node(0, "sleeper"),
        lab.node(1, "alpha"),
        lab.node(2, "gamma"),
    ];
    for n in nodes.iter_mut() {
        n.start();
    }
    for x in &nodes {
        for y in &nodes {
            if x.id != y.id {
                assert!(x.cli(&["trust", &y.id]).status.success());
            }
        }
    }
    let sleeper_mac = mac_of(&lab.hosts[0], "eth0");
    let alpha_mac = mac_of(&lab.hosts[1], "eth0");
    let (s, a, g) = (&nodes[0], &nodes[1], &nodes[2]);
    a.wait_state("sleeper", "active");
    wait_until("gamma to see the sleeper through alpha", || {
        g.peer("sleeper")
            .is_some_and(|p| p["state"] == "indirect" && p["via"][0] == "alpha")
    });
    // Each device told its members its own interfaces: alpha knows the sleeper's, gamma
    // alpha's. (gamma may know the sleeper's too, told over their own connection through
    // alpha, which comes up as soon as gamma sees the sleeper `indirect`; the wake asked
    // from gamma below goes by alpha either way, the member on the sleeper's LAN.)
    wait_until("alpha to know the sleeper's MAC", || {
        knows_interface(a, "sleeper", &mac_text(&sleeper_mac), "10.77.0.1/24")
    });
    wait_until(
        "gamma to know alpha's interface on the sleeper's LAN",
        || knows_interface(g, "alpha", &mac_text(&alpha_mac), "10.77.0.2/24"),
    );
    assert!(s.peer("alpha").is_some());

    // Awake: nothing sent without --force.
    let (code, msg) = refused(a, "sleeper");
    assert_eq!(code, "refused", "{msg}");
    assert!(msg.contains("awake"), "{msg}");

    // None (reason printed) where tcpdump cannot run: the wake-ups are still checked,
    // by their answers only.
    let cap = Capture::start(&lab.hosts[0], "eth0", &["udp", "port", "9"]);
    // The sleeper goes to sleep: its daemon answers nothing any more.
    nodes[0].kill9();
    // alpha restarts while the sleeper sleeps: the MAC comes back from peers.json.
    nodes[1].stop();
    nodes[1].start();
    let (a, g) = (&nodes[1], &nodes[2]);
    assert!(knows_interface(
        a,
        "sleeper",
        &mac_text(&sleeper_mac),
        "10.77.0.1/24"
    ));
    a.wait_state("gamma", "active");
    g.wait_state("alpha", "active");
    wait_until("alpha to see the sleeper gone", || {
        a.peer("sleeper")
            .is_some_and(|p| p["state"] != "active" && p["state"] != "indirect")
    });
    wait_until("gamma to see the sleeper gone", || {
        g.peer("sleeper")
            .is_some_and(|p| p["state"] != "active" && p["state"] != "indirect")
    });

    // On its LAN: alpha sends it itself, out of eth0.
    let r = woke(a, "sleeper");
    assert_eq!(r["by"], "alpha", "{r}");
    assert_eq!(r["sent"][0]["mac"], mac_text(&sleeper_mac), "{r}");
    assert_eq!(r["sent"][0]["interface"], "eth0", "{r}");
    let to: Vec<&str> = r["sent"][0]["to"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(to, ["10.77.0.255:9", "255.255.255.255:9"], "{r}");
    if let Some(cap) = &cap {
        wait_until("the capture to hold both of alpha's magic packets", || {
            magic_from(cap, &sleeper_mac, "10.77.0.2") >= 2
        });
    }
    let before = cap
        .as_ref()
        .map_or(0, |c| magic_from(c, &sleeper_mac, "10.77.0.2"));

    // From another network: gamma asks alpha, which is on the sleeper's LAN.
    let r = woke(g, "sleeper");
    assert_eq!(r["by"], "alpha", "{r}");
    assert_eq!(r["sent"][0]["mac"], mac_text(&sleeper_mac), "{r}");
    if let Some(cap) = &cap {
        wait_until("the capture to hold the packets asked for by gamma", || {
            magic_from(cap, &sleeper_mac, "10.77.0.2") >= before + 2
        });
        // Nothing but magic packets for the sleeper went to port 9.
        let all = cap.udp();
        assert!(all
            .iter()
            .filter(|d| d.dst_port == 9)
            .all(|d| d.payload == magic(&sleeper_mac)));
    }

    // At most 4 wake-ups a minute per device (counted where the packets are sent).
    assert!(wake(g, "sleeper").status.success());
    assert!(wake(a, "sleeper").status.success());
    let (code, msg) = refused(g, "sleeper");
    assert_eq!(code, "busy", "{msg}");
    assert!(msg.contains("alpha"), "{msg}");
}

#[test]
fn wake_says_when_no_mac_is_known_or_no_member_is_on_the_lan() {
    let Some(lab) = line_lab("x") else { return };
    let mut nodes = [lab.node(1, "alpha"), lab.node(2, "gamma")];
    for n in nodes.iter_mut() {
        n.start();
    }
    let (a, g) = (&nodes[0], &nodes[1]);
    assert!(a.cli(&["trust", &g.id]).status.success());
    assert!(g.cli(&["trust", &a.id]).status.success());
    a.wait_state("gamma", "active");
    g.wait_state("alpha", "active");
    wait_until("gamma to know alpha's interfaces", || {
        g.peer("alpha")
            .is_some_and(|p| p["interfaces"].as_array().is_some_and(|l| l.len() == 2))
    });
    // A device that never ran: an address on alpha's LAN, no MAC ever told.
    let ghost = Node::new("ghost", "");
    let out = a.cli(&[
        "trust",
        &ghost.id,
        "--name",
        "ghost",
        "--addr",
        "10.77.0.9:7373",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (code, msg) = refused(a, "ghost");
    assert_eq!(code, "not_found", "{msg}");
    assert!(msg.contains("no MAC address known for ghost"), "{msg}");
    // gamma knows of it from the roster, where it is from nowhere.
    wait_until("gamma to learn of ghost", || g.peer("ghost").is_some());
    let (code, msg) = refused(g, "ghost");
    assert_eq!(code, "not_found", "{msg}");
    // gamma told where it was: alpha is on that LAN, and has no MAC for it.
    let out = g.cli(&[
        "trust",
        &ghost.id,
        "--name",
        "ghost",
        "--addr",
        "10.77.0.9:7373",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (code, msg) = refused(g, "ghost");
    assert_eq!(code, "not_found", "{msg}");
    assert!(
        msg.contains("alpha: no MAC address known for ghost"),
        "{msg}"
    );

    // A device on a network no member is on.
    let far = Node::new("far", "");
    let out = g.cli(&[
        "trust",
        &far.id,
        "--name",
        "far",
        "--addr",
        "10.99.0.5:7373",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (code, msg) = refused(g, "far");
    assert_eq!(code, "unreachable", "{msg}");
    assert!(msg.contains("no member on far's LAN is reachable"), "{msg}");
    let (code, _) = refused(g, "nobody");
    assert_eq!(code, "unknown_peer");
}
