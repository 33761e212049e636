//! Fraud flags: why an edge counted an accepted event apart from clean ones.
//!
//! A flagged event is not refused: it is counted, shipped and kept, but in
//! its rollup's `flagged_<rule>` counter instead of `impressions`, `clicks`,
//! `leads` or `sales`, and a flagged conversion carries its flag so the
//! aggregator books it `held` (out of the payable money) until someone
//! reviews it. One event carries at most one flag: the first rule that
//! fires, in [`Flag::ALL`] order.
//!
//! The rules themselves need state (a visitor's clicks this minute, an
//! affiliate's conversions today) and live at the edge; what is here is
//! their names and the one stateless rule, the known-bot user agents.

use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

/// Why an event was flagged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Flag {
    /// A browser endpoint (pixel, click, conversion pixel) was called with
    /// the user agent of a known bot, crawler or HTTP library.
    BotUserAgent,
    /// A visitor clicked more often in one minute than the edge allows.
    ClickFlood,
    /// A conversion came sooner after its click than its campaign's
    /// minimum click-to-conversion time.
    FastConversion,
    /// A conversion without a click ID, so nothing ties it to a click.
    NoClickId,
    /// A conversion past its affiliate's daily conversion cap.
    OverDailyCap,
}

/// How many flags there are.
pub const N_FLAGS: usize = 5;

// === impl Flag ===

impl Flag {
    /// Every flag, in the order the rules are checked and the counters are
    /// laid out.
    pub const ALL: [Flag; N_FLAGS] =
        [Flag::BotUserAgent, Flag::ClickFlood, Flag::FastConversion, Flag::NoClickId, Flag::OverDailyCap];

    /// The rollup counter of each flag, in [`Flag::ALL`] order.
    pub const COLUMNS: [&'static str; N_FLAGS] = [
        "flagged_bot_user_agent",
        "flagged_click_flood",
        "flagged_fast_conversion",
        "flagged_no_click_id",
        "flagged_over_daily_cap",
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Flag::BotUserAgent => "bot_user_agent",
            Flag::ClickFlood => "click_flood",
            Flag::FastConversion => "fast_conversion",
            Flag::NoClickId => "no_click_id",
            Flag::OverDailyCap => "over_daily_cap",
        }
    }

    pub fn parse(text: &str) -> Option<Flag> {
        Flag::ALL.into_iter().find(|flag| flag.as_str() == text)
    }

    /// The flag's place in [`Flag::ALL`] and [`Flag::COLUMNS`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Substrings of user agents that announce a bot, a crawler, a headless
/// browser or an HTTP library, matched without regard to case. Real
/// browsers' user agents contain none of them. The list follows what
/// common bot filters match on; it is meant for traffic that says what it
/// is, not for bots that pretend to be browsers.
pub const BOT_USER_AGENT_MARKERS: &[&str] = &[
    "bot",
    "crawl",
    "spider",
    "slurp",
    "headless",
    "phantomjs",
    "python-requests",
    "python-urllib",
    "aiohttp",
    "httpx",
    "curl/",
    "wget/",
    "go-http-client",
    "java/",
    "okhttp",
    "libwww-perl",
    "apache-httpclient",
    "node-fetch",
    "axios/",
    "scrapy",
    "facebookexternalhit",
];

/// Most bytes of a user agent lowercased on the stack before the scan.
/// Browsers' user agents are 100 to 300 bytes; a longer one is scanned as
/// it is, ignoring case, which is slower but finds the same markers.
const USER_AGENT_LOWERED_MAX: usize = 512;

// The lowercased scan finds a marker only if the marker is lowercase.
const _: () = {
    let mut marker_idx = 0;
    while marker_idx < BOT_USER_AGENT_MARKERS.len() {
        let marker = BOT_USER_AGENT_MARKERS[marker_idx].as_bytes();
        let mut byte_idx = 0;
        while byte_idx < marker.len() {
            assert!(!marker[byte_idx].is_ascii_uppercase(), "bot markers are lowercase");
            byte_idx += 1;
        }
        marker_idx += 1;
    }
};

/// One automaton over every marker: a user agent is scanned once, whatever
/// the length of the list. It matches lowercase bytes exactly, which lets
/// it skip ahead with a vectorized prefilter; [`is_bot_user_agent`]
/// lowercases the user agent first.
static BOT_MARKERS: LazyLock<AhoCorasick> = LazyLock::new(|| {
    AhoCorasickBuilder::new()
        .match_kind(MatchKind::LeftmostFirst)
        .build(BOT_USER_AGENT_MARKERS)
        // The markers are a fixed list of short ASCII strings, well within
        // the automaton's limits.
        .expect("bot markers build an automaton")
});

/// The same markers, ignoring ASCII case, for user agents too long to
/// lowercase on the stack.
static BOT_MARKERS_ANY_CASE: LazyLock<AhoCorasick> = LazyLock::new(|| {
    AhoCorasickBuilder::new()
        .ascii_case_insensitive(true)
        .match_kind(MatchKind::LeftmostFirst)
        .build(BOT_USER_AGENT_MARKERS)
        // As above: a fixed list of short ASCII strings.
        .expect("bot markers build an automaton")
});

/// Whether `user_agent` names a bot, crawler or HTTP library. A missing
/// (empty) user agent names nothing, so this rule says nothing of it.
pub fn is_bot_user_agent(user_agent: &[u8]) -> bool {
    if user_agent.len() > USER_AGENT_LOWERED_MAX {
        return BOT_MARKERS_ANY_CASE.is_match(user_agent);
    }
    let mut lowered = [0u8; USER_AGENT_LOWERED_MAX];
    let lowered = &mut lowered[..user_agent.len()];
    lowered.copy_from_slice(user_agent);
    lowered.make_ascii_lowercase();
    BOT_MARKERS.is_match(&*lowered)
}

#[cfg(test)]
mod tests;
