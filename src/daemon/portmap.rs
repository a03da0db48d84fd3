//! A port mapping on the home router: asks the default gateway, with PCP (RFC 6887) or
//! NAT-PMP (RFC 6886) through `crab_nat`, to forward the daemon's UDP port, so that
//! devices beyond the LAN can dial this one even behind a NAT that maps every
//! destination to another port. Renewed at half its lifetime, asked for again after a
//! change of this host's addresses or a gateway reboot, and removed when the daemon
//! stops. Off with config `port_mapping = false` or `serve --no-port-mapping`.
//!
//! UPnP-IGD is not spoken (PCP and NAT-PMP cover the routers that run miniupnpd, and
//! most others that offer mappings; see docs/reach.md).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::num::NonZeroU16;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crab_nat::{InternetProtocol, PortMapping, PortMappingOptions, PortMappingType, TimeoutConfig};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

/// Lifetime asked for (the gateway may grant less).
const LIFETIME_S: u32 = 7200;
/// First wait after a failed attempt; doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(30);
const MAX_RETRY: Duration = Duration::from_secs(1800);

/// The mapping, if one is held.
#[derive(Default)]
pub struct Portmap {
    held: Mutex<Option<(PortMapping, SocketAddr)>>,
    /// Wakes the task to ask again at once (this host's addresses changed).
    again: Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Portmap {
    /// The public address and port the router forwards to this device.
    pub fn external(&self) -> Option<SocketAddr> {
        lock(&self.held).as_ref().map(|(_, a)| *a)
    }

    /// This host's addresses changed: ask again now.
    pub fn network_changed(&self) {
        self.again.notify_one();
    }
}

/// The IPv4 default gateway, from `/proc/net/route`.
fn default_gateway() -> Option<Ipv4Addr> {
    let text = std::fs::read_to_string("/proc/net/route").ok()?;
    parse_route_table(&text)
}

/// The gateway of the first default route (destination 0, flags RTF_UP|RTF_GATEWAY) in
/// the text of `/proc/net/route` (addresses in little-endian hexadecimal).
fn parse_route_table(text: &str) -> Option<Ipv4Addr> {
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 || f[1] != "00000000" {
            continue;
        }
        let flags = u16::from_str_radix(f[3], 16).ok()?;
        if flags & 0x3 != 0x3 {
            continue;
        }
        let gw = u32::from_str_radix(f[2], 16).ok()?;
        return Some(Ipv4Addr::from(gw.swap_bytes()));
    }
    None
}

/// The local address this host uses towards `gw` (no packet is sent).
fn source_towards(gw: Ipv4Addr) -> Option<IpAddr> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect((gw, 5351)).ok()?;
    Some(s.local_addr().ok()?.ip())
}

fn timeouts() -> TimeoutConfig {
    TimeoutConfig {
        initial_timeout: Duration::from_millis(250),
        max_retries: 3,
        max_retry_timeout: Some(Duration::from_secs(2)),
    }
}

/// Asks the gateway for a mapping of UDP `port`; returns it with its public address.
async fn request(port: NonZeroU16) -> Result<(PortMapping, SocketAddr), String> {
    let gw = default_gateway().ok_or("no IPv4 default gateway")?;
    let client = source_towards(gw).ok_or("no route to the gateway")?;
    let opts = PortMappingOptions {
        external_port: Some(port),
        lifetime_seconds: Some(LIFETIME_S),
        timeout_config: Some(timeouts()),
    };
    let m = PortMapping::new(gw.into(), client, InternetProtocol::Udp, port, opts)
        .await
        .map_err(|e| format!("gateway {gw}: {e}"))?;
    let ip = match m.mapping_type() {
        PortMappingType::Pcp { external_ip, .. } => external_ip.to_canonical(),
        PortMappingType::NatPmp => crab_nat::natpmp::external_address(gw.into(), Some(timeouts()))
            .await
            .map(IpAddr::V4)
            .map_err(|e| format!("gateway {gw}: external address: {e}"))?,
    };
    Ok((m.clone(), SocketAddr::new(ip, m.external_port().get())))
}

impl Portmap {
    /// Starts the task that holds a mapping of UDP `port`; `changed` runs whenever the
    /// public address the router gives changes (to tell the members).
    pub fn start(self: &Arc<Self>, port: NonZeroU16, changed: impl Fn() + Send + 'static) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut retry = FIRST_RETRY;
            loop {
                let wait = match request(port).await {
                    Ok((m, external)) => {
                        retry = FIRST_RETRY;
                        let lifetime = Duration::from_secs(u64::from(m.lifetime().max(60)));
                        let was = lock(&me.held).replace((m, external)).map(|h| h.1);
                        if was != Some(external) {
                            info!(%external, lifetime_s = lifetime.as_secs(), "the router forwards a port to this device");
                            changed();
                        }
                        lifetime / 2
                    }
                    Err(e) => {
                        let had = lock(&me.held).take();
                        if had.is_some() {
                            warn!(error = %e, "the port mapping was lost");
                        } else {
                            debug!(error = %e, "no port mapping");
                        }
                        let w = retry;
                        retry = (retry * 2).min(MAX_RETRY);
                        w
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = me.again.notified() => {}
                }
            }
        });
    }

    /// Removes the mapping from the router (at stop), waiting at most `within`.
    pub async fn release(&self, within: Duration) {
        let held = lock(&self.held).take();
        if let Some((m, external)) = held {
            match tokio::time::timeout(within, m.try_drop()).await {
                Ok(Ok(())) => info!(%external, "port mapping removed"),
                Ok(Err((e, _))) => warn!(error = %e, "cannot remove the port mapping"),
                Err(_) => warn!("the router did not answer the removal of the port mapping"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_gateway_is_read_from_the_route_table() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t0001010A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            eth0\t00000000\t0101010A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(parse_route_table(table), Some(Ipv4Addr::new(10, 1, 1, 1)));
        // A default route without a gateway (on-link) names none.
        let onlink = "Iface\tDestination\tGateway\tFlags\n eth0\t00000000\t00000000\t0001\n";
        assert_eq!(parse_route_table(onlink), None);
        assert_eq!(parse_route_table("garbage"), None);
    }
}
