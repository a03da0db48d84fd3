//! Heartbeat datagrams (`transport/src/heartbeat.rs`): `key_id`, which picks the link of
//! a datagram, `LinkKeys::open`, which authenticates it and refuses replays, and the
//! kernel filter that drops other datagrams before they are read
//! (`transport/src/heartbeat/filter.rs`, run here by a small classic-BPF interpreter).
//!
//! Input: 80 bytes of key material (as the TLS exporter would give both sides), one byte
//! giving how many key ids the filter lists, then a script of 4-byte steps: the sending
//! side seals a heartbeat (with or without a digest), or one sealed earlier is delivered
//! to the receiving side, possibly damaged (one byte xored), or the step's bytes plus
//! the rest are delivered as a datagram of their own.
//!
//! Checked: no panic; `key_id` is `Some` exactly for `LEN`-byte datagrams starting with
//! `MARKER` and then returns bytes 1..9; the filter keeps a datagram exactly when its key
//! id is one it lists (any with too many ids), and the group program sends exactly the
//! marked datagrams to the heartbeat socket; `open` accepts exactly the undamaged sealed
//! heartbeats whose counter is above every one accepted before, returns the digest they
//! carry, and on both sides agrees with an independent model (length, marker, key id,
//! flags, counter above the last accepted, tag checked with `ring` under that side's
//! key): it never accepts a damaged, replayed or forged datagram, nor a heartbeat
//! reflected back to the side that sealed it.
#![no_main]

use cnspr_fuzz::heartbeat_filter::{program, MAX_IDS};
use libfuzzer_sys::fuzz_target;
use transport::heartbeat::{key_id, LinkKeys, LEN, MARKER};

/// UDP header in front of the payload, as a socket filter sees a datagram.
const UDP_HEADER: usize = 8;

/// Classic BPF, the five instructions the programs use; `None`: an instruction it does
/// not know or a jump out of the program (the kernel would refuse such a program).
fn run(code: &[libc::sock_filter], pkt: &[u8]) -> Option<u32> {
    let mut a: u32 = 0;
    let mut pc = 0usize;
    loop {
        let i = code.get(pc)?;
        pc += 1;
        match i.code {
            0x20 | 0x30 => {
                let k = i.k as usize;
                let w = if i.code == 0x20 { 4 } else { 1 };
                // Out of bounds: the kernel ends the program with 0.
                let Some(b) = pkt.get(k..k + w) else { return Some(0) };
                a = b.iter().fold(0u32, |acc, x| (acc << 8) | u32::from(*x));
            }
            0x80 => a = pkt.len() as u32,
            0x15 => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
            0x06 => return Some(i.k),
            _ => return None,
        }
    }
}

fn group_program_verdict(marker: u8, payload: &[u8]) -> u32 {
    // The group program (attach_group_program) sees the payload from its first byte.
    let code = [
        libc::sock_filter { code: 0x30, jt: 0, jf: 0, k: 0 },
        libc::sock_filter { code: 0x15, jt: 0, jf: 1, k: u32::from(marker) },
        libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: 1 },
        libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: 0 },
    ];
    run(&code, payload).expect("the group program runs")
}

struct Filter {
    code: Vec<libc::sock_filter>,
    ids: Vec<[u8; 8]>,
}

impl Filter {
    fn check(&self, pkt: &[u8]) {
        let id = key_id(pkt);
        match id {
            Some(id) => {
                assert_eq!(pkt.len(), LEN);
                assert_eq!(pkt[0], MARKER);
                assert_eq!(&id[..], &pkt[1..9]);
            }
            None => assert!(pkt.len() != LEN || pkt[0] != MARKER),
        }
        let mut seen = vec![0u8; UDP_HEADER];
        seen.extend_from_slice(pkt);
        let kept = run(&self.code, &seen).expect("the filter runs") != 0;
        let want = match id {
            Some(id) => self.ids.len() > MAX_IDS || self.ids.contains(&id),
            None => false,
        };
        assert_eq!(kept, want, "filter verdict differs from key_id for {pkt:02x?}");
        let to_twin = !pkt.is_empty() && group_program_verdict(MARKER, pkt) == 1;
        assert_eq!(to_twin, pkt.first() == Some(&MARKER));
    }
}

/// A heartbeat the sender sealed: its bytes, its digest, its counter.
type Sealed = ([u8; LEN], Option<u64>, u64);

struct Link {
    sender: LinkKeys,
    receiver: LinkKeys,
    /// The receiver's key: the dialer's direction, the first 32 bytes of the material.
    rx_key: [u8; 32],
    /// The sender's receiving key: the other direction, bytes 40..72.
    tx_key: [u8; 32],
    filter: Filter,
}

