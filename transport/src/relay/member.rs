//! Members relaying for each other: the same datagrams as through `cnspr relay`, passed
//! on by a member that both ends reach directly.
//!
//! A device whose peer is reachable only through a member (`indirect`) sends its QUIC
//! packets for that peer to the member as `FORWARD | peer ID (32) | packet`. The member
//! takes them only from the address of a member it is connected to directly (that
//! connection's TLS proved who sends from there), and only for another such member; it
//! rewrites the header in place to `MARKER | sender ID | packet` and sends the datagrams
//! on to the peer's address in one system call, as they came (a burst that arrived in
//! one GRO entry leaves as one segmented send). The peer's socket takes relayed
//! datagrams from the addresses of its directly connected members as from a relay, so
//! the two devices keep one QUIC connection of their own, end to end, whose packets the
//! member passes on without decrypting them: far cheaper for it than joining two streams
//! (`src/daemon/relay_stream.rs`), which decrypts and encrypts every byte.
//!
//! What a member can do with this is what it could do anyway: send packets to another
//! member. The packets' TLS is pinned to the roster, so a forged sender ID at worst makes
//! a handshake fail.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::{canonical, HEADER, MARKER};
use crate::id::DeviceId;

/// First byte of a datagram a member is asked to pass on: QUIC's fixed bit clear, not a
/// heartbeat (0x21), not a relayed datagram ([`MARKER`]).
pub const FORWARD: u8 = 0x23;

/// The members this device is connected to directly, both ways.
#[derive(Debug, Default)]
pub struct Members {
    by_addr: HashMap<SocketAddr, DeviceId>,
    by_id: HashMap<DeviceId, SocketAddr>,
}

impl Members {
    /// Replaces the list (addresses as the connections see them).
    pub fn set(&mut self, list: impl IntoIterator<Item = (DeviceId, SocketAddr)>) {
        self.by_addr.clear();
        self.by_id.clear();
        for (id, addr) in list {
            let addr = canonical(addr);
            if super::is_virtual(&addr) {
                continue;
            }
            self.by_addr.insert(addr, id);
            self.by_id.insert(id, addr);
        }
    }

    pub fn at(&self, addr: &SocketAddr) -> Option<DeviceId> {
        self.by_addr.get(&canonical(*addr)).copied()
    }

    pub fn addr_of(&self, id: &DeviceId) -> Option<SocketAddr> {
        self.by_id.get(id).copied()
    }
}

/// The device ID in the header of every datagram of an entry of `len` bytes (datagrams of
/// `stride` bytes, the last maybe shorter) when all start with `marker` and name the
/// same device and carry something after the header; `None` otherwise.
pub fn one_header(buf: &[u8], len: usize, stride: usize, marker: u8) -> Option<DeviceId> {
    if stride <= HEADER || len <= HEADER || len > buf.len() || buf[0] != marker {
        return None;
    }
    let id = &buf[1..HEADER];
    (0..len)
        .step_by(stride)
        .all(|at| len - at > HEADER && buf[at] == marker && buf[at + 1..at + HEADER] == *id)
        .then(|| {
            let mut out = [0u8; 32];
            out.copy_from_slice(id);
            DeviceId(out)
        })
}

/// Rewrites in place an entry of `len` bytes (datagrams of `stride` bytes, the last maybe
/// shorter) that member `from` asks this device to pass on: every datagram must be
/// `FORWARD | target | packet` with the same target, and becomes `MARKER | from |
/// packet`. Returns the target; `None`, with nothing changed, for anything else.
pub fn rewrite(buf: &mut [u8], len: usize, stride: usize, from: &DeviceId) -> Option<DeviceId> {
    let target = one_header(buf, len, stride, FORWARD)?;
    for at in (0..len).step_by(stride) {
        buf[at] = MARKER;
        buf[at + 1..at + HEADER].copy_from_slice(&from.0);
    }
    Some(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(target: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![FORWARD];
        v.extend_from_slice(&[target; 32]);
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn a_burst_for_one_target_is_rewritten_in_place() {
        let mut buf = frame(7, &[1; 20]);
        buf.extend(frame(7, &[2; 20]));
        buf.extend(frame(7, &[3; 5]));
        let len = buf.len();
        let from = DeviceId([9; 32]);
        assert_eq!(rewrite(&mut buf, len, 53, &from), Some(DeviceId([7; 32])));
        for (i, at) in [0, 53, 106].into_iter().enumerate() {
            assert_eq!(buf[at], MARKER);
            assert_eq!(&buf[at + 1..at + HEADER], &[9; 32]);
            assert_eq!(buf[at + HEADER], i as u8 + 1);
        }
    }

    #[test]
    fn mixed_or_short_entries_are_left_alone() {
        let mut two = frame(7, &[1; 20]);
        two.extend(frame(8, &[2; 20]));
        let before = two.clone();
        let len = two.len();
        assert_eq!(rewrite(&mut two, len, 53, &DeviceId([9; 32])), None);
        assert_eq!(two, before);
        let mut bare = frame(7, &[]);
        assert_eq!(rewrite(&mut bare, 33, 33, &DeviceId([9; 32])), None);
        let mut quic = vec![0x40; 60];
        assert_eq!(rewrite(&mut quic, 60, 60, &DeviceId([9; 32])), None);
    }

    #[test]
    fn only_direct_members_are_listed() {
        let mut m = Members::default();
        let a = DeviceId([1; 32]);
        let v = super::super::virtual_addr(&DeviceId([2; 32]), true);
        m.set([
            (a, "[::ffff:203.0.113.5]:7373".parse().unwrap()),
            (DeviceId([2; 32]), v),
        ]);
        assert_eq!(m.at(&"203.0.113.5:7373".parse().unwrap()), Some(a));
        assert_eq!(m.addr_of(&DeviceId([2; 32])), None);
    }
}
