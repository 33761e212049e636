//! Findings from hand-built tables: which rows each kind makes, their
//! order, and what a filter keeps.

use edgetally_protocol::{QuarantineRow, RollupCounts, RollupKey};

use super::*;

const T0: i64 = 1_795_514_400_000;

fn key(minute: i64, affiliate_id: u32, campaign_id: u32, sub1: &str) -> RollupKey {
    RollupKey { minute_ms: T0 + minute * MINUTE_MS, affiliate_id, campaign_id, sub1: sub1.into() }
}

fn tables() -> Tables {
    let mut tables = Tables::default();
    let counts = |impressions, duplicates| RollupCounts { impressions, duplicates, ..RollupCounts::default() };
    tables.rollups.insert(key(0, 7, 3, "fb"), counts(10, 2));
    tables.rollups.insert(key(0, 8, 3, ""), counts(4, 0));
    tables.rollups.insert(key(2, 8, 4, "x"), counts(0, 5));
    for (offset_ms, reason) in [(1_000, "bad_id"), (2_000, "bad_id"), (61_000, "bad_amount"), (3_000, "bad_amount")] {
        tables.quarantine.push(QuarantineRow::new(T0 + offset_ms, "pixel", reason, "detail", "aff=x"));
    }
    tables
}

fn watch(silent_secs: i64) -> EdgeWatch {
    EdgeWatch {
        last_batch_ms: [(1, T0 + 30_000), (2, T0 + 170_000)].into(),
        since_ms: T0 - 5_000,
        silent_ms: Some(silent_secs * 1000),
    }
}

