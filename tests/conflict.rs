//! A stolen device that was removed cannot capture a member that slept through its
//! removal: the desktop removes the phone while the laptop sleeps, the thief removes the
//! desktop from the phone, and the laptop hears both, in either order. It then trusts
//! neither until the person decides on it (`cnspr remove phone` there), shows the
//! conflict in `peers`/`status` and raises `peer.conflict`; it never trusts the phone
//! again.

mod common;

use std::process::Command;

use common::{mesh, stderr, Node};

fn signal(n: &Node, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(n.pid().to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {}", n.pid());
}

/// Frozen processes must not stay frozen when a test fails.
struct Frozen<'a>(&'a Node);

impl<'a> Frozen<'a> {
    fn new(n: &'a Node) -> Self {
        signal(n, "STOP");
        Frozen(n)
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

fn state(n: &Node, peer: &Node) -> Option<String> {
    let peers = n.try_json(&["peers"])?;
    peers
        .as_array()?
        .iter()
        .find(|p| p["id"] == peer.id.as_str())
        .and_then(|p| p["state"].as_str().map(String::from))
}

fn wait_peer_state(n: &Node, peer: &Node, want: &str) {
    let start = std::time::Instant::now();
    while state(n, peer).as_deref() != Some(want) {
        if start.elapsed() > common::DEADLINE * 2 {
            panic!(
                "{} does not see {} {want} but {:?}\n--- {} log:\n{}\n--- {} log:\n{}",
                n.name,
                peer.name,
                state(n, peer),
                n.name,
                n.log(),
                peer.name,
                peer.log()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `phone_first`: the phone reaches the laptop before the desktop does.
fn mutual_removal(phone_first: bool) {
    let mut nodes = mesh(&["desk", "laptop", "phone"], "");
    let mut phone = nodes.pop().unwrap();
    let mut laptop = nodes.pop().unwrap();
    let desk = nodes.pop().unwrap();
    let log = laptop.out().join("conflict");
    laptop.handler(
        "peer/conflict",
        &format!("echo \"$CNSPR_PEER\" >> {}", log.display()),
    );
    // The laptop sleeps.
    laptop.stop();
    // The thief removes the desktop from the phone, out of the desktop's reach.
    {
        let _frozen = Frozen::new(&desk);
        let o = phone.cli(&["remove", "desk"]);
        assert!(o.status.success(), "{}", stderr(&o));
        phone.stop();
    }
    // The desktop removes the phone.
    let o = desk.cli(&["remove", "phone"]);
    assert!(o.status.success(), "{}", stderr(&o));
    if phone_first {
        let frozen = Frozen::new(&desk);
        laptop.start();
        phone.start();
        // The laptop can only follow the phone so far.
        wait_peer_state(&laptop, &desk, "removed");
        drop(frozen);
    } else {
        laptop.start();
        wait_peer_state(&laptop, &phone, "removed");
        wait_peer_state(&laptop, &desk, "active");
        phone.start();
    }
    // Both removals heard: neither is trusted, whatever came first.
    wait_peer_state(&laptop, &desk, "conflict");
    wait_peer_state(&laptop, &phone, "conflict");
    let conflicts = laptop.json(&["status"])["conflicts"].clone();
    let text = conflicts.to_string();
    assert!(
        text.contains("cnspr remove"),
        "status says how to decide: {text}"
    );
    let out = laptop.cli(&["peers"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not trusted until you decide"),
        "peers says so: {}",
        stderr(&out)
    );
    let start = std::time::Instant::now();
    loop {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        if t.contains("desk") && t.contains("phone") {
            break;
        }
        if start.elapsed() > common::DEADLINE {
            panic!(
                "peer.conflict handler output: {t:?}\n--- laptop log:\n{}",
                laptop.log()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The phone gets nothing from the laptop.
    let o = phone.cli(&["send", "laptop", "t", "x", "--timeout", "3"]);
    assert!(
        !o.status.success(),
        "the laptop took a message from the phone"
    );
    // The person decides on the laptop.
    let o = laptop.cli(&["remove", "phone"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains("trusted again: desk"), "{said}");
    wait_peer_state(&laptop, &phone, "removed");
    wait_peer_state(&laptop, &desk, "active");
    let o = desk.cli(&["send", "laptop", "t", "back", "--timeout", "10"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = phone.cli(&["send", "laptop", "t", "x", "--timeout", "3"]);
    assert!(!o.status.success(), "the phone is trusted again");
}

#[test]
fn a_stolen_phone_that_reaches_the_sleeping_laptop_first_cannot_capture_it() {
    mutual_removal(true);
}

#[test]
fn a_stolen_phone_that_reaches_the_laptop_after_the_desktop_is_still_refused() {
    mutual_removal(false);
}
