//! What the cipher alone costs a stream, per GiB, on one CPU of this machine: ring's
//! ChaCha20-Poly1305 (the only suite the endpoint offers) sealing and opening packets of
//! one datagram's payload, and the header-protection mask QUIC adds to every packet (one
//! ChaCha20 block). Every byte of a stream is sealed once by the sending daemon and opened
//! once by the receiving one, so these figures are the part of a daemon's CPU time per GiB
//! that no change to the daemon or to quinn can take away. `bench/streams.sh` runs it after
//! its transfers and sets it beside the daemons' own CPU time per GiB.
//!
//! `CNSPR_BENCH_PAYLOAD` is the payload of one packet in bytes (default 1443: a 1500-byte
//! IPv4 path less the IP and UDP headers, a short QUIC header with an 8-byte connection ID
//! and a 4-byte packet number, and the 16-byte tag). `CNSPR_BENCH_CIPHER_ROUNDS` rounds of
//! 1 GiB each (default 3); the medians are printed.
//!
//! Run: `cargo bench -p transport --bench cipher`

use std::hint::black_box;
use std::time::Instant;

use ring::aead::quic::{HeaderProtectionKey, CHACHA20};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

const GIB: usize = 1 << 30;
/// Sealed packets kept for the open rounds (distinct nonces, as on the wire).
const SEALED: usize = 256;

fn env(name: &str, default: usize, range: std::ops::RangeInclusive<usize>) -> usize {
    match std::env::var(name) {
        Ok(v) => match v.parse::<usize>() {
            Ok(n) if range.contains(&n) => n,
            _ => {
                eprintln!("{name} must be a whole number in {range:?}, not {v:?}");
                std::process::exit(2);
            }
        },
        Err(_) => default,
    }
}

fn nonce(i: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&i.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Seconds per GiB of payload for `f` run over `packets` packets.
fn per_gib(packets: usize, payload: usize, mut f: impl FnMut(usize)) -> f64 {
    let t = Instant::now();
    for i in 0..packets {
        f(i);
    }
    t.elapsed().as_secs_f64() * GIB as f64 / (packets * payload) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let payload = env("CNSPR_BENCH_PAYLOAD", 1443, 16..=65_000);
    let rounds = env("CNSPR_BENCH_CIPHER_ROUNDS", 3, 1..=100);
    let packets = GIB / payload;
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[7; 32]).expect("key"));
    let hp = HeaderProtectionKey::new(&CHACHA20, &[9; 32]).expect("header key");
    // A short header and packet number as associated data, as quinn gives it.
    let aad = [0x40u8; 13];

    let mut buf = vec![0u8; payload + 16];
    let sealed: Vec<Vec<u8>> = (0..SEALED)
        .map(|i| {
            let mut p = vec![i as u8; payload];
            key.seal_in_place_append_tag(nonce(i as u64), Aad::from(aad), &mut p)
                .expect("seal");
            p
        })
        .collect();

    let (mut seal, mut open, mut mask) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        seal.push(per_gib(packets, payload, |i| {
            let tag = key
                .seal_in_place_separate_tag(nonce(i as u64), Aad::from(aad), &mut buf[..payload])
                .expect("seal");
            let _ = black_box(tag);
        }));
        // Each open works on a copy of a sealed packet (the copy is about 2 % of the time).
        open.push(per_gib(packets, payload, |i| {
            let k = i % SEALED;
            buf.copy_from_slice(&sealed[k]);
            let plain = key
                .open_in_place(nonce(k as u64), Aad::from(aad), &mut buf)
                .expect("open");
            let _ = black_box(plain);
        }));
        mask.push(per_gib(packets, payload, |i| {
            let mut sample = [0u8; 16];
            sample[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let _ = black_box(hp.new_mask(&sample).expect("mask"));
        }));
    }
    let (seal, open, mask) = (median(seal), median(open), median(mask));
    let ns = |s: f64| s * 1e9 * payload as f64 / GIB as f64;
    println!(
        "cipher: {payload}-byte packets, one CPU, medians of {rounds} rounds of 1 GiB: \
         seal {seal:.3} s per GiB ({:.0} ns a packet), open {open:.3} s per GiB ({:.0} ns), \
         header protection {mask:.3} s per GiB ({:.0} ns)",
        ns(seal),
        ns(open),
        ns(mask)
    );
    println!(
        "cipher per GiB: sender {:.3} s, receiver {:.3} s",
        seal + mask,
        open + mask
    );
}
