//! Grouping and filtering over a small store, with exact sums, and time
//! bucket boundaries in zones with DST and with :30 and :45 offsets.

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMillisecondType, UInt32Type, UInt64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use edgetally_protocol::batch::ConversionRow;
use edgetally_protocol::event::EventKind;

use edgetally_protocol::QuarantineRow;

use jiff::Timestamp;

use super::*;
use crate::follow::Applied;
use crate::ledger::{Commission, Conversion, ConversionKey, Status};
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
        RollupCounts { impressions, clicks, unique_clicks: sales, leads, sales, duplicates: leads, flagged: [0; 5] },
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
        flag: None,
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

/// One line per row, `name=value` per column, leaving out the flagged
/// counters (and the conversions' flag) where nothing was flagged, as in
/// most rows here.
fn render(batch: &RecordBatch) -> String {
    let schema = batch.schema();
    let mut lines = Vec::new();
    for row_idx in 0..batch.num_rows() {
        let cells: Vec<String> = schema
            .fields()
            .iter()
            .zip(batch.columns())
            .filter_map(|(field, column)| {
                let value = if column.is_null(row_idx) {
                    "null".to_owned()
                } else {
                    match field.data_type() {
                        DataType::Timestamp(_, zone) => {
                            let ms = column.as_primitive::<TimestampMillisecondType>().value(row_idx);
                            let zone = zone.as_deref().expect("every time column has a zone");
                            if zone == "UTC" && !matches!(field.name().as_str(), "hour" | "day") {
                                format!("M{}", (ms - M0) / 60_000)
                            } else {
                                local(ms, zone)
                            }
                        }
                        DataType::UInt32 => column.as_primitive::<UInt32Type>().value(row_idx).to_string(),
                        DataType::UInt64 => column.as_primitive::<UInt64Type>().value(row_idx).to_string(),
                        DataType::Int64 => column.as_primitive::<Int64Type>().value(row_idx).to_string(),
                        DataType::Utf8 => format!("{:?}", column.as_string::<i32>().value(row_idx)),
                        other => panic!("unexpected type {other}"),
                    }
                };
                let unflagged = field.name().starts_with("flag") && matches!(value.as_str(), "0" | "null");
                (!unflagged).then(|| format!("{}={value}", field.name()))
            })
            .collect();
        lines.push(cells.join(" "));
    }
    lines.join("\n")
}

/// `ms` as local time in `zone`, to the minute, with its offset.
fn local(ms: i64, zone: &str) -> String {
    let zone = jiff::tz::TimeZone::get(zone).unwrap();
    Timestamp::from_millisecond(ms).unwrap().to_zoned_datetime(zone).strftime("%Y-%m-%dT%H:%M%:z").to_string()
}

/// Unix ms of an RFC 3339 instant.
fn ms(text: &str) -> i64 {
    text.parse::<Timestamp>().unwrap_or_else(|error| panic!("{text}: {error}")).as_millisecond()
}

#[track_caller]
fn check(ticket: &str, expect: &str) {
    check_in(&store(), ticket, expect);
}

#[track_caller]
fn check_in(store: &Store, ticket: &str, expect: &str) {
    let query = ticket::parse(ticket.as_bytes()).unwrap();
    let batches = query.execute(store).unwrap();
    for batch in &batches {
        assert_eq!(batch.schema(), query.schema(), "{ticket}");
    }
    let expect: Vec<&str> = expect.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
    let rendered: Vec<String> = batches.iter().map(render).collect();
    assert_eq!(rendered.join("\n"), expect.join("\n"), "{ticket}");
}

