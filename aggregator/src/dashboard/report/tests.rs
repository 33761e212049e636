//! Periods, metrics and CSV of the dashboard's answers, from hand-built totals.

use super::*;

fn zone(name: &str) -> TimeBuckets {
    TimeBuckets::new(Granularity::Day, name).unwrap()
}

fn ms(text: &str) -> i64 {
    text.parse::<Timestamp>().unwrap().as_millisecond()
}

#[test]
fn periods_start_at_local_midnight() {
    let now = ms("2026-03-29T10:00:00Z");
    let (today, before) = PeriodName::Today.resolve(&zone("Europe/Berlin"), now).unwrap();
    // The clocks go forward that night: a 23-hour day.
    assert_eq!((today.from_ms, today.to_ms), (ms("2026-03-28T23:00:00Z"), ms("2026-03-29T22:00:00Z")));
    assert_eq!((before.from_ms, before.to_ms), (ms("2026-03-28T00:00:00Z"), ms("2026-03-28T23:00:00Z")));
    let (yesterday, _) = PeriodName::Yesterday.resolve(&zone("UTC"), now).unwrap();
    assert_eq!((yesterday.from_ms, yesterday.to_ms), (ms("2026-03-28T00:00:00Z"), ms("2026-03-29T00:00:00Z")));
    let (week, _) = PeriodName::Days7.resolve(&zone("UTC"), now).unwrap();
    assert_eq!((week.from_ms, week.to_ms), (ms("2026-03-23T00:00:00Z"), ms("2026-03-30T00:00:00Z")));
    let (month, _) = PeriodName::Month.resolve(&zone("Asia/Kolkata"), now).unwrap();
    assert_eq!((month.from_ms, month.to_ms), (ms("2026-02-28T18:30:00Z"), ms("2026-03-31T18:30:00Z")));
    assert_eq!(month.tz, "Asia/Kolkata");
}

fn totals(clicks: u64, sales: u64, money: &[(&str, i128, i128, i128)]) -> GroupTotals {
    let mut totals = GroupTotals::default();
    totals.counts.clicks = clicks;
    totals.counts.sales = sales;
    for &(code, revenue_minor, commission_minor, parent_commission_minor) in money {
        totals.money.insert(
            Currency::parse(code).unwrap(),
            MoneyTotals { revenue_minor, commission_minor, parent_commission_minor },
        );
    }
    totals
}

#[test]
fn metrics_derive_payable_margin_epc_and_the_reporting_total() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rates.json");
    std::fs::write(&path, r#"{"reporting_currency":"EUR","rates":{"USD":"0.5"}}"#).unwrap();
    let rates = ExchangeRates::load(&path).unwrap();
    let totals = totals(4, 1, &[("USD", 10_000, 1_250, 62), ("EUR", 8_000, 800, 40), ("BHD", 12_345, 1_234, 0)]);
    let metrics = serde_json::to_value(Metrics::of(&totals, Some(&rates)).unwrap()).unwrap();
    assert_eq!(metrics["conversions"], 1);
    assert_eq!(metrics["conversion_rate"], 0.25);
    let usd = &metrics["money"][2];
    assert_eq!(usd["currency"], "USD");
    assert_eq!(usd["payable_minor"], "1312");
    assert_eq!(usd["margin_minor"], "8688");
    assert_eq!(usd["epc_minor"], 328.0);
    let reporting = &metrics["reporting"];
    // EUR 80.00 + USD 100.00 at 0.5; BHD has no rate.
    assert_eq!(reporting["revenue_minor"], "13000");
    // EUR 8.40 + USD 13.12 at 0.5 = 6.56.
    assert_eq!(reporting["payable_minor"], "1496");
    assert_eq!(reporting["margin_minor"], "11504");
    assert_eq!(reporting["unconverted"], serde_json::json!(["BHD"]));
    let none = serde_json::to_value(Metrics::of(&GroupTotals::default(), None).unwrap()).unwrap();
    assert_eq!(none["conversion_rate"], serde_json::Value::Null);
    assert_eq!(none["reporting"], serde_json::Value::Null);
    assert_eq!(none["money"], serde_json::json!([]));
}

#[test]
fn major_units_keep_every_digit() {
    assert_eq!(major_units(1_250, 2), "12.50");
    assert_eq!(major_units(-5, 2), "-0.05");
    assert_eq!(major_units(12_345, 3), "12.345");
    assert_eq!(major_units(500, 0), "500");
    assert_eq!(major_units(0, 2), "0.00");
}

#[test]
fn the_csv_has_counters_once_per_id_and_no_formulas() {
    let mut seven = totals(4, 2, &[("EUR", 8_000, 800, 40), ("USD", 10_000, 1_250, 62)]);
    // Three flagged events, by two rules: one column, their sum.
    seven.counts.flagged = [2, 0, 0, 1, 0];
    let rows = vec![(7, seven), (9, totals(1, 0, &[]))];
    let csv = String::from_utf8(table_csv(GroupColumn::AffiliateId, &rows, None).unwrap()).unwrap();
    assert_eq!(
        csv,
        "affiliate_id,impressions,clicks,unique_clicks,leads,sales,conversions,duplicates,flagged,currency,revenue,commission,parent_commission,payable,margin\n\
         7,0,4,0,0,2,2,0,3,EUR,80.00,8.00,0.40,8.40,71.60\n\
         7,,,,,,,,,USD,100.00,12.50,0.62,13.12,86.88\n\
         9,0,1,0,0,0,0,0,0,,,,,,\n"
    );
    let filtered = String::from_utf8(table_csv(GroupColumn::AffiliateId, &rows, Some("9")).unwrap()).unwrap();
    assert_eq!(filtered.lines().count(), 2);
    assert_eq!(no_formula("=HYPERLINK(1)"), "'=HYPERLINK(1)");
    assert_eq!(no_formula("newsletter"), "newsletter");
}
