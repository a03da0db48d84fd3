//! `cnspr relay` on a small internet (network namespaces, root or a user namespace):
//! devices behind home routers with no public member meet through a relay that is not a
//! member, then reach each other directly where the routers allow it; a network that
//! drops UDP reaches the relay over TCP; strangers and other meshes get nothing from it.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::nat::*;
use common::*;
use serde_json::Value;

const SECRET: &str = "lab-relay-secret-0123456789";
const RELAY_LAST: u8 = 20;

/// A process started in a namespace, stopped (by its PID) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn relay_addr(net: &Internet) -> String {
    format!("{}.{RELAY_LAST}:7374", net.prefix)
}

/// Runs `cnspr relay` on host `h` with `secret`; waits until it listens.
fn start_relay(net: &Internet, h: usize, secret: &str, log: &Path) -> Proc {
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            net.ns(h),
            bin(),
            "relay",
            "--listen",
            "0.0.0.0:7374",
        ])
        .args(["--secret", secret])
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert!(
        line.contains("relay listening"),
        "relay: {line:?}\n{}",
        read(log)
    );
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    Proc(child)
}

fn read(p: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned()
}

/// A packet capture of everything on host `h`'s wan interface, written to `file`.
fn capture(net: &Internet, h: usize, file: &Path) -> Option<Proc> {
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            net.ns(h),
            "tcpdump",
            "-i",
            "eth0",
            "--immediate-mode",
            "-U",
        ])
        .args(["-s", "0", "-w"])
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("no capture: tcpdump (Debian package tcpdump) is not installed");
        return None;
    };
    // tcpdump says "listening on eth0" once it captures.
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut err, &mut line).unwrap();
    assert!(line.contains("listening"), "tcpdump: {line}");
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    Some(Proc(child))
}

fn path_kind(p: &Value) -> Option<&str> {
    p["path"]["kind"].as_str()
}

fn wait_path(n: &Node, peer: &str, kind: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if n.peer(peer)
            .is_some_and(|p| p["state"] == "active" && path_kind(&p) == Some(kind))
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{} did not reach {peer} by a {kind} path within {within:?}: {:?}\n{}",
            n.name,
            n.peer(peer),
            n.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn raw_id(id: &str) -> Vec<u8> {
    let plain: String = id.chars().filter(|c| *c != '-').collect();
    data_encoding::BASE32_NOPAD
        .decode(plain.as_bytes())
        .unwrap()
}

/// The relay at `{prefix}.20`, devices `a` and `b` behind their own routers (`.1`, `.2`)
/// that trust each other; the relay recorded on a and known to b as if learnt when they
/// paired (b restarted with a's relay entries). `prepare` runs before the daemons start.
struct World {
    net: Internet,
    nodes: Vec<Node>,
    routers: Vec<usize>,
    /// The hosts of a and b.
    hosts: Vec<usize>,
    relay_host: usize,
    relay: Option<Proc>,
    dir: tempfile::TempDir,
}

fn world(tag: &str, nat_b: Nat, prepare: impl FnOnce(&Internet, &[usize])) -> Option<World> {
    let mut net = Internet::new(tag)?;
    let hr = net.public_host(RELAY_LAST);
    let (ra, ha) = net.home(1, Nat::Cone);
    let (rb, hb) = net.home(2, nat_b);
    prepare(&net, &[ra, rb]);
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(&net, hr, SECRET, &dir.path().join("relay.log"));
    let mut nodes = vec![net.node(ha, "a"), net.node(hb, "b")];
    for n in nodes.iter_mut() {
        n.start();
    }
    for (x, y) in [(0, 1), (1, 0)] {
        let out = nodes[x].cli(&["trust", &nodes[y].id.clone()]);
        assert!(out.status.success(), "trust: {}", stderr(&out));
    }
    let out = nodes[0].cli(&["relay", "add", &relay_addr(&net), SECRET]);
    assert!(out.status.success(), "relay add: {}", stderr(&out));
    nodes[1].stop();
    std::fs::copy(
        nodes[0].path("state/relays.json"),
        nodes[1].path("state/relays.json"),
    )
    .unwrap();
    nodes[1].start();
    Some(World {
        net,
        nodes,
        routers: vec![ra, rb],
        hosts: vec![ha, hb],
        relay_host: hr,
        relay: Some(relay),
        dir,
    })
}

impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- relay log\n{}", self.relay_log());
            for n in &self.nodes {
                eprintln!("--- {} log\n{}", n.name, n.log());
            }
        }
    }
}