#[test]
fn large_answers_come_in_bounded_batches_in_order() {
    let n_rows = 2 * ANSWER_BATCH_ROWS + 1;
    let store = Store::default();
    // Applied newest first, so the answer's time order is the sort's.
    let conversions =
        (0..n_rows).map(|row_idx| conversion(M0 + (n_rows - row_idx) as i64, 7, &format!("o{row_idx}"))).collect();
    store.apply(Batch { edge_id: 1, epoch: 1, sequence: 1, conversions, ..Batch::default() });
    let query = ticket::parse(br#"{"dataset":"conversions"}"#).unwrap();
    let batches = query.execute(&store).unwrap();
    let sizes: Vec<usize> = batches.iter().map(RecordBatch::num_rows).collect();
    assert_eq!(sizes, [ANSWER_BATCH_ROWS, ANSWER_BATCH_ROWS, 1]);
    let times: Vec<i64> = batches
        .iter()
        .flat_map(|batch| batch.column(0).as_primitive::<TimestampMillisecondType>().values().to_vec())
        .collect();
    let expect: Vec<i64> = (1..=n_rows as i64).map(|offset| M0 + offset).collect();
    assert_eq!(times, expect);
}

#[test]
fn rollups_grouped() {
    check(
        r#"{"dataset":"rollups"}"#,
        r#"
        minute=M0 affiliate_id=7 campaign_id=100 sub1="" impressions=110 clicks=22 unique_clicks=0 leads=1 sales=0 duplicates=1 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0
        minute=M0 affiliate_id=7 campaign_id=100 sub1="fb" impressions=5 clicks=1 unique_clicks=0 leads=0 sales=0 duplicates=0 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0
        minute=M0 affiliate_id=8 campaign_id=100 sub1="" impressions=3 clicks=0 unique_clicks=0 leads=0 sales=0 duplicates=0 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0
        minute=M1 affiliate_id=7 campaign_id=200 sub1="" impressions=1 clicks=1 unique_clicks=1 leads=1 sales=1 duplicates=1 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0
        minute=M2 affiliate_id=8 campaign_id=100 sub1="" impressions=4 clicks=4 unique_clicks=0 leads=0 sales=0 duplicates=0 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0
        "#,
    );
    check(
        r#"{"dataset":"rollups","group_by":["affiliate_id","campaign_id"]}"#,
        r#"
        affiliate_id=7 campaign_id=100 impressions=115 clicks=23 unique_clicks=0 leads=1 sales=0 duplicates=1 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0
        affiliate_id=7 campaign_id=200 impressions=1 clicks=1 unique_clicks=1 leads=1 sales=1 duplicates=1 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0
        affiliate_id=8 campaign_id=100 impressions=7 clicks=4 unique_clicks=0 leads=0 sales=0 duplicates=0 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0
        "#,
    );
    check(
        r#"{"dataset":"rollups","group_by":["sub1","campaign_id"]}"#,
        r#"
        campaign_id=100 sub1="" impressions=117 clicks=26 unique_clicks=0 leads=1 sales=0 duplicates=1 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0
        campaign_id=100 sub1="fb" impressions=5 clicks=1 unique_clicks=0 leads=0 sales=0 duplicates=0 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0
        campaign_id=200 sub1="" impressions=1 clicks=1 unique_clicks=1 leads=1 sales=1 duplicates=1 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0
        "#,
    );
    check(
        r#"{"dataset":"rollups","group_by":["minute"]}"#,
        r#"
        minute=M0 impressions=118 clicks=23 unique_clicks=0 leads=1 sales=0 duplicates=1 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0
        minute=M1 impressions=1 clicks=1 unique_clicks=1 leads=1 sales=1 duplicates=1 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0
        minute=M2 impressions=4 clicks=4 unique_clicks=0 leads=0 sales=0 duplicates=0 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0
        "#,
    );
    check(
        r#"{"dataset":"rollups","group_by":[]}"#,
        "impressions=123 clicks=28 unique_clicks=1 leads=2 sales=1 duplicates=2 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0",
    );
}

#[test]
fn rollups_filtered() {
    // Half-open on the minute: [M1, M2) is M1 alone.
    let (m1, m2) = (M1, M2);
    check(
        &format!(r#"{{"dataset":"rollups","from":{m1},"to":{m2},"group_by":["minute"]}}"#),
        "minute=M1 impressions=1 clicks=1 unique_clicks=1 leads=1 sales=1 duplicates=1 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0",
    );
    check(
        r#"{"dataset":"rollups","from":"2026-11-24T10:01:00Z","group_by":["minute"]}"#,
        "minute=M1 impressions=1 clicks=1 unique_clicks=1 leads=1 sales=1 duplicates=1 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0\nminute=M2 impressions=4 clicks=4 unique_clicks=0 leads=0 sales=0 duplicates=0 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0",
    );
    // A bound inside a minute leaves that minute out of `from`.
    check(
        &format!(r#"{{"dataset":"rollups","from":{},"to":{m2},"group_by":[]}}"#, M0 + 1),
        "impressions=1 clicks=1 unique_clicks=1 leads=1 sales=1 duplicates=1 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0",
    );
    check(
        r#"{"dataset":"rollups","affiliate_id":8,"group_by":["affiliate_id"]}"#,
        "affiliate_id=8 impressions=7 clicks=4 unique_clicks=0 leads=0 sales=0 duplicates=0 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0",
    );
    check(r#"{"dataset":"rollups","affiliate_id":9}"#, "");
    check(r#"{"dataset":"rollups","to":0}"#, "");
    check(
        r#"{"dataset":"rollups","campaign_id":100,"group_by":["affiliate_id"]}"#,
        r#"
        affiliate_id=7 impressions=115 clicks=23 unique_clicks=0 leads=1 sales=0 duplicates=1 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0
        affiliate_id=8 impressions=7 clicks=4 unique_clicks=0 leads=0 sales=0 duplicates=0 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0
        "#,
    );
    check(
        r#"{"dataset":"rollups","campaign_id":200}"#,
        r#"minute=M1 affiliate_id=7 campaign_id=200 sub1="" impressions=1 clicks=1 unique_clicks=1 leads=1 sales=1 duplicates=1 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0"#,
    );
    check(
        r#"{"dataset":"rollups","sub1":"fb","group_by":["minute","sub1"]}"#,
        r#"minute=M0 sub1="fb" impressions=5 clicks=1 unique_clicks=0 leads=0 sales=0 duplicates=0 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0"#,
    );
    // `""` is the rows without a sub1; all three filters at once.
    check(
        r#"{"dataset":"rollups","sub1":"","group_by":["minute"]}"#,
        r#"
        minute=M0 impressions=113 clicks=22 unique_clicks=0 leads=1 sales=0 duplicates=1 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0
        minute=M1 impressions=1 clicks=1 unique_clicks=1 leads=1 sales=1 duplicates=1 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0
        minute=M2 impressions=4 clicks=4 unique_clicks=0 leads=0 sales=0 duplicates=0 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0
        "#,
    );
    check(
        r#"{"dataset":"rollups","affiliate_id":7,"campaign_id":100,"sub1":"","group_by":[]}"#,
        "impressions=110 clicks=22 unique_clicks=0 leads=1 sales=0 duplicates=1 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0",
    );
    check(r#"{"dataset":"rollups","affiliate_id":8,"campaign_id":200}"#, "");
    check(r#"{"dataset":"rollups","sub1":"tw"}"#, "");
}

#[test]
fn conversions_sorted_by_time() {
    let expect_row = |time_ms: i64, affiliate_id: u32, order_id: &str| {
        let (campaign_id, sub1) = if order_id == "d" { (10, "fb") } else { (9, "") };
        format!(
            r#"time=M{} kind="lead" affiliate_id={affiliate_id} campaign_id={campaign_id} sub1={sub1:?} amount_minor=null currency=null order_id={order_id:?} click_id=null event_id=null edge_id={} status="pending" commission_minor=0 commission_currency=null rule="none" parent_affiliate_id=null parent_commission_minor=0"#,
            (time_ms - M0) / 60_000,
            edge_of(order_id)
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
        [
            "minute",
            "sub1",
            "impressions",
            "clicks",
            "unique_clicks",
            "leads",
            "sales",
            "duplicates",
            "flagged_bot_user_agent",
            "flagged_click_flood",
            "flagged_fast_conversion",
            "flagged_no_click_id",
            "flagged_over_daily_cap",
            "currency",
            "revenue_minor",
            "commission_minor",
            "parent_commission_minor"
        ]
    );
    // The whole rollups answer: the shipped rollup columns, then money.
    let rollups_answer: SchemaRef = Arc::new(Schema::new(
        ROLLUP_SCHEMA
            .fields()
            .iter()
            .map(|field| field.as_ref().clone())
            .chain(MONEY_FIELDS.iter().cloned())
            .collect::<Vec<_>>(),
    ));
    assert_eq!(ticket::parse(br#"{"dataset":"rollups"}"#).unwrap().schema(), rollups_answer);
    assert_eq!(ticket::parse(br#"{"dataset":"rollups","tz":"UTC"}"#).unwrap().schema(), rollups_answer);
    // The time column is named after the granularity and typed with the zone.
    let time_field = |ticket: &str| ticket::parse(ticket.as_bytes()).unwrap().schema().field(0).clone();
    let timestamp = |zone: &str| DataType::Timestamp(arrow_schema::TimeUnit::Millisecond, Some(zone.into()));
    for (ticket, name, zone) in [
        (r#"{"dataset":"rollups","granularity":"hour"}"#, "hour", "UTC"),
        (r#"{"dataset":"rollups","granularity":"day","tz":"America/New_York"}"#, "day", "America/New_York"),
        (r#"{"dataset":"rollups","tz":"asia/kathmandu","group_by":["sub1","minute"]}"#, "minute", "Asia/Kathmandu"),
    ] {
        let field = time_field(ticket);
        assert_eq!((field.name().as_str(), field.data_type()), (name, &timestamp(zone)), "{ticket}");
        assert!(!field.is_nullable(), "{ticket}");
    }
    assert_eq!(
        names(r#"{"dataset":"rollups","granularity":"day","group_by":["campaign_id","minute"]}"#),
        [
            "day",
            "campaign_id",
            "impressions",
            "clicks",
            "unique_clicks",
            "leads",
            "sales",
            "duplicates",
            "flagged_bot_user_agent",
            "flagged_click_flood",
            "flagged_fast_conversion",
            "flagged_no_click_id",
            "flagged_over_daily_cap",
            "currency",
            "revenue_minor",
            "commission_minor",
            "parent_commission_minor"
        ]
    );
    assert_eq!(*ticket::parse(br#"{"dataset":"conversions"}"#).unwrap().schema(), **LEDGER_SCHEMA);
    // Follow adds `applied_at` last, to every dataset.
    for (dataset, schema) in
        [("rollups", &rollups_answer), ("conversions", &LEDGER_SCHEMA), ("quarantine", &QUARANTINE_SCHEMA)]
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
        let conversions = batch.conversions.iter().map(|row| booked(row, batch.edge_id)).collect();
        let applied = Applied { version: 1, applied_at_ms: M2 + 1_000, batch, conversions, money: Vec::new() };
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
                minute=M0 affiliate_id=7 campaign_id=100 sub1="" impressions=10 clicks=2 unique_clicks=0 leads=1 sales=0 duplicates=1 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0 applied_at=M2
                minute=M0 affiliate_id=7 campaign_id=100 sub1="fb" impressions=5 clicks=1 unique_clicks=0 leads=0 sales=0 duplicates=0 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0 applied_at=M2
                minute=M1 affiliate_id=7 campaign_id=200 sub1="" impressions=1 clicks=1 unique_clicks=1 leads=1 sales=1 duplicates=1 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0 applied_at=M2
                "#,
            ),
            Some(
                r#"minute=M0 affiliate_id=7 campaign_id=100 sub1="" impressions=100 clicks=20 unique_clicks=0 leads=0 sales=0 duplicates=0 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0 applied_at=M2"#,
            ),
        ],
    );
    check_follow(
        &format!(r#"{{"dataset":"rollups","follow":true,"from":{M2}}}"#),
        [
            None,
            Some(
                r#"minute=M2 affiliate_id=8 campaign_id=100 sub1="" impressions=4 clicks=4 unique_clicks=0 leads=0 sales=0 duplicates=0 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0 applied_at=M2"#,
            ),
        ],
    );
    // Conversions in the batch's order, not sorted by time.
    let row = |time_ms: i64, affiliate_id: u32, order_id: &str| {
        let (campaign_id, sub1) = if order_id == "d" { (10, "fb") } else { (9, "") };
        format!(
            r#"time=M{} kind="lead" affiliate_id={affiliate_id} campaign_id={campaign_id} sub1={sub1:?} amount_minor=null currency=null order_id={order_id:?} click_id=null event_id=null edge_id={} status="pending" commission_minor=0 commission_currency=null rule="none" parent_affiliate_id=null parent_commission_minor=0 applied_at=M2"#,
            (time_ms - M0) / 60_000,
            edge_of(order_id)
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
                r#"minute=M0 affiliate_id=7 campaign_id=100 sub1="fb" impressions=5 clicks=1 unique_clicks=0 leads=0 sales=0 duplicates=0 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0 applied_at=M2"#,
            ),
            None,
        ],
    );
    check_follow(
        r#"{"dataset":"rollups","follow":true,"campaign_id":100,"affiliate_id":8,"sub1":""}"#,
        [
            Some(
                r#"minute=M0 affiliate_id=8 campaign_id=100 sub1="" impressions=3 clicks=0 unique_clicks=0 leads=0 sales=0 duplicates=0 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0 applied_at=M2"#,
            ),
            Some(
                r#"minute=M2 affiliate_id=8 campaign_id=100 sub1="" impressions=4 clicks=4 unique_clicks=0 leads=0 sales=0 duplicates=0 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0 applied_at=M2"#,
            ),
        ],
    );
    check_follow(r#"{"dataset":"conversions","follow":true,"sub1":"fb"}"#, [None, Some(&row(M2, 7, "d"))]);
    check_follow(
        r#"{"dataset":"conversions","follow":true,"campaign_id":9,"affiliate_id":7}"#,
        [Some(&row(M1, 7, "b")), None],
    );
}

/// The bucket of the instant `at` (RFC 3339) for `granularity` in `zone`,
/// as `start .. end length` in local time. Also checks that the bucket
/// holds `at`, that it tiles time with its neighbours, and that every
/// instant in it, to the millisecond at its ends, maps to it.
#[track_caller]
fn check_bucket(zone: &str, granularity: Granularity, at: &str, expect: &str) {
    let buckets = TimeBuckets::new(granularity, zone).unwrap();
    let at_ms = ms(at);
    let bucket = buckets.bucket(at_ms).unwrap();
    let Bucket { start_ms, end_ms } = bucket;
    assert!(start_ms <= at_ms && at_ms < end_ms, "{zone} {at}: {bucket:?}");
    for inside_ms in [start_ms, end_ms - 1] {
        assert_eq!(buckets.bucket(inside_ms).unwrap(), bucket, "{zone} {at}: at {inside_ms}");
    }
    assert_eq!(buckets.bucket(start_ms - 1).unwrap().end_ms, start_ms, "{zone} {at}: the bucket before");
    assert_eq!(buckets.bucket(end_ms).unwrap().start_ms, end_ms, "{zone} {at}: the bucket after");
    let length_min = (end_ms - start_ms) / MINUTE_MS;
    let length = if length_min % 60 == 0 { format!("{}h", length_min / 60) } else { format!("{length_min}m") };
    let actual = format!("{} .. {} {length}", local(start_ms, zone), local(end_ms, zone));
    assert_eq!(actual, expect, "{zone} {} {at}", granularity.as_str());
}

#[test]
fn buckets_in_utc() {
    use Granularity::{Day, Hour, Minute};
    check_bucket("UTC", Minute, "2026-11-24T10:00:30Z", "2026-11-24T10:00+00:00 .. 2026-11-24T10:01+00:00 1m");
    check_bucket("UTC", Hour, "2026-11-24T10:00:00Z", "2026-11-24T10:00+00:00 .. 2026-11-24T11:00+00:00 1h");
    check_bucket("UTC", Hour, "2026-11-24T10:59:59.999Z", "2026-11-24T10:00+00:00 .. 2026-11-24T11:00+00:00 1h");
    check_bucket("UTC", Day, "2026-11-24T23:59:00Z", "2026-11-24T00:00+00:00 .. 2026-11-25T00:00+00:00 24h");
    check_bucket("UTC", Day, "2026-11-25T00:00:00Z", "2026-11-25T00:00+00:00 .. 2026-11-26T00:00+00:00 24h");
    // Before 1970 too.
    check_bucket("UTC", Day, "1969-12-31T12:00:00Z", "1969-12-31T00:00+00:00 .. 1970-01-01T00:00+00:00 24h");
    check_bucket("UTC", Hour, "1969-12-31T23:30:00Z", "1969-12-31T23:00+00:00 .. 1970-01-01T00:00+00:00 1h");
}

#[test]
fn buckets_in_new_york() {
    use Granularity::{Day, Hour, Minute};
    let zone = "America/New_York";
    // 2026-03-08: at 02:00 EST the clocks jump to 03:00 EDT; a 23-hour day.
    check_bucket(zone, Day, "2026-03-07T23:59:00-05:00", "2026-03-07T00:00-05:00 .. 2026-03-08T00:00-05:00 24h");
    check_bucket(zone, Day, "2026-03-08T00:00:00-05:00", "2026-03-08T00:00-05:00 .. 2026-03-09T00:00-04:00 23h");
    check_bucket(zone, Day, "2026-03-08T23:59:00-04:00", "2026-03-08T00:00-05:00 .. 2026-03-09T00:00-04:00 23h");
    check_bucket(zone, Hour, "2026-03-08T01:59:00-05:00", "2026-03-08T01:00-05:00 .. 2026-03-08T03:00-04:00 1h");
    check_bucket(zone, Hour, "2026-03-08T03:00:00-04:00", "2026-03-08T03:00-04:00 .. 2026-03-08T04:00-04:00 1h");
    // 2026-11-01: at 02:00 EDT the clocks fall back to 01:00 EST; a
    // 25-hour day, and the repeated hour is two buckets.
    check_bucket(zone, Day, "2026-10-31T23:59:00-04:00", "2026-10-31T00:00-04:00 .. 2026-11-01T00:00-04:00 24h");
    check_bucket(zone, Day, "2026-11-01T12:00:00-05:00", "2026-11-01T00:00-04:00 .. 2026-11-02T00:00-05:00 25h");
    check_bucket(zone, Day, "2026-11-02T00:00:00-05:00", "2026-11-02T00:00-05:00 .. 2026-11-03T00:00-05:00 24h");
    check_bucket(zone, Hour, "2026-11-01T00:59:00-04:00", "2026-11-01T00:00-04:00 .. 2026-11-01T01:00-04:00 1h");
    check_bucket(zone, Hour, "2026-11-01T01:30:00-04:00", "2026-11-01T01:00-04:00 .. 2026-11-01T01:00-05:00 1h");
    check_bucket(zone, Hour, "2026-11-01T01:00:00-05:00", "2026-11-01T01:00-05:00 .. 2026-11-01T02:00-05:00 1h");
    check_bucket(zone, Hour, "2026-11-01T02:00:00-05:00", "2026-11-01T02:00-05:00 .. 2026-11-01T03:00-05:00 1h");
    check_bucket(zone, Minute, "2026-11-01T01:59:59-04:00", "2026-11-01T01:59-04:00 .. 2026-11-01T01:00-05:00 1m");
}

#[test]
fn buckets_in_half_and_quarter_hour_zones() {
    use Granularity::{Day, Hour};
    // Asia/Kolkata is +05:30: its hours start at :30 past a UTC hour.
    let zone = "Asia/Kolkata";
    check_bucket(zone, Hour, "2026-11-24T04:29:00Z", "2026-11-24T09:00+05:30 .. 2026-11-24T10:00+05:30 1h");
    check_bucket(zone, Hour, "2026-11-24T04:30:00Z", "2026-11-24T10:00+05:30 .. 2026-11-24T11:00+05:30 1h");
    check_bucket(zone, Day, "2026-11-23T18:29:00Z", "2026-11-23T00:00+05:30 .. 2026-11-24T00:00+05:30 24h");
    check_bucket(zone, Day, "2026-11-23T18:30:00Z", "2026-11-24T00:00+05:30 .. 2026-11-25T00:00+05:30 24h");
    // Asia/Kathmandu is +05:45.
    let zone = "Asia/Kathmandu";
    check_bucket(zone, Hour, "2026-11-24T04:14:00Z", "2026-11-24T09:00+05:45 .. 2026-11-24T10:00+05:45 1h");
    check_bucket(zone, Hour, "2026-11-24T04:15:00Z", "2026-11-24T10:00+05:45 .. 2026-11-24T11:00+05:45 1h");
    check_bucket(zone, Day, "2026-11-23T18:14:00Z", "2026-11-23T00:00+05:45 .. 2026-11-24T00:00+05:45 24h");
    check_bucket(zone, Day, "2026-11-23T18:15:00Z", "2026-11-24T00:00+05:45 .. 2026-11-25T00:00+05:45 24h");
    // Pacific/Chatham is +12:45, +13:45 in summer, and changes at :45, so
    // the hours either side of a change are cut short.
    let zone = "Pacific/Chatham";
    check_bucket(zone, Hour, "2026-11-24T10:00:00+13:45", "2026-11-24T10:00+13:45 .. 2026-11-24T11:00+13:45 1h");
    // 2026-09-27: 02:45 +12:45 becomes 03:45 +13:45.
    check_bucket(zone, Day, "2026-09-27T12:00:00+13:45", "2026-09-27T00:00+12:45 .. 2026-09-28T00:00+13:45 23h");
    check_bucket(zone, Hour, "2026-09-27T02:30:00+12:45", "2026-09-27T02:00+12:45 .. 2026-09-27T03:45+13:45 45m");
    check_bucket(zone, Hour, "2026-09-27T03:50:00+13:45", "2026-09-27T03:45+13:45 .. 2026-09-27T04:00+13:45 15m");
    // 2026-04-05: 03:45 +13:45 becomes 02:45 +12:45.
    check_bucket(zone, Day, "2026-04-05T12:00:00+12:45", "2026-04-05T00:00+13:45 .. 2026-04-06T00:00+12:45 25h");
    check_bucket(zone, Hour, "2026-04-05T03:00:00+13:45", "2026-04-05T03:00+13:45 .. 2026-04-05T02:45+12:45 45m");
    check_bucket(zone, Hour, "2026-04-05T02:50:00+12:45", "2026-04-05T02:45+12:45 .. 2026-04-05T03:00+12:45 15m");
    check_bucket(zone, Hour, "2026-04-05T03:00:00+12:45", "2026-04-05T03:00+12:45 .. 2026-04-05T04:00+12:45 1h");
}

/// Minutes read in order cost one zone look-up per bucket, not per row.
#[test]
fn one_lookup_per_bucket() {
    let from_ms = ms("2026-10-31T12:00:00-04:00");
    let minutes = (0..48 * 60).map(|minute_idx| from_ms + minute_idx * MINUTE_MS);
    for (granularity, zone, n_buckets) in [
        // 48 elapsed hours, the repeated one split in two, so 48 buckets.
        (Granularity::Hour, "America/New_York", 48),
        // Half of Oct 31, all 25 hours of Nov 1, and 11 hours of Nov 2.
        (Granularity::Day, "America/New_York", 3),
        (Granularity::Hour, "Asia/Kathmandu", 49),
        (Granularity::Minute, "Asia/Kathmandu", 48 * 60),
    ] {
        let buckets = TimeBuckets::new(granularity, zone).unwrap();
        let mut bucketer = Bucketer::new(&buckets);
        let starts: std::collections::BTreeSet<i64> =
            minutes.clone().map(|minute_ms| bucketer.start_of(minute_ms).unwrap()).collect();
        assert_eq!((starts.len(), bucketer.n_lookups), (n_buckets, n_buckets), "{zone} {}", granularity.as_str());
    }
}

/// Rollups around the end of DST in New York (2026-11-01), one per
/// minute, each with a distinct power of ten of impressions so that every
/// sum shows which minutes went into it.
fn dst_store() -> Store {
    let rows = [
        ("2026-10-31T23:59:00-04:00", 7, 100, "", 1),
        ("2026-11-01T00:00:00-04:00", 7, 100, "fb", 10),
        ("2026-11-01T01:30:00-04:00", 8, 100, "", 100),
        ("2026-11-01T01:30:00-05:00", 7, 200, "fb", 1_000),
        ("2026-11-01T23:59:00-05:00", 7, 100, "", 10_000),
        ("2026-11-02T00:00:00-05:00", 8, 200, "", 100_000),
    ];
    let rollups = rows
        .into_iter()
        .map(|(minute, affiliate_id, campaign_id, sub1, impressions)| {
            rollup(ms(minute), affiliate_id, campaign_id, sub1, [impressions, 0, 0, 0])
        })
        .collect();
    let store = Store::default();
    store.apply(Batch { edge_id: 1, epoch: 1, sequence: 1, rollups, ..Batch::default() });
    store
}

#[test]
fn rollups_by_hour_and_day() {
    let store = dst_store();
    let check = |ticket: &str, expect: &str| check_in(&store, ticket, expect);
    let zero = "clicks=0 unique_clicks=0 leads=0 sales=0 duplicates=0 currency=null revenue_minor=0 commission_minor=0 parent_commission_minor=0";
    let expect = |rows: &[(&str, u64)]| -> String {
        rows.iter().map(|(key, impressions)| format!("{key} impressions={impressions} {zero}\n")).collect()
    };
    // Local days: the 25-hour Nov 1 holds four minutes.
    check(
        r#"{"dataset":"rollups","granularity":"day","tz":"America/New_York","group_by":["minute"]}"#,
        &expect(&[
            ("day=2026-10-31T00:00-04:00", 1),
            ("day=2026-11-01T00:00-04:00", 11_110),
            ("day=2026-11-02T00:00-05:00", 100_000),
        ]),
    );
    // UTC days cut elsewhere.
    check(
        r#"{"dataset":"rollups","granularity":"day","group_by":["minute"]}"#,
        &expect(&[("day=2026-11-01T00:00+00:00", 1_111), ("day=2026-11-02T00:00+00:00", 110_000)]),
    );
    // Local hours: 01:00 EDT and 01:00 EST are two buckets.
    check(
        r#"{"dataset":"rollups","granularity":"hour","tz":"America/New_York","group_by":["minute"]}"#,
        &expect(&[
            ("hour=2026-10-31T23:00-04:00", 1),
            ("hour=2026-11-01T00:00-04:00", 10),
            ("hour=2026-11-01T01:00-04:00", 100),
            ("hour=2026-11-01T01:00-05:00", 1_000),
            ("hour=2026-11-01T23:00-05:00", 10_000),
            ("hour=2026-11-02T00:00-05:00", 100_000),
        ]),
    );
    // Kolkata's hours start at :30 past UTC's: 03:59Z and 04:00Z share one.
    check(
        r#"{"dataset":"rollups","granularity":"hour","tz":"Asia/Kolkata","group_by":["minute"]}"#,
        &expect(&[
            ("hour=2026-11-01T09:00+05:30", 11),
            ("hour=2026-11-01T11:00+05:30", 100),
            ("hour=2026-11-01T12:00+05:30", 1_000),
            ("hour=2026-11-02T10:00+05:30", 110_000),
        ]),
    );
    // Minutes in a zone: the stored minutes, labelled with the zone.
    check(
        r#"{"dataset":"rollups","tz":"America/New_York","from":"2026-11-01T05:00:00Z","to":"2026-11-01T07:00:00Z","group_by":["minute"]}"#,
        &expect(&[("minute=2026-11-01T01:30-04:00", 100), ("minute=2026-11-01T01:30-05:00", 1_000)]),
    );
    // With the other group columns and filters: exact per key.
    check(
        r#"{"dataset":"rollups","granularity":"day","tz":"America/New_York","campaign_id":100,"group_by":["minute","sub1"]}"#,
        &expect(&[
            (r#"day=2026-10-31T00:00-04:00 sub1="""#, 1),
            (r#"day=2026-11-01T00:00-04:00 sub1="""#, 10_100),
            (r#"day=2026-11-01T00:00-04:00 sub1="fb""#, 10),
        ]),
    );
    check(
        r#"{"dataset":"rollups","granularity":"day","tz":"America/New_York","sub1":"fb","group_by":["minute","campaign_id"]}"#,
        &expect(&[
            ("day=2026-11-01T00:00-04:00 campaign_id=100", 10),
            ("day=2026-11-01T00:00-04:00 campaign_id=200", 1_000),
        ]),
    );
    check(
        r#"{"dataset":"rollups","granularity":"hour","tz":"America/New_York","affiliate_id":8,"campaign_id":200}"#,
        &expect(&[(r#"hour=2026-11-02T00:00-05:00 affiliate_id=8 campaign_id=200 sub1="""#, 100_000)]),
    );
    // `from` and `to` select minutes; a bucket they cut keeps only those.
    check(
        r#"{"dataset":"rollups","granularity":"day","tz":"America/New_York","from":"2026-11-01T01:00:00-05:00","group_by":["minute"]}"#,
        &expect(&[("day=2026-11-01T00:00-04:00", 11_000), ("day=2026-11-02T00:00-05:00", 100_000)]),
    );
}

/// `row` as the ledger books it with no commission rules.
fn booked(row: &ConversionRow, edge_id: u32) -> Conversion {
    let commission = Commission::compute(&edgetally_protocol::Campaigns::default(), row);
    Conversion { row: row.clone(), edge_id, status: Status::Pending, commission }
}

/// The edge that shipped each order of `batches()`.
fn edge_of(order_id: &str) -> u32 {
    if matches!(order_id, "a" | "b") { 1 } else { 2 }
}

/// A batch of sales of affiliate 7 on campaign 9 in minute M0, one per
/// `(order_id, minor_units, currency)`, counted as the edge counts them.
fn sales(sequence: u64, orders: &[(&str, i64, &str)]) -> Batch {
    let conversions: Vec<ConversionRow> = orders
        .iter()
        .map(|&(order_id, minor_units, currency)| ConversionRow {
            kind: EventKind::Sale,
            money: Some(edgetally_protocol::Money { minor_units, currency: Currency::parse(currency).unwrap() }),
            ..conversion(M0 + 5, 7, order_id)
        })
        .collect();
    let key = RollupKey { minute_ms: M0, affiliate_id: 7, campaign_id: 9, sub1: String::new() };
    let counts = RollupCounts { impressions: 50, clicks: 10, sales: orders.len() as u64, ..RollupCounts::default() };
    Batch { edge_id: 1, epoch: 1, sequence, rollups: vec![(key, counts)], conversions, quarantine: Vec::new() }
}

/// Campaign 9 pays 10 % of the sale; affiliate 7's parent 3 earns 20 % of
/// that on top.
fn revshare_store() -> Store {
    let rules = r#"{"campaigns":[{"id":9,"landing_url":"https://a.example/","payout":{"type":"revshare","percent":"10"}}],
        "affiliates":[{"id":3,"override_percent":"20"},{"id":7,"parent_id":3}]}"#;
    let store = Store::default();
    store.set_rules(crate::ledger::Rules::parse(bytes::Bytes::from_static(rules.as_bytes())).unwrap());
    store
}

#[test]
fn rollups_carry_money_per_currency() {
    let store = revshare_store();
    store.apply(sales(1, &[("u1", 10_005, "USD"), ("u2", 2_000, "USD"), ("e1", 333, "EUR"), ("j1", 1_001, "JPY")]));
    // Counters on the first currency row only; 10 % of 100.05 USD is
    // 10.005, rounded half to even to 10.00; of 3.33 EUR, 0.333 → 0.33.
    let expect = r#"
        impressions=50 clicks=10 unique_clicks=0 leads=0 sales=4 duplicates=0 currency="EUR" revenue_minor=333 commission_minor=33 parent_commission_minor=7
        impressions=0 clicks=0 unique_clicks=0 leads=0 sales=0 duplicates=0 currency="JPY" revenue_minor=1001 commission_minor=100 parent_commission_minor=20
        impressions=0 clicks=0 unique_clicks=0 leads=0 sales=0 duplicates=0 currency="USD" revenue_minor=12005 commission_minor=1200 parent_commission_minor=240
    "#;
    check_in(&store, r#"{"dataset":"rollups","group_by":[]}"#, expect);
    // Rejecting a sale takes its money out; the group keeps its counters.
    let key = ConversionKey::Order { campaign_id: 9, order_id: "e1".into() };
    store.set_status(&key, Status::Rejected).unwrap();
    let key = ConversionKey::Order { campaign_id: 9, order_id: "u2".into() };
    store.set_status(&key, Status::Rejected).unwrap();
    check_in(
        &store,
        r#"{"dataset":"rollups","group_by":["affiliate_id"]}"#,
        r#"
        affiliate_id=7 impressions=50 clicks=10 unique_clicks=0 leads=0 sales=4 duplicates=0 currency="JPY" revenue_minor=1001 commission_minor=100 parent_commission_minor=20
        affiliate_id=7 impressions=0 clicks=0 unique_clicks=0 leads=0 sales=0 duplicates=0 currency="USD" revenue_minor=10005 commission_minor=1000 parent_commission_minor=200
        "#,
    );
    // Another affiliate's filter sees no money and no counters.
    check_in(&store, r#"{"dataset":"rollups","affiliate_id":8}"#, "");
}

#[test]
fn follow_rollups_carry_money_deltas() {
    let store = revshare_store();
    store.publish(16);
    let mut feed = store.follow().unwrap();
    let query = ticket::parse(br#"{"dataset":"rollups","follow":true}"#).unwrap();
    let mut next = || {
        let applied = feed.try_recv().unwrap();
        let batch = query.follow_batch(&applied).unwrap().unwrap();
        assert_eq!(batch.schema(), query.schema());
        render(&batch).replace(r#"minute=M0 affiliate_id=7 campaign_id=9 sub1="" "#, "")
    };
    store.apply(sales(1, &[("u1", 10_000, "USD"), ("e1", 500, "EUR")]));
    let applied_at = |line: &str| line.split(" applied_at=").next().unwrap().to_owned();
    let lines: Vec<String> = next().lines().map(applied_at).collect();
    assert_eq!(
        lines,
        [
            r#"impressions=50 clicks=10 unique_clicks=0 leads=0 sales=2 duplicates=0 currency="EUR" revenue_minor=500 commission_minor=50 parent_commission_minor=10"#,
            r#"impressions=0 clicks=0 unique_clicks=0 leads=0 sales=0 duplicates=0 currency="USD" revenue_minor=10000 commission_minor=1000 parent_commission_minor=200"#,
        ]
    );
    // A reversal is a negative delta with no counters; approving a pending
    // sale moves no money and sends no rollup row.
    let key = ConversionKey::Order { campaign_id: 9, order_id: "u1".into() };
    store.set_status(&key, Status::Rejected).unwrap();
    assert_eq!(
        applied_at(&next()),
        r#"impressions=0 clicks=0 unique_clicks=0 leads=0 sales=0 duplicates=0 currency="USD" revenue_minor=-10000 commission_minor=-1000 parent_commission_minor=-200"#
    );
    let key = ConversionKey::Order { campaign_id: 9, order_id: "e1".into() };
    store.set_status(&key, Status::Approved).unwrap();
    let applied = feed.try_recv().unwrap();
    assert!(query.follow_batch(&applied).unwrap().is_none());
}

#[test]
fn money_beyond_i64_is_an_error() {
    let store = revshare_store();
    // 9,224 sales of the largest accepted amount (10^15 minor units) sum
    // past i64::MAX (about 9.22 × 10^18).
    let order_ids: Vec<String> = (0..9_224).map(|order_idx| format!("o{order_idx}")).collect();
    let orders: Vec<(&str, i64, &str)> = order_ids
        .iter()
        .map(|order_id| (order_id.as_str(), edgetally_protocol::money::AMOUNT_MINOR_MAX, "USD"))
        .collect();
    store.apply(sales(1, &orders));
    let query = ticket::parse(br#"{"dataset":"rollups","group_by":[]}"#).unwrap();
    let error = query.execute(&store).unwrap_err().to_string();
    assert_eq!(error, "Compute error: revenue_minor 9224000000000000000 in USD does not fit an i64: narrow the query");
    // Per minute and affiliate it still fails, since all sales share one
    // minute; a narrower filter that leaves them out answers.
    check_in(&store, r#"{"dataset":"rollups","affiliate_id":8}"#, "");
}
