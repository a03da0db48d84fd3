//! `cnspr relay`: runs a relay (see `transport::relay`) until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context;
use serde_json::json;
use transport::relay::server::{RelayConfig, RelayServer};

use crate::cli::RelayArgs;

/// The relay's default port (UDP and TCP).
pub const DEFAULT_PORT: u16 = 7374;

pub async fn run(args: RelayArgs, json_out: bool) -> anyhow::Result<()> {
    let (secret, generated) = match args.secret {
        Some(s) => (s, false),
        None => (transport::relay::new_secret(), true),
    };
    transport::relay::check_secret(&secret).map_err(|e| anyhow::anyhow!("--secret: {e}"))?;
    let listen = args
        .listen
        .unwrap_or_else(|| SocketAddr::from(([0u16; 8], DEFAULT_PORT)));
    let tcp = match args.tcp.as_deref() {
        None => Some(listen),
        Some("off") => None,
        Some(a) => Some(
            a.parse::<SocketAddr>()
                .with_context(|| format!("--tcp {a:?}: expected ADDR:PORT or off"))?,
        ),
    };
    let provider = Arc::new(transport::tls::chacha_provider());
    let cfg = RelayConfig {
        listen,
        tcp,
        secret: secret.clone(),
        max_devices: args.max_devices,
        rate: args.rate.saturating_mul(1024 * 1024),
    };
    let server = RelayServer::bind(cfg, provider)
        .await
        .context("starting the relay")?;
    let udp = server.udp_addr();
    let tcp = server.tcp_addr();
    // Printing must not stop the relay when nobody reads its output (a closed pipe).
    let mut out = std::io::stdout();
    use std::io::Write;
    if json_out {
        let mut v = json!({"udp": udp.to_string(), "tcp": tcp.map(|t| t.to_string()), "id": server.id().to_string()});
        if generated {
            v["secret"] = json!(secret);
        }
        let _ = writeln!(out, "{v}");
    } else {
        let _ = writeln!(
            out,
            "relay listening on UDP {udp}{}",
            tcp.map(|t| format!(" and TCP {t}")).unwrap_or_default()
        );
        let shown = if generated { secret.as_str() } else { "SECRET" };
        let _ = writeln!(
            out,
            "on one device of your mesh: cnspr relay add HOST:{} {shown}",
            udp.port()
        );
        if generated {
            let _ = writeln!(
                out,
                "(a new secret: pass it with --secret or CNSPR_RELAY_SECRET to keep it across restarts)"
            );
        }
    }
    let _ = out.flush();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut report = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = report.tick() => {
                let s = server.stats();
                tracing::info!(
                    devices = server.devices(),
                    forwarded = s.forwarded.load(Ordering::Relaxed),
                    bytes = s.forwarded_bytes.load(Ordering::Relaxed),
                    unknown = s.unknown.load(Ordering::Relaxed),
                    limited = s.limited.load(Ordering::Relaxed),
                    refused = s.refused.load(Ordering::Relaxed),
                    "relay counters"
                );
            }
        }
    }
    tracing::info!("relay stopping");
    server.close().await;
    Ok(())
}
