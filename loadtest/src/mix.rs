//! The traffic mix: what each generated request is, drawn from seeded
//! distributions whose shares are all flags.
//!
//! Affiliates, campaigns and sub IDs are Zipf-distributed, as real affiliate
//! traffic is dominated by a few large partners. An affiliate promotes a
//! few campaigns and tags its traffic with a few sub IDs of its own (its
//! placements or traffic sources), drawn once from the campaigns' and
//! subs' popularity, so the keys an edge counts under are the few per
//! affiliate an affiliate network sees, not every combination. Each
//! request carries the
//! [`Truth`] of the events in it, so the ledger can count what the collector
//! says it accepted.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::Arc;

use bytes::Bytes;
use rand::Rng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Zipf};
use serde_json::json;

use crate::ledger::{Kind, Truth};

/// Currencies of generated conversions, with their minor-unit exponents.
const CURRENCIES: [(&str, u32); 5] = [("USD", 2), ("EUR", 2), ("GBP", 2), ("JPY", 0), ("BHD", 3)];

/// User agents of the bot-like share.
const BOT_AGENTS: [&str; 3] = ["Googlebot/2.1 (+http://www.google.com/bot.html)", "python-requests/2.31", "curl/8.5.0"];
const BROWSER_AGENT: &str =
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126 Safari/537.36";

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct MixArgs {
    /// Distinct affiliate ids (Zipf-distributed).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) affiliates: u32,
    /// Distinct campaign ids (Zipf-distributed).
    #[arg(long, default_value_t = 200)]
    pub(crate) campaigns: u32,
    /// Distinct sub1 values (Zipf-distributed); a third of events carry none.
    #[arg(long, default_value_t = 50)]
    pub(crate) subs: u32,
    /// Campaigns each affiliate promotes, drawn once per affiliate from the
    /// campaigns' Zipf distribution; its traffic is Zipf over them.
    #[arg(long, default_value_t = 5)]
    pub(crate) campaigns_per_affiliate: u32,
    /// Sub IDs each affiliate uses, drawn likewise from the subs'.
    #[arg(long, default_value_t = 10)]
    pub(crate) subs_per_affiliate: u32,
    /// Distinct visitors (client addresses, uniform): at the default a
    /// visitor clicks far less than the collectors' click flood limit.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) visitors: u32,
    /// Zipf exponent of the affiliate, campaign and sub distributions.
    #[arg(long, default_value_t = 1.1)]
    pub(crate) zipf_exponent: f64,
    /// Share of requests that are clicks: `GET /c/{campaign}`, whose
    /// redirect's click ID is kept for later conversions.
    #[arg(long, default_value_t = 0.10)]
    pub(crate) click_share: f64,
    /// Share of requests that are leads.
    #[arg(long, default_value_t = 0.01)]
    pub(crate) lead_share: f64,
    /// Share of requests that are sales, with amounts in several currencies.
    #[arg(long, default_value_t = 0.01)]
    pub(crate) sale_share: f64,
    /// Share of requests that repeat this connection's previous request
    /// exactly (duplicate pixels and retried postbacks).
    #[arg(long, default_value_t = 0.02)]
    pub(crate) duplicate_share: f64,
    /// Share of requests that are malformed, spread over every kind.
    #[arg(long, default_value_t = 0.01)]
    pub(crate) malformed_share: f64,
    /// Share of pixel requests sent with a bot-like user agent.
    #[arg(long, default_value_t = 0.01)]
    pub(crate) bot_share: f64,
    /// Share of leads and sales sent against a remembered click ID (as a
    /// `/pb` postback, or one in four as a `/cv.gif` pixel); the rest are
    /// posted as JSON events without one.
    #[arg(long, default_value_t = 0.8)]
    pub(crate) postback_share: f64,
    /// Events per `POST /v1/events` body (NDJSON when above 1).
    #[arg(long, default_value_t = 1)]
    pub(crate) events_per_post: usize,
    /// Only valid impression pixels, no duplicates: the mix for comparing
    /// raw request rates with other HTTP load tools.
    #[arg(long)]
    pub(crate) pixels_only: bool,
}

