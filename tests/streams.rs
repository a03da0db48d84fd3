//! Dedicated streams between applications on two devices, through real daemons.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn a_gibibyte_both_ways_at_once_arrives_intact() {
    let nodes = mesh(&["alpha", "beta"], "");
    let (a, b) = (&nodes[0], &nodes[1]);
    let out = b.out().display().to_string();
    // The far side hashes what it receives while sending its own 1 GiB back.
    let py = b.path("bulk.py");
    let script = r#"import hashlib, os, sys, threading
h = hashlib.sha256(); s = hashlib.sha256()
def rd():
    while True:
        d = sys.stdin.buffer.read1(1 << 20)
        if not d:
            break
        h.update(d)
t = threading.Thread(target=rd); t.start()
blk = os.urandom((4 << 20) + 7); n = 1 << 30
while n > 0:
    c = blk[:min(n, len(blk))]; sys.stdout.buffer.write(c); s.update(c); n -= len(c)
sys.stdout.buffer.flush(); sys.stdout.close(); t.join()
open('OUT/hashes', 'w').write(h.hexdigest() + ' ' + s.hexdigest())
"#;
    std::fs::write(&py, script.replace("OUT", &out)).unwrap();
    let script = format!("python3 {}", py.display());
    let mut l = listen(b, "bulk", Some(&script));
    let mut c = connect(a, "beta", "bulk");
    let mut stdin = c.stdin.take().unwrap();
    let mut stdout = c.stdout.take().unwrap();
    let writer = std::thread::spawn(move || {
        let blk = noise((4 << 20) + 13, 99);
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut left: usize = 1 << 30;
        while left > 0 {
            let k = left.min(blk.len());
            if stdin.write_all(&blk[..k]).is_err() {
                return String::from("upload failed");
            }
            ctx.update(&blk[..k]);
            left -= k;
        }
        drop(stdin);
        hex(ctx.finish().as_ref())
    });
    let reader = std::thread::spawn(move || {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        while let Ok(k) = stdout.read(&mut buf) {
            if k == 0 {
                break;
            }
            ctx.update(&buf[..k]);
            n += k as u64;
        }
        (n, hex(ctx.finish().as_ref()))
    });
    let sent = writer.join().unwrap();
    let (n, received) = reader.join().unwrap();
    let (code, err) = finish(c);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(n, 1 << 30);
    wait_until("the far side's hashes", || {
        file(&b.out().join("hashes")).is_some()
    });
    let hashes = String::from_utf8(file(&b.out().join("hashes")).unwrap()).unwrap();
    let (their_recv, their_sent) = hashes.split_once(' ').unwrap();
    assert_eq!(their_recv, sent, "upload corrupted");
    assert_eq!(their_sent, received, "download corrupted");
    let _ = l.kill();
    let _ = l.wait();
}

#[test]
fn eof_in_one_direction_keeps_the_other_open() {
    let nodes = mesh(&["alpha", "beta"], "");
    let (a, b) = (&nodes[0], &nodes[1]);
    let out = b.out().display().to_string();
    // Reads to EOF, then answers: only possible if the half-close came through and the
    // reverse direction stayed open.
    let mut l = listen(
        b,
        "halfclose",
        Some(&format!("cat > {out}/got; echo \"answer after eof\"")),
    );
    let c = connect(a, "beta", "halfclose");
    let o = {
        let mut c = c;
        c.stdin.take().unwrap().write_all(b"question").unwrap();
        c.wait_with_output().unwrap()
    };
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "answer after eof\n");
    assert_eq!(file(&b.out().join("got")).unwrap(), b"question");
    let _ = l.kill();
    let _ = l.wait();

    // The same with `cnspr listen` on pipes of its own (passed to the daemon): its
    // standard output ends while its standard input is still open.
    let mut l = listen(b, "halfclose2", None);
    let mut c = connect(a, "beta", "halfclose2");
    c.stdin.take().unwrap().write_all(b"question").unwrap();
    let mut lout = l.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut got = Vec::new();
        let _ = tx.send(lout.read_to_end(&mut got).map(|_| got));
    });
    let got = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the listener's output ends while its input is open")
        .unwrap();
    assert_eq!(got, b"question");
    let mut lin = l.stdin.take().unwrap();
    lin.write_all(b"answer after eof").unwrap();
    drop(lin);
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.stdout, b"answer after eof");
    let (code, err) = finish(l);
    assert_eq!(code, Some(0), "{err}");
}

