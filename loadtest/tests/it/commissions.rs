//! Commissions, cross-edge dedup and reversal with the real binaries: two
//! collectors ship to one aggregator whose campaigns file carries the
//! commission rules; every conversion row read over Flight carries the
//! exact commission, a copy through the other edge is booked once, a
//! rejected sale leaves the money, and a killed aggregator comes back with
//! the same answers from its log.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, UInt32Type};
use arrow_flight::{Action, FlightClient};
use futures::TryStreamExt;
use serde_json::json;

use crate::support::{Node, edge_token_file, fetch, path, rollups, write_edge_tokens};

/// Campaign 1 pays CPA 12.50 USD; campaign 2 revshare 7.5%. Affiliate 7
/// earns CPA 1500 JPY on campaign 2 instead; its parent 8 takes 5% on top.
const RULES: &str = r#"{
  "campaigns": [
    {"id": 1, "landing_url": "https://shop.example/1", "payout": {"type": "cpa", "amount": "12.50", "currency": "USD"}},
    {"id": 2, "landing_url": "https://shop.example/2", "payout": {"type": "revshare", "percent": "7.5"}}
  ],
  "affiliates": [
    {"id": 7, "parent_id": 8, "payouts": [{"campaign_id": 2, "payout": {"type": "cpa", "amount": "1500", "currency": "JPY"}}]},
    {"id": 8, "override_percent": "5"}
  ]
}"#;

/// One conversion row as read back: order, edge, status, commission,
/// commission currency, rule, parent commission.
type Row = (String, u32, String, i64, Option<String>, String, i64);

fn post(collector: &str, events: serde_json::Value) -> serde_json::Value {
    let output = std::process::Command::new("curl")
        .args(["-s", "-X", "POST", "--data-binary", &events.to_string(), &format!("{collector}/v1/events")])
        .output()
        .expect("curl");
    serde_json::from_slice(&output.stdout).expect("events answer")
}

fn sale(affiliate_id: u32, campaign_id: u32, order_id: &str, amount: &str, currency: &str) -> serde_json::Value {
    json!({"kind": "sale", "affiliate_id": affiliate_id, "campaign_id": campaign_id, "order_id": order_id,
           "amount": amount, "currency": currency})
}

async fn conversions(flight_url: &str) -> BTreeMap<String, Row> {
    let mut rows = BTreeMap::new();
    for batch in fetch(flight_url, json!({"dataset": "conversions"})).await {
        let column = |name: &str| batch.column(batch.schema().index_of(name).expect(name)).clone();
        let (order_id, status, currency, rule) =
            (column("order_id"), column("status"), column("commission_currency"), column("rule"));
        let (edge_id, commission, parent) =
            (column("edge_id"), column("commission_minor"), column("parent_commission_minor"));
        for row_idx in 0..batch.num_rows() {
            let order_id = order_id.as_string::<i32>().value(row_idx).to_owned();
            let currency = currency.as_string::<i32>();
            let row = (
                order_id.clone(),
                edge_id.as_primitive::<UInt32Type>().value(row_idx),
                status.as_string::<i32>().value(row_idx).to_owned(),
                commission.as_primitive::<Int64Type>().value(row_idx),
                currency.is_valid(row_idx).then(|| currency.value(row_idx).to_owned()),
                rule.as_string::<i32>().value(row_idx).to_owned(),
                parent.as_primitive::<Int64Type>().value(row_idx),
            );
            assert!(rows.insert(order_id, row).is_none(), "a conversion is booked twice");
        }
    }
    rows
}

