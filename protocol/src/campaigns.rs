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
//!                 "attribution_window_secs": 2592000}]}
//! ```
//!
//! A landing URL may use the macros `{click_id}`, `{affiliate_id}`,
//! `{campaign_id}` and `{sub1}`..`{sub5}`; an absent sub becomes empty.
//! Every substituted value is URL-safe by construction (digits, base64url,
//! or the sub ID charset), so nothing needs escaping.

use std::collections::HashMap;

use serde::Deserialize;

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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotFile {
    campaigns: Vec<CampaignFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CampaignFile {
    id: u32,
    landing_url: String,
    #[serde(default = "default_window")]
    attribution_window_secs: u64,
}

fn default_window() -> u64 {
    ATTRIBUTION_WINDOW_SECS_DEFAULT
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Campaign {
    pub id: u32,
    pub landing_url: String,
    pub attribution_window_ms: i64,
}

#[derive(Debug, Clone, Default)]
pub struct Campaigns {
    by_id: HashMap<u32, Campaign>,
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
            let entry = Campaign {
                id: campaign.id,
                landing_url: campaign.landing_url,
                attribution_window_ms: campaign.attribution_window_secs as i64 * 1000,
            };
            if by_id.insert(campaign.id, entry).is_some() {
                return Err(CampaignsError::Duplicate(campaign.id));
            }
        }
        Ok(Campaigns { by_id })
    }

    pub fn campaign(&self, id: u32) -> Option<&Campaign> {
        self.by_id.get(&id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
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