fn echo_tcp() -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let mut w = s;
                let _ = std::io::copy(&mut r, &mut w);
                let _ = w.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (addr, h)
}

#[test]
fn expose_forwards_to_tcp_and_unix_servers() {
    let nodes = mesh(&["alpha", "beta"], "");
    let (a, b) = (&nodes[0], &nodes[1]);
    let (addr, _h) = echo_tcp();
    let r = b.cli(&["expose", "echo", &addr.to_string()]);
    assert!(r.status.success(), "{}", stderr(&r));
    let o = a.cli_stdin(&["connect", "beta", "echo"], b"over tcp");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(o.stdout, b"over tcp");

    let sock = b.path("echo.sock");
    let ul = UnixListener::bind(&sock).unwrap();
    std::thread::spawn(move || {
        for s in ul.incoming().flatten() {
            let mut r = s.try_clone().unwrap();
            let mut w = s;
            let mut data = Vec::new();
            let _ = r.read_to_end(&mut data);
            let _ = w.write_all(b"unix:");
            let _ = w.write_all(&data);
        }
    });
    let target = format!("unix:{}", sock.display());
    assert!(b.cli(&["expose", "uecho", &target]).status.success());
    let o = a.cli_stdin(&["connect", "beta", "uecho"], b"hi");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(o.stdout, b"unix:hi");
    // Listing and persistence: the expose survives a restart.
    let list = b.json(&["expose"]);
    assert!(list.to_string().contains("uecho"), "{list}");
    let mut nodes = nodes;
    nodes[1].stop();
    nodes[1].start();
    nodes[0].wait_state("beta", "active");
    let o = nodes[0].cli_stdin(&["connect", "beta", "echo"], b"again");
    assert_eq!(o.stdout, b"again", "{}", stderr(&o));
    // Removing it: the service is gone.
    assert!(nodes[1]
        .cli(&["expose", "--remove", "echo"])
        .status
        .success());
    let o = nodes[0].cli_stdin(&["connect", "beta", "echo"], b"x");
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn failures_are_reported_quickly_and_leak_nothing() {
    let mut nodes = mesh(&["alpha", "beta"], "");
    let a_pid = nodes[0].pid();
    let b_pid = nodes[1].pid();
    let fds = (fd_count(a_pid), fd_count(b_pid));

    // Unknown service.
    let o = nodes[0].cli_stdin(&["connect", "beta", "nothing-here"], b"");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no service \"nothing-here\" on beta"),
        "{}",
        stderr(&o)
    );

    // The listening application dies in the middle of the stream.
    let mut l = listen(&nodes[1], "fragile", None);
    let mut c = connect(&nodes[0], "beta", "fragile");
    let mut stdin = c.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let blk = vec![7u8; 64 * 1024];
        while stdin.write_all(&blk).is_ok() {}
    });
    let mut lout = l.stdout.take().unwrap();
    let mut first = [0u8; 1024];
    lout.read_exact(&mut first).unwrap(); // data is flowing
    let _ = l.kill();
    let _ = l.wait();
    let (code, err) = finish(c);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("stream broken"), "{err}");
    let _ = feeder.join();

    // The connecting application dies in the middle of the stream: once the listener
    // writes back (as with TCP, the dead end shows when written to), it reports the
    // daemon's reason and exits non-zero.
    let mut l = listen(&nodes[1], "orphan", None);
    let mut lin = l.stdin.take().unwrap();
    let mut c = connect(&nodes[0], "beta", "orphan");
    let mut cin = c.stdin.take().unwrap();
    cin.write_all(&[5u8; 4096]).unwrap();
    let mut lout = l.stdout.take().unwrap();
    let mut first = [0u8; 4096];
    lout.read_exact(&mut first).unwrap(); // data is flowing
    let _ = c.kill();
    let _ = c.wait();
    let writer = std::thread::spawn(move || {
        let blk = vec![6u8; 64 * 1024];
        while lin.write_all(&blk).is_ok() {}
    });
    let (code, err) = finish(l);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("stream broken"), "{err}");
    println!("listener after its client died: {err}");
    drop(cin);
    let _ = writer.join();

    // The peer daemon is killed in the middle of a stream.
    let mut l = listen(&nodes[1], "doomed", Some("cat"));
    let mut c = connect(&nodes[0], "beta", "doomed");
    let mut stdin = c.stdin.take().unwrap();
    let mut cout = c.stdout.take().unwrap();
    stdin.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    cout.read_exact(&mut got).unwrap();
    nodes[1].kill9();
    let _ = l.kill();
    let _ = l.wait();
    let (code, err) = finish(c);
    assert_eq!(code, Some(1), "{err}");
    drop(stdin);

    // Everything the failed streams used is released on the surviving daemon.
    wait_until("alpha's descriptors back to their count", || {
        fd_count(a_pid) <= fds.0
    });
    let _ = fds.1;
}

