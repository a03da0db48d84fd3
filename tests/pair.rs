//! Pairing with a one-time code, signed roster gossip and mesh-wide removal, with real
//! daemons on loopback (`--addr` stands in for mDNS here; tests/lan.rs covers mDNS).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Stdio};

use common::lab;
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

    /// Every line after the first, the exit status and stderr.
    fn rest(mut self) -> (Vec<Value>, bool, String) {
        let mut line = String::new();
        let mut lines = Vec::new();
        while self.lines.read_line(&mut line).unwrap() > 0 {
            lines.push(
                serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line:?}")),
            );
            line.clear();
        }
        let out = self.child.wait_with_output().unwrap();
        (
            lines,
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
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
    let (lines, ok, err) = w.rest();
    assert!(!ok, "the window must fail after three wrong codes");
    // Nothing but reports of the attempts, then the error as a JSON object (--json).
    let (last, attempts) = lines.split_last().expect("lines");
    assert!(
        attempts.iter().all(|l| l.get("attempt").is_some()),
        "{lines:?}"
    );
    assert_eq!(last["error"]["code"], "wrong_code", "{last}");
    assert!(
        err.contains("the pairing window closed after 3 wrong codes"),
        "{err}"
    );
    // Nothing was trusted on either side, and the right code no longer works: the closed
    // window says why, at once (not a QUIC error after the whole timeout).
    assert_eq!(a.json(&["peers"]).as_array().unwrap().len(), 0);
    assert_eq!(b.json(&["peers"]).as_array().unwrap().len(), 0);
    let out = b.cli(&["pair", &good, "--addr", &window_addr, "--timeout", "60"]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains("the pairing window closed after 3 wrong codes"),
        "{e}"
    );
    assert_eq!(b.json(&["peers"]).as_array().unwrap().len(), 0);
    // Malformed codes never leave the device.
    let out = b.cli(&["pair", "12-34"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("6 digits"), "{}", stderr(&out));
}

/// `cnspr pair CODE` for a window that has closed fails at once and says why, whether the
/// window still answers (for a while after it closed) or nothing listens there any more.
#[test]
fn a_join_after_the_window_closed_fails_at_once_and_says_why() {
    let mut a = Node::new("alpha", "");
    a.start();
    let mut b = Node::new("beta", "");
    b.start();
    let mut c = Node::new("gamma", "");
    c.start();
    let late = |code: &str, addr: &str| {
        let out = c.cli(&["pair", code, "--addr", addr, "--timeout", "60"]);
        assert!(!out.status.success());
        stderr(&out)
    };

    // Cancelled (its client went away).
    let w = Window::open(&a, &[]);
    let (code, addr) = (w.code(), w.addr());
    let mut child = w.child;
    child.kill().unwrap();
    child.wait().unwrap();
    let e = late(&code, &addr);
    assert!(
        e.contains("the pairing window was closed on that device"),
        "{e}"
    );

    // Expired.
    let w = Window::open(&a, &["--timeout", "1"]);
    let (code, addr) = (w.code(), w.addr());
    let (_, ok, err) = w.finish();
    assert!(!ok && err.contains("expired"), "{err}");
    let e = late(&code, &addr);
    assert!(e.contains("the pairing window expired"), "{e}");

    // Used: whoever comes second learns that someone else paired with the code.
    let w = Window::open(&a, &[]);
    let (code, addr) = (w.code(), w.addr());
    let out = join(&b, &code, &addr);
    assert!(out.status.success(), "{}", stderr(&out));
    let (_, ok, _) = w.finish();
    assert!(ok);
    let e = late(&code, &addr);
    assert!(e.contains("already used by another device"), "{e}");
    assert!(c.json(&["peers"]).as_array().unwrap().is_empty());

    // Nothing listens any more (its daemon stopped): the port's ICMP answer says so.
    let w = Window::open(&b, &[]);
    let (code, addr) = (w.code(), w.addr());
    b.stop();
    let (_, ok, _) = w.finish();
    assert!(!ok);
    let e = late(&code, &addr);
    assert!(
        e.contains("no pairing window open for this code") && e.contains("nothing listens"),
        "{e}"
    );
}

/// A device that connects to a window and then stalls (gone from the network, or holding
/// the port on purpose) holds up no other device: attempts run side by side until their
/// code is tried. Before, the window served one attempt at a time, so the join below
/// waited for each stalled attempt to time out (10 s), and those were closed first.
#[test]
fn a_stalled_attempt_does_not_hold_up_another_device() {
    let mut a = Node::new("alpha", "");
    a.start();
    let mut b = Node::new("beta", "");
    b.start();
    let w = Window::open(&a, &[]);
    let addr: std::net::SocketAddr = w.addr().parse().unwrap();
    // Worker threads keep driving the strangers' connections between the calls.
    let rt = tokio::runtime::Runtime::new().unwrap();
    // One more than the window prepares at once: the oldest gives way.
    let stalled: Vec<_> = (0..5)
        .map(|i| {
            let id = transport::Identity::generate(&format!("stranger-{i}")).unwrap();
            rt.block_on(transport::pairing::dial(&id, addr))
                .expect("the window takes the stranger's connection")
        })
        .collect();
    let gave_way = |c: &transport::quinn::Connection| {
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(10), c.closed()).await
        })
        .expect("the oldest stalled attempt gives way to a newer one")
    };
    gave_way(&stalled[0]);
    let out = join(&b, &w.code(), &w.addr());
    assert!(out.status.success(), "join: {}\n{}", stderr(&out), a.log());
    // The join took the place of the next oldest; the others are still waiting.
    gave_way(&stalled[1]);
    for c in &stalled[2..] {
        assert_eq!(
            c.close_reason(),
            None,
            "the join waited for a stalled attempt to end"
        );
    }
    let (last, ok, err) = w.finish();
    assert!(ok, "{err}");
    assert_eq!(last.unwrap()["paired"]["name"], "beta");
    drop(stalled);
}

