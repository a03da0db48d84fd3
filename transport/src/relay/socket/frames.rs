//! Relayed datagrams mixed with others in what the socket received.

use std::io::IoSliceMut;
use std::net::SocketAddr;

use quinn::udp::RecvMeta;

use crate::relay::member::FORWARD;
use crate::relay::MARKER;

/// Takes the relayed datagrams out of `n` received entries: each one that `take(source,
/// datagram)` consumes is removed (GRO may have put several datagrams in one entry, at
/// `stride` intervals), and the rest is moved together. Returns how many entries remain.
pub fn take_frames(
    bufs: &mut [IoSliceMut<'_>],
    meta: &mut [RecvMeta],
    n: usize,
    mut take: impl FnMut(SocketAddr, &[u8]) -> bool,
) -> usize {
    let mut out = 0;
    for i in 0..n {
        let m = meta[i];
        let stride = stride_of(&m);
        let mut len = m.len;
        if holds(&bufs[i], &m, |b| matches!(b, MARKER | FORWARD)) {
            // Keep the segments not taken, in order, at the front of the buffer; only the
            // last one may be short, as before.
            let mut kept = 0;
            let mut at = 0;
            while at < m.len {
                let end = (at + stride).min(m.len);
                let consumed =
                    matches!(bufs[i][at], MARKER | FORWARD) && take(m.addr, &bufs[i][at..end]);
                if !consumed {
                    bufs[i].copy_within(at..end, kept);
                    kept += end - at;
                }
                at = end;
            }
            len = kept;
        }
        if len == 0 {
            continue;
        }
        if out != i {
            let (front, back) = bufs.split_at_mut(i);
            front[out][..len].copy_from_slice(&back[0][..len]);
        }
        meta[out] = RecvMeta { len, ..m };
        out += 1;
    }
    out
}

/// Whether a datagram of the entry `m` in `buf` starts with a byte that `first` picks.
pub(super) fn holds(buf: &[u8], m: &RecvMeta, first: impl Fn(u8) -> bool) -> bool {
    let stride = stride_of(m);
    stride > 0 && (0..m.len).step_by(stride).any(|at| first(buf[at]))
}

/// The size of an entry's datagrams (the last maybe shorter): its GRO stride, or its
/// length when it holds one datagram.
pub(super) fn stride_of(m: &RecvMeta) -> usize {
    if m.stride == 0 {
        m.len
    } else {
        m.stride
    }
}
