//! The campaign snapshot: what an edge needs to know about each campaign to
//! answer a click (landing URL) and attribute a conversion (attribution
//! window).
//!
//! The aggregator is the source of truth: it reads the snapshot from its
//! `--campaigns` file and sends it to every edge over the control stream;
//! an edge keeps the last one on disk and starts from it.
//!
//! ```json
//! {"campaigns": [{"id": 3, "landing_url": "https://shop.example/p?cid={click_id}&s={sub1}",
//!                 "attribution_window_secs": 2592000,
//!                 "payout": {"type": "cpa", "amount": "12.50", "currency": "USD"}}],
//!  "affiliates": [{"id": 7, "parent_id": 2,
//!                  "payouts": [{"campaign_id": 3, "payout": {"type": "revshare", "percent": "7.5"}}]},
//!                 {"id": 2, "override_percent": "5"}]}
//! ```
//!
//! Commission rules (applied by the aggregator; edges ignore them): a
//! campaign's `payout` is its default, either `cpa` (a fixed amount per
//! conversion, in its own currency) or `revshare` (a percentage of the
//! sale's amount, in the sale's currency). An affiliate's `payouts`
//! override it, per campaign or (without `campaign_id`) for every campaign;
//! a per-campaign override wins over an affiliate-wide one. An affiliate's
//! `override_percent` is what it earns on top of each commission of the
//! affiliates whose `parent_id` names it (one tier: a parent's parent earns
//! nothing from the grandchild).
//!
//! Fraud rules (applied by edges, see `fraud.rs`): a campaign's
//! `click_to_conversion_min_secs` flags a conversion that comes sooner than
//! that after its click (no human reads a landing page and checks out in
//! two seconds); an affiliate's `daily_conversion_cap` flags its
//! conversions past that many in one UTC day at one edge.
//!
//! A landing URL may use the macros `{click_id}`, `{affiliate_id}`,
//! `{campaign_id}` and `{sub1}`..`{sub5}`; an absent sub becomes empty.
//! Every substituted value is URL-safe by construction (digits, base64url,
//! or the sub ID charset), so nothing needs escaping.

use std::collections::HashMap;

use serde::Deserialize;

use crate::money::{Currency, Money, MoneyError, Percent, PercentError};

