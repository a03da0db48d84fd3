//! What the window's and the joiner's tasks share: pairing messages on the QUIC stream,
//! this device's introduction, and the peer address a pairing teaches.

use std::net::{SocketAddr, SocketAddrV6};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngCore;
use transport::frame::{read_frame, write_frame, MAX_CONTROL_FRAME};
use transport::pairing;
use transport::quinn::{Connection, RecvStream, SendStream};
use transport::DeviceId;

use super::error::PairError;
use super::handshake::{Me, Session};
use crate::daemon::context::Daemon;
use crate::daemon::wire::PairMsg;

/// How long a side that ended an attempt waits for the other to close the connection
/// (so its last message is delivered before the connection goes).
const LAST_WORD: Duration = Duration::from_secs(1);

/// The next message; the stream ending is an error.
pub async fn read(recv: &mut RecvStream) -> Result<PairMsg, PairError> {
    read_frame::<PairMsg, _>(recv, MAX_CONTROL_FRAME)
        .await?
        .ok_or(PairError::Ended)
}

pub async fn write(send: &mut SendStream, msg: &PairMsg) -> Result<(), PairError> {
    Ok(write_frame(send, msg, MAX_CONTROL_FRAME).await?)
}

/// Sends a last message (a `Fail`) and lets the other side close; within about
/// 2 × [`LAST_WORD`] whatever the other side does (it may hold back flow control).
pub async fn last_word(conn: &Connection, send: &mut SendStream, msg: &PairMsg) {
    let _ = tokio::time::timeout(LAST_WORD, write(send, msg)).await;
    let _ = send.finish();
    let _ = tokio::time::timeout(LAST_WORD, conn.closed()).await;
}

/// Who is at the other end of a pairing connection, bound to its TLS session.
pub fn session(conn: &Connection) -> Result<Session, PairError> {
    match (pairing::peer_id(conn), pairing::channel_binding(conn)) {
        (Some(peer), Some(binding)) => Ok(Session { peer, binding }),
        _ => Err(PairError::NoCertificate),
    }
}

pub fn me(d: &Daemon) -> Me {
    Me {
        id: d.id(),
        name: d.identity.name.clone(),
        port: d.endpoint.local_addrs().first().map_or(0, SocketAddr::port),
    }
}

pub fn nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut n);
    n
}

/// The other device's main endpoint: the pairing connection's address with the port it
/// gave (an IPv6 link-local address keeps its zone, without which it cannot be dialled).
pub fn main_addr(remote: SocketAddr, port: u16) -> SocketAddr {
    match remote {
        SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_none() => {
            SocketAddr::V6(SocketAddrV6::new(*v6.ip(), port, 0, v6.scope_id()))
        }
        other => SocketAddr::new(other.ip().to_canonical(), port),
    }
}

/// The new member's main endpoint is at `addr`: remember it and dial it now.
pub fn remember(d: &Arc<Daemon>, id: DeviceId, addr: SocketAddr, forget_backoff: bool) {
    if let Some(p) = d.peers().peers.get_mut(&id) {
        p.remember(addr);
        if forget_backoff {
            p.dial.reset(Instant::now());
        } else {
            p.dial.soon(Instant::now());
        }
    }
    d.save_peers();
    crate::daemon::links::dial_due(d);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_main_address_keeps_a_link_local_zone() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            main_addr(a("[fe80::1%3]:4000"), 7373),
            a("[fe80::1%3]:7373")
        );
        assert_eq!(
            main_addr(a("[::ffff:10.0.0.1]:4000"), 7373),
            a("10.0.0.1:7373")
        );
        assert_eq!(main_addr(a("10.0.0.1:4000"), 7373), a("10.0.0.1:7373"));
        assert_eq!(
            main_addr(a("[2001:db8::1]:4000"), 7373),
            a("[2001:db8::1]:7373")
        );
    }
}
