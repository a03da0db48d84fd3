//! What a flood of unauthenticated datagrams costs the process that receives it.
//!
//! This process binds two endpoints on loopback (one dials the other, so the flooded
//! port serves a live connection with heartbeat keys), then, for each kind of garbage,
//! starts a second process that sends it to the flooded port at a steady rate, and
//! reports the CPU time this process used meanwhile (`getrusage`: user and system time of
//! all its threads), the datagrams the kernel dropped on the heartbeat socket, and
//! whether the connection survived. On loopback the kernel's receive path runs in the
//! sender's system calls, so what is measured here is the receiving sockets' reading and
//! quinn's handling.
//!
//! `CNSPR_FLOOD_RATE` (datagrams per second, default 20000) and `CNSPR_FLOOD_SECS` (per
//! kind, default 10) change the load. Run: `cargo bench -p transport --bench flood`

mod common;
use common::cpu;

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use transport::heartbeat::{LEN, MARKER};
use transport::{Endpoint, EndpointConfig, Identity, Roster};

const ROLE: &str = "CNSPR_FLOOD_ROLE";

/// The kinds of garbage, by name.
const KINDS: &[(&str, &str)] = &[
    ("none", "no flood (the idle cost)"),
    (
        "heartbeat",
        "fixed bit clear: heartbeat-marked, heartbeat-sized with unknown key ids, other (to the heartbeat socket)",
    ),
    ("short", "QUIC short header, 60 bytes, unknown connection id"),
    ("long", "QUIC long header, 60-100 bytes, random version"),
    ("vn", "QUIC long header, 1200 bytes, unknown version"),
    ("initial", "QUIC v1 Initial, 1200 bytes, random connection id and payload"),
];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let r = self.next().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }

    /// One datagram of `kind` into `buf`; its length.
    fn datagram(&mut self, kind: &str, i: u64, buf: &mut [u8; 1200]) -> usize {
        self.fill(buf);
        match kind {
            "heartbeat" => match i % 4 {
                0 => {
                    buf[0] = MARKER;
                    1 + (self.next() % 100) as usize
                }
                1 | 2 => {
                    buf[0] = MARKER;
                    LEN
                }
                _ => {
                    buf[0] &= !0x40;
                    1 + (self.next() % 127) as usize
                }
            },
            "short" => {
                buf[0] = 0x40 | (buf[0] & 0x3f);
                60
            }
            "long" => {
                buf[0] |= 0xc0;
                60 + (self.next() % 41) as usize
            }
            "vn" => {
                buf[0] |= 0xc0;
                buf[1..5].copy_from_slice(&0x1a2a_3a4au32.to_be_bytes());
                buf[5] = 8; // destination connection id length
                buf[14] = 8; // source connection id length
                1200
            }
            "initial" => {
                buf[0] = 0xc0 | (buf[0] & 0x0f);
                buf[1..5].copy_from_slice(&1u32.to_be_bytes());
                buf[5] = 8; // destination connection id: bytes 6..14, random
                buf[14] = 0; // no source connection id
                buf[15] = 0; // no token
                let rest = (1200 - 18) as u16; // packet number and payload
                buf[16..18].copy_from_slice(&(0x4000 | rest).to_be_bytes());
                1200
            }
            other => panic!("unknown kind {other}"),
        }
    }
}

/// The flooding process: sends `kind` to `to` at `rate` per second for `secs`; prints how
/// many it sent.
fn flood(to: SocketAddr, kind: &str, rate: u64, secs: u64) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15 ^ rate);
    let mut buf = [0u8; 1200];
    let start = Instant::now();
    let (mut i, mut sent) = (0u64, 0u64);
    while start.elapsed() < Duration::from_secs(secs) {
        let due = start.elapsed().as_micros() as u64 * rate / 1_000_000;
        while i < due {
            let len = noise.datagram(kind, i, &mut buf);
            if socket.send_to(&buf[..len], to).is_ok() {
                sent += 1;
            }
            i += 1;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    println!("{sent}");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::var(ROLE).is_ok() {
        let to: SocketAddr = std::env::var("CNSPR_FLOOD_TO").unwrap().parse().unwrap();
        let kind = std::env::var("CNSPR_FLOOD_KIND").unwrap();
        flood(
            to,
            &kind,
            env_u64("CNSPR_FLOOD_RATE", 20_000),
            env_u64("CNSPR_FLOOD_SECS", 10),
        );
        return;
    }
    let rate = env_u64("CNSPR_FLOOD_RATE", 20_000);
    let secs = env_u64("CNSPR_FLOOD_SECS", 10);
    let (a, b) = (
        Arc::new(Identity::generate("a").unwrap()),
        Arc::new(Identity::generate("b").unwrap()),
    );
    let bind = |me: &Arc<Identity>, peer: &Arc<Identity>| {
        let roster = Roster::new();
        roster.insert(peer.id);
        Endpoint::bind(me.clone(), roster, EndpointConfig::for_test()).unwrap()
    };
    let (ea, eb) = (bind(&a, &b), bind(&b, &a));
    let to = eb.local_addrs()[0];
    let pc = ea.connect(b.id, &[to]).await.unwrap();
    println!("flooding {to} at {rate}/s for {secs} s per kind");
    println!(
        "{:<10} {:>9} {:>9} {:>10} {:>14} {:>9}",
        "kind", "sent", "rate/s", "cpu", "kernel drops", "link"
    );
    for (kind, what) in KINDS {
        let dropped = eb.twin().map_or(0, |t| t.dropped());
        let before = cpu();
        let start = Instant::now();
        let sent = if *kind == "none" {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            0
        } else {
            let child = Command::new(std::env::current_exe().unwrap())
                .env(ROLE, "send")
                .env("CNSPR_FLOOD_TO", to.to_string())
                .env("CNSPR_FLOOD_KIND", kind)
                .env("CNSPR_FLOOD_RATE", rate.to_string())
                .env("CNSPR_FLOOD_SECS", secs.to_string())
                .output();
            let out = tokio::task::spawn_blocking(move || child)
                .await
                .unwrap()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .unwrap_or(0)
        };
        let wall = start.elapsed();
        let used = cpu() - before;
        let link = if pc.conn.close_reason().is_none() && ea.connection(&b.id).is_some() {
            "up"
        } else {
            "DOWN"
        };
        println!(
            "{:<10} {:>9} {:>9.0} {:>9.1}% {:>14} {:>9}   {what}",
            kind,
            sent,
            sent as f64 / wall.as_secs_f64(),
            100.0 * used.as_secs_f64() / wall.as_secs_f64(),
            eb.twin().map_or(0, |t| t.dropped()) - dropped,
            link,
        );
    }
}
