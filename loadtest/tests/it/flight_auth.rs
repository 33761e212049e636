//! Flight auth end to end: an aggregator started with `--flight-tokens`,
//! events for affiliates 7 and 8 through a collector, then each role reads
//! over real Flight: an admin sees everything, an affiliate (by static
//! token or by JWT) exactly its own rows, also in a follow stream, and
//! everyone else is refused with the right status code.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow_array::cast::AsArray;
use arrow_array::types::UInt32Type;
use arrow_flight::Ticket;
use bytes::Bytes;
use futures::TryStreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tonic::Code;

use crate::support::{Counts, Stack, fetch_as, flight_client, loadtest, metric, rollup_counts};

const ADMIN_TOKEN: &str = "it-admin-token-0123456789abcdefghijklm";
const AFFILIATE_7_TOKEN: &str = "it-affiliate-7-token-0123456789abcdef";
const AFFILIATE_8_TOKEN: &str = "it-affiliate-8-token-0123456789abcdef";
const EDGE_TOKEN: &str = "it-edge-token-0123456789abcdefghijklmn";
const JWT_SECRET: &str = "it-jwt-secret-0123456789abcdefghijklmn";
const ISSUER: &str = "https://idp.example";
const AUDIENCE: &str = "edgetally";

/// An HS256 JWT from the test's identity provider, expiring `exp_in_secs`
/// from now (negative: already expired).
fn jwt(role: &str, exp_in_secs: i64) -> String {
    let now_secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let claims =
        json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "dashboard", "exp": now_secs + exp_in_secs, "role": role});
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("idp-1".into());
    jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes())).unwrap()
}

/// The events sent: per affiliate, impressions, clicks, leads and sales.
const SENT: [(u32, [u64; 4]); 2] = [(7, [5, 3, 1, 2]), (8, [4, 2, 0, 3])];

fn expected_rollups(affiliate_ids: &[u32]) -> BTreeMap<String, Counts> {
    SENT.iter()
        .filter(|(affiliate_id, _)| affiliate_ids.contains(affiliate_id))
        .map(|&(affiliate_id, [impressions, clicks, leads, sales])| {
            // Posted clicks carry no visitor, so each is unique.
            let counts = Counts { impressions, clicks, unique_clicks: clicks, leads, sales, ..Counts::default() };
            (affiliate_id.to_string(), counts)
        })
        .collect()
}

/// The affiliate id of every conversion row, sorted.
fn conversion_affiliates(batches: &[arrow_array::RecordBatch]) -> Vec<u32> {
    let mut ids: Vec<u32> = batches
        .iter()
        .flat_map(|batch| {
            let column = batch.column_by_name("affiliate_id").expect("affiliate_id column");
            column.as_primitive::<UInt32Type>().values().to_vec()
        })
        .collect();
    ids.sort_unstable();
    ids
}

