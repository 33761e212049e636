//! Ledger bookkeeping and differences.

use super::*;

fn truth(kind: Kind, affiliate_id: u32, money: Option<(&'static str, i64)>) -> Truth {
    Truth { kind, affiliate_id, campaign_id: 3, money, order_id: None }
}

#[test]
fn accepts_merges_and_diffs() {
    let mut left = Ledger::default();
    left.accept(&truth(Kind::Impression, 1, None), false);
    left.accept(&truth(Kind::Sale, 1, Some(("EUR", 1999))), false);
    let mut right = Ledger::default();
    right.accept(&truth(Kind::Sale, 1, Some(("EUR", 1))), false);
    right.accept(&truth(Kind::Click, 2, None), false);
    right.duplicate(&truth(Kind::Sale, 1, Some(("EUR", 1))));
    // Flagged: counted apart whatever the kind; a held sale's money is
    // still booked.
    right.accept(&truth(Kind::Click, 2, None), true);
    right.accept(&truth(Kind::Sale, 1, Some(("EUR", 10_000))), true);
    left.merge(right);
    let counts = |impressions, clicks, sales, duplicates, flagged| Counts {
        impressions,
        clicks,
        leads: 0,
        sales,
        duplicates,
        flagged,
    };
    assert_eq!(left.counts[&(1, 3)], counts(1, 0, 2, 1, 1));
    assert_eq!(left.counts[&(2, 3)], counts(0, 1, 0, 0, 1));
    assert_eq!(left.money[&(1, 3, "EUR".to_owned())], 12_000);
    assert_eq!(left.n_accepted(), 6);
    assert!(left.diff(&left.clone()).is_empty());

    let mut actual = left.clone();
    actual.counts.get_mut(&(2, 3)).unwrap().clicks = 2;
    actual.money.insert((1, 3, "JPY".to_owned()), 5);
    assert_eq!(
        left.diff(&actual),
        vec![
            "affiliate/campaign 2/3: expected impressions 0 clicks 1 leads 0 sales 0 duplicates 0 flagged 1, aggregator has 0 2 0 0 0 1"
                .to_owned(),
            "money 1/3/JPY: expected 0 minor units, aggregator has 5".to_owned(),
        ]
    );
}

#[test]
fn file_round_trip() {
    let mut ledger = Ledger { first_sent_ms: 5, last_answer_ms: 9, ..Ledger::default() };
    ledger.accept(&truth(Kind::Sale, 4_000_000_000, Some(("BHD", 1250))), false);
    ledger.accept(&truth(Kind::Lead, 2, None), true);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.json");
    ledger.write(&path).unwrap();
    assert_eq!(Ledger::read(&path).unwrap(), ledger);
    let bad = r#"{"first_sent_ms":0,"last_answer_ms":0,"counts":{"1":{"impressions":1,"clicks":0,"leads":0,"sales":0,"duplicates":0}},"money":{}}"#;
    std::fs::write(&path, bad).unwrap();
    let error = Ledger::read(&path).unwrap_err().to_string();
    assert_eq!(error, "bad ledger key \"1\": expected 2 parts separated by /");
}
