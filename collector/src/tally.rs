//! Pre-aggregation: counters per `(minute, affiliate_id, campaign_id, sub1)`
//! and conversion rows, held in memory until the uplink seals them.
//!
//! With a [`Journal`], every change is also written to it under the same
//! lock, before the caller answers the request, and [`Tally::seal`] rotates
//! the journal so a sealed batch holds exactly the journal segments up to
//! [`Sealed::through`] (see `journal.rs`).
//!
//! Conversions are counted apart from traffic: a lead's or sale's counts
//! wait in their own map with its row, so [`Tally::seal_rows`] can ship
//! conversions (rows and counts together) every flush while the traffic
//! counters wait for the rollup interval.
//!
//! Memory is bounded by two limits. When either is reached, new keys and new
//! conversions are refused (the HTTP layer answers `503` or counts the pixel
//! as shed), while events for keys already held keep counting: a full tally
//! never drops what it has accepted.

use std::hash::BuildHasher;
use std::sync::Mutex;

use edgetally_protocol::{ConversionRow, Event, EventKind, Flag, QuarantineRow, RollupCounts, RollupKey};
use hashbrown::hash_table::Entry as TableEntry;
use hashbrown::{DefaultHashBuilder, Equivalent, HashMap, HashTable};

use crate::journal::{Entry as JournalEntry, EntryRef, Journal};
use crate::spool::Through;

#[derive(Debug, Clone, Copy)]
pub struct TallyLimits {
    /// Most distinct rollup keys held unsealed. A key with its counters is
    /// about 100 bytes, so the default bounds rollups to about 100 MiB, which
    /// only a long aggregator outage with very many keys reaches.
    pub rollup_keys_max: usize,
    /// Most conversion rows held unsealed, about 200 bytes each: 40 MiB.
    pub conversions_max: usize,
    /// Most rows of each kind put into one frame, which keeps a frame well
    /// under the aggregator's frame size limit; a larger seal is shipped as
    /// several frames.
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
    /// Counted apart, in the rollup's counter for this flag.
    Flagged(Flag),
    Duplicate,
}

/// Counts one accepted event into its rollup, the same live and on
/// journal replay.
fn count(counts: &mut RollupCounts, kind: EventKind, unique: bool, flag: Option<Flag>) {
    if let Some(flag) = flag {
        counts.count_flagged(flag);
        return;
    }
    counts.count(kind);
    if unique {
        counts.unique_clicks = counts.unique_clicks.saturating_add(1);
    }
}

#[derive(Default)]
struct Unsealed {
    /// Traffic counters: every count but a counted conversion's.
    rollups: Rollups,
    /// The counts of the conversions in `conversions` (leads, sales, or a
    /// flag's counter), at most one key per row.
    conversion_rollups: HashMap<RollupKey, RollupCounts>,
    conversions: Vec<ConversionRow>,
    quarantine: Vec<QuarantineRow>,
    journal: Option<Journal>,
    /// Changes counted but not journaled (the journal was full or failing).
    n_unjournaled: u64,
    /// Whether the last change was journaled.
    journal_failing: bool,
}

/// What one seal takes out of the tally.
#[derive(Debug, Default)]
pub struct Sealed {
    /// Traffic counters; empty in a rows-only seal.
    pub rollups: Vec<(RollupKey, RollupCounts)>,
    /// The counts of `conversions`.
    pub conversion_rollups: Vec<(RollupKey, RollupCounts)>,
    pub conversions: Vec<ConversionRow>,
    pub quarantine: Vec<QuarantineRow>,
    /// What of the journal this seal holds.
    pub through: Through,
}

pub struct Tally {
    limits: TallyLimits,
    unsealed: Mutex<Unsealed>,
}

/// The tally's journal figures, for metrics and readiness.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JournalState {
    pub bytes: u64,
    pub n_unjournaled: u64,
    /// The last change could not be journaled.
    pub failing: bool,
}

// === impl Tally ===

impl Tally {
    pub fn new(limits: TallyLimits) -> Tally {
        Tally { limits, unsealed: Mutex::new(Unsealed::default()) }
    }

