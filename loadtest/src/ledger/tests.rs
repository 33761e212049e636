//! Ledger bookkeeping and differences.

use super::*;

fn truth(kind: Kind, affiliate_id: u32, money: Option<(&'static str, i64)>) -> Truth {
    Truth { kind, affiliate_id, campaign_id: 3, money, order_id: None }
}

#[test]
fn accepts_merges_and_diffs() {
    let mut left = Ledger::default();
    left.accept(&truth(Kind::Impression, 1, None));
    left.accept(&truth(Kind::Sale, 1, Some(("EUR", 1999))));
    let mut right = Ledger::default();
    right.accept(&truth(Kind::Sale, 1, Some(("EUR", 1))));
    right.accept(&truth(Kind::Click, 2, None));
    right.duplicate(&truth(Kind::Sale, 1, Some(("EUR", 1))));
    left.merge(right);
    assert_eq!(left.counts[&(1, 3)], Counts { impressions: 1, clicks: 0, leads: 0, sales: 2, duplicates: 1 });
    assert_eq!(left.counts[&(2, 3)], Counts { impressions: 0, clicks: 1, leads: 0, sales: 0, duplicates: 0 });
    assert_eq!(left.money[&(1, 3, "EUR".to_owned())], 2000);
    assert_eq!(left.n_accepted(), 4);
    assert!(left.diff(&left.clone()).is_empty());

    let mut actual = left.clone();
    actual.counts.get_mut(&(2, 3)).unwrap().clicks = 2;
    actual.money.insert((1, 3, "JPY".to_owned()), 5);
    assert_eq!(
        left.diff(&actual),
        vec![
            "affiliate/campaign 2/3: expected impressions 0 clicks 1 leads 0 sales 0 duplicates 0, aggregator has 0 2 0 0 0"
                .to_owned(),
            "money 1/3/JPY: expected 0 minor units, aggregator has 5".to_owned(),
        ]
    );
}

#[test]
fn file_round_trip() {
    let mut ledger = Ledger { first_sent_ms: 5, last_answer_ms: 9, ..Ledger::default() };
    ledger.accept(&truth(Kind::Sale, 4_000_000_000, Some(("BHD", 1250))));
    ledger.accept(&truth(Kind::Lead, 2, None));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.json");
    ledger.write(&path).unwrap();
    assert_eq!(Ledger::read(&path).unwrap(), ledger);
    let bad = r#"{"first_sent_ms":0,"last_answer_ms":0,"counts":{"1":{"impressions":1,"clicks":0,"leads":0,"sales":0,"duplicates":0}},"money":{}}"#;
    std::fs::write(&path, bad).unwrap();
    let error = Ledger::read(&path).unwrap_err().to_string();
    assert_eq!(error, "bad ledger key \"1\": expected 2 parts separated by /");
}
