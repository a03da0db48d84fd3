use super::*;
use std::net::{Ipv4Addr, Ipv6Addr};

const A: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
const B: &str = "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB27";

fn txt<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Iterator<Item = (&'a str, Option<&'a [u8]>)> {
    pairs.iter().map(|(k, v)| (*k, Some(v.as_bytes())))
}

fn advert(id: &str) -> Advert {
    Advert {
        pair_port: None,
        id: id.into(),
        name: "n".into(),
        version: "1".into(),
    }
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn ids() {
    assert!(is_valid_id(A));
    assert!(is_valid_id(B));
    assert!(!is_valid_id(&A[1..]));
    assert!(!is_valid_id(&format!("{A}A")));
    assert!(!is_valid_id(&A.replace('A', "a")));
    assert!(!is_valid_id(&format!("{}1", &A[1..])));
    assert!(!is_valid_id(&format!("{}-", &A[1..])));
    assert!(!is_valid_id(&format!("{}É", &A[2..])));
}

#[test]
fn names() {
    assert_eq!(instance_name("Laptop", A), "laptop [aaaaaaaa]");
    assert_eq!(instance_name("", A), "cnspr [aaaaaaaa]");
    let long = "é".repeat(40); // 80 bytes
    let inst = instance_name(&long, A);
    assert!(inst.len() <= MAX_LABEL, "{}", inst.len());
    assert!(inst.ends_with(" [aaaaaaaa]"));
    assert_eq!(host_name(B), "cnspr-bbbbbbbb.local.");
    assert!(is_valid_name("my laptop ✓"));
    assert!(!is_valid_name("a\nb"));
    assert!(!is_valid_name(&"x".repeat(64)));
}

#[test]
fn txt_valid() {
    let a = parse_txt(txt(&[
        ("id", A),
        ("v", "1"),
        ("name", "desk"),
        ("other", "x"),
    ]))
    .unwrap();
    assert_eq!(
        a,
        Advert {
            pair_port: None,
            id: A.into(),
            name: "desk".into(),
            version: "1".into()
        }
    );
    // Keys are case-insensitive (RFC 6763 §6.4), name is optional, other versions pass.
    let a = parse_txt(txt(&[("ID", A), ("V", "2.0-beta")])).unwrap();
    assert_eq!((a.name.as_str(), a.version.as_str()), ("", "2.0-beta"));
    // A repeated identical key is harmless.
    assert!(parse_txt(txt(&[("id", A), ("id", A), ("v", "1")])).is_ok());
}

#[test]
fn txt_rejected() {
    assert_eq!(parse_txt(txt(&[("v", "1")])), Err(Rejected::BadId));
    assert_eq!(
        parse_txt(txt(&[("id", "AAAA"), ("v", "1")])),
        Err(Rejected::BadId)
    );
    assert_eq!(
        parse_txt([("id", None), ("v", Some(&b"1"[..]))]),
        Err(Rejected::BadId)
    );
    assert_eq!(
        parse_txt([("id", Some(&[0xff; 52][..])), ("v", Some(&b"1"[..]))]),
        Err(Rejected::BadId)
    );
    assert_eq!(parse_txt(txt(&[("id", A)])), Err(Rejected::BadVersion));
    assert_eq!(
        parse_txt(txt(&[("id", A), ("v", "")])),
        Err(Rejected::BadVersion)
    );
    assert_eq!(
        parse_txt(txt(&[("id", A), ("v", "1 2")])),
        Err(Rejected::BadVersion)
    );
    assert_eq!(
        parse_txt(txt(&[("id", A), ("v", &"1".repeat(17))])),
        Err(Rejected::BadVersion)
    );
    assert_eq!(
        parse_txt(txt(&[("id", A), ("v", "1"), ("name", "a\u{7}")])),
        Err(Rejected::BadName)
    );
    assert_eq!(
        parse_txt([
            ("id", Some(A.as_bytes())),
            ("v", Some(&b"1"[..])),
            ("name", Some(&[0xc3][..]))
        ]),
        Err(Rejected::BadName)
    );
    assert_eq!(
        parse_txt(txt(&[("id", A), ("id", B), ("v", "1")])),
        Err(Rejected::Duplicate)
    );
    let many: Vec<(String, String)> = (0..17).map(|i| (format!("k{i}"), String::new())).collect();
    let many = many.iter().map(|(k, v)| (k.as_str(), Some(v.as_bytes())));
    assert_eq!(parse_txt(many), Err(Rejected::TooLarge));
    let big = "x".repeat(250);
    let pairs: Vec<(&str, &str)> = vec![
        ("id", A),
        ("v", "1"),
        ("a", &big),
        ("b", &big),
        ("c", &big),
        ("d", &big),
    ];
    assert_eq!(parse_txt(txt(&pairs)), Err(Rejected::TooLarge));
}

#[test]
fn addresses() {
    let ll: Ipv6Addr = "fe80::1".parse().unwrap();
    let got = socket_addrs(
        [
            (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 3),
            (IpAddr::V4(Ipv4Addr::LOCALHOST), 1),
            (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 3),
            (IpAddr::V4(Ipv4Addr::new(224, 0, 0, 251)), 3),
            (IpAddr::V6(ll), 3),
            (IpAddr::V6(ll), 0),
            (IpAddr::V6("2001:db8::1".parse().unwrap()), 3),
            (IpAddr::V6(Ipv6Addr::LOCALHOST), 1),
            (IpAddr::V6("::ffff:10.0.0.2".parse().unwrap()), 3),
            (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 4),
        ],
        7373,
    );
    assert_eq!(
        got,
        vec![
            sa("10.0.0.2:7373"),
            sa("[2001:db8::1]:7373"),
            sa("[fe80::1%3]:7373")
        ]
    );
    if let SocketAddr::V6(v6) = got[2] {
        assert_eq!(v6.scope_id(), 3);
    }
    let many = (0..100u8).map(|i| (IpAddr::V4(Ipv4Addr::new(10, 0, 1, i)), 2));
    assert_eq!(socket_addrs(many, 1).len(), MAX_ADDRS);
}

#[test]
fn dedup_and_lost() {
    let mut t = Tracker::new(A);
    let one = vec![sa("10.0.0.2:1")];
    let two = vec![sa("10.0.0.2:1"), sa("[fe80::2%3]:1")];
    // Own announcement ignored.
    assert!(t
        .resolved("me._cnspr._udp.local.", advert(A), one.clone())
        .is_empty());
    let ev = t.resolved("b._cnspr._udp.local.", advert(B), one.clone());
    assert!(
        matches!(&ev[..], [DiscoveryEvent::Found { id, addrs, .. }] if id == B && *addrs == one)
    );
    // Same id, same address set: nothing.
    assert!(t
        .resolved("B._cnspr._udp.local.", advert(B), one.clone())
        .is_empty());
    // New address set: Found again.
    assert_eq!(
        t.resolved("b._cnspr._udp.local.", advert(B), two.clone())
            .len(),
        1
    );
    // Rename: Found again.
    let renamed = Advert {
        name: "m".into(),
        ..advert(B)
    };
    assert_eq!(
        t.resolved("b._cnspr._udp.local.", renamed, two.clone())
            .len(),
        1
    );
    // No addresses: ignored.
    assert!(t
        .resolved("c._cnspr._udp.local.", advert(B), vec![])
        .is_empty());
    // A second instance of the same ID: Lost only after both are gone.
    assert!(t
        .resolved(
            "b (2)._cnspr._udp.local.",
            Advert {
                name: "m".into(),
                ..advert(B)
            },
            two
        )
        .is_empty());
    assert_eq!(t.removed("b._cnspr._udp.local."), None);
    assert_eq!(
        t.removed("b (2)._cnspr._udp.local."),
        Some(DiscoveryEvent::Lost { id: B.into() })
    );
    assert_eq!(t.removed("b (2)._cnspr._udp.local."), None);
    assert!(t.is_empty());
}

#[test]
fn instance_changes_owner() {
    let mut t = Tracker::new(A);
    let one = vec![sa("10.0.0.2:1")];
    t.resolved("x._cnspr._udp.local.", advert(B), one.clone());
    let c = "C".repeat(52);
    let ev = t.resolved("x._cnspr._udp.local.", advert(&c), one);
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[0], DiscoveryEvent::Lost { id: B.into() });
    assert!(matches!(&ev[1], DiscoveryEvent::Found { id, .. } if *id == c));
}

