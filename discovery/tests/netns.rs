//! Discovery on real sockets, in throw-away network namespaces (root only; skipped with a
//! printed reason otherwise). All traffic stays inside the namespaces.
//!
//! `node_helper` is not a test of its own: with `CNSPR_DISCOVERY_TEST_NODE` set it runs a
//! discovery node driven over stdin/stdout; without it, it returns at once.

mod lab;

use std::net::SocketAddr;
use std::time::Duration;

use discovery::{Announce, Discovery, DiscoveryEvent, NetEvent, NetWatcher, PROTOCOL_VERSION};
use lab::{expect_found, node, now_us, Lab, Proc, NODE_ENV};

const ID_A: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
const ID_B: &str = "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";
const ID_PY: &str = "PYTHQNZERQCQNF2GAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

const FIND: Duration = Duration::from_secs(15);

fn skip(test: &str, why: &str) {
    println!("SKIP {test}: {why}");
    eprintln!("SKIP {test}: {why}");
}

fn has(addrs: &[SocketAddr], s: &str) -> bool {
    addrs.iter().any(|a| a.to_string() == s)
}

#[test]
fn two_namespaces_discover_follow_address_changes_and_goodbye() {
    let lab = match Lab::create(&["10.77.0.1/24", "10.77.0.2/24"]) {
        Ok(lab) => lab,
        Err(why) => return skip("two_namespaces", &why),
    };
    let (ns_a, ns_b) = (lab.hosts[0].clone(), lab.hosts[1].clone());
    let mut a = node("node-a", &ns_a, ID_A, 7001);
    let mut b = node("node-b", &ns_b, ID_B, 7002);
    a.expect("netinit active", FIND, |l| {
        l.starts_with("netinit true") && l.contains("10.77.0.1")
    });
    b.expect("netinit active", FIND, |l| {
        l.starts_with("netinit true") && l.contains("10.77.0.2")
    });

    a.send("start");
    b.send("start");
    let f = expect_found(&mut a, ID_B, FIND, "A finds B over IPv4", |f| {
        has(&f.addrs, "10.77.0.2:7002")
    });
    assert_eq!(
        (f.version.as_str(), f.name.as_str()),
        (PROTOCOL_VERSION, "node-b")
    );
    expect_found(&mut b, ID_A, FIND, "B finds A over IPv4", |f| {
        has(&f.addrs, "10.77.0.1:7001")
    });
    // IPv6 link-local comes with the scope of A's own eth0.
    let scope = lab.ifindex(&ns_a, "eth0");
    expect_found(
        &mut a,
        ID_B,
        FIND,
        "B's fe80:: address with its scope",
        |f| {
            f.addrs.iter().any(|s| matches!(s, SocketAddr::V6(v6) if v6.ip().is_unicast_link_local() && v6.scope_id() == scope && v6.port() == 7002))
        },
    );

    // Renumber B; its NetWatcher sees it, and after reannounce A sees only the new address.
    lab.ip(&ns_b, "addr del 10.77.0.2/24 dev eth0").unwrap();
    b.expect("AddressRemoved", FIND, |l| l == "net removed 10.77.0.2");
    lab.ip(&ns_b, "addr add 10.77.0.12/24 dev eth0").unwrap();
    b.expect("AddressAdded", FIND, |l| l == "net added 10.77.0.12");
    b.send("reannounce");
    b.expect("reannounced", FIND, |l| l == "reannounced");
    expect_found(&mut a, ID_B, FIND, "B at its new address only", |f| {
        has(&f.addrs, "10.77.0.12:7002") && !has(&f.addrs, "10.77.0.2:7002")
    });

    // Goodbye.
    b.send("stop");
    b.expect("stopped", FIND, |l| l == "stopped");
    a.expect("Lost B", Duration::from_secs(5), |l| {
        l.starts_with("lost ") && l.ends_with(ID_B)
    });

    // A's only link goes down, then up: Inactive, then Active.
    lab.ip(&ns_a, "link set eth0 down").unwrap();
    a.expect("AddressRemoved", FIND, |l| l == "net removed 10.77.0.1");
    a.expect("Inactive", FIND, |l| l == "net inactive");
    lab.ip(&ns_a, "link set eth0 up").unwrap();
    a.expect("Active", FIND, |l| l == "net active");
    a.send("addrs");
    let addrs = a.expect("addresses", FIND, |l| l.starts_with("addrs "));
    assert!(addrs.contains("10.77.0.1"), "{addrs}");
}

