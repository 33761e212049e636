//! The high-water mark: apply, duplicate skip, new epoch, older epoch; and
//! that a skipped batch leaves the tables alone.

use super::*;

#[track_caller]
fn check(mark: (u64, u64), frame: (u64, u64), expect: Admission) {
    let mark = EdgeMark { epoch: mark.0, high_water: mark.1 };
    assert_eq!(mark.admit(frame.0, frame.1), expect, "mark {mark:?}, frame epoch {} sequence {}", frame.0, frame.1);
}

#[test]
fn admit() {
    use Admission::{Apply, Skip};
    // A new edge starts at epoch 0, high-water 0.
    check((0, 0), (0, 1), Apply);
    check((0, 0), (7, 1), Apply);
    // Next, duplicate and older within the epoch.
    check((3, 5), (3, 6), Apply);
    check((3, 5), (3, 5), Skip);
    check((3, 5), (3, 1), Skip);
    // A gap is applied; the edge's spool never drops a batch, so it means
    // the edge refused-and-dropped one, which must not block the rest.
    check((3, 5), (3, 9), Apply);
    // A newer epoch resets the high-water mark.
    check((3, 5), (4, 1), Apply);
    check((3, 5), (4, 5), Apply);
    check((3, 5), (4, 0), Skip);
    // An older epoch is a leftover of an earlier run.
    check((3, 5), (2, 6), Skip);
    check((3, 5), (2, 100), Skip);
    check((u64::MAX, u64::MAX), (u64::MAX, u64::MAX), Skip);
}

fn batch(edge_id: u32, epoch: u64, sequence: u64, impressions: u64) -> Batch {
    let key = RollupKey { minute_ms: 60_000, affiliate_id: 1, campaign_id: 2, sub1: String::new() };
    Batch {
        edge_id,
        epoch,
        sequence,
        rollups: vec![(key, RollupCounts { impressions, ..RollupCounts::default() })],
        conversions: Vec::new(),
        quarantine: Vec::new(),
    }
}

fn impressions(store: &Store) -> u64 {
    store.read(|tables| tables.rollups.values().map(|counts| counts.impressions).sum())
}

#[test]
fn apply_merges_once() {
    let store = Store::default();
    let steps = [
        (batch(1, 1, 1, 10), Admission::Apply, 10),
        (batch(1, 1, 1, 10), Admission::Skip, 10),
        (batch(1, 1, 2, 5), Admission::Apply, 15),
        // Another edge has its own mark.
        (batch(2, 1, 1, 1), Admission::Apply, 16),
        (batch(1, 0, 3, 100), Admission::Skip, 16),
        (batch(1, 2, 1, 100), Admission::Apply, 116),
        (batch(1, 1, 3, 100), Admission::Skip, 116),
        (batch(1, 2, 1, 100), Admission::Skip, 116),
    ];
    for (step_idx, (batch, expect, expect_impressions)) in steps.into_iter().enumerate() {
        assert_eq!(store.apply(batch), expect, "step {step_idx}");
        assert_eq!(impressions(&store), expect_impressions, "step {step_idx}");
    }
    store.read(|tables| assert_eq!(tables.rollups.len(), 1));
}
