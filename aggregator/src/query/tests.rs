//! Grouping and filtering over a small store, with exact sums.

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMillisecondType, UInt32Type, UInt64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use edgetally_protocol::batch::ConversionRow;
use edgetally_protocol::event::EventKind;

use edgetally_protocol::QuarantineRow;

use super::*;
use crate::follow::Applied;
use crate::store::Batch;
use crate::ticket;

const M0: i64 = 1_795_514_400_000; // 2026-11-24T10:00:00Z
const M1: i64 = M0 + 60_000;
const M2: i64 = M0 + 120_000;

fn rollup(
    minute_ms: i64,
    affiliate_id: u32,
    campaign_id: u32,
    sub1: &str,
    counts: [u64; 4],
) -> (RollupKey, RollupCounts) {
    let [impressions, clicks, leads, sales] = counts;
    (
        RollupKey { minute_ms, affiliate_id, campaign_id, sub1: sub1.to_owned() },
        // Duplicates mirror leads and unique clicks mirror sales, so their sums
        // are checked against known ones.
        RollupCounts { impressions, clicks, unique_clicks: sales, leads, sales, duplicates: leads },
    )
}

fn conversion(time_ms: i64, affiliate_id: u32, order_id: &str) -> ConversionRow {
    ConversionRow {
        time_ms,
        kind: EventKind::Lead,
        affiliate_id,
        campaign_id: 9,
        sub1: String::new(),
        money: None,
        order_id: Some(order_id.to_owned()),
        click_id: None,
        event_id: None,
    }
}

/// Two batches of two edges.
fn batches() -> [Batch; 2] {
    let first = Batch {
        edge_id: 1,
        epoch: 1,
        sequence: 1,
        rollups: vec![
            rollup(M0, 7, 100, "", [10, 2, 1, 0]),
            rollup(M0, 7, 100, "fb", [5, 1, 0, 0]),
            rollup(M0, 8, 100, "", [3, 0, 0, 0]),
            rollup(M1, 7, 200, "", [1, 1, 1, 1]),
        ],
        conversions: vec![conversion(M1 + 5, 7, "b"), conversion(M0 + 5, 8, "a")],
        quarantine: vec![
            QuarantineRow::new(M1 + 9, "pixel", "bad_id", "bad affiliate_id", "aff=x&cmp=1"),
            QuarantineRow::new(M0 + 9, "postback", "click_id_forged", "forged click id", "click_id=AQEA"),
        ],
    };
    // A second edge adds to keys the first one has.
    let second = Batch {
        edge_id: 2,
        epoch: 1,
        sequence: 1,
        rollups: vec![rollup(M0, 7, 100, "", [100, 20, 0, 0]), rollup(M2, 8, 100, "", [4, 4, 0, 0])],
        conversions: vec![
            conversion(M1 + 5, 8, "c"),
            ConversionRow { campaign_id: 10, sub1: "fb".to_owned(), ..conversion(M2, 7, "d") },
        ],
        quarantine: vec![QuarantineRow::new(M2 + 1, "events", "bad_amount", "too many decimals", "")],
    };
    [first, second]
}

fn store() -> Store {
    let store = Store::default();
    for batch in batches() {
        store.apply(batch);
    }
    store
}

/// One line per row, `name=value` per column.
fn render(batch: &RecordBatch) -> String {
    let schema = batch.schema();
    let mut lines = Vec::new();
    for row_idx in 0..batch.num_rows() {
        let cells: Vec<String> = schema
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(field, column)| {
                let value = if column.is_null(row_idx) {
                    "null".to_owned()
                } else {
                    match field.data_type() {
                        DataType::Timestamp(..) => {
                            let ms = column.as_primitive::<TimestampMillisecondType>().value(row_idx);
                            format!("M{}", (ms - M0) / 60_000)
                        }
                        DataType::UInt32 => column.as_primitive::<UInt32Type>().value(row_idx).to_string(),
                        DataType::UInt64 => column.as_primitive::<UInt64Type>().value(row_idx).to_string(),
                        DataType::Int64 => column.as_primitive::<Int64Type>().value(row_idx).to_string(),
                        DataType::Utf8 => format!("{:?}", column.as_string::<i32>().value(row_idx)),
                        other => panic!("unexpected type {other}"),
                    }
                };
                format!("{}={value}", field.name())
            })
            .collect();
        lines.push(cells.join(" "));
    }
    lines.join("\n")
}

