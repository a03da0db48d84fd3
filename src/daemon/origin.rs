//! Origin proofs: the origin of a message or stream that a member passes on (a relay) is
//! proven end to end, so that no member can speak as another (issue #17, item 5).
//!
//! The origin signs, with its device key, a binding of what it sends: for a message its
//! ID, the final recipient, the message ID, tag, flags, body length and the SHA-256 of the
//! body; for a stream the service. Each binding carries the time and a random nonce. The
//! relay passes the [`OriginProof`] on unchanged; the recipient checks that the key is the
//! claimed origin's (its SHA-256 SPKI hash is the ID), the signature, that the time is
//! within [`WINDOW_MS`] of its own clock and that it has not seen the proof before
//! ([`ReplayGuard`]). Wire format: docs/protocol.md, "Origin proofs".

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use transport::identity::{ed25519_id, verify_signature};
use transport::{DeviceId, Identity};

use super::wire::{MsgHeader, OriginProof};

/// Domain of a message binding.
const MESSAGE_DOMAIN: &[u8] = b"cnspr relayed message v1\0";
/// Domain of a stream binding.
const STREAM_DOMAIN: &[u8] = b"cnspr relayed stream v1\0";
/// Largest proof frame (a proof encodes to at most 115 bytes).
pub const MAX_PROOF: usize = 256;
/// How far a proof's time may lie from this device's clock, either way.
pub const WINDOW_MS: u64 = 10 * 60 * 1000;
/// Proofs remembered per origin; beyond, the oldest goes and raises the origin's floor.
const PER_ORIGIN: usize = 1024;

/// Why a claimed origin is not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    WrongKey,
    BadSignature,
    Clock { ahead_ms: i64 },
    Replayed,
    NotMember,
    OwnDevice,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Missing => f.write_str("no proof from the origin"),
            Refusal::WrongKey => f.write_str("the proof's key is not the origin's"),
            Refusal::BadSignature => {
                f.write_str("the origin's signature does not cover what arrived")
            }
            Refusal::Clock { ahead_ms } => write!(
                f,
                "the proof's time is {} s {} this device's clock (at most {} s allowed)",
                ahead_ms.unsigned_abs() / 1000,
                if *ahead_ms > 0 { "ahead of" } else { "behind" },
                WINDOW_MS / 1000
            ),
            Refusal::Replayed => f.write_str("the proof was used before (a replay)"),
            Refusal::NotMember => f.write_str("the origin is not a member"),
            Refusal::OwnDevice => f.write_str("the origin is this device"),
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

/// The SHA-256 of a body.
pub fn body_hash(body: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, body).as_ref());
    out
}

fn message_binding(
    origin: DeviceId,
    to: DeviceId,
    h: &MsgHeader,
    hash: &[u8; 32],
    p: &OriginProof,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(200 + h.tag.len());
    m.extend_from_slice(MESSAGE_DOMAIN);
    m.extend_from_slice(&origin.0);
    m.extend_from_slice(&to.0);
    put_bytes(&mut m, h.id.as_bytes());
    put_bytes(&mut m, h.tag.as_bytes());
    m.push(u8::from(h.reply) | (u8::from(h.ping) << 1));
    m.extend_from_slice(&h.body_len.to_be_bytes());
    m.extend_from_slice(hash);
    m.extend_from_slice(&p.time_ms.to_be_bytes());
    m.extend_from_slice(&p.nonce.to_be_bytes());
    m
}

fn stream_binding(origin: DeviceId, to: DeviceId, service: &str, p: &OriginProof) -> Vec<u8> {
    let mut m = Vec::with_capacity(128 + service.len());
    m.extend_from_slice(STREAM_DOMAIN);
    m.extend_from_slice(&origin.0);
    m.extend_from_slice(&to.0);
    put_bytes(&mut m, service.as_bytes());
    m.extend_from_slice(&p.time_ms.to_be_bytes());
    m.extend_from_slice(&p.nonce.to_be_bytes());
    m
}

fn fresh(me: &Identity) -> OriginProof {
    OriginProof {
        key: me.public_key(),
        time_ms: now_ms(),
        nonce: rand::random(),
        sig: Vec::new(),
    }
}

/// This device's proof for a message to `to` (sent through a relay).
pub fn sign_message(me: &Identity, to: DeviceId, h: &MsgHeader, body: &[u8]) -> OriginProof {
    let mut p = fresh(me);
    p.sig = me.sign(&message_binding(me.id, to, h, &body_hash(body), &p));
    p
}

/// This device's proof for a stream to `service` on `to` (opened through a relay).
pub fn sign_stream(me: &Identity, to: DeviceId, service: &str) -> OriginProof {
    let mut p = fresh(me);
    p.sig = me.sign(&stream_binding(me.id, to, service, &p));
    p
}

/// The checks of every proof before its signature: the key is the claimed origin's and
/// the time is within the window.
fn check_key_and_time(origin: DeviceId, p: &OriginProof, now: u64) -> Result<(), Refusal> {
    if ed25519_id(&p.key) != origin {
        return Err(Refusal::WrongKey);
    }
    // Any u64 from the wire: the difference is taken wide, then told within i64.
    let ahead = i128::from(p.time_ms) - i128::from(now);
    if ahead.unsigned_abs() > u128::from(WINDOW_MS) {
        let ahead_ms = ahead.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        return Err(Refusal::Clock { ahead_ms });
    }
    Ok(())
}

