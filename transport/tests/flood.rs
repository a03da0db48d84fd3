//! Heartbeats under a flood of unauthenticated datagrams on the same port.
//!
//! Two endpoints exchange heartbeats, each read only every few beats (as the daemon reads
//! its heartbeat socket once per wake-up), while another socket on loopback sends both
//! ports garbage at a steady rate: datagrams that start with the heartbeat marker but
//! have other lengths, heartbeat-sized ones with unknown key ids, and others whose first
//! byte has QUIC's fixed bit clear. Every heartbeat must arrive: none may be lost behind
//! the garbage. Arrivals are counted by the sequence number each heartbeat carries.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use transport::heartbeat::{LinkKeys, Twin, LEN, MARKER};
use transport::{DeviceId, Endpoint, EndpointConfig, Identity, Roster};

/// Garbage datagrams per second, to each of the two ports.
const RATE: u64 = 20_000;
/// Heartbeats sent each way.
const BEATS: u64 = 150;
/// Heartbeats sent between two reads of the heartbeat socket.
const BEATS_PER_READ: u64 = 5;
const BEAT_EVERY: Duration = Duration::from_millis(20);
const DEADLINE: Duration = Duration::from_secs(20);

fn endpoint(id: &Arc<Identity>, peer: &Arc<Identity>) -> Endpoint {
    let roster = Roster::new();
    roster.insert(peer.id);
    Endpoint::bind(id.clone(), roster, EndpointConfig::for_test()).unwrap()
}

/// A small xorshift generator: the garbage needs no quality, only variety and speed.
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

    /// One garbage datagram of kind `i % 4` into `buf`; returns its length.
    fn datagram(&mut self, i: u64, buf: &mut [u8; 128]) -> usize {
        self.fill(buf);
        match i % 4 {
            // The heartbeat marker, any other length.
            0 => {
                buf[0] = MARKER;
                let mut len = 1 + (self.next() % 100) as usize;
                if len == LEN {
                    len += 1;
                }
                len
            }
            // Heartbeat-shaped: marker, right length, unknown key id, random rest.
            1 | 2 => {
                buf[0] = MARKER;
                LEN
            }
            // Anything whose first byte has QUIC's fixed bit clear, any length.
            _ => {
                buf[0] &= !0x40;
                1 + (self.next() % 127) as usize
            }
        }
    }
}