/// The pairing messages as they go on the wire (`PairMsg` in the daemon's `wire.rs`, whose
/// encoding its layout tests pin): a joiner written by hand, to stop between two steps.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum PairMsg {
    Start {
        version: u16,
        name: String,
        port: u16,
        nonce: [u8; 32],
        spake: Vec<u8>,
    },
    Reply {
        name: String,
        port: u16,
        nonce: [u8; 32],
        spake: Vec<u8>,
    },
    Confirm {
        mac: Vec<u8>,
    },
    /// Carries a roster; never expected here (decoding one fails the test).
    Welcome {
        mac: Vec<u8>,
    },
    Fail {
        reason: String,
    },
    Done,
}

/// A device whose attempt is under way when another device pairs is told that the window
/// was used, when its confirmation comes: its code is never tried (no wrong code counted,
/// no second pairing), and it hears why instead of "wrong code".
#[test]
fn an_attempt_under_way_when_another_device_pairs_hears_that_the_window_was_used() {
    use transport::frame::{read_frame, write_frame, MAX_CONTROL_FRAME};
    let mut a = Node::new("alpha", "");
    a.start();
    let mut b = Node::new("beta", "");
    b.start();
    let w = Window::open(&a, &[]);
    let addr: std::net::SocketAddr = w.addr().parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let id = transport::Identity::generate("slow").unwrap();
    let slow = rt.block_on(async {
        let conn = transport::pairing::dial(&id, addr).await.unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let start = PairMsg::Start {
            version: 1,
            name: "slow".into(),
            port: 9,
            nonce: [7; 32],
            // Not a SPAKE2 message of the code: were the code tried, it would be wrong.
            spake: vec![1; 33],
        };
        write_frame(&mut send, &start, MAX_CONTROL_FRAME)
            .await
            .unwrap();
        let reply = read_frame::<PairMsg, _>(&mut recv, MAX_CONTROL_FRAME).await;
        assert!(
            matches!(reply, Ok(Some(PairMsg::Reply { .. }))),
            "{reply:?}"
        );
        (conn, send, recv)
    });
    // Another device pairs while that attempt waits for its confirmation.
    let out = join(&b, &w.code(), &w.addr());
    assert!(out.status.success(), "join: {}\n{}", stderr(&out), a.log());
    let (last, ok, err) = w.finish();
    assert!(ok, "{err}");
    assert_eq!(last.unwrap()["paired"]["name"], "beta");
    // Only now does the slow device confirm.
    let (conn, mut send, mut recv) = slow;
    let answer = rt.block_on(async {
        let confirm = PairMsg::Confirm { mac: vec![0; 32] };
        write_frame(&mut send, &confirm, MAX_CONTROL_FRAME)
            .await
            .unwrap();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            read_frame::<PairMsg, _>(&mut recv, MAX_CONTROL_FRAME),
        )
        .await
    });
    match answer {
        Ok(Ok(Some(PairMsg::Fail { reason }))) => assert!(
            reason.contains("already used by another device"),
            "{reason}"
        ),
        other => panic!("the slow device was not told why: {other:?}\n{}", a.log()),
    }
    drop(conn);
    wait_until("the window logs that it told the slow device", || {
        a.log()
            .contains("told a pairing attempt under way that the window closed")
    });
    assert!(
        !a.log().contains("pairing attempt with a wrong code"),
        "{}",
        a.log()
    );
    // The one pairing the window allowed went to beta; the slow device is no member.
    let peers = a.json(&["peers"]);
    let names: Vec<_> = peers
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(names, ["beta"], "{peers}");
}

