//! The two classic BPF programs of the heartbeat socket.
//!
//! - The `SO_REUSEPORT` group's program picks the socket of each datagram by its first
//!   byte: the heartbeat socket for the heartbeat marker, the QUIC socket otherwise.
//! - The heartbeat socket's own filter (`SO_ATTACH_FILTER`) keeps only datagrams of a
//!   heartbeat's length and marker whose key id is one a live connection expects; the
//!   kernel drops the rest before they take any room in the socket's receive buffer, so
//!   garbage sent to the port cannot crowd real heartbeats out between two reads.

use std::io;

use socket2::SockRef;

const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const LD_B_ABS: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
const LD_W_LEN: u16 = 0x80; // BPF_LD | BPF_W | BPF_LEN
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K

/// Where a UDP socket's filter sees the payload: its data starts at the UDP header.
const UDP_HEADER: u32 = 8;
/// Return value keeping the whole datagram.
const KEEP: u32 = u32::MAX;
/// Instructions per accepted key id.
const PER_ID: usize = 5;
/// The kernel's limit on a classic program's length.
const MAX_INSNS: usize = 4096;
/// Most key ids one filter lists; with more live connections the filter checks the
/// length and marker only.
pub const MAX_IDS: usize = (MAX_INSNS - 16) / PER_ID;

fn op(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

fn attach(s: &SockRef<'_>, option: libc::c_int, code: &mut [libc::sock_filter]) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: code.len() as libc::c_ushort,
        filter: code.as_mut_ptr(),
    };
    // The kernel copies the program (`prog` and the `code` it points to, both alive for
    // the call) during setsockopt.
    crate::socket::set_option(&**s, libc::SOL_SOCKET, option, &prog)
}

/// The group's program: index 1 (the heartbeat socket) when the first byte is the
/// heartbeat marker, index 0 (the QUIC socket, bound first) otherwise: QUIC packets and
/// relayed datagrams (`crate::relay`), which the QUIC socket's reader takes apart.
/// (It sees the datagram from its payload on.)
pub fn attach_group_program(s: &SockRef<'_>, marker: u8) -> io::Result<()> {
    let mut code = [
        op(LD_B_ABS, 0, 0, 0),
        op(JEQ_K, 0, 1, u32::from(marker)),
        op(RET_K, 0, 0, 1),
        op(RET_K, 0, 0, 0),
    ];
    attach(s, libc::SO_ATTACH_REUSEPORT_CBPF, &mut code)
}

/// The heartbeat socket's filter: a datagram of `len` bytes starting with `marker`
/// whose next 8 bytes are one of `ids`; with more than [`MAX_IDS`] ids, any datagram of
/// that length and marker.
pub fn program(marker: u8, len: usize, ids: &[[u8; 8]]) -> Vec<libc::sock_filter> {
    let p = UDP_HEADER;
    let mut code = vec![
        op(LD_W_LEN, 0, 0, 0),
        op(JEQ_K, 1, 0, p + len as u32),
        op(RET_K, 0, 0, 0),
        op(LD_B_ABS, 0, 0, p),
        op(JEQ_K, 1, 0, u32::from(marker)),
        op(RET_K, 0, 0, 0),
    ];
    if ids.len() > MAX_IDS {
        code.push(op(RET_K, 0, 0, KEEP));
        return code;
    }
    // Each id is a self-contained block, so no jump ever goes further than 3.
    for id in ids {
        let hi = u32::from_be_bytes([id[0], id[1], id[2], id[3]]);
        let lo = u32::from_be_bytes([id[4], id[5], id[6], id[7]]);
        code.extend([
            op(LD_W_ABS, 0, 0, p + 1),
            op(JEQ_K, 0, 3, hi),
            op(LD_W_ABS, 0, 0, p + 5),
            op(JEQ_K, 0, 1, lo),
            op(RET_K, 0, 0, KEEP),
        ]);
    }
    code.push(op(RET_K, 0, 0, 0));
    code
}

/// Replaces the socket's filter by [`program`] (atomically: a datagram meets the old
/// filter or the new one).
pub fn attach_filter(s: &SockRef<'_>, marker: u8, len: usize, ids: &[[u8; 8]]) -> io::Result<()> {
    let mut code = program(marker, len, ids);
    attach(s, libc::SO_ATTACH_FILTER, &mut code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_fit_and_jump_inside_themselves() {
        for n in [0, 1, 7, MAX_IDS, MAX_IDS + 1] {
            let ids: Vec<[u8; 8]> = (0..n as u64).map(|i| i.to_be_bytes()).collect();
            let code = program(0x21, 42, &ids);
            assert!(
                code.len() <= MAX_INSNS,
                "{n} ids: {} instructions",
                code.len()
            );
            for (i, ins) in code.iter().enumerate() {
                if ins.code == JEQ_K {
                    let far = i + 1 + usize::from(ins.jt.max(ins.jf));
                    assert!(far < code.len(), "{n} ids: jump out of the program at {i}");
                }
            }
            assert_eq!(code.last().unwrap().code, RET_K);
        }
    }
}