/// alpha and beta, with beta exposing `echo` (a TCP echo server of this test).
fn echo_mesh() -> Vec<Node> {
    let nodes = mesh(&["alpha", "beta"], "");
    let (addr, _h) = echo_tcp();
    let r = nodes[1].cli(&["expose", "echo", &addr.to_string()]);
    assert!(r.status.success(), "{}", stderr(&r));
    nodes
}

#[test]
fn two_hundred_concurrent_streams_complete() {
    let nodes = echo_mesh();
    let a = &nodes[0];
    let sock = a.socket();
    let workers: Vec<_> = (0..200u64)
        .map(|i| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                let s = UnixStream::connect(&sock).unwrap();
                s.set_read_timeout(Some(DEADLINE)).unwrap();
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                w.write_all(
                    format!(
                        "{}\n",
                        json!({"id": i, "cmd": "connect", "peer": "beta", "service": "echo"})
                    )
                    .as_bytes(),
                )
                .unwrap();
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                let v: Value = serde_json::from_str(&line).unwrap();
                assert_eq!(v["ok"], true, "{v}");
                let data = noise(64 * 1024, i + 1);
                w.write_all(&data).unwrap();
                w.shutdown(std::net::Shutdown::Write).unwrap();
                let mut back = Vec::new();
                r.read_to_end(&mut back).unwrap();
                assert!(back == data, "stream {i} corrupted");
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}

fn have(cmd: &str) -> bool {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn ssh_runs_through_cnspr_connect_as_proxy_command() {
    let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let (Some(sshd), true, true) = (sshd, have("ssh"), have("ssh-keygen")) else {
        eprintln!("skipping: OpenSSH (sshd, ssh, ssh-keygen) is not installed");
        return;
    };
    if !common::lab::is_root() {
        eprintln!("skipping: sshd needs root here");
        return;
    }
    let nodes = mesh(&["alpha", "beta"], "");
    let (a, b) = (&nodes[0], &nodes[1]);
    let d = b.path("ssh");
    std::fs::create_dir_all(&d).unwrap();
    let _ = std::fs::create_dir_all("/run/sshd");
    for (k, t) in [("host", "ed25519"), ("user", "ed25519")] {
        let st = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", t, "-N", "", "-f"])
            .arg(d.join(k))
            .status()
            .unwrap();
        assert!(st.success());
    }
    std::fs::copy(d.join("user.pub"), d.join("authorized_keys")).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nAuthorizedKeysFile {ak}\nPermitRootLogin yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile {pid}\n",
        host = d.join("host").display(),
        ak = d.join("authorized_keys").display(),
        pid = d.join("sshd.pid").display()
    );
    std::fs::write(d.join("sshd_config"), cfg).unwrap();
    let mut server = std::process::Command::new(sshd)
        .args(["-D", "-e", "-f"])
        .arg(d.join("sshd_config"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("sshd listening", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(b
        .cli(&["expose", "ssh", &format!("127.0.0.1:{port}")])
        .status
        .success());
    let proxy = format!(
        "ProxyCommand={} --socket {} connect %h ssh",
        bin(),
        a.socket().display()
    );
    let out = std::process::Command::new("ssh")
        .args([
            "-o",
            &proxy,
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-i",
        ])
        .arg(d.join("user"))
        .args(["root@beta", "echo", "hello-through-cnspr"])
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        out.status.success(),
        "ssh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello-through-cnspr\n"
    );
}

#[test]
fn a_slow_reader_slows_the_writer_and_progress_is_shown() {
    let nodes = mesh(&["alpha", "beta"], "");
    let (a, b) = (&nodes[0], &nodes[1]);
    let out = b.out().display().to_string();
    // The reader does not read at all until told to.
    let mut l = listen(
        b,
        "slow",
        Some(&format!(
            "while [ ! -e {out}/go ]; do sleep 0.05; done; wc -c"
        )),
    );
    let mut c = a
        .command()
        .args(["connect", "--progress", "beta", "slow"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = c.stdin.take().unwrap();
    let total = 256u64 << 20;
    let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let w2 = written.clone();
    let writer = std::thread::spawn(move || {
        let blk = vec![1u8; 1 << 20];
        for _ in 0..(total >> 20) {
            stdin.write_all(&blk).unwrap();
            w2.fetch_add(1 << 20, std::sync::atomic::Ordering::SeqCst);
        }
    });
    // The writer stalls far short of the total while nobody reads: flow control holds it
    // back, and neither daemon buffers the difference.
    let mut last = 0;
    wait_until("the writer to stall", || {
        std::thread::sleep(Duration::from_millis(300));
        let now = written.load(std::sync::atomic::Ordering::SeqCst);
        let stalled = now == last && now > 0;
        last = now;
        stalled
    });
    let stalled_at = written.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        stalled_at < total / 2,
        "writer was not slowed: {stalled_at} bytes accepted"
    );
    for n in [a, b] {
        let rss = rss_kib(n.pid());
        assert!(
            rss < 96 * 1024,
            "{} holds {rss} KiB while its reader is stalled",
            n.name
        );
    }
    std::fs::write(b.out().join("go"), b"").unwrap();
    writer.join().unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), total.to_string());
    // --progress with standard output not a terminal: a summary on standard error.
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("MiB sent"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let _ = l.kill();
    let _ = l.wait();
}

/// A raw client's `connect` to beta's `service` asking to pass descriptors: the control
/// connection (its reads bounded) and the stream's token.
fn connect_fds(a: &Node, service: &str) -> (UnixStream, String) {
    let mut s = UnixStream::connect(a.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = json!({"id": 1, "cmd": "connect", "peer": "beta", "service": service, "fds": true});
    writeln!(s, "{req}").unwrap();
    // Byte by byte: nothing past the reply line is taken from the socket.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    let v: Value = serde_json::from_slice(&line).unwrap();
    let token = v["result"]["stream"].as_str().expect("a stream token");
    (s, token.to_string())
}

/// `stream_status` of `token`, waiting up to 10 s for the end.
fn stream_status(n: &Node, token: &str) -> String {
    let mut s = UnixStream::connect(n.socket()).unwrap();
    let req = json!({"id": 1, "cmd": "stream_status", "stream": token, "wait_ms": 10_000});
    writeln!(s, "{req}").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    v["result"]["status"].as_str().unwrap_or(&line).to_string()
}

/// Read until the daemon closes the control connection (a deadline bounds it).
fn closed_by_daemon(mut s: &UnixStream) {
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)
        .expect("the daemon closes the control connection");
}

#[test]
fn passed_pipes_carry_the_stream_and_anything_else_is_refused() {
    use cnspr::fdpass;
    use std::fs::File;
    use std::os::fd::AsRawFd;
    let nodes = echo_mesh();
    let a = &nodes[0];

    // Two pipes of ours: the daemon reads the first and writes the second itself.
    let (s, token) = connect_fds(a, "echo");
    let (in_r, in_w) = fdpass::pipe().unwrap();
    let (out_r, out_w) = fdpass::pipe().unwrap();
    fdpass::send(s.as_raw_fd(), &[in_r.as_raw_fd(), out_w.as_raw_fd()]).unwrap();
    drop((in_r, out_w));
    let text = b"through pipes the daemon holds";
    let mut w = File::from(in_w);
    w.write_all(text).unwrap();
    drop(w);
    let mut got = Vec::new();
    File::from(out_r).read_to_end(&mut got).unwrap();
    assert_eq!(got, text);
    closed_by_daemon(&s);
    assert_eq!(stream_status(a, &token), "closed");

    // A file instead of a pipe: refused, and the daemon closes the connection.
    let (s, token) = connect_fds(a, "echo");
    let f = File::create(a.path("not-a-pipe")).unwrap();
    let (_r, w) = fdpass::pipe().unwrap();
    fdpass::send(s.as_raw_fd(), &[f.as_raw_fd(), w.as_raw_fd()]).unwrap();
    closed_by_daemon(&s);
    let st = stream_status(a, &token);
    assert!(
        st.starts_with("error: descriptors not passed: input"),
        "{st}"
    );

    // Nothing passed: given up after 5 s.
    let (s, token) = connect_fds(a, "echo");
    closed_by_daemon(&s);
    let st = stream_status(a, &token);
    assert!(st.contains("none came within 5 s"), "{st}");

    // The client going away breaks the stream off: the daemon lets go of the input pipe,
    // so writing into it fails.
    let (s, token) = connect_fds(a, "echo");
    let (in_r, in_w) = fdpass::pipe().unwrap();
    let (out_r, out_w) = fdpass::pipe().unwrap();
    fdpass::send(s.as_raw_fd(), &[in_r.as_raw_fd(), out_w.as_raw_fd()]).unwrap();
    drop((in_r, out_w));
    let (mut w, mut r) = (File::from(in_w), File::from(out_r));
    w.write_all(b"ping").unwrap();
    let mut four = [0u8; 4];
    r.read_exact(&mut four).unwrap();
    drop(s);
    wait_until("the input pipe's reader gone", || {
        w.write_all(&[0u8; 4096]).is_err()
    });
    let st = stream_status(a, &token);
    assert!(st.contains("the client closed its connection"), "{st}");

    // The daemon serves on.
    let o = a.cli_stdin(&["connect", "beta", "echo"], b"still here");
    assert_eq!(o.stdout, b"still here", "{}", stderr(&o));
}

#[test]
fn a_member_holds_a_bounded_number_of_streams_to_a_listener() {
    const BOUND: usize = 32; // budget::PEER_LISTENED
    let nodes = mesh(&["alpha", "beta"], "");
    let (a, b) = (&nodes[0], &nodes[1]);
    // beta listens for `held` and accepts every stream announced, keeping each open.
    let accepted = b.accept_all("held");
    let mut held = Vec::new();
    for i in 0..BOUND {
        let req = json!({"id": i, "cmd": "connect", "peer": "beta", "service": "held"});
        let (s, v) = a.request(req);
        assert_eq!(v["ok"], true, "stream {i}: {v}");
        held.push((s, accepted.recv_timeout(DEADLINE).expect("accepted")));
    }
    // One more is refused with a clear error, and beta's socket still answers.
    let req = json!({"id": 99, "cmd": "connect", "peer": "beta", "service": "held"});
    let (_s, v) = a.request(req);
    assert_eq!(v["error"]["code"], "queue_full", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("32 streams from alpha"), "{msg}");
    let status = b.json(&["status"]);
    assert!(status.is_object(), "{status}");
    // A stream that ended gives its place back.
    drop(held.pop());
    wait_until("a place came back", || {
        let req = json!({"id": 100, "cmd": "connect", "peer": "beta", "service": "held"});
        let (s, v) = a.request(req);
        if v["ok"] == true {
            held.push((s, accepted.recv_timeout(DEADLINE).expect("accepted")));
            return true;
        }
        assert_eq!(v["error"]["code"], "queue_full", "{v}");
        false
    });
}
