//! The end-to-end spine: pixels and JSON events in at the edge, rollups out
//! over Arrow Flight, every count exact.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

use arrow_array::cast::AsArray;

use crate::support::{Counts, GroupKey, Stack, rollups};

/// A small deterministic generator, so a failure is reproducible.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound
    }
}

fn bump(counts: &mut Counts, kind: &str) {
    match kind {
        "impression" => counts.impressions += 1,
        "click" => {
            // Posted clicks carry no visitor, so each is unique.
            counts.clicks += 1;
            counts.unique_clicks += 1;
        }
        "lead" => counts.leads += 1,
        "sale" => counts.sales += 1,
        other => panic!("unknown kind {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pixels_and_events_are_counted_exactly() {
    let stack = Stack::start(1);
    let collector = &stack.collectors[0];
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    let current_minute = now_ms / 60_000 * 60_000;
    let minutes = [current_minute - 120_000, current_minute - 60_000];

    // Ground truth, per (minute, affiliate, campaign, sub1) and without minute.
    let mut by_minute: BTreeMap<GroupKey, Counts> = BTreeMap::new();
    let mut by_key: BTreeMap<GroupKey, Counts> = BTreeMap::new();
    let mut rng = Lcg(7);
    let kinds = ["impression", "impression", "impression", "click", "click", "lead", "sale"];
    let subs = ["", "fb", "tw"];
    let mut events = Vec::new();
    for _ in 0..300 {
        let minute = minutes[rng.below(2) as usize];
        let time_ms = minute + rng.below(60_000) as i64;
        let affiliate_id = 1 + rng.below(4);
        let campaign_id = [10, 20][rng.below(2) as usize];
        let sub1 = subs[rng.below(3) as usize];
        let kind = kinds[rng.below(kinds.len() as u64) as usize];
        let mut event =
            json!({"kind": kind, "affiliate_id": affiliate_id, "campaign_id": campaign_id, "time": time_ms});
        if !sub1.is_empty() {
            event["sub1"] = json!(sub1);
        }
        if kind == "sale" {
            event["amount"] = json!("19.99");
            event["currency"] = json!("EUR");
        }
        events.push(event);
        bump(by_minute.entry(format!("{minute}|{affiliate_id}|{campaign_id}|{sub1}")).or_default(), kind);
        bump(by_key.entry(format!("{affiliate_id}|{campaign_id}|{sub1}")).or_default(), kind);
    }
    let invalid = [
        json!({"kind": "click", "affiliate_id": 0, "campaign_id": 10}),
        json!({"kind": "sale", "affiliate_id": 1, "campaign_id": 10, "amount": "1.001", "currency": "EUR"}),
        json!({"kind": "click", "affiliate_id": 1, "campaign_id": 10, "time": 1000}),
    ];

    // Three body shapes: a JSON array, NDJSON, and single objects.
    let url = format!("{collector}/v1/events");
    let post = |body: String| {
        let client = client.clone();
        let request = http::Request::post(url.as_str()).body(Full::new(Bytes::from(body))).unwrap();
        async move {
            let response = client.request(request).await.expect("post events");
            assert_eq!(response.status(), 200);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice::<serde_json::Value>(&body).unwrap()
        }
    };
    let mut array: Vec<_> = events[..100].to_vec();
    array.extend(invalid.iter().cloned());
    let answer = post(serde_json::Value::Array(array).to_string()).await;
    assert_eq!((answer["accepted"].as_u64(), answer["rejected"].as_u64()), (Some(100), Some(3)), "{answer}");
    let ndjson: Vec<String> = events[100..200].iter().chain(&invalid).map(|event| event.to_string()).collect();
    let answer = post(ndjson.join("\n")).await;
    assert_eq!((answer["accepted"].as_u64(), answer["rejected"].as_u64()), (Some(100), Some(3)), "{answer}");
    for event in &events[200..] {
        let answer = post(event.to_string()).await;
        assert_eq!(answer["accepted"], 1, "{answer}");
    }

    // Pixels are counted at receive time, so they are checked without minute.
    for pixel_idx in 0..60u64 {
        let affiliate_id = 1 + pixel_idx % 3;
        let sub1 = subs[(pixel_idx % 2) as usize];
        let mut target = format!("{collector}/p.gif?aff={affiliate_id}&cmp=10&cb={pixel_idx}");
        if !sub1.is_empty() {
            target.push_str(&format!("&sub1={sub1}"));
        }
        let response = client.get(target.parse().unwrap()).await.expect("pixel");
        assert_eq!(response.status(), 200);
        by_key.entry(format!("{affiliate_id}|10|{sub1}")).or_default().impressions += 1;
    }
    for bad in ["aff=0&cmp=10", "aff=1", "aff=1&cmp=10&sub1=%00"] {
        let response = client.get(format!("{collector}/p.gif?{bad}").parse().unwrap()).await.unwrap();
        assert_eq!(response.status(), 200);
    }

    // Requests refused before any event is read: each gets its status, and
    // its request line lands in the quarantine with the reason.
    let refused = [
        (http::Method::GET, "/no/such/route?x=1", String::new(), 404),
        (http::Method::DELETE, "/p.gif?aff=1&cmp=10", String::new(), 405),
        (http::Method::POST, "/v1/events", "x".repeat(2 * 1024 * 1024), 413),
        (http::Method::POST, "/v1/events?batch=7", r#"{"kind":"click","#.to_owned(), 400),
    ];
    for (method, target, body, status) in refused {
        let request = http::Request::builder()
            .method(method)
            .uri(format!("{collector}{target}"))
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = client.request(request).await.expect("refused request");
        assert_eq!(response.status(), status, "{target}");
    }

    let by_key_ticket = json!({"dataset": "rollups", "group_by": ["affiliate_id", "campaign_id", "sub1"]});
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let actual = rollups(&stack.flight_url, by_key_ticket.clone()).await;
        if actual == by_key {
            break;
        }
        assert!(Instant::now() < deadline, "rollups never matched:\nexpected {by_key:#?}\nactual {actual:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let ticket = json!({"dataset": "rollups", "from": minutes[0], "to": current_minute});
    assert_eq!(rollups(&stack.flight_url, ticket).await, by_minute);

    let from = jiff::Timestamp::from_millisecond(minutes[1]).unwrap().to_string();
    let ticket = json!({"dataset": "rollups", "from": from, "to": current_minute, "affiliate_id": 2, "group_by": ["affiliate_id"]});
    let mut expect = Counts::default();
    for (key, counts) in &by_minute {
        if key.starts_with(&format!("{}|2|", minutes[1])) {
            for (total, part) in [
                (&mut expect.impressions, counts.impressions),
                (&mut expect.clicks, counts.clicks),
                (&mut expect.unique_clicks, counts.unique_clicks),
                (&mut expect.leads, counts.leads),
                (&mut expect.sales, counts.sales),
            ] {
                *total += part;
            }
        }
    }
    assert_eq!(rollups(&stack.flight_url, ticket).await, BTreeMap::from([("2".to_owned(), expect)]));

    // Every rejected event is in the quarantine with its reason; pixels keep
    // their query string (posted items' text is consumed by the parser).
    let mut quarantined: Vec<(String, String, String)> = Vec::new();
    for batch in crate::support::fetch(&stack.flight_url, json!({"dataset": "quarantine"})).await {
        let text = |name: &str| batch.column_by_name(name).unwrap().as_string::<i32>().clone();
        let (source, reason, input) = (text("source"), text("reason"), text("input"));
        for row_idx in 0..batch.num_rows() {
            let row = (source.value(row_idx), reason.value(row_idx), input.value(row_idx));
            quarantined.push((row.0.to_owned(), row.1.to_owned(), row.2.to_owned()));
        }
    }
    quarantined.sort();
    let expect_quarantine: Vec<(String, String, String)> = [
        ("events", "bad_amount", ""),
        ("events", "bad_amount", ""),
        ("events", "bad_id", ""),
        ("events", "bad_id", ""),
        ("events", "time_out_of_window", ""),
        ("events", "time_out_of_window", ""),
        ("pixel", "bad_charset", "aff=1&cmp=10&sub1=%00"),
        ("pixel", "bad_id", "aff=0&cmp=10"),
        ("pixel", "missing_field", "aff=1"),
        ("request", "bad_body", "POST /v1/events?batch=7"),
        ("request", "body_too_large", "POST /v1/events"),
        ("request", "method_not_allowed", "DELETE /p.gif?aff=1&cmp=10"),
        ("request", "not_found", "GET /no/such/route?x=1"),
    ]
    .iter()
    .map(|(source, reason, input)| ((*source).to_owned(), (*reason).to_owned(), (*input).to_owned()))
    .collect();
    assert_eq!(quarantined, expect_quarantine);

    // Several more flush intervals change nothing: no batch is applied twice.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rollups(&stack.flight_url, by_key_ticket).await, by_key);

    // Every acknowledged batch's shipping lag was observed once, and on
    // loopback each within a minute of its seal. One scrape: the edge's
    // heartbeat batches keep coming.
    let scrape = crate::support::metrics_text(collector);
    let metric = |name: &str| crate::support::metric_in(&scrape, name);
    let n_applied = metric(r#"edgetally_collector_uplink_batches_total{status="apply"}"#);
    assert!(n_applied >= 1.0);
    assert_eq!(metric("edgetally_collector_uplink_shipping_lag_seconds_count"), n_applied);
    assert_eq!(metric(r#"edgetally_collector_uplink_shipping_lag_seconds_bucket{le="60.0"}"#), n_applied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicks_are_unique_per_visitor_affiliate_and_campaign() {
    let stack = Stack::start_with(1, &["--client-ip-header", "x-forwarded-for"]);
    let collector = &stack.collectors[0];
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let click = |affiliate_id: u32, user_agent: &'static str, forwarded: Option<&'static str>| {
        let mut request =
            http::Request::get(format!("{collector}/c/5?aff={affiliate_id}")).header("user-agent", user_agent);
        if let Some(forwarded) = forwarded {
            request = request.header("x-forwarded-for", forwarded);
        }
        let request = request.body(Full::default()).unwrap();
        let client = client.clone();
        async move {
            let response = client.request(request).await.expect("click");
            assert_eq!(response.status(), 302);
        }
    };
    for _ in 0..3 {
        click(9, "browser-a", None).await;
    }
    click(9, "browser-b", None).await;
    // Behind a load balancer the client is the last forwarded address.
    click(9, "browser-a", Some("198.51.100.1")).await;
    click(9, "browser-a", Some("10.0.0.1, 198.51.100.1")).await;
    click(10, "browser-a", None).await;

    let expect = BTreeMap::from([
        ("9|5".to_owned(), Counts { clicks: 6, unique_clicks: 3, ..Counts::default() }),
        ("10|5".to_owned(), Counts { clicks: 1, unique_clicks: 1, ..Counts::default() }),
    ]);
    let ticket = json!({"dataset": "rollups", "group_by": ["affiliate_id", "campaign_id"]});
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let actual = rollups(&stack.flight_url, ticket.clone()).await;
        if actual == expect {
            break;
        }
        assert!(Instant::now() < deadline, "expected {expect:#?}\nactual {actual:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
