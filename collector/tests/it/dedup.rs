//! Repeats are answered `duplicate` and counted apart, across endpoints:
//! event IDs, order IDs per campaign, and click ID plus kind.

use crate::clicks::{click, start};
use crate::support::{get, metric, post};

#[tokio::test]
async fn repeats_are_answered_duplicate_on_every_endpoint() {
    let collector = start(None);
    let base = &collector.base_url;

    // Event IDs, on pixels and posted items alike.
    let pixel = |eid: &str| get_outcome(format!("{base}/p.gif?aff=1&cmp=3&eid={eid}"));
    assert_eq!(pixel("px-1").await, "accepted");
    assert_eq!(pixel("px-1").await, "duplicate");
    assert_eq!(pixel("px-2").await, "accepted");
    let body = [
        r#"{"kind":"impression","affiliate_id":1,"campaign_id":3,"event_id":"ev-1"}"#,
        r#"{"kind":"impression","affiliate_id":1,"campaign_id":3,"event_id":"ev-1"}"#,
        r#"{"kind":"impression","affiliate_id":1,"campaign_id":3,"event_id":"px-1"}"#,
        r#"{"kind":"click","affiliate_id":1,"campaign_id":3}"#,
        r#"{"kind":"click","affiliate_id":1,"campaign_id":3}"#,
    ]
    .join("\n");
    let answer = post(&format!("{base}/v1/events"), body).await.json();
    let statuses: Vec<&str> =
        answer["results"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["accepted", "duplicate", "duplicate", "accepted", "accepted"]);
    assert_eq!((answer["accepted"].as_u64(), answer["duplicates"].as_u64()), (Some(3), Some(2)));

    // Order IDs within a campaign, whichever endpoint carries them.
    let click_id = click(base, "3", "aff=7").await;
    let postback = |query: String| {
        let url = format!("{base}/pb?click_id={click_id}&{query}");
        async move {
            let answer = get(&url).await;
            assert_eq!(answer.status, 200, "{url}");
            assert_eq!(answer.headers["x-edgetally-outcome"], answer.json()["status"].as_str().unwrap());
            answer.json()["status"].as_str().unwrap().to_owned()
        }
    };
    assert_eq!(postback("amount=10&currency=USD&order_id=o-1".into()).await, "accepted");
    assert_eq!(postback("amount=10&currency=USD&order_id=o-1".into()).await, "duplicate");
    assert_eq!(postback("amount=99&currency=EUR&order_id=o-1".into()).await, "duplicate");
    assert_eq!(postback("amount=10&currency=USD&order_id=o-2".into()).await, "accepted");
    let posted =
        r#"{"kind":"sale","affiliate_id":7,"campaign_id":3,"amount":"1.00","currency":"USD","order_id":"o-2"}"#;
    assert_eq!(post(&format!("{base}/v1/events"), posted).await.json()["results"][0]["status"], "duplicate");
    // The same order ID in another campaign is another order.
    let other = r#"{"kind":"sale","affiliate_id":7,"campaign_id":4,"amount":"1.00","currency":"USD","order_id":"o-2"}"#;
    assert_eq!(post(&format!("{base}/v1/events"), other).await.json()["results"][0]["status"], "accepted");

    // Without an order ID: one conversion of each kind per click.
    let fresh_click = click(base, "3", "aff=7").await;
    let bare =
        |kind: &str| get_outcome(format!("{base}/cv.gif?click_id={fresh_click}&kind={kind}&amount=5&currency=GBP"));
    assert_eq!(bare("sale").await, "accepted");
    assert_eq!(bare("sale").await, "duplicate");
    assert_eq!(bare("lead").await, "accepted");

    let text = String::from_utf8(get(&format!("{base}/metrics")).await.body.to_vec()).unwrap();
    let duplicates =
        |source: &str| metric(&text, &format!(r#"edgetally_collector_events_duplicate_total{{source="{source}"}}"#));
    assert_eq!(
        [duplicates("pixel"), duplicates("events"), duplicates("postback"), duplicates("conversion_pixel")],
        [1, 3, 2, 1],
        "{text}"
    );
    // Keyed checks: 3 pixels, 3 posted event IDs, 4 postbacks, 2 posted
    // orders and 3 conversion pixels; clicks without an event ID have none.
    assert_eq!(metric(&text, "edgetally_collector_dedup_checks_total"), 15, "{text}");
    assert!(metric(&text, "edgetally_collector_dedup_memory_bytes") > 0, "{text}");
    // px-1, px-2, ev-1, o-1 and o-2 in campaign 3, o-2 in campaign 4, and
    // the fresh click's sale and lead.
    assert_eq!(metric(&text, "edgetally_collector_dedup_keys"), 8, "{text}");
}

async fn get_outcome(url: String) -> String {
    let answer = get(&url).await;
    answer.headers["x-edgetally-outcome"].to_str().unwrap().to_owned()
}