/// What kind of request a plan is, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Label {
    Pixel,
    BotPixel,
    Click,
    Postback,
    ConversionPixel,
    Events,
    Duplicate,
    BadPixel,
    BadClickId,
    BadJson,
    BadAmount,
    OversizeBody,
    UnknownRoute,
}

// === impl Label ===

impl Label {
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            Label::Pixel => "pixel",
            Label::BotPixel => "bot_pixel",
            Label::Click => "click",
            Label::Postback => "postback",
            Label::ConversionPixel => "conversion_pixel",
            Label::Events => "events",
            Label::Duplicate => "duplicate",
            Label::BadPixel => "malformed_pixel",
            Label::BadClickId => "malformed_click_id",
            Label::BadJson => "malformed_json",
            Label::BadAmount => "malformed_amount",
            Label::OversizeBody => "malformed_oversize",
            Label::UnknownRoute => "malformed_route",
        }
    }
}

/// One request to send, and the events in it.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) label: Label,
    pub(crate) is_post: bool,
    pub(crate) path_and_query: String,
    pub(crate) body: Bytes,
    pub(crate) user_agent: &'static str,
    /// The visitor's address, sent in `x-forwarded-for` as a load
    /// balancer would (a collector started with `--client-ip-header
    /// x-forwarded-for` tells visitors apart by it).
    pub(crate) visitor_ip: Ipv4Addr,
    /// For a pixel, its one event; for a post, one per item in order.
    pub(crate) truths: Vec<Truth>,
}

pub(crate) struct Mix {
    args: MixArgs,
    affiliates: Zipf<f64>,
    /// Which of an affiliate's campaigns, and of its subs, an event is for.
    own_campaign: Zipf<f64>,
    own_sub: Zipf<f64>,
    setup: Arc<Setup>,
    /// A per-connection prefix that keeps order ids unique across tasks.
    order_prefix: String,
    n_orders: u64,
    /// Click IDs this connection was given, with their affiliate and
    /// campaign, for conversions to be posted back against.
    clicks: VecDeque<(String, u32, u32)>,
}

/// Remembered click IDs per connection: enough for conversions to land on
/// clicks of many affiliates, at about 100 bytes each.
const CLICKS_REMEMBERED_MAX: usize = 1024;

/// What makes this run's order IDs its own: the process ID and start time.
/// A merchant never reuses an order ID, and the aggregator books one
/// conversion per order and campaign across edges and restarts, so two
/// runs (or the `stack` trickle and a `run`) must not share order IDs.
static RUN_ID: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since_epoch| since_epoch.as_millis());
    format!("r{started_ms:x}p{:x}", std::process::id())
});

/// Which campaigns and sub IDs each affiliate uses: drawn once per run,
/// before its clock starts, and shared by every connection.
pub(crate) struct Setup {
    /// Affiliate `a`'s campaigns at `(a - 1) * campaigns_per_affiliate..`.
    offers: Vec<u32>,
    /// Affiliate `a`'s sub IDs, likewise.
    placements: Vec<u32>,
}

// === impl Setup ===