    /// A tally journaling into `dir`, which holds no journal yet (for
    /// benchmarks and tests outside the crate).
    pub fn journaled(limits: TallyLimits, dir: &std::path::Path) -> Result<Tally, crate::JournalError> {
        let (journal, replay, _) = Journal::open(
            dir,
            crate::journal::SEGMENT_BYTES_DEFAULT,
            crate::journal::JOURNAL_BYTES_MAX_DEFAULT,
            Through::default(),
        )?;
        Ok(Tally::with_journal(limits, journal, replay))
    }

    /// A tally that journals every change, starting from the entries a
    /// previous run journaled and did not spool.
    pub(crate) fn with_journal(limits: TallyLimits, journal: Journal, replay: Vec<JournalEntry>) -> Tally {
        let tally = Tally::new(limits);
        {
            let mut unsealed = tally.lock();
            for entry in replay {
                unsealed.apply(entry);
            }
            unsealed.journal = Some(journal);
        }
        tally
    }

    /// Counts one validated event.
    pub fn record(&self, event: &Event) -> Result<(), TallyError> {
        self.record_unless(event, true, || None, || false).map(|_| ())
    }

    /// Counts one validated event unless `is_duplicate` says it repeats
    /// one already counted, in which case only its rollup's `duplicates`
    /// grows. A click counted with `unique` also counts as a unique click.
    /// An event `flag_of` flags is counted in its rollup's flagged counter
    /// instead of its kind's (and never as a unique click), and a flagged
    /// conversion's row carries the flag.
    ///
    /// `is_duplicate`, then `flag_of`, run only once the tally is known to
    /// have room, under the tally's lock: a dedup window or a rule's
    /// counter that records what it is asked about then never holds an
    /// event refused for room, so a client's retry of that event is not
    /// mistaken for a repeat, and a repeat is not counted by the rules.
    pub fn record_unless(
        &self,
        event: &Event,
        unique: bool,
        flag_of: impl FnOnce() -> Option<Flag>,
        is_duplicate: impl FnOnce() -> bool,
    ) -> Result<Recorded, TallyError> {
        let key = KeyRef {
            minute_ms: event.minute_ms(),
            affiliate_id: event.affiliate_id,
            campaign_id: event.campaign_id,
            sub1: event.sub1(),
        };
        let mut unsealed = self.lock();
        let Unsealed { rollups, conversion_rollups, conversions, journal, n_unjournaled, journal_failing, .. } =
            &mut *unsealed;
        let hash = rollups.hasher.hash_one(&key);
        let Rollups { hasher, shards, len: n_keys } = rollups;
        let is_conversion = event.kind.is_conversion();
        if is_conversion && conversions.len() >= self.limits.conversions_max {
            return Err(TallyError::ConversionsFull(self.limits.conversions_max));
        }
        // One hash lookup per event, by the borrowed key: the entry is found
        // (or its slot chosen) once, checked for room, and only then
        // written; a key is copied only when it is new.
        let entry =
            shards[shard_of(hash)].entry(hash, |(held, _)| key.equivalent(held), |(held, _)| hasher.hash_one(held));
        if matches!(entry, TableEntry::Vacant(_)) && *n_keys >= self.limits.rollup_keys_max {
            return Err(TallyError::KeysFull(self.limits.rollup_keys_max));
        }
        let duplicate = is_duplicate();
        let flag = if duplicate { None } else { flag_of() };
        let unique = unique && event.kind == EventKind::Click && flag.is_none();
        let conversion = is_conversion.then(|| ConversionRow { flag, ..ConversionRow::from_event(event) });
        let mut journaled = |key: &RollupKey| {
            if let Some(journal) = journal {
                let written = if duplicate {
                    journal.append(EntryRef::Duplicate { key })
                } else {
                    let conversion = conversion.as_ref();
                    journal.append(EntryRef::Count { key, kind: event.kind, unique, flag, conversion })
                };
                *n_unjournaled += u64::from(!written);
                *journal_failing = !written;
            }
        };
        // A counted conversion counts in its own map only, so no traffic
        // key is made for it; duplicates and traffic count in the traffic
        // map.
        match conversion.as_ref().filter(|_| !duplicate) {
            Some(_) => {
                // Conversions are few: one owned key serves the journal and
                // the conversion map.
                let key = RollupKey::from(&key);
                journaled(&key);
                count(conversion_rollups.entry(key).or_default(), event.kind, unique, flag);
                conversions.extend(conversion);
            }
            None => {
                let mut occupied = match entry {
                    TableEntry::Occupied(occupied) => occupied,
                    TableEntry::Vacant(vacant) => {
                        *n_keys += 1;
                        vacant.insert((RollupKey::from(&key), RollupCounts::default()))
                    }
                };
                let (held, counts) = occupied.get_mut();
                journaled(held);
                if duplicate {
                    counts.duplicates = counts.duplicates.saturating_add(1);
                    return Ok(Recorded::Duplicate);
                }
                count(counts, event.kind, unique, flag);
            }
        }
        Ok(match flag {
            None => Recorded::Counted,
            Some(flag) => Recorded::Flagged(flag),
        })
    }