async fn wait_for_conversions(flight_url: &str, n_rows: usize) -> BTreeMap<String, Row> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = conversions(flight_url).await;
        if rows.len() >= n_rows {
            return rows;
        }
        assert!(Instant::now() < deadline, "{} of {n_rows} conversions arrived: {rows:?}", rows.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The rollups' money by affiliate and currency: revenue, commission and
/// parent's commission, in minor units.
async fn money(flight_url: &str) -> BTreeMap<(u32, String), (i64, i64, i64)> {
    let mut out = BTreeMap::new();
    for batch in fetch(flight_url, json!({"dataset": "rollups", "group_by": ["affiliate_id"]})).await {
        let column = |name: &str| batch.column(batch.schema().index_of(name).expect(name)).clone();
        let (affiliate_id, currency) = (column("affiliate_id"), column("currency"));
        let amounts = ["revenue_minor", "commission_minor", "parent_commission_minor"].map(column);
        let currency = currency.as_string::<i32>();
        for row_idx in 0..batch.num_rows() {
            if currency.is_null(row_idx) {
                continue;
            }
            let key = (affiliate_id.as_primitive::<UInt32Type>().value(row_idx), currency.value(row_idx).to_owned());
            let [revenue, commission, parent] =
                amounts.each_ref().map(|amount| amount.as_primitive::<Int64Type>().value(row_idx));
            assert!(out.insert(key, (revenue, commission, parent)).is_none(), "one row per affiliate and currency");
        }
    }
    out
}

fn row(order: &str, edge_id: u32, status: &str, commission: (i64, Option<&str>), rule: &str, parent: i64) -> Row {
    let (amount, currency) = commission;
    (order.into(), edge_id, status.into(), amount, currency.map(str::to_owned), rule.into(), parent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commissions_dedup_and_reversal_survive_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let campaigns_path = dir.path().join("campaigns.json");
    std::fs::write(&campaigns_path, RULES).unwrap();
    let tokens_path = write_edge_tokens(dir.path(), 2);
    let mut aggregator =
        Node::aggregator(dir.path(), &["--edge-tokens", path(&tokens_path), "--campaigns", path(&campaigns_path)]);
    let addresses = aggregator.start();
    let flight_url = format!("http://{}", addresses["flight"].as_str().unwrap());
    let mut collectors = Vec::new();
    let mut urls = Vec::new();
    for edge_id in 1..=2u32 {
        let collector_dir = dir.path().join(format!("collector-{edge_id}"));
        let token_path = edge_token_file(dir.path(), edge_id);
        let edge_id = edge_id.to_string();
        let campaigns = path(&campaigns_path);
        let extra =
            ["--edge-id", &edge_id, "--campaigns", campaigns, "--dedup-keys-max", "10000", "--flush-interval-ms", "50"];
        let mut collector = Node::collector(&collector_dir, &addresses, &token_path, &extra);
        urls.push(format!("http://{}", collector.start()["http"].as_str().unwrap()));
        collectors.push(collector);
    }

    let answer = post(
        &urls[0],
        json!([
            sale(7, 1, "A", "100.00", "USD"), // campaign CPA: 12.50 USD, parent 5%: 62.5 -> 62
            sale(7, 2, "B", "20000", "JPY"),  // affiliate CPA on campaign 2: 1500 JPY, parent 75
            sale(9, 2, "C", "12.345", "BHD"), // revshare 7.5%: 925.875 -> 926 fils
            sale(9, 2, "E", "0.30", "EUR"),   // revshare: 2.25 -> 2 (half to even)
        ]),
    );
    assert_eq!(answer["accepted"], 4, "{answer}");
    // Edge 1's copy of A is booked before edge 2 ships its own.
    wait_for_conversions(&flight_url, 4).await;
    // The same order A through the other edge, and a new one.
    let answer = post(&urls[1], json!([sale(7, 1, "A", "100.00", "USD"), sale(9, 2, "D", "10.00", "EUR")]));
    assert_eq!(answer["accepted"], 2, "{answer}");

    let expect = BTreeMap::from(
        [
            row("A", 1, "pending", (1250, Some("USD")), "campaign/cpa", 62),
            row("B", 1, "pending", (1500, Some("JPY")), "affiliate_campaign/cpa", 75),
            row("C", 1, "pending", (926, Some("BHD")), "campaign/revshare", 0),
            row("D", 2, "pending", (75, Some("EUR")), "campaign/revshare", 0),
            row("E", 1, "pending", (2, Some("EUR")), "campaign/revshare", 0),
        ]
        .map(|row| (row.0.clone(), row)),
    );
    assert_eq!(wait_for_conversions(&flight_url, 5).await, expect);
    // The copy of A counts as a duplicate, not a sale, in its rollup; wait
    // for both edges' rollups.
    let by_campaign = json!({"dataset": "rollups", "group_by": ["affiliate_id", "campaign_id"]});
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let counts = rollups(&flight_url, by_campaign.clone()).await;
        let of = |key: &str| counts.get(key).map(|counts| (counts.sales, counts.duplicates));
        if of("7|1") == Some((1, 1)) && of("9|2") == Some((3, 0)) && of("7|2") == Some((1, 0)) {
            break;
        }
        assert!(Instant::now() < deadline, "rollups: {counts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Money by affiliate and currency: (revenue, commission, parent's).
    let money_before = BTreeMap::from([
        ((7, "JPY".to_owned()), (20_000, 1_500, 75)),
        ((7, "USD".to_owned()), (10_000, 1_250, 62)),
        ((9, "BHD".to_owned()), (12_345, 926, 0)),
        ((9, "EUR".to_owned()), (1_030, 77, 0)),
    ]);
    assert_eq!(money(&flight_url).await, money_before);

    // Reverse C (a refund).
    let channel = tonic::transport::Channel::from_shared(flight_url.clone()).unwrap().connect().await.unwrap();
    let mut client = FlightClient::new(channel);
    let body = json!({"campaign_id": 2, "order_id": "C", "status": "rejected"}).to_string();
    let results: Vec<_> =
        client.do_action(Action::new("set_conversion_status", body)).await.unwrap().try_collect().await.unwrap();
    let result: serde_json::Value = serde_json::from_slice(&results[0]).unwrap();
    assert_eq!((result["status"].as_str(), result["commission_minor"].as_i64()), (Some("rejected"), Some(926)));
    let body = json!({"campaign_id": 2, "order_id": "nope", "status": "rejected"}).to_string();
    let Err(error) = client.do_action(Action::new("set_conversion_status", body)).await else {
        panic!("an unknown order is not found");
    };
    assert!(error.to_string().contains("no conversion has that key"), "{error}");
    let mut expect = expect;
    expect.get_mut("C").unwrap().2 = "rejected".into();
    assert_eq!(conversions(&flight_url).await, expect);
    // The rollups' money follows: C's BHD left, A counted once.
    let money_after = BTreeMap::from([
        ((7, "JPY".to_owned()), (20_000, 1_500, 75)),
        ((7, "USD".to_owned()), (10_000, 1_250, 62)),
        ((9, "EUR".to_owned()), (1_030, 77, 0)),
    ]);
    assert_eq!(money(&flight_url).await, money_after);

    // Killed and started again: the same ledger from the log.
    aggregator.kill();
    let addresses = aggregator.start();
    let flight_url = format!("http://{}", addresses["flight"].as_str().unwrap());
    assert_eq!(conversions(&flight_url).await, expect);
    let counts = rollups(&flight_url, by_campaign).await;
    assert_eq!(counts["7|1"].sales, 1);
    assert_eq!(counts["7|1"].duplicates, 1);
    assert_eq!(money(&flight_url).await, money_after);
    drop(collectors);
}
