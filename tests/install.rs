//! `cnspr handlers install NAME`: a ready-made handler lands in the daemon's handler
//! directory, byte for byte, executable, and the daemon runs it; nothing is replaced
//! without `--force`; with no daemon, the configured directory is used (and `handlers`
//! reads it).

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

#[test]
fn a_ready_made_handler_is_installed_where_the_daemon_looks_and_runs() {
    let mut n = Node::new("solo", "");
    n.start();
    let list = n.cli(&["handlers", "install"]);
    assert!(list.status.success(), "{}", stderr(&list));
    let text = String::from_utf8_lossy(&list.stdout).into_owned();
    for name in ["notify", "clipboard", "open-url", "file", "ring", "battery"] {
        assert!(text.contains(name), "{text}");
    }
    let out = n.cli(&["handlers", "install", "battery"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("needs:"));
    let installed = n.path("handlers/battery.sh");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read("examples/handlers/battery.sh").unwrap()
    );
    let mode = std::fs::metadata(&installed).unwrap().permissions().mode();
    assert_eq!(mode & 0o111, 0o111, "not executable: {mode:o}");
    // The daemon sees it.
    let h = n.json(&["handlers"]);
    assert!(h.to_string().contains("battery.sh"), "{h}");
    // Nothing replaced without --force; unknown names are named.
    std::fs::write(&installed, b"#!/bin/sh\necho mine\n").unwrap();
    let again = n.cli(&["handlers", "install", "battery"]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        b"#!/bin/sh\necho mine\n"
    );
    assert!(n
        .cli(&["handlers", "install", "battery", "--force"])
        .status
        .success());
    assert_ne!(
        std::fs::read(&installed).unwrap(),
        b"#!/bin/sh\necho mine\n"
    );
    let bad = n.cli(&["handlers", "install", "nope"]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("notify, clipboard"),
        "{}",
        stderr(&bad)
    );
    // A handler of several files goes in whole.
    assert!(n
        .cli(&["handlers", "install", "clipboard"])
        .status
        .success());
    assert!(n.path("handlers/clipboard/get.sh").exists());
    assert!(n.path("handlers/clipboard/set.sh").exists());
}

#[test]
fn with_no_daemon_the_configured_directory_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let handlers = dir.path().join("my-handlers");
    let n = Node::new("idle", &format!("handlers = \"{}\"\n", handlers.display()));
    let out = n.cli(&["handlers", "install", "ring"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(handlers.join("ring.sh").exists());
    // `handlers` reads that directory itself when no daemon runs.
    let h = n.json(&["handlers"]);
    assert!(h.to_string().contains("ring.sh"), "{h}");
    assert_eq!(h["dir"], handlers.display().to_string(), "{h}");
}
