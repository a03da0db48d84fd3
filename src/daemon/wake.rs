//! `cnspr wake PEER` (docs/wake.md): every device tells the members it connects to its
//! own Ethernet interfaces ([`MeshFrame::Lan`], taken only first-hand and kept with the
//! peer's record); a wake request picks a device on the sleeper's LAN (this one, else a
//! connected member whose interfaces share a subnet with the sleeper's last known
//! addresses), which sends the magic packet there.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};
use transport::DeviceId;

use super::context::Daemon;
use super::peers::PeerState;
use super::wire::{MeshFrame, WakeMsg, WakeSent};
use super::wol::{self, LanIface, OwnIface};
use crate::api::{code, ErrorBody, WakeResult, WakeSentInfo};

/// How long a member on the sleeper's LAN has to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// This device's interfaces as a mesh frame, `None` when it has none to tell.
pub fn lan_frame() -> Option<MeshFrame> {
    let own: Vec<LanIface> = wol::own_interfaces().into_iter().map(|o| o.iface).collect();
    (!own.is_empty()).then_some(MeshFrame::Lan(own))
}

/// Tells every connected member this device's interfaces (after an address change).
pub fn announce(d: &Daemon) {
    let Some(frame) = lan_frame() else { return };
    for peer in d.mesh.connected() {
        d.mesh.send(&peer, frame.clone());
    }
}

/// `from` told its own interfaces (on its own connection: nobody can tell another's).
pub fn lan_received(d: &Daemon, from: DeviceId, list: Vec<LanIface>) {
    let changed = {
        let mut table = d.peers();
        let Some(p) = table.peers.get_mut(&from) else {
            return;
        };
        match wol::merge(&p.lan, &list) {
            Some(lan) => {
                p.lan = lan;
                true
            }
            None => false,
        }
    };
    if list.len() > wol::MAX_IFACES {
        warn!(peer = %from.short(), entries = list.len(), "oversized interface list ignored");
    }
    if changed {
        debug!(peer = %from.short(), "interfaces for wake-on-LAN learnt");
        d.save_peers();
    }
}

/// A wake frame from member `from`.
pub fn received(d: &Arc<Daemon>, from: DeviceId, msg: WakeMsg) {
    match msg {
        WakeMsg::Ask { id, target, force } => {
            if !d.members.is_member(&from) {
                return;
            }
            let answer = match send_here(d, target, force) {
                Ok(sent) => WakeMsg::Sent { id, sent },
                Err(e) => WakeMsg::Failed {
                    id,
                    code: e.code.as_str().into(),
                    message: e.message,
                },
            };
            d.mesh.send(&from, MeshFrame::Wake(answer));
        }
        WakeMsg::Sent { id, .. } | WakeMsg::Failed { id, .. } => {
            d.wakes.answered(from, id, msg);
        }
    }
}

/// What this device knows of a peer, for a wake.
struct Sleeper {
    id: DeviceId,
    name: String,
    state: PeerState,
    lan: Vec<LanIface>,
    /// Its last known IPv4 addresses: its interfaces' and where it was reached.
    ips: Vec<Ipv4Addr>,
}

fn sleeper(d: &Daemon, target: DeviceId) -> Result<Sleeper, ErrorBody> {
    let table = d.peers();
    let p = table.peers.get(&target).ok_or_else(|| {
        ErrorBody::new(
            code::UNKNOWN_PEER,
            format!("device {} is not a trusted peer", target.short()),
        )
    })?;
    let mut ips: Vec<Ipv4Addr> = p.lan.iter().map(|i| i.addr).collect();
    for a in p.addr.iter().chain(p.addrs.iter()) {
        if let (IpAddr::V4(v4), false) = (a.ip().to_canonical(), transport::relay::is_virtual(a)) {
            if !ips.contains(&v4) {
                ips.push(v4);
            }
        }
    }
    Ok(Sleeper {
        id: target,
        name: p.name.clone(),
        state: p.state,
        lan: p.lan.clone(),
        ips,
    })
}

fn awake(state: PeerState) -> bool {
    matches!(state, PeerState::Active | PeerState::Indirect)
}

fn awake_error(s: &Sleeper) -> ErrorBody {
    ErrorBody::new(
        code::REFUSED,
        format!(
            "{} is awake ({}); nothing sent (--force sends the magic packet anyway)",
            s.name,
            s.state.as_str()
        ),
    )
}

/// Which of this host's interfaces share a subnet with the sleeper's interfaces: each
/// pair of (own interface, sleeper's MAC) once.
fn matches(own: &[OwnIface], lan: &[LanIface]) -> Vec<(OwnIface, [u8; 6])> {
    let mut out: Vec<(OwnIface, [u8; 6])> = Vec::new();
    for s in lan {
        for o in own {
            if o.iface.contains(s.addr) && !out.iter().any(|(k, m)| k.name == o.name && *m == s.mac)
            {
                out.push((o.clone(), s.mac));
            }
        }
    }
    out
}

