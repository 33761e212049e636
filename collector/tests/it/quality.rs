//! Data-quality metrics: how late accepted events come, and conversions
//! accepted without the fields that make them traceable.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::support::{TestCollector, get, metric, post};

#[tokio::test]
async fn late_events_and_untraceable_conversions_are_counted() {
    let collector = TestCollector::start(&[]);
    let base = &collector.base_url;
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    let events = json!([
        // On time, 2 minutes late, 2 hours late.
        {"kind": "impression", "affiliate_id": 1, "campaign_id": 1},
        {"kind": "impression", "affiliate_id": 1, "campaign_id": 1, "time": now_ms - 120_000},
        {"kind": "lead", "affiliate_id": 1, "campaign_id": 1, "order_id": "q-1", "time": now_ms - 7_200_000},
        // Sales without a click ID, the second without an order ID too.
        {"kind": "sale", "affiliate_id": 1, "campaign_id": 1, "order_id": "q-2", "amount": "5.00", "currency": "EUR"},
        {"kind": "sale", "affiliate_id": 1, "campaign_id": 1, "amount": "1.00", "currency": "EUR"},
    ]);
    let answer = post(&format!("{base}/v1/events"), events.to_string()).await;
    assert_eq!(answer.json()["accepted"], 5, "{:?}", answer.json());

    let text = String::from_utf8(get(&format!("{base}/metrics")).await.body.to_vec()).unwrap();
    let le =
        |bound: &str| metric(&text, &format!(r#"edgetally_collector_events_lateness_seconds_bucket{{le="{bound}"}}"#));
    assert_eq!(metric(&text, "edgetally_collector_events_lateness_seconds_count"), 5, "{text}");
    // Three came within a second (the on-time impression and both sales).
    assert_eq!(le("1.0"), 3, "{text}");
    assert_eq!(le("60.0"), 3, "{text}");
    assert_eq!(le("300.0"), 4, "{text}");
    assert_eq!(le("3600.0"), 4, "{text}");
    assert_eq!(le("21600.0"), 5, "{text}");
    let missing =
        |field: &str| metric(&text, &format!(r#"edgetally_collector_conversions_missing_total{{field="{field}"}}"#));
    assert_eq!((missing("order_id"), missing("click_id")), (1, 3), "{text}");
}
