use super::*;

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const TIMEOUT: Duration = Duration::from_secs(30);

fn refused() -> PairError {
    PairError::Refused {
        reason: "the pairing window expired; run `cnspr pair` there again for a new code".into(),
    }
}

#[test]
fn a_typed_address_that_does_not_answer_is_tried_until_the_deadline() {
    let t0 = Instant::now();
    let x = a("10.0.0.1:4000");
    let mut s = Search::new(Source::Given, &[x], t0, TIMEOUT);
    assert_eq!(s.due(t0), vec![x]);
    assert!(s.due(t0).is_empty(), "one dial at a time per address");
    let mut now = t0;
    while now < t0 + TIMEOUT {
        now += Duration::from_secs(2);
        assert!(s.failed(x, PairError::NoAnswer(Shown(x)), now).is_none());
        if now < t0 + TIMEOUT {
            assert!(s.verdict(now).is_none());
        }
        assert_eq!(s.poll_timeout(), (now + RETRY_PAUSE).min(t0 + TIMEOUT));
        assert!(s.due(now).is_empty());
        now += RETRY_PAUSE;
        if now < t0 + TIMEOUT {
            assert_eq!(s.due(now), vec![x]);
        }
    }
    assert!(matches!(s.verdict(now), Some(PairError::NoAnswer(_))));
}

