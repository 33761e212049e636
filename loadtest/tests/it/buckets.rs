//! Time buckets and the campaign and sub1 filters end to end: events around
//! a local midnight in New York go in at the edge, and the aggregator's
//! day and hour buckets, in New York, Kolkata and UTC, and its filters come
//! back over Arrow Flight with exact counts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMillisecondType;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde_json::json;

use crate::support::{Counts, GroupKey, Stack, fetch, rollups};

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;

/// How far either side of the local midnight the events lie. New York
/// changes its clocks at 02:00 local, so the window never holds a change
/// and one offset holds for all of it.
const SPREAD_MS: i64 = 90 * MINUTE_MS;

/// One event sent and where it belongs.
struct Sent {
    minute_ms: i64,
    affiliate_id: u32,
    campaign_id: u32,
    sub1: &'static str,
    click: bool,
}

/// Expected rollups under `group`, which names an event's group key (and
/// leaves out events it returns `None` for).
fn expect(sent: &[Sent], group: impl Fn(&Sent) -> Option<GroupKey>) -> BTreeMap<GroupKey, Counts> {
    let mut out: BTreeMap<GroupKey, Counts> = BTreeMap::new();
    for event in sent {
        let Some(key) = group(event) else { continue };
        let counts = out.entry(key).or_default();
        if event.click {
            // Posted clicks carry no visitor, so each is unique.
            counts.clicks += 1;
            counts.unique_clicks += 1;
        } else {
            counts.impressions += 1;
        }
    }
    out
}

