//! Transport benchmark: two processes on loopback.
//!
//! Prints, in one run: throughput of one cnspr transport stream, of a bare quinn ChaCha20
//! stream with quinn's default settings (same TLS configuration), of plain TCP, and the
//! median time of 50 connection set-ups (QUIC handshake plus the hello round trip).
//! `CNSPR_BENCH_BYTES` overrides the 2 GiB transfer size.
//!
//! By default both processes are on loopback. With `CNSPR_BENCH_SERVER_NETNS=NS` and
//! `CNSPR_BENCH_SERVER_IP=ADDR` the servers run in network namespace NS (`ip netns exec`,
//! needs root) bound to ADDR, and the client, bound to `CNSPR_BENCH_CLIENT_IP` (default
//! the unspecified address), reaches them over whatever link joins the two: the link a
//! benchmark of the daemons uses (`bench/streams.sh`).
//!
//! Run: `cargo bench -p transport --bench transport`

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use transport::{quinn, tls, Endpoint, EndpointConfig, Identity, Roster, StreamKind};

const ROLE: &str = "CNSPR_BENCH_ROLE";
const CLIENT_ID: &str = "CNSPR_BENCH_CLIENT_KEY";
const CHUNK: usize = 1 << 20;

/// The address the servers bind (port 0): `CNSPR_BENCH_SERVER_IP`, else loopback.
fn server_ip() -> std::net::IpAddr {
    std::env::var("CNSPR_BENCH_SERVER_IP")
        .ok()
        .map(|s| s.parse().expect("CNSPR_BENCH_SERVER_IP: an IP address"))
        .unwrap_or([127, 0, 0, 1].into())
}

/// The address the client binds (port 0): `CNSPR_BENCH_CLIENT_IP`, else loopback when
/// the servers are on loopback and the unspecified address when they are not.
fn client_ip() -> std::net::IpAddr {
    match std::env::var("CNSPR_BENCH_CLIENT_IP") {
        Ok(s) => s.parse().expect("CNSPR_BENCH_CLIENT_IP: an IP address"),
        Err(_) if server_ip().is_loopback() => [127, 0, 0, 1].into(),
        Err(_) => [0, 0, 0, 0].into(),
    }
}

fn bytes_to_send() -> u64 {
    std::env::var("CNSPR_BENCH_BYTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2 << 30)
}

/// Reads a whole stream, then answers with the byte count.
async fn sink<R, W>(mut recv: R, mut send: W) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = recv.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    send.write_all(&total.to_be_bytes()).await?;
    send.shutdown().await?;
    Ok(())
}

/// Sends `n` bytes, then waits for the peer's count; returns the elapsed time.
async fn source<R, W>(mut recv: R, mut send: W, n: u64) -> std::io::Result<Duration>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let buf = vec![0x5au8; CHUNK];
    let start = Instant::now();
    let mut left = n;
    while left > 0 {
        let k = left.min(CHUNK as u64) as usize;
        send.write_all(&buf[..k]).await?;
        left -= k as u64;
    }
    send.shutdown().await?;
    let mut count = [0u8; 8];
    recv.read_exact(&mut count).await?;
    let elapsed = start.elapsed();
    assert_eq!(
        u64::from_be_bytes(count),
        n,
        "peer received a different byte count"
    );
    Ok(elapsed)
}

async fn serve(role: &str) {
    let client_id = std::env::var(CLIENT_ID).expect("client id");
    let id = Arc::new(Identity::generate("bench-server").unwrap());
    let roster = Roster::new();
    roster.insert(client_id.parse().unwrap());
    match role {
        "cnspr" => {
            let cfg = EndpointConfig {
                listen: vec![SocketAddr::new(server_ip(), 0)],
                ..EndpointConfig::for_test()
            };
            let ep = Endpoint::bind(id.clone(), roster, cfg).unwrap();
            println!("{} {}", id.id, ep.local_addrs()[0]);
            let mut incoming = ep.take_incoming().unwrap();
            while let Some(s) = incoming.recv().await {
                tokio::spawn(sink(s.recv, s.send));
            }
        }
        "bare" => {
            let cfg =
                tls::rustls_server_config(&id, &roster, Arc::new(tls::chacha_provider())).unwrap();
            let server = quinn::ServerConfig::with_crypto(tls::quic_server(cfg).unwrap());
            let ep = quinn::Endpoint::server(server, SocketAddr::new(server_ip(), 0)).unwrap();
            println!("{} {}", id.id, ep.local_addr().unwrap());
            while let Some(inc) = ep.accept().await {
                tokio::spawn(async move {
                    let conn = inc.await.unwrap();
                    while let Ok((send, recv)) = conn.accept_bi().await {
                        tokio::spawn(sink(recv, send));
                    }
                });
            }
        }
        "tcp" => {
            let l = tokio::net::TcpListener::bind(SocketAddr::new(server_ip(), 0))
                .await
                .unwrap();
            println!("{} {}", id.id, l.local_addr().unwrap());
            while let Ok((s, _)) = l.accept().await {
                let (r, w) = s.into_split();
                tokio::spawn(sink(r, w));
            }
        }
        other => panic!("unknown role {other}"),
    }
}

