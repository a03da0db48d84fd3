//! Seals of membership records: a record ([`membership::Record`]) is a member's statement
//! about itself, and only its origin may make one. The origin signs, with its device
//! key, a domain-separated binding of every field but the seal; the seal is the 32-byte
//! Ed25519 public key followed by the 64-byte signature. A member takes a record only
//! when the key hashes (SHA-256 of its SPKI) to the record's origin and the signature
//! covers what arrived. Wire format: docs/protocol.md, "Record seals".

use std::net::SocketAddr;

use membership::{Record, Watch};
use transport::identity::{ed25519_id, verify_signature};
use transport::{DeviceId, Identity};

/// Domain of a record binding.
const DOMAIN: &[u8] = b"cnspr membership record v1\0";
/// Length of a seal: public key and signature.
pub const SEAL_LEN: usize = 32 + 64;

/// Why a record's seal is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The seal is not [`SEAL_LEN`] bytes (none at all: `0`).
    Length(usize),
    /// The seal's key is not the origin's.
    WrongKey,
    /// The signature does not cover the record as it arrived.
    BadSignature,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Length(0) => f.write_str("the record is not sealed"),
            Refusal::Length(n) => write!(f, "a seal of {n} bytes, not {SEAL_LEN}"),
            Refusal::WrongKey => f.write_str("the seal's key is not the origin's"),
            Refusal::BadSignature => {
                f.write_str("the origin's signature does not cover the record")
            }
        }
    }
}

fn put_addr(m: &mut Vec<u8>, addr: &Option<SocketAddr>) {
    // What the membership wire carries of an address: the IP and the port (bincode
    // drops an IPv6 address's flow label and scope).
    match addr {
        None => m.push(0),
        Some(SocketAddr::V4(a)) => {
            m.push(4);
            m.extend_from_slice(&a.ip().octets());
            m.extend_from_slice(&a.port().to_be_bytes());
        }
        Some(SocketAddr::V6(a)) => {
            m.push(6);
            m.extend_from_slice(&a.ip().octets());
            m.extend_from_slice(&a.port().to_be_bytes());
        }
    }
}

/// What the origin signs: the domain, then every field of `rec` but the seal, in a
/// fixed encoding (docs/protocol.md).
pub fn binding(rec: &Record<DeviceId>) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + 56 + rec.links.len() * 60);
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(&rec.origin.0);
    m.extend_from_slice(&rec.incarnation.to_be_bytes());
    m.extend_from_slice(&rec.version.to_be_bytes());
    m.push(u8::from(rec.left));
    m.push(u8::from(rec.gentle));
    m.extend_from_slice(&(rec.links.len() as u32).to_be_bytes());
    for l in &rec.links {
        m.extend_from_slice(&l.peer.0);
        m.extend_from_slice(&l.rtt_us.to_be_bytes());
        put_addr(&mut m, &l.addr);
        m.push(match l.watch {
            Watch::Unwatched => 0,
            Watch::Alive => 1,
            Watch::Suspect => 2,
            Watch::Lost => 3,
        });
    }
    m
}

/// This device's seal of `rec` (a record of itself).
pub fn seal(me: &Identity, rec: &Record<DeviceId>) -> Vec<u8> {
    let mut s = Vec::with_capacity(SEAL_LEN);
    s.extend_from_slice(&me.public_key());
    s.extend_from_slice(&me.sign(&binding(rec)));
    s
}

/// The seal's key, when it is the record's origin's (the cheap checks, before the
/// signature's).
pub fn origin_key(rec: &Record<DeviceId>) -> Result<[u8; 32], Refusal> {
    if rec.seal.len() != SEAL_LEN {
        return Err(Refusal::Length(rec.seal.len()));
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&rec.seal[..32]);
    if ed25519_id(&key) != rec.origin {
        return Err(Refusal::WrongKey);
    }
    Ok(key)
}

/// Whether `rec` is sealed by its origin (the gate runs the two steps itself, sharing
/// the binding with its digest).
#[cfg(test)]
pub fn check(rec: &Record<DeviceId>) -> Result<(), Refusal> {
    verify(rec, &origin_key(rec)?, &binding(rec))
}