#[test]
fn bounded() {
    let mut t = Tracker::new(A);
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    for i in 0..(MAX_DEVICES + 10) {
        let mut id = vec![b'A'; ID_LEN];
        id[0] = alphabet[i % 32];
        id[1] = alphabet[(i / 32) % 32];
        id[2] = b'7';
        let id = String::from_utf8(id).unwrap();
        t.resolved(
            &format!("{i}._cnspr._udp.local."),
            advert(&id),
            vec![sa("10.0.0.2:1")],
        );
    }
    assert_eq!(t.len(), MAX_DEVICES);
}

#[test]
fn pairing_window() {
    let ok = parse_txt(txt(&[("id", A), ("v", "1"), ("pair", "40123")])).unwrap();
    assert_eq!(ok.pair_port, Some(40123));
    for bad in ["0", "65536", "-1", "12a", "", "123456"] {
        assert_eq!(
            parse_txt(txt(&[("id", A), ("v", "1"), ("pair", bad)])),
            Err(Rejected::BadPair),
            "{bad:?}"
        );
    }
    let mut t = Tracker::new(A);
    let addrs = vec![sa("10.0.0.2:7373"), sa("[fe80::1%3]:7373")];
    assert_eq!(
        t.resolved("b._cnspr._udp.local.", advert(B), addrs.clone())
            .len(),
        1
    );
    // The window opens: Found again, with the pairing addresses (scope kept).
    let ev = t.resolved(
        "b._cnspr._udp.local.",
        Advert {
            pair_port: Some(4000),
            ..advert(B)
        },
        addrs.clone(),
    );
    match &ev[..] {
        [DiscoveryEvent::Found { pairing, .. }] => {
            assert_eq!(*pairing, vec![sa("10.0.0.2:4000"), sa("[fe80::1%3]:4000")]);
        }
        other => panic!("{other:?}"),
    }
    // Closes: Found again, no pairing addresses.
    let ev = t.resolved("b._cnspr._udp.local.", advert(B), addrs);
    assert!(matches!(&ev[..], [DiscoveryEvent::Found { pairing, .. }] if pairing.is_empty()));
}