#[track_caller]
fn check(ticket: &str, expect: &str) {
    let query = ticket::parse(ticket.as_bytes()).unwrap();
    let batch = query.execute(&store()).unwrap();
    assert_eq!(batch.schema(), query.schema(), "{ticket}");
    let expect: Vec<&str> = expect.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
    assert_eq!(render(&batch), expect.join("\n"), "{ticket}");
}

#[test]
fn rollups_grouped() {
    check(
        r#"{"dataset":"rollups"}"#,
        r#"
        minute=M0 affiliate_id=7 campaign_id=100 sub1="" impressions=110 clicks=22 unique_clicks=0 leads=1 sales=0 duplicates=1
        minute=M0 affiliate_id=7 campaign_id=100 sub1="fb" impressions=5 clicks=1 unique_clicks=0 leads=0 sales=0 duplicates=0
        minute=M0 affiliate_id=8 campaign_id=100 sub1="" impressions=3 clicks=0 unique_clicks=0 leads=0 sales=0 duplicates=0
        minute=M1 affiliate_id=7 campaign_id=200 sub1="" impressions=1 clicks=1 unique_clicks=1 leads=1 sales=1 duplicates=1
        minute=M2 affiliate_id=8 campaign_id=100 sub1="" impressions=4 clicks=4 unique_clicks=0 leads=0 sales=0 duplicates=0
        "#,
    );
    check(
        r#"{"dataset":"rollups","group_by":["affiliate_id","campaign_id"]}"#,
        r#"
        affiliate_id=7 campaign_id=100 impressions=115 clicks=23 unique_clicks=0 leads=1 sales=0 duplicates=1
        affiliate_id=7 campaign_id=200 impressions=1 clicks=1 unique_clicks=1 leads=1 sales=1 duplicates=1
        affiliate_id=8 campaign_id=100 impressions=7 clicks=4 unique_clicks=0 leads=0 sales=0 duplicates=0
        "#,
    );
    check(
        r#"{"dataset":"rollups","group_by":["sub1","campaign_id"]}"#,
        r#"
        campaign_id=100 sub1="" impressions=117 clicks=26 unique_clicks=0 leads=1 sales=0 duplicates=1
        campaign_id=100 sub1="fb" impressions=5 clicks=1 unique_clicks=0 leads=0 sales=0 duplicates=0
        campaign_id=200 sub1="" impressions=1 clicks=1 unique_clicks=1 leads=1 sales=1 duplicates=1
        "#,
    );
    check(
        r#"{"dataset":"rollups","group_by":["minute"]}"#,
        r#"
        minute=M0 impressions=118 clicks=23 unique_clicks=0 leads=1 sales=0 duplicates=1
        minute=M1 impressions=1 clicks=1 unique_clicks=1 leads=1 sales=1 duplicates=1
        minute=M2 impressions=4 clicks=4 unique_clicks=0 leads=0 sales=0 duplicates=0
        "#,
    );
    check(
        r#"{"dataset":"rollups","group_by":[]}"#,
        "impressions=123 clicks=28 unique_clicks=1 leads=2 sales=1 duplicates=2",
    );
}