#[test]
fn python_zeroconf_interoperates() {
    let probe = lab::run(
        "python3",
        &["-c", "import zeroconf; print(zeroconf.__version__)"],
    );
    let version = match probe {
        Ok(v) => v.trim().to_owned(),
        Err(e) => {
            return skip(
                "python_zeroconf_interoperates",
                &format!("python3 with zeroconf unavailable ({})", e.trim()),
            )
        }
    };
    let lab = match Lab::create(&["10.77.0.1/24", "10.77.0.2/24"]) {
        Ok(lab) => lab,
        Err(why) => return skip("python_zeroconf_interoperates", &why),
    };
    println!("python-zeroconf {version}");
    let mut a = node("node-a", &lab.hosts[0], ID_A, 7001);
    a.expect("netinit", FIND, |l| l.starts_with("netinit true"));
    a.send("start");
    let mut py = Proc::spawn(
        "python",
        &lab.hosts[1],
        "python3",
        &["-u", "-c", PY_PEER, ID_A, ID_PY],
        &[],
    );
    // python-zeroconf resolves our service, TXT records included.
    let seen = py.expect("python resolves node-a", FIND, |l| {
        l.starts_with("py-resolved ")
    });
    for part in [
        &format!(" id={ID_A}")[..],
        &format!(" v={PROTOCOL_VERSION}"),
        " name=node-a",
        " port=7001 ",
        " server=cnspr-aaaaaaaa.local. ",
        "instance=node-a [aaaaaaaa]._cnspr._udp.local. ",
    ] {
        assert!(seen.contains(part), "{part:?} not in {seen}");
    }
    let addrs = seen
        .split(' ')
        .find_map(|w| w.strip_prefix("addrs="))
        .unwrap_or_default();
    assert!(
        addrs.split(',').any(|a| a == "10.77.0.1"),
        "10.77.0.1 not in {seen}"
    );
    // And we resolve python-zeroconf's registration, then its goodbye.
    let f = expect_found(&mut a, ID_PY, FIND, "node-a finds python", |f| {
        has(&f.addrs, "10.77.0.2:7100")
    });
    assert_eq!(f.name, "python peer");
    py.close_stdin();
    a.expect("Lost python", FIND, |l| {
        l.starts_with("lost ") && l.ends_with(ID_PY)
    });
}

/// A python-zeroconf peer: registers `ID_PY`, prints how it resolves the cnspr instance
/// with id `argv[1]`, and unregisters when stdin closes.
const PY_PEER: &str = r#"
import socket, sys, threading
from zeroconf import ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf
TYPE = "_cnspr._udp.local."
want, mine = sys.argv[1].encode(), sys.argv[2]
zc = Zeroconf()
me = ServiceInfo(TYPE, "python peer [PYTHQNZE]." + TYPE, addresses=[socket.inet_aton("10.77.0.2")],
                 port=7100, properties={"id": mine, "v": "1", "name": "python peer"},
                 server="cnspr-pythqnze.local.")
zc.register_service(me)
done = threading.Event()
def on_change(zeroconf, service_type, name, state_change):
    if state_change is ServiceStateChange.Removed or done.is_set():
        return
    info = zeroconf.get_service_info(service_type, name, 3000)
    if info is None or info.properties.get(b"id") != want:
        return
    props = " ".join("%s=%s" % (k.decode(), (v or b"").decode()) for k, v in sorted(info.properties.items()))
    print("@@ py-resolved instance=%s server=%s port=%d addrs=%s %s" % (
        name, info.server, info.port, ",".join(info.parsed_addresses()), props), flush=True)
    done.set()