/// Sends the magic packets for `target` from this device, which must be on its LAN.
fn send_here(d: &Daemon, target: DeviceId, force: bool) -> Result<Vec<WakeSent>, ErrorBody> {
    let s = sleeper(d, target)?;
    if s.lan.is_empty() {
        return Err(no_mac(d, &s));
    }
    let pairs = matches(&wol::own_interfaces(), &s.lan);
    if pairs.is_empty() {
        let nets: Vec<String> = s.lan.iter().map(|i| i.subnet()).collect();
        return Err(ErrorBody::new(
            code::UNREACHABLE,
            format!(
                "{} has no interface on {}'s LAN ({})",
                d.identity.name,
                s.name,
                nets.join(", ")
            ),
        ));
    }
    if awake(s.state) && !force {
        return Err(awake_error(&s));
    }
    if let Err(wait) = d.wakes.allow(target, Instant::now()) {
        return Err(ErrorBody::new(
            code::BUSY,
            format!(
                "{} was sent {} wake-ups in the last minute; try again in {} s",
                s.name,
                super::wakes::PER_WINDOW,
                wait.as_secs().max(1)
            ),
        ));
    }
    let mut sent = Vec::new();
    let mut errors = Vec::new();
    for (own, mac) in pairs {
        match wol::send_magic(&own, &mac) {
            Ok(to) => {
                info!(peer = %s.name, mac = %wol::mac_text(&mac), iface = %own.name, ?to, "magic packet sent");
                sent.push(WakeSent {
                    mac,
                    iface: own.name,
                    to,
                });
            }
            Err(e) => errors.push(format!("{}: {e}", own.name)),
        }
    }
    if sent.is_empty() {
        return Err(ErrorBody::new(
            code::UNAVAILABLE,
            format!("cannot send the magic packet: {}", errors.join("; ")),
        ));
    }
    Ok(sent)
}

/// A member's answer is well formed: at most a packet per interface, short names, at
/// most two destinations each.
fn plausible(sent: &[WakeSent]) -> bool {
    !sent.is_empty()
        && sent.len() <= wol::MAX_IFACES * wol::MAX_IFACES
        && sent
            .iter()
            .all(|w| w.iface.len() <= wol::MAX_IFNAME && w.to.len() <= 2 && wol::valid_mac(&w.mac))
}

fn result(s: &Sleeper, by: &str, by_id: DeviceId, sent: Vec<WakeSent>) -> WakeResult {
    WakeResult {
        peer: s.name.clone(),
        id: s.id.to_string(),
        by: by.into(),
        by_id: by_id.to_string(),
        state: s.state.as_str().into(),
        sent: sent
            .into_iter()
            .map(|w| WakeSentInfo {
                mac: wol::mac_text(&w.mac),
                interface: w.iface,
                to: w.to.iter().map(|a| a.to_string()).collect(),
            })
            .collect(),
    }
}