impl World {
    fn relay_log(&self) -> String {
        read(&self.dir.path().join("relay.log"))
    }
}

fn relays(n: &Node) -> Vec<Value> {
    n.json(&["relay", "list"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn registered(n: &Node, over: &str) -> bool {
    relays(n)
        .iter()
        .any(|r| r["state"] == "registered" && r["transport"] == over)
}

/// a and b first reach each other only through the relay (a firewall between their
/// routers): a message goes through it, and the relay's traffic never shows its text;
/// when the firewall goes, they punch a direct path (coordinated over the relayed
/// connection) and traffic takes it.
#[test]
fn two_nats_without_a_public_member_meet_through_the_relay_then_go_direct() {
    let Some(w) = world("rl", Nat::Cone, |net, routers| {
        net.block(routers[0], "203.0.113.2");
    }) else {
        return;
    };
    let (a, b) = (&w.nodes[0], &w.nodes[1]);
    let pcap = w.dir.path().join("relay.pcap");
    let cap = capture(&w.net, w.relay_host, &pcap);
    let notes = b.out().join("notes").display().to_string();
    b.handler("note/x", &format!("cat >> {notes}; echo >> {notes}"));
    wait_until("a and b to register with the relay", || {
        registered(a, "udp") && registered(b, "udp")
    });
    let took = wait_path(a, "b", "relay", Duration::from_secs(20));
    eprintln!(
        "a reached b through the relay {:.2} s after both registered",
        took.as_secs_f64()
    );
    let p = a.peer("b").unwrap();
    assert_eq!(p["path"]["via"], relay_addr(&w.net).as_str(), "{p}");
    let text = String::from_utf8_lossy(&a.cli(&["peers"]).stdout).into_owned();
    assert!(
        text.contains(&format!("relay via {}", relay_addr(&w.net))),
        "{text}"
    );
    // a's public address, as the relay saw it, is a candidate.
    let status = a.json(&["status"]);
    assert!(
        status["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["kind"] == "observed"
                && c["addr"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("203.0.113.1:"))
                && c["from"][0]
                    .as_str()
                    .is_some_and(|f| f.starts_with("relay "))),
        "{status}"
    );
    let marker = "MARKER-the-relay-must-never-read-this-7f3a";
    let r = a.cli(&["send", "b", "note.x", marker]);
    assert!(r.status.success(), "{}", stderr(&r));
    wait_until("b to get the note through the relay", || {
        file(&b.out().join("notes")).is_some_and(|f| String::from_utf8_lossy(&f).contains(marker))
    });
    let ping = String::from_utf8_lossy(&a.cli(&["ping", "b"]).stdout).into_owned();
    assert!(ping.contains("relay via"), "{ping}");
    if let Some(mut cap) = cap {
        // SIGINT: tcpdump writes out what it holds, then exits.
        let pid = libc::pid_t::try_from(cap.0.id()).unwrap();
        // SAFETY: signals the capture process this test started (its PID, still ours:
        // it has not been waited for).
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid, libc::SIGINT);
        }
        let _ = cap.0.wait();
        let bytes = std::fs::read(&pcap).unwrap();
        // The capture holds the relayed datagrams (their header names a and b) ...
        let a_raw = raw_id(&a.id);
        assert!(
            bytes.windows(a_raw.len()).any(|x| x == &a_raw[..]),
            "the capture has no relayed datagram of a ({} bytes)",
            bytes.len()
        );
        // ... and never the text of the message.
        assert!(
            !bytes.windows(marker.len()).any(|x| x == marker.as_bytes()),
            "the relay's traffic contains the message in clear"
        );
    }
    w.net.unblock(w.routers[0]);
    let took = wait_path(a, "b", "direct", Duration::from_secs(30));
    wait_path(b, "a", "direct", Duration::from_secs(10));
    eprintln!(
        "direct path {:.2} s after the firewall went",
        took.as_secs_f64()
    );
    let r = a.cli(&["send", "b", "note.x", "direct"]);
    assert!(r.status.success(), "{}", stderr(&r));
    wait_until("b to get the note on the direct path", || {
        // The handler writes the text, then the newline: wait for both.
        file(&b.out().join("notes"))
            .is_some_and(|f| String::from_utf8_lossy(&f).contains("direct\n"))
    });
    let notes = String::from_utf8(file(&b.out().join("notes")).unwrap()).unwrap();
    assert_eq!(
        notes,
        format!("{marker}\ndirect\n"),
        "each message exactly once"
    );
}

/// b's network drops every UDP packet going out: b registers with the relay over TCP,
/// and a and b talk through it.
#[test]
fn a_network_that_drops_udp_reaches_its_peers_through_the_relays_tcp_port() {
    let Some(w) = world("rt", Nat::Cone, |net, routers| {
        nft(
            net.ns(routers[1]),
            "table inet noudp {
  chain forward {
    type filter hook forward priority filter - 10; policy accept;
    iifname \"lan0\" meta l4proto udp drop
  }
}
",
        );
    }) else {
        return;
    };
    let (a, b) = (&w.nodes[0], &w.nodes[1]);
    wait_until("b to register over TCP and a over UDP", || {
        registered(b, "tcp") && registered(a, "udp")
    });
    wait_path(b, "a", "relay", Duration::from_secs(20));
    wait_path(a, "b", "relay", Duration::from_secs(20));
    a.handler("q/x", "cat");
    let r = b.cli(&["send", "--reply", "a", "q.x", "over tcp"]);
    assert!(r.status.success(), "{}", stderr(&r));
    let ping = a.json(&["ping", "b"]);
    eprintln!("ping through the relay, b over TCP: {ping}");
    assert!(
        w.relay_log().contains("device registered (TCP)"),
        "{}",
        w.relay_log()
    );
}

