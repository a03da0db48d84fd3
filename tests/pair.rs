//! Pairing with a one-time code, signed roster gossip and mesh-wide removal, with real
//! daemons on loopback (`--addr` stands in for mDNS here; tests/lan.rs covers mDNS).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Stdio};

use common::*;
use serde_json::Value;

/// `cnspr pair --json` running on `node`: its first line, and the process.
struct Window {
    child: Child,
    lines: BufReader<ChildStdout>,
    first: Value,
}

impl Window {
    fn open(node: &Node, extra: &[&str]) -> Window {
        let mut child = node
            .command()
            .args(["--json", "pair"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        lines.read_line(&mut first).unwrap();
        let first: Value = serde_json::from_str(&first)
            .unwrap_or_else(|e| panic!("first line of `pair`: {e}: {first:?}\n{}", node.log()));
        Window {
            child,
            lines,
            first,
        }
    }

    fn code(&self) -> String {
        self.first["code"].as_str().unwrap().to_string()
    }

    /// The window's loopback address (what `--addr` takes where multicast is missing).
    fn addr(&self) -> String {
        let addrs = self.first["addresses"].as_array().unwrap();
        let port = addrs[0]
            .as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .to_string();
        format!("127.0.0.1:{port}")
    }

    /// The last line and the exit status.
    fn finish(mut self) -> (Option<Value>, bool, String) {
        let mut rest = String::new();
        let mut last = None;
        while self.lines.read_line(&mut rest).unwrap() > 0 {
            last = serde_json::from_str(rest.trim()).ok();
            rest.clear();
        }
        let out = self.child.wait_with_output().unwrap();
        (
            last,
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

fn join(node: &Node, code: &str, addr: &str) -> std::process::Output {
    node.cli(&["--json", "pair", code, "--addr", addr, "--timeout", "20"])
}

#[test]
fn pairing_joins_the_whole_mesh_and_name_clashes_get_a_suffix() {
    let nodes = mesh(&["alpha", "beta"], "");
    let mut gamma = Node::new("gamma", "");
    gamma.start();

    let w = Window::open(&nodes[0], &[]);
    assert_eq!(w.first["expires_in_s"], 120);
    let code = w.code();
    let out = join(&gamma, &code, &w.addr());
    assert!(
        out.status.success(),
        "join: {}\n{}",
        stderr(&out),
        gamma.log()
    );
    let joined: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(joined["paired"]["name"], "alpha");
    assert_eq!(joined["paired"]["id"], nodes[0].json(&["id"])["id"]);
    let (last, ok, err) = w.finish();
    assert!(ok, "pair window: {err}");
    let last = last.unwrap();
    assert_eq!(last["paired"]["name"], "gamma");
    assert_eq!(last["paired"]["id"], gamma.json(&["id"])["id"]);

    // alpha and gamma connect; beta, which ran no command, learns gamma by roster gossip
    // and its address by address gossip, and they connect too.
    nodes[0].wait_state("gamma", "active");
    gamma.wait_state("alpha", "active");
    nodes[1].wait_state("gamma", "active");
    gamma.wait_state("beta", "active");

    // A fourth device that also calls itself "beta": visibly renamed, everywhere.
    let mut beta2 = Node::new("beta", "");
    beta2.start();
    let w = Window::open(&gamma, &["--timeout", "60"]);
    let out = beta2.cli(&["pair", &w.code(), "--addr", &w.addr(), "--timeout", "20"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.contains("paired with gamma"), "{text}");
    assert!(
        text.contains("this device is called beta-2 in the mesh"),
        "{text}"
    );
    let (last, ok, _) = w.finish();
    assert!(ok);
    assert_eq!(last.unwrap()["paired"]["name"], "beta-2");
    for n in [&nodes[0], &nodes[1], &gamma] {
        n.wait_state("beta-2", "active");
        // The original beta keeps its name.
        if n.name != "beta" {
            assert_eq!(n.peer("beta").unwrap()["id"], nodes[1].json(&["id"])["id"]);
        }
    }
    // peer/joined ran on a member that took no part.
    let events = nodes[1].log();
    assert!(events.contains("member joined the mesh"), "{events}");
}

#[test]
fn wrong_codes_fail_on_both_sides_and_three_close_the_window() {
    let mut a = Node::new("alpha", "");
    a.start();
    let mut b = Node::new("beta", "");
    b.start();
    let w = Window::open(&a, &[]);
    let good = w.code();
    let window_addr = w.addr();
    let digits: String = good.chars().filter(char::is_ascii_digit).collect();
    let wrong = |i: u32| {
        let n: u32 = digits.parse().unwrap();
        format!("{:06}", (n + i) % 1_000_000)
    };
    for i in 1..=3 {
        let out = join(&b, &wrong(i), &w.addr());
        assert!(!out.status.success());
        let e = stderr(&out);
        assert!(e.contains("wrong code"), "attempt {i}: {e}");
    }
    let (last, ok, err) = w.finish();
    assert!(!ok, "the window must fail after three wrong codes");
    assert!(last.is_none());
    assert!(
        err.contains("wrong code") && err.contains("closed"),
        "{err}"
    );
    // Nothing was trusted on either side, and the right code no longer works.
    assert_eq!(a.json(&["peers"]).as_array().unwrap().len(), 0);
    assert_eq!(b.json(&["peers"]).as_array().unwrap().len(), 0);
    let out = b.cli(&["pair", &good, "--addr", &window_addr, "--timeout", "2"]);
    assert!(!out.status.success());
    // Malformed codes never leave the device.
    let out = b.cli(&["pair", "12-34"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("6 digits"), "{}", stderr(&out));
}

#[test]
fn pair_window_timeout_and_cancel() {
    let mut a = Node::new("alpha", "");
    a.start();
    let out = a.cli(&["pair", "--timeout", "1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));
    // A window whose client went away closes: a new one can open at once.
    let w = Window::open(&a, &[]);
    let mut child = w.child;
    child.kill().unwrap();
    child.wait().unwrap();
    wait_until("a new window after the old client left", || {
        let out = a.cli(&["pair", "--timeout", "1"]);
        stderr(&out).contains("expired")
    });
    let out = a.cli(&["pair", "--timeout", "0"]);
    assert!(!out.status.success());
}

#[test]
fn removal_reaches_offline_members_and_is_final() {
    let mut nodes = mesh(&["alpha", "beta", "gamma"], "");
    let beta_id = nodes[1].id.clone();
    // gamma is offline while alpha removes beta.
    nodes[2].stop();
    let out = nodes[0].cli(&["remove", "beta"]);
    assert!(out.status.success(), "{}", stderr(&out));
    nodes[0].wait_state("beta", "removed");
    // beta is cut off from alpha and cannot come back.
    wait_until("beta to lose alpha", || {
        nodes[1]
            .peer("alpha")
            .is_some_and(|p| p["state"] != "active")
    });
    // gamma returns: it learns the removal from alpha, closes beta and refuses it.
    nodes[2].start();
    nodes[2].wait_state("alpha", "active");
    nodes[2].wait_state("beta", "removed");
    wait_until("beta to lose gamma", || {
        nodes[1]
            .peer("gamma")
            .is_some_and(|p| p["state"] != "active")
    });
    // A removed device cannot be trusted again, and cannot re-add itself through beta's roster.
    let out = nodes[0].cli(&["trust", &beta_id]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("removed"), "{}", stderr(&out));
    let log = nodes[2].log();
    assert!(log.contains("member removed from the mesh"), "{log}");
    // Still removed after a restart (the roster is persisted).
    nodes[2].stop();
    nodes[2].start();
    nodes[2].wait_state("beta", "removed");
    assert_ne!(nodes[1].peer("gamma").unwrap()["state"], "active");
}
