//! The web dashboard's API end to end: an aggregator with Flight tokens,
//! commission rules and exchange rates, one collector, known events. Read
//! over real HTTP with curl: login and its refusals, exact overview and
//! table numbers (per currency and converted), the affiliate scope, the
//! CSV export, one computation per data version, and a new sale arriving
//! on the live stream as a delta.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Stack, metric};

const ADMIN_TOKEN: &str = "it-dashboard-admin-token-0123456789ab";
const AFFILIATE_7_TOKEN: &str = "it-dashboard-affiliate-7-0123456789a";
const EDGE_TOKEN: &str = "it-dashboard-edge-role-0123456789abcd";

/// `(status, body)` of one request; `args` go to curl as they are.
fn http(args: &[&str]) -> (u16, String) {
    let output = Command::new("curl").args(["-s", "-w", "\n%{http_code}"]).args(args).output().expect("curl");
    let text = String::from_utf8(output.stdout).expect("utf-8 answer");
    let (body, status) = text.rsplit_once('\n').expect("status line");
    (status.parse().expect("status"), body.to_owned())
}

fn get_json(url: &str, token: &str) -> (u16, Value) {
    let (status, body) = http(&["-H", &format!("Authorization: Bearer {token}"), url]);
    (status, serde_json::from_str(&body).unwrap_or_else(|error| panic!("{url}: {error}: {body}")))
}

fn post_events(collector: &str, events: &Value) -> Value {
    let (status, body) = http(&["-X", "POST", &format!("{collector}/v1/events"), "-d", &events.to_string()]);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("per-item answer")
}

fn sale(affiliate_id: u32, campaign_id: u32, order_id: &str, amount: &str, currency: &str) -> Value {
    json!({"kind": "sale", "affiliate_id": affiliate_id, "campaign_id": campaign_id, "order_id": order_id,
           "amount": amount, "currency": currency})
}

/// The money of one currency in a `Metrics` answer, as
/// `(revenue, commission, parent commission, payable)` minor units.
fn money(metrics: &Value, currency: &str) -> Option<(String, String, String, String)> {
    let line = metrics["money"].as_array()?.iter().find(|line| line["currency"] == currency)?;
    let field = |name: &str| line[name].as_str().expect("money is a string").to_owned();
    Some((field("revenue_minor"), field("commission_minor"), field("parent_commission_minor"), field("payable_minor")))
}

fn strings(values: [&str; 4]) -> Option<(String, String, String, String)> {
    let [a, b, c, d] = values.map(str::to_owned);
    Some((a, b, c, d))
}