/// Each finding as `(minute offset or ms, kind, ids, count)` for compact
/// expectations.
type Summary = (i64, &'static str, Option<u32>, Option<u32>, u64);

fn summary(alerts: &[Alert]) -> Vec<Summary> {
    alerts
        .iter()
        .map(|alert| (alert.time_ms - T0, alert.kind.as_str(), alert.edge_id, alert.affiliate_id, alert.count))
        .collect()
}

#[test]
fn every_kind_in_time_order() {
    let all = |_: i64, _: Option<(u32, u32, &str)>| true;
    // Edges 1, 2 and 3 shipped before; 3 only before the start.
    let alerts = findings(&tables(), [1, 2, 3].into_iter(), &watch(60), T0 + 180_000, &all);
    assert_eq!(
        summary(&alerts),
        [
            (-5_000, "edge_silent", Some(3), None, 185),
            (0, "duplicates", None, Some(7), 2),
            (0, "quarantined", None, None, 1),
            (0, "quarantined", None, None, 2),
            (30_000, "edge_silent", Some(1), None, 150),
            (60_000, "quarantined", None, None, 1),
            (120_000, "duplicates", None, Some(8), 5),
        ]
    );
    let quarantined: Vec<&str> = alerts
        .iter()
        .filter(|alert| alert.kind == AlertKind::Quarantined)
        .map(|alert| alert.message.as_str())
        .collect();
    assert_eq!(
        quarantined,
        ["1 input quarantined: bad_amount", "2 inputs quarantined: bad_id", "1 input quarantined: bad_amount"]
    );
    assert_eq!(alerts[0].message, "edge 3 has shipped no batch for 185 s");
    assert_eq!(alerts[1].campaign_id, Some(3));
    assert_eq!(alerts[1].sub1.as_deref(), Some("fb"));
    assert_eq!(alerts[1].message, "2 duplicate events for affiliate 7 on campaign 3");
}

#[test]
fn an_edge_is_silent_only_past_the_threshold() {
    let all = |_: i64, _: Option<(u32, u32, &str)>| true;
    let silent = |now_ms: i64, watch: &EdgeWatch| -> Vec<Option<u32>> {
        findings(&Tables::default(), [1, 2].into_iter(), watch, now_ms, &all)
            .into_iter()
            .map(|alert| alert.edge_id)
            .collect()
    };
    assert_eq!(silent(T0 + 89_999, &watch(60)), Vec::<Option<u32>>::new());
    assert_eq!(silent(T0 + 90_000, &watch(60)), [Some(1)]);
    assert_eq!(silent(T0 + 230_000, &watch(60)), [Some(1), Some(2)]);
    let unwatched = EdgeWatch { silent_ms: None, ..watch(60) };
    assert!(silent(T0 + 10_000_000, &unwatched).is_empty());
}

#[test]
fn a_filter_keeps_only_what_it_names() {
    // As an affiliate's scoped query: its own keys, and no row without one.
    let affiliate_8 =
        |_: i64, keys: Option<(u32, u32, &str)>| keys.is_some_and(|(affiliate_id, _, _)| affiliate_id == 8);
    let alerts = findings(&tables(), [1].into_iter(), &watch(60), T0 + 180_000, &affiliate_8);
    assert_eq!(summary(&alerts), [(120_000, "duplicates", None, Some(8), 5)]);
    // A time range.
    let first_minute = |time_ms: i64, _: Option<(u32, u32, &str)>| (T0..T0 + MINUTE_MS).contains(&time_ms);
    let alerts = findings(&tables(), [1].into_iter(), &watch(60), T0 + 180_000, &first_minute);
    assert_eq!(
        summary(&alerts),
        [
            (0, "duplicates", None, Some(7), 2),
            (0, "quarantined", None, None, 1),
            (0, "quarantined", None, None, 2),
            (30_000, "edge_silent", Some(1), None, 150)
        ]
    );
}

#[test]
fn the_batch_has_the_schema_and_nulls_where_a_row_has_no_key() {
    let all = |_: i64, _: Option<(u32, u32, &str)>| true;
    let alerts = findings(&tables(), [3].into_iter(), &watch(60), T0 + 180_000, &all);
    let batch = alerts_to_batch(&alerts);
    assert_eq!(batch.schema(), *ALERTS_SCHEMA);
    assert_eq!(batch.num_rows(), alerts.len());
    let column = |name: &str| batch.column_by_name(name).expect("column").clone();
    assert_eq!(column("edge_id").null_count(), alerts.len() - 1);
    assert_eq!(column("affiliate_id").null_count(), alerts.len() - 2);
    let severity = column("severity");
    let severity = severity.as_any().downcast_ref::<arrow_array::StringArray>().expect("strings");
    assert_eq!(severity.value(0), "critical");
    assert_eq!(severity.value(1), "warning");
}

#[test]
fn fraud_flags_are_findings_per_rule_and_key() {
    let mut tables = Tables::default();
    let mut flagged = [0; edgetally_protocol::fraud::N_FLAGS];
    flagged[Flag::BotUserAgent.index()] = 3;
    flagged[Flag::OverDailyCap.index()] = 1;
    tables.rollups.insert(key(1, 7, 3, "fb"), RollupCounts { clicks: 9, duplicates: 1, flagged, ..Default::default() });
    tables.rollups.insert(key(1, 8, 3, ""), RollupCounts { clicks: 9, ..Default::default() });
    let all = |_: i64, _: Option<(u32, u32, &str)>| true;
    let alerts = findings(&tables, std::iter::empty(), &EdgeWatch::default(), T0 + 180_000, &all);
    assert_eq!(
        summary(&alerts),
        [
            (60_000, "duplicates", None, Some(7), 1),
            (60_000, "bot_user_agent", None, Some(7), 3),
            (60_000, "over_daily_cap", None, Some(7), 1),
        ]
    );
    assert_eq!(alerts[1].message, "3 events flagged bot_user_agent for affiliate 7 on campaign 3");
    assert_eq!(alerts[2].message, "1 event flagged over_daily_cap for affiliate 7 on campaign 3");
    assert!(alerts[1..].iter().all(|alert| alert.kind.severity() == "warning" && alert.campaign_id == Some(3)));
    // An affiliate's scope keeps its own findings only.
    let affiliate_8 = |_: i64, key: Option<(u32, u32, &str)>| key.is_some_and(|(affiliate_id, _, _)| affiliate_id == 8);
    assert!(findings(&tables, std::iter::empty(), &EdgeWatch::default(), T0 + 180_000, &affiliate_8).is_empty());
}