/// Whether the seal of `rec`, whose key [`origin_key`] gave as `key`, signs `binding`
/// (the record's [`binding`]): the signature check alone, for a caller that has both.
pub fn verify(rec: &Record<DeviceId>, key: &[u8; 32], binding: &[u8]) -> Result<(), Refusal> {
    if !verify_signature(key, binding, &rec.seal[32..]) {
        return Err(Refusal::BadSignature);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use membership::LinkEntry;

    fn record(origin: DeviceId, peer: DeviceId) -> Record<DeviceId> {
        Record {
            origin,
            incarnation: 1_700_000_000_000,
            version: 3,
            left: false,
            gentle: false,
            links: vec![LinkEntry {
                peer,
                rtt_us: 1500,
                addr: Some("[2001:db8::1]:7000".parse().unwrap()),
                watch: Watch::Alive,
            }],
            seal: Vec::new(),
        }
    }

    fn sealed(by: &Identity, mut rec: Record<DeviceId>) -> Record<DeviceId> {
        rec.seal = seal(by, &rec);
        rec
    }

    #[test]
    fn a_record_sealed_by_its_origin_is_taken() {
        let a = Identity::generate("a").unwrap();
        let b = Identity::generate("b").unwrap();
        let rec = sealed(&a, record(a.id, b.id));
        assert_eq!(rec.seal.len(), SEAL_LEN);
        assert_eq!(check(&rec), Ok(()));
    }

    #[test]
    fn a_changed_field_breaks_the_seal() {
        let a = Identity::generate("a").unwrap();
        let b = Identity::generate("b").unwrap();
        let good = sealed(&a, record(a.id, b.id));
        let changes: Vec<fn(&mut Record<DeviceId>)> = vec![
            |r| r.incarnation += 1,
            |r| r.version = u64::MAX,
            |r| r.left = true,
            |r| r.gentle = true,
            |r| r.links.clear(),
            |r| r.links[0].rtt_us = 1,
            |r| r.links[0].addr = None,
            |r| r.links[0].addr = Some("192.0.2.1:7000".parse().unwrap()),
            |r| r.links[0].watch = Watch::Lost,
            |r| r.links[0].peer = DeviceId([9; 32]),
            |r| {
                let l = r.links[0].clone();
                r.links.push(l)
            },
        ];
        for (i, change) in changes.into_iter().enumerate() {
            let mut r = good.clone();
            change(&mut r);
            assert_eq!(check(&r), Err(Refusal::BadSignature), "change {i}");
        }
    }

    #[test]
    fn a_seal_by_another_key_is_refused() {
        let a = Identity::generate("a").unwrap();
        let m = Identity::generate("m").unwrap();
        // M signs a record in A's name with its own key: the key is not A's.
        let forged = sealed(&m, record(a.id, m.id));
        assert_eq!(check(&forged), Err(Refusal::WrongKey));
        // M puts A's public key in front of its own signature.
        let mut forged = forged;
        forged.seal[..32].copy_from_slice(&a.public_key());
        assert_eq!(check(&forged), Err(Refusal::BadSignature));
    }

    #[test]
    fn a_seal_of_another_record_is_refused() {
        let a = Identity::generate("a").unwrap();
        let b = Identity::generate("b").unwrap();
        // A's genuine seal of one record moved onto another statement of A.
        let first = sealed(&a, record(a.id, b.id));
        let mut other = record(a.id, b.id);
        other.left = true;
        other.seal = first.seal.clone();
        assert_eq!(check(&other), Err(Refusal::BadSignature));
        // B's genuine record with A's seal: A is not its origin.
        let mut of_b = record(b.id, a.id);
        of_b.seal = first.seal;
        assert_eq!(check(&of_b), Err(Refusal::WrongKey));
    }

    #[test]
    fn empty_short_and_oversized_seals_are_refused() {
        let a = Identity::generate("a").unwrap();
        let b = Identity::generate("b").unwrap();
        let good = sealed(&a, record(a.id, b.id));
        let mut r = good.clone();
        r.seal.clear();
        assert_eq!(check(&r), Err(Refusal::Length(0)));
        let mut r = good.clone();
        r.seal.truncate(SEAL_LEN - 1);
        assert_eq!(check(&r), Err(Refusal::Length(SEAL_LEN - 1)));
        let mut r = good.clone();
        r.seal.push(0);
        assert_eq!(check(&r), Err(Refusal::Length(SEAL_LEN + 1)));
        let mut r = good;
        r.seal.resize(membership::message::MAX_SEAL, 0);
        assert_eq!(
            check(&r),
            Err(Refusal::Length(membership::message::MAX_SEAL))
        );
    }

    #[test]
    fn the_binding_is_domain_separated_and_fixed() {
        let a = Identity::generate("a").unwrap();
        let b = Identity::generate("b").unwrap();
        let rec = record(a.id, b.id);
        let m = binding(&rec);
        assert!(m.starts_with(b"cnspr membership record v1\0"));
        // Domain, origin, incarnation, version, left, gentle, link count, then per link
        // peer, RTT, address (tag, 16-byte IPv6, port) and watch.
        assert_eq!(
            m.len(),
            27 + 32 + 8 + 8 + 1 + 1 + 4 + 32 + 4 + 1 + 16 + 2 + 1
        );
        // The seal is not part of it.
        let s = sealed(&a, rec.clone());
        assert_eq!(binding(&s), m);
    }
}