impl Setup {
    pub(crate) fn new(args: &MixArgs) -> anyhow::Result<Arc<Setup>> {
        anyhow::ensure!(
            args.affiliates > 0
                && args.campaigns > 0
                && args.subs > 0
                && args.campaigns_per_affiliate > 0
                && args.subs_per_affiliate > 0,
            "counts must be positive"
        );
        let table_len =
            u64::from(args.affiliates) * (u64::from(args.campaigns_per_affiliate) + u64::from(args.subs_per_affiliate));
        anyhow::ensure!(
            table_len <= 16_000_000,
            "--affiliates times (--campaigns-per-affiliate + --subs-per-affiliate) is {table_len}, limit 16,000,000"
        );
        let zipf =
            |n: u32| Zipf::new(f64::from(n), args.zipf_exponent).map_err(|error| anyhow::anyhow!("zipf: {error}"));
        // The same for every run: who promotes what is the network's
        // set-up, not the traffic's.
        let mut setup = <StdRng as rand::SeedableRng>::seed_from_u64(0x0ff3_2500);
        let draws = |distribution: Zipf<f64>, per: u32, rng: &mut StdRng| -> Vec<u32> {
            (0..u64::from(args.affiliates) * u64::from(per)).map(|_| distribution.sample(rng) as u32).collect()
        };
        let offers = draws(zipf(args.campaigns)?, args.campaigns_per_affiliate, &mut setup);
        let placements = draws(zipf(args.subs)?, args.subs_per_affiliate, &mut setup);
        Ok(Arc::new(Setup { offers, placements }))
    }
}

// === impl Mix ===

impl Mix {
    /// A connection's mix over the run's `setup` (made from the same
    /// `args`).
    pub(crate) fn new(args: &MixArgs, task_idx: usize, setup: Arc<Setup>) -> anyhow::Result<Mix> {
        anyhow::ensure!(args.events_per_post > 0, "--events-per-post must be positive");
        let zipf =
            |n: u32| Zipf::new(f64::from(n), args.zipf_exponent).map_err(|error| anyhow::anyhow!("zipf: {error}"));
        Ok(Mix {
            args: args.clone(),
            affiliates: zipf(args.affiliates)?,
            own_campaign: zipf(args.campaigns_per_affiliate)?,
            own_sub: zipf(args.subs_per_affiliate)?,
            setup,
            order_prefix: format!("{}-t{task_idx}-", *RUN_ID),
            n_orders: 0,
            clicks: VecDeque::with_capacity(CLICKS_REMEMBERED_MAX),
        })
    }

    /// Draws the next request, from a visitor drawn uniformly from
    /// `visitors`; `previous` is this connection's last plan (a duplicate
    /// repeats it whole, visitor included).
    pub(crate) fn next(&mut self, rng: &mut StdRng, previous: Option<&Plan>) -> Plan {
        let mut plan = self.draw(rng, previous);
        if plan.label != Label::Duplicate {
            // 10.0.0.0/8 holds 2^24 visitors, more than `visitors` allows.
            let visitor_idx = rng.random_range(0..self.args.visitors.clamp(1, 1 << 24));
            plan.visitor_ip = Ipv4Addr::from(0x0a00_0000 | visitor_idx);
        }
        plan
    }

    fn draw(&mut self, rng: &mut StdRng, previous: Option<&Plan>) -> Plan {
        if self.args.pixels_only {
            return self.pixel(rng, BROWSER_AGENT, Label::Pixel);
        }
        let roll: f64 = rng.random();
        let args = &self.args;
        let mut threshold = args.duplicate_share;
        if roll < threshold
            && let Some(previous) = previous
        {
            return Plan { label: Label::Duplicate, ..previous.clone() };
        }
        threshold += args.malformed_share;
        if roll < threshold {
            return self.malformed(rng);
        }
        threshold += args.click_share;
        if roll < threshold {
            return self.click(rng);
        }
        for (share, kind) in [(args.lead_share, Kind::Lead), (args.sale_share, Kind::Sale)] {
            threshold += share;
            if roll < threshold {
                if rng.random::<f64>() < self.args.postback_share
                    && let Some(plan) = self.postback(rng, kind)
                {
                    return plan;
                }
                return self.events(rng, kind);
            }
        }
        if rng.random::<f64>() < self.args.bot_share {
            let agent = BOT_AGENTS[rng.random_range(0..BOT_AGENTS.len())];
            return self.pixel(rng, agent, Label::BotPixel);
        }
        self.pixel(rng, BROWSER_AGENT, Label::Pixel)
    }