/// A stranger without the relay's secret gets no registration; a device of another mesh
/// that knows the secret registers but reaches none of our devices through the relay;
/// and removing the relay stops its use everywhere.
#[test]
fn strangers_and_other_meshes_get_nothing_from_the_relay() {
    let Some(mut w) = world("rx", Nat::Cone, |_, _| {}) else {
        return;
    };
    wait_until("a and b to register", || {
        registered(&w.nodes[0], "udp") && registered(&w.nodes[1], "udp")
    });
    let hs = w.net.public_host(30);
    let hx = w.net.public_host(31);
    let mut stranger = w.net.node(hs, "s");
    stranger.start();
    let out = stranger.cli(&[
        "relay",
        "add",
        &relay_addr(&w.net),
        "not-the-secret-0000000",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_until("the stranger to be refused", || {
        relays(&stranger)
            .iter()
            .any(|r| r["state"] == "connecting" && !r["problem"].is_null())
    });
    eprintln!("stranger: {:?}", relays(&stranger));
    // Another mesh, with the secret: it trusts a, but a does not trust it.
    let mut other = w.net.node(hx, "x");
    other.start();
    let out = other.cli(&["trust", &w.nodes[0].id.clone()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = other.cli(&["relay", "add", &relay_addr(&w.net), SECRET]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_until("the other mesh's device to register", || {
        registered(&other, "udp")
    });
    wait_until("it to try a through the relay and fail", || {
        other.log().contains("dial failed")
    });
    assert!(
        w.nodes[0].peer("x").is_none(),
        "a knows the other mesh's device"
    );
    assert!(
        !w.nodes[0].log().contains(&other.id[..9]),
        "a heard from the other mesh's device:\n{}",
        w.nodes[0].log()
    );
    // Removing the relay spreads: b stops using it too.
    let a = &w.nodes[0];
    wait_path(a, "b", "direct", Duration::from_secs(30));
    let out = a.cli(&["relay", "remove", &relay_addr(&w.net)]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_until("b to forget the relay", || relays(&w.nodes[1]).is_empty());
    assert!(w.nodes[1].path("state/relays.json").exists());
    w.relay.take();
}

/// a and b talk directly; the direct path dies (a firewall appears between the routers):
/// they are back on the relay without any help, then direct again once it goes.
#[test]
fn a_dead_direct_path_falls_back_to_the_relay() {
    let Some(w) = world("rf", Nat::Cone, |_, _| {}) else {
        return;
    };
    let (a, b) = (&w.nodes[0], &w.nodes[1]);
    wait_path(a, "b", "direct", Duration::from_secs(30));
    wait_path(b, "a", "direct", Duration::from_secs(10));
    w.net.block(w.routers[0], "203.0.113.2");
    let t0 = Instant::now();
    wait_path(a, "b", "relay", Duration::from_secs(20));
    eprintln!(
        "back on the relay {:.2} s after the direct path died",
        t0.elapsed().as_secs_f64()
    );
    if std::env::var("CNSPR_TEST_SHOW_LOG").is_ok() {
        eprintln!("{}", a.log());
    }
    b.handler("q/x", "cat");
    let r = a.cli(&["send", "--reply", "b", "q.x", "through the relay again"]);
    assert!(r.status.success(), "{}", stderr(&r));
    w.net.unblock(w.routers[0]);
    wait_path(a, "b", "direct", Duration::from_secs(60));
}

/// The relay commands check what they are given (no namespace: one daemon on loopback,
/// and the only relay it is told of is on loopback too).
#[test]
fn relay_commands_refuse_bad_input_with_clear_errors() {
    let mut n = Node::new("solo", "");
    n.start();
    let err = |args: &[&str]| {
        let out = n.cli(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        stderr(&out)
    };
    assert!(err(&["relay", "add", "no-port", "0123456789abcdef"]).contains("HOST:PORT"));
    assert!(err(&["relay", "add", "127.0.0.1:0", "0123456789abcdef"]).contains("port"));
    assert!(err(&["relay", "add", "127.0.0.1:9", "short"]).contains("16 to 128"));
    assert!(err(&["relay", "remove", "127.0.0.1:9"]).contains("no relay"));
    let v = n.json(&["relay", "list"]);
    assert_eq!(v, serde_json::json!([]));
    let out = n.cli(&["relay", "add", "127.0.0.1:9", "0123456789abcdef"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = n.json(&["relay", "list"]);
    assert_eq!(v[0]["addr"], "127.0.0.1:9", "{v}");
    assert_eq!(v[0]["state"], "connecting", "{v}");
    let status = n.json(&["status"]);
    assert_eq!(status["relays"][0]["addr"], "127.0.0.1:9", "{status}");
    let out = n.cli(&["relay", "remove", "127.0.0.1:9"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(n.json(&["relay", "list"]), serde_json::json!([]));
    // A device signs at most 8 relays in use: the 9th is refused and told why, not
    // dropped in silence.
    for port in 1..=8 {
        let out = n.cli(&[
            "relay",
            "add",
            &format!("127.0.0.1:{port}"),
            "0123456789abcdef",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let ninth = err(&["relay", "add", "127.0.0.1:10", "0123456789abcdef"]);
    assert!(ninth.contains("remove one first"), "{ninth}");
    assert_eq!(n.json(&["relay", "list"]).as_array().unwrap().len(), 8);
}

/// b behind a symmetric NAT (a new public port per destination): the port the relay saw
/// is not the one a would reach, punching fails, and a and b stay on the relay, where
/// messages still go.
#[test]
fn a_symmetric_nat_stays_on_the_relay() {
    let Some(w) = world("ry", Nat::Symmetric, |_, _| {}) else {
        return;
    };
    let (a, b) = (&w.nodes[0], &w.nodes[1]);
    wait_path(a, "b", "relay", Duration::from_secs(20));
    let failed = |n: &Node| {
        n.log()
            .matches("hole punching: no direct path this time")
            .count()
    };
    wait_until("two punch exchanges to fail", || failed(a) + failed(b) >= 2);
    let p = a.peer("b").unwrap();
    assert_eq!(path_kind(&p), Some("relay"), "{p}");
    b.handler("q/x", "cat");
    let r = a.cli(&["send", "--reply", "b", "q.x", "still through the relay"]);
    assert!(r.status.success(), "{}", stderr(&r));
}

/// a dies without a word (kill -9) and a new device, with its own identity, starts on the
/// same host: its registration comes from the address the dead one had, and the relay
/// gives it that address at once (the dead registration would otherwise linger until its
/// idle timeout and take the new device's datagrams).
#[test]
fn a_new_device_at_a_dead_ones_address_gets_its_own_datagrams() {
    let Some(mut w) = world("rn", Nat::Cone, |net, routers| {
        net.block(routers[0], "203.0.113.2");
    }) else {
        return;
    };
    wait_path(&w.nodes[0], "b", "relay", Duration::from_secs(20));
    w.nodes[0].kill9();
    let mut c = w.net.node(w.hosts[0], "c");
    c.start();
    let b = &w.nodes[1];
    for (x, y) in [(&c, b), (b, &c)] {
        let out = x.cli(&["trust", &y.id]);
        assert!(out.status.success(), "trust: {}", stderr(&out));
    }
    c.stop();
    std::fs::copy(b.path("state/relays.json"), c.path("state/relays.json")).unwrap();
    c.start();
    wait_path(&c, "b", "relay", Duration::from_secs(20));
    wait_until("the relay to drop the dead device's registration", || {
        w.relay_log()
            .contains("a registration from the same address replaces another device's")
    });
    b.handler("q/x", "cat");
    let r = c.cli(&["send", "--reply", "b", "q.x", "from the new device"]);
    assert!(r.status.success(), "{}", stderr(&r));
    w.nodes.push(c);
}
