//! Rough edges a newcomer meets: `id` on a fresh device, `serve` on a taken port, trusting
//! a device twice, `remove` on a terminal, what `peers` and `ping` show.

mod common;

use std::process::{Command, Stdio};

use common::{bin, mesh, stderr, wait_until, Node};
use serde_json::Value;

/// `cnspr` with a state directory and socket in `dir` and no daemon.
fn bare(dir: &std::path::Path) -> Command {
    let mut c = Command::new(bin());
    c.env_remove("XDG_RUNTIME_DIR")
        .env_remove("CNSPR_SOCKET")
        .env_remove("CNSPR_STATE_DIR")
        .env_remove("CNSPR_CONFIG")
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--socket")
        .arg(dir.join("cnspr.sock"))
        .arg("--config")
        .arg(dir.join("config.toml"))
        .stdin(Stdio::null());
    c
}

/// On a fresh device `cnspr id` prints the ID without `init` and without a daemon, and
/// the daemon started later has that same ID.
#[test]
fn id_works_on_a_fresh_device() {
    let dir = tempfile::tempdir().unwrap();
    let out = bare(dir.path()).args(["--json", "id"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 64, "{v}");
    let again = bare(dir.path()).args(["id"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), id);
    let init = bare(dir.path()).args(["--json", "init"]).output().unwrap();
    let init: Value = serde_json::from_slice(&init.stdout).unwrap();
    assert_eq!(init["id"], id.as_str());
    assert_eq!(init["created"], false);
}

/// `serve` on a UDP port another program holds fails with the port in the message and
/// leaves no identity (no state directory) behind.
#[test]
fn serve_on_a_taken_port_leaves_no_state() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.toml"), "").unwrap();
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = bare(dir.path())
        .args(["serve", "--no-mdns", "--no-port-mapping", "--listen", &addr])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&addr), "{}", stderr(&out));
    assert!(
        !dir.path().join("state").exists(),
        "serve left {:?} behind",
        std::fs::read_dir(dir.path().join("state"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
    // Once the port is free, it starts (and creates the identity then).
    drop(taken);
    let mut n = Node::new("desk", "");
    n.start();
    assert!(n.path("state/device-key.pem").exists());
}

/// `trust ID --name x` on a device already trusted says so (and under which name) and
/// does not rename it; `--rename` does.
#[test]
fn trusting_again_keeps_the_name_unless_asked_to_rename() {
    let nodes = mesh(&["desk", "laptop"], "");
    let (desk, laptop) = (&nodes[0], &nodes[1]);
    let out = desk.cli(&["trust", &laptop.id, "--name", "x"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &stderr(&out);
    assert!(text.contains("already trusted as laptop"), "{text}");
    assert!(text.contains("--rename"), "{text}");
    let v = desk.json(&["trust", &laptop.id, "--name", "x"]);
    assert_eq!(v["name"], "laptop", "{v}");
    assert_eq!(v["already_trusted"], true, "{v}");
    assert!(desk.peer("x").is_none());
    assert_eq!(desk.peer("laptop").unwrap()["id"], laptop.id.as_str());
    // Asked for: renamed, here and (signed into the roster) on the other member's view
    // of the roster.
    let out = desk.cli(&["trust", &laptop.id, "--name", "x", "--rename"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("renamed laptop to x"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(desk.peer("x").unwrap()["id"], laptop.id.as_str());
    // --rename without --name is refused.
    let out = desk.cli(&["trust", &laptop.id, "--rename"]);
    assert!(!out.status.success());
    // A name another device of the mesh has (in any case) is refused: names are unique.
    let other = Node::new("other", "");
    for taken in ["X", "desk"] {
        let out = desk.cli(&["trust", &other.id, "--name", taken]);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("already the name of another device"),
            "{}",
            stderr(&out)
        );
    }
    let peers = desk.json(&["peers"]);
    assert_eq!(peers.as_array().map(|p| p.len()), Some(1), "{peers}");
}

/// Runs `cnspr ARGS` on `n` with a terminal as standard input (through `script`),
/// typing `input`; returns its output (the terminal's, both streams) and exit code.
fn on_terminal(n: &Node, args: &[&str], input: &str) -> (String, Option<i32>) {
    let cmd = n.command();
    let mut line: Vec<String> = vec![cmd.get_program().to_string_lossy().into_owned()];
    line.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    line.extend(args.iter().map(|a| a.to_string()));
    let quoted: Vec<String> = line
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect();
    let mut child = Command::new("script")
        .args(["-qec", &quoted.join(" "), "/dev/null"])
        .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .env_remove("CNSPR_SOCKET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
        // Keep the terminal open until the command has read its answer and exited.
        let start = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            assert!(
                start.elapsed() < common::DEADLINE,
                "`{args:?}` never exited"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code(),
    )
}

/// On a terminal `remove` asks first (anything but yes keeps the device); `--yes` skips
/// the question; without a terminal it removes as before.
#[test]
fn remove_asks_on_a_terminal() {
    let nodes = mesh(&["desk", "laptop", "phone", "tablet"], "");
    let desk = &nodes[0];
    let (text, code) = on_terminal(desk, &["remove", "laptop"], "n\n");
    assert!(text.contains("Remove laptop"), "{text}");
    assert_ne!(code, Some(0), "{text}");
    assert_eq!(desk.peer("laptop").unwrap()["state"], "active");
    let (text, code) = on_terminal(desk, &["remove", "laptop"], "y\n");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("removed laptop"), "{text}");
    desk.wait_state("laptop", "removed");
    let (text, code) = on_terminal(desk, &["remove", "phone", "--yes"], "");
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("Remove phone"), "{text}");
    desk.wait_state("phone", "removed");
    // Standard input not a terminal: no question.
    let out = desk.cli(&["remove", "tablet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    desk.wait_state("tablet", "removed");
}

/// `cnspr pair --json` on `node` with a window open: its first line and the process.
fn window(node: &Node) -> (std::process::Child, Value) {
    use std::io::BufRead;
    let mut child = node
        .command()
        .args(["--json", "pair", "--timeout", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    (child, serde_json::from_str(&first).unwrap())
}

/// A device removed, then paired again with a new identity under the same name: `peers`
/// shows one row by that name, the current member's.
#[test]
fn a_re_paired_device_has_one_row_by_its_name() {
    let mut nodes = mesh(&["desk", "phone"], "");
    let out = nodes[0].cli(&["remove", "phone"]);
    assert!(out.status.success(), "{}", stderr(&out));
    nodes[0].wait_state("phone", "removed");
    nodes[1].kill9();
    let mut phone = Node::new("phone", "");
    phone.start();
    let (w, first) = window(&nodes[0]);
    let port = first["addresses"][0]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let code = first["code"].as_str().unwrap();
    let out = phone.cli(&[
        "pair",
        code,
        "--addr",
        &format!("127.0.0.1:{port}"),
        "--timeout",
        "20",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(w.wait_with_output().unwrap().status.success());
    wait_until("desk to see the new phone active", || {
        nodes[0].try_json(&["peers"]).is_some_and(|v| {
            v.as_array()
                .unwrap()
                .iter()
                .any(|p| p["id"] == phone.id.as_str() && p["state"] == "active")
        })
    });
    let peers = nodes[0].json(&["peers"]);
    let named: Vec<&Value> = peers
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "phone")
        .collect();
    assert_eq!(named.len(), 1, "{peers:#}");
    assert_eq!(named[0]["id"], phone.id.as_str(), "{peers:#}");
    // The old identity is still listed, removed, and found by its ID.
    let old = peers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == nodes[1].id.as_str())
        .unwrap_or_else(|| panic!("{peers:#}"));
    assert_eq!(old["state"], "removed");
    let table = nodes[0].cli(&["peers"]);
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("phone ")).collect();
    assert_eq!(rows.len(), 1, "{table}");
    assert!(
        table.lines().all(|l| !l.starts_with(' ')),
        "a row without a name:\n{table}"
    );
}

/// `send --reply` to a handler slower than the timeout: the message was delivered, so
/// the error says that (not "no acknowledgement") and the exit code is 5; a peer that is
/// down still fails with exit 1.
#[test]
fn a_late_reply_is_told_apart_from_no_delivery() {
    let mut nodes = mesh(&["desk", "laptop"], "");
    let marker = nodes[1].out().join("ran");
    nodes[1].handler(
        "slow/x.sh",
        &format!("touch {}; sleep 5; echo done", marker.display()),
    );
    let out = nodes[0].cli(&[
        "send",
        "laptop",
        "slow.x",
        "hi",
        "--reply",
        "--timeout",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("delivered to laptop; no reply before the timeout"),
        "{}",
        stderr(&out)
    );
    wait_until("the handler to have run", || marker.exists());
    let v = nodes[0].cli(&[
        "--json",
        "send",
        "laptop",
        "slow.x",
        "hi",
        "--reply",
        "--timeout",
        "1",
    ]);
    assert_eq!(v.status.code(), Some(5));
    let v: Value = serde_json::from_slice(&v.stdout).unwrap();
    assert_eq!(v["error"]["delivered"], true, "{v}");
    assert_eq!(v["error"]["code"], "timeout", "{v}");
    // A fast handler still replies, exit 0.
    nodes[1].handler("fast/x.sh", "echo quick");
    let out = nodes[0].cli(&[
        "send",
        "laptop",
        "fast.x",
        "hi",
        "--reply",
        "--timeout",
        "5",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "quick\n");
    // Not delivered at all (its daemon is gone): exit 1, and not "delivered".
    nodes[1].kill9();
    let out = nodes[0].cli(&[
        "send",
        "laptop",
        "fast.x",
        "hi",
        "--reply",
        "--timeout",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!stderr(&out).contains("delivered to"), "{}", stderr(&out));
}

/// `peers` shows the connection's current smoothed RTT, not the one of its first
/// moments: each ping adds a sample to QUIC's estimate, and `peers` follows it.
#[test]
fn peers_follows_the_current_rtt() {
    let nodes = mesh(&["desk", "laptop"], "");
    let rtt = || {
        nodes[0]
            .peer("laptop")
            .and_then(|p| p["rtt_ms"].as_f64())
            .expect("an RTT while active")
    };
    let first = rtt();
    wait_until("the RTT in `peers` to follow new samples", || {
        let out = nodes[0].cli(&["ping", "laptop"]);
        assert!(out.status.success(), "{}", stderr(&out));
        rtt() != first
    });
}

/// The completion scripts complete peer names, asked of the running daemon through
/// `cnspr __complete-peers` (bash run for real; zsh and fish checked for the hook).
#[test]
fn completions_complete_peer_names() {
    let nodes = mesh(&["desk", "laptop"], "");
    let desk = &nodes[0];
    let out = Command::new(bin())
        .arg("__complete-peers")
        .env("CNSPR_SOCKET", desk.socket())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "laptop\n");
    let script = desk.cli(&["completions", "bash"]);
    assert!(script.status.success());
    let path = desk.path("cnspr.bash");
    std::fs::write(&path, &script.stdout).unwrap();
    let complete = |words: &[&str]| -> String {
        let words: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        let cmd = format!(
            "source '{}'; COMP_WORDS=('{}' {}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}; _cnspr_with_peers \"${{COMP_WORDS[0]}}\" \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            path.display(),
            bin(),
            words.join(" ")
        );
        let out = Command::new("bash")
            .args(["-c", &cmd])
            .env("CNSPR_SOCKET", desk.socket())
            .env("CNSPR_STATE_DIR", desk.path("state"))
            .env("CNSPR_CONFIG", desk.path("config.toml"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(complete(&["ping", ""]), "laptop\n");
    assert_eq!(complete(&["ping", "la"]), "laptop\n");
    assert_eq!(complete(&["--socket", "x", "send", "l"]), "laptop\n");
    assert_eq!(complete(&["remove", "--yes", ""]), "laptop\n");
    assert!(!complete(&["send", "laptop", ""]).contains("laptop"));
    assert!(!complete(&["send", "--all", ""]).contains("laptop"));
    // Commands still complete as before.
    assert!(complete(&["pi"]).contains("ping"));
    let zsh = String::from_utf8(desk.cli(&["completions", "zsh"]).stdout).unwrap();
    assert!(
        zsh.contains("_cnspr_peers() {"),
        "zsh script without the helper"
    );
    assert!(zsh.contains(":peer -- Peer name or ID prefix:_cnspr_peers'"));
    let fish = String::from_utf8(desk.cli(&["completions", "fish"]).stdout).unwrap();
    assert!(fish.contains("(cnspr __complete-peers 2>/dev/null)"));
    // The helper is no command of the interface: not offered, not in the help.
    assert!(!complete(&[""]).contains("__complete"));
    assert!(!zsh.contains("'__complete-peers:"));
    let help = desk.cli(&["--help"]);
    assert!(!String::from_utf8_lossy(&help.stdout).contains("__complete"));
    // Without a daemon: nothing, and no error.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .arg("__complete-peers")
        .env("CNSPR_SOCKET", dir.path().join("none.sock"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
}