/// Delivers `pkt` to the receiver and, reflected, to the sender, and compares `open` with
/// an independent model of it: a datagram opens exactly when it has the heartbeat's
/// length and marker, the receiver's key id, flags 0 or 1, a counter above every one
/// accepted so far, and a ChaCha20-Poly1305 tag that verifies under the receiver's key
/// (checked here with `ring` directly). The fuzzer knows the key material, so it can
/// make valid heartbeats of its own (even ones the sender will seal only later): the
/// model, not the list of sealed heartbeats, decides. An undamaged sealed heartbeat with
/// a fresh counter must open with its digest.
fn deliver(link: &Link, pkt: &[u8], sealed: &[Sealed], accepted: &mut [u64; 2]) {
    link.filter.check(pkt);
    // Both sides, each against the model with its own key and counter: a datagram made
    // with the receiver's key (the fuzzer knows it) may rightly open on the sender.
    for (side, keys, key) in [
        (0, &link.receiver, &link.rx_key),
        (1, &link.sender, &link.tx_key),
    ] {
        let opened = keys.open(pkt);
        let want = model(key, &keys.rx_id(), pkt, accepted[side]);
        assert_eq!(opened, want, "open (side {side}) differs from the model for {pkt:02x?}");
        if side == 0 {
            if let Some((_, digest, c)) = sealed.iter().find(|(p, _, _)| &p[..] == pkt) {
                if *c > accepted[0] {
                    assert_eq!(opened, Some(*digest), "a fresh sealed heartbeat was refused");
                }
            }
        }
        if opened.is_some() {
            accepted[side] = u64::from_be_bytes(pkt[9..17].try_into().unwrap());
        }
    }
}

fn model(key: &[u8; 32], rx_id: &[u8; 8], pkt: &[u8], accepted: u64) -> Option<Option<u64>> {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
    if pkt.len() != LEN || pkt[0] != MARKER || &pkt[1..9] != rx_id {
        return None;
    }
    let counter = u64::from_be_bytes(pkt[9..17].try_into().unwrap());
    let flags = pkt[17];
    if flags > 1 || counter <= accepted {
        return None;
    }
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_be_bytes());
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).unwrap());
    let mut tag = pkt[26..].to_vec();
    key.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(&pkt[..26]), &mut tag)
        .ok()?;
    let digest = u64::from_be_bytes(pkt[18..26].try_into().unwrap());
    Some((flags == 1).then_some(digest))
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 81 {
        return;
    }
    let material: [u8; 80] = data[..80].try_into().unwrap();
    let sender = LinkKeys::from_material(&material, true);
    let receiver = LinkKeys::from_material(&material, false);

    // The filter lists the receiver's id among others (or too many ids to list).
    let n = match data[80] {
        255 => MAX_IDS + 1,
        b => usize::from(b % 8),
    };
    let mut ids: Vec<[u8; 8]> = (0..n as u64).map(|i| (i * 0x0101_0101).to_be_bytes()).collect();
    if data[80] & 0x80 != 0 {
        ids.push(receiver.rx_id());
    }
    let filter = Filter { code: program(MARKER, LEN, &ids), ids };
    let rx_key: [u8; 32] = material[..32].try_into().unwrap();
    let tx_key: [u8; 32] = material[40..72].try_into().unwrap();
    let link = Link { sender, receiver, rx_key, tx_key, filter };

    let mut sealed: Vec<Sealed> = Vec::new();
    // Highest counter accepted by the receiver [0] and by the sender [1].
    let mut accepted = [0u64; 2];
    let mut counter = 0u64;
    let script = &data[81..];
    for (i, step) in script.chunks(4).enumerate() {
        let s = |k: usize| step.get(k).copied().unwrap_or(0);
        match s(0) % 4 {
            0 | 1 => {
                let digest = (s(0) % 4 == 1).then(|| u64::from_le_bytes([s(1), s(2), s(3), 0, 0, 0, 0, 0]));
                counter += 1;
                let pkt = link.sender.seal(digest);
                assert_eq!(key_id(&pkt), Some(link.receiver.rx_id()));
                link.filter.check(&pkt);
                sealed.push((pkt, digest, counter));
            }
            2 => {
                if sealed.is_empty() {
                    continue;
                }
                let (pkt, _, _) = sealed[usize::from(s(1)) % sealed.len()];
                let mut got = pkt;
                let damage = s(3);
                if damage != 0 {
                    got[usize::from(s(2)) % LEN] ^= damage;
                }
                deliver(&link, &got, &sealed, &mut accepted);
            }
            _ => {
                // Bytes of the input as a datagram of their own (from the step's third
                // byte on: the first two chose this step and the length).
                let pkt = &script[i * 4 + 2.min(step.len())..];
                let pkt = &pkt[..pkt.len().min(usize::from(s(1)) % 64)];
                deliver(&link, pkt, &sealed, &mut accepted);
            }
        }
    }
});
