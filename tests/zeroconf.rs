//! Address changes on networks without multicast (root only: network namespaces). The
//! daemons run with mDNS off, so every address they use was learnt from an earlier
//! connection: what brings a link back is the moving host's own unicast dial, or QUIC
//! connection migration.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::sync::mpsc;

use common::lab::*;
use common::*;

/// Two hosts, daemons listening on 0.0.0.0:7373 with mDNS off.
fn pair_of_hosts(tag: &str) -> Option<(Lab, Node, Node)> {
    let lab = Lab::new(tag, 2)?;
    let mut a = lab.node(0, "alpha");
    let mut b = lab.node(1, "beta");
    for n in [&mut a, &mut b] {
        n.mdns = false;
        n.start();
    }
    Some((lab, a, b))
}

/// Host `i` loses its address 10.77.0.`i+1` and gets `new` (break before make).
fn move_host(lab: &Lab, i: usize, new: &str) {
    lab.move_host(i, &format!("10.77.0.{}", i + 1), new);
}

/// True once `from`'s ping to `to` answers from `addr`.
fn reached_at(from: &Node, to: &Node, addr: &str) -> bool {
    let r = from.cli(&["--json", "ping", &to.name, "--timeout", "1"]);
    r.status.success() && String::from_utf8_lossy(&r.stdout).contains(&format!("\"{addr}:"))
}

