//! Commission rules, status changes and the ledger's Arrow form.

use edgetally_protocol::Money;

use super::*;

/// Campaign 1: CPA 12.50 USD. Campaign 2: revshare 7.5%. Campaign 3: no
/// payout. Affiliate 10: CPA 1500 JPY on campaign 2, revshare 10% on every
/// other campaign; parent 20, which takes 5% on top. Affiliate 20: CPA
/// 2.125 BHD on campaign 3 and a parent itself (30, which takes nothing
/// from grandchildren). Affiliate 40: parent 10, which has no override.
const RULES: &str = r#"{
  "campaigns": [
    {"id": 1, "landing_url": "https://a.example/", "payout": {"type": "cpa", "amount": "12.50", "currency": "USD"}},
    {"id": 2, "landing_url": "https://b.example/", "payout": {"type": "revshare", "percent": "7.5"}},
    {"id": 3, "landing_url": "https://c.example/"}
  ],
  "affiliates": [
    {"id": 10, "parent_id": 20, "payouts": [
      {"campaign_id": 2, "payout": {"type": "cpa", "amount": "1500", "currency": "JPY"}},
      {"payout": {"type": "revshare", "percent": "10"}}]},
    {"id": 20, "parent_id": 30, "override_percent": "5", "payouts": [
      {"campaign_id": 3, "payout": {"type": "cpa", "amount": "2.125", "currency": "BHD"}}]},
    {"id": 30, "override_percent": "50"},
    {"id": 40, "parent_id": 10}
  ]
}"#;

fn row(affiliate_id: u32, campaign_id: u32, kind: EventKind, amount: Option<(&str, &str)>) -> ConversionRow {
    ConversionRow {
        time_ms: 1_795_514_400_000,
        kind,
        affiliate_id,
        campaign_id,
        sub1: String::new(),
        money: amount.map(|(text, code)| Money::parse(text, Currency::parse(code).unwrap()).unwrap()),
        order_id: Some("o-1".into()),
        click_id: None,
        event_id: None,
        flag: None,
    }
}

/// `expect`: commission minor units and currency, rule, parent and its
/// override.
#[track_caller]
fn check(
    affiliate_id: u32,
    campaign_id: u32,
    amount: Option<(&str, &str)>,
    expect: (i64, Option<&str>, &str, Option<u32>, i64),
) {
    let rules = Rules::parse(bytes::Bytes::from_static(RULES.as_bytes())).unwrap();
    let kind = if amount.is_some() { EventKind::Sale } else { EventKind::Lead };
    let commission = Commission::compute(&rules.campaigns, &row(affiliate_id, campaign_id, kind, amount));
    let actual = (
        commission.amount_minor,
        commission.currency.as_ref().map(Currency::code),
        commission.rule.as_str(),
        commission.parent_affiliate_id,
        commission.parent_amount_minor,
    );
    assert_eq!(actual, expect, "affiliate {affiliate_id}, campaign {campaign_id}, {amount:?}");
}

#[test]
fn campaign_defaults() {
    // CPA pays its own amount and currency whatever the sale's.
    check(1, 1, Some(("99.99", "EUR")), (1250, Some("USD"), "campaign/cpa", None, 0));
    check(1, 1, None, (1250, Some("USD"), "campaign/cpa", None, 0));
    // Revshare: 7.5% of the sale in its currency, half to even.
    check(1, 2, Some(("200.00", "USD")), (1500, Some("USD"), "campaign/revshare", None, 0));
    check(1, 2, Some(("0.10", "EUR")), (1, Some("EUR"), "campaign/revshare", None, 0)); // 0.75 -> 1
    check(1, 2, Some(("0.30", "EUR")), (2, Some("EUR"), "campaign/revshare", None, 0)); // 2.25 -> 2
    check(1, 2, Some(("1000", "JPY")), (75, Some("JPY"), "campaign/revshare", None, 0));
    check(1, 2, Some(("1.010", "BHD")), (76, Some("BHD"), "campaign/revshare", None, 0)); // 75.75 -> 76
    check(1, 2, Some(("1.030", "BHD")), (77, Some("BHD"), "campaign/revshare", None, 0)); // 77.25 -> 77
    // Revshare of a lead without an amount earns nothing.
    check(1, 2, None, (0, None, "campaign/revshare", None, 0));
    // No payout anywhere.
    check(1, 3, Some(("5.00", "USD")), (0, None, "none", None, 0));
    check(1, 99, None, (0, None, "none", None, 0));
}