/// The window's client hears of every wrong code as it happens (a line `{"attempt":
/// ...}` before the outcome), and the right code still pairs after two wrong ones.
#[test]
fn wrong_codes_are_reported_to_the_window_as_they_happen() {
    let mut a = Node::new("alpha", "");
    a.start();
    let mut b = Node::new("beta", "");
    b.start();
    let w = Window::open(&a, &[]);
    let code = w.code();
    let digits: String = code.chars().filter(char::is_ascii_digit).collect();
    let n: u32 = digits.parse().unwrap();
    for i in 1..=2 {
        let out = join(&b, &format!("{:06}", (n + i) % 1_000_000), &w.addr());
        assert!(stderr(&out).contains("wrong code"), "{}", stderr(&out));
    }
    let out = join(&b, &code, &w.addr());
    assert!(out.status.success(), "{}", stderr(&out));
    let (lines, ok, err) = w.rest();
    assert!(ok, "{err}");
    assert_eq!(lines.len(), 3, "{lines:?}");
    for (i, l) in lines[..2].iter().enumerate() {
        let a = &l["attempt"];
        assert_eq!(a["result"], "wrong_code", "{l}");
        assert_eq!(a["failures"], i as u64 + 1, "{l}");
        assert_eq!(a["left"], 2 - i as u64, "{l}");
        assert_eq!(a["name"], "beta", "{l}");
        assert_eq!(a["id"], b.json(&["id"])["id"], "{l}");
        assert!(
            a["address"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{l}"
        );
    }
    assert_eq!(lines[2]["paired"]["name"], "beta");

    // Without --json: one line per wrong code.
    let mut child = a
        .command()
        .args(["pair"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let (mut addr, mut wrong) = (None, None);
    while addr.is_none() {
        line.clear();
        assert!(lines.read_line(&mut line).unwrap() > 0);
        if let Some(rest) = line.trim().strip_prefix("Pairing code:") {
            let digits: String = rest
                .split_whitespace()
                .next()
                .unwrap()
                .chars()
                .filter(char::is_ascii_digit)
                .collect();
            let n: u32 = digits.parse().unwrap();
            wrong = Some(format!("{:06}", (n + 1) % 1_000_000));
        }
        if let Some(rest) = line.trim().strip_prefix("Without multicast add:") {
            let port = rest
                .split_whitespace()
                .nth(1)
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap();
            addr = Some(format!("127.0.0.1:{port}"));
        }
    }
    let mut c = Node::new("gamma", "");
    c.start();
    let out = join(&c, &wrong.unwrap(), addr.as_ref().unwrap());
    assert!(!out.status.success());
    let mut seen = String::new();
    while !seen.contains("gamma") {
        line.clear();
        assert!(lines.read_line(&mut line).unwrap() > 0, "{seen}");
        seen.push_str(&line);
    }
    assert!(
        seen.contains("wrong code") && seen.contains("2 attempts left"),
        "{seen}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
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

/// Two hosts on one cable with IPv6 link-local addresses only (network namespaces, root
/// only); dropped with the test.
struct Cable {
    hosts: [String; 2],
}

impl Cable {
    fn new(tag: &str) -> Option<Cable> {
        if !lab::is_root() {
            eprintln!("skipping: network namespaces need root");
            return None;
        }
        let pid = std::process::id();
        let cable = Cable {
            hosts: [format!("cl{pid}{tag}a"), format!("cl{pid}{tag}b")],
        };
        for h in &cable.hosts {
            if !lab::ip(&["netns", "add", h]) {
                eprintln!("skipping: cannot create network namespaces here");
                return None;
            }
            // No duplicate address detection: the addresses are usable at once.
            for k in ["all", "default"] {
                for (key, v) in [("disable_ipv6", "0"), ("accept_dad", "0")] {
                    let _ = std::process::Command::new("ip")
                        .args(["netns", "exec", h, "sysctl", "-qw"])
                        .arg(format!("net.ipv6.conf.{k}.{key}={v}"))
                        .status();
                }
            }
        }
        let [a, b] = &cable.hosts;
        assert!(lab::ip(&[
            "-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b
        ]));
        for h in &cable.hosts {
            assert!(lab::ip(&["-n", h, "link", "set", "lo", "up"]));
            assert!(lab::ip(&["-n", h, "link", "set", "eth0", "up"]));
        }
        Some(cable)
    }

    fn node(&self, i: usize, name: &str) -> Node {
        let mut n = Node::new(name, "");
        n.netns = Some(self.hosts[i].clone());
        n.listen = Some("[::]:7373".into());
        n
    }

    /// `ip` output for host `i`.
    fn ip_out(&self, i: usize, args: &[&str]) -> String {
        let out = std::process::Command::new("ip")
            .args(["-n", &self.hosts[i]])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The index of host `i`'s `eth0`.
    fn ifindex(&self, i: usize) -> u32 {
        let out = self.ip_out(i, &["-o", "link", "show", "eth0"]);
        out.split(':').next().unwrap().trim().parse().unwrap()
    }

    /// Host `i`'s link-local address on `eth0`.
    fn link_local(&self, i: usize) -> String {
        let mut found = None;
        wait_until("a link-local address", || {
            let out = self.ip_out(
                i,
                &["-6", "-o", "addr", "show", "dev", "eth0", "scope", "link"],
            );
            found = out
                .split_whitespace()
                .skip_while(|w| *w != "inet6")
                .nth(1)
                .and_then(|a| a.split('/').next())
                .map(str::to_string);
            found.is_some()
        });
        found.unwrap()
    }
}

impl Drop for Cable {
    fn drop(&mut self) {
        for h in &self.hosts {
            lab::ip(&["netns", "del", h]);
        }
    }
}

/// A window reached only through an IPv6 link-local address shows it with its zone, as
/// `--addr` needs it, and pairing through it works; the two then connect there.
#[test]
fn link_local_windows_are_shown_with_their_interface() {
    let Some(cable) = Cable::new("z") else { return };
    let mut a = cable.node(0, "alpha");
    let mut b = cable.node(1, "beta");
    let (ll_a, _) = (cable.link_local(0), cable.link_local(1));
    a.start();
    b.start();
    let w = Window::open(&a, &[]);
    let addrs: Vec<&str> = w.first["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let shown = addrs
        .iter()
        .find(|s| s.starts_with(&format!("[{ll_a}%")))
        .unwrap_or_else(|| panic!("{ll_a} is not among {addrs:?}"))
        .to_string();
    let port = shown.rsplit(':').next().unwrap();
    assert_eq!(shown, format!("[{ll_a}%eth0]:{port}"));
    // beta's interface on that link is also eth0, by number here.
    let typed = format!("[{ll_a}%{}]:{port}", cable.ifindex(1));
    let out = b.cli(&[
        "--json",
        "pair",
        &w.code(),
        "--addr",
        &typed,
        "--timeout",
        "20",
    ]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), b.log());
    let (last, ok, err) = w.finish();
    assert!(ok, "{err}");
    assert_eq!(last.unwrap()["paired"]["name"], "beta");
    // Each recorded the other's main address with its zone, and they connect.
    a.wait_state("beta", "active");
    b.wait_state("alpha", "active");
}

/// What `cnspr pair` shows is what `cnspr pair CODE --addr` takes.
#[test]
fn a_shown_link_local_address_is_accepted_as_typed() {
    let Some(cable) = Cable::new("y") else { return };
    let mut a = cable.node(0, "alpha");
    let mut b = cable.node(1, "beta");
    let ll_a = cable.link_local(0);
    cable.link_local(1);
    a.start();
    b.start();
    let w = Window::open(&a, &[]);
    let shown = w.first["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find(|s| s.starts_with(&format!("[{ll_a}%eth0]:")))
        .unwrap()
        .to_string();
    let out = b.cli(&["pair", &w.code(), "--addr", &shown, "--timeout", "20"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Without its zone a link-local address cannot be dialled: said before trying.
    let port = shown.rsplit(':').next().unwrap();
    let out = b.cli(&["pair", "123456", "--addr", &format!("[{ll_a}]:{port}")]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("%eth0"), "{}", stderr(&out));
}