#[test]
fn rollups_filtered() {
    // Half-open on the minute: [M1, M2) is M1 alone.
    let (m1, m2) = (M1, M2);
    check(
        &format!(r#"{{"dataset":"rollups","from":{m1},"to":{m2},"group_by":["minute"]}}"#),
        "minute=M1 impressions=1 clicks=1 unique_clicks=1 leads=1 sales=1 duplicates=1",
    );
    check(
        r#"{"dataset":"rollups","from":"2026-11-24T10:01:00Z","group_by":["minute"]}"#,
        "minute=M1 impressions=1 clicks=1 unique_clicks=1 leads=1 sales=1 duplicates=1\nminute=M2 impressions=4 clicks=4 unique_clicks=0 leads=0 sales=0 duplicates=0",
    );
    // A bound inside a minute leaves that minute out of `from`.
    check(
        &format!(r#"{{"dataset":"rollups","from":{},"to":{m2},"group_by":[]}}"#, M0 + 1),
        "impressions=1 clicks=1 unique_clicks=1 leads=1 sales=1 duplicates=1",
    );
    check(
        r#"{"dataset":"rollups","affiliate_id":8,"group_by":["affiliate_id"]}"#,
        "affiliate_id=8 impressions=7 clicks=4 unique_clicks=0 leads=0 sales=0 duplicates=0",
    );
    check(r#"{"dataset":"rollups","affiliate_id":9}"#, "");
    check(r#"{"dataset":"rollups","to":0}"#, "");
    check(
        r#"{"dataset":"rollups","campaign_id":100,"group_by":["affiliate_id"]}"#,
        r#"
        affiliate_id=7 impressions=115 clicks=23 unique_clicks=0 leads=1 sales=0 duplicates=1
        affiliate_id=8 impressions=7 clicks=4 unique_clicks=0 leads=0 sales=0 duplicates=0
        "#,
    );
    check(
        r#"{"dataset":"rollups","campaign_id":200}"#,
        r#"minute=M1 affiliate_id=7 campaign_id=200 sub1="" impressions=1 clicks=1 unique_clicks=1 leads=1 sales=1 duplicates=1"#,
    );
    check(
        r#"{"dataset":"rollups","sub1":"fb","group_by":["minute","sub1"]}"#,
        r#"minute=M0 sub1="fb" impressions=5 clicks=1 unique_clicks=0 leads=0 sales=0 duplicates=0"#,
    );
    // `""` is the rows without a sub1; all three filters at once.
    check(
        r#"{"dataset":"rollups","sub1":"","group_by":["minute"]}"#,
        r#"
        minute=M0 impressions=113 clicks=22 unique_clicks=0 leads=1 sales=0 duplicates=1
        minute=M1 impressions=1 clicks=1 unique_clicks=1 leads=1 sales=1 duplicates=1
        minute=M2 impressions=4 clicks=4 unique_clicks=0 leads=0 sales=0 duplicates=0
        "#,
    );
    check(
        r#"{"dataset":"rollups","affiliate_id":7,"campaign_id":100,"sub1":"","group_by":[]}"#,
        "impressions=110 clicks=22 unique_clicks=0 leads=1 sales=0 duplicates=1",
    );
    check(r#"{"dataset":"rollups","affiliate_id":8,"campaign_id":200}"#, "");
    check(r#"{"dataset":"rollups","sub1":"tw"}"#, "");
}

#[test]
fn conversions_sorted_by_time() {
    let expect_row = |time_ms: i64, affiliate_id: u32, order_id: &str| {
        let (campaign_id, sub1) = if order_id == "d" { (10, "fb") } else { (9, "") };
        format!(
            r#"time=M{} kind="lead" affiliate_id={affiliate_id} campaign_id={campaign_id} sub1={sub1:?} amount_minor=null currency=null order_id={order_id:?} click_id=null event_id=null"#,
            (time_ms - M0) / 60_000
        )
    };
    check(
        r#"{"dataset":"conversions"}"#,
        &[expect_row(M0, 8, "a"), expect_row(M1, 7, "b"), expect_row(M1, 8, "c"), expect_row(M2, 7, "d")].join("\n"),
    );
    check(&format!(r#"{{"dataset":"conversions","affiliate_id":7,"to":{M2}}}"#), &expect_row(M1, 7, "b"));
    check(&format!(r#"{{"dataset":"conversions","from":{M2}}}"#), &expect_row(M2, 7, "d"));
    // Campaign and sub1 filters, alone and with the others.
    check(r#"{"dataset":"conversions","campaign_id":10}"#, &expect_row(M2, 7, "d"));
    check(r#"{"dataset":"conversions","sub1":"fb"}"#, &expect_row(M2, 7, "d"));
    check(
        r#"{"dataset":"conversions","sub1":""}"#,
        &[expect_row(M0, 8, "a"), expect_row(M1, 7, "b"), expect_row(M1, 8, "c")].join("\n"),
    );
    check(
        r#"{"dataset":"conversions","campaign_id":9,"affiliate_id":8}"#,
        &[expect_row(M0, 8, "a"), expect_row(M1, 8, "c")].join("\n"),
    );
    check(r#"{"dataset":"conversions","campaign_id":10,"sub1":""}"#, "");
    check(r#"{"dataset":"conversions","campaign_id":10,"affiliate_id":8}"#, "");
}

#[test]
fn schemas() {
    let names = |ticket: &str| -> Vec<String> {
        let schema = ticket::parse(ticket.as_bytes()).unwrap().schema();
        schema.fields().iter().map(|field| field.name().clone()).collect()
    };
    assert_eq!(
        names(r#"{"dataset":"rollups","group_by":["sub1","minute"]}"#),
        ["minute", "sub1", "impressions", "clicks", "unique_clicks", "leads", "sales", "duplicates"]
    );
    assert_eq!(*ticket::parse(br#"{"dataset":"rollups"}"#).unwrap().schema(), **ROLLUP_SCHEMA);
    assert_eq!(*ticket::parse(br#"{"dataset":"conversions"}"#).unwrap().schema(), **CONVERSION_SCHEMA);
    // Follow adds `applied_at` last, to every dataset.
    for (dataset, schema) in
        [("rollups", &ROLLUP_SCHEMA), ("conversions", &CONVERSION_SCHEMA), ("quarantine", &QUARANTINE_SCHEMA)]
    {
        let follow = ticket::parse(format!(r#"{{"dataset":"{dataset}","follow":true}}"#).as_bytes()).unwrap().schema();
        let n_fields = schema.fields().len();
        assert_eq!(follow.fields().len(), n_fields + 1, "{dataset}");
        assert_eq!(follow.fields()[..n_fields], schema.fields()[..], "{dataset}");
        let applied_at = follow.field(n_fields);
        assert_eq!(applied_at.name(), APPLIED_AT_COLUMN);
        assert_eq!(
            applied_at.data_type(),
            &DataType::Timestamp(arrow_schema::TimeUnit::Millisecond, Some("UTC".into()))
        );
        assert!(!applied_at.is_nullable());
    }
}

#[test]
fn quarantine_by_time() {
    check(
        r#"{"dataset":"quarantine"}"#,
        r#"
        time=M0 source="postback" reason="click_id_forged" detail="forged click id" input="click_id=AQEA"
        time=M1 source="pixel" reason="bad_id" detail="bad affiliate_id" input="aff=x&cmp=1"
        time=M2 source="events" reason="bad_amount" detail="too many decimals" input=""
        "#,
    );
    check(
        &format!(r#"{{"dataset":"quarantine","from":{M1},"to":{M2}}}"#),
        r#"time=M1 source="pixel" reason="bad_id" detail="bad affiliate_id" input="aff=x&cmp=1""#,
    );
}

/// What a follower of `ticket` sees of each of `batches()`, applied at
/// M2 + 1 s: one string per batch, `None` when nothing passes.
#[track_caller]
fn check_follow(ticket: &str, expect: [Option<&str>; 2]) {
    let query = ticket::parse(ticket.as_bytes()).unwrap();
    for (batch_idx, (batch, expect)) in batches().into_iter().zip(expect).enumerate() {
        let applied = Applied { applied_at_ms: M2 + 1_000, batch };
        let actual = query.follow_batch(&applied).unwrap();
        if let Some(actual) = &actual {
            assert_eq!(actual.schema(), query.schema(), "{ticket}");
        }
        let expect = expect
            .map(|expect| expect.lines().map(str::trim).filter(|line| !line.is_empty()).collect::<Vec<_>>().join("\n"));
        assert_eq!(actual.as_ref().map(render), expect, "{ticket}, batch {batch_idx}");
    }
}

#[test]
fn follow_batches() {
    // Rollups as shipped, per batch: not merged with the other edge's.
    check_follow(
        r#"{"dataset":"rollups","follow":true,"affiliate_id":7}"#,
        [
            Some(
                r#"
                minute=M0 affiliate_id=7 campaign_id=100 sub1="" impressions=10 clicks=2 unique_clicks=0 leads=1 sales=0 duplicates=1 applied_at=M2
                minute=M0 affiliate_id=7 campaign_id=100 sub1="fb" impressions=5 clicks=1 unique_clicks=0 leads=0 sales=0 duplicates=0 applied_at=M2
                minute=M1 affiliate_id=7 campaign_id=200 sub1="" impressions=1 clicks=1 unique_clicks=1 leads=1 sales=1 duplicates=1 applied_at=M2
                "#,
            ),
            Some(
                r#"minute=M0 affiliate_id=7 campaign_id=100 sub1="" impressions=100 clicks=20 unique_clicks=0 leads=0 sales=0 duplicates=0 applied_at=M2"#,
            ),
        ],
    );
    check_follow(
        &format!(r#"{{"dataset":"rollups","follow":true,"from":{M2}}}"#),
        [
            None,
            Some(
                r#"minute=M2 affiliate_id=8 campaign_id=100 sub1="" impressions=4 clicks=4 unique_clicks=0 leads=0 sales=0 duplicates=0 applied_at=M2"#,
            ),
        ],
    );
    // Conversions in the batch's order, not sorted by time.
    let row = |time_ms: i64, affiliate_id: u32, order_id: &str| {
        let (campaign_id, sub1) = if order_id == "d" { (10, "fb") } else { (9, "") };
        format!(
            r#"time=M{} kind="lead" affiliate_id={affiliate_id} campaign_id={campaign_id} sub1={sub1:?} amount_minor=null currency=null order_id={order_id:?} click_id=null event_id=null applied_at=M2"#,
            (time_ms - M0) / 60_000
        )
    };
    check_follow(
        r#"{"dataset":"conversions","follow":true}"#,
        [Some(&[row(M1, 7, "b"), row(M0, 8, "a")].join("\n")), Some(&[row(M1, 8, "c"), row(M2, 7, "d")].join("\n"))],
    );
    check_follow(
        &format!(r#"{{"dataset":"conversions","follow":true,"affiliate_id":8,"to":{M1}}}"#),
        [Some(&row(M0, 8, "a")), None],
    );
    check_follow(
        &format!(r#"{{"dataset":"quarantine","follow":true,"to":{M1}}}"#),
        [
            Some(
                r#"time=M0 source="postback" reason="click_id_forged" detail="forged click id" input="click_id=AQEA" applied_at=M2"#,
            ),
            None,
        ],
    );
    check_follow(r#"{"dataset":"conversions","follow":true,"affiliate_id":9}"#, [None, None]);
    check_follow(
        r#"{"dataset":"rollups","follow":true,"campaign_id":100,"sub1":"fb"}"#,
        [
            Some(
                r#"minute=M0 affiliate_id=7 campaign_id=100 sub1="fb" impressions=5 clicks=1 unique_clicks=0 leads=0 sales=0 duplicates=0 applied_at=M2"#,
            ),
            None,
        ],
    );
    check_follow(
        r#"{"dataset":"rollups","follow":true,"campaign_id":100,"affiliate_id":8,"sub1":""}"#,
        [
            Some(
                r#"minute=M0 affiliate_id=8 campaign_id=100 sub1="" impressions=3 clicks=0 unique_clicks=0 leads=0 sales=0 duplicates=0 applied_at=M2"#,
            ),
            Some(
                r#"minute=M2 affiliate_id=8 campaign_id=100 sub1="" impressions=4 clicks=4 unique_clicks=0 leads=0 sales=0 duplicates=0 applied_at=M2"#,
            ),
        ],
    );
    check_follow(r#"{"dataset":"conversions","follow":true,"sub1":"fb"}"#, [None, Some(&row(M2, 7, "d"))]);
    check_follow(
        r#"{"dataset":"conversions","follow":true,"campaign_id":9,"affiliate_id":7}"#,
        [Some(&row(M1, 7, "b")), None],
    );
}
