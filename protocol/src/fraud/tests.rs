//! Bot user agents and flag names, one case a line.

use super::*;

fn check(user_agent: &str, expect_bot: bool) {
    assert_eq!(is_bot_user_agent(user_agent.as_bytes()), expect_bot, "{user_agent:?}");
}

#[test]
fn bot_user_agents() {
    check("Googlebot/2.1 (+http://www.google.com/bot.html)", true);
    check("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", true);
    check("python-requests/2.31", true);
    check("curl/8.5.0", true);
    check("Wget/1.21.4", true);
    check("Go-http-client/1.1", true);
    check(
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0 Safari/537.36",
        true,
    );
    check("facebookexternalhit/1.1", true);
    check("", false);
    check(
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
        false,
    );
    check(
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
        false,
    );
    check("Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0", false);
}

/// Past the stack buffer the scan ignores case on the bytes as they are,
/// and finds what the lowercased scan finds.
#[test]
fn long_user_agents() {
    let browser = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) ";
    for len in [USER_AGENT_LOWERED_MAX - 1, USER_AGENT_LOWERED_MAX, USER_AGENT_LOWERED_MAX + 1, 4096] {
        let padded = |tail: &str| {
            let mut user_agent = browser.repeat(len / browser.len() + 1);
            user_agent.truncate(len - tail.len());
            user_agent + tail
        };
        check(&padded("Chrome/131"), false);
        check(&padded("GoogleBot"), true);
        check(&padded("HEADLESS"), true);
    }
}

proptest::proptest! {
    /// The lowercased scan and the case-ignoring scan agree on any bytes.
    #[test]
    fn both_scans_agree(user_agent in proptest::collection::vec(
        proptest::sample::select(b"bBoOtTcCrRaAwWlLhHeEdDsS/ -1xX\xc3\xa9".to_vec()), 0..64,
    )) {
        proptest::prop_assert_eq!(
            is_bot_user_agent(&user_agent),
            BOT_MARKERS_ANY_CASE.is_match(&user_agent[..]),
        );
    }
}

#[test]
fn flags_round_trip_their_names_in_counter_order() {
    for (flag_idx, flag) in Flag::ALL.into_iter().enumerate() {
        assert_eq!(flag.index(), flag_idx);
        assert_eq!(Flag::parse(flag.as_str()), Some(flag));
        assert_eq!(Flag::COLUMNS[flag_idx], format!("flagged_{}", flag.as_str()));
    }
    assert_eq!(Flag::parse("bot"), None);
}
