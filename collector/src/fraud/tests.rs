//! Each rule with traffic that should and should not trigger it.

use edgetally_protocol::{EventKind, SubId};

use super::*;

/// 2026-09-21 00:00:00 UTC: a minute and a day boundary.
const NOW_MS: i64 = 1_790_035_200_000;

fn campaigns() -> Campaigns {
    Campaigns::parse(
        r#"{"campaigns":[{"id":5,"landing_url":"https://a.example/","click_to_conversion_min_secs":10},
                         {"id":6,"landing_url":"https://b.example/"}],
            "affiliates":[{"id":7,"daily_conversion_cap":2}]}"#,
    )
    .unwrap()
}

fn event(kind: EventKind, affiliate_id: u32, campaign_id: u32, time_ms: i64, click_id: Option<&str>) -> Event {
    Event {
        kind,
        affiliate_id,
        campaign_id,
        subs: Default::default(),
        time_ms,
        money: None,
        order_id: None,
        click_id: click_id.map(|text| SubId::parse("click_id", text).unwrap()),
        event_id: None,
    }
}

fn click(campaign_id: u32, time_ms: i64) -> Click {
    Click { key_id: 1, edge_id: 1, time_ms, affiliate_id: 7, campaign_id, nonce: 0 }
}

fn all_rules(click_flood_per_minute: u32) -> Rules {
    Rules::new(&Flag::ALL, click_flood_per_minute)
}

#[test]
fn bot_user_agents_are_flagged_first() {
    let rules = all_rules(1);
    let campaigns = campaigns();
    let impression = event(EventKind::Impression, 7, 5, NOW_MS, None);
    let bot = Signals { bot_user_agent: true, ..Signals::default() };
    assert_eq!(rules.flag(&impression, bot, Some(&campaigns), NOW_MS), Some(Flag::BotUserAgent));
    assert_eq!(rules.flag(&impression, Signals::default(), Some(&campaigns), NOW_MS), None);
    // A bot's conversion without a click ID is flagged as a bot: one flag
    // an event, the first rule's.
    let lead = event(EventKind::Lead, 7, 5, NOW_MS, None);
    assert_eq!(rules.flag(&lead, bot, Some(&campaigns), NOW_MS), Some(Flag::BotUserAgent));
    let off = Rules::new(&[Flag::NoClickId], 1);
    assert_eq!(off.flag(&lead, bot, Some(&campaigns), NOW_MS), Some(Flag::NoClickId));
}

#[test]
fn clicks_past_the_flood_limit_in_one_minute_are_flagged() {
    let rules = all_rules(3);
    let campaigns = campaigns();
    let flag = |visitor: u64, campaign_id: u32, now_ms: i64| {
        let click = event(EventKind::Click, 7, campaign_id, now_ms, None);
        rules.flag(&click, Signals { visitor: Some(visitor), ..Signals::default() }, Some(&campaigns), now_ms)
    };
    // Three clicks a minute pass, on any campaigns; the fourth does not.
    assert_eq!(flag(1, 5, NOW_MS), None);
    assert_eq!(flag(1, 6, NOW_MS + 1), None);
    assert_eq!(flag(1, 5, NOW_MS + 59_999), None);
    assert_eq!(flag(1, 5, NOW_MS + 59_999), Some(Flag::ClickFlood));
    // Another visitor is counted on its own.
    assert_eq!(flag(2, 5, NOW_MS + 100), None);
    // The next minute starts again.
    assert_eq!(flag(1, 5, NOW_MS + 60_000), None);
    assert_eq!(rules.state().flood_visitors, 1);
    // Impressions and clicks without a visitor (posted by servers) are
    // never counted as a flood.
    let impression = event(EventKind::Impression, 7, 5, NOW_MS + 60_000, None);
    for _ in 0..5 {
        assert_eq!(
            rules.flag(
                &impression,
                Signals { visitor: Some(1), ..Signals::default() },
                Some(&campaigns),
                NOW_MS + 60_000
            ),
            None
        );
        let click = event(EventKind::Click, 7, 5, NOW_MS + 60_000, None);
        assert_eq!(rules.flag(&click, Signals::default(), Some(&campaigns), NOW_MS + 60_000), None);
    }
    // 0 turns the rule off.
    let off = all_rules(0);
    for _ in 0..5 {
        let click = event(EventKind::Click, 7, 5, NOW_MS, None);
        assert_eq!(
            off.flag(&click, Signals { visitor: Some(1), ..Signals::default() }, Some(&campaigns), NOW_MS),
            None
        );
    }
}

