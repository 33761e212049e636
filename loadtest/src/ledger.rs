//! The ground-truth ledger: what the collectors said they accepted, per
//! affiliate and campaign, with money per currency.
//!
//! The ledger follows the collectors' answers, not the generator's intent: a
//! pixel counts when its outcome header says `accepted` (or `flagged`, in
//! the flagged count instead of its kind's), a posted item when its result
//! line does. `verify` then checks that the aggregator counted
//! exactly that, so a loss or a double count anywhere between shows up as a
//! difference.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Counts of one `(affiliate_id, campaign_id)`. `duplicates` are events a
/// collector answered as repeats: counted apart, never paid. `flagged` are
/// events a collector accepted but a fraud rule set apart, of any kind and
/// rule: in no other counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Counts {
    pub(crate) impressions: u64,
    pub(crate) clicks: u64,
    pub(crate) leads: u64,
    pub(crate) sales: u64,
    pub(crate) duplicates: u64,
    /// Absent from ledgers written before fraud flags: none then.
    #[serde(default)]
    pub(crate) flagged: u64,
}

// === impl Counts ===

impl Counts {
    pub(crate) fn add(&mut self, other: &Counts) {
        self.impressions += other.impressions;
        self.clicks += other.clicks;
        self.leads += other.leads;
        self.sales += other.sales;
        self.duplicates += other.duplicates;
        self.flagged += other.flagged;
    }

    /// Accepted events, flagged ones included.
    pub(crate) fn total(&self) -> u64 {
        self.impressions + self.clicks + self.leads + self.sales + self.flagged
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
    /// A lead's or sale's order id, by which the freshness tracker finds
    /// its row in the aggregator's follow stream; `None` for the rest.
    pub(crate) order_id: Option<String>,
}

/// Affiliate id and campaign id.
pub(crate) type Pair = (u32, u32);

/// The ledger in memory, keyed by numbers so booking an answer costs a hash
/// lookup and no allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Ledger {
    /// Unix ms of the first request sent; the aggregator is read from the
    /// start of this minute.
    pub(crate) first_sent_ms: i64,
    /// Unix ms of the last answer received; read up to the end of its minute.
    pub(crate) last_answer_ms: i64,
    pub(crate) counts: HashMap<Pair, Counts>,
    /// Minor units per pair and currency code.
    pub(crate) money: HashMap<(u32, u32, String), i64>,
}

/// The ledger as a file: readable JSON, with `"<affiliate>/<campaign>"` and
/// `"<affiliate>/<campaign>/<currency>"` keys.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LedgerFile {
    first_sent_ms: i64,
    last_answer_ms: i64,
    counts: BTreeMap<String, Counts>,
    money: BTreeMap<String, i64>,
}

// === impl Ledger ===

impl Ledger {
    /// Books an accepted event: in its kind's count, or with `flagged` in
    /// the flagged count. A flagged sale's money is booked all the same:
    /// the aggregator keeps its row (held, not paid).
    pub(crate) fn accept(&mut self, truth: &Truth, flagged: bool) {
        let counts = self.counts.entry((truth.affiliate_id, truth.campaign_id)).or_default();
        match truth.kind {
            _ if flagged => counts.flagged += 1,
            Kind::Impression => counts.impressions += 1,
            Kind::Click => counts.clicks += 1,
            Kind::Lead => counts.leads += 1,
            Kind::Sale => counts.sales += 1,
        }
        if let Some((currency, minor_units)) = truth.money {
            let key = (truth.affiliate_id, truth.campaign_id, currency.to_owned());
            *self.money.entry(key).or_default() += minor_units;
        }
    }

    /// Books an event the collector answered as a duplicate.
    pub(crate) fn duplicate(&mut self, truth: &Truth) {
        self.counts.entry((truth.affiliate_id, truth.campaign_id)).or_default().duplicates += 1;
    }

