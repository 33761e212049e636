//! Clicks mint signed click IDs and redirect; postbacks and conversion
//! pixels are attributed by them, and every kind of bad click ID is refused
//! with its reason.

use std::time::{SystemTime, UNIX_EPOCH};

use edgetally_collector::click_keys;
use edgetally_protocol::{Click, ClickKey, ClickKeys};

use crate::support::{TestCollector, get, metric, post};

const CAMPAIGNS: &str = r#"{"campaigns": [
    {"id": 3, "landing_url": "https://shop.example/land?cid={click_id}&a={affiliate_id}&s1={sub1}&s2={sub2}", "attribution_window_secs": 3600},
    {"id": 4, "landing_url": "https://other.example/{campaign_id}/{click_id}"}
]}"#;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

pub(crate) fn start(keys: Option<&str>) -> TestCollector {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("campaigns.json"), CAMPAIGNS).unwrap();
    let keys_path = dir.path().join("click-keys.json");
    if let Some(keys) = keys {
        std::fs::write(&keys_path, keys).unwrap();
    }
    let campaigns = dir.path().join("campaigns.json");
    TestCollector::start_in(
        dir,
        &["--campaigns", campaigns.to_str().unwrap(), "--click-keys", keys_path.to_str().unwrap(), "--edge-id", "5"],
    )
}

fn keys_of(collector: &TestCollector) -> ClickKeys {
    click_keys::load_or_create(&collector.dir.path().join("click-keys.json")).unwrap()
}

/// Clicks and returns the click ID from the landing URL.
pub(crate) async fn click(base: &str, campaign: &str, query: &str) -> String {
    let answer = get(&format!("{base}/c/{campaign}?{query}")).await;
    assert_eq!(answer.status, 302, "{:?}", answer.body);
    let location = answer.headers["location"].to_str().unwrap().to_owned();
    let click_id = location.split(['=', '/', '&']).find(|part| part.len() == 48).expect("click id in location");
    click_id.to_owned()
}

