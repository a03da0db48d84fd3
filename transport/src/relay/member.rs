//! Members relaying for each other: the same datagrams as through `cnspr relay`, passed
//! on by a member that both ends reach directly.
//!
//! A device whose peer is reachable only through a member (`indirect`) sends its QUIC
//! packets for that peer to the member as `FORWARD | peer ID (32) | packet`. The member
//! takes them only from the address of a member it is connected to directly (that
//! connection's TLS proved who sends from there), and only for another such member; it
//! rewrites the header in place to `MARKER | sender ID | packet` and sends the datagrams
//! on to the peer's address, the entries read in one wake-up for one peer joined into
//! as few segmented sends as [`join`] allows (a sender's burst often arrives as several
//! entries). The peer's socket takes relayed
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

/// Most bytes in one segmented send (UDP's 64 KiB, less headers, rounded down).
pub const SEND_BYTES: usize = 65_000;

/// One received entry to pass on: to `to` (as the socket writes it), `len` bytes in
/// datagrams of `stride` bytes, the last maybe shorter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub to: SocketAddr,
    pub stride: usize,
    pub len: usize,
}

/// The sends for the entries passed on in one wake-up. A sender's burst often arrives as
/// several entries read at once (quinn hands the socket at most ten datagrams a send),
/// and each system call and each packet buffer the network stack handles costs the
/// member more than the bytes in it: entries for one address whose datagrams have one
/// size leave together while every entry but the last ends on a whole datagram (a
/// segmented send has equal datagrams, the last maybe shorter; a lone datagram no
/// larger than the others may end it) and the send stays within `max_segments`
/// datagrams and `max_bytes`. Returns runs of indices into `passes`; what goes to one
/// address keeps its order (a reordered QUIC packet can be taken for lost).
pub fn join(passes: &[Pass], max_segments: usize, max_bytes: usize) -> Vec<Vec<usize>> {
    let mut done: Vec<Vec<usize>> = Vec::new();
    // Runs still open, with their length in bytes.
    let mut open: Vec<(Vec<usize>, usize)> = Vec::new();
    for (i, p) in passes.iter().enumerate() {
        if let Some(k) = open.iter().position(|(run, _)| passes[run[0]].to == p.to) {
            let len = open[k].1;
            let stride = passes[open[k].0[0]].stride;
            let lone = p.len <= p.stride && p.len <= stride;
            let fits = (stride == p.stride || lone)
                && len % stride == 0
                && len + p.len <= max_bytes
                && (len + p.len).div_ceil(stride) <= max_segments;
            if fits {
                open[k].0.push(i);
                open[k].1 += p.len;
                continue;
            }
            done.push(open.remove(k).0);
        }
        open.push((vec![i], p.len));
    }
    done.extend(open.into_iter().map(|(run, _)| run));
    done
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

    fn pass(to: u16, stride: usize, len: usize) -> Pass {
        Pass {
            to: SocketAddr::from(([192, 0, 2, 1], to)),
            stride,
            len,
        }
    }

    #[test]
    fn entries_of_a_burst_leave_in_one_send_within_its_bounds() {
        // Two full entries and a short one for one address: one send.
        let p = [pass(1, 100, 1000), pass(1, 100, 1000), pass(1, 100, 950)];
        assert_eq!(join(&p, 64, SEND_BYTES), vec![vec![0, 1, 2]]);
        // At 25 datagrams a send, the third entry starts a second one.
        assert_eq!(join(&p, 25, SEND_BYTES), vec![vec![0, 1], vec![2]]);
        // Likewise at 2,500 bytes.
        assert_eq!(join(&p, 64, 2500), vec![vec![0, 1], vec![2]]);
    }

    #[test]
    fn only_whole_datagrams_of_one_size_for_one_address_join() {
        // After a short last datagram nothing joins; its address's order is kept.
        let p = [pass(1, 100, 950), pass(1, 100, 1000), pass(1, 100, 1000)];
        assert_eq!(join(&p, 64, SEND_BYTES), vec![vec![0], vec![1, 2]]);
        // An entry of another size ends its address's run (the order of what goes to
        // one address is kept); an entry for another address in between does not.
        let p = [
            pass(1, 100, 1000),
            pass(2, 100, 1000),
            pass(1, 90, 900),
            pass(1, 100, 1000),
            pass(2, 100, 60),
            pass(1, 100, 1000),
        ];
        assert_eq!(
            join(&p, 64, SEND_BYTES),
            vec![vec![0], vec![2], vec![1, 4], vec![3, 5]]
        );
        // A lone shorter datagram ends a run; a lone longer one starts the next.
        let p = [pass(1, 100, 1000), pass(1, 40, 40), pass(1, 100, 100)];
        assert_eq!(join(&p, 64, SEND_BYTES), vec![vec![0, 1], vec![2]]);
        let p = [
            pass(1, 60, 60),
            pass(1, 60, 60),
            pass(1, 55, 55),
            pass(1, 70, 70),
        ];
        assert_eq!(join(&p, 64, SEND_BYTES), vec![vec![0, 1, 2], vec![3]]);
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
