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
fn parses_fraud_settings() {
    let campaigns = Campaigns::parse(
        r#"{"campaigns":[{"id":3,"landing_url":"https://a.example/","click_to_conversion_min_secs":5},
                         {"id":4,"landing_url":"https://b.example/"}],
            "affiliates":[{"id":7,"daily_conversion_cap":100},{"id":8}]}"#,
    )
    .unwrap();
    assert_eq!(campaigns.campaign(3).unwrap().click_to_conversion_min_ms, 5_000);
    assert_eq!(campaigns.campaign(4).unwrap().click_to_conversion_min_ms, 0);
    assert_eq!(campaigns.affiliate(7).unwrap().daily_conversion_cap, Some(100));
    assert_eq!(campaigns.affiliate(8).unwrap().daily_conversion_cap, None);
    check_error(
        r#"{"campaigns":[{"id":1,"landing_url":"https://a","attribution_window_secs":60,"click_to_conversion_min_secs":61}]}"#,
        "must not exceed attribution_window_secs",
    );
    check_error(
        r#"{"campaigns":[{"id":1,"landing_url":"https://a"}],"affiliates":[{"id":7,"daily_conversion_cap":0}]}"#,
        "daily_conversion_cap must be at least 1",
    );
}

#[test]
fn landing_macros() {
    let campaign = Campaign {
        id: 42,
        landing_url:
            "https://shop.example/l?c={click_id}&a={affiliate_id}&k={campaign_id}&s1={sub1}&s5={sub5}&x={other}&y={"
                .into(),
        attribution_window_ms: 1,
        payout: None,
        click_to_conversion_min_ms: 0,
    };
    assert_eq!(
        campaign.landing("CLICK", 7, ["fb", "", "", "", "z"]),
        "https://shop.example/l?c=CLICK&a=7&k=42&s1=fb&s5=z&x={other}&y={"
    );
    let plain = Campaign {
        id: 1,
        landing_url: "https://a.example/".into(),
        attribution_window_ms: 1,
        payout: None,
        click_to_conversion_min_ms: 0,
    };
    assert_eq!(plain.landing("C", 1, [""; 5]), "https://a.example/");
}

#[test]
fn parses_commission_rules() {
    let campaigns = Campaigns::parse(
        r#"{"campaigns":[{"id":3,"landing_url":"https://a.example/","payout":{"type":"cpa","amount":"12.50","currency":"USD"}},
                         {"id":4,"landing_url":"https://b.example/","payout":{"type":"revshare","percent":"7.5"}},
                         {"id":5,"landing_url":"https://c.example/"}],
            "affiliates":[{"id":7,"parent_id":2,"payouts":[{"campaign_id":3,"payout":{"type":"cpa","amount":"1500","currency":"JPY"}},
                                                            {"payout":{"type":"revshare","percent":"10"}}]},
                          {"id":2,"override_percent":"5"}]}"#,
    )
    .unwrap();
    let usd = Currency::parse("USD").unwrap();
    let jpy = Currency::parse("JPY").unwrap();
    assert_eq!(campaigns.campaign(3).unwrap().payout, Some(Payout::Cpa(Money { minor_units: 1250, currency: usd })));
    assert_eq!(campaigns.campaign(4).unwrap().payout, Some(Payout::RevShare(Percent::parse("7.5").unwrap())));
    assert_eq!(campaigns.campaign(5).unwrap().payout, None);
    let affiliate = campaigns.affiliate(7).unwrap();
    assert_eq!(affiliate.parent_id, Some(2));
    assert_eq!(affiliate.payouts[&Some(3)], Payout::Cpa(Money { minor_units: 1500, currency: jpy }));
    assert_eq!(affiliate.payouts[&None], Payout::RevShare(Percent::parse("10").unwrap()));
    assert_eq!(campaigns.affiliate(2).unwrap().override_percent, Percent::parse("5").ok());
    assert!(campaigns.affiliate(8).is_none());
}

#[test]
fn refuses_bad_commission_rules() {
    let campaign = r#"{"id":3,"landing_url":"https://a.example/"}"#;
    let with = |affiliates: &str| format!(r#"{{"campaigns":[{campaign}],"affiliates":[{affiliates}]}}"#);
    check_error(
        r#"{"campaigns":[{"id":3,"landing_url":"https://a","payout":{"type":"cpa","amount":"1.234","currency":"USD"}}]}"#,
        "cpa payout: too many decimals",
    );
    check_error(
        r#"{"campaigns":[{"id":3,"landing_url":"https://a","payout":{"type":"cpa","amount":"1","currency":"XXX"}}]}"#,
        "unknown currency",
    );
    check_error(
        r#"{"campaigns":[{"id":3,"landing_url":"https://a","payout":{"type":"revshare","percent":"101"}}]}"#,
        "above 100",
    );
    check_error(r#"{"campaigns":[{"id":3,"landing_url":"https://a","payout":{"type":"cpc"}}]}"#, "unknown variant");
    check_error(&with(r#"{"id":7,"parent_id":7}"#), "names the affiliate itself");
    check_error(&with(r#"{"id":7,"parent_id":9}"#), "parent_id 9 is not a listed affiliate");
    check_error(&with(r#"{"id":7},{"id":7}"#), "affiliate 7 is listed twice");
    check_error(&with(r#"{"id":0}"#), "id 0 is reserved");
    check_error(&with(r#"{"id":7,"override_percent":"x"}"#), "override_percent: malformed");
    check_error(
        &with(r#"{"id":7,"payouts":[{"campaign_id":4,"payout":{"type":"revshare","percent":"1"}}]}"#),
        "campaign 4, which is not listed",
    );
    check_error(
        &with(
            r#"{"id":7,"payouts":[{"payout":{"type":"revshare","percent":"1"}},{"payout":{"type":"revshare","percent":"2"}}]}"#,
        ),
        "two payouts for all campaigns",
    );
    check_error(&with(r#"{"id":7,"tier":2}"#), "unknown field `tier`");
}