browser = ServiceBrowser(zc, TYPE, handlers=[on_change])
done.wait(30)
sys.stdin.read()
zc.unregister_service(me)
zc.close()
"#;

/// Figures for the report: time from `start()` on one host to `Found` on the other, and
/// the multicast packets one device sends per minute in steady state (counted with an
/// AF_PACKET capture on its bridge port). `cargo test -p discovery --test netns --
/// --ignored --nocapture measure`.
#[test]
#[ignore = "takes about 3 minutes; run by hand for figures"]
fn measure() {
    let lab = match Lab::create(&["10.77.0.1/24", "10.77.0.2/24"]) {
        Ok(lab) => lab,
        Err(why) => return skip("measure", &why),
    };
    let mut a = node("node-a", &lab.hosts[0], ID_A, 7001);
    let mut b = node("node-b", &lab.hosts[1], ID_B, 7002);
    a.expect("netinit", FIND, |l| l.starts_with("netinit true"));
    b.expect("netinit", FIND, |l| l.starts_with("netinit true"));
    // Let IPv6 duplicate address detection settle so every run sees the same interfaces.
    let settle = std::time::Instant::now() + Duration::from_secs(3);
    while lab
        .ip(&lab.hosts[0], "-6 addr show tentative")
        .is_ok_and(|s| !s.trim().is_empty())
        && std::time::Instant::now() < settle
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    b.send("start");
    b.expect("started", FIND, |l| l.starts_with("started"));
    let (mut announce_ms, mut query_ms) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        a.send("start");
        let t0: u128 = a
            .expect("started", FIND, |l| l.starts_with("started "))
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let fb = expect_found(&mut b, ID_A, FIND, "B finds A", |_| true);
        let fa = expect_found(&mut a, ID_B, FIND, "A finds B", |_| true);
        announce_ms.push((fb.at_us - t0) as f64 / 1000.0);
        query_ms.push((fa.at_us - t0) as f64 / 1000.0);
        a.send("stop");
        a.expect("stopped", FIND, |l| l == "stopped");
        b.expect("Lost A", FIND, |l| {
            l.starts_with("lost ") && l.ends_with(ID_A)
        });
    }
    let p50 = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[v.len() - 1])
    };
    let (ap50, amax) = p50(&mut announce_ms);
    let (qp50, qmax) = p50(&mut query_ms);
    println!(
        "start() on A -> Found on B: p50 {ap50:.0} ms, max {amax:.0} ms, runs {announce_ms:?}"
    );
    println!("start() on A -> A's Found of B: p50 {qp50:.0} ms, max {qmax:.0} ms");

    a.send("start");
    expect_found(&mut b, ID_A, FIND, "B finds A", |_| true);
    std::thread::sleep(Duration::from_secs(20)); // past the start-up burst
    let secs = 120;
    let mut cap = Proc::spawn(
        "capture",
        &lab.switch,
        "python3",
        &["-u", "-c", PY_COUNT, "p0", &secs.to_string()],
        &[],
    );
    let counts = cap.expect("capture", Duration::from_secs(secs + 30), |l| {
        l.starts_with("counts ")
    });
    println!("frames from A over {secs} s: {counts}");
}

/// Counts frames arriving from the host on bridge port `argv[1]` for `argv[2]` seconds.
const PY_COUNT: &str = r#"
import socket, struct, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(3))
s.bind((sys.argv[1], 0))
s.settimeout(0.5)
end = time.time() + float(sys.argv[2])
c = {"mdns4": 0, "mdns6": 0, "other": 0}
while time.time() < end:
    try:
        data, addr = s.recvfrom(65535)
    except socket.timeout:
        continue
    if addr[2] == socket.PACKET_OUTGOING:
        continue
    et = struct.unpack("!H", data[12:14])[0]
    if et == 0x0800 and data[23] == 17 and struct.unpack("!H", data[14 + (data[14] & 15) * 4 + 2:][:2])[0] == 5353:
        c["mdns4"] += 1
    elif et == 0x86DD and data[20] == 17 and struct.unpack("!H", data[56:58])[0] == 5353:
        c["mdns6"] += 1
    else:
        c["other"] += 1
