//! What a flood of valid ClientHellos from strangers costs the device they reach, and
//! how long a member then takes to connect.
//!
//! This process binds the device's endpoint on loopback; for each kind of flood a second
//! process starts QUIC handshakes with it at a steady rate, each from a new socket on one
//! of 64 addresses (127.0.3.1-64), with a certificate outside the roster. Meanwhile a
//! member dials the device 15 times from 127.0.0.2 (a new endpoint each time: QUIC
//! handshake, Retry if any, and the hello round trip). Reported per kind: what the
//! device did with the attempts (handshakes started, Retries, refusals, handshakes
//! evicted), the most handshakes under way at once (sampled), the CPU time this process
//! used (`getrusage`: the device and the member's dials) until the handshakes left
//! behind timed out, that time per attempt the stranger process made, and the member's
//! median connect time (dials that failed left out and counted) against the same without
//! a flood. Each kind runs
//! twice: with the default bounds (`HandshakeLimits`), and with none (every attempt gets
//! a handshake, as before the bounds).
//!
//! Kinds: `complete` (the stranger answers, the device refuses its certificate at the end
//! of the handshake), `spoofed` (the stranger hears nothing, as from a spoofed address),
//! `stalling` (it hears the first answer only: it follows a Retry, then stalls),
//! `mixed` (the three in turn).
//!
//! `CNSPR_HS_RATE` (attempts per second, default 1000) and `CNSPR_HS_SECS` (per kind,
//! default 4) change the load. Run: `cargo bench -p transport --bench handshakes`

mod common;
use common::cpu;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use transport::{
    close_code, Endpoint, EndpointConfig, HandshakeCounters, HandshakeLimits, Identity, Roster,
};

#[path = "../tests/stranger/mod.rs"]
mod stranger;

const ROLE: &str = "CNSPR_HS_ROLE";
const KINDS: &[&str] = &["complete", "spoofed", "stalling", "mixed"];
const DIALS: usize = 15;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The flooding process: `rate` handshake attempts per second of `kind` to `to` for
/// `secs`; prints how many it started.
async fn flood(to: SocketAddr, server: transport::DeviceId, kind: &str, rate: u64, secs: u64) {
    let client = stranger::client_config(server).unwrap();
    let start = Instant::now();
    let mut i = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        let due = start.elapsed().as_micros() as u64 * rate / 1_000_000;
        while i < due {
            let hears = match (kind, i % 3) {
                ("complete", _) | ("mixed", 0) => usize::MAX,
                ("spoofed", _) | ("mixed", 1) => 0,
                _ => 1,
            };
            let ip = format!("127.0.3.{}", 1 + i % 64);
            if let Ok(s) = stranger::Stranger::new(&client, &ip, hears) {
                if let Ok(connecting) = s.dial(to) {
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(Duration::from_secs(3), connecting).await;
                        drop(s);
                    });
                }
            }
            i += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!("{i}");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Dials the device `DIALS` times as `member` (a new endpoint each time, closed after);
