//! Where this device may be reached, from the daemon's state: the candidates `status`
//! shows and members are told about (see `reach.rs` for the kinds).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::api::Candidate;

use super::context::Daemon;
use super::reach::is_global;

/// The port peers reach this device on (the first listening socket's).
fn listen_port(d: &Daemon) -> Option<u16> {
    d.endpoint
        .local_addrs()
        .first()
        .map(|a| a.port())
        .filter(|p| *p != 0)
}

/// This host's global interface addresses with the listening port.
fn local(d: &Daemon) -> Vec<SocketAddr> {
    let Some(port) = listen_port(d) else {
        return Vec::new();
    };
    let bound: Vec<IpAddr> = d.endpoint.local_addrs().iter().map(|a| a.ip()).collect();
    let ips: Vec<IpAddr> = if bound.iter().all(|ip| ip.is_unspecified()) {
        d.netwatch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|w| w.addresses())
            .unwrap_or_default()
    } else {
        bound
    };
    let mut out: Vec<SocketAddr> = ips
        .into_iter()
        .map(|ip| ip.to_canonical())
        .filter(|ip| is_global(*ip))
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The candidates this device announces itself to members: its global interface
/// addresses and its mapped port (what members cannot observe).
pub fn announced(d: &Daemon) -> Vec<SocketAddr> {
    let mut v = local(d);
    if let Some(m) = d.portmap.external() {
        if !v.contains(&m) {
            v.push(m);
        }
    }
    v
}

/// Where the relays this device is registered with over UDP see it come from.
fn seen_by_relays(d: &Daemon) -> Vec<(SocketAddr, String)> {
    d.endpoint
        .relays()
        .links()
        .into_iter()
        .filter(|l| matches!(l.path, transport::relay::socket::LinkPath::Udp(_)))
        .map(|l| (crate::addr::canon(l.observed), l.label))
        .collect()
}

/// Where other devices may dial this one: what it announces, and every address its
/// peers and relays see its connections come from.
pub fn dialable(d: &Daemon) -> Vec<SocketAddr> {
    let mut v = announced(d);
    let seen = d
        .endpoint
        .connections()
        .iter()
        .filter_map(|pc| d.reach.observed(pc))
        .chain(seen_by_relays(d).into_iter().map(|(a, _)| a))
        .collect::<Vec<_>>();
    for a in seen {
        if !v.contains(&a) {
            v.push(a);
        }
    }
    v
}

/// A direct path just died, perhaps because this device's router changed its public
/// address or forgot its mappings: a packet on every connection this device dialled
/// lets each of those peers see at once where it comes from now (QUIC follows a
/// client's new address), and tell this device and the other members. Without it they
/// would learn it only at the next keep-alive. At most once a second.
pub fn nudge_dialled(d: &Daemon) {
    {
        let mut last = d.reach.nudged.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            return;
        }
        *last = Some(now);
    }
    for pc in d.endpoint.connections() {
        if pc.dialer != d.id() {
            continue;
        }
        tokio::spawn(async move {
            let ping = transport::wire::ControlFrame::Ping {
                nonce: rand::random(),
            };
            if let Ok((mut send, _recv)) = pc.open(transport::StreamKind::Control).await {
                let _ = transport::frame::write_frame(
                    &mut send,
                    &ping,
                    transport::frame::MAX_CONTROL_FRAME,
                )
                .await;
                let _ = send.finish();
            }
        });
    }
}

/// Every candidate, for `status`.
pub fn candidates(d: &Daemon) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = local(d)
        .into_iter()
        .map(|a| Candidate {
            addr: a.to_string(),
            kind: "local".into(),
            from: Vec::new(),
        })
        .collect();
    if let Some(m) = d.portmap.external() {
        out.push(Candidate {
            addr: m.to_string(),
            kind: "mapped".into(),
            from: Vec::new(),
        });
    }
    let mut conns = d.endpoint.connections();
    conns.sort_by(|a, b| a.name.cmp(&b.name));
    let seen = conns
        .iter()
        .filter_map(|pc| Some((d.reach.observed(pc)?, pc.name.clone())))
        .chain(
            seen_by_relays(d)
                .into_iter()
                .map(|(a, l)| (a, format!("relay {l}"))),
        );
    for (seen, by) in seen {
        let addr = seen.to_string();
        match out
            .iter_mut()
            .find(|c| c.addr == addr && c.kind == "observed")
        {
            Some(c) => c.from.push(by),
            None => out.push(Candidate {
                addr,
                kind: "observed".into(),
                from: vec![by],
            }),
        }
    }
    out
}