#[track_caller]
fn assert_refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, what: &str) {
    match result {
        Ok(answer) => panic!("{what}: expected {code:?}, got an answer: {answer:?}"),
        Err(status) => assert_eq!(status.code(), code, "{what}: {status:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_read_what_they_may() {
    let tokens_dir = tempfile::tempdir().unwrap();
    let tokens_path = tokens_dir.path().join("flight-tokens.json");
    let tokens = json!({
        "tokens": [
            {"name": "finance", "token": ADMIN_TOKEN, "role": "admin"},
            {"name": "aff-7", "token": AFFILIATE_7_TOKEN, "role": "affiliate:7"},
            {"name": "aff-8", "token": AFFILIATE_8_TOKEN, "role": "affiliate:8"},
            {"name": "edge", "token": EDGE_TOKEN, "role": "edge"},
        ],
        "jwt": {"issuer": ISSUER, "audience": AUDIENCE, "keys": [{"kid": "idp-1", "alg": "HS256", "secret": JWT_SECRET}]},
    });
    std::fs::write(&tokens_path, tokens.to_string()).unwrap();
    let stack = Stack::start_configured(1, &[], &["--flight-tokens", tokens_path.to_str().unwrap()]);
    let flight = stack.flight_url.as_str();

    // Events for affiliates 7 and 8, and one invalid event for quarantine.
    let mut events = Vec::new();
    for (affiliate_id, [impressions, clicks, leads, sales]) in SENT {
        let kinds = [("impression", impressions), ("click", clicks), ("lead", leads), ("sale", sales)];
        for (kind, n_events) in kinds {
            for event_idx in 0..n_events {
                let mut event = json!({"kind": kind, "affiliate_id": affiliate_id, "campaign_id": 10});
                if kind == "lead" || kind == "sale" {
                    event["order_id"] = json!(format!("order-{affiliate_id}-{kind}-{event_idx}"));
                }
                if kind == "sale" {
                    event["amount"] = json!("19.99");
                    event["currency"] = json!("EUR");
                }
                events.push(event);
            }
        }
    }
    events.push(json!({"kind": "click", "affiliate_id": 0, "campaign_id": 10}));
    let client_http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = http::Request::post(format!("{}/v1/events", stack.collectors[0]))
        .body(Full::new(Bytes::from(Value::Array(events).to_string())))
        .unwrap();
    let response = client_http.request(request).await.expect("post events");
    assert_eq!(response.status(), 200);
    let answer: Value = serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!((answer["accepted"].as_u64(), answer["rejected"].as_u64()), (Some(20), Some(1)), "{answer}");

    // The admin sees both affiliates, once everything has arrived.
    let by_affiliate = json!({"dataset": "rollups", "group_by": ["affiliate_id"]});
    let both = expected_rollups(&[7, 8]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let batches = fetch_as(flight, Some(ADMIN_TOKEN), by_affiliate.clone()).await.unwrap();
        let conversions = fetch_as(flight, Some(ADMIN_TOKEN), json!({"dataset": "conversions"})).await.unwrap();
        if rollup_counts(&batches) == both && conversion_affiliates(&conversions).len() == 6 {
            break;
        }
        assert!(Instant::now() < deadline, "never arrived: {:#?}", rollup_counts(&batches));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let conversions = fetch_as(flight, Some(ADMIN_TOKEN), json!({"dataset": "conversions"})).await.unwrap();
    assert_eq!(conversion_affiliates(&conversions), [7, 7, 7, 8, 8, 8]);
    let quarantine = fetch_as(flight, Some(ADMIN_TOKEN), json!({"dataset": "quarantine"})).await.unwrap();
    assert_eq!(quarantine.iter().map(|batch| batch.num_rows()).sum::<usize>(), 1);

    // Affiliate 7's static token: its own rows, with or without naming itself.
    let affiliate_7 = Some(AFFILIATE_7_TOKEN);
    for ticket in [by_affiliate.clone(), json!({"dataset": "rollups", "affiliate_id": 7, "group_by": ["affiliate_id"]})]
    {
        let batches = fetch_as(flight, affiliate_7, ticket.clone()).await.unwrap();
        assert_eq!(rollup_counts(&batches), expected_rollups(&[7]), "{ticket}");
    }
    for ticket in [json!({"dataset": "conversions"}), json!({"dataset": "conversions", "affiliate_id": 7})] {
        let batches = fetch_as(flight, affiliate_7, ticket.clone()).await.unwrap();
        assert_eq!(conversion_affiliates(&batches), [7, 7, 7], "{ticket}");
    }
    let other = json!({"dataset": "rollups", "affiliate_id": 8});
    assert_refused(
        fetch_as(flight, affiliate_7, other).await,
        Code::PermissionDenied,
        "affiliate 7 reading 8's rollups",
    );
    let other = json!({"dataset": "conversions", "affiliate_id": 8});
    assert_refused(
        fetch_as(flight, affiliate_7, other).await,
        Code::PermissionDenied,
        "affiliate 7 reading 8's conversions",
    );
    let quarantine = json!({"dataset": "quarantine"});
    assert_refused(
        fetch_as(flight, affiliate_7, quarantine).await,
        Code::PermissionDenied,
        "affiliate 7 reading quarantine",
    );

    // Affiliate 8 by JWT.
    let affiliate_8_jwt = jwt("affiliate:8", 600);
    let batches = fetch_as(flight, Some(&affiliate_8_jwt), by_affiliate.clone()).await.unwrap();
    assert_eq!(rollup_counts(&batches), expected_rollups(&[8]));
    let batches = fetch_as(flight, Some(&affiliate_8_jwt), json!({"dataset": "conversions"})).await.unwrap();
    assert_eq!(conversion_affiliates(&batches), [8, 8, 8]);

    // No, wrong or expired credentials; the edge's token.
    let expired = jwt("affiliate:8", -3600);
    assert_refused(fetch_as(flight, Some(&expired), by_affiliate.clone()).await, Code::Unauthenticated, "expired jwt");
    let wrong = Some("it-wrong-token-0123456789abcdefghijklm");
    assert_refused(fetch_as(flight, wrong, by_affiliate.clone()).await, Code::Unauthenticated, "wrong token");
    assert_refused(fetch_as(flight, None, by_affiliate.clone()).await, Code::Unauthenticated, "no token");
    assert_refused(
        fetch_as(flight, Some(EDGE_TOKEN), by_affiliate.clone()).await,
        Code::PermissionDenied,
        "edge token",
    );

    // ListFlights: the affiliate is offered its three datasets, each
    // ticket naming it; the edge gets nothing.
    let mut client = flight_client(flight, affiliate_7).await;
    let infos: Vec<_> = client.list_flights("").await.unwrap().try_collect().await.unwrap();
    let tickets: Vec<Bytes> = infos.iter().map(|info| info.endpoint[0].ticket.clone().unwrap().ticket).collect();
    assert_eq!(
        tickets,
        [
            Bytes::from(r#"{"affiliate_id":7,"dataset":"rollups"}"#),
            Bytes::from(r#"{"affiliate_id":7,"dataset":"conversions"}"#),
            Bytes::from(r#"{"affiliate_id":7,"dataset":"alerts"}"#),
        ]
    );
    let mut client = flight_client(flight, Some(EDGE_TOKEN)).await;
    match client.list_flights("").await {
        Err(arrow_flight::error::FlightError::Tonic(status)) => assert_eq!(status.code(), Code::PermissionDenied),
        Err(error) => panic!("edge listing flights: {error}"),
        Ok(_) => panic!("edge listing flights: expected PermissionDenied, got a listing"),
    }

    // Follow tickets obey the same rules: affiliate 7 may not follow 8, and
    // its follow of conversions carries its own new rows only.
    let mut client = flight_client(flight, affiliate_7).await;
    let follow_8 = json!({"dataset": "conversions", "follow": true, "affiliate_id": 8});
    match client.do_get(Ticket::new(follow_8.to_string())).await {
        Err(arrow_flight::error::FlightError::Tonic(status)) => assert_eq!(status.code(), Code::PermissionDenied),
        Err(error) => panic!("affiliate 7 following 8: {error}"),
        Ok(_) => panic!("affiliate 7 following 8: expected PermissionDenied, got a stream"),
    }
    let follow = json!({"dataset": "conversions", "follow": true});
    let mut stream = client.do_get(Ticket::new(follow.to_string())).await.expect("affiliate 7 follows");
    for (affiliate_id, order_id) in [(8, "late-8"), (7, "late-7")] {
        let sale = json!({"kind": "sale", "affiliate_id": affiliate_id, "campaign_id": 10, "amount": "5.00", "currency": "EUR", "order_id": order_id});
        let request = http::Request::post(format!("{}/v1/events", stack.collectors[0]))
            .body(Full::new(Bytes::from(sale.to_string())))
            .unwrap();
        assert_eq!(client_http.request(request).await.expect("post sale").status(), 200);
    }
    let batch = tokio::time::timeout(Duration::from_secs(30), stream.try_next())
        .await
        .expect("a followed row in time")
        .expect("follow stream")
        .expect("the follow stream stays open");
    let order_ids: Vec<&str> = (0..batch.num_rows())
        .map(|row_idx| batch.column_by_name("order_id").unwrap().as_string::<i32>().value(row_idx))
        .collect();
    assert_eq!((conversion_affiliates(std::slice::from_ref(&batch)), order_ids), (vec![7], vec!["late-7"]));

    // Refusals are counted by reason: 3 unauthenticated; 4 for affiliate 7
    // and 2 for the edge out of scope.
    let refused = |reason: &str| {
        metric(&stack.aggregator_http, &format!("edgetally_aggregator_flight_refused_total{{reason=\"{reason}\"}}"))
    };
    assert_eq!((refused("unauthenticated"), refused("permission_denied")), (3.0, 6.0));

    // The query command sends its token.
    let query = |token: &str| {
        let ticket = json!({"dataset": "rollups", "group_by": ["affiliate_id"]}).to_string();
        loadtest(&["query", "--flight", flight, "--flight-token", token, "--ticket", &ticket])
    };
    let (status, output) = query(AFFILIATE_8_TOKEN);
    assert!(status.success(), "{output}");
    let affiliate_ids: Vec<&str> =
        output.lines().filter_map(|line| line.strip_prefix("| ")?.split_whitespace().next()).collect();
    assert_eq!(affiliate_ids, ["affiliate_id", "8"], "{output}");
    let (status, _) = query("it-wrong-token-0123456789abcdefghijklm");
    assert!(!status.success());
}