/// Whether `p` is `origin`'s proof that the header and the body (its SHA-256, `hash`)
/// are what it sent to `me`.
pub fn verify_message(
    origin: DeviceId,
    me: DeviceId,
    h: &MsgHeader,
    hash: &[u8; 32],
    p: &OriginProof,
    now: u64,
) -> Result<(), Refusal> {
    check_key_and_time(origin, p, now)?;
    let binding = message_binding(origin, me, h, hash, p);
    if !verify_signature(&p.key, &binding, &p.sig) {
        return Err(Refusal::BadSignature);
    }
    Ok(())
}

/// Whether `p` is `origin`'s proof that it opened a stream to `service` on `me`.
pub fn verify_stream(
    origin: DeviceId,
    me: DeviceId,
    service: &str,
    p: &OriginProof,
    now: u64,
) -> Result<(), Refusal> {
    check_key_and_time(origin, p, now)?;
    if !verify_signature(&p.key, &stream_binding(origin, me, service, p), &p.sig) {
        return Err(Refusal::BadSignature);
    }
    Ok(())
}

/// The proofs an origin had taken recently, so that none is taken twice.
#[derive(Default)]
struct Seen {
    /// Nothing at or below this `(time, nonce)` is taken any more.
    floor: (u64, u64),
    recent: BTreeSet<(u64, u64)>,
}

/// Remembers the proofs taken in the last [`WINDOW_MS`] (a proof older than that is
/// refused by its time), at most [`PER_ORIGIN`] per origin: when more arrive, the oldest
/// is forgotten and everything up to it is refused from then on, so no proof is ever
/// taken twice. Only verified proofs are recorded, so only members' own proofs use room.
#[derive(Default)]
pub struct ReplayGuard {
    origins: Mutex<HashMap<DeviceId, Seen>>,
}

