//! `cnspr send`: a message to one peer or to all, and with `--reply` the handlers'
//! output and exit status.

use std::io::{Read, Write};

use anyhow::Context;
use serde_json::{json, Value};

use super::late;
use crate::api::{PeerInfo, Request, SendRequest, SendResult, MAX_BODY};
use crate::cli::{secs_to_ms, Global, SendArgs};
use crate::client::Client;
use crate::output::print_json;

/// `send --reply --json`: per peer (in the daemon's order, by name), one object per
/// handler reply, `peer`, `handler`, `exit_code`, `stdout` (SPEC's shape) with
/// `stdout_b64`, `timed_out`, the peer's `id` and the `message_id`; for a peer the message
/// failed for, one object with its `error` and `handler`, `exit_code`, `stdout` null. A
/// peer that took the message and ran no handler has no entry (the command says so on
/// standard error and exits 4).
pub fn reply_json(r: &SendResult) -> Value {
    let mut out = Vec::new();
    for o in &r.outcomes {
        if !o.ok {
            out.push(json!({
                "peer": o.peer,
                "id": o.id,
                "handler": null,
                "exit_code": null,
                "stdout": null,
                "error": o.error,
                "message_id": r.message_id,
            }));
        }
        for x in &o.replies {
            out.push(json!({
                "peer": x.peer,
                "id": o.id,
                "handler": x.handler,
                "exit_code": x.exit_code,
                "stdout": x.stdout,
                "stdout_b64": x.stdout_b64,
                "timed_out": x.timed_out,
                "message_id": r.message_id,
            }));
        }
    }
    Value::Array(out)
}

pub fn send(c: &mut Client, g: &Global, a: SendArgs) -> anyhow::Result<i32> {
    // With --all the positionals shift: TAG [MESSAGE].
    let (peer, tag, message) = if a.all {
        if a.message.is_some() {
            anyhow::bail!("with --all give only TAG [MESSAGE]");
        }
        (None, a.peer, a.tag)
    } else {
        (a.peer, a.tag, a.message)
    };
    let tag = tag.context("missing TAG")?;
    crate::handlers::validate_user_tag(&tag)
        .map_err(|e| anyhow::anyhow!("invalid tag {tag:?}: {e}"))?;
    if a.all {
        // `send --all laptop notify.show` would send the tag `laptop`: a slip, refused.
        let peers: Vec<PeerInfo> = serde_json::from_value(c.request(&Request::Peers {})?)?;
        if peers.iter().any(|p| p.name.eq_ignore_ascii_case(&tag)) {
            anyhow::bail!(
                "with --all the first argument is the tag, and {tag:?} is a peer's name: drop --all to send to {tag} alone, or give --all TAG [MESSAGE]"
            );
        }
    }
    let body: Vec<u8> = match message.as_deref() {
        Some("-") | None => read_body(a.timeout)?,
        Some(m) => m.as_bytes().to_vec(),
    };
    let req = Request::Send(SendRequest {
        peer: if a.all { None } else { peer },
        all: a.all,
        tag,
        reply: a.reply,
        timeout_ms: Some(secs_to_ms(a.timeout)?),
        body_len: Some(body.len() as u64),
        ..SendRequest::default()
    });
    let v = match c.request_with_body(&req, &body) {
        Ok(v) => v,
        Err(e) => return late::one(g, e),
    };
    let r: SendResult = serde_json::from_value(v.clone())?;
    let failed: Vec<_> = r.outcomes.iter().filter(|o| !o.ok).collect();
    if a.reply {
        let replies: Vec<_> = r.outcomes.iter().flat_map(|o| o.replies.iter()).collect();
        if g.json {
            print_json(&reply_json(&r))?;
        } else {
            let mut out = std::io::stdout().lock();
            for x in &replies {
                if replies.len() > 1 || r.outcomes.len() > 1 {
                    writeln!(
                        out,
                        "== {} {} (exit {})",
                        x.peer,
                        x.handler,
                        code_str(x.exit_code)
                    )?;
                }
                out.write_all(
                    &data_encoding::BASE64
                        .decode(x.stdout_b64.as_bytes())
                        .unwrap_or_default(),
                )?;
            }
            out.flush()?;
        }
        for x in &replies {
            if x.exit_code != Some(0) {
                let why = if x.timed_out {
                    " (timed out)".to_string()
                } else {
                    String::new()
                };
                eprintln!(
                    "cnspr: handler {} on {} exited {}{why}",
                    x.handler,
                    x.peer,
                    code_str(x.exit_code)
                );
            }
        }
    } else if g.json {
        print_json(&v)?;
    }
    for o in &failed {
        let e = o
            .error
            .as_ref()
            .map(|e| e.message.clone())
            .unwrap_or_default();
        if late::is_late(o) {
            eprintln!("cnspr: {e}");
            continue;
        }
        eprintln!("cnspr: not delivered to {}: {e}", o.peer);
    }
    if r.outcomes.is_empty() && a.all {
        eprintln!("cnspr: no peers to send to: trust a device first (`cnspr trust ID`)");
        return Ok(1);
    }
    let handler_failed = a.reply
        && r.outcomes
            .iter()
            .flat_map(|o| &o.replies)
            .any(|x| x.exit_code != Some(0));
    // Delivered, but no handler there matches the tag: say so (a typo in the tag, or
    // the handler is not installed on that device).
    let unhandled: Vec<&str> = r
        .outcomes
        .iter()
        .filter(|o| a.reply && o.ok && o.replies.is_empty())
        .map(|o| o.peer.as_str())
        .collect();
    for p in &unhandled {
        eprintln!("cnspr: no handler for {} on {p}", req_tag(&req));
    }
    Ok(if failed.iter().any(|o| !late::is_late(o)) {
        1
    } else if !failed.is_empty() {
        late::EXIT_NO_REPLY
    } else if handler_failed {
        3
    } else if !unhandled.is_empty() {
        4
    } else {
        0
    })
}

fn req_tag(r: &Request) -> &str {
    match r {
        Request::Send(s) => &s.tag,
        _ => "",
    }
}

/// The message from standard input, within `timeout` seconds (the send's own timeout
/// covers reading it: a writer that never ends does not hold the command forever).
fn read_body(timeout: f64) -> anyhow::Result<Vec<u8>> {
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        eprintln!("reading the message from standard input (Ctrl-D to end)");
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let r = std::io::stdin()
            .lock()
            .take(MAX_BODY as u64 + 1)
            .read_to_end(&mut buf)
            .map(|_| buf);
        let _ = tx.send(r);
    });
    let wait = std::time::Duration::from_secs_f64(timeout.clamp(0.001, 3600.0));
    let buf = match rx.recv_timeout(wait) {
        Ok(r) => r.context("reading the message from standard input")?,
        Err(_) => anyhow::bail!(
            "the message on standard input did not end within --timeout ({timeout} s); nothing was sent"
        ),
    };
    if buf.len() > MAX_BODY {
        anyhow::bail!("the message is larger than the limit of 20 MiB ({MAX_BODY} bytes)");
    }
    Ok(buf)
}

fn code_str(c: Option<i32>) -> String {
    c.map(|c| c.to_string())
        .unwrap_or_else(|| "by signal".into())
}