/// The start of the local hour of `minute_ms` at a fixed `offset_ms`.
fn local_hour_ms(minute_ms: i64, offset_ms: i64) -> i64 {
    minute_ms - (minute_ms + offset_ms).rem_euclid(HOUR_MS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_by_local_day_and_hour_with_filters() {
    let stack = Stack::start(1);
    let collector = &stack.collectors[0];
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();

    // A New York midnight two to three days ago: the window around it lies
    // well inside the collector's accepted past (a week), whatever the date.
    let new_york = TimeZone::get("America/New_York").unwrap();
    let three_days_ago = Timestamp::now().checked_sub(SignedDuration::from_hours(72)).unwrap();
    let midnight = three_days_ago.to_zoned_datetime(new_york.clone()).tomorrow().unwrap().start_of_day().unwrap();
    let midnight_ms = midnight.timestamp().as_millisecond();
    let day_before_ms = midnight.yesterday().unwrap().start_of_day().unwrap().timestamp().as_millisecond();
    let offset_ms = i64::from(new_york.to_offset(midnight.timestamp()).seconds()) * 1000;
    for edge_ms in [midnight_ms - SPREAD_MS, midnight_ms + SPREAD_MS] {
        let edge_offset_ms =
            i64::from(new_york.to_offset(Timestamp::from_millisecond(edge_ms).unwrap()).seconds()) * 1000;
        assert_eq!(edge_offset_ms, offset_ms, "New York changed its offset near {midnight}");
    }

    // Events every 45 s across the window, the last minute before midnight
    // and midnight itself included, each a pseudo-random key and kind.
    let mut sent = Vec::new();
    let mut events = Vec::new();
    let mut times_ms: Vec<i64> = (0..2 * SPREAD_MS / 45_000)
        .map(|event_idx| midnight_ms - SPREAD_MS + event_idx * 45_000 + event_idx % 7)
        .collect();
    times_ms.extend([midnight_ms - 1, midnight_ms]);
    for (event_idx, time_ms) in times_ms.into_iter().enumerate() {
        let event = Sent {
            minute_ms: time_ms - time_ms.rem_euclid(MINUTE_MS),
            affiliate_id: 1 + (event_idx % 3) as u32,
            campaign_id: [10, 20][event_idx / 2 % 2],
            sub1: ["", "fb", "tw"][event_idx / 4 % 3],
            click: event_idx % 5 == 0,
        };
        let kind = if event.click { "click" } else { "impression" };
        let mut json = json!({"kind": kind, "affiliate_id": event.affiliate_id, "campaign_id": event.campaign_id, "time": time_ms});
        if !event.sub1.is_empty() {
            json["sub1"] = json!(event.sub1);
        }
        events.push(json);
        sent.push(event);
    }
    let request = http::Request::post(format!("{collector}/v1/events"))
        .body(Full::new(Bytes::from(serde_json::Value::Array(events).to_string())))
        .unwrap();
    let response = client.request(request).await.expect("post events");
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(answer["accepted"].as_u64(), Some(sent.len() as u64), "{answer}");

    // Wait until everything is in.
    let total = expect(&sent, |_| Some(String::new()));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let actual = rollups(&stack.flight_url, json!({"dataset": "rollups", "group_by": []})).await;
        if actual == total {
            break;
        }
        assert!(Instant::now() < deadline, "rollups never matched:\nexpected {total:#?}\nactual {actual:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let ny_day = |event: &Sent| if event.minute_ms < midnight_ms { day_before_ms } else { midnight_ms };
    let utc_day = |event: &Sent| event.minute_ms - event.minute_ms.rem_euclid(DAY_MS);
    let cases: Vec<(serde_json::Value, BTreeMap<GroupKey, Counts>)> = vec![
        // Days in New York: the two sides of its midnight.
        (
            json!({"dataset": "rollups", "granularity": "day", "tz": "America/New_York", "group_by": ["minute"]}),
            expect(&sent, |event| Some(ny_day(event).to_string())),
        ),
        // Days in UTC: New York's midnight is 04:00 or 05:00 UTC, so all of
        // the window is one UTC day.
        (
            json!({"dataset": "rollups", "granularity": "day", "group_by": ["minute"]}),
            expect(&sent, |event| Some(utc_day(event).to_string())),
        ),
        // Hours in New York and in UTC (whole-hour offsets: the same cuts).
        (
            json!({"dataset": "rollups", "granularity": "hour", "tz": "America/New_York", "group_by": ["minute"]}),
            expect(&sent, |event| Some(local_hour_ms(event.minute_ms, offset_ms).to_string())),
        ),
        (
            json!({"dataset": "rollups", "granularity": "hour", "group_by": ["minute"]}),
            expect(&sent, |event| Some(local_hour_ms(event.minute_ms, 0).to_string())),
        ),
        // Hours in Kolkata (+05:30) start at :30 past UTC's.
        (
            json!({"dataset": "rollups", "granularity": "hour", "tz": "Asia/Kolkata", "group_by": ["minute"]}),
            expect(&sent, |event| Some(local_hour_ms(event.minute_ms, 330 * MINUTE_MS).to_string())),
        ),
        // Filters, alone and together, with and without buckets.
        (
            json!({"dataset": "rollups", "campaign_id": 10, "group_by": ["campaign_id"]}),
            expect(&sent, |event| (event.campaign_id == 10).then(|| "10".to_owned())),
        ),
        (
            json!({"dataset": "rollups", "sub1": "fb", "group_by": ["affiliate_id", "sub1"]}),
            expect(&sent, |event| (event.sub1 == "fb").then(|| format!("{}|fb", event.affiliate_id))),
        ),
        (
            json!({"dataset": "rollups", "sub1": "", "group_by": []}),
            expect(&sent, |event| event.sub1.is_empty().then(String::new)),
        ),
        (
            json!({"dataset": "rollups", "campaign_id": 20, "sub1": "tw", "granularity": "day", "tz": "America/New_York", "group_by": ["minute", "affiliate_id"]}),
            expect(&sent, |event| {
                (event.campaign_id == 20 && event.sub1 == "tw")
                    .then(|| format!("{}|{}", ny_day(event), event.affiliate_id))
            }),
        ),
        (json!({"dataset": "rollups", "campaign_id": 30}), BTreeMap::new()),
    ];
    for (ticket, expect) in cases {
        let actual = rollups(&stack.flight_url, ticket.clone()).await;
        assert_eq!(actual, expect, "{ticket}");
    }
    // The New York day buckets are not the UTC ones.
    let ny_days = expect(&sent, |event| Some(ny_day(event).to_string()));
    assert_eq!(ny_days.len(), 2, "{ny_days:?}");
    assert_eq!(expect(&sent, |event| Some(utc_day(event).to_string())).len(), 1);

    // The time column is named after the granularity and carries the zone.
    let ticket = json!({"dataset": "rollups", "granularity": "day", "tz": "america/new_york", "group_by": ["minute"]});
    let batches = fetch(&stack.flight_url, ticket).await;
    let schema = batches[0].schema();
    assert_eq!(schema.field(0).name(), "day");
    let days = batches[0].column(0).as_primitive::<TimestampMillisecondType>();
    assert_eq!(days.timezone(), Some("America/New_York"));
    assert_eq!(days.values().to_vec(), [day_before_ms, midnight_ms]);
}