#[test]
fn the_flood_window_is_bounded() {
    let mut state = State::default();
    for visitor in 0..FLOOD_VISITORS_MAX as u64 {
        assert!(!state.click_is_flood(visitor, NOW_MS, 1));
    }
    assert!(!state.click_is_flood(u64::MAX, NOW_MS, 1));
    assert!(!state.click_is_flood(u64::MAX, NOW_MS, 1), "an untracked visitor is never flagged");
    assert_eq!((state.clicks.len(), state.n_flood_untracked), (FLOOD_VISITORS_MAX, 2));
    assert!(state.click_is_flood(0, NOW_MS, 1), "tracked visitors still are");
}

#[test]
fn conversions_sooner_than_the_campaign_minimum_are_flagged() {
    let rules = all_rules(10);
    let campaigns = campaigns();
    let check = |campaign_id: u32, seconds_after_click: i64, expect: Option<Flag>| {
        let click_time_ms = NOW_MS - 60_000;
        let click = click(campaign_id, click_time_ms);
        // Affiliate 9 has no cap.
        let sale = event(EventKind::Sale, 9, campaign_id, click_time_ms + seconds_after_click * 1000, Some("c"));
        let signals = Signals { click: Some(&click), ..Signals::default() };
        assert_eq!(rules.flag(&sale, signals, Some(&campaigns), NOW_MS), expect, "{campaign_id} {seconds_after_click}");
    };
    check(5, 0, Some(Flag::FastConversion));
    check(5, 9, Some(Flag::FastConversion));
    check(5, 10, None);
    check(5, 3600, None);
    // Campaign 6 sets no minimum.
    check(6, 0, None);
}

#[test]
fn conversions_without_a_click_id_are_flagged() {
    let rules = all_rules(10);
    let campaigns = campaigns();
    let lead = event(EventKind::Lead, 8, 6, NOW_MS, None);
    assert_eq!(rules.flag(&lead, Signals::default(), Some(&campaigns), NOW_MS), Some(Flag::NoClickId));
    let click = click(6, NOW_MS - 60_000);
    let attributed = event(EventKind::Lead, 8, 6, NOW_MS, Some("c"));
    let signals = Signals { click: Some(&click), ..Signals::default() };
    assert_eq!(rules.flag(&attributed, signals, Some(&campaigns), NOW_MS), None);
    // Only conversions need a click.
    let impression = event(EventKind::Impression, 8, 6, NOW_MS, None);
    assert_eq!(rules.flag(&impression, Signals::default(), Some(&campaigns), NOW_MS), None);
}

#[test]
fn conversions_past_the_daily_cap_are_flagged_until_the_next_utc_day() {
    let rules = all_rules(10);
    let campaigns = campaigns();
    let click = click(6, NOW_MS - 60_000);
    let signals = Signals { click: Some(&click), ..Signals::default() };
    let sale = |affiliate_id: u32, now_ms: i64| {
        rules.flag(&event(EventKind::Sale, affiliate_id, 6, now_ms, Some("c")), signals, Some(&campaigns), now_ms)
    };
    // Affiliate 7's cap is 2 a day.
    assert_eq!(sale(7, NOW_MS), None);
    assert_eq!(sale(7, NOW_MS + 1), None);
    assert_eq!(sale(7, NOW_MS + 2), Some(Flag::OverDailyCap));
    assert_eq!(sale(7, NOW_MS + DAY_MS - 1), Some(Flag::OverDailyCap));
    assert_eq!(sale(7, NOW_MS + DAY_MS), None);
    // Affiliate 8 has no cap.
    for offset_ms in 0..5 {
        assert_eq!(sale(8, NOW_MS + offset_ms), None);
    }
    // A conversion another rule flags does not use up the cap.
    let unattributed = event(EventKind::Sale, 7, 6, NOW_MS + DAY_MS, None);
    assert_eq!(rules.flag(&unattributed, Signals::default(), Some(&campaigns), NOW_MS + DAY_MS), Some(Flag::NoClickId));
    assert_eq!(sale(7, NOW_MS + DAY_MS + 1), None);
    assert_eq!(sale(7, NOW_MS + DAY_MS + 2), Some(Flag::OverDailyCap));
}