/// The members that may be on the sleeper's LAN: connected, and one of their announced
/// interfaces is on a subnet holding one of its last known addresses.
fn wakers(d: &Daemon, s: &Sleeper) -> Vec<(DeviceId, String)> {
    let connected = d.mesh.connected();
    let table = d.peers();
    let mut out: Vec<(DeviceId, String)> = connected
        .into_iter()
        .filter(|m| *m != s.id)
        .filter_map(|m| table.peers.get(&m))
        .filter(|p| p.lan.iter().any(|i| s.ips.iter().any(|ip| i.contains(*ip))))
        .map(|p| (p.id, p.name.clone()))
        .collect();
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

/// `cnspr wake PEER`.
pub async fn wake(d: &Arc<Daemon>, query: &str, force: bool) -> Result<WakeResult, ErrorBody> {
    if let Some(e) = d.removed_refusal() {
        return Err(e);
    }
    let target = d.peers().resolve(query)?;
    let s = sleeper(d, target)?;
    if awake(s.state) && !force {
        return Err(awake_error(&s));
    }
    // This device on the sleeper's LAN: it sends the packet itself.
    let own = wol::own_interfaces();
    if !matches(&own, &s.lan).is_empty() {
        let sent = send_here(d, target, force)?;
        return Ok(result(&s, &d.identity.name, d.id(), sent));
    }
    let wakers = wakers(d, &s);
    if wakers.is_empty() {
        let here = own
            .iter()
            .any(|o| s.ips.iter().any(|ip| o.iface.contains(*ip)));
        if here && s.lan.is_empty() {
            return Err(no_mac(d, &s));
        }
        return Err(no_waker(&s));
    }
    let mut refusals: Vec<ErrorBody> = Vec::new();
    for (member, name) in wakers {
        let Some((id, rx)) = d.wakes.expect(member) else {
            return Err(ErrorBody::new(
                code::BUSY,
                "too many wake requests under way; try again shortly",
            ));
        };
        let ask = WakeMsg::Ask { id, target, force };
        if !d.mesh.send(&member, MeshFrame::Wake(ask)) {
            d.wakes.forget(id);
            continue;
        }
        match tokio::time::timeout(ASK_TIMEOUT, rx).await {
            Ok(Ok(WakeMsg::Sent { sent, .. })) if plausible(&sent) => {
                return Ok(result(&s, &name, member, sent));
            }
            Ok(Ok(WakeMsg::Failed {
                code: c, message, ..
            })) => {
                let e = ErrorBody::from_wire(&c, format!("{name}: {}", bounded(&message)));
                // Another member may know the MAC or be on the LAN: try it; anything
                // else (awake, rate-limited) is the answer.
                if !matches!(
                    e.code,
                    crate::api::Code::NotFound | crate::api::Code::Unreachable
                ) {
                    return Err(e);
                }
                refusals.push(e);
            }
            Ok(_) => refusals.push(ErrorBody::new(
                code::UNREACHABLE,
                format!("{name}: an answer not understood"),
            )),
            Err(_) => {
                d.wakes.forget(id);
                refusals.push(ErrorBody::new(
                    code::UNREACHABLE,
                    format!("{name}: no answer within {} s", ASK_TIMEOUT.as_secs()),
                ));
            }
        }
    }
    let msgs: Vec<String> = refusals.iter().map(|e| e.message.clone()).collect();
    let code = if refusals.iter().any(|e| e.code == code::NOT_FOUND) {
        code::NOT_FOUND
    } else {
        code::UNREACHABLE
    };
    Err(ErrorBody::new(
        code,
        format!(
            "no member on {}'s LAN could wake it: {}",
            s.name,
            if msgs.is_empty() {
                "none answered".to_string()
            } else {
                msgs.join("; ")
            }
        ),
    ))
}

/// This device would be the waker but was never told the sleeper's interfaces.
fn no_mac(d: &Daemon, s: &Sleeper) -> ErrorBody {
    ErrorBody::new(
        code::NOT_FOUND,
        format!(
            "no MAC address known for {}: {} has not been told its interfaces (a device \
             tells them to the members it connects to)",
            s.name, d.identity.name
        ),
    )
}

/// Nobody reachable shares a LAN with the sleeper.
fn no_waker(s: &Sleeper) -> ErrorBody {
    if s.ips.is_empty() {
        return ErrorBody::new(
            code::NOT_FOUND,
            format!(
                "no MAC address and no address known for {}: this device has never learnt \
                 where it is",
                s.name
            ),
        );
    }
    let nets: Vec<String> = if s.lan.is_empty() {
        s.ips.iter().map(|ip| ip.to_string()).collect()
    } else {
        s.lan.iter().map(|i| i.subnet()).collect()
    };
    let mac = if s.lan.is_empty() {
        " (and no MAC address of it is known here)"
    } else {
        ""
    };
    ErrorBody::new(
        code::UNREACHABLE,
        format!(
            "no member on {}'s LAN is reachable{mac}: it was last at {}, and neither this \
             device nor any connected member has an interface there",
            s.name,
            nets.join(", ")
        ),
    )
}

/// A member's message, cut to a sane length for the reply.
fn bounded(m: &str) -> String {
    m.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(name: &str, addr: &str, prefix: u8) -> OwnIface {
        OwnIface {
            name: name.into(),
            iface: LanIface {
                mac: [2, 0, 0, 0, 0, 1],
                addr: addr.parse().unwrap(),
                prefix,
            },
        }
    }

    #[test]
    fn a_waker_needs_an_interface_on_the_sleepers_subnet() {
        let mac = [2, 0, 0, 0, 0, 7];
        let lan = vec![LanIface {
            mac,
            addr: "10.77.0.1".parse().unwrap(),
            prefix: 24,
        }];
        let mine = [own("eth0", "10.77.0.2", 24), own("eth1", "10.78.0.2", 24)];
        let m = matches(&mine, &lan);
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].0.name.as_str(), m[0].1), ("eth0", mac));
        assert!(matches(&[own("eth1", "10.78.0.2", 24)], &lan).is_empty());
        assert!(matches(&mine, &[]).is_empty());
    }

    #[test]
    fn implausible_answers_are_refused() {
        let ok = WakeSent {
            mac: [2, 0, 0, 0, 0, 7],
            iface: "eth0".into(),
            to: vec!["10.0.0.255:9".parse().unwrap()],
        };
        assert!(plausible(std::slice::from_ref(&ok)));
        assert!(!plausible(&[]));
        let mut long = ok.clone();
        long.iface = "x".repeat(16);
        assert!(!plausible(&[long]));
        let mut bad = ok.clone();
        bad.mac = [0xff; 6];
        assert!(!plausible(&[bad]));
        let mut many = ok;
        many.to = vec!["10.0.0.255:9".parse().unwrap(); 3];
        assert!(!plausible(&[many]));
    }
}