impl ReplayGuard {
    /// Records a verified proof of `origin`; refused if it was taken before.
    pub fn admit(&self, origin: DeviceId, p: &OriginProof, now: u64) -> Result<(), Refusal> {
        let key = (p.time_ms, p.nonce);
        let mut origins = self.origins.lock().unwrap();
        // Forget what the window refuses anyway.
        let expired = (now.saturating_sub(WINDOW_MS + 1), u64::MAX);
        origins.retain(|_, s| {
            while s.recent.first().is_some_and(|k| *k <= expired) {
                let k = s.recent.pop_first().unwrap();
                s.floor = s.floor.max(k);
            }
            !s.recent.is_empty() || s.floor > expired
        });
        let seen = origins.entry(origin).or_default();
        if key <= seen.floor || !seen.recent.insert(key) {
            return Err(Refusal::Replayed);
        }
        if seen.recent.len() > PER_ORIGIN {
            let k = seen.recent.pop_first().unwrap();
            seen.floor = seen.floor.max(k);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> MsgHeader {
        MsgHeader {
            id: "00000000000000ab".into(),
            tag: "x.y".into(),
            body_len: 3,
            reply: false,
            relay_to: None,
            origin: None,
            ping: false,
        }
    }

    #[test]
    fn a_proof_covers_every_field_it_binds() {
        let a = Identity::generate("a").unwrap();
        let other = Identity::generate("o").unwrap();
        let me = DeviceId([3; 32]);
        let h = header();
        let p = sign_message(&a, me, &h, b"abc");
        let now = now_ms();
        let hash = body_hash(b"abc");
        assert_eq!(verify_message(a.id, me, &h, &hash, &p, now), Ok(()));
        let check = |h: &MsgHeader, hash: &[u8; 32], p: &OriginProof, to: DeviceId| {
            verify_message(a.id, to, h, hash, p, now)
        };
        let bad = Err(Refusal::BadSignature);
        assert_eq!(check(&h, &body_hash(b"abd"), &p, me), bad);
        assert_eq!(check(&h, &hash, &p, DeviceId([4; 32])), bad);
        for change in [
            |h: &mut MsgHeader| h.id = "00000000000000ac".into(),
            |h: &mut MsgHeader| h.tag = "x.z".into(),
            |h: &mut MsgHeader| h.reply = true,
            |h: &mut MsgHeader| h.ping = true,
            |h: &mut MsgHeader| h.body_len = 4,
        ] {
            let mut h2 = h.clone();
            change(&mut h2);
            assert_eq!(check(&h2, &hash, &p, me), bad);
        }
        for change in [
            |p: &mut OriginProof| p.time_ms += 1,
            |p: &mut OriginProof| p.nonce ^= 1,
            |p: &mut OriginProof| p.sig[0] ^= 1,
            |p: &mut OriginProof| p.sig.truncate(63),
        ] {
            let mut p2 = p.clone();
            change(&mut p2);
            assert_eq!(check(&h, &hash, &p2, me), bad);
        }
        // Another device's key, or the origin claimed by another device.
        let mut p2 = p.clone();
        p2.key = other.public_key();
        assert_eq!(check(&h, &hash, &p2, me), Err(Refusal::WrongKey));
        assert_eq!(
            verify_message(other.id, me, &h, &hash, &p, now),
            Err(Refusal::WrongKey)
        );
        // A message proof is no stream proof.
        assert_eq!(
            verify_stream(a.id, me, "x.y", &p, now),
            Err(Refusal::BadSignature)
        );
        let s = sign_stream(&a, me, "svc");
        assert_eq!(verify_stream(a.id, me, "svc", &s, now), Ok(()));
        assert_eq!(verify_stream(a.id, me, "svc2", &s, now), bad);
        assert_eq!(verify_stream(a.id, DeviceId([4; 32]), "svc", &s, now), bad);
    }

    #[test]
    fn a_proof_is_taken_within_its_window_only() {
        let a = Identity::generate("a").unwrap();
        let me = DeviceId([3; 32]);
        let p = sign_stream(&a, me, "svc");
        let t = p.time_ms;
        assert!(verify_stream(a.id, me, "svc", &p, t + WINDOW_MS).is_ok());
        assert!(verify_stream(a.id, me, "svc", &p, t - WINDOW_MS).is_ok());
        assert!(matches!(
            verify_stream(a.id, me, "svc", &p, t + WINDOW_MS + 1),
            Err(Refusal::Clock { ahead_ms }) if ahead_ms < 0
        ));
        assert!(matches!(
            verify_stream(a.id, me, "svc", &p, t - WINDOW_MS - 1),
            Err(Refusal::Clock { ahead_ms }) if ahead_ms > 0
        ));
        // Times at the ends of the range: refused as far off, never an overflow.
        for time_ms in [1 << 63, u64::MAX, 0] {
            let mut far = sign_stream(&a, me, "svc");
            far.time_ms = time_ms;
            assert!(matches!(
                verify_stream(a.id, me, "svc", &far, t),
                Err(Refusal::Clock { .. })
            ));
        }
    }

    fn proof(time_ms: u64, nonce: u64) -> OriginProof {
        OriginProof {
            key: [0; 32],
            time_ms,
            nonce,
            sig: Vec::new(),
        }
    }

    #[test]
    fn no_proof_is_taken_twice_and_the_memory_is_bounded() {
        let g = ReplayGuard::default();
        let (a, b) = (DeviceId([1; 32]), DeviceId([2; 32]));
        let now = 100 * WINDOW_MS;
        assert_eq!(g.admit(a, &proof(now, 1), now), Ok(()));
        assert_eq!(g.admit(a, &proof(now, 1), now), Err(Refusal::Replayed));
        // Another origin's proof with the same time and nonce is its own.
        assert_eq!(g.admit(b, &proof(now, 1), now), Ok(()));
        // Out of order within the memory: taken.
        assert_eq!(g.admit(a, &proof(now - 5, 7), now), Ok(()));
        // Beyond PER_ORIGIN proofs the oldest go, and nothing up to them is taken again.
        for i in 0..PER_ORIGIN as u64 {
            assert_eq!(g.admit(a, &proof(now + 1 + i, 0), now), Ok(()));
        }
        let held = g.origins.lock().unwrap()[&a].recent.len();
        assert_eq!(held, PER_ORIGIN);
        assert_eq!(g.admit(a, &proof(now - 5, 7), now), Err(Refusal::Replayed));
        assert_eq!(g.admit(a, &proof(now, 1), now), Err(Refusal::Replayed));
        assert_eq!(g.admit(a, &proof(now - 1, 9), now), Err(Refusal::Replayed));
        // Once the window has passed, an origin's memory is let go.
        let later = now + 3 * WINDOW_MS;
        assert_eq!(g.admit(b, &proof(later, 2), later), Ok(()));
        assert!(!g.origins.lock().unwrap().contains_key(&a));
    }

    /// What a proof costs (run with `--ignored --nocapture`; prints, checks nothing about
    /// time): signing at the origin, checking at the recipient, and the body's SHA-256
    /// both do.
    #[test]
    #[ignore]
    fn cost_of_a_proof() {
        use std::time::Instant;
        let a = Identity::generate("a").unwrap();
        let me = DeviceId([3; 32]);
        let g = ReplayGuard::default();
        for len in [0usize, 64 << 10, 1 << 20, 20 << 20] {
            let body = vec![7u8; len];
            let mut h = header();
            h.body_len = len as u64;
            let n = if len >= 1 << 20 { 20 } else { 2000 };
            let start = Instant::now();
            let mut proofs = Vec::with_capacity(n);
            for _ in 0..n {
                proofs.push(sign_message(&a, me, &h, &body));
            }
            let sign = start.elapsed() / n as u32;
            let start = Instant::now();
            for p in &proofs {
                let now = now_ms();
                verify_message(a.id, me, &h, &body_hash(&body), p, now).unwrap();
                g.admit(a.id, p, now).unwrap();
            }
            let check = start.elapsed() / n as u32;
            println!("body {len} bytes: sign {sign:?}, check {check:?} per message");
        }
    }
}
