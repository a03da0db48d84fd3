//! The control socket's line and body framing (`src/daemon/control/framing.rs`), driven
//! the way a connection of the control socket drives it: lines are read with
//! `read_line` from a buffered reader, blank lines skipped, each line goes to `parse`;
//! a refused line's announced raw body (`announced_body`) is skipped, an accepted
//! request's payload (`payload`, `read_body`) is read from what follows.
//!
//! Input: byte 0 picks the line limit (the daemon's `MAX_LINE`, or a small one so that
//! too-long lines are reached) and byte 1 the reader's buffer size (so that lines and
//! bodies straddle refills); the rest is the byte stream a client sends.
//!
//! Checked: no panic; a line is never longer than the limit nor holds a newline; an
//! accepted request names a known command and survives a JSON round trip unchanged;
//! `announced_body` agrees with `payload` on the `body_len`/`value_len` of an accepted
//! `send`/`kv.put`; a raw body read is exactly as long as announced and never over
//! `MAX_BODY`.
#![no_main]

use cnspr::api::{Request, COMMANDS, MAX_BODY, MAX_LINE};
use cnspr_fuzz::check::block_on;
use cnspr_fuzz::daemon::control::framing::{
    announced_body, parse, payload, read_body, read_line, Line,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tokio::io::{AsyncReadExt, BufReader};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let max = match data[0] % 4 {
        0 => MAX_LINE,
        n => 8 * n as usize,
    };
    let cap = 1 + (data[1] as usize % 64);
    let stream = &data[2..];
    block_on(session(stream, max, cap));
});

async fn session(stream: &[u8], max: usize, cap: usize) {
    let mut r = BufReader::with_capacity(cap, stream);
    loop {
        let line = match read_line(&mut r, max).await.expect("reading a slice cannot fail") {
            Line::Text(l) => l,
            Line::TooLong => continue,
            Line::Eof => return,
        };
        assert!(line.len() <= max, "line of {} bytes over {max}", line.len());
        assert!(!line.contains(&b'\n'), "line holds a newline");
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let req = match parse(&line) {
            Ok((_id, req)) => req,
            Err(_) => {
                // As the connection does: skip a refused line's raw body, or stop.
                match announced_body(&line) {
                    Some(n) if n <= MAX_BODY as u64 => {
                        let mut sink = tokio::io::sink();
                        if tokio::io::copy(&mut (&mut r).take(n), &mut sink).await.ok()
                            != Some(n)
                        {
                            return;
                        }
                    }
                    Some(_) => return,
                    None => {}
                }
                continue;
            }
        };
        check_request(&req, &line);
        if let Some(p) = payload(&req) {
            let announced = p.body_len;
            let only_raw = p.body.is_none() && p.body_b64.is_none();
            match read_body(p, &mut r).await {
                Ok(body) => {
                    if let (Some(n), true) = (announced, only_raw) {
                        assert_eq!(body.len() as u64, n, "raw body not as long as announced");
                        assert!(n <= MAX_BODY as u64, "raw body over MAX_BODY accepted");
                    }
                }
                Err(cnspr_fuzz::daemon::control::framing::BodyError::Reply(_)) => {}
                Err(_) => return,
            }
        }
    }
}

fn check_request(req: &Request, line: &[u8]) {
    // Internally tagged by `cmd`: the tag of a parsed request is a known command.
    let v = serde_json::to_value(req).expect("a request serializes");
    let cmd = v.get("cmd").and_then(Value::as_str).expect("a request has a cmd");
    assert!(COMMANDS.contains(&cmd), "parsed request with unknown cmd {cmd:?}");
    // What parses re-serializes to something that parses to the same thing.
    let again: Request = serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("a serialized request does not parse back: {e}\n{v}"));
    assert_eq!(serde_json::to_value(&again).unwrap(), v, "JSON round trip changed a request");
    // The announced raw body of an accepted send/kv.put is the one `payload` reads.
    if matches!(cmd, "send" | "kv.put") {
        let p = payload(req).expect("send and kv.put carry a payload");
        assert_eq!(
            announced_body(line),
            p.body_len,
            "announced_body and payload disagree on the raw body length"
        );
    }
}