#[test]
fn affiliate_overrides_and_parents() {
    // Per-campaign override beats the affiliate-wide one; the parent (20)
    // takes 5% of the child's commission on top, half to even.
    check(10, 2, Some(("200.00", "USD")), (1500, Some("JPY"), "affiliate_campaign/cpa", Some(20), 75));
    // Affiliate-wide revshare replaces the campaign's CPA.
    check(10, 1, Some(("123.45", "USD")), (1234, Some("USD"), "affiliate/revshare", Some(20), 62)); // 1234.5 -> 1234, 61.7 -> 62
    check(10, 3, Some(("2.500", "BHD")), (250, Some("BHD"), "affiliate/revshare", Some(20), 12)); // 12.5 -> 12
    // 20's own commission: its parent 30 takes 50%; 30 takes nothing
    // from 10, its grandchild (above).
    check(20, 3, None, (2125, Some("BHD"), "affiliate_campaign/cpa", Some(30), 1062)); // 1062.5 -> 1062
    check(20, 1, None, (1250, Some("USD"), "campaign/cpa", Some(30), 625));
    // A parent without an override earns nothing, but is named.
    check(40, 1, None, (1250, Some("USD"), "campaign/cpa", Some(10), 0));
}

#[track_caller]
fn check_status_change(json: &str, expect: Result<(ConversionKey, Status), &str>) {
    let actual = StatusChange::parse(json.as_bytes());
    match expect {
        Ok((key, status)) => {
            let change = actual.unwrap();
            assert_eq!(change, StatusChange { key, status }, "{json}");
            assert_eq!(StatusChange::parse(&change.render()).unwrap(), change, "{json} round trip");
        }
        Err(fragment) => {
            let message = actual.unwrap_err().to_string();
            assert!(message.contains(fragment), "{json}: {message:?} lacks {fragment:?}");
        }
    }
}

#[test]
fn status_changes() {
    let order = ConversionKey::Order { campaign_id: 3, order_id: "A-1".into() };
    check_status_change(r#"{"campaign_id":3,"order_id":"A-1","status":"rejected"}"#, Ok((order, Status::Rejected)));
    let click = ConversionKey::Click { click_id: "c".into(), kind: EventKind::Lead };
    check_status_change(r#"{"click_id":"c","kind":"lead","status":"approved"}"#, Ok((click, Status::Approved)));
    let event = ConversionKey::Event { event_id: "e".into() };
    check_status_change(r#"{"event_id":"e","status":"pending"}"#, Ok((event, Status::Pending)));
    check_status_change(r#"{"event_id":"e","status":"refunded"}"#, Err("unknown status \"refunded\""));
    check_status_change(r#"{"click_id":"c","kind":"click","status":"approved"}"#, Err("unknown kind \"click\""));
    check_status_change(r#"{"campaign_id":3,"status":"approved"}"#, Err("name the conversion"));
    check_status_change(r#"{"campaign_id":3,"order_id":"A","event_id":"e","status":"approved"}"#, Err("name the"));
    check_status_change(r#"{"order_id":"A","status":"approved","note":"x"}"#, Err("unknown field `note`"));
    check_status_change(&format!(r#"{{"event_id":"{}","status":"approved"}}"#, "e".repeat(2000)), Err("too large"));
}

#[test]
fn ledger_round_trips_through_arrow() {
    let rules = Rules::parse(bytes::Bytes::from_static(RULES.as_bytes())).unwrap();
    let conversions: Vec<Conversion> = [
        (row(10, 2, EventKind::Sale, Some(("200.00", "USD"))), Status::Approved),
        (row(1, 3, EventKind::Lead, None), Status::Rejected),
        (row(40, 1, EventKind::Lead, None), Status::Pending),
    ]
    .into_iter()
    .enumerate()
    .map(|(edge_id, (row, status))| {
        let commission = Commission::compute(&rules.campaigns, &row);
        Conversion { row, edge_id: edge_id as u32, status, commission }
    })
    .collect();
    let batch = ledger_to_batch(conversions.iter());
    assert_eq!(batch.schema(), *LEDGER_SCHEMA);
    assert_eq!(ledger_from_batch(&batch).unwrap(), conversions);
}
