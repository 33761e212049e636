//! The edge's fraud rules: which accepted events to count apart.
//!
//! Each rule is named by the [`Flag`] it sets, checked in [`Flag::ALL`]
//! order, and the first that fires flags the event (so one event is set
//! apart once). The rules run under the tally's lock, only for an event
//! the tally has room for and that is not a duplicate, so their counters
//! see each counted event exactly once.
//!
//! | flag | fires when | state |
//! |---|---|---|
//! | `bot_user_agent` | a pixel, click or conversion pixel came with a bot's user agent ([`edgetally_protocol::fraud::is_bot_user_agent`]) | none |
//! | `click_flood` | a visitor's clicks this UTC minute (all affiliates and campaigns) pass `click_flood_per_minute` | clicks per visitor hash, this minute only, bounded |
//! | `fast_conversion` | a conversion's time minus its click's is under the campaign's `click_to_conversion_min_secs` | none |
//! | `no_click_id` | a conversion carries no click ID (only posted events can) | none |
//! | `over_daily_cap` | the affiliate's conversions this UTC day at this edge pass its `daily_conversion_cap` | a count per capped affiliate |
//!
//! Repeated order IDs are not a flag: the dedup window already answers
//! them `duplicate`, counts them in `duplicates` and never pays them.
//!
//! The state is per process: a restart forgets this minute's clicks and
//! today's conversion counts, and with several edges each caps on its own
//! (an affiliate can reach `n_edges` times its cap). Both are documented
//! trade-offs of deciding at the edge, without a central look-up.

use std::collections::HashMap;
use std::sync::Mutex;

use edgetally_protocol::event::MINUTE_MS;
use edgetally_protocol::fraud::N_FLAGS;
use edgetally_protocol::{Campaigns, Click, Event, Flag};

/// The rules on unless configured otherwise, as `--fraud-rules` takes
/// them: all but `no_click_id` (see the flag's help).
pub const FRAUD_RULES_DEFAULT: &str = "bot_user_agent,click_flood,fast_conversion,over_daily_cap";

/// Default clicks one visitor may make in a UTC minute before the rest are
/// flagged: people click an ad or two a minute; a script clicks hundreds.
pub const CLICK_FLOOD_PER_MINUTE_DEFAULT: u32 = 10;

/// Most visitors whose clicks are counted in one minute. An entry costs
/// about 24 bytes in the map, so the bound is a few MiB; past it, a new
/// visitor's clicks are not counted (and `click_flood_untracked` says how
/// many were not).
pub(crate) const FLOOD_VISITORS_MAX: usize = 262_144;

const DAY_MS: i64 = 86_400_000;

/// The rules in force and their state.
pub(crate) struct Rules {
    enabled: [bool; N_FLAGS],
    click_flood_per_minute: u32,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The UTC minute `clicks` counts.
    minute_ms: i64,
    clicks: HashMap<u64, u32>,
    n_flood_untracked: u64,
    /// Per capped affiliate: the UTC day counted and its conversions.
    conversions: HashMap<u32, (i64, u64)>,
}

/// What the rules know of one event besides the event itself.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Signals<'a> {
    /// The request came to a browser endpoint with a bot's user agent.
    pub(crate) bot_user_agent: bool,
    /// The visitor hash of a browser click.
    pub(crate) visitor: Option<u64>,
    /// The verified click a conversion names.
    pub(crate) click: Option<&'a Click>,
}

/// The rules' state, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RulesState {
    pub(crate) flood_visitors: usize,
    pub(crate) n_flood_untracked: u64,
}

// === impl Rules ===

impl Rules {
    /// The rules named in `enabled`; `click_flood_per_minute` 0 turns the
    /// click flood rule off too.
    pub(crate) fn new(enabled: &[Flag], click_flood_per_minute: u32) -> Rules {
        let mut on = [false; N_FLAGS];
        for flag in enabled {
            on[flag.index()] = true;
        }
        on[Flag::ClickFlood.index()] &= click_flood_per_minute > 0;
        Rules { enabled: on, click_flood_per_minute, state: Mutex::new(State::default()) }
    }

