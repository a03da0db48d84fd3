//! A stranger on the LAN announces a member's device ID over mDNS with addresses of its
//! choice (anyone can: IDs are not secret). Those addresses are candidates only: dialled
//! after the known ones, never in their place, and kept only once a handshake on one of
//! them succeeds; they make the member be dialled at once at most every 10 s. So the
//! member's working address is never displaced and the link is never disturbed.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::lab::*;
use common::*;

/// Registers the `_cnspr._udp` service of the ID in argv[1], at 20 addresses of its
/// choice, until its standard input closes.
const SPOOF: &str = r#"
import socket, sys
from zeroconf import ServiceInfo, Zeroconf
TYPE = "_cnspr._udp.local."
zc = Zeroconf()
addrs = [socket.inet_aton("10.77.0.%d" % i) for i in range(200, 220)]
info = ServiceInfo(TYPE, "beta [SPOOFSPO]." + TYPE, addresses=addrs, port=7373,
                   properties={"id": sys.argv[1], "v": sys.argv[2], "name": "beta"},
                   server="cnspr-spoofspo.local.")
zc.register_service(info)
print("registered", flush=True)
sys.stdin.read()
zc.unregister_service(info)
zc.close()
"#;

#[test]
fn a_stranger_announcing_a_member_s_id_cannot_displace_its_address() {
    let probe = Command::new("python3")
        .args(["-c", "import zeroconf"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("skipping: python3 with zeroconf is not installed");
        return;
    }
    let Some(lab) = Lab::new("z", 3) else { return };
    let mut a = lab.node(0, "alpha");
    let mut b = lab.node(1, "beta");
    a.start();
    b.start();
    assert!(a.cli(&["trust", &b.id]).status.success());
    assert!(b.cli(&["trust", &a.id]).status.success());
    wait_reached_at(&a, "beta", "10.77.0.2:");
    // The stranger, on the third host, announces beta's ID.
    let mut spoof = Command::new("ip")
        .args(["netns", "exec", &lab.hosts[2], "python3", "-u", "-c", SPOOF])
        .arg(b.id.replace('-', ""))
        .arg(discovery::PROTOCOL_VERSION)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(spoof.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "registered");
    // alpha hears it...
    wait_until("alpha to hear the stranger's announcement", || {
        a.log().contains("10.77.0.200")
    });
    // ...and beta's working address stays, first and alone; the link is undisturbed.
    for _ in 0..3 {
        let p = a.peer("beta").unwrap();
        assert_eq!(p["state"], "active", "{p}");
        let addrs: Vec<&str> = p["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert!(addrs[0].starts_with("10.77.0.2:"), "{addrs:?}");
        assert!(
            addrs
                .iter()
                .all(|x| !x.starts_with("10.77.0.2") || x.starts_with("10.77.0.2:")),
            "a stranger's address is listed: {addrs:?}"
        );
        let r = a.cli(&["ping", "beta", "--timeout", "5"]);
        assert!(r.status.success(), "{}", stderr(&r));
    }
    drop(spoof.stdin.take());
    let _ = spoof.wait();
}
