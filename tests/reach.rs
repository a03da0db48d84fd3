//! Reach beyond the LAN (network namespaces, root or a user namespace): devices behind
//! home routers that translate addresses meet through a member with a public address and
//! then reach each other directly where the routers allow it.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::nat::*;
use common::*;
use serde_json::Value;

const MIB: usize = 1 << 20;

/// A public member `m` at 203.0.113.10 and devices `a`, `b`, each behind its own router
/// (203.0.113.1 and .2).
struct World {
    nodes: Vec<Node>,
    routers: Vec<usize>,
    net: Internet,
}

/// Builds the world; `prepare` runs before the daemons start.
fn world(
    tag: &str,
    nat_a: Nat,
    nat_b: Nat,
    prepare: impl FnOnce(&Internet, &[usize], &[Node]),
) -> Option<World> {
    let mut net = Internet::new(tag)?;
    let hm = net.public_host(10);
    let a = net.home(1, nat_a);
    let b = net.home(2, nat_b);
    Some(populate(net, hm, a, b, prepare))
}

/// Starts m on host `hm` and a, b on the devices of the two homes `(router, device)`.
fn populate(
    net: Internet,
    hm: usize,
    (ra, ha): (usize, usize),
    (rb, hb): (usize, usize),
    prepare: impl FnOnce(&Internet, &[usize], &[Node]),
) -> World {
    let mut nodes = vec![net.node(hm, "m"), net.node(ha, "a"), net.node(hb, "b")];
    prepare(&net, &[ra, rb], &nodes);
    for n in nodes.iter_mut() {
        n.start();
    }
    let m_addr = format!("{}.10:7373", net.prefix);
    let (m, a, b) = (&nodes[0], &nodes[1], &nodes[2]);
    // a and b dial m before m trusts them: refused, they dial again after the backoff.
    for (x, y, addr) in [
        (a, m, Some(m_addr.as_str())),
        (b, m, Some(m_addr.as_str())),
        (m, a, None),
        (m, b, None),
        (a, b, None),
        (b, a, None),
    ] {
        let mut args = vec!["trust", y.id.as_str()];
        if let Some(addr) = addr {
            args.extend(["--addr", addr]);
        }
        let out = x.cli(&args);
        assert!(out.status.success(), "trust: {}", stderr(&out));
    }
    World {
        nodes,
        routers: vec![ra, rb],
        net,
    }
}

/// A handler on `n` that appends each `note.x` message's body, and a newline, to
/// `out/notes`.
fn notes_handler(n: &Node) {
    let notes = n.out().join("notes").display().to_string();
    n.handler("note/x", &format!("cat >> {notes}; echo >> {notes}"));
}

fn path_kind(p: &Value) -> Option<&str> {
    p["path"]["kind"].as_str()
}

