//! Malformed requests get a clear answer and the collector keeps serving.

use edgetally_collector::PIXEL_GIF;

use crate::support::{TestCollector, get, metric, post, raw_http};

#[tokio::test]
async fn bad_requests_are_answered_and_counted() {
    let collector = TestCollector::start(&["--body-bytes-max", "1024"]);
    let base = &collector.base_url;

    let answer = post(&format!("{base}/v1/events"), r#"{"affiliate_id": 1, "campaign_id": "#).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["reason"], "bad_body");
    assert!(answer.json()["error"].as_str().unwrap().starts_with("invalid json"), "{:?}", answer.json());

    let oversize = format!(r#"{{"affiliate_id":1,"campaign_id":1,"sub1":"{}"}}"#, "x".repeat(1024));
    let answer = post(&format!("{base}/v1/events"), oversize.clone()).await;
    assert_eq!(answer.status, 413);
    assert_eq!(answer.json()["error"], "body too large: limit is 1024 bytes");

    // Without a Content-Length the limit is enforced while reading.
    let head = "POST /v1/events HTTP/1.1\r\nhost: edge\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    let chunked = format!("{head}{:x}\r\n{oversize}\r\n0\r\n\r\n", oversize.len());
    let answer = raw_http(base, chunked.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    let answer = get(&format!("{base}/no/such/route")).await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.json()["error"], "unknown route: /no/such/route");

    let answer = get(&format!("{base}/v1/events")).await;
    assert_eq!(answer.status, 405);

    let pixels = [
        ("aff=x&cmp=1", "bad_id"),
        ("aff=7&cmp=1&sub1=bad%20sub", "bad_charset"),
        ("aff=7&cmp=1&sub1=bad%20sub", "bad_charset"),
        ("cmp=1", "missing_field"),
        ("aff=1&cmp=2", "accepted"),
    ];
    for (query, outcome) in pixels {
        let answer = get(&format!("{base}/p.gif?{query}")).await;
        assert_eq!(answer.status, 200, "{query}");
        assert_eq!(answer.headers["x-edgetally-outcome"], outcome, "{query}");
        assert_eq!(&answer.body[..], &PIXEL_GIF[..], "{query}");
        assert_eq!(answer.headers["cache-control"], "no-store");
        assert_eq!(answer.headers["content-type"], "image/gif");
    }

    let metrics = get(&format!("{base}/metrics")).await;
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8(metrics.body.to_vec()).unwrap();
    let pixel = |reason: &str| {
        metric(&text, &format!(r#"edgetally_collector_events_rejected_total{{source="pixel",reason="{reason}"}}"#))
    };
    assert_eq!(pixel("bad_id"), 1, "{text}");
    assert_eq!(pixel("bad_charset"), 2, "{text}");
    assert_eq!(pixel("missing_field"), 1, "{text}");
    assert_eq!(metric(&text, r#"edgetally_collector_events_accepted_total{kind="impression"}"#), 1, "{text}");
    let refused =
        |reason: &str| metric(&text, &format!(r#"edgetally_collector_requests_refused_total{{reason="{reason}"}}"#));
    assert_eq!(refused("bad_body"), 1, "{text}");
    assert_eq!(refused("body_too_large"), 2, "{text}");
    assert_eq!(refused("not_found"), 1, "{text}");
    assert_eq!(refused("method_not_allowed"), 1, "{text}");

    // Still serving, and still accepting good events.
    assert_eq!(get(&format!("{base}/healthz")).await.status, 200);
    let answer = post(&format!("{base}/v1/events"), r#"{"kind":"click","affiliate_id":3,"campaign_id":4}"#).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["accepted"], 1);
}

#[tokio::test]
async fn events_answer_per_item() {
    let collector = TestCollector::start(&[]);
    let body = [
        r#"{"kind":"impression","affiliate_id":1,"campaign_id":2,"sub1":"a"}"#,
        r#"{"kind":"sale","affiliate_id":1,"campaign_id":2,"amount":"12.345","currency":"USD"}"#,
        r#"{"kind":"sale","affiliate_id":1,"campaign_id":2,"amount":"12.34","currency":"USD","order_id":"o-1"}"#,
        r#"{"kind":"teleport","affiliate_id":1,"campaign_id":2}"#,
        r#"not json"#,
    ]
    .join("\n");
    let answer = post(&format!("{}/v1/events", collector.base_url), body).await;
    assert_eq!(answer.status, 200);
    let json = answer.json();
    assert_eq!(json["accepted"], 2);
    assert_eq!(json["rejected"], 3);
    let statuses: Vec<String> = json["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|result| format!("{} {}", result["status"].as_str().unwrap(), result["reason"].as_str().unwrap_or("-")))
        .collect();
    assert_eq!(
        statuses,
        ["accepted -", "rejected bad_amount", "accepted -", "rejected unknown_kind", "rejected invalid_json"]
    );
    assert_eq!(json["results"][1]["error"], "bad amount: too many decimals: USD has 2, amount has 3");
}

#[tokio::test]
async fn pixels_carry_json_events_in_d() {
    use base64::Engine;
    let collector = TestCollector::start(&[]);
    let base = &collector.base_url;
    let encode = |json: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
    let cases = [
        (encode(r#"{"kind":"click","affiliate_id":7,"campaign_id":3,"sub1":"nav"}"#), "accepted"),
        (encode(r#"{"affiliate_id":7,"campaign_id":3,"event_id":"e-9"}"#), "accepted"),
        (encode(r#"{"affiliate_id":7,"campaign_id":3,"event_id":"e-9"}"#), "duplicate"),
        (encode(r#"{"affiliate_id":0,"campaign_id":3}"#), "bad_id"),
        (encode("{not json"), "invalid_json"),
        (encode("[1,2]"), "not_an_object"),
        ("%%%".to_owned(), "bad_payload"),
    ];
    for (payload, outcome) in &cases {
        let answer = get(&format!("{base}/p.gif?d={payload}&cb=1")).await;
        assert_eq!(answer.status, 200);
        assert_eq!(&answer.body[..], &PIXEL_GIF[..]);
        assert_eq!(answer.headers["x-edgetally-outcome"], *outcome, "{payload}");
    }
    let text = String::from_utf8(get(&format!("{base}/metrics")).await.body.to_vec()).unwrap();
    assert_eq!(metric(&text, r#"edgetally_collector_events_accepted_total{kind="click"}"#), 1, "{text}");
    assert_eq!(metric(&text, r#"edgetally_collector_events_accepted_total{kind="impression"}"#), 1, "{text}");
    for reason in ["bad_id", "invalid_json", "not_an_object", "bad_payload"] {
        let series = format!(r#"edgetally_collector_events_rejected_total{{source="pixel",reason="{reason}"}}"#);
        assert_eq!(metric(&text, &series), 1, "{reason}: {text}");
    }
}