fn spawn_server(role: &str, client: &Identity) -> (Child, transport::DeviceId, SocketAddr) {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = match std::env::var("CNSPR_BENCH_SERVER_NETNS") {
        Ok(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns]).arg(exe);
            c
        }
        Err(_) => Command::new(exe),
    };
    let mut child = cmd
        .env(ROLE, role)
        .env(CLIENT_ID, client.id.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn server process");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mut parts = line.split_whitespace();
    let id = parts.next().unwrap().parse().unwrap();
    let addr = parts.next().unwrap().parse().unwrap();
    (child, id, addr)
}

fn mbps(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64() / 1e6
}

#[tokio::main]
async fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        serve(&role).await;
        return;
    }
    let n = bytes_to_send();
    let me = Arc::new(Identity::generate("bench-client").unwrap());
    let link = match std::env::var("CNSPR_BENCH_SERVER_NETNS") {
        Ok(ns) => format!("to {} in network namespace {ns}", server_ip()),
        Err(_) => "loopback".to_string(),
    };
    println!(
        "cnspr transport benchmark: {} MiB per stream, {link}, two processes",
        n >> 20
    );

    // cnspr transport stream.
    let (mut child, sid, saddr) = spawn_server("cnspr", &me);
    let roster = Roster::new();
    roster.insert(sid);
    let cfg = EndpointConfig {
        listen: vec![SocketAddr::new(client_ip(), 0)],
        ..EndpointConfig::for_test()
    };
    let ep = Endpoint::bind(me.clone(), roster.clone(), cfg).unwrap();
    let pc = ep.connect(sid, &[saddr]).await.unwrap();
    let (send, recv) = pc.open(StreamKind::App).await.unwrap();
    let t_cnspr = source(recv, send, n).await.unwrap();
    let cnspr = mbps(n, t_cnspr);
    let lost = pc.stats().path.lost_packets;
    // Handshake: connection set-up until up (QUIC handshake + hello), 50 times.
    let mut times = Vec::new();
    for _ in 0..50 {
        if let Some(c) = ep.connection(&sid) {
            c.conn.close(0u32.into(), b"again");
        }
        let start = Instant::now();
        ep.connect(sid, &[saddr]).await.unwrap();
        times.push(start.elapsed());
    }
    times.sort();
    let handshake = times[times.len() / 2];
    ep.shutdown(1, "done", Duration::from_secs(1)).await;
    let _ = child.kill();

    // Bare quinn with default settings and the same TLS configuration.
    let (mut child, sid, saddr) = spawn_server("bare", &me);
    roster.insert(sid);
    let ccfg =
        tls::rustls_client_config(&me, &roster, sid, Arc::new(tls::chacha_provider())).unwrap();
    let q = quinn::Endpoint::client(SocketAddr::new(client_ip(), 0)).unwrap();
    let client = quinn::ClientConfig::new(tls::quic_client(ccfg).unwrap());
    let conn = q
        .connect_with(client, saddr, tls::SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    let (send, recv) = conn.open_bi().await.unwrap();
    let t_bare = source(recv, send, n).await.unwrap();
    let bare = mbps(n, t_bare);
    conn.close(0u32.into(), b"done");
    let _ = child.kill();

    // Plain TCP.
    let (mut child, _, saddr) = spawn_server("tcp", &me);
    let s = tokio::net::TcpStream::connect(saddr).await.unwrap();
    let (r, w) = s.into_split();
    let t_tcp = source(r, w, n).await.unwrap();
    let tcp = mbps(n, t_tcp);
    let _ = child.kill();

    println!("transport stream   {cnspr:8.1} MB/s  ({:.0}% of bare quinn; target >= 110%; {lost} packets lost)", 100.0 * cnspr / bare);
    println!("bare quinn stream  {bare:8.1} MB/s  (baseline: quinn defaults, ChaCha20-Poly1305)");
    println!(
        "TCP stream         {tcp:8.1} MB/s  (transport = {:.0}% of TCP)",
        100.0 * cnspr / tcp
    );
    println!(
        "handshake median   {:8.3} ms   (p10 {:.3} ms, p90 {:.3} ms, n=50; target < 3 ms)",
        handshake.as_secs_f64() * 1e3,
        times[5].as_secs_f64() * 1e3,
        times[45].as_secs_f64() * 1e3
    );
}