/// Waits until `n` reaches `peer` by a path of `kind` (and `state`).
fn wait_path(n: &Node, peer: &str, state: &str, kind: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if n.peer(peer)
            .is_some_and(|p| p["state"] == state && path_kind(&p) == Some(kind))
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{} did not reach {peer} {state} by a {kind} path within {within:?}: {:?}\n{}",
            n.name,
            n.peer(peer),
            n.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn two_cone_nats_meet_through_a_public_member_then_go_direct() {
    let Some(w) = world("rc", Nat::Cone, Nat::Cone, |_, _, _| {}) else {
        return;
    };
    let (a, b) = (&w.nodes[1], &w.nodes[2]);
    wait_until("a and b to see m", || {
        a.peer("m").is_some_and(|p| p["state"] == "active")
            && b.peer("m").is_some_and(|p| p["state"] == "active")
    });
    wait_path(a, "b", "active", "direct", Duration::from_secs(20));
    wait_path(b, "a", "active", "direct", Duration::from_secs(20));
    // Both know their public address, as m saw it.
    let status = a.json(&["status"]);
    let cands = status["candidates"].as_array().cloned().unwrap_or_default();
    assert!(
        cands.iter().any(|c| c["kind"] == "observed"
            && c["addr"]
                .as_str()
                .is_some_and(|s| s.starts_with("203.0.113.1:"))),
        "a's candidates lack its public address: {status}"
    );
    let p = a.peer("b").unwrap();
    assert_eq!(p["path"]["via"], Value::Null, "{p}");
    // The direct path goes to b's router, not to b's private address.
    assert!(
        p["addresses"][0]
            .as_str()
            .is_some_and(|s| s.starts_with("203.0.113.2:")),
        "{p}"
    );
    let text = a.cli(&["peers"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("direct"));
}

/// a and b first reach each other only through m (a firewall between their routers);
/// a stream and messages are under way when the firewall goes: the direct path forms,
/// new traffic takes it, and the stream opened through m completes intact.
#[test]
fn traffic_moves_to_the_punched_path_without_loss() {
    let Some(w) = world("rp", Nat::Cone, Nat::Cone, |net, routers, nodes| {
        net.block(routers[0], "203.0.113.2");
        let a = &nodes[1];
        a.handler(
            "peer/path_changed",
            &format!(
                "echo \"$CNSPR_PEER $CNSPR_PEER_PATH $CNSPR_PEER_VIA\" >> {}/paths",
                a.out().display()
            ),
        );
        let b = &nodes[2];
        notes_handler(b);
    }) else {
        return;
    };
    let (a, b) = (&w.nodes[1], &w.nodes[2]);
    wait_path(a, "b", "indirect", "member", Duration::from_secs(20));
    assert_eq!(a.peer("b").unwrap()["path"]["via"], "m");
    let peers_text = String::from_utf8_lossy(&a.cli(&["peers"]).stdout).into_owned();
    assert!(peers_text.contains("relay via m"), "{peers_text}");
    let ping = String::from_utf8_lossy(&a.cli(&["ping", "b"]).stdout).into_owned();
    assert!(ping.contains("relay via m"), "{ping}");

    let out = b.out().display().to_string();
    let lis = listen(b, "bulk", Some(&format!("cat > {out}/got")));
    let data = noise(64 * MIB, 3);
    let mut cl = connect(a, "b", "bulk");
    let mut stdin = cl.stdin.take().unwrap();
    stdin.write_all(&data[..32 * MIB]).unwrap();
    stdin.flush().unwrap();
    let r = a.cli(&["send", "b", "note.x", "before"]);
    assert!(r.status.success(), "{}", stderr(&r));

    // The punch exchange runs through m while the firewall stands: both sides dial at
    // the agreed moment (and fail, for now).
    wait_until("both sides to dial in a punch exchange", || {
        a.log().contains("hole punching: dialling") && b.log().contains("hole punching: dialling")
    });
    w.net.unblock(w.routers[0]);
    let took = wait_path(a, "b", "active", "direct", Duration::from_secs(20));
    eprintln!(
        "direct path {:.2} s after the firewall went",
        took.as_secs_f64()
    );
    let r = a.cli(&["send", "b", "note.x", "after"]);
    assert!(r.status.success(), "{}", stderr(&r));
    let ping = String::from_utf8_lossy(&a.cli(&["ping", "b"]).stdout).into_owned();
    assert!(ping.contains("direct"), "{ping}");

    stdin.write_all(&data[32 * MIB..]).unwrap();
    drop(stdin);
    stream_delivered(cl, lis, b, &data);
    wait_until("both notes", || {
        file(&b.out().join("notes")).is_some_and(|f| f.len() >= "before\nafter\n".len())
    });
    let notes = String::from_utf8(file(&b.out().join("notes")).unwrap()).unwrap();
    assert_eq!(
        notes, "before\nafter\n",
        "each message exactly once, in order"
    );
    wait_until("a's path_changed handler to run", || {
        file(&a.out().join("paths"))
            .is_some_and(|f| String::from_utf8_lossy(&f).contains("b direct"))
    });
    let paths = String::from_utf8(file(&a.out().join("paths")).unwrap()).unwrap();
    let about_b: Vec<&str> = paths.lines().filter(|l| l.starts_with("b ")).collect();
    assert_eq!(about_b, ["b member m", "b direct "], "{paths}");
    let punched = a.log().contains("hole punching: direct connection up")
        || b.log().contains("hole punching: direct connection up");
    eprintln!(
        "the direct connection came from {}",
        if punched {
            "a coordinated punch"
        } else {
            "an ordinary dial"
        }
    );
}

/// How many punch exchanges `n` has seen fail.
fn failed_punches(n: &Node) -> usize {
    n.log()
        .matches("hole punching: no direct path this time")
        .count()
}

/// Symmetric NAT on b's side (a new public port per destination): what m saw is not
/// what a would reach, so punching fails; a and b stay relayed through m, and messages
/// and pings still go.
fn stays_relayed(tag: &str, nat_a: Nat) {
    let Some(w) = world(tag, nat_a, Nat::Symmetric, |_, _, _| {}) else {
        return;
    };
    let (a, b) = (&w.nodes[1], &w.nodes[2]);
    wait_path(a, "b", "indirect", "member", Duration::from_secs(20));
    wait_until("two punch exchanges to fail", || {
        failed_punches(a) + failed_punches(b) >= 2 * 2
    });
    let p = a.peer("b").unwrap();
    assert_eq!(path_kind(&p), Some("member"), "{p}");
    assert_eq!(p["state"], "indirect", "{p}");
    b.handler("q/x", "cat");
    let r = a.cli(&["send", "--reply", "b", "q.x", "hi"]);
    assert!(r.status.success(), "{}", stderr(&r));
    let ping = String::from_utf8_lossy(&a.cli(&["ping", "b"]).stdout).into_owned();
    assert!(ping.contains("relay via m"), "{ping}");

    // a and b get a QUIC connection of their own whose packets m passes on as they are:
    // a stream between them goes over it, end to end, and m never joins two streams.
    let m = &w.nodes[0];
    wait_until("m to pass packets on between a and b", || {
        forwarded_for_members(m) > 0
    });
    let before = forwarded_for_members(m);
    let out = b.out().display().to_string();
    let lis = listen(b, "bulk", Some(&format!("cat > {out}/got")));
    let data = noise(8 * MIB, 5);
    let mut cl = connect(a, "b", "bulk");
    cl.stdin.take().unwrap().write_all(&data).unwrap();
    stream_delivered(cl, lis, b, &data);
    let passed = forwarded_for_members(m) - before;
    // Every datagram carries at most 1,419 bytes of QUIC through a member.
    assert!(
        passed as usize >= data.len() / 1419,
        "m passed on only {passed} datagrams for an 8 MiB stream"
    );
    assert!(!m.log().contains("relaying a stream"), "{}", m.log());
    let p = a.peer("b").unwrap();
    assert_eq!(p["state"], "indirect", "{p}");
    assert_eq!(path_kind(&p), Some("member"), "{p}");
}

/// Waits until `cnspr connect` (`cl`, its input written and closed) ends well and `to`'s
/// listener `lis` stored exactly `data` in `out/got`; stops the listener.
fn stream_delivered(cl: std::process::Child, mut lis: std::process::Child, to: &Node, data: &[u8]) {
    let (code, err) = finish(cl);
    assert_eq!(code, Some(0), "{err}");
    wait_until("the whole stream to be stored", || {
        file(&to.out().join("got")).is_some_and(|f| f.len() == data.len())
    });
    assert!(
        file(&to.out().join("got")).unwrap() == data,
        "stream corrupted"
    );
    let _ = lis.kill();
    let _ = lis.wait();
}

#[test]
fn cone_and_symmetric_nat_stay_relayed_through_the_member() {
    stays_relayed("rs", Nat::Cone);
}

#[test]
fn two_symmetric_nats_stay_relayed_through_the_member() {
    stays_relayed("rss", Nat::Symmetric);
}

/// a's router reboots with a new public address while a and b talk directly: a is
/// reached again (through m or directly) without anyone's help, then directly again.
#[test]
fn a_router_reboot_falls_back_to_the_member_then_goes_direct_again() {
    let Some(w) = world("rr", Nat::Cone, Nat::Cone, |_, _, nodes| {
        let b = &nodes[2];
        notes_handler(b);
    }) else {
        return;
    };
    let (a, b) = (&w.nodes[1], &w.nodes[2]);
    wait_path(a, "b", "active", "direct", Duration::from_secs(20));
    w.net.reboot(w.routers[0], 1, 11);
    let t0 = Instant::now();
    // The old direct path is gone: a sees b suspect, then reached through m or anew.
    wait_until("b to see a's old path fail", || {
        b.peer("a").is_some_and(|p| {
            p["state"] != "active"
                || !p["addresses"][0]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("203.0.113.1:")
        })
    });
    let reached = wait_path_any(b, "a", Duration::from_secs(20));
    eprintln!(
        "after the reboot, b reached a again by a {reached} path in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    let r = b.cli(&["send", "a", "note.x", "again"]);
    assert!(r.status.success(), "{}", stderr(&r));
    wait_path(b, "a", "active", "direct", Duration::from_secs(30));
    let p = b.peer("a").unwrap();
    assert!(
        p["addresses"][0]
            .as_str()
            .is_some_and(|s| s.starts_with("203.0.113.11:")),
        "{p}"
    );
    eprintln!(
        "direct again at a's new address {:.2} s after the reboot",
        t0.elapsed().as_secs_f64()
    );
    let r = a.cli(&["send", "b", "note.x", "direct"]);
    assert!(r.status.success(), "{}", stderr(&r));
}

/// Waits until `n` reaches `peer` at all (direct or through a member); returns the kind.
fn wait_path_any(n: &Node, peer: &str, within: Duration) -> String {
    let start = Instant::now();
    loop {
        if let Some(k) = n.peer(peer).and_then(|p| {
            let kind = path_kind(&p)?.to_string();
            (p["state"] == "active" || p["state"] == "indirect").then_some(kind)
        }) {
            return k;
        }
        assert!(
            start.elapsed() < within,
            "{} lost {peer}: {:?}",
            n.name,
            n.peer(peer)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// b sits behind a symmetric NAT whose router runs miniupnpd: b asks it for a port
/// (PCP or NAT-PMP), announces the mapped address, and a reaches b directly there. When
/// b stops, the mapping leaves the router.
#[test]
fn a_port_mapping_on_a_symmetric_nat_gives_a_direct_path() {
    // miniupnpd maps nothing on a documentation address: this internet uses another
    // range (the namespaces have no way out).
    let Some(mut net) = Internet::with_prefix("ru", "11.11.11") else {
        return;
    };
    let hm = net.public_host(10);
    let a = net.home(1, Nat::Cone);
    let Some(b) = net.upnp_home(2, Nat::Symmetric) else {
        return;
    };
    let mut w = populate(net, hm, a, b, |_, _, _| {});
    let router_b = w.net.ns(w.routers[1]).to_string();
    {
        let (a, b) = (&w.nodes[1], &w.nodes[2]);
        wait_until("b to hold a port mapping", || {
            b.try_json(&["status"]).is_some_and(|s| {
                s["candidates"].as_array().is_some_and(|c| {
                    c.iter().any(|c| {
                        c["kind"] == "mapped"
                            && c["addr"]
                                .as_str()
                                .is_some_and(|a| a.starts_with("11.11.11.2:"))
                    })
                })
            })
        });
        wait_path(a, "b", "active", "direct", Duration::from_secs(20));
        wait_path(b, "a", "active", "direct", Duration::from_secs(20));
        b.handler("q/x", "cat");
        let r = a.cli(&["send", "--reply", "b", "q.x", "hi"]);
        assert!(r.status.success(), "{}", stderr(&r));
    }
    let rules = |ns: &str| {
        String::from_utf8_lossy(
            &std::process::Command::new("ip")
                .args([
                    "netns", "exec", ns, "nft", "list", "chain", "inet", "filter",
                ])
                .arg("prerouting_miniupnpd")
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned()
    };
    assert!(rules(&router_b).contains("dnat"), "{}", rules(&router_b));
    w.nodes[2].stop();
    wait_until("the router to drop b's mapping", || {
        !rules(&router_b).contains("dnat")
    });
}

/// a and b talk directly until a firewall between their routers cuts that path. Once
/// its dead connection is closed, each dials the other through m at once (a connection
/// of their own whose packets m passes on) beside the direct address, not at the direct
/// address alone, a dial that runs 3 s to its handshake timeout before m is tried:
/// meanwhile every stream between them would be joined by m.
#[test]
fn a_cut_direct_path_moves_to_the_member_without_a_failed_dial_first() {
    let Some(w) = world("cut", Nat::Cone, Nat::Cone, |_, _, _| {}) else {
        return;
    };
    let (a, b) = (&w.nodes[1], &w.nodes[2]);
    let from = direct_both_ways(a, b);
    let prefix = &w.net.prefix;
    w.net.block(w.routers[0], &format!("{prefix}.2"));
    w.net.block(w.routers[1], &format!("{prefix}.1"));
    wait_path(a, "b", "indirect", "member", Duration::from_secs(20));
    wait_path(b, "a", "indirect", "member", Duration::from_secs(20));
    for ((n, peer), from) in [(a, "b"), (b, "a")].into_iter().zip(from) {
        wait_until(
            &format!("{}'s connection to {peer} through m", n.name),
            || since_of(n, from).contains(&through_m(peer)),
        );
        let log = since_of(n, from);
        let closing = format!("closing its connection peer={peer}");
        let closed = log
            .find(&closing)
            .unwrap_or_else(|| panic!("{} never closed its dead connection:\n{log}", n.name));
        assert!(closed < log.find(&through_m(peer)).unwrap(), "{log}");
        // No dial at the direct address alone: it would fail for want of an answer
        // within the handshake timeout (3 s) of the close. Dials refused as duplicates
        // (the other side dialled through m at the same moment) are no failure here.
        let start = Instant::now();
        let bound = Duration::from_secs(4);
        let mut failed = None;
        while failed.is_none() && start.elapsed() < bound {
            failed = timed_out(&since_of(n, from)[closed..], peer);
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            failed.is_none(),
            "{} dialled {peer}'s direct address alone:\n{}",
            n.name,
            since_of(n, from)
        );
    }
}

/// The direct path between a and b is cut while m cannot reach b either: each closes
/// its dead connection to the other while no member can pass packets on, and redials
/// the direct address alone. When m reaches b again, the membership core says
/// `indirect` while that redial is still under way, and the dial through m starts at
/// once beside it: the connection through m is up before that redial runs to its
/// handshake timeout (3 s), not after it.
#[test]
fn a_member_that_comes_back_is_dialled_through_beside_a_redial_under_way() {
    // Redials follow each other closely (the backoff stays at its shortest), so that
    // one is under way when m comes back.
    let Some(w) = world("beside", Nat::Cone, Nat::Cone, |_, _, nodes| {
        for n in &nodes[1..] {
            std::fs::write(n.path("config.toml"), "max_backoff_ms = 100\n").unwrap();
        }
    }) else {
        return;
    };
    let (a, b) = (&w.nodes[1], &w.nodes[2]);
    let from = direct_both_ways(a, b);
    let prefix = &w.net.prefix;
    let (ra, rb) = (w.routers[0], w.routers[1]);
    w.net.block(ra, &format!("{prefix}.2"));
    w.net
        .block_each(rb, &[&format!("{prefix}.1"), &format!("{prefix}.10")]);
    let sides = [(a, "b", from[0]), (b, "a", from[1])];
    // Where the redial of the peer's direct address under way starts in each log (after
    // the close of the dead connection), if one is under way.
    let under_way = |(n, peer, from): (&Node, &str, usize)| {
        let log = since_of(n, from);
        let closed = log.find(&format!("closing its connection peer={peer}"))?;
        let at = closed + log[closed..].rfind(&format!("dialling peer={peer} "))?;
        (!log[at..].contains(&format!("dial failed peer={peer}"))).then_some(at)
    };
    // m reaches b again while a redial is under way on both sides (the core says
    // `indirect` a moment later, most often while one still runs).
    let mut at = [0, 0];
    wait_until(
        "a and b each redialling the other's direct address",
        || match (under_way(sides[0]), under_way(sides[1])) {
            (Some(x), Some(y)) => {
                at = [x, y];
                true
            }
            _ => false,
        },
    );
    // a's router still drops b's packets, and b's a's.
    w.net.unblock(rb);
    wait_path(a, "b", "indirect", "member", Duration::from_secs(20));
    for ((n, peer, from), at) in sides.into_iter().zip(at) {
        wait_until(
            &format!("{}'s connection to {peer} through m", n.name),
            || since_of(n, from)[at..].contains(&through_m(peer)),
        );
        let log = since_of(n, from);
        let log = &log[at..];
        let up = log.find(&through_m(peer)).unwrap();
        // The redial running when the core said `indirect`, if one was (between two
        // redials the dial through m starts at once anyway).
        let Some(indirect) = log.find(&format!("peer state peer={peer} state=\"indirect\"")) else {
            continue;
        };
        let failed = format!("dial failed peer={peer}");
        let Some(running) = log[..indirect].rfind(&format!("dialling peer={peer} ")) else {
            continue;
        };
        if log[running..indirect].contains(&failed) {
            continue;
        }
        if let Some(end) = timed_out(&log[running..], peer) {
            assert!(
                up < running + end,
                "{} was connected to {peer} through m only after the redial under way when \
                 the core said indirect timed out:\n{log}",
                n.name
            );
        }
    }
}

/// Waits until a and b reach each other directly; returns where their logs stand.
fn direct_both_ways(a: &Node, b: &Node) -> [usize; 2] {
    wait_path(a, "b", "active", "direct", Duration::from_secs(20));
    wait_path(b, "a", "active", "direct", Duration::from_secs(20));
    [a.log().len(), b.log().len()]
}

/// `n`'s log from byte `from` on.
fn since_of(n: &Node, from: usize) -> String {
    n.log().get(from..).unwrap_or_default().to_string()
}

/// The line a device logs when its connection to `peer` through m is up.
fn through_m(peer: &str) -> String {
    format!("connection through a member that passes the packets on peer={peer} via=m")
}

/// Where the first line of `log` starts that says a dial of `peer` ran to its handshake
/// timeout.
fn timed_out(log: &str, peer: &str) -> Option<usize> {
    let failed = format!("dial failed peer={peer}");
    let mut at = 0;
    for line in log.split_inclusive('\n') {
        if line.contains(&failed) && line.contains("timed out") {
            return Some(at);
        }
        at += line.len();
    }
    None
}