#[test]
fn a_closed_window_at_a_typed_address_ends_the_search_at_once() {
    let t0 = Instant::now();
    let (x, y) = (a("10.0.0.1:4000"), a("[fe80::1%2]:4000"));
    let mut s = Search::new(Source::Given, &[x, y], t0, TIMEOUT);
    assert_eq!(s.due(t0), vec![x, y]);
    let t1 = t0 + Duration::from_millis(1);
    assert!(s.failed(x, PairError::WindowGone(Shown(x)), t1).is_none());
    // The other address is still being dialled.
    assert!(s.verdict(t1).is_none());
    assert!(s.failed(y, refused(), t1).is_none());
    match s.verdict(t1) {
        Some(PairError::Refused { reason }) => assert!(reason.contains("expired")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_wrong_code_ends_the_search_at_once() {
    let t0 = Instant::now();
    let x = a("10.0.0.1:4000");
    let mut s = Search::new(Source::Mdns, &[], t0, TIMEOUT);
    s.advertised(&[x], t0);
    assert_eq!(s.due(t0), vec![x]);
    assert!(matches!(
        s.failed(x, PairError::WrongCode, t0),
        Some(PairError::WrongCode)
    ));
}

#[test]
fn a_stale_mdns_window_fails_after_the_grace_unless_another_appears() {
    let t0 = Instant::now();
    let stale = a("[fe80::1%2]:58477");
    let mut s = Search::new(Source::Mdns, &[], t0, TIMEOUT);
    s.advertised(&[stale], t0);
    assert_eq!(s.due(t0), vec![stale]);
    let t1 = t0 + Duration::from_millis(3);
    assert!(s
        .failed(stale, PairError::WindowGone(Shown(stale)), t1)
        .is_none());
    assert_eq!(s.poll_timeout(), t1 + GRACE);
    s.advertised(&[stale], t1 + GRACE / 2);
    assert!(s.verdict(t1 + GRACE / 2).is_none());
    match s.verdict(t1 + GRACE) {
        Some(PairError::WindowGone(addr)) => {
            assert_eq!(addr.0, stale);
        }
        other => panic!("{other:?}"),
    }

    // The same, but the window reopened (a new port) within the grace: it is dialled.
    let mut s = Search::new(Source::Mdns, &[], t0, TIMEOUT);
    s.advertised(&[stale], t0);
    s.due(t0);
    s.failed(stale, refused(), t1);
    let fresh = a("[fe80::1%2]:41000");
    s.advertised(&[fresh], t1 + GRACE / 2);
    assert_eq!(s.due(t1 + GRACE / 2), vec![fresh]);
    assert!(s.verdict(t1 + GRACE).is_none());
}

#[test]
fn a_window_no_longer_advertised_is_settled() {
    let t0 = Instant::now();
    let (x, y) = (a("10.0.0.1:4000"), a("10.0.0.2:4000"));
    let mut s = Search::new(Source::Mdns, &[], t0, TIMEOUT);
    s.advertised(&[x, y], t0);
    assert_eq!(s.due(t0), vec![x, y]);
    let t1 = t0 + Duration::from_secs(2);
    // x did not answer and is still advertised: tried again. y did not answer and its
    // device stopped advertising it meanwhile: settled.
    s.advertised(&[x], t1);
    assert!(s.failed(x, PairError::NoAnswer(Shown(x)), t1).is_none());
    assert!(s.failed(y, PairError::NoAnswer(Shown(y)), t1).is_none());
    assert_eq!(s.due(t1 + RETRY_PAUSE), vec![x]);
    s.advertised(&[], t1 + RETRY_PAUSE);
    s.failed(x, PairError::NoAnswer(Shown(x)), t1 + RETRY_PAUSE);
    assert!(s.verdict(t1 + RETRY_PAUSE).is_none());
    assert!(matches!(
        s.verdict(t1 + RETRY_PAUSE + GRACE),
        Some(PairError::Unadvertised(_))
    ));
}

#[test]
fn an_address_waiting_for_its_retry_is_settled_when_it_is_no_longer_advertised() {
    let t0 = Instant::now();
    let x = a("10.0.0.1:4000");
    let mut s = Search::new(Source::Mdns, &[], t0, TIMEOUT);
    s.advertised(&[x], t0);
    s.due(t0);
    s.failed(x, PairError::NoAnswer(Shown(x)), t0);
    s.advertised(&[], t0);
    assert!(s.due(t0 + RETRY_PAUSE).is_empty());
    assert!(matches!(
        s.verdict(t0 + GRACE),
        Some(PairError::Unadvertised(_))
    ));
    // It flapped back before the verdict: tried again.
    let mut s = Search::new(Source::Mdns, &[], t0, TIMEOUT);
    s.advertised(&[x], t0);
    s.due(t0);
    s.failed(x, PairError::NoAnswer(Shown(x)), t0);
    s.advertised(&[], t0);
    s.advertised(&[x], t0 + GRACE / 2);
    assert_eq!(s.due(t0 + GRACE / 2), vec![x]);
    assert!(s.verdict(t0 + GRACE).is_none());
}

#[test]
fn nothing_advertised_waits_for_the_deadline() {
    let t0 = Instant::now();
    let mut s = Search::new(Source::Mdns, &[], t0, TIMEOUT);
    s.advertised(&[], t0);
    assert!(s.due(t0).is_empty());
    assert_eq!(s.poll_timeout(), t0 + TIMEOUT);
    assert!(s.verdict(t0 + TIMEOUT / 2).is_none());
    assert!(matches!(s.verdict(t0 + TIMEOUT), Some(PairError::NotFound)));
}

#[test]
fn the_most_telling_error_is_reported() {
    let t0 = Instant::now();
    let (x, y) = (a("10.0.0.1:4000"), a("10.0.0.2:4000"));
    let mut s = Search::new(Source::Given, &[x, y], t0, TIMEOUT);
    s.due(t0);
    s.failed(x, PairError::NoAnswer(Shown(x)), t0);
    s.failed(y, refused(), t0);
    assert!(matches!(
        s.verdict(t0 + TIMEOUT),
        Some(PairError::Refused { .. })
    ));
    for e in [PairError::Ended, PairError::NoAnswer(Shown(x))] {
        assert_eq!(reach(&e), Reach::Retry);
    }
    assert_eq!(reach(&PairError::WindowUnproven), Reach::Join);
    assert_eq!(reach(&PairError::OwnWindow), Reach::Address);
}

#[test]
fn candidates_are_bounded() {
    let t0 = Instant::now();
    let many: Vec<SocketAddr> = (0..200u16)
        .map(|p| SocketAddr::from(([10, 0, 0, 1], 1000 + p)))
        .collect();
    let mut s = Search::new(Source::Mdns, &[], t0, TIMEOUT);
    s.advertised(&many, t0);
    assert_eq!(s.due(t0).len(), MAX_CANDIDATES);
}