/// the median time to a connection that is up, and how many dials failed.
async fn member_dials(member: &Arc<Identity>, device: &Endpoint) -> (Duration, usize) {
    let roster = Roster::new();
    roster.insert(device.id());
    let to = device.local_addrs()[0];
    let (mut times, mut failed) = (Vec::new(), 0);
    for _ in 0..DIALS {
        let em = Endpoint::bind(
            member.clone(),
            roster.clone(),
            EndpointConfig {
                listen: vec!["127.0.0.2:0".parse().unwrap()],
                ..EndpointConfig::for_test()
            },
        )
        .unwrap();
        let start = Instant::now();
        match em.connect(device.id(), &[to]).await {
            Ok(_) => times.push(start.elapsed()),
            Err(e) => {
                if std::env::var("CNSPR_HS_VERBOSE").is_ok() {
                    eprintln!("member dial: {e}");
                }
                failed += 1
            }
        }
        em.shutdown(close_code::LEAVING, "bench", Duration::from_secs(1))
            .await;
        let gone = Instant::now();
        while device.connection(&member.id).is_some() && gone.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let m = if times.is_empty() {
        Duration::ZERO
    } else {
        median(times)
    };
    (m, failed)
}

fn diff(a: HandshakeCounters, b: HandshakeCounters) -> HandshakeCounters {
    HandshakeCounters {
        under_way: b.under_way,
        peak: b.peak,
        peak_per_source: b.peak_per_source,
        accepted: b.accepted - a.accepted,
        retried: b.retried - a.retried,
        refused: b.refused - a.refused,
        evicted: b.evicted - a.evicted,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rate = env_u64("CNSPR_HS_RATE", 1000);
    let secs = env_u64("CNSPR_HS_SECS", 4);
    if std::env::var(ROLE).is_ok() {
        let to: SocketAddr = std::env::var("CNSPR_HS_TO").unwrap().parse().unwrap();
        let server = std::env::var("CNSPR_HS_SERVER").unwrap().parse().unwrap();
        flood(
            to,
            server,
            &std::env::var("CNSPR_HS_KIND").unwrap(),
            rate,
            secs,
        )
        .await;
        return;
    }
    let member = Arc::new(Identity::generate("member").unwrap());
    println!("{rate} attempts/s for {secs} s per kind, from 64 addresses; the member dials {DIALS} times");
    println!(
        "{:<8} {:<9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>5} {:>7} {:>12} {:>9} {:>6} {:>7}",
        "bounds",
        "kind",
        "sent",
        "started",
        "retried",
        "refused",
        "evicted",
        "peak",
        "cpu",
        "cpu/attempt",
        "member",
        "ratio",
        "failed"
    );
    for bounded in [true, false] {
        let limits = if bounded {
            HandshakeLimits::default()
        } else {
            HandshakeLimits {
                max: usize::MAX,
                per_source: usize::MAX,
                retry_above: usize::MAX,
            }
        };
        let device_id = Arc::new(Identity::generate("device").unwrap());
        let roster = Roster::new();
        roster.insert(member.id);
        let device = Endpoint::bind(
            device_id.clone(),
            roster,
            EndpointConfig {
                handshakes: limits,
                ..EndpointConfig::for_test()
            },
        )
        .unwrap();
        let to = device.local_addrs()[0];
        let label = if bounded { "default" } else { "none" };
        // Without a flood: the member's connect time alone.
        let before = cpu();
        let start = Instant::now();
        let (alone, failed) = member_dials(&member, &device).await;
        let used = cpu() - before;
        println!(
            "{label:<8} {:<9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>5} {:>6.1}% {:>12} {:>7.2}ms {:>6} {:>7}",
            "none",
            0,
            "",
            "",
            "",
            "",
            "",
            100.0 * used.as_secs_f64() / start.elapsed().as_secs_f64(),
            "",
            alone.as_secs_f64() * 1e3,
            "1.0",
            failed,
        );
        for kind in KINDS {
            let counters = device.handshakes();
            let before = cpu();
            let start = Instant::now();
            let mut child = Command::new(std::env::current_exe().unwrap())
                .env(ROLE, "flood")
                .env("CNSPR_HS_TO", to.to_string())
                .env("CNSPR_HS_SERVER", device_id.id.to_string())
                .env("CNSPR_HS_KIND", kind)
                .env("CNSPR_HS_RATE", rate.to_string())
                .env("CNSPR_HS_SECS", secs.to_string())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            // The most handshakes under way at once during this kind (sampled).
            let peak = Arc::new(AtomicUsize::new(0));
            let sampler = {
                let (device, peak) = (device.clone(), peak.clone());
                tokio::spawn(async move {
                    loop {
                        peak.fetch_max(device.handshakes().under_way, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
            };
            // Let the flood build up, then dial.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (during, failed) = member_dials(&member, &device).await;
            let out = tokio::task::spawn_blocking(move || {
                let _ = child.wait();
                let mut s = String::new();
                use std::io::Read;
                let _ = child.stdout.take().unwrap().read_to_string(&mut s);
                s
            })
            .await
            .unwrap();
            let sent: u64 = out.trim().parse().unwrap_or(0);
            // The device's CPU time until the handshakes left behind time out.
            tokio::time::sleep(Duration::from_secs(6)).await;
            let wall = start.elapsed();
            let used = cpu() - before;
            sampler.abort();
            let c = diff(counters, device.handshakes());
            let peak = peak.load(Ordering::Relaxed);
            println!(
                "{label:<8} {kind:<9} {sent:>8} {:>8} {:>8} {:>8} {:>8} {:>5} {:>6.1}% {:>10.0}µs {:>7.2}ms {:>6.1} {:>7}",
                c.accepted,
                c.retried,
                c.refused,
                c.evicted,
                peak,
                100.0 * used.as_secs_f64() / wall.as_secs_f64(),
                used.as_secs_f64() * 1e6 / sent.max(1) as f64,
                during.as_secs_f64() * 1e3,
                during.as_secs_f64() / alone.as_secs_f64(),
                failed,
            );
        }
    }
}
