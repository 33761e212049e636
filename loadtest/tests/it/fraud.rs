//! The edge's fraud rules with the real binaries: each rule fires on the
//! traffic it is for and not on its neighbour's, flagged events are
//! counted apart in the rollups, flagged conversions are booked `held` and
//! stay out of the money until approved, and each finding is an alert.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, UInt32Type, UInt64Type};
use arrow_flight::{Action, FlightClient};
use edgetally_protocol::Flag;
use futures::TryStreamExt;
use serde_json::json;

use crate::support::{Node, edge_token_file, fetch, metric, path, write_edge_tokens};

/// Campaign 1 wants an hour between click and conversion; campaign 2 does
/// not care. Affiliate 8 may convert once a day. Both pay 5.00 USD CPA.
const RULES: &str = r#"{
  "campaigns": [
    {"id": 1, "landing_url": "https://shop.example/1?c={click_id}", "click_to_conversion_min_secs": 3600,
     "payout": {"type": "cpa", "amount": "5.00", "currency": "USD"}},
    {"id": 2, "landing_url": "https://shop.example/2?c={click_id}",
     "payout": {"type": "cpa", "amount": "5.00", "currency": "USD"}}
  ],
  "affiliates": [{"id": 8, "daily_conversion_cap": 1}]
}"#;

const BROWSER: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0";

/// A GET through curl as a browser behind the load balancer: the outcome
/// header and the redirect's location.
fn get(url: &str, user_agent: &str, visitor: &str) -> (String, String) {
    let output = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-A", user_agent, "-H", &format!("x-forwarded-for: {visitor}")])
        .args(["-w", "%header{x-edgetally-outcome}|%{redirect_url}", url])
        .output()
        .expect("curl");
    let text = String::from_utf8(output.stdout).expect("curl writes text");
    let (outcome, location) = text.split_once('|').expect("two fields");
    (outcome.to_owned(), location.to_owned())
}

fn click_id(location: &str) -> String {
    location.rsplit_once("c=").expect("a click id in the landing URL").1.to_owned()
}

/// Rollup counters by `affiliate|campaign`: clicks, unique clicks,
/// impressions, sales, leads, then each flag's counter.
type Counters = (u64, u64, u64, u64, u64, [u64; 5]);

async fn counters(flight_url: &str) -> BTreeMap<String, Counters> {
    let ticket = json!({"dataset": "rollups", "group_by": ["affiliate_id", "campaign_id"]});
    let mut out = BTreeMap::new();
    for batch in fetch(flight_url, ticket).await {
        let column = |name: &str| batch.column(batch.schema().index_of(name).expect(name)).clone();
        let ids = [column("affiliate_id"), column("campaign_id")];
        let counts = ["clicks", "unique_clicks", "impressions", "sales", "leads"].map(column);
        let flagged = Flag::COLUMNS.map(column);
        for row_idx in 0..batch.num_rows() {
            let [affiliate_id, campaign_id] = ids.each_ref().map(|id| id.as_primitive::<UInt32Type>().value(row_idx));
            let value = |column: &arrow_array::ArrayRef| column.as_primitive::<UInt64Type>().value(row_idx);
            let [clicks, unique_clicks, impressions, sales, leads] = counts.each_ref().map(value);
            let key = format!("{affiliate_id}|{campaign_id}");
            // Money rows after the first of a group carry zero counters.
            let entry = out.entry(key).or_insert((0, 0, 0, 0, 0, [0; 5]));
            entry.0 += clicks;
            entry.1 += unique_clicks;
            entry.2 += impressions;
            entry.3 += sales;
            entry.4 += leads;
            for (total, flag_column) in entry.5.iter_mut().zip(&flagged) {
                *total += value(flag_column);
            }
        }
    }
    out
}

/// Conversions by order ID: status and flag.
async fn conversions(flight_url: &str) -> BTreeMap<String, (String, Option<String>)> {
    let mut out = BTreeMap::new();
    for batch in fetch(flight_url, json!({"dataset": "conversions"})).await {
        let column = |name: &str| batch.column(batch.schema().index_of(name).expect(name)).clone();
        let (order_id, status, flag) = (column("order_id"), column("status"), column("flag"));
        let flag = flag.as_string::<i32>();
        for row_idx in 0..batch.num_rows() {
            out.insert(
                order_id.as_string::<i32>().value(row_idx).to_owned(),
                (
                    status.as_string::<i32>().value(row_idx).to_owned(),
                    flag.is_valid(row_idx).then(|| flag.value(row_idx).to_owned()),
                ),
            );
        }
    }
    out
}