/// Longest landing URL: browsers and proxies handle 2 KiB everywhere.
pub const LANDING_URL_LEN_MAX: usize = 2048;
/// Longest attribution window: one year.
pub const ATTRIBUTION_WINDOW_SECS_MAX: u64 = 365 * 24 * 3600;
/// Default attribution window: 30 days, the industry's usual cookie life.
pub const ATTRIBUTION_WINDOW_SECS_DEFAULT: u64 = 30 * 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum CampaignsError {
    #[error("parsing campaigns: {0}")]
    Json(#[from] serde_json::Error),
    #[error("campaign {id}: {reason}")]
    Invalid { id: u32, reason: String },
    #[error("campaign {0} is listed twice")]
    Duplicate(u32),
    #[error("affiliate {id}: {reason}")]
    InvalidAffiliate { id: u32, reason: String },
    #[error("affiliate {0} is listed twice")]
    DuplicateAffiliate(u32),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotFile {
    campaigns: Vec<CampaignFile>,
    #[serde(default)]
    affiliates: Vec<AffiliateFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CampaignFile {
    id: u32,
    landing_url: String,
    #[serde(default = "default_window")]
    attribution_window_secs: u64,
    payout: Option<PayoutFile>,
    #[serde(default)]
    click_to_conversion_min_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum PayoutFile {
    Cpa { amount: String, currency: String },
    Revshare { percent: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct AffiliateFile {
    id: u32,
    parent_id: Option<u32>,
    override_percent: Option<String>,
    #[serde(default)]
    payouts: Vec<AffiliatePayoutFile>,
    daily_conversion_cap: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct AffiliatePayoutFile {
    campaign_id: Option<u32>,
    payout: PayoutFile,
}

/// How a conversion earns its affiliate a commission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payout {
    /// A fixed amount per conversion.
    Cpa(Money),
    /// A percentage of the sale's amount, in the sale's currency.
    RevShare(Percent),
}

/// An affiliate's commission settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Affiliate {
    pub id: u32,
    /// The affiliate that earns `override_percent` on this one's commissions.
    pub parent_id: Option<u32>,
    /// What this affiliate earns on top of each of its children's commissions.
    pub override_percent: Option<Percent>,
    /// Overrides of the campaign default: per campaign, and for all
    /// campaigns under `None`.
    pub payouts: HashMap<Option<u32>, Payout>,
    /// Conversions per UTC day past which an edge flags this affiliate's
    /// conversions `over_daily_cap`; `None` for no cap.
    pub daily_conversion_cap: Option<u64>,
}

fn default_window() -> u64 {
    ATTRIBUTION_WINDOW_SECS_DEFAULT
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Campaign {
    pub id: u32,
    pub landing_url: String,
    pub attribution_window_ms: i64,
    /// The default commission rule; none pays no commission.
    pub payout: Option<Payout>,
    /// A conversion sooner than this after its click is flagged
    /// `fast_conversion`; 0 turns the rule off for the campaign.
    pub click_to_conversion_min_ms: i64,
}

#[derive(Debug, Clone, Default)]
pub struct Campaigns {
    by_id: HashMap<u32, Campaign>,
    affiliates: HashMap<u32, Affiliate>,
}

// === impl Campaigns ===

impl Campaigns {
    pub fn parse(text: &str) -> Result<Campaigns, CampaignsError> {
        let file: SnapshotFile = serde_json::from_str(text)?;
        let mut by_id = HashMap::with_capacity(file.campaigns.len());
        for campaign in file.campaigns {
            let invalid = |reason: &str| CampaignsError::Invalid { id: campaign.id, reason: reason.to_owned() };
            if campaign.id == 0 {
                return Err(invalid("id 0 is reserved"));
            }
            let url = &campaign.landing_url;
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(invalid("landing_url must start with https:// or http://"));
            }
            if url.len() > LANDING_URL_LEN_MAX || url.bytes().any(|b| b.is_ascii_control() || b == b' ') {
                return Err(invalid("landing_url too long or has spaces or control characters"));
            }
            if !(1..=ATTRIBUTION_WINDOW_SECS_MAX).contains(&campaign.attribution_window_secs) {
                return Err(invalid("attribution_window_secs must be from 1 to 31536000"));
            }
            if campaign.click_to_conversion_min_secs > campaign.attribution_window_secs {
                return Err(invalid("click_to_conversion_min_secs must not exceed attribution_window_secs"));
            }
            let payout = campaign.payout.map(PayoutFile::parse).transpose().map_err(|reason| invalid(&reason))?;
            let entry = Campaign {
                id: campaign.id,
                landing_url: campaign.landing_url,
                attribution_window_ms: campaign.attribution_window_secs as i64 * 1000,
                payout,
                // At most the window, so at most a year in ms.
                click_to_conversion_min_ms: campaign.click_to_conversion_min_secs as i64 * 1000,
            };
            if by_id.insert(campaign.id, entry).is_some() {
                return Err(CampaignsError::Duplicate(campaign.id));
            }
        }
        let affiliates = parse_affiliates(file.affiliates, &by_id)?;
        Ok(Campaigns { by_id, affiliates })
    }

    pub fn campaign(&self, id: u32) -> Option<&Campaign> {
        self.by_id.get(&id)
    }

    /// Every affiliate with settings.
    pub fn affiliates(&self) -> impl Iterator<Item = &Affiliate> {
        self.affiliates.values()
    }

    /// The commission settings of affiliate `id`, if it has any.
    pub fn affiliate(&self, id: u32) -> Option<&Affiliate> {
        self.affiliates.get(&id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

fn parse_affiliates(
    listed: Vec<AffiliateFile>,
    campaigns: &HashMap<u32, Campaign>,
) -> Result<HashMap<u32, Affiliate>, CampaignsError> {
    let ids: std::collections::HashSet<u32> = listed.iter().map(|affiliate| affiliate.id).collect();
    let mut affiliates = HashMap::with_capacity(listed.len());
    for affiliate in listed {
        let id = affiliate.id;
        let invalid = |reason: String| CampaignsError::InvalidAffiliate { id, reason };
        if id == 0 {
            return Err(invalid("id 0 is reserved".into()));
        }
        if let Some(parent_id) = affiliate.parent_id {
            if parent_id == id {
                return Err(invalid("parent_id names the affiliate itself".into()));
            }
            if !ids.contains(&parent_id) {
                return Err(invalid(format!("parent_id {parent_id} is not a listed affiliate")));
            }
        }
        let override_percent = affiliate
            .override_percent
            .map(|text| Percent::parse(&text))
            .transpose()
            .map_err(|error| invalid(format!("override_percent: {error}")))?;
        let mut payouts = HashMap::with_capacity(affiliate.payouts.len());
        for entry in affiliate.payouts {
            if let Some(campaign_id) = entry.campaign_id
                && !campaigns.contains_key(&campaign_id)
            {
                return Err(invalid(format!("payout for campaign {campaign_id}, which is not listed")));
            }
            let payout = entry.payout.parse().map_err(&invalid)?;
            if payouts.insert(entry.campaign_id, payout).is_some() {
                let scope = match entry.campaign_id {
                    Some(campaign_id) => format!("campaign {campaign_id}"),
                    None => "all campaigns".to_owned(),
                };
                return Err(invalid(format!("two payouts for {scope}")));
            }
        }
        if affiliate.daily_conversion_cap == Some(0) {
            return Err(invalid("daily_conversion_cap must be at least 1 (leave it out for no cap)".into()));
        }
        let parsed = Affiliate {
            id,
            parent_id: affiliate.parent_id,
            override_percent,
            payouts,
            daily_conversion_cap: affiliate.daily_conversion_cap,
        };
        if affiliates.insert(id, parsed).is_some() {
            return Err(CampaignsError::DuplicateAffiliate(id));
        }
    }
    Ok(affiliates)
}

// === impl PayoutFile ===

impl PayoutFile {
    fn parse(self) -> Result<Payout, String> {
        match self {
            PayoutFile::Cpa { amount, currency } => {
                let money = Currency::parse(&currency)
                    .and_then(|currency| Money::parse(&amount, currency))
                    .map_err(|error: MoneyError| format!("cpa payout: {error}"))?;
                Ok(Payout::Cpa(money))
            }
            PayoutFile::Revshare { percent } => Percent::parse(&percent)
                .map(Payout::RevShare)
                .map_err(|error: PercentError| format!("revshare payout: {error}")),
        }
    }
}

// === impl Campaign ===

impl Campaign {
    /// The landing URL with its macros substituted.
    pub fn landing(&self, click_id: &str, affiliate_id: u32, subs: [&str; 5]) -> String {
        let mut out = String::with_capacity(self.landing_url.len() + click_id.len());
        let mut rest = self.landing_url.as_str();
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open..];
            let Some(close) = after.find('}') else {
                rest = after;
                break;
            };
            let name = &after[1..close];
            match name {
                "click_id" => out.push_str(click_id),
                "affiliate_id" => out.push_str(itoa::Buffer::new().format(affiliate_id)),
                "campaign_id" => out.push_str(itoa::Buffer::new().format(self.id)),
                "sub1" | "sub2" | "sub3" | "sub4" | "sub5" => {
                    let sub_idx = usize::from(name.as_bytes()[3] - b'1');
                    out.push_str(subs[sub_idx]);
                }
                // Not a macro: kept as written.
                _ => out.push_str(&after[..=close]),
            }
            rest = &after[close + 1..];
        }
        out.push_str(rest);
        out
    }
}

#[cfg(test)]
mod tests;