/// Sends garbage to every `target` at [`RATE`] each until `stop`; counts what it sent.
fn flood(targets: Vec<SocketAddr>, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let mut buf = [0u8; 128];
    let start = Instant::now();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // Pace by elapsed time: whatever a late wake-up owes is sent at once.
        let due = (start.elapsed().as_micros() as u64 * RATE / 1_000_000) * targets.len() as u64;
        while i < due {
            let len = noise.datagram(i / targets.len() as u64, &mut buf);
            let to = targets[(i % targets.len() as u64) as usize];
            if socket.send_to(&buf[..len], to).is_ok() {
                sent.fetch_add(1, Ordering::Relaxed);
            }
            i += 1;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// One direction of heartbeats: the sender's twin, where to and with which keys; the
/// receiver's twin and keys, and the sequence numbers it has opened so far.
struct Direction {
    from: Arc<Twin>,
    to: SocketAddr,
    tx: Arc<LinkKeys>,
    at: Arc<Twin>,
    rx: Arc<LinkKeys>,
    got: Vec<bool>,
}

impl Direction {
    fn new(sender: &Endpoint, receiver: &Endpoint, receiver_id: DeviceId) -> Result<Self> {
        let (to, tx) = sender
            .heartbeat_target(&receiver_id)
            .ok_or_else(|| anyhow::anyhow!("no heartbeat keys on the sending side"))?;
        let rx = receiver
            .connection(&sender.id())
            .and_then(|pc| pc.heartbeat)
            .ok_or_else(|| anyhow::anyhow!("no heartbeat keys on the receiving side"))?;
        Ok(Direction {
            from: sender.twin().unwrap().clone(),
            to,
            tx,
            at: receiver.twin().unwrap().clone(),
            rx,
            got: vec![false; BEATS as usize + 1],
        })
    }

    fn beat(&self, seq: u64) {
        assert_eq!(self.from.send_all(&[(self.to, self.tx.seal(Some(seq)))]), 1);
    }

    /// Reads the receiver's twin as the daemon does: what opens with the link's keys is a
    /// heartbeat, anything else is rejected.
    fn read(&mut self) {
        let (rx, got) = (&self.rx, &mut self.got);
        let (mut ok, mut bad) = (0, 0);
        self.at.drain(Instant::now(), |pkt, _| match rx.open(pkt) {
            Some(Some(seq)) if (seq as usize) < got.len() => {
                got[seq as usize] = true;
                ok += 1;
            }
            _ => bad += 1,
        });
        self.at.stats.received.fetch_add(ok, Ordering::Relaxed);
        self.at.stats.rejected.fetch_add(bad, Ordering::Relaxed);
    }

    fn lost(&self) -> u64 {
        self.got[1..].iter().filter(|g| !**g).count() as u64
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_are_not_lost_behind_a_flood_of_garbage() -> Result<()> {
    let (a, b) = (
        Arc::new(Identity::generate("a")?),
        Arc::new(Identity::generate("b")?),
    );
    let (ea, eb) = (endpoint(&a, &b), endpoint(&b, &a));
    ensure!(
        ea.twin().is_some() && eb.twin().is_some(),
        "heartbeat sockets"
    );
    ea.connect(b.id, &[eb.local_addrs()[0]]).await?;
    let start = Instant::now();
    while eb.connection(&a.id).is_none() {
        if start.elapsed() > DEADLINE {
            bail!("b never saw a");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut dirs = [
        Direction::new(&ea, &eb, b.id)?,
        Direction::new(&eb, &ea, a.id)?,
    ];

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flooder = {
        let targets = vec![ea.local_addrs()[0], eb.local_addrs()[0]];
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || flood(targets, stop, sent))
    };
    let flood_start = Instant::now();
    for seq in 1..=BEATS {
        for d in &dirs {
            d.beat(seq);
        }
        if seq % BEATS_PER_READ == 0 {
            for d in &mut dirs {
                d.read();
            }
        }
        tokio::time::sleep(BEAT_EVERY).await;
    }
    stop.store(true, Ordering::Relaxed);
    flooder.join().unwrap();
    let flood_time = flood_start.elapsed();
    // What arrived before the flood stopped is still queued: read it all.
    let start = Instant::now();
    while dirs.iter().any(|d| d.lost() > 0) && start.elapsed() < DEADLINE {
        for d in &mut dirs {
            d.read();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let garbage = sent.load(Ordering::Relaxed);
    let lost: Vec<u64> = dirs.iter().map(Direction::lost).collect();
    for (name, ep) in [("a", &ea), ("b", &eb)] {
        let t = ep.twin().unwrap();
        eprintln!(
            "{name}: heartbeat socket read {} heartbeats, rejected {}, kernel dropped {}",
            t.stats.received.load(Ordering::Relaxed),
            t.stats.rejected.load(Ordering::Relaxed),
            t.dropped(),
        );
    }
    eprintln!(
        "garbage: {garbage} datagrams in {flood_time:.2?} ({:.0}/s to each port); heartbeats lost: a->b {}, b->a {} of {BEATS} each",
        garbage as f64 / flood_time.as_secs_f64() / 2.0,
        lost[0],
        lost[1],
    );
    // The flood really ran at (close to) its rate while the heartbeats were sent: at least
    // one read interval's worth of garbage per read, far more than the heartbeat
    // socket's receive buffer can hold.
    ensure!(
        garbage >= BEATS / BEATS_PER_READ * 2 * 1000,
        "the flood did not run: {garbage} datagrams"
    );
    ensure!(
        lost == [0, 0],
        "heartbeats lost behind the garbage: {lost:?}"
    );
    Ok(())
}

/// The id of `ep`'s connection to `peer` once there is one other than `old`.
async fn new_connection(ep: &Endpoint, peer: DeviceId, old: Option<usize>) -> Result<usize> {
    let start = Instant::now();
    loop {
        match ep.connection(&peer) {
            Some(c) if Some(c.conn.stable_id()) != old => return Ok(c.conn.stable_id()),
            _ if start.elapsed() > DEADLINE => bail!("no new connection to {peer}"),
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// The filter follows the connections: the heartbeats of a connection that went away are
/// dropped by the kernel, those of its replacement come through.
#[tokio::test]
async fn the_filter_follows_the_connections() -> Result<()> {
    let (a, b) = (
        Arc::new(Identity::generate("a")?),
        Arc::new(Identity::generate("b")?),
    );
    let (ea, eb) = (endpoint(&a, &b), endpoint(&b, &a));
    let to = eb.local_addrs()[0];
    let first = ea.connect(b.id, &[to]).await?;
    let first_id = new_connection(&eb, a.id, None).await?;
    let old = Direction::new(&ea, &eb, b.id)?;
    first.conn.close(0u32.into(), b"bye");
    let start = Instant::now();
    while eb.connection(&a.id).is_some() {
        ensure!(start.elapsed() < DEADLINE, "b kept the closed connection");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let dropped = eb.twin().unwrap().dropped();
    old.beat(1);
    ea.connect(b.id, &[to]).await?;
    new_connection(&eb, a.id, Some(first_id)).await?;
    let new = Direction::new(&ea, &eb, b.id)?;
    new.beat(1);
    let (mut old_came, mut new_came) = (false, false);
    let start = Instant::now();
    while !new_came && start.elapsed() < DEADLINE {
        eb.twin().unwrap().drain(Instant::now(), |pkt, _| {
            old_came |= old.rx.open(pkt).is_some();
            new_came |= new.rx.open(pkt).is_some();
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ensure!(
        new_came,
        "the new connection's heartbeat did not come through"
    );
    ensure!(!old_came, "the closed connection's heartbeat came through");
    ensure!(
        eb.twin().unwrap().dropped() > dropped,
        "the kernel did not drop the closed connection's heartbeat"
    );
    Ok(())
}