/// Revenue and commission in USD minor units by affiliate, from the
/// rollups' money columns (payable conversions only).
async fn usd_money(flight_url: &str) -> BTreeMap<u32, (i64, i64)> {
    let mut out = BTreeMap::new();
    for batch in fetch(flight_url, json!({"dataset": "rollups", "group_by": ["affiliate_id"]})).await {
        let column = |name: &str| batch.column(batch.schema().index_of(name).expect(name)).clone();
        let (affiliate_id, currency) = (column("affiliate_id"), column("currency"));
        let (revenue, commission) = (column("revenue_minor"), column("commission_minor"));
        let currency = currency.as_string::<i32>();
        for row_idx in 0..batch.num_rows() {
            if currency.is_valid(row_idx) && currency.value(row_idx) == "USD" {
                out.insert(
                    affiliate_id.as_primitive::<UInt32Type>().value(row_idx),
                    (
                        revenue.as_primitive::<Int64Type>().value(row_idx),
                        commission.as_primitive::<Int64Type>().value(row_idx),
                    ),
                );
            }
        }
    }
    out
}

fn flags(pairs: &[(Flag, u64)]) -> [u64; 5] {
    let mut counts = [0; 5];
    for &(flag, n) in pairs {
        counts[flag.index()] = n;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rule_flags_its_traffic_and_flagged_money_is_held() {
    let dir = tempfile::tempdir().expect("temp dir");
    let campaigns_path = dir.path().join("campaigns.json");
    std::fs::write(&campaigns_path, RULES).unwrap();
    let tokens_path = write_edge_tokens(dir.path(), 1);
    let mut aggregator =
        Node::aggregator(dir.path(), &["--edge-tokens", path(&tokens_path), "--campaigns", path(&campaigns_path)]);
    let addresses = aggregator.start();
    let flight_url = format!("http://{}", addresses["flight"].as_str().unwrap());
    let collector_dir = dir.path().join("collector-1");
    let extra = [
        ["--edge-id", "1", "--campaigns", path(&campaigns_path), "--flush-interval-ms", "50"].as_slice(),
        &["--fraud-rules", "bot_user_agent,click_flood,fast_conversion,no_click_id,over_daily_cap"],
        &["--click-flood-per-minute", "3", "--client-ip-header", "x-forwarded-for"],
    ]
    .concat();
    let mut collector = Node::collector(&collector_dir, &addresses, &edge_token_file(dir.path(), 1), &extra);
    let edge = format!("http://{}", collector.start()["http"].as_str().unwrap());

    // The click flood counts per UTC minute: start well inside one.
    let in_minute_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() % 60_000;
    if in_minute_ms > 45_000 {
        tokio::time::sleep(Duration::from_millis(61_000 - in_minute_ms as u64)).await;
    }

    // Pixels: a crawler's is flagged, a browser's is not.
    let pixel = format!("{edge}/p.gif?aff=7&cmp=1");
    assert_eq!(get(&pixel, "Googlebot/2.1 (+http://www.google.com/bot.html)", "10.0.0.9").0, "flagged");
    assert_eq!(get(&pixel, BROWSER, "10.0.0.9").0, "accepted");

    // Visitor 10.0.0.1 clicks five times in a minute: past three, flagged
    // (still redirected). Visitor 10.0.0.2 clicks three times: not.
    let outcomes: Vec<String> = (0..5).map(|_| get(&format!("{edge}/c/2?aff=7"), BROWSER, "10.0.0.1").0).collect();
    assert_eq!(outcomes, ["accepted", "accepted", "accepted", "flagged", "flagged"]);
    let (outcome, slow_campaign) = get(&format!("{edge}/c/1?aff=7"), BROWSER, "10.0.0.2");
    assert_eq!(outcome, "accepted");
    let capped: Vec<String> = (0..2)
        .map(|_| {
            let (outcome, location) = get(&format!("{edge}/c/2?aff=8"), BROWSER, "10.0.0.2");
            assert_eq!(outcome, "accepted");
            click_id(&location)
        })
        .collect();

    // Postbacks: sooner than campaign 1's hour is fast; affiliate 8's
    // second conversion today is over its cap.
    let postback = |click_id: &str, order_id: &str, amount: &str| {
        let url = format!("{edge}/pb?click_id={click_id}&order_id={order_id}&amount={amount}&currency=USD");
        get(&url, "merchant-server/1.0", "192.0.2.1").0
    };
    assert_eq!(postback(&click_id(&slow_campaign), "A", "20.00"), "flagged");
    assert_eq!(postback(&capped[0], "B", "30.00"), "accepted");
    assert_eq!(postback(&capped[1], "C", "40.00"), "flagged");
    // A posted lead without a click ID, and one that names a click.
    let events = json!([
        {"kind": "lead", "affiliate_id": 9, "campaign_id": 2, "order_id": "D"},
        {"kind": "lead", "affiliate_id": 8, "campaign_id": 2, "order_id": "E", "click_id": capped[0]},
    ]);
    let output = std::process::Command::new("curl")
        .args(["-s", "-X", "POST", "--data-binary", &events.to_string(), &format!("{edge}/v1/events")])
        .output()
        .expect("curl");
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).expect("events answer");
    assert_eq!((answer["accepted"].as_u64(), answer["flagged"].as_u64()), (Some(0), Some(2)), "{answer}");
    let statuses: Vec<(&str, &str)> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|result| (result["status"].as_str().unwrap(), result["flag"].as_str().unwrap()))
        .collect();
    // E is affiliate 8's second conversion of the day too.
    assert_eq!(statuses, [("flagged", "no_click_id"), ("flagged", "over_daily_cap")]);

    // Flagged events are counted apart: in their rule's counter only.
    let expect = BTreeMap::from([
        ("7|1".to_owned(), (1, 1, 1, 0, 0, flags(&[(Flag::BotUserAgent, 1), (Flag::FastConversion, 1)]))),
        ("7|2".to_owned(), (3, 1, 0, 0, 0, flags(&[(Flag::ClickFlood, 2)]))),
        ("8|2".to_owned(), (2, 1, 0, 1, 0, flags(&[(Flag::OverDailyCap, 2)]))),
        ("9|2".to_owned(), (0, 0, 0, 0, 0, flags(&[(Flag::NoClickId, 1)]))),
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let actual = counters(&flight_url).await;
        if actual == expect {
            break;
        }
        assert!(Instant::now() < deadline, "rollups never matched:\nexpected {expect:?}\nactual {actual:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held = |flag: &str| ("held".to_owned(), Some(flag.to_owned()));
    let expect_conversions = BTreeMap::from([
        ("A".to_owned(), held("fast_conversion")),
        ("B".to_owned(), ("pending".to_owned(), None)),
        ("C".to_owned(), held("over_daily_cap")),
        ("D".to_owned(), held("no_click_id")),
        ("E".to_owned(), held("over_daily_cap")),
    ]);
    assert_eq!(conversions(&flight_url).await, expect_conversions);
    // Only B is payable: 30.00 USD earning 5.00.
    assert_eq!(usd_money(&flight_url).await, BTreeMap::from([(8, (3_000, 500))]));

    // Each finding is an alert row: kind, affiliate, count.
    let mut findings = Vec::new();
    for batch in fetch(&flight_url, json!({"dataset": "alerts"})).await {
        let (kind, affiliate_id, count) = (batch.column(1), batch.column(4), batch.column(7));
        for row_idx in 0..batch.num_rows() {
            let kind = kind.as_string::<i32>().value(row_idx).to_owned();
            if Flag::parse(&kind).is_some() {
                let affiliate_id = affiliate_id.as_primitive::<UInt32Type>().value(row_idx);
                findings.push((kind, affiliate_id, count.as_primitive::<UInt64Type>().value(row_idx)));
            }
        }
    }
    findings.sort();
    let expect_findings = [
        ("bot_user_agent", 7, 1),
        ("click_flood", 7, 2),
        ("fast_conversion", 7, 1),
        ("no_click_id", 9, 1),
        ("over_daily_cap", 8, 2),
    ]
    .map(|(kind, affiliate_id, count)| (kind.to_owned(), affiliate_id, count));
    assert_eq!(findings, expect_findings);
    // And a counter per rule at the edge.
    for (rule, n) in [("bot_user_agent", 1.0), ("click_flood", 2.0), ("over_daily_cap", 2.0)] {
        assert_eq!(metric(&edge, &format!("edgetally_collector_events_flagged_total{{rule=\"{rule}\"}}")), n);
    }

    // Approving a held sale puts its money in.
    let channel = tonic::transport::Channel::from_shared(flight_url.clone()).unwrap().connect().await.unwrap();
    let mut client = FlightClient::new(channel);
    let body = json!({"campaign_id": 2, "order_id": "C", "status": "approved"}).to_string();
    let results: Vec<_> =
        client.do_action(Action::new("set_conversion_status", body)).await.unwrap().try_collect().await.unwrap();
    let result: serde_json::Value = serde_json::from_slice(&results[0]).unwrap();
    assert_eq!((result["status"].as_str(), result["flag"].as_str()), (Some("approved"), Some("over_daily_cap")));
    assert_eq!(usd_money(&flight_url).await, BTreeMap::from([(8, (7_000, 1_000))]));

    // A restart replays the same: held stays held, the approval stays.
    aggregator.kill();
    let addresses = aggregator.start();
    let flight_url = format!("http://{}", addresses["flight"].as_str().unwrap());
    let mut expect_conversions = expect_conversions;
    expect_conversions.get_mut("C").unwrap().0 = "approved".to_owned();
    assert_eq!(conversions(&flight_url).await, expect_conversions);
    assert_eq!(usd_money(&flight_url).await, BTreeMap::from([(8, (7_000, 1_000))]));
    assert_eq!(counters(&flight_url).await, expect);
    drop(collector);
}