    fn ids(&self, rng: &mut StdRng) -> (u32, u32, String) {
        let affiliate_id = self.affiliates.sample(rng) as u32;
        let own = |distribution: &Zipf<f64>, per: u32, table: &[u32], rng: &mut StdRng| {
            let j = distribution.sample(rng) as usize - 1;
            table[(affiliate_id as usize - 1) * per as usize + j]
        };
        let campaign_id = own(&self.own_campaign, self.args.campaigns_per_affiliate, &self.setup.offers, rng);
        let sub1 = if rng.random_range(0..3) == 0 {
            String::new()
        } else {
            format!("s{}", own(&self.own_sub, self.args.subs_per_affiliate, &self.setup.placements, rng))
        };
        (affiliate_id, campaign_id, sub1)
    }

    fn pixel(&mut self, rng: &mut StdRng, user_agent: &'static str, label: Label) -> Plan {
        let (affiliate_id, campaign_id, sub1) = self.ids(rng);
        let cache_buster: u32 = rng.random();
        Plan {
            label,
            is_post: false,
            path_and_query: format!("/p.gif?aff={affiliate_id}&cmp={campaign_id}&sub1={sub1}&cb={cache_buster}"),
            body: Bytes::new(),
            user_agent,
            visitor_ip: Ipv4Addr::LOCALHOST,
            truths: vec![Truth { kind: Kind::Impression, affiliate_id, campaign_id, money: None, order_id: None }],
        }
    }

    /// Keeps the click ID of an accepted click for later conversions.
    pub(crate) fn remember_click(&mut self, click_id: &str, affiliate_id: u32, campaign_id: u32) {
        if self.clicks.len() == CLICKS_REMEMBERED_MAX {
            self.clicks.pop_front();
        }
        self.clicks.push_back((click_id.to_owned(), affiliate_id, campaign_id));
    }

    fn click(&mut self, rng: &mut StdRng) -> Plan {
        let (affiliate_id, campaign_id, sub1) = self.ids(rng);
        Plan {
            label: Label::Click,
            is_post: false,
            path_and_query: format!("/c/{campaign_id}?aff={affiliate_id}&sub1={sub1}"),
            body: Bytes::new(),
            user_agent: BROWSER_AGENT,
            visitor_ip: Ipv4Addr::LOCALHOST,
            truths: vec![Truth { kind: Kind::Click, affiliate_id, campaign_id, money: None, order_id: None }],
        }
    }

    /// A conversion against a remembered click, some time after it.
    fn postback(&mut self, rng: &mut StdRng, kind: Kind) -> Option<Plan> {
        let click_idx = rng.random_range(0..self.clicks.len().max(1));
        let (click_id, affiliate_id, campaign_id) = self.clicks.get(click_idx)?.clone();
        self.n_orders += 1;
        let order_id = format!("{}{}", self.order_prefix, self.n_orders);
        let mut path_and_query = format!("/pb?click_id={click_id}&kind={}&order_id={order_id}", kind.as_str());
        let mut money = None;
        if kind == Kind::Sale {
            let (currency, minor_units, amount) = self.amount(rng);
            path_and_query.push_str(&format!("&amount={amount}&currency={currency}"));
            money = Some((currency, minor_units));
        }
        let label = if rng.random_range(0..4) == 0 {
            path_and_query.replace_range(..3, "/cv.gif");
            Label::ConversionPixel
        } else {
            Label::Postback
        };
        Some(Plan {
            label,
            is_post: false,
            path_and_query,
            body: Bytes::new(),
            user_agent: BROWSER_AGENT,
            visitor_ip: Ipv4Addr::LOCALHOST,
            truths: vec![Truth { kind, affiliate_id, campaign_id, money, order_id: Some(order_id) }],
        })
    }

    fn amount(&mut self, rng: &mut StdRng) -> (&'static str, i64, String) {
        let (currency, exponent) = CURRENCIES[rng.random_range(0..CURRENCIES.len())];
        let minor_units: i64 = rng.random_range(100..100_000);
        (currency, minor_units, format_amount(minor_units, exponent))
    }