    pub(crate) fn merge(&mut self, other: Ledger) {
        for (pair, counts) in other.counts {
            self.counts.entry(pair).or_default().add(&counts);
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
        let counts = self
            .counts
            .iter()
            .map(|((affiliate_id, campaign_id), counts)| (format!("{affiliate_id}/{campaign_id}"), *counts));
        let money = self.money.iter().map(|((affiliate_id, campaign_id, currency), minor_units)| {
            (format!("{affiliate_id}/{campaign_id}/{currency}"), *minor_units)
        });
        let file = LedgerFile {
            first_sent_ms: self.first_sent_ms,
            last_answer_ms: self.last_answer_ms,
            counts: counts.collect(),
            money: money.collect(),
        };
        let text = serde_json::to_string_pretty(&file)?;
        std::fs::write(path, text).with_context(|| format!("writing ledger {}", path.display()))
    }

    pub(crate) fn read(path: &Path) -> anyhow::Result<Ledger> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading ledger {}", path.display()))?;
        let file: LedgerFile =
            serde_json::from_str(&text).with_context(|| format!("parsing ledger {}", path.display()))?;
        let mut ledger =
            Ledger { first_sent_ms: file.first_sent_ms, last_answer_ms: file.last_answer_ms, ..Ledger::default() };
        for (key, counts) in file.counts {
            let [affiliate_id, campaign_id] = split_key(&key)?;
            ledger.counts.insert((number(affiliate_id, &key)?, number(campaign_id, &key)?), counts);
        }
        for (key, minor_units) in file.money {
            let [affiliate_id, campaign_id, currency] = split_key(&key)?;
            let key_parts = (number(affiliate_id, &key)?, number(campaign_id, &key)?, currency.to_owned());
            ledger.money.insert(key_parts, minor_units);
        }
        Ok(ledger)
    }

    /// Every difference between this ledger (expected) and `actual`, as
    /// human-readable lines in key order; empty when they agree exactly.
    pub(crate) fn diff(&self, actual: &Ledger) -> Vec<String> {
        let mut lines = Vec::new();
        let pairs: BTreeSet<&Pair> = self.counts.keys().chain(actual.counts.keys()).collect();
        for pair in pairs {
            let expected = self.counts.get(pair).copied().unwrap_or_default();
            let found = actual.counts.get(pair).copied().unwrap_or_default();
            if expected != found {
                lines.push(format!(
                    "affiliate/campaign {}/{}: expected impressions {} clicks {} leads {} sales {} \
                     duplicates {} flagged {}, aggregator has {} {} {} {} {} {}",
                    pair.0,
                    pair.1,
                    expected.impressions,
                    expected.clicks,
                    expected.leads,
                    expected.sales,
                    expected.duplicates,
                    expected.flagged,
                    found.impressions,
                    found.clicks,
                    found.leads,
                    found.sales,
                    found.duplicates,
                    found.flagged
                ));
            }
        }
        let keys: BTreeSet<&(u32, u32, String)> = self.money.keys().chain(actual.money.keys()).collect();
        for key in keys {
            let expected = self.money.get(key).copied().unwrap_or_default();
            let found = actual.money.get(key).copied().unwrap_or_default();
            if expected != found {
                lines.push(format!(
                    "money {}/{}/{}: expected {expected} minor units, aggregator has {found}",
                    key.0, key.1, key.2
                ));
            }
        }
        lines
    }
}

fn split_key<const N: usize>(key: &str) -> anyhow::Result<[&str; N]> {
    let parts: Vec<&str> = key.split('/').collect();
    parts.try_into().map_err(|_| anyhow::anyhow!("bad ledger key {key:?}: expected {N} parts separated by /"))
}

fn number(part: &str, key: &str) -> anyhow::Result<u32> {
    part.parse().with_context(|| format!("bad ledger key {key:?}: {part:?} is not an id"))
}

#[cfg(test)]
mod tests;
