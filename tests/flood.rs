//! A member that floods this device with large messages (many at once, each with a
//! 20 MiB body, for handlers that take their time) gets back-pressure: the daemon's
//! memory stays within the documented per-peer bound (docs/security.md, item 9), and
//! its other peers are served meanwhile.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// Messages the flooding member sends at once, each with a 20 MiB body: 1.2 GiB in all.
const MESSAGES: usize = 60;
const BODY: usize = 20 * 1024 * 1024;

#[test]
fn a_flooding_member_gets_back_pressure_and_memory_stays_bounded() {
    let nodes = mesh(&["a", "b", "c"], "");
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    // Handlers that take their time: what the bodies wait for.
    a.handler("f/x", "sleep 3");
    let base = rss_kib(a.pid());
    let peak = Arc::new(AtomicU64::new(base));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (peak, stop, pid) = (peak.clone(), stop.clone(), a.pid());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // b floods a: MESSAGES sends at once, each piping a 20 MiB body.
    let body = Arc::new(vec![0x5a; BODY]);
    let senders: Vec<_> = (0..MESSAGES)
        .map(|_| {
            let mut child = b
                .command()
                .args(["send", "a", "f.x", "--timeout", "8"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            let body = body.clone();
            let writer = std::thread::spawn(move || {
                let _ = stdin.write_all(&body);
            });
            (child, writer)
        })
        .collect();
    // Meanwhile a still serves its other peer, both ways.
    let ping = a.cli(&["ping", "c", "--timeout", "10"]);
    assert!(ping.status.success(), "{}", stderr(&ping));
    let send = c.cli(&["send", "a", "hello", "x", "--timeout", "10"]);
    assert!(send.status.success(), "{}", stderr(&send));
    let mut delivered = 0;
    for (child, writer) in senders {
        let (code, _) = finish(child);
        let _ = writer.join();
        delivered += usize::from(code == Some(0));
    }
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let grew = peak.load(Ordering::Relaxed).saturating_sub(base) / 1024;
    eprintln!(
        "flood of {MESSAGES} x 20 MiB: {delivered} delivered within their 8 s; daemon RSS grew by {grew} MiB at most"
    );
    // The bound: the peer's body budget (40 MiB) and the connection's flow-control
    // window (32 MiB), with room for the allocator. Without the budget a body was held
    // per queued handler (1.2 GiB here).
    assert!(
        grew < 160,
        "the daemon's memory grew by {grew} MiB under the flood"
    );
    assert!(
        delivered < MESSAGES,
        "back-pressure: not all got in at once"
    );
}
