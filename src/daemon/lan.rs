//! The LAN side: mDNS discovery of roster devices and network-interface tracking, driven
//! by the `discovery` crate. Discovery only adds addresses to dial; the transport's TLS
//! check decides who a device really is.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info, warn};
use transport::DeviceId;

use super::context::Daemon;
use crate::api::Event;

/// Starts interface tracking (always) and mDNS (unless switched off).
pub fn start(d: &Arc<Daemon>, mdns: bool) {
    match discovery::NetWatcher::start() {
        Ok((watcher, mut rx)) => {
            let active = watcher.is_active();
            *d.netwatch.lock().unwrap_or_else(|p| p.into_inner()) = Some(watcher);
            let dd = d.clone();
            tokio::spawn(async move {
                while let Some(ev) = rx.recv().await {
                    net_event(&dd, ev);
                }
            });
            if active {
                d.emit(Event::Daemon {
                    tag: "daemon.active".into(),
                    state: "active".into(),
                });
            }
        }
        Err(e) => {
            warn!(error = %e, "cannot follow network interfaces; address changes will be noticed late")
        }
    }
    if !mdns {
        return;
    }
    let Some(port) = d.endpoint.local_addrs().first().map(|a| a.port()) else {
        return;
    };
    let me = discovery::Announce {
        id: d.id().to_plain(),
        name: d.identity.name.clone(),
        port,
        pair_port: None,
    };
    match discovery::Discovery::start(me) {
        Ok((disc, mut rx)) => {
            *d.mdns.lock().unwrap_or_else(|p| p.into_inner()) = Some(disc);
            let dd = d.clone();
            tokio::spawn(async move {
                while let Some(ev) = rx.recv().await {
                    match ev {
                        discovery::DiscoveryEvent::Found {
                            id,
                            name,
                            addrs,
                            version,
                            pairing,
                        } => {
                            if let Ok(did) = id.parse::<DeviceId>() {
                                let mut nearby =
                                    dd.nearby.lock().unwrap_or_else(|p| p.into_inner());
                                if nearby.len() < 256 || nearby.contains_key(&did) {
                                    nearby.insert(
                                        did,
                                        super::nearby::Nearby {
                                            name,
                                            addrs: addrs.clone(),
                                            pairing,
                                        },
                                    );
                                }
                            }
                            found(&dd, &id, &addrs, &version);
                        }
                        discovery::DiscoveryEvent::Lost { id } => {
                            if let Ok(did) = id.parse::<DeviceId>() {
                                dd.nearby
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .remove(&did);
                            }
                        }
                    }
                }
            });
            info!("mDNS discovery running");
        }
        Err(e) => {
            warn!(error = %e, "mDNS discovery unavailable; use --peer or `cnspr trust --addr`")
        }
    }
}

fn net_event(d: &Arc<Daemon>, ev: discovery::NetEvent) {
    use discovery::NetEvent::*;
    match ev {
        Active => d.emit(Event::Daemon {
            tag: "daemon.active".into(),
            state: "active".into(),
        }),
        Inactive => d.emit(Event::Daemon {
            tag: "daemon.inactive".into(),
            state: "inactive".into(),
        }),
        AddressAdded(_) | AddressRemoved(_) => {
            debug!(
                ?ev,
                "address change: re-announcing, re-dialling, replacing stale connections"
            );
            if let Some(m) = d.mdns.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                let _ = m.reannounce();
            }
            let usable: Vec<std::net::IpAddr> = d
                .netwatch
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(|w| w.addresses().iter().map(|ip| ip.to_canonical()).collect())
                .unwrap_or_default();
            super::links::after_address_change(d, &usable);
            d.portmap.network_changed();
            d.punches.network_changed();
            super::mesh::announce(d);
        }
    }
}

fn found(d: &Arc<Daemon>, id: &str, addrs: &[SocketAddr], version: &str) {
    if version != discovery::PROTOCOL_VERSION {
        debug!(%id, %version, "device with another protocol version seen; ignored");
        return;
    }
    let Ok(id) = id.parse::<DeviceId>() else {
        return;
    };
    let known = {
        let mut table = d.peers();
        match table.peers.get_mut(&id) {
            Some(p) => {
                // Candidates only, until a handshake confirms one (anyone on the LAN can
                // announce a member's ID); a working address is never displaced.
                let addrs: Vec<SocketAddr> = addrs.iter().map(|a| crate::addr::canon(*a)).collect();
                if p.heard_of(&addrs, Instant::now()) {
                    p.dial.reset(Instant::now());
                }
                true
            }
            None => false,
        }
    };
    if known {
        debug!(peer = %id.short(), ?addrs, "roster device found on the LAN");
    }
}

/// Sends the mDNS goodbye (blocks up to about 1.5 s).
pub async fn stop(d: &Arc<Daemon>) {
    let disc = d.mdns.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(disc) = disc {
        let _ = tokio::task::spawn_blocking(move || disc.stop()).await;
    }
}
