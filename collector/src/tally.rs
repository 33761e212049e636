//! Pre-aggregation: counters per `(minute, affiliate_id, campaign_id, sub1)`
//! and conversion rows, held in memory until the uplink seals them.
//!
//! Memory is bounded by two limits. When either is reached, new keys and new
//! conversions are refused (the HTTP layer answers `503` or counts the pixel
//! as shed), while events for keys already held keep counting: a full tally
//! never drops what it has accepted.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Mutex;

use edgetally_protocol::{ConversionRow, Event, EventKind, QuarantineRow, RollupCounts, RollupKey};

#[derive(Debug, Clone, Copy)]
pub struct TallyLimits {
    /// Most distinct rollup keys held unsealed. A key with its counters is
    /// about 100 bytes, so the default bounds rollups to about 100 MiB, which
    /// only a long aggregator outage with very many keys reaches.
    pub rollup_keys_max: usize,
    /// Most conversion rows held unsealed, about 200 bytes each: 40 MiB.
    pub conversions_max: usize,
    /// Most rows of each kind put into one sealed batch, which keeps a frame
    /// well under the aggregator's frame size limit.
    pub batch_rows_max: usize,
    /// Most quarantine rows held unsealed, at most about 1.3 KiB each:
    /// 13 MiB. Past it, rejected input is counted but not kept.
    pub quarantine_max: usize,
}

impl Default for TallyLimits {
    fn default() -> TallyLimits {
        TallyLimits {
            rollup_keys_max: 1_000_000,
            conversions_max: 200_000,
            batch_rows_max: 100_000,
            quarantine_max: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TallyError {
    #[error("rollup keys full: limit is {0}")]
    KeysFull(usize),
    #[error("conversion rows full: limit is {0}")]
    ConversionsFull(usize),
}

/// What [`Tally::record_unless`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Counted,
    Duplicate,
}

#[derive(Default)]
struct Unsealed {
    rollups: HashMap<RollupKey, RollupCounts>,
    conversions: Vec<ConversionRow>,
    quarantine: Vec<QuarantineRow>,
}

/// What one seal takes out of the tally.
#[derive(Debug, Default)]
pub struct Sealed {
    pub rollups: Vec<(RollupKey, RollupCounts)>,
    pub conversions: Vec<ConversionRow>,
    pub quarantine: Vec<QuarantineRow>,
}

pub struct Tally {
    limits: TallyLimits,
    unsealed: Mutex<Unsealed>,
}

// === impl Tally ===

impl Tally {
    pub fn new(limits: TallyLimits) -> Tally {
        Tally { limits, unsealed: Mutex::new(Unsealed::default()) }
    }

    /// Counts one validated event.
    pub fn record(&self, event: &Event) -> Result<(), TallyError> {
        self.record_unless(event, true, || false).map(|_| ())
    }

    /// Counts one validated event unless `is_duplicate` says it repeats
    /// one already counted, in which case only its rollup's `duplicates`
    /// grows. A click counted with `unique` also counts as a unique click. `is_duplicate` runs only once the tally is known to have room,
    /// under the tally's lock: a dedup window that records the key it is
    /// asked about then never holds the key of an event refused for room,
    /// so a client's retry of that event is not mistaken for a repeat.
    pub fn record_unless(
        &self,
        event: &Event,
        unique: bool,
        is_duplicate: impl FnOnce() -> bool,
    ) -> Result<Recorded, TallyError> {
        let key = RollupKey {
            minute_ms: event.minute_ms(),
            affiliate_id: event.affiliate_id,
            campaign_id: event.campaign_id,
            sub1: event.sub1().to_owned(),
        };
        let mut unsealed = self.lock();
        let Unsealed { rollups, conversions, .. } = &mut *unsealed;
        let is_conversion = event.kind.is_conversion();
        if is_conversion && conversions.len() >= self.limits.conversions_max {
            return Err(TallyError::ConversionsFull(self.limits.conversions_max));
        }
        // One hash lookup per event: the entry is found (or its slot chosen)
        // once, checked for room, and only then written.
        let n_keys = rollups.len();
        let entry = rollups.entry(key);
        if matches!(entry, Entry::Vacant(_)) && n_keys >= self.limits.rollup_keys_max {
            return Err(TallyError::KeysFull(self.limits.rollup_keys_max));
        }
        let duplicate = is_duplicate();
        let counts = entry.or_default();
        if duplicate {
            counts.duplicates = counts.duplicates.saturating_add(1);
            return Ok(Recorded::Duplicate);
        }
        counts.count(event.kind);
        if unique && event.kind == EventKind::Click {
            counts.unique_clicks = counts.unique_clicks.saturating_add(1);
        }
        if is_conversion {
            conversions.push(ConversionRow::from_event(event));
        }
        Ok(Recorded::Counted)
    }

    /// Takes up to `batch_rows_max` rows of each kind out of the tally.
    pub fn seal(&self) -> Sealed {
        let mut unsealed = self.lock();
        let n_take = unsealed.rollups.len().min(self.limits.batch_rows_max);
        let rollups = if n_take == unsealed.rollups.len() {
            std::mem::take(&mut unsealed.rollups).into_iter().collect()
        } else {
            let keys: Vec<RollupKey> = unsealed.rollups.keys().take(n_take).cloned().collect();
            keys.into_iter()
                .map(|key| {
                    // The keys were just read from this map under the same lock.
                    let counts = unsealed.rollups.remove(&key).expect("key present");
                    (key, counts)
                })
                .collect()
        };
        let n_take = unsealed.conversions.len().min(self.limits.batch_rows_max);
        let conversions = unsealed.conversions.drain(..n_take).collect();
        let n_take = unsealed.quarantine.len().min(self.limits.batch_rows_max);
        let quarantine = unsealed.quarantine.drain(..n_take).collect();
        Sealed { rollups, conversions, quarantine }
    }

    /// Keeps a rejected input for shipping; false when the quarantine is
    /// full and the row was dropped.
    pub fn quarantine(&self, row: QuarantineRow) -> bool {
        let mut unsealed = self.lock();
        if unsealed.quarantine.len() >= self.limits.quarantine_max {
            return false;
        }
        unsealed.quarantine.push(row);
        true
    }

    /// Held rollup keys, conversion rows and quarantine rows.
    pub fn len(&self) -> (usize, usize, usize) {
        let unsealed = self.lock();
        (unsealed.rollups.len(), unsealed.conversions.len(), unsealed.quarantine.len())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Unsealed> {
        // No code path panics while holding this lock, so it is never
        // poisoned; if it were, the counts would still be consistent because
        // every update is a single map or vector operation.
        self.unsealed.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Sealed {
    pub fn is_empty(&self) -> bool {
        self.rollups.is_empty() && self.conversions.is_empty() && self.quarantine.is_empty()
    }
}

#[cfg(test)]
mod tests;
