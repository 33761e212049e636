//! Snapshot parsing and landing URL macros.

use super::*;

fn check_error(text: &str, fragment: &str) {
    let error = Campaigns::parse(text).unwrap_err().to_string();
    assert!(error.contains(fragment), "{text}: {error}");
}

#[test]
fn parses_and_validates() {
    let campaigns = Campaigns::parse(
        r#"{"campaigns":[{"id":3,"landing_url":"https://shop.example/p?cid={click_id}","attribution_window_secs":60},
                         {"id":4,"landing_url":"http://x.example/"}]}"#,
    )
    .unwrap();
    assert_eq!(campaigns.len(), 2);
    assert_eq!(campaigns.campaign(3).unwrap().attribution_window_ms, 60_000);
    assert_eq!(campaigns.campaign(4).unwrap().attribution_window_ms, 30 * 24 * 3600 * 1000);
    assert!(campaigns.campaign(5).is_none());

    check_error(r#"{"campaigns":[{"id":0,"landing_url":"https://a"}]}"#, "id 0 is reserved");
    check_error(r#"{"campaigns":[{"id":1,"landing_url":"ftp://a"}]}"#, "must start with https://");
    check_error(r#"{"campaigns":[{"id":1,"landing_url":"https://a b"}]}"#, "spaces");
    check_error(r#"{"campaigns":[{"id":1,"landing_url":"https://a","attribution_window_secs":0}]}"#, "from 1");
    check_error(r#"{"campaigns":[{"id":1,"landing_url":"https://a"},{"id":1,"landing_url":"https://b"}]}"#, "twice");
    check_error(r#"{"campaigns":[{"id":1,"landing_url":"https://a","window":5}]}"#, "unknown field `window`");
}

#[test]
fn landing_macros() {
    let campaign = Campaign {
        id: 42,
        landing_url:
            "https://shop.example/l?c={click_id}&a={affiliate_id}&k={campaign_id}&s1={sub1}&s5={sub5}&x={other}&y={"
                .into(),
        attribution_window_ms: 1,
    };
    assert_eq!(
        campaign.landing("CLICK", 7, ["fb", "", "", "", "z"]),
        "https://shop.example/l?c=CLICK&a=7&k=42&s1=fb&s5=z&x={other}&y={"
    );
    let plain = Campaign { id: 1, landing_url: "https://a.example/".into(), attribution_window_ms: 1 };
    assert_eq!(plain.landing("C", 1, [""; 5]), "https://a.example/");
}
