//! The `alerts` dataset end to end: an aggregator and a collector, events
//! with a duplicate and a refused one, then an edge that stops. Read over
//! real Flight: every finding exactly, an affiliate token sees only the
//! findings on its own rows, and a follow of alerts is refused.

use std::process::Command;
use std::time::{Duration, Instant};

use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::{UInt32Type, UInt64Type};
use serde_json::{Value, json};

use crate::support::{Stack, fetch_as};

const ADMIN_TOKEN: &str = "it-alerts-admin-token-0123456789abcdef";
const AFFILIATE_7_TOKEN: &str = "it-alerts-affiliate-7-0123456789abcdef";

/// Each finding as `(kind, edge_id, affiliate_id, count)`, in answer order.
fn findings(batches: &[arrow_array::RecordBatch]) -> Vec<(String, Option<u32>, Option<u32>, u64)> {
    let mut rows = Vec::new();
    for batch in batches {
        let kind = batch.column_by_name("kind").expect("kind").as_string::<i32>();
        let edge = batch.column_by_name("edge_id").expect("edge_id").as_primitive::<UInt32Type>();
        let affiliate = batch.column_by_name("affiliate_id").expect("affiliate_id").as_primitive::<UInt32Type>();
        let count = batch.column_by_name("count").expect("count").as_primitive::<UInt64Type>();
        for row_idx in 0..batch.num_rows() {
            let id = |column: &arrow_array::PrimitiveArray<UInt32Type>| {
                column.is_valid(row_idx).then(|| column.value(row_idx))
            };
            rows.push((kind.value(row_idx).to_owned(), id(edge), id(affiliate), count.value(row_idx)));
        }
    }
    rows
}

fn finding(
    kind: &str,
    edge_id: Option<u32>,
    affiliate_id: Option<u32>,
    count: u64,
) -> (String, Option<u32>, Option<u32>, u64) {
    (kind.to_owned(), edge_id, affiliate_id, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_name_duplicates_quarantined_input_and_a_silent_edge() {
    let tokens_dir = tempfile::tempdir().expect("temp dir");
    let tokens_path = tokens_dir.path().join("flight-tokens.json");
    let tokens = json!({"tokens": [
        {"name": "finance", "token": ADMIN_TOKEN, "role": "admin"},
        {"name": "aff-7", "token": AFFILIATE_7_TOKEN, "role": "affiliate:7"},
    ]});
    std::fs::write(&tokens_path, tokens.to_string()).expect("write tokens");
    let mut stack = Stack::start_configured(
        1,
        &[],
        &["--flight-tokens", tokens_path.to_str().expect("utf-8"), "--edge-silent-secs", "3"],
    );
    let flight = stack.flight_url.clone();

    // Affiliate 7: an impression sent twice with one event id, and a sale
    // whose order id comes again. Affiliate 8: one impression. And one
    // event refused for its currency.
    let events = json!([
        {"kind": "impression", "affiliate_id": 7, "campaign_id": 3, "event_id": "e-1"},
        {"kind": "impression", "affiliate_id": 7, "campaign_id": 3, "event_id": "e-1"},
        {"kind": "sale", "affiliate_id": 7, "campaign_id": 3, "order_id": "o-1", "amount": "5.00", "currency": "USD"},
        {"kind": "sale", "affiliate_id": 7, "campaign_id": 3, "order_id": "o-1", "amount": "5.00", "currency": "USD"},
        {"kind": "impression", "affiliate_id": 8, "campaign_id": 3},
        {"kind": "sale", "affiliate_id": 8, "campaign_id": 3, "order_id": "o-2", "amount": "1.00", "currency": "XXX"},
    ]);
    let url = format!("{}/v1/events", stack.collectors[0]);
    let output =
        Command::new("curl").args(["-sf", "-X", "POST", &url, "-d", &events.to_string()]).output().expect("curl");
    let answer: Value = serde_json::from_slice(&output.stdout).expect("per-item answer");
    assert_eq!(
        (answer["accepted"].as_u64(), answer["duplicates"].as_u64(), answer["rejected"].as_u64()),
        (Some(3), Some(2), Some(1)),
        "{answer}"
    );

    let alerts = json!({"dataset": "alerts"});
    let expected_data = vec![finding("duplicates", None, Some(7), 2), finding("quarantined", None, None, 1)];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = findings(&fetch_as(&flight, Some(ADMIN_TOKEN), alerts.clone()).await.expect("alerts"));
        let data: Vec<_> = seen.iter().filter(|row| row.0 != "edge_silent").cloned().collect();
        if data == expected_data {
            break;
        }
        assert!(Instant::now() < deadline, "alerts never settled: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Affiliate 7 sees the finding on its own rows, and nothing else.
    let own = findings(&fetch_as(&flight, Some(AFFILIATE_7_TOKEN), alerts.clone()).await.expect("own alerts"));
    assert_eq!(own, [finding("duplicates", None, Some(7), 2)]);
    let refused = fetch_as(&flight, Some(AFFILIATE_7_TOKEN), json!({"dataset": "alerts", "affiliate_id": 8})).await;
    assert_eq!(refused.expect_err("another affiliate's alerts").code(), tonic::Code::PermissionDenied);
    let follow = fetch_as(&flight, Some(ADMIN_TOKEN), json!({"dataset": "alerts", "follow": true})).await;
    let follow = follow.expect_err("alerts cannot be followed");
    assert_eq!(follow.code(), tonic::Code::InvalidArgument);
    assert!(follow.message().contains("alerts cannot be followed"), "{}", follow.message());

    // The edge stops: within a few seconds it is reported silent.
    stack.stop_collectors();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = findings(&fetch_as(&flight, Some(ADMIN_TOKEN), alerts.clone()).await.expect("alerts"));
        if let Some(silent) = seen.iter().find(|row| row.0 == "edge_silent") {
            assert_eq!(silent.1, Some(1), "{seen:?}");
            assert!(silent.3 >= 3, "{seen:?}");
            break;
        }
        assert!(Instant::now() < deadline, "edge 1 never reported silent: {seen:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The affiliate never sees edge findings.
    let own = findings(&fetch_as(&flight, Some(AFFILIATE_7_TOKEN), alerts).await.expect("own alerts"));
    assert_eq!(own, [finding("duplicates", None, Some(7), 2)]);
}
