//! The tracker: answer before row and row before answer, refusals and
//! duplicates not measured, foreign rows ignored, the bound, and the wait.

use arrow_array::{ArrayRef, StringArray};

use super::*;

/// Bounds each async test so a hang fails instead of stalling CI.
const TEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A follow batch holding `order_ids` (only the column the tracker reads).
fn rows(order_ids: &[&str]) -> RecordBatch {
    let order_ids: ArrayRef = Arc::new(StringArray::from(order_ids.to_vec()));
    RecordBatch::try_from_iter([("order_id", order_ids)]).unwrap()
}

#[track_caller]
fn check(tracker: &Tracker, expect: (u64, u64, u64)) {
    let report = tracker.report();
    assert_eq!((report.count, report.unseen, report.untracked), expect, "{report:?}");
}

#[test]
fn answers_and_rows_in_either_order() {
    let tracker = Tracker::new();
    let t0 = Instant::now();
    let ms = |n: u64| t0 + Duration::from_millis(n);

    // Answered, then seen 300 ms after its send.
    assert!(tracker.sent("a", ms(0)));
    tracker.answered("a", true);
    check(&tracker, (0, 1, 0));
    tracker.arrived(&rows(&["a", "not-ours"]), ms(300));
    check(&tracker, (1, 0, 0));

    // Seen before its answer was booked: 100 ms.
    assert!(tracker.sent("b", ms(1_000)));
    tracker.arrived(&rows(&["b"]), ms(1_100));
    check(&tracker, (1, 0, 0));
    tracker.answered("b", true);
    check(&tracker, (2, 0, 0));

    // Refused: forgotten, even if a row with its id shows up later.
    assert!(tracker.sent("c", ms(2_000)));
    tracker.answered("c", false);
    tracker.arrived(&rows(&["c"]), ms(2_100));
    check(&tracker, (2, 0, 0));

    // A resend of an order id still waiting is not registered again; the
    // first send is still measured once.
    assert!(tracker.sent("d", ms(3_000)));
    tracker.answered("d", true);
    assert!(!tracker.sent("d", ms(3_010)));
    tracker.arrived(&rows(&["d"]), ms(3_500));
    tracker.arrived(&rows(&["d"]), ms(3_600));
    check(&tracker, (3, 0, 0));

    // Accepted and never seen.
    assert!(tracker.sent("e", ms(4_000)));
    tracker.answered("e", true);
    check(&tracker, (3, 1, 0));

    // 100, 300 and 500 ms, to the histogram's three significant digits.
    let report = tracker.report();
    let whole_ms = |value: Option<f64>| value.map(f64::round);
    assert_eq!((whole_ms(report.p50_ms), whole_ms(report.max_ms)), (Some(300.0), Some(500.0)), "{report:?}");
    assert_eq!(report.follow_error, None);
}

#[test]
fn pending_is_bounded() {
    let tracker = Tracker::new();
    let now = Instant::now();
    for order_idx in 0..PENDING_MAX {
        assert!(tracker.sent(&order_idx.to_string(), now));
    }
    assert!(!tracker.sent("one-more", now));
    check(&tracker, (0, 0, 1));
    // A settled entry frees its place.
    tracker.answered("0", false);
    assert!(tracker.sent("one-more", now));
    check(&tracker, (0, 0, 1));
}

#[tokio::test]
async fn wait_ends_when_all_are_seen_or_at_the_deadline() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let tracker = Arc::new(Tracker::new());
        assert!(tracker.sent("a", Instant::now()));
        tracker.answered("a", true);
        // Far beyond the test's time-out: only the row can end this wait.
        let waiting = {
            let tracker = tracker.clone();
            tokio::spawn(async move { tracker.wait_seen(Instant::now() + Duration::from_secs(3_600)).await })
        };
        tracker.arrived(&rows(&["a"]), Instant::now());
        waiting.await.unwrap();
        check(&tracker, (1, 0, 0));

        // Nothing arrives: the deadline ends the wait.
        assert!(tracker.sent("b", Instant::now()));
        tracker.answered("b", true);
        let deadline = Instant::now() + Duration::from_millis(50);
        tracker.wait_seen(deadline).await;
        assert!(Instant::now() >= deadline);
        check(&tracker, (1, 1, 0));

        // A failed follow stream ends it at once, and is reported.
        tracker.failed("stream reset".to_owned());
        tracker.wait_seen(Instant::now() + Duration::from_secs(3_600)).await;
        assert_eq!(tracker.report().follow_error.as_deref(), Some("stream reset"));
    })
    .await
    .expect("test finishes in time");
}