#[tokio::test]
async fn click_redirects_with_macros_and_a_verifiable_id() {
    let collector = start(None);
    let base = &collector.base_url;
    let answer = get(&format!("{base}/c/3?aff=7&sub1=fb&sub2=x&sub3=y")).await;
    assert_eq!(answer.status, 302);
    assert_eq!(answer.headers["cache-control"], "no-store");
    let location = answer.headers["location"].to_str().unwrap();
    let click_id = &location["https://shop.example/land?cid=".len()..][..48];
    assert_eq!(location, format!("https://shop.example/land?cid={click_id}&a=7&s1=fb&s2=x"));
    let decoded = Click::verify(click_id, &keys_of(&collector)).unwrap();
    assert_eq!((decoded.edge_id, decoded.affiliate_id, decoded.campaign_id, decoded.key_id), (5, 7, 3, 1));
    assert!((now_ms() - decoded.time_ms).abs() < 60_000);

    let other = click(base, "4", "aff=8").await;
    let answer = get(&format!("{base}/c/4?aff=8")).await;
    assert!(answer.headers["location"].to_str().unwrap().starts_with("https://other.example/4/"));
    assert_ne!(other, answer.headers["location"].to_str().unwrap()["https://other.example/4/".len()..]);

    for (target, status, reason) in [
        ("/c/99?aff=7", 404, "unknown_campaign"),
        ("/c/abc?aff=7", 404, "unknown_campaign"),
        ("/c/3", 400, "missing_field"),
        ("/c/3?aff=0", 400, "bad_id"),
        ("/c/3?aff=7&sub1=no%20spaces", 400, "bad_charset"),
    ] {
        let answer = get(&format!("{base}{target}")).await;
        assert_eq!((answer.status, answer.json()["reason"].as_str().unwrap()), (status, reason), "{target}");
    }
    let text = String::from_utf8(get(&format!("{base}/metrics")).await.body.to_vec()).unwrap();
    assert_eq!(metric(&text, r#"edgetally_collector_events_accepted_total{kind="click"}"#), 3, "{text}");
    assert_eq!(
        metric(&text, r#"edgetally_collector_events_rejected_total{source="click",reason="unknown_campaign"}"#),
        2
    );
}

#[tokio::test]
async fn conversions_are_attributed_by_click_id_or_refused_with_reason() {
    let collector = start(None);
    let base = &collector.base_url;
    let keys = keys_of(&collector);
    let click_id = click(base, "3", "aff=7&sub1=fb").await;

    let answer = get(&format!("{base}/pb?click_id={click_id}&amount=12.34&currency=USD&order_id=o-1")).await;
    assert_eq!((answer.status, answer.json()["status"].as_str()), (200, Some("accepted")), "{:?}", answer.body);
    let answer = get(&format!("{base}/pb?click_id={click_id}&kind=lead")).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let answer = get(&format!("{base}/cv.gif?click_id={click_id}&amount=1500&currency=JPY")).await;
    assert_eq!((answer.status, answer.headers["x-edgetally-outcome"].to_str().unwrap()), (200, "accepted"));
    assert_eq!(answer.headers["content-type"], "image/gif");

    let mut forged = click_id.clone().into_bytes();
    forged[30] = if forged[30] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let stranger = ClickKeys::new(9, vec![(9, ClickKey([9; 32]))]).unwrap();
    let click_at = |time_ms: i64, campaign_id: u32| Click {
        key_id: 0,
        edge_id: 2,
        time_ms,
        affiliate_id: 7,
        campaign_id,
        nonce: 1,
    };
    let unknown_key = click_at(now_ms(), 3).mint(&stranger).unwrap();
    let expired = click_at(now_ms() - 2 * 3600 * 1000, 3).mint(&keys).unwrap();
    let future = click_at(now_ms() + 3600 * 1000, 3).mint(&keys).unwrap();
    let unknown_campaign = click_at(now_ms(), 77).mint(&keys).unwrap();
    let cases = [
        (format!("click_id={forged}&amount=1&currency=USD"), "click_id_forged"),
        (format!("click_id={}&amount=1&currency=USD", &click_id[..40]), "click_id_truncated"),
        (format!("click_id={}*&amount=1&currency=USD", &click_id[..47]), "click_id_malformed"),
        (format!("click_id={unknown_key}&amount=1&currency=USD"), "click_id_unknown_key"),
        (format!("click_id={expired}&amount=1&currency=USD"), "click_id_expired"),
        (format!("click_id={future}&amount=1&currency=USD"), "click_id_future"),
        (format!("click_id={unknown_campaign}&amount=1&currency=USD"), "unknown_campaign"),
        ("amount=1&currency=USD".to_owned(), "missing_field"),
        (format!("click_id={click_id}&amount=1.001&currency=USD"), "bad_amount"),
        (format!("click_id={click_id}&amount=1&currency=XXX"), "bad_currency"),
        (format!("click_id={click_id}&kind=sale"), "missing_field"),
        (format!("click_id={click_id}&aff=8&amount=1&currency=USD"), "click_id_mismatch"),
    ];
    for (query, reason) in &cases {
        let answer = get(&format!("{base}/pb?{query}")).await;
        assert_eq!((answer.status, answer.json()["reason"].as_str().unwrap()), (400, *reason), "{query}");
        let answer = get(&format!("{base}/cv.gif?{query}")).await;
        assert_eq!((answer.status, answer.headers["x-edgetally-outcome"].to_str().unwrap()), (200, *reason), "{query}");
    }

    // Posted conversions may carry a click ID too: it fills the affiliate
    // and campaign, and must agree with any given.
    let body = format!(
        "{}\n{}",
        serde_json::json!({"kind": "sale", "click_id": click_id, "amount": "5.00", "currency": "EUR", "order_id": "o-json"}),
        serde_json::json!({"kind": "sale", "click_id": click_id, "affiliate_id": 8, "amount": "5.00", "currency": "EUR"}),
    );
    let answer = post(&format!("{base}/v1/events"), body).await;
    let reasons: Vec<_> = answer.json()["results"].as_array().unwrap().iter().map(|r| r["reason"].clone()).collect();
    assert_eq!(reasons, [serde_json::Value::Null, "click_id_mismatch".into()], "{:?}", answer.json());

    let text = String::from_utf8(get(&format!("{base}/metrics")).await.body.to_vec()).unwrap();
    assert_eq!(metric(&text, r#"edgetally_collector_events_accepted_total{kind="sale"}"#), 3, "{text}");
    assert_eq!(metric(&text, r#"edgetally_collector_events_accepted_total{kind="lead"}"#), 1, "{text}");
    for (_, reason) in &cases {
        let series = |source: &str| {
            format!(r#"edgetally_collector_events_rejected_total{{source="{source}",reason="{reason}"}}"#)
        };
        let n_expected = cases.iter().filter(|(_, other)| other == reason).count() as u64;
        assert_eq!(metric(&text, &series("postback")), n_expected, "{reason}: {text}");
        assert_eq!(metric(&text, &series("conversion_pixel")), n_expected, "{reason}: {text}");
    }
}

fn keys_file(current: u8, ids: &[u8]) -> String {
    use base64::Engine;
    let keys: serde_json::Map<String, serde_json::Value> = ids
        .iter()
        .map(|id| (id.to_string(), base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([*id; 32]).into()))
        .collect();
    serde_json::json!({"current": current, "keys": keys}).to_string()
}

#[tokio::test]
async fn key_rotation_by_key_id() {
    let postback = |base: &str, click_id: &str| format!("{base}/pb?click_id={click_id}&amount=1&currency=USD");
    let before = start(Some(&keys_file(1, &[1])));
    let old_click = click(&before.base_url, "3", "aff=7").await;
    drop(before);

    // Key 2 is added and made current: new clicks use it, old ones verify.
    let during = start(Some(&keys_file(2, &[1, 2])));
    let new_click = click(&during.base_url, "3", "aff=7").await;
    assert_eq!(Click::verify(&new_click, &keys_of(&during)).unwrap().key_id, 2);
    assert_eq!(get(&postback(&during.base_url, &old_click)).await.status, 200);
    assert_eq!(get(&postback(&during.base_url, &new_click)).await.status, 200);
    drop(during);

    // Key 1 is retired: its clicks no longer verify.
    let after = start(Some(&keys_file(2, &[2])));
    let answer = get(&postback(&after.base_url, &old_click)).await;
    assert_eq!((answer.status, answer.json()["reason"].as_str()), (400, Some("click_id_unknown_key")));
    assert_eq!(get(&postback(&after.base_url, &new_click)).await.status, 200);
}
