//! The high-water mark: apply, duplicate skip, new epoch, older epoch; and
//! that a skipped batch leaves the tables alone.

use edgetally_protocol::event::EventKind;

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

/// A batch of edge `edge_id` with one sale of `order_id` for 200.00 USD,
/// counted in its rollup as the edge counts it.
fn sale(edge_id: u32, sequence: u64, order_id: &str, sub1: &str) -> Batch {
    let row = ConversionRow {
        time_ms: 60_000 + 5_000,
        kind: EventKind::Sale,
        affiliate_id: 1,
        campaign_id: 2,
        sub1: sub1.into(),
        money: Some(edgetally_protocol::Money { minor_units: 20_000, currency: usd() }),
        order_id: Some(order_id.into()),
        click_id: None,
        event_id: None,
        flag: None,
    };
    let counts = RollupCounts { sales: 1, ..RollupCounts::default() };
    Batch {
        edge_id,
        epoch: 1,
        sequence,
        rollups: vec![(rollup_key(&row), counts)],
        conversions: vec![row],
        quarantine: Vec::new(),
    }
}

fn usd() -> Currency {
    Currency::parse("USD").unwrap()
}

/// Sales counted, duplicates counted and money of the rollup key with
/// `sub1`: (sales, duplicates, revenue, commission).
fn totals(store: &Store, sub1: &str) -> (u64, u64, i128, i128) {
    let key = RollupKey { minute_ms: 60_000, affiliate_id: 1, campaign_id: 2, sub1: sub1.into() };
    store.read(|tables| {
        let counts = tables.rollups.get(&key).copied().unwrap_or_default();
        let money = tables.money.get(&(key, usd())).copied().unwrap_or_default();
        (counts.sales, counts.duplicates, money.revenue_minor, money.commission_minor)
    })
}

#[test]
fn cross_edge_copies_are_booked_once() {
    let store = Store::default();
    let rules =
        r#"{"campaigns":[{"id":2,"landing_url":"https://a.example/","payout":{"type":"revshare","percent":"10"}}]}"#;
    store.set_rules(Rules::parse(bytes::Bytes::from_static(rules.as_bytes())).unwrap());
    assert_eq!(store.apply(sale(1, 1, "A", "x")), Admission::Apply);
    // The same order through another edge, under another sub1: the first
    // copy stays booked; the copy's sale becomes a duplicate where the
    // edge counted it.
    assert_eq!(store.apply(sale(2, 1, "A", "y")), Admission::Apply);
    assert_eq!(store.apply(sale(2, 2, "B", "y")), Admission::Apply);
    assert_eq!(totals(&store, "x"), (1, 0, 20_000, 2_000));
    assert_eq!(totals(&store, "y"), (1, 1, 20_000, 2_000));
    store.read(|tables| {
        let booked: Vec<_> = tables.conversions.iter().map(|c| (c.edge_id, c.row.order_id.clone().unwrap())).collect();
        assert_eq!(booked, [(1, "A".to_owned()), (2, "B".to_owned())]);
        assert_eq!(tables.conversions_duplicate, 1);
    });
}

#[test]
fn rejecting_reverses_the_money() {
    let store = Store::default();
    let rules = r#"{"campaigns":[{"id":2,"landing_url":"https://a.example/","payout":{"type":"cpa","amount":"5","currency":"USD"}}]}"#;
    store.set_rules(Rules::parse(bytes::Bytes::from_static(rules.as_bytes())).unwrap());
    assert_eq!(store.apply(sale(1, 1, "A", "")), Admission::Apply);
    assert_eq!(store.apply(sale(1, 2, "B", "")), Admission::Apply);
    assert_eq!(totals(&store, ""), (2, 0, 40_000, 1_000));
    let key = ConversionKey::Order { campaign_id: 2, order_id: "A".into() };
    let steps = [
        (Status::Approved, (2, 0, 40_000, 1_000)),
        (Status::Rejected, (2, 0, 20_000, 500)),
        // Rejecting twice changes nothing.
        (Status::Rejected, (2, 0, 20_000, 500)),
        (Status::Pending, (2, 0, 40_000, 1_000)),
        (Status::Rejected, (2, 0, 20_000, 500)),
    ];
    for (status, expect) in steps {
        assert_eq!(store.set_status(&key, status).unwrap().status, status);
        assert_eq!(totals(&store, ""), expect, "after {status:?}");
    }
    let unknown = ConversionKey::Order { campaign_id: 2, order_id: "Z".into() };
    assert!(store.set_status(&unknown, Status::Rejected).is_none());
}