#[test]
fn the_dashboard_api_answers_exactly_and_streams_deltas() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens_path = dir.path().join("flight-tokens.json");
    let tokens = json!({"tokens": [
        {"name": "finance", "token": ADMIN_TOKEN, "role": "admin"},
        {"name": "aff-7", "token": AFFILIATE_7_TOKEN, "role": "affiliate:7"},
        {"name": "edge", "token": EDGE_TOKEN, "role": "edge"},
    ]});
    std::fs::write(&tokens_path, tokens.to_string()).expect("write tokens");
    // Campaign 1 pays CPA 12.50 USD, campaign 2 a 10 % revenue share;
    // affiliate 7's parent 8 earns 5 % on top.
    let campaigns_path = dir.path().join("rules.json");
    let rules = json!({
        "campaigns": [
            {"id": 1, "landing_url": "https://shop.example/1?c={click_id}",
             "payout": {"type": "cpa", "amount": "12.50", "currency": "USD"}},
            {"id": 2, "landing_url": "https://shop.example/2?c={click_id}",
             "payout": {"type": "revshare", "percent": "10"}},
        ],
        "affiliates": [{"id": 7, "parent_id": 8}, {"id": 8, "override_percent": "5"}],
    });
    std::fs::write(&campaigns_path, rules.to_string()).expect("write rules");
    let rates_path = dir.path().join("rates.json");
    std::fs::write(&rates_path, r#"{"reporting_currency":"EUR","rates":{"USD":"0.90"}}"#).expect("write rates");
    let stack = Stack::start_configured(
        1,
        &[],
        &[
            "--flight-tokens",
            tokens_path.to_str().expect("utf-8"),
            "--campaigns",
            campaigns_path.to_str().expect("utf-8"),
            "--exchange-rates",
            rates_path.to_str().expect("utf-8"),
        ],
    );
    let base = stack.aggregator_http.clone();
    let collector = stack.collectors[0].clone();
    let overview = format!("{base}/api/overview");

    // Refusals: no token, a wrong one, an edge's; a bad parameter.
    let (status, body) = http(&[&overview]);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("not logged in"), "{body}");
    let (status, body) =
        http(&["-X", "POST", &format!("{base}/api/login"), "-d", r#"{"token":"wrong-token-0123456789abcdef"}"#]);
    assert_eq!(status, 401, "{body}");
    assert_eq!(get_json(&overview, EDGE_TOKEN).0, 403);
    let (status, body) = get_json(&format!("{overview}?period=fortnight"), ADMIN_TOKEN);
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("unknown period \"fortnight\""), "{body}");
    let (status, body) = get_json(&format!("{overview}?color=red"), ADMIN_TOKEN);
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("unknown parameter \"color\""), "{body}");
    assert_eq!(get_json(&format!("{overview}?tz=Mars/Olympus"), ADMIN_TOKEN).0, 400);

    // Affiliate 7: 3 clicks, a sale on each campaign; affiliate 9: one
    // click and a sale in USD on campaign 1.
    let mut events: Vec<Value> =
        (0..3).map(|_| json!({"kind": "click", "affiliate_id": 7, "campaign_id": 1})).collect();
    events.push(json!({"kind": "click", "affiliate_id": 9, "campaign_id": 1}));
    events.push(sale(7, 1, "d-A", "100.00", "USD"));
    events.push(sale(7, 2, "d-B", "80.00", "EUR"));
    events.push(sale(9, 1, "d-C", "30.00", "USD"));
    let answer = post_events(&collector, &Value::Array(events));
    assert_eq!(answer["accepted"], 7, "{answer}");

    let deadline = Instant::now() + Duration::from_secs(30);
    let current = loop {
        let (status, answer) = get_json(&overview, ADMIN_TOKEN);
        assert_eq!(status, 200, "{answer}");
        if answer["current"]["sales"] == 3 && answer["current"]["clicks"] == 4 {
            break answer["current"].clone();
        }
        assert!(Instant::now() < deadline, "the events never reached the overview: {answer}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!((current["impressions"].as_u64(), current["conversions"].as_u64()), (Some(0), Some(3)));
    // Each sale booked live is timed from its event to its apply.
    assert_eq!(metric(&base, "edgetally_aggregator_conversion_freshness_seconds_count"), 3.0);
    assert_eq!(current["conversion_rate"], 0.75);
    // USD: 130.00 sold; 2 × 12.50 CPA, and 5 % of affiliate 7's (62.5 → 62).
    assert_eq!(money(&current, "USD"), strings(["13000", "2500", "62", "2562"]));
    // EUR: 10 % of 80.00, and 5 % of that for the parent.
    assert_eq!(money(&current, "EUR"), strings(["8000", "800", "40", "840"]));
    // In EUR: 80.00 + 130.00 × 0.90 = 197.00; payable 8.40 + 25.62 × 0.90 (23.058 → 23.06) = 31.46.
    let reporting = &current["reporting"];
    assert_eq!((reporting["currency"].as_str(), reporting["revenue_minor"].as_str()), (Some("EUR"), Some("19700")));
    assert_eq!(
        (reporting["payable_minor"].as_str(), reporting["margin_minor"].as_str()),
        (Some("3146"), Some("16554"))
    );

    // Affiliates, by id.
    let (status, table) = get_json(&format!("{base}/api/table?by=affiliate"), ADMIN_TOKEN);
    assert_eq!(status, 200, "{table}");
    let rows = table["rows"].as_array().expect("rows");
    let ids: Vec<u64> = rows.iter().map(|row| row["id"].as_u64().expect("id")).collect();
    assert_eq!(ids, [7, 9]);
    assert_eq!(money(&rows[0], "USD"), strings(["10000", "1250", "62", "1312"]));
    assert_eq!(money(&rows[1], "USD"), strings(["3000", "1250", "0", "1250"]));
    assert_eq!(rows[1]["epc_minor"], Value::Null);
    assert_eq!(rows[1]["money"][0]["epc_minor"], 1250.0);

    // The affiliate sees only its own numbers, and may not ask for others'.
    let (_, own) = get_json(&format!("{base}/api/table?by=affiliate"), AFFILIATE_7_TOKEN);
    let own_ids: Vec<u64> = own["rows"].as_array().unwrap().iter().map(|row| row["id"].as_u64().unwrap()).collect();
    assert_eq!(own_ids, [7]);
    let (_, own_overview) = get_json(&overview, AFFILIATE_7_TOKEN);
    assert_eq!(
        (own_overview["current"]["clicks"].as_u64(), own_overview["current"]["sales"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(get_json(&format!("{overview}?affiliate_id=9"), AFFILIATE_7_TOKEN).0, 403);
    let (_, health) = get_json(&format!("{base}/api/health"), AFFILIATE_7_TOKEN);
    assert_eq!(health["edges"], json!([]));
    let (_, health) = get_json(&format!("{base}/api/health"), ADMIN_TOKEN);
    assert_eq!((health["edges"][0]["edge_id"].as_u64(), health["edges"][0]["state"].as_str()), (Some(1), Some("live")));

    // CSV of the campaigns, filtered to "2".
    let (status, csv) = http(&[
        "-H",
        &format!("Authorization: Bearer {ADMIN_TOKEN}"),
        &format!("{base}/api/table?by=campaign&format=csv&q=2"),
    ]);
    assert_eq!(status, 200, "{csv}");
    assert_eq!(
        csv,
        "campaign_id,impressions,clicks,unique_clicks,leads,sales,conversions,duplicates,flagged,currency,revenue,commission,parent_commission,payable,margin\n\
         2,0,0,0,0,1,1,0,0,EUR,80.00,8.00,0.40,8.40,71.60\n"
    );

    // Two viewers of one version cost one computation.
    let computed = metric(&base, "edgetally_aggregator_dashboard_answers_computed_total");
    let shared = metric(&base, "edgetally_aggregator_dashboard_answers_shared_total");
    let first = get_json(&format!("{overview}?period=7d"), ADMIN_TOKEN).1;
    let second = get_json(&format!("{overview}?period=7d"), ADMIN_TOKEN).1;
    assert_eq!(first, second);
    assert_eq!(metric(&base, "edgetally_aggregator_dashboard_answers_computed_total"), computed + 1.0);
    assert_eq!(metric(&base, "edgetally_aggregator_dashboard_answers_shared_total"), shared + 1.0);

    // Log in with the cookie, then follow the stream: a new sale arrives
    // as a delta, with its exact money.
    let jar = dir.path().join("cookies.txt");
    let jar = jar.to_str().expect("utf-8");
    let (status, body) = http(&[
        "-c",
        jar,
        "-X",
        "POST",
        &format!("{base}/api/login"),
        "-d",
        &json!({"token": ADMIN_TOKEN}).to_string(),
    ]);
    assert_eq!((status, body.as_str()), (200, r#"{"role":"admin"}"#));
    let (status, session) = http(&["-b", jar, &format!("{base}/api/session")]);
    assert_eq!(status, 200, "{session}");
    let session: Value = serde_json::from_str(&session).expect("session");
    assert_eq!((session["role"].as_str(), session["reporting_currency"].as_str()), (Some("admin"), Some("EUR")));
    assert_eq!(session["exponents"]["BHD"], 3);

    let mut stream = Command::new("curl")
        .args(["-sN", "-b", jar, &format!("{base}/api/stream")])
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl stream");
    let (lines_tx, lines) = mpsc::channel::<String>();
    let stdout = stream.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let next_event = |name: &str| -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut current_event = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines.recv_timeout(left).unwrap_or_else(|_| panic!("no {name} event within 15 s"));
            if let Some(event) = line.strip_prefix("event: ") {
                current_event = event.to_owned();
            } else if let Some(data) = line.strip_prefix("data: ")
                && current_event == name
            {
                return serde_json::from_str(data).expect("event data is JSON");
            }
        }
    };
    let hello = next_event("hello");
    let answer = post_events(&collector, &json!([sale(7, 2, "d-D", "20.00", "EUR")]));
    assert_eq!(answer["accepted"], 1, "{answer}");
    let delta = loop {
        let delta = next_event("delta");
        if delta["rows"].as_array().is_some_and(|rows| rows.iter().any(|row| row["sales"] == 1)) {
            break delta;
        }
    };
    assert!(delta["version"].as_u64() > hello["version"].as_u64(), "{delta} after {hello}");
    let rows = delta["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{delta}");
    assert_eq!((rows[0]["affiliate_id"].as_u64(), rows[0]["campaign_id"].as_u64()), (Some(7), Some(2)));
    assert_eq!(
        rows[0]["money"],
        json!([{"currency": "EUR", "revenue_minor": "2000", "commission_minor": "200", "parent_commission_minor": "10"}])
    );
    let heartbeat = next_event("heartbeat");
    assert!(heartbeat["last_applied_ms"].as_i64().is_some(), "{heartbeat}");
    assert_eq!(metric(&base, "edgetally_aggregator_dashboard_streams"), 1.0);
    let _ = stream.kill();
    let _ = stream.wait();

    // Logging out clears the cookie.
    let (status, _) = http(&["-b", jar, "-c", jar, "-X", "POST", &format!("{base}/api/logout")]);
    assert_eq!(status, 204);
    assert_eq!(http(&["-b", jar, &format!("{base}/api/session")]).0, 401);
    // No token, a wrong one at login, the cleared cookie; an edge token
    // and affiliate 7 asking for affiliate 9.
    let refused =
        |reason: &str| metric(&base, &format!("edgetally_aggregator_dashboard_refused_total{{reason=\"{reason}\"}}"));
    assert_eq!((refused("unauthenticated"), refused("permission_denied")), (3.0, 2.0));
}
