//! `relay.add`, `relay.remove`, `relay.list`: the mesh's relays (see `daemon/relays.rs`).

use std::time::{SystemTime, UNIX_EPOCH};

use transport::relay::socket::LinkPath;

use crate::api::{code, ErrorBody, RelayInfo};
use crate::daemon::context::Daemon;
use crate::daemon::control::framing::err;
use crate::daemon::relays::{check_addr, RelayEntry};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Signs `entry`'s successor and spreads it; says why when the book has no room for it.
fn record(
    d: &Daemon,
    addr: &str,
    secret: &str,
    tag: &[u8],
    removed: bool,
) -> Result<(), ErrorBody> {
    let version = d
        .relays
        .get(addr)
        .map_or(0, |e| e.version + 1)
        .max(now_ms());
    let e = RelayEntry::sign(&d.identity, addr, secret, tag, removed, version);
    d.relays
        .room_for(&e)
        .map_err(|why| err(code::REFUSED, format!("relay {addr} not recorded: {why}")))?;
    let me = d.id();
    if d.relays.merge(vec![e], |s| *s == me) {
        d.relays_changed(None);
    }
    Ok(())
}

pub fn add(d: &Daemon, addr: &str, secret: &str) -> Result<Vec<RelayInfo>, ErrorBody> {
    check_addr(addr).map_err(|e| err(code::INVALID_ADDRESS, e))?;
    transport::relay::check_secret(secret).map_err(|e| err(code::BAD_REQUEST, e))?;
    // The mesh tag stays what it was for this relay, so every device keeps agreeing.
    let tag = match d.relays.get(addr) {
        Some(e) if !e.removed => e.tag,
        _ => {
            let mut t = [0u8; transport::relay::TAG_LEN];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut t)
                .map_err(|_| err(code::INTERNAL, "no random bytes"))?;
            t.to_vec()
        }
    };
    record(d, addr, secret, &tag, false)?;
    Ok(list(d))
}

pub fn remove(d: &Daemon, addr: &str) -> Result<Vec<RelayInfo>, ErrorBody> {
    match d.relays.get(addr) {
        Some(e) if !e.removed => {
            record(d, addr, "", &e.tag, true)?;
            Ok(list(d))
        }
        _ => Err(err(
            code::NOT_FOUND,
            format!("no relay {addr} in this mesh"),
        )),
    }
}

pub fn list(d: &Daemon) -> Vec<RelayInfo> {
    let links = d.endpoint.relays().links();
    let problems = d.endpoint.relays().problems();
    d.relays
        .specs()
        .into_iter()
        .map(|s| {
            let link = links.iter().find(|l| l.label == s.addr);
            RelayInfo {
                state: if link.is_some() {
                    "registered"
                } else {
                    "connecting"
                }
                .into(),
                transport: link.map(|l| {
                    match l.path {
                        LinkPath::Udp(_) => "udp",
                        LinkPath::Tcp(_) => "tcp",
                    }
                    .into()
                }),
                observed: link.map(|l| crate::addr::canon(l.observed).to_string()),
                problem: link
                    .is_none()
                    .then(|| problems.get(&s.addr).cloned())
                    .flatten(),
                addr: s.addr,
            }
        })
        .collect()
}
