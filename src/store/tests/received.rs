//! Which batch ranges received beside changes are kept (`batch::received`): the same as
//! checking every range against every change, at a cost near-linear in both.

use proptest::prelude::*;

use super::super::batch::received_counted;
use super::super::{BatchRange, Change, Hlc, Version};
use super::origin;

fn change(o: u8, seq: u64) -> Change {
    Change {
        key: format!("k{o}/{seq}"),
        value: Some(b"v".to_vec()),
        version: Version {
            hlc: Hlc::new(1_700_000_000_000, 0),
            origin: origin(o),
            seq,
        },
        supersedes: vec![],
    }
}

fn range(o: u8, first: u64, last: u64) -> BatchRange {
    BatchRange {
        origin: origin(o),
        first,
        last,
    }
}

/// The rule stated plainly: every range checked against every change.
fn every_pair(ranges: &[BatchRange], changes: &[Change]) -> Vec<BatchRange> {
    let mut out: Vec<BatchRange> = ranges
        .iter()
        .filter(|r| r.valid())
        .filter(|r| changes.iter().any(|c| r.contains(c.version.dot())))
        .copied()
        .collect();
    out.sort();
    out.dedup();
    out.truncate(changes.len());
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_same_ranges_as_checking_every_pair(
        ranges in prop::collection::vec((0..3u8, 0..40u64, 0..8u64), 0..30),
        changes in prop::collection::vec((0..3u8, 1..40u64), 0..30),
    ) {
        // Some ranges are malformed (first 0, or first > last), some repeat.
        let ranges: Vec<BatchRange> = ranges
            .into_iter()
            .map(|(o, first, len)| range(o, first, (first + len).saturating_sub(2)))
            .collect();
        let changes: Vec<Change> = changes.into_iter().map(|(o, s)| change(o, s)).collect();
        let mut probes = 0;
        prop_assert_eq!(
            received_counted(&ranges, &changes, &mut probes),
            every_pair(&ranges, &changes)
        );
    }
}

#[test]
fn many_ranges_and_changes_cost_near_linear_work() {
    // As a member can send in one reconciliation: 32,768 changes (even seqs) and 36,000
    // one- or two-change ranges, of which every fourth names a change.
    let n_changes = 32_768u64;
    let n_ranges = 36_000u64;
    let changes: Vec<Change> = (1..=n_changes).map(|i| change(1, 2 * i)).collect();
    let ranges: Vec<BatchRange> = (0..n_ranges)
        .map(|i| {
            let first = 2 * i + 1;
            range(1, first, if i % 4 == 0 { first + 1 } else { first })
        })
        .collect();
    let mut probes = 0;
    let got = received_counted(&ranges, &changes, &mut probes);
    let want: Vec<BatchRange> = (0..n_ranges)
        .filter(|i| i % 4 == 0 && 2 * i + 2 <= 2 * n_changes)
        .map(|i| range(1, 2 * i + 1, 2 * i + 2))
        .collect();
    assert_eq!(got, want);
    // A binary search per range: about 17 comparisons each, where checking every pair
    // makes 36,000 × 32,768 (1.2e9).
    assert!(
        probes <= 20 * n_ranges,
        "{probes} comparisons for {n_ranges} ranges and {n_changes} changes"
    );
}