    fn event(&mut self, rng: &mut StdRng, kind: Kind) -> (serde_json::Value, Truth) {
        let (affiliate_id, campaign_id, sub1) = self.ids(rng);
        let mut event = json!({"kind": kind.as_str(), "affiliate_id": affiliate_id, "campaign_id": campaign_id});
        if !sub1.is_empty() {
            event["sub1"] = json!(sub1);
        }
        let mut money = None;
        let mut order_id = None;
        if matches!(kind, Kind::Lead | Kind::Sale) {
            self.n_orders += 1;
            let id = format!("{}{}", self.order_prefix, self.n_orders);
            event["order_id"] = json!(id);
            order_id = Some(id);
        }
        if kind == Kind::Sale {
            let (currency, minor_units, amount) = self.amount(rng);
            event["amount"] = json!(amount);
            event["currency"] = json!(currency);
            money = Some((currency, minor_units));
        }
        (event, Truth { kind, affiliate_id, campaign_id, money, order_id })
    }

    fn events(&mut self, rng: &mut StdRng, kind: Kind) -> Plan {
        let mut lines = Vec::with_capacity(self.args.events_per_post);
        let mut truths = Vec::with_capacity(self.args.events_per_post);
        for _ in 0..self.args.events_per_post {
            let (event, truth) = self.event(rng, kind);
            lines.push(event.to_string());
            truths.push(truth);
        }
        Plan {
            label: Label::Events,
            is_post: true,
            path_and_query: "/v1/events".into(),
            body: Bytes::from(lines.join("\n")),
            user_agent: BROWSER_AGENT,
            visitor_ip: Ipv4Addr::LOCALHOST,
            truths,
        }
    }

    fn malformed(&mut self, rng: &mut StdRng) -> Plan {
        let post = |label: Label, body: String, truths: Vec<Truth>| Plan {
            label,
            is_post: true,
            path_and_query: "/v1/events".into(),
            body: Bytes::from(body),
            user_agent: BROWSER_AGENT,
            visitor_ip: Ipv4Addr::LOCALHOST,
            truths,
        };
        match rng.random_range(0..6) {
            0 => {
                let mut plan = self.pixel(rng, BROWSER_AGENT, Label::BadPixel);
                plan.path_and_query = plan.path_and_query.replacen("aff=", "aff=x", 1);
                plan
            }
            1 => post(Label::BadJson, r#"{"kind":"click","affiliate_id":"#.into(), Vec::new()),
            2 => {
                let (mut event, truth) = self.event(rng, Kind::Sale);
                event["amount"] = json!("12.3456");
                post(Label::BadAmount, event.to_string(), vec![truth])
            }
            3 => post(Label::OversizeBody, "x".repeat(2 * 1024 * 1024), Vec::new()),
            4 => {
                // Version 1, key 1, then zeros: well formed, but its
                // signature cannot verify.
                let forged = format!("AQEA{}", "A".repeat(edgetally_protocol::click_id::CLICK_ID_LEN - 4));
                let path_and_query = format!("/pb?click_id={forged}&amount=9.99&currency=USD");
                Plan {
                    label: Label::BadClickId,
                    is_post: false,
                    path_and_query,
                    body: Bytes::new(),
                    user_agent: BROWSER_AGENT,
                    visitor_ip: Ipv4Addr::LOCALHOST,
                    truths: Vec::new(),
                }
            }
            _ => Plan {
                label: Label::UnknownRoute,
                is_post: false,
                path_and_query: "/no/such/route".into(),
                body: Bytes::new(),
                user_agent: BROWSER_AGENT,
                visitor_ip: Ipv4Addr::LOCALHOST,
                truths: Vec::new(),
            },
        }
    }
}

/// Renders minor units as the decimal string the wire expects.
fn format_amount(minor_units: i64, exponent: u32) -> String {
    if exponent == 0 {
        return minor_units.to_string();
    }
    let scale = 10i64.pow(exponent);
    format!("{}.{:0width$}", minor_units / scale, minor_units % scale, width = exponent as usize)
}

#[cfg(test)]
mod tests;
