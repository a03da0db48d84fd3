//! docs/api.md against a real daemon: the commands an `unknown_command` reply lists.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;

use common::*;
use serde_json::Value;

#[test]
fn api_md_lists_the_commands_the_daemon_knows() {
    let mut n = Node::new("solo", "");
    n.start();
    let s = UnixStream::connect(n.socket()).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    (&s).write_all(b"{\"id\":7,\"cmd\":\"frobnicate\"}\n")
        .unwrap();
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["error"]["code"], "unknown_command", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    let known: Vec<&str> = message
        .split_once("known: ")
        .expect("the message lists the commands")
        .1
        .split(", ")
        .collect();
    assert!(
        known.contains(&"wake") && known.contains(&"ui"),
        "{message}"
    );

    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md")).unwrap();
    // The socat session shows the reply word for word.
    let socat = doc
        .lines()
        .find(|l| l.contains(r#""code":"unknown_command""#))
        .expect("the socat session's unknown_command reply");
    let shown: Value = serde_json::from_str(socat).unwrap();
    assert_eq!(shown["error"]["message"], message);
    // The error codes' table names the same commands, in the same order:
    // | `unknown_command` | `cmd` is not one of `status`, `peers`, ...
    let row = doc
        .lines()
        .find(|l| l.starts_with("| `unknown_command` |"))
        .expect("the unknown_command row");
    let listed: Vec<&str> = row.split('`').skip(5).step_by(2).collect();
    assert_eq!(listed, known, "{row}");
}