print("@@ counts " + " ".join("%s=%d" % kv for kv in c.items()), flush=True)
"#;

fn say(line: &str) {
    println!("@@ {line}");
}

fn found_line(event: &DiscoveryEvent) -> String {
    match event {
        DiscoveryEvent::Found {
            id,
            name,
            addrs,
            version,
            ..
        } => {
            let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            format!(
                "found {} {id} {version} {} {name}",
                now_us(),
                addrs.join(",")
            )
        }
        DiscoveryEvent::Lost { id } => format!("lost {} {id}", now_us()),
    }
}

fn net_line(event: NetEvent) -> String {
    match event {
        NetEvent::AddressAdded(ip) => format!("net added {ip}"),
        NetEvent::AddressRemoved(ip) => format!("net removed {ip}"),
        NetEvent::Active => "net active".into(),
        NetEvent::Inactive => "net inactive".into(),
    }
}

async fn next<T>(rx: &mut Option<tokio::sync::mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs a node when `CNSPR_DISCOVERY_TEST_NODE` is set (see the module docs).
#[test]
fn node_helper() {
    let Ok(spec) = std::env::var(NODE_ENV) else {
        return;
    };
    let mut parts = spec.split(' ');
    let (id, name, port) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let me = Announce {
        id: id.into(),
        name: name.into(),
        port: port.parse().unwrap(),
        pair_port: None,
    };
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (watcher, mut net) = NetWatcher::start().expect("NetWatcher::start");
        let addrs: Vec<String> = watcher.addresses().iter().map(ToString::to_string).collect();
        say(&format!("netinit {} {}", watcher.is_active(), addrs.join(",")));
        let (cmd_tx, mut cmds) = tokio::sync::mpsc::channel::<String>(16);
        std::thread::spawn(move || {
            for line in std::io::stdin().lines().map_while(Result::ok) {
                if cmd_tx.blocking_send(line).is_err() {
                    break;
                }
            }
        });
        let mut disc: Option<Discovery> = None;
        let mut events = None;
        loop {
            tokio::select! {
                Some(ev) = net.recv() => {
                    say(&net_line(ev));
                    // What the daemon does: re-announce on every address change.
                    if let (Some(d), NetEvent::AddressAdded(_) | NetEvent::AddressRemoved(_)) = (&disc, ev) {
                        d.reannounce().expect("reannounce");
                    }
                }
                ev = next(&mut events) => match ev {
                    Some(ev) => say(&found_line(&ev)),
                    None => events = None,
                },
                cmd = cmds.recv() => match cmd.as_deref() {
                    None | Some("exit") => break,
                    Some("start") => {
                        let t0 = now_us();
                        let (d, rx) = Discovery::start(me.clone()).expect("Discovery::start");
                        disc = Some(d);
                        events = Some(rx);
                        say(&format!("started {t0}"));
                    }
                    Some("reannounce") => {
                        disc.as_ref().expect("started").reannounce().expect("reannounce");
                        say("reannounced");
                    }
                    Some("stop") => {
                        disc.take().expect("started").stop();
                        events = None;
                        say("stopped");
                    }
                    Some("addrs") => {
                        let addrs: Vec<String> = watcher.addresses().iter().map(ToString::to_string).collect();
                        say(&format!("addrs {}", addrs.join(",")));
                    }
                    Some(other) => say(&format!("unknown command {other}")),
                },
            }
        }
        if let Some(d) = disc {
            d.stop();
        }
    });
}
