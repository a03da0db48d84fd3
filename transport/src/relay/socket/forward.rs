//! Passing on what members ask this device to forward (`member.rs`): each entry checked
//! and rewritten in place, then the entries of one wake-up sent in as few system calls as
//! [`member::join`] allows.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use quinn::udp::{RecvMeta, Transmit};

use super::frames::{stride_of, take_frames};
use super::{lock, member, RelaySocket, FORWARD, MAX_DATAGRAM};

impl RelaySocket {
    /// An entry of datagrams a member asks us to pass on (`member.rs`), all for one
    /// target: rewritten in place and used up (length 0); returns where they go. An
    /// entry that is anything else, or not from a member, is left as it is. Datagrams
    /// larger than a relayed one can be ([`MAX_DATAGRAM`]; what the member's sender
    /// writes, `send_relayed`, never is) are used up and passed on to nobody: a
    /// segmented send of them would exceed the path's MTU, and the kernel's refusal
    /// (EINVAL) turns off segmented sends on this socket for good.
    pub(super) fn forward_target(&self, buf: &mut [u8], m: &mut RecvMeta) -> Option<member::Pass> {
        let relays = &self.relays;
        let stride = stride_of(m);
        let from = lock(&relays.members).at(&m.addr)?;
        let len = m.len;
        if stride > MAX_DATAGRAM {
            m.len = 0;
            relays.stats.unroutable.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let target = member::rewrite(buf, len, stride, &from)?;
        m.len = 0;
        // Only to another member connected directly.
        let to = (target != from)
            .then(|| lock(&relays.members).addr_of(&target))
            .flatten();
        let Some(to) = to else {
            relays.stats.unroutable.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        Some(member::Pass {
            to: crate::relay::socket_form(to, relays.v6),
            stride,
            len,
        })
    }

    /// Passes on, one by one, the datagrams of the entry `meta[0]` in `bufs[0]` that ask
    /// for it (first byte [`FORWARD`]; those that may not be passed on are dropped): what
    /// a GRO entry holds beside other datagrams, or for several targets. The rest stays,
    /// moved together; an entry left empty gets length 0.
    pub(super) fn forward_each(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) {
        let kept = take_frames(bufs, meta, 1, |from, frame| {
            if frame[0] != FORWARD {
                return false;
            }
            let mut one = frame.to_vec();
            let mut m = RecvMeta {
                addr: from,
                len: one.len(),
                stride: one.len(),
                ecn: None,
                dst_ip: None,
            };
            if let Some(pass) = self.forward_target(&mut one, &mut m) {
                self.send_on(pass, &one);
            }
            true
        });
        if kept == 0 {
            meta[0].len = 0;
        }
    }

    /// Sends the entries `passes`, the one at `bufs[at[k]]` for `passes[k]`, in as few
    /// system calls as [`member::join`] allows.
    pub(super) fn pass_on(&self, bufs: &[IoSliceMut<'_>], at: &[usize], passes: &[member::Pass]) {
        let max_segments = self.inner.max_transmit_segments();
        for run in member::join(passes, max_segments, member::SEND_BYTES) {
            let pass = passes[run[0]];
            if run.len() == 1 {
                self.send_on(pass, &bufs[at[run[0]]][..pass.len]);
                continue;
            }
            let mut joined = lock(&self.joined);
            joined.clear();
            for &k in &run {
                joined.extend_from_slice(&bufs[at[k]][..passes[k].len]);
            }
            let len = joined.len();
            self.send_on(member::Pass { len, ..pass }, &joined);
        }
    }

    /// How many datagrams of `stride` bytes go in one segmented send of at most
    /// `max_bytes`: as many as the socket segments, at least one.
    pub(super) fn per_send(&self, stride: usize, max_bytes: usize) -> usize {
        self.inner
            .max_transmit_segments()
            .min(max_bytes / stride)
            .max(1)
    }

    /// Sends datagrams of `pass.stride` bytes (the last maybe shorter) to `pass.to` in
    /// as few system calls as the socket allows. A full socket buffer loses them, as the
    /// network would.
    pub(super) fn send_on(&self, pass: member::Pass, bytes: &[u8]) {
        let forwarded = &self.relays.stats.forwarded;
        let _ = self.send_segmented(pass.to, pass.stride, bytes, forwarded);
    }

    /// Sends `bytes`, datagrams of `stride` bytes (the last maybe shorter), to `to` in
    /// segmented sends of at most [`member::SEND_BYTES`], adding to `count` the
    /// datagrams of each send that went; stops at the first error.
    pub(super) fn send_segmented(
        &self,
        to: SocketAddr,
        stride: usize,
        bytes: &[u8],
        count: &AtomicU64,
    ) -> io::Result<()> {
        let per_call = self.per_send(stride, member::SEND_BYTES);
        for group in bytes.chunks(stride * per_call) {
            let n = group.len().div_ceil(stride);
            self.inner.try_send(&Transmit {
                destination: to,
                ecn: None,
                contents: group,
                segment_size: (n > 1).then_some(stride),
                src_ip: None,
            })?;
            count.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