    /// The first rule that flags `event`, counting it in the rules that
    /// keep counts; `now_ms` is the receive time. `campaigns` is only read
    /// for conversions (a pixel need not fetch it).
    pub(crate) fn flag(
        &self,
        event: &Event,
        signals: Signals<'_>,
        campaigns: Option<&Campaigns>,
        now_ms: i64,
    ) -> Option<Flag> {
        let on = |flag: Flag| self.is_on(flag);
        if on(Flag::BotUserAgent) && signals.bot_user_agent {
            return Some(Flag::BotUserAgent);
        }
        if on(Flag::ClickFlood)
            && event.kind == edgetally_protocol::EventKind::Click
            && let Some(visitor) = signals.visitor
            && self.lock().click_is_flood(visitor, now_ms, self.click_flood_per_minute)
        {
            return Some(Flag::ClickFlood);
        }
        if !event.kind.is_conversion() {
            return None;
        }
        if on(Flag::FastConversion)
            && let Some(click) = signals.click
            && let Some(campaign) = campaigns.and_then(|campaigns| campaigns.campaign(click.campaign_id))
            && event.time_ms.saturating_sub(click.time_ms) < campaign.click_to_conversion_min_ms
        {
            return Some(Flag::FastConversion);
        }
        if on(Flag::NoClickId) && event.click_id.is_none() {
            return Some(Flag::NoClickId);
        }
        if on(Flag::OverDailyCap)
            && let Some(cap) = campaigns
                .and_then(|campaigns| campaigns.affiliate(event.affiliate_id))
                .and_then(|affiliate| affiliate.daily_conversion_cap)
            && self.lock().conversion_is_over_cap(event.affiliate_id, cap, now_ms)
        {
            return Some(Flag::OverDailyCap);
        }
        None
    }

    /// Whether the rule that sets `flag` is in force.
    pub(crate) fn is_on(&self, flag: Flag) -> bool {
        self.enabled[flag.index()]
    }

    pub(crate) fn state(&self) -> RulesState {
        let state = self.lock();
        RulesState { flood_visitors: state.clicks.len(), n_flood_untracked: state.n_flood_untracked }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Only map updates run under the lock, and they do not panic; a
        // poisoned state is still counts.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

// === impl State ===

impl State {
    fn click_is_flood(&mut self, visitor: u64, now_ms: i64, per_minute: u32) -> bool {
        let minute_ms = now_ms.div_euclid(MINUTE_MS) * MINUTE_MS;
        if minute_ms != self.minute_ms {
            self.minute_ms = minute_ms;
            self.clicks.clear();
        }
        let n_visitors = self.clicks.len();
        let n_clicks = match self.clicks.get_mut(&visitor) {
            Some(n_clicks) => n_clicks,
            None if n_visitors >= FLOOD_VISITORS_MAX => {
                self.n_flood_untracked += 1;
                return false;
            }
            None => self.clicks.entry(visitor).or_default(),
        };
        *n_clicks = n_clicks.saturating_add(1);
        *n_clicks > per_minute
    }

    /// Counts a conversion against `affiliate_id`'s cap of the day, unless
    /// the cap is reached: then it is over.
    fn conversion_is_over_cap(&mut self, affiliate_id: u32, cap: u64, now_ms: i64) -> bool {
        let day = now_ms.div_euclid(DAY_MS);
        let (counted_day, n_conversions) = self.conversions.entry(affiliate_id).or_insert((day, 0));
        if *counted_day != day {
            *counted_day = day;
            *n_conversions = 0;
        }
        if *n_conversions >= cap {
            return true;
        }
        *n_conversions += 1;
        false
    }
}

#[cfg(test)]
mod tests;