    /// Takes everything out of the tally and rotates the journal, under one
    /// lock, so the seal holds exactly the journal segments it names. The
    /// lock is held only to swap the maps out (the traffic maps are replaced
    /// by ones sized like them, so the next minute's keys do not rehash them
    /// under the lock as they grow back); sorting happens after.
    pub fn seal(&self) -> Sealed {
        let (rollups, conversion_rollups, conversions, quarantine, journal_through) = {
            let mut unsealed = self.lock();
            (
                unsealed.rollups.take_sized(),
                std::mem::take(&mut unsealed.conversion_rollups),
                std::mem::take(&mut unsealed.conversions),
                std::mem::take(&mut unsealed.quarantine),
                unsealed.journal.as_mut().map_or(0, Journal::rotate),
            )
        };
        Sealed {
            rollups: sorted(rollups.into_iter().flatten()),
            conversion_rollups: sorted(conversion_rollups),
            conversions,
            quarantine,
            through: Through::all(journal_through),
        }
    }

    /// Takes the conversions (rows and counts) and the quarantine rows out
    /// of the tally, leaving the traffic counters, and notes the journal
    /// position they were taken at. Once the seal is spooled,
    /// [`Tally::mark_rows_spooled`] writes that position to the journal.
    pub fn seal_rows(&self) -> Sealed {
        let (conversion_rollups, conversions, quarantine, position) = {
            let mut unsealed = self.lock();
            (
                std::mem::take(&mut unsealed.conversion_rollups),
                std::mem::take(&mut unsealed.conversions),
                std::mem::take(&mut unsealed.quarantine),
                unsealed.journal.as_ref().map(Journal::position).unwrap_or_default(),
            )
        };
        Sealed {
            rollups: Vec::new(),
            conversion_rollups: sorted(conversion_rollups),
            conversions,
            quarantine,
            through: Through::rows(position),
        }
    }

    /// Notes in the journal that a rows-only seal taken at `position` is
    /// spooled, so a restart does not replay its rows entries. False when
    /// the journal could not take the note: then only a full seal keeps a
    /// restart from counting those rows again.
    pub fn mark_rows_spooled(&self, position: crate::spool::JournalPosition) -> bool {
        let mut unsealed = self.lock();
        let Some(journal) = unsealed.journal.as_mut() else { return true };
        let written = journal.append(EntryRef::RowsSpooled(position));
        if !written {
            unsealed.n_unjournaled += 1;
            unsealed.journal_failing = true;
        }
        written
    }

    /// Puts a seal that could not be spooled back. Its journal entries stay
    /// on disk (nothing released them), so a crash still replays them.
    pub fn restore(&self, sealed: Sealed) {
        let mut unsealed = self.lock();
        for (key, counts) in sealed.rollups {
            unsealed.rollups.counts(key).merge(&counts);
        }
        for (key, counts) in sealed.conversion_rollups {
            unsealed.conversion_rollups.entry(key).or_default().merge(&counts);
        }
        let mut conversions = sealed.conversions;
        conversions.append(&mut unsealed.conversions);
        unsealed.conversions = conversions;
        let mut quarantine = sealed.quarantine;
        quarantine.append(&mut unsealed.quarantine);
        unsealed.quarantine = quarantine;
    }

    /// Deletes the journal segments at or below `through`, once the seal
    /// holding them is spooled. The files are deleted outside the lock.
    pub fn release_journal(&self, through: u64) {
        let paths = match self.lock().journal.as_mut() {
            Some(journal) => journal.release(through),
            None => return,
        };
        for path in paths {
            if let Err(error) = std::fs::remove_file(&path) {
                tracing::warn!(%error, path = %path.display(), "Could not delete a spooled journal segment.");
            }
        }
    }

