//! `cnspr listen --exec`: every stream until interrupted by default, one with `--once`,
//! `--keep` still accepted (the lab's `listen` helper gives it).

mod common;

use common::*;

/// `cnspr connect beta SERVICE` from `a` with `input`: its standard output, once it exited 0.
fn exchange(a: &Node, service: &str, input: &[u8]) -> String {
    let o = a.cli_stdin(&["connect", "beta", service], input);
    assert!(o.status.success(), "connect {service}: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn exec_serves_every_stream_until_interrupted_and_once_serves_one() {
    let nodes = mesh(&["alpha", "beta"], "");
    let (a, b) = (&nodes[0], &nodes[1]);

    // No flag: a process for each stream, one after the other, and still listening. The
    // command learns the peer's name and its ID, grouped as everywhere.
    let exec = "echo \"from $CNSPR_PEER $CNSPR_PEER_ID\"; cat";
    let mut many = listen_with(b, "many", &["--exec", exec]);
    assert!(a.id.contains('-'), "{}", a.id);
    for i in 0..3 {
        let got = exchange(a, "many", format!("stream {i}").as_bytes());
        assert_eq!(got, format!("from alpha {}\nstream {i}", a.id));
    }
    assert!(
        many.try_wait().unwrap().is_none(),
        "listen --exec exited after serving streams"
    );
    assert!(b.json(&["expose"]).to_string().contains("\"many\""));
    let _ = many.kill();
    let _ = many.wait();

    // --keep, as before: every stream too.
    let mut keep = listen_with(b, "keep", &["--exec", "cat", "--keep"]);
    for i in 0..2 {
        assert_eq!(
            exchange(a, "keep", format!("k{i}").as_bytes()),
            format!("k{i}")
        );
    }
    assert!(keep.try_wait().unwrap().is_none(), "listen --keep exited");
    let _ = keep.kill();
    let _ = keep.wait();

    // --once: the first stream, then CMD's exit status; the service is gone.
    let mut once = listen_with(b, "once", &["--exec", "cat; exit 7", "--once"]);
    assert_eq!(exchange(a, "once", b"only"), "only");
    let mut status = None;
    wait_until("listen --once to exit", || {
        status = once.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(status.unwrap().code(), Some(7));
    wait_until("the service to be gone", || {
        !b.json(&["expose"]).to_string().contains("\"once\"")
    });
    let o = a.cli_stdin(&["connect", "beta", "once"], b"again");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));

    // --once and --keep contradict each other.
    let o = b.cli(&["listen", "x", "--exec", "cat", "--once", "--keep"]);
    assert!(!o.status.success());
}