fn count(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

/// `who` dials `whom` at its lab address; `whom` trusts `who` by ID only, so it has no
/// address to dial back: the one connection is `who`'s.
fn connect_one_way(who: &Node, whom: &Node, whom_ip: &str) {
    assert!(whom.cli(&["trust", &who.id]).status.success());
    let r = who.cli(&["trust", &whom.id, "--addr", &format!("{whom_ip}:7373")]);
    assert!(r.status.success(), "{}", stderr(&r));
    who.wait_state(&whom.name, "active");
    whom.wait_state(&who.name, "active");
}

/// The host that was dialled changes its address. Its side of the connection answers
/// from the old address (QUIC servers cannot migrate), and its peer only knows the old
/// address, so without help the link would stay down until both idle timeouts fired and
/// then come back only by the moving host's backoff redial. The moving host dials at once
/// from its new address instead, and its peer swaps the connection in.
#[test]
fn dialled_host_moves_and_dials_back_at_once_without_multicast() {
    let Some((lab, a, b)) = pair_of_hosts("d") else {
        return;
    };
    connect_one_way(&a, &b, "10.77.0.2");
    // beta learnt alpha's address from that connection (no mDNS, nothing typed).
    let known = b.peer("alpha").unwrap()["addresses"][0].to_string();
    assert!(known.contains("10.77.0.1:7373"), "{known}");
    assert_eq!(count(&a.log(), "connection down"), 0);

    move_host(&lab, 1, "10.77.0.12");
    wait_reached_at(&a, "beta", "10.77.0.12:");
    b.wait_state("alpha", "active");
    let r = a.cli(&["--json", "ping", "beta"]);
    assert!(r.status.success(), "{}", stderr(&r));
    // The link came back by beta's dial from the new address, which replaced the old
    // connection on both sides; it did not wait for the old one to time out.
    let (alog, blog) = (a.log(), b.log());
    assert_eq!(
        count(&blog, "connection accepted on a vanished address replaced"),
        1,
        "{blog}"
    );
    assert_eq!(count(&alog, "the peer moved"), 1, "{alog}");
    assert_eq!(count(&alog, "connection down"), 0, "{alog}");
    assert_eq!(count(&blog, "connection down"), 0, "{blog}");
}

/// The host that dialled changes its address: its packets simply leave from the new
/// address and the peer's QUIC validates the new path and migrates the connection. An
/// application stream open across the change carries on, and no new connection is made.
#[test]
fn dialling_host_moves_and_its_connection_migrates_with_open_streams() {
    let Some((lab, a, b)) = pair_of_hosts("m") else {
        return;
    };
    connect_one_way(&b, &a, "10.77.0.1");
    let mut listener = a
        .command()
        .args(["listen", "echo", "--exec", "cat", "--keep"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("alpha's echo service", || {
        a.try_json(&["expose"])
            .is_some_and(|v| v.to_string().contains("\"echo\""))
    });
    let mut conn: Child = b
        .command()
        .args(["connect", "alpha", "echo"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut input = conn.stdin.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let out = conn.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let echo = |input: &mut std::process::ChildStdin, text: &str| {
        writeln!(input, "{text}").unwrap();
        input.flush().unwrap();
        assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), text);
    };
    echo(&mut input, "before the move");
    let ups_a = count(&a.log(), "connection up");
    let ups_b = count(&b.log(), "connection up");

    move_host(&lab, 1, "10.77.0.12");
    // The stream opened before the move still carries data both ways.
    echo(&mut input, "after the move");
    wait_until("alpha to see beta's packets from its new address", || {
        let r = a.cli(&["--json", "ping", "beta"]);
        r.status.success() && String::from_utf8_lossy(&r.stdout).contains("10.77.0.12:")
    });
    echo(&mut input, "still the same stream");
    // alpha records where beta is now: the address it would dial should the link drop.
    wait_until("alpha to list beta's new address first", || {
        a.peer("beta").is_some_and(|p| {
            p["addresses"][0]
                .as_str()
                .is_some_and(|s| s.starts_with("10.77.0.12:"))
        })
    });
    assert!(matches!(conn.try_wait(), Ok(None)), "connect exited");
    let (alog, blog) = (a.log(), b.log());
    assert_eq!(count(&alog, "connection up"), ups_a, "{alog}");
    assert_eq!(count(&blog, "connection up"), ups_b, "{blog}");
    assert_eq!(count(&alog, "connection down"), 0, "{alog}");
    a.wait_state("beta", "active");
    b.wait_state("alpha", "active");
    drop(input);
    let _ = conn.wait();
    let _ = listener.kill();
    let _ = listener.wait();
}

/// A host cut off its network (carrier lost: no usable address) makes no dials that
/// could only time out; when its address is usable again it dials its down peers at once,
/// at the addresses known from before, whatever backoff had built up.
#[test]
fn host_back_on_the_network_redials_down_peers_at_once() {
    let Some((lab, a, b)) = pair_of_hosts("r") else {
        return;
    };
    connect_one_way(&b, &a, "10.77.0.1");
    let out = b.out().display().to_string();
    b.handler("daemon/inactive", &format!("echo inactive >> {out}/net"));
    b.handler("daemon/active", &format!("echo active >> {out}/net"));
    lab.cut(1);
    wait_until("daemon/inactive on beta", || {
        file(&b.out().join("net")).is_some_and(|f| f.starts_with(b"inactive\n"))
    });
    b.wait_state("alpha", "unreachable");
    // alpha keeps dialling beta's old address in vain, its backoff growing.
    wait_until("alpha's dials to fail a few times", || {
        count(&a.log(), "dial failed") >= 3
    });
    assert_eq!(
        count(&b.log(), "dial failed"),
        0,
        "beta dialled while it had no usable address:\n{}",
        b.log()
    );
    lab.heal(1);
    b.wait_state("alpha", "active");
    a.wait_state("beta", "active");
    assert_eq!(
        String::from_utf8(file(&b.out().join("net")).unwrap()).unwrap(),
        "inactive\nactive\n"
    );
    assert_eq!(count(&b.log(), "dial failed"), 0, "{}", b.log());
}

/// The dialled host moves while an ordinary dial of its own is still under way: one it
/// started while the link was down, to an address its peer has since left, which only
/// its handshake timeout ends. The peer, which dialled the connection, first moves a few
/// times (the connection migrates each time) and restarts; then the dialled host moves.
/// That leftover dial must not hold up the replacement of the connection it accepted on
/// its old address: the link comes back by its dial from the new address, not by an idle
/// timeout.
#[test]
fn dialled_host_moves_while_an_earlier_dial_of_its_own_hangs() {
    let Some((lab, a, mut b)) = pair_of_hosts("h") else {
        return;
    };
    connect_one_way(&b, &a, "10.77.0.1");
    let mut at = "10.77.0.2";
    for next in ["10.77.0.12", "10.77.0.2", "10.77.0.12"] {
        lab.move_host(1, at, next);
        wait_until(&format!("alpha to reach beta at {next}"), || {
            reached_at(&a, &b, next)
        });
        at = next;
    }
    // beta stops: alpha dials it at the address it learnt from the connection,
    // 10.77.0.2, which nobody has any more; that dial hangs until its handshake timeout.
    let dials = count(&a.log(), "dialling peer=beta");
    b.stop();
    wait_until("alpha to dial beta at its old address", || {
        count(&a.log(), "dialling peer=beta") > dials
    });
    // beta is back and dials alpha (from 10.77.0.12) while alpha's dial still waits.
    b.start();
    a.wait_state("beta", "active");
    b.wait_state("alpha", "active");
    let (alog, blog) = (a.log(), b.log());
    let (downs_a, downs_b) = (
        count(&alog, "connection down"),
        count(&blog, "connection down"),
    );
    let moved_b = count(&blog, "the peer moved");

    lab.move_host(0, "10.77.0.1", "10.77.0.11");
    wait_until("beta to reach alpha at its new address", || {
        reached_at(&b, &a, "10.77.0.11")
    });
    a.wait_state("beta", "active");
    b.wait_state("alpha", "active");
    // alpha's old dial was still under way when it moved: it failed afterwards.
    wait_until("alpha's old dial to end", || {
        let log = a.log();
        log.find("AddressAdded(10.77.0.11)")
            .is_some_and(|at| log[at..].contains("dial failed peer=beta"))
    });
    let (alog, blog) = (a.log(), b.log());
    assert_eq!(
        count(&alog, "connection accepted on a vanished address replaced"),
        1,
        "{alog}"
    );
    assert_eq!(count(&blog, "the peer moved"), moved_b + 1, "{blog}");
    assert_eq!(count(&alog, "connection down"), downs_a, "{alog}");
    assert_eq!(count(&blog, "connection down"), downs_b, "{blog}");
}