    /// Prepares the journal's next segment, so the append that needs it
    /// finds it ready instead of creating a file under the lock. Blocking
    /// I/O: call it off the async workers.
    pub fn prepare_journal(&self) {
        let Some((id, path, segment_bytes)) = self.lock().journal.as_mut().and_then(Journal::reserve_spare) else {
            return;
        };
        let map = match crate::journal::prepare_segment(&path, segment_bytes) {
            Ok(map) => Some(map),
            Err(error) => {
                tracing::warn!(%error, path = %path.display(), "Could not prepare a journal segment.");
                let _ = std::fs::remove_file(&path);
                None
            }
        };
        let late = self.lock().journal.as_mut().and_then(|journal| journal.install_spare(id, map));
        if let Some(path) = late {
            let _ = std::fs::remove_file(path);
        }
    }

    pub fn journal_state(&self) -> JournalState {
        let unsealed = self.lock();
        JournalState {
            bytes: unsealed.journal.as_ref().map_or(0, Journal::bytes),
            n_unjournaled: unsealed.n_unjournaled,
            failing: unsealed.journal_failing,
        }
    }

    /// Keeps a rejected input for shipping; false when the quarantine is
    /// full and the row was dropped.
    pub fn quarantine(&self, row: QuarantineRow) -> bool {
        let mut unsealed = self.lock();
        if unsealed.quarantine.len() >= self.limits.quarantine_max {
            return false;
        }
        if let Some(journal) = unsealed.journal.as_mut() {
            let written = journal.append(EntryRef::Quarantine(&row));
            unsealed.n_unjournaled += u64::from(!written);
            unsealed.journal_failing = !written;
        }
        unsealed.quarantine.push(row);
        true
    }

    /// Held rollup keys (traffic and conversions), conversion rows and
    /// quarantine rows.
    pub fn len(&self) -> (usize, usize, usize) {
        let unsealed = self.lock();
        (
            unsealed.rollups.len + unsealed.conversion_rollups.len(),
            unsealed.conversions.len(),
            unsealed.quarantine.len(),
        )
    }

    /// Held traffic rollup keys, the ones [`TallyLimits::rollup_keys_max`]
    /// bounds.
    pub fn traffic_keys(&self) -> usize {
        self.lock().rollups.len
    }

