//! The ground-truth ledger: what the collectors said they accepted, per
//! affiliate and campaign, with money per currency.
//!
//! The ledger follows the collectors' answers, not the generator's intent: a
//! pixel counts when its outcome header says `accepted`, a posted item when
//! its result line does. `verify` then checks that the aggregator counted
//! exactly that, so a loss or a double count anywhere between shows up as a
//! difference.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Counts of one `(affiliate_id, campaign_id)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Counts {
    pub(crate) impressions: u64,
    pub(crate) clicks: u64,
    pub(crate) leads: u64,
    pub(crate) sales: u64,
}

// === impl Counts ===

impl Counts {
    pub(crate) fn add(&mut self, other: &Counts) {
        self.impressions += other.impressions;
        self.clicks += other.clicks;
        self.leads += other.leads;
        self.sales += other.sales;
    }

    pub(crate) fn total(&self) -> u64 {
        self.impressions + self.clicks + self.leads + self.sales
    }
}

/// An event kind as the ledger counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Impression,
    Click,
    Lead,
    Sale,
}

// === impl Kind ===

impl Kind {
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            Kind::Impression => "impression",
            Kind::Click => "click",
            Kind::Lead => "lead",
            Kind::Sale => "sale",
        }
    }
}

/// One event the generator sent, to be counted if it is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Truth {
    pub(crate) kind: Kind,
    pub(crate) affiliate_id: u32,
    pub(crate) campaign_id: u32,
    /// Currency code and amount in minor units.
    pub(crate) money: Option<(&'static str, i64)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Ledger {
    /// Unix ms of the first request sent; the aggregator is read from the
    /// start of this minute.
    pub(crate) first_sent_ms: i64,
    /// Unix ms of the last answer received; read up to the end of its minute.
    pub(crate) last_answer_ms: i64,
    /// Keyed `"<affiliate_id>/<campaign_id>"` so the file stays readable JSON.
    pub(crate) counts: BTreeMap<String, Counts>,
    /// Keyed `"<affiliate_id>/<campaign_id>/<currency>"`, minor units.
    pub(crate) money: BTreeMap<String, i64>,
}

pub(crate) fn counts_key(affiliate_id: u32, campaign_id: u32) -> String {
    format!("{affiliate_id}/{campaign_id}")
}

pub(crate) fn money_key(affiliate_id: u32, campaign_id: u32, currency: &str) -> String {
    format!("{affiliate_id}/{campaign_id}/{currency}")
}

// === impl Ledger ===

impl Ledger {
    pub(crate) fn accept(&mut self, truth: &Truth) {
        let counts = self.counts.entry(counts_key(truth.affiliate_id, truth.campaign_id)).or_default();
        match truth.kind {
            Kind::Impression => counts.impressions += 1,
            Kind::Click => counts.clicks += 1,
            Kind::Lead => counts.leads += 1,
            Kind::Sale => counts.sales += 1,
        }
        if let Some((currency, minor_units)) = truth.money {
            *self.money.entry(money_key(truth.affiliate_id, truth.campaign_id, currency)).or_default() += minor_units;
        }
    }

    pub(crate) fn merge(&mut self, other: Ledger) {
        for (key, counts) in other.counts {
            self.counts.entry(key).or_default().add(&counts);
        }
        for (key, minor_units) in other.money {
            *self.money.entry(key).or_default() += minor_units;
        }
        self.first_sent_ms = match (self.first_sent_ms, other.first_sent_ms) {
            (0, other) => other,
            (this, 0) => this,
            (this, other) => this.min(other),
        };
        self.last_answer_ms = self.last_answer_ms.max(other.last_answer_ms);
    }

    pub(crate) fn n_accepted(&self) -> u64 {
        self.counts.values().map(Counts::total).sum()
    }

    pub(crate) fn write(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text).with_context(|| format!("writing ledger {}", path.display()))
    }

    pub(crate) fn read(path: &Path) -> anyhow::Result<Ledger> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading ledger {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing ledger {}", path.display()))
    }

    /// Every difference between this ledger (expected) and `actual`, as
    /// human-readable lines; empty when they agree exactly.
    pub(crate) fn diff(&self, actual: &Ledger) -> Vec<String> {
        let mut lines = Vec::new();
        let keys: std::collections::BTreeSet<&String> = self.counts.keys().chain(actual.counts.keys()).collect();
        for key in keys {
            let expected = self.counts.get(key).copied().unwrap_or_default();
            let found = actual.counts.get(key).copied().unwrap_or_default();
            if expected != found {
                lines.push(format!(
                    "affiliate/campaign {key}: expected impressions {} clicks {} leads {} sales {}, aggregator has {} {} {} {}",
                    expected.impressions,
                    expected.clicks,
                    expected.leads,
                    expected.sales,
                    found.impressions,
                    found.clicks,
                    found.leads,
                    found.sales
                ));
            }
        }
        let keys: std::collections::BTreeSet<&String> = self.money.keys().chain(actual.money.keys()).collect();
        for key in keys {
            let expected = self.money.get(key).copied().unwrap_or_default();
            let found = actual.money.get(key).copied().unwrap_or_default();
            if expected != found {
                lines.push(format!("money {key}: expected {expected} minor units, aggregator has {found}"));
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests;