    pub fn limits(&self) -> TallyLimits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Unsealed> {
        // No code path panics while holding this lock, so it is never
        // poisoned; if it were, the counts would still be consistent because
        // every update is a single map or vector operation.
        self.unsealed.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

// === impl Unsealed ===

impl Unsealed {
    /// Applies a journaled change again, without limits: it was accepted
    /// before the restart.
    fn apply(&mut self, entry: JournalEntry) {
        match entry {
            JournalEntry::Count { key, kind, unique, flag, conversion: Some(conversion) } => {
                count(self.conversion_rollups.entry(key).or_default(), kind, unique, flag);
                self.conversions.push(conversion);
            }
            JournalEntry::Count { key, kind, unique, flag, conversion: None } => {
                count(self.rollups.counts(key), kind, unique, flag);
            }
            JournalEntry::Duplicate { key } => {
                let counts = self.rollups.counts(key);
                counts.duplicates = counts.duplicates.saturating_add(1);
            }
            JournalEntry::Quarantine(row) => self.quarantine.push(row),
            // Read by `Journal::open`, never replayed.
            JournalEntry::RowsSpooled(_) => {}
        }
    }
}

/// Tables the traffic counters are split over. A table that outgrows itself
/// moves every key it holds into one twice the size, under the tally's
/// lock: one table of 460,000 keys held every HTTP thread for about 80 ms
/// (`cargo bench -p edgetally-benches --bench tally -- tally_growth`). Split
/// 64 ways, each table holds about a 64th of the keys, and so does each
/// move.
const ROLLUP_SHARDS: usize = 64;

/// The traffic counters, split over [`ROLLUP_SHARDS`] tables that share one
/// hasher. A key is hashed once: bits of its hash that no table uses choose
/// its table (a table takes a slot from the low bits and a tag from the top
/// seven).
struct Rollups {
    hasher: DefaultHashBuilder,
    shards: Vec<HashTable<(RollupKey, RollupCounts)>>,
    /// Keys in all the tables.
    len: usize,
}

impl Default for Rollups {
    fn default() -> Rollups {
        let hasher = DefaultHashBuilder::default();
        let shards = (0..ROLLUP_SHARDS).map(|_| HashTable::new()).collect();
        Rollups { hasher, shards, len: 0 }
    }
}

impl Rollups {
    /// The counters of `key`, made if new.
    fn counts(&mut self, key: RollupKey) -> &mut RollupCounts {
        let Rollups { hasher, shards, len } = self;
        let hash = hasher.hash_one(&key);
        let entry = shards[shard_of(hash)].entry(hash, |(held, _)| *held == key, |(held, _)| hasher.hash_one(held));
        match entry {
            TableEntry::Occupied(occupied) => &mut occupied.into_mut().1,
            TableEntry::Vacant(vacant) => {
                *len += 1;
                &mut vacant.insert((key, RollupCounts::default())).into_mut().1
            }
        }
    }

    /// Takes every table out, leaving tables sized like the ones taken.
    fn take_sized(&mut self) -> Vec<HashTable<(RollupKey, RollupCounts)>> {
        self.len = 0;
        self.shards.iter_mut().map(|table| std::mem::replace(table, HashTable::with_capacity(table.len()))).collect()
    }
}

/// The table of [`Rollups`] a key hashed to `hash` is held in.
fn shard_of(hash: u64) -> usize {
    (hash >> 32) as usize % ROLLUP_SHARDS
}

/// A rollup key by reference, for lookups that copy the key only when it
/// is new. It hashes as [`RollupKey`] does (the same fields in the same
/// order, and `&str` hashes as `String`).
#[derive(Hash)]
struct KeyRef<'a> {
    minute_ms: i64,
    affiliate_id: u32,
    campaign_id: u32,
    sub1: &'a str,
}

impl Equivalent<RollupKey> for KeyRef<'_> {
    fn equivalent(&self, key: &RollupKey) -> bool {
        self.minute_ms == key.minute_ms
            && self.affiliate_id == key.affiliate_id
            && self.campaign_id == key.campaign_id
            && self.sub1 == key.sub1
    }
}

impl From<&KeyRef<'_>> for RollupKey {
    fn from(key: &KeyRef<'_>) -> RollupKey {
        RollupKey {
            minute_ms: key.minute_ms,
            affiliate_id: key.affiliate_id,
            campaign_id: key.campaign_id,
            sub1: key.sub1.to_owned(),
        }
    }
}

/// Rows in key order, which compresses best on the wire.
fn sorted(rollups: impl IntoIterator<Item = (RollupKey, RollupCounts)>) -> Vec<(RollupKey, RollupCounts)> {
    let mut rows: Vec<_> = rollups.into_iter().collect();
    rows.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
    rows
}

impl Sealed {
    pub fn is_empty(&self) -> bool {
        self.rollups.is_empty()
            && self.conversion_rollups.is_empty()
            && self.conversions.is_empty()
            && self.quarantine.is_empty()
    }

    /// Every rollup row of the seal in key order, a key's traffic and
    /// conversion counts in one row.
    pub fn rollup_rows(&self) -> Vec<(RollupKey, RollupCounts)> {
        let mut rows = Vec::with_capacity(self.rollups.len() + self.conversion_rollups.len());
        let (mut traffic, mut converted) = (self.rollups.iter().peekable(), self.conversion_rollups.iter().peekable());
        loop {
            let next = match (traffic.peek(), converted.peek()) {
                (Some((a, _)), Some((b, _))) if a == b => {
                    let (key, counts) = traffic.next().expect("peeked");
                    let mut counts = *counts;
                    counts.merge(&converted.next().expect("peeked").1);
                    (key.clone(), counts)
                }
                (Some((a, _)), Some((b, _))) if b < a => converted.next().cloned().expect("peeked"),
                (Some(_), _) => traffic.next().cloned().expect("peeked"),
                (None, Some(_)) => converted.next().cloned().expect("peeked"),
                (None, None) => return rows,
            };
            rows.push(next);
        }
    }
}

#[cfg(test)]
mod tests;
