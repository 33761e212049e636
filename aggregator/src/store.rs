//! The in-memory state: merged rollups, conversion rows, and each edge's
//! high-water mark.
//!
//! Applying a batch and raising its edge's high-water mark happen under one
//! lock, so two copies of a batch arriving at once cannot both be applied.
//! The lock is a `std` mutex and is never held across an `.await`.
//!
//! Everything here is rebuilt on start from the manifest, the Parquet
//! partitions it lists and the write-ahead log (`snapshot.rs`,
//! `partition.rs`, `wal.rs`); the store itself does no I/O. It records
//! which `(dataset, UTC day)` partitions changed since the last checkpoint
//! (`Tables::dirty`), so a checkpoint rewrites only those days.
//!
//! Once [`Store::publish`] is called (after replay, so replay never
//! publishes), every applied batch is also sent to the followers
//! (`follow.rs`), under the same lock, so they see the apply order. It is
//! copied for them only while someone follows.
//!
//! Conversions go to the ledger (`ledger.rs`): deduplicated across edges,
//! priced under the commission rules in force, booked `pending`. Their
//! money is summed per rollup key and currency in `money`, leaving it again
//! when a conversion is rejected. Rules and status changes reach the store
//! through the log like batches, so replay prices and reverses exactly as
//! the live run did.
//!
//! **Retention.** [`Store::drop_days_before`] removes every row of the days
//! before a cutoff, and from then on [`Store::apply`] drops rows of those
//! days as they arrive (counted in `Tables::late_rows_dropped`): a closed
//! day never comes back, not even as a late copy of a conversion whose
//! dedup key left with its day. The cutoff is in the manifest, so replay
//! drops exactly what the live run dropped. Within retention nothing is
//! bounded: rollups grow with keys and conversions with rows.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use edgetally_protocol::Currency;
use edgetally_protocol::batch::{ConversionRow, QuarantineRow, RollupCounts, RollupKey};
use edgetally_protocol::event::{EventKind, MINUTE_MS};
use tokio::sync::broadcast;

use crate::alerts::{self, Alert, EdgeWatch};
use crate::follow::{Applied, Feed};
use crate::ledger::{Commission, Conversion, ConversionKey, Rules, Status};
use crate::partition::{DAY_MS, Dataset, day_of};

/// Where an edge is in its stream of batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct EdgeMark {
    pub(crate) epoch: u64,
    /// The highest sequence applied within `epoch`; 0 before the first.
    pub(crate) high_water: u64,
}

/// What to do with a batch, given its edge's mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Apply,
    Skip,
}

/// One decoded batch of one edge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Batch {
    pub(crate) edge_id: u32,
    pub(crate) epoch: u64,
    pub(crate) sequence: u64,
    pub(crate) rollups: Vec<(RollupKey, RollupCounts)>,
    pub(crate) conversions: Vec<ConversionRow>,
    pub(crate) quarantine: Vec<QuarantineRow>,
}

/// Quarantine rows kept in memory, oldest dropped first: review needs the
/// recent ones, and at about 1.3 KiB a row this bounds them to 1.3 GiB
/// worst case (typical rows are a tenth of that).
pub(crate) const QUARANTINE_ROWS_MAX: usize = 1_000_000;

/// The quarantine: rows by UTC day of their time, each day in arrival
/// order, at most [`QUARANTINE_ROWS_MAX`] in all. When full, the first
/// arrived row of the oldest day goes. Kept by day because that is how the
/// partitions keep it: a restart rebuilds the same days in the same order,
/// so the row the bound drops next is the one the live run would drop.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Quarantine {
    days: BTreeMap<i64, VecDeque<QuarantineRow>>,
    n_rows: usize,
}

/// Money of the conversions of one rollup key in one currency that are
/// not rejected. Sums are `i128`, which no number of `i64` amounts can
/// overflow in practice; an answer that does not fit an `i64` is an error
/// (`query.rs`), never wrapped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct MoneyTotals {
    /// Sale amounts in this currency.
    pub(crate) revenue_minor: i128,
    /// Commissions paid in this currency.
    pub(crate) commission_minor: i128,
    /// Parents' overrides on those commissions.
    pub(crate) parent_commission_minor: i128,
}

// === impl MoneyTotals ===

impl MoneyTotals {
    pub(crate) fn add(&mut self, other: &MoneyTotals) {
        self.revenue_minor += other.revenue_minor;
        self.commission_minor += other.commission_minor;
        self.parent_commission_minor += other.parent_commission_minor;
    }
}

/// The most freshness recorded exactly: a week; later ones count as a week.
const FRESHNESS_MAX_MS: u64 = 7 * 24 * 3_600 * 1_000;

/// Event time to apply time of live conversions, in ms (three significant
/// digits; a fixed few KiB).
#[derive(Debug)]
struct Freshness {
    histogram_ms: hdrhistogram::Histogram<u64>,
    sum_ms: u64,
}

impl Default for Freshness {
    fn default() -> Freshness {
        let histogram_ms = hdrhistogram::Histogram::new_with_bounds(1, FRESHNESS_MAX_MS, 3)
            .expect("static histogram bounds are valid");
        Freshness { histogram_ms, sum_ms: 0 }
    }
}

impl Freshness {
    fn record(&mut self, age_ms: i64) {
        // A clock ahead at the edge is fresh, not negative.
        let age_ms = (age_ms.max(0) as u64).min(FRESHNESS_MAX_MS);
        self.histogram_ms.saturating_record(age_ms);
        self.sum_ms = self.sum_ms.saturating_add(age_ms);
    }
}

/// The data a query reads.
#[derive(Debug, Default)]
pub(crate) struct Tables {
    pub(crate) rollups: BTreeMap<RollupKey, RollupCounts>,
    /// Money by rollup key and currency.
    pub(crate) money: BTreeMap<(RollupKey, Currency), MoneyTotals>,
    /// The ledger, in apply order.
    pub(crate) conversions: Vec<Conversion>,
    /// Where each deduplicable conversion is in `conversions`.
    pub(crate) conversion_index: HashMap<ConversionKey, usize>,
    /// Conversions refused as copies of one already booked.
    pub(crate) conversions_duplicate: u64,
    /// The commission rules new conversions are priced under.
    pub(crate) rules: Rules,
    pub(crate) quarantine: Quarantine,
    /// Quarantine rows dropped to keep the bound.
    pub(crate) quarantine_dropped: u64,
    /// The partitions changed since the last checkpoint took them.
    pub(crate) dirty: BTreeSet<(Dataset, i64)>,
    /// The first UTC day kept (retention); `None`: every day is kept.
    pub(crate) retained_from_day: Option<i64>,
    /// Rows (rollup, conversion, quarantine) of batches applied since
    /// start that fell on days before `retained_from_day`, and were
    /// dropped.
    pub(crate) late_rows_dropped: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Store {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    tables: Tables,
    edges: HashMap<u32, EdgeMark>,
    /// When each edge last shipped, for the `edge_silent` finding.
    watch: EdgeWatch,
    /// The data version: raised by every change a reader could see (a
    /// batch applied, a status changed, days dropped). Answers computed at
    /// one version stay true until it moves (`dashboard.rs` caches them
    /// by it). In memory only: it starts at 0 with every run.
    version: u64,
    /// When the last batch was applied since start, Unix ms.
    last_applied_ms: Option<i64>,
    /// How long booked conversions took from their event time to being
    /// applied here, live (not replayed), since start.
    freshness: Freshness,
    /// Where applied batches go for followers; `None` before
    /// [`Store::publish`] (during replay) and after
    /// [`Store::stop_publishing`].
    followers: Option<broadcast::Sender<Arc<Applied>>>,
}

// === impl EdgeMark ===

impl EdgeMark {
    /// A newer epoch starts over from high-water 0; an older epoch is a
    /// leftover of a previous run of the edge and was dealt with then.
    pub(crate) fn admit(&self, epoch: u64, sequence: u64) -> Admission {
        let high_water = match epoch.cmp(&self.epoch) {
            std::cmp::Ordering::Less => return Admission::Skip,
            std::cmp::Ordering::Equal => self.high_water,
            std::cmp::Ordering::Greater => 0,
        };
        if sequence > high_water { Admission::Apply } else { Admission::Skip }
    }
}

// === impl Store ===

impl Store {
    /// Applies `batch` unless its edge's high-water mark says it was applied
    /// before. An applied batch is published to the followers, if any.
    pub(crate) fn apply(&self, batch: Batch) -> Admission {
        let mut inner = self.lock();
        let Inner { tables, edges, watch, followers, version, last_applied_ms, freshness } = &mut *inner;
        let live = followers.is_some();
        // A resend of an applied batch shows the edge alive too.
        watch.last_batch_ms.insert(batch.edge_id, now_ms());
        let mark = edges.entry(batch.edge_id).or_default();
        let admission = mark.admit(batch.epoch, batch.sequence);
        if admission == Admission::Apply {
            *mark = EdgeMark { epoch: batch.epoch, high_water: batch.sequence };
            *version += 1;
            let applied_at_ms = now_ms();
            *last_applied_ms = Some(applied_at_ms);
            // Copied before its rows move into the tables, and only for
            // someone to read.
            let published = followers.as_ref().filter(|sender| sender.receiver_count() > 0).map(|sender| {
                // Conversions go to followers as booked, below; not copied here.
                let batch = Batch {
                    edge_id: batch.edge_id,
                    epoch: batch.epoch,
                    sequence: batch.sequence,
                    rollups: batch.rollups.clone(),
                    conversions: Vec::new(),
                    quarantine: batch.quarantine.clone(),
                };
                (
                    sender,
                    Applied { version: *version, applied_at_ms, batch, conversions: Vec::new(), money: Vec::new() },
                )
            });
            for (key, counts) in batch.rollups {
                let day = day_of(key.minute_ms);
                if tables.retains(day) {
                    tables.dirty.insert((Dataset::Rollups, day));
                    tables.rollups.entry(key).or_default().merge(&counts);
                }
            }
            let mut booked = Vec::new();
            for row in batch.conversions {
                if tables.retains(day_of(row.time_ms))
                    && let Some(conversion) = tables.book(row, batch.edge_id)
                {
                    if live {
                        freshness.record(applied_at_ms - conversion.row.time_ms);
                    }
                    if published.is_some() {
                        booked.push(conversion);
                    }
                }
            }
            for row in batch.quarantine {
                let day = day_of(row.time_ms);
                if !tables.retains(day) {
                    continue;
                }
                tables.dirty.insert((Dataset::Quarantine, day));
                if let Some(dropped_day) = tables.quarantine.push(row) {
                    tables.dirty.insert((Dataset::Quarantine, dropped_day));
                    tables.quarantine_dropped += 1;
                }
            }
            if let Some((sender, mut applied)) = published {
                applied.money = booked.iter().flat_map(|conversion| money_of(conversion, 1)).collect();
                applied.conversions = booked;
                // Fails only if every follower left since the count above;
                // then nobody misses the batch.
                let _ = sender.send(Arc::new(applied));
            }
        }
        admission
    }

    /// Prices conversions from now on under `rules`.
    pub(crate) fn set_rules(&self, rules: Rules) {
        self.lock().tables.rules = rules;
    }

    /// The campaigns file the rules in force came from.
    pub(crate) fn rules_body(&self) -> bytes::Bytes {
        self.lock().tables.rules.body.clone()
    }

    /// Sets the status of the conversion with `key`; its money leaves the
    /// rollups when it is rejected or held and comes back when it is
    /// approved or pending again. Answers the conversion as it now stands, published to
    /// followers of `conversions` like a new row.
    pub(crate) fn set_status(&self, key: &ConversionKey, status: Status) -> Option<Conversion> {
        let mut inner = self.lock();
        let Inner { tables, followers, version, .. } = &mut *inner;
        let &conversion_idx = tables.conversion_index.get(key)?;
        let old = tables.conversions[conversion_idx].status;
        let sign = match (old.is_payable(), status.is_payable()) {
            (true, false) => -1,
            (false, true) => 1,
            _ => 0,
        };
        if sign != 0 {
            let conversion = tables.conversions[conversion_idx].clone();
            tables.add_money(&conversion, sign);
        }
        if old != status {
            let day = day_of(tables.conversions[conversion_idx].row.time_ms);
            tables.dirty.insert((Dataset::Conversions, day));
            *version += 1;
        }
        tables.conversions[conversion_idx].status = status;
        let conversion = tables.conversions[conversion_idx].clone();
        if old != status
            && let Some(sender) = followers.as_ref().filter(|sender| sender.receiver_count() > 0)
        {
            let money = if sign == 0 { Vec::new() } else { money_of(&conversion, sign).collect() };
            let applied = Applied {
                version: *version,
                applied_at_ms: now_ms(),
                batch: Batch::default(),
                conversions: vec![conversion.clone()],
                money,
            };
            // Fails only if every follower left since the count.
            let _ = sender.send(Arc::new(applied));
        }
        Some(conversion)
    }

    /// From now on, publishes every applied batch to followers through a
    /// queue of `queue_max` batches (`follow::FOLLOW_QUEUE_MAX`, smaller
    /// in tests). Called once the log is replayed: replay publishes
    /// nothing.
    pub(crate) fn publish(&self, queue_max: usize) {
        let (sender, _) = broadcast::channel(queue_max);
        self.lock().followers = Some(sender);
    }

    /// Stops publishing: every follower's feed ends once it has read what
    /// was published before. Called at shutdown.
    pub(crate) fn stop_publishing(&self) {
        self.lock().followers = None;
    }

    /// A feed of every batch applied from now on; `None` when the store is
    /// not publishing.
    pub(crate) fn follow(&self) -> Option<Feed> {
        self.lock().followers.as_ref().map(broadcast::Sender::subscribe)
    }

    /// What [`Store::apply`] would do with the batch now. Ingest asks
    /// before writing a batch to the log, so a resent batch costs no write;
    /// `apply` asks again under its lock.
    pub(crate) fn admit(&self, edge_id: u32, epoch: u64, sequence: u64) -> Admission {
        self.lock().edges.get(&edge_id).copied().unwrap_or_default().admit(epoch, sequence)
    }

    /// A store holding `tables` with the edges at `marks`, as a snapshot
    /// left them.
    pub(crate) fn restore(tables: Tables, marks: HashMap<u32, EdgeMark>) -> Store {
        Store {
            inner: Mutex::new(Inner {
                tables,
                edges: marks,
                watch: EdgeWatch::default(),
                followers: None,
                version: 0,
                last_applied_ms: None,
                freshness: Freshness::default(),
            }),
        }
    }

    /// Runs `export` on the whole state under the lock. `export` is
    /// synchronous and holds up every apply; copy out what is needed and
    /// encode later. It may take `Tables::dirty`.
    pub(crate) fn export<R>(&self, export: impl FnOnce(&mut Tables, &HashMap<u32, EdgeMark>) -> R) -> R {
        let mut inner = self.lock();
        let Inner { tables, edges, .. } = &mut *inner;
        export(tables, edges)
    }

    /// Marks `partitions` changed again: a checkpoint took them and then
    /// failed before its manifest was durable.
    pub(crate) fn mark_dirty(&self, partitions: impl IntoIterator<Item = (Dataset, i64)>) {
        self.lock().tables.dirty.extend(partitions);
    }

    /// Retention: removes every row of the days before `cutoff_day` and
    /// keeps them out from now on (a cutoff only moves forward). Money
    /// totals and the conversion index are rebuilt for what stays. Answers
    /// how many distinct days had rows and were dropped.
    pub(crate) fn drop_days_before(&self, cutoff_day: i64) -> u64 {
        let mut inner = self.lock();
        let tables = &mut inner.tables;
        let cutoff_day = tables.retained_from_day.map_or(cutoff_day, |day| day.max(cutoff_day));
        tables.retained_from_day = Some(cutoff_day);
        let mut days = BTreeSet::new();
        let cutoff_minute = RollupKey {
            minute_ms: cutoff_day.saturating_mul(DAY_MS),
            affiliate_id: 0,
            campaign_id: 0,
            sub1: String::new(),
        };
        let kept = tables.rollups.split_off(&cutoff_minute);
        days.extend(tables.rollups.keys().map(|key| day_of(key.minute_ms)));
        tables.rollups = kept;
        days.extend(tables.quarantine.drop_days_before(cutoff_day));
        // Most checkpoints drop nothing: a scan, then the rebuild only when
        // a conversion goes (its index positions move).
        let dropped_days =
            tables.conversions.iter().map(|conversion| day_of(conversion.row.time_ms)).filter(|&day| day < cutoff_day);
        days.extend(dropped_days);
        if tables.conversions.iter().any(|conversion| day_of(conversion.row.time_ms) < cutoff_day) {
            let conversions = std::mem::take(&mut tables.conversions);
            tables.money.clear();
            tables.conversion_index.clear();
            for conversion in conversions.into_iter().filter(|conversion| day_of(conversion.row.time_ms) >= cutoff_day)
            {
                tables.insert(conversion);
            }
        }
        tables.dirty.retain(|&(_, day)| day >= cutoff_day);
        if !days.is_empty() {
            inner.version += 1;
        }
        days.len() as u64
    }

    /// Starts watching edges for silence: an edge quiet for `silent` is a
    /// finding, and one known from the log but not heard from since is
    /// measured from now. `None` watches no edge.
    pub(crate) fn watch_edges(&self, silent: Option<std::time::Duration>) {
        let mut inner = self.lock();
        inner.watch.since_ms = now_ms();
        inner.watch.silent_ms = silent.map(|silent| i64::try_from(silent.as_millis()).unwrap_or(i64::MAX));
    }

    /// The findings at `now_ms` that `keep` wants (see `alerts::findings`).
    pub(crate) fn alerts(&self, now_ms: i64, keep: &alerts::Keep<'_>) -> Vec<Alert> {
        let inner = self.lock();
        alerts::findings(&inner.tables, inner.edges.keys().copied(), &inner.watch, now_ms, keep)
    }

    /// See `Tables::late_rows_dropped`.
    pub(crate) fn late_rows_dropped(&self) -> u64 {
        self.lock().tables.late_rows_dropped
    }

    /// The data version (see `Inner::version`) and when the last batch was
    /// applied since start.
    pub(crate) fn version(&self) -> (u64, Option<i64>) {
        let inner = self.lock();
        (inner.version, inner.last_applied_ms)
    }

    /// The freshness histogram's buckets below `bounds_ms` (and past the
    /// last), its sum in ms and its count.
    pub(crate) fn freshness_buckets(&self, bounds_ms: &[u64]) -> (Vec<(u64, u64)>, u64, u64) {
        let inner = self.lock();
        let freshness = &inner.freshness;
        (
            crate::metrics::histogram_buckets(&freshness.histogram_ms, bounds_ms),
            freshness.sum_ms,
            freshness.histogram_ms.len(),
        )
    }

    /// Like [`Store::read`], with the data version `read` saw.
    pub(crate) fn read_versioned<R>(&self, read: impl FnOnce(&Tables) -> R) -> (u64, R) {
        let inner = self.lock();
        (inner.version, read(&inner.tables))
    }

    /// Every edge known (from the log or since start) and when it last
    /// shipped, Unix ms, by edge id; an edge not heard from since start
    /// is measured from when watching began, as `edge_silent` measures it.
    pub(crate) fn edges_last_batch(&self) -> Vec<(u32, i64)> {
        let inner = self.lock();
        let watch = &inner.watch;
        let known = inner.edges.keys().chain(watch.last_batch_ms.keys()).copied().collect::<BTreeSet<u32>>();
        known
            .into_iter()
            .map(|edge| (edge, watch.last_batch_ms.get(&edge).copied().unwrap_or(watch.since_ms)))
            .collect()
    }

    /// Runs `read` on the tables under the lock. `read` is synchronous, so
    /// the lock cannot be held across an `.await`; keep it short.
    pub(crate) fn read<R>(&self, read: impl FnOnce(&Tables) -> R) -> R {
        read(&self.lock().tables)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Poisoned only if a panic hit mid-apply; the tables may then hold
        // half a batch, which must not be served or extended.
        self.inner.lock().expect("store lock is not poisoned")
    }
}

// === impl Quarantine ===

impl Quarantine {
    /// Every row, by day, each day in arrival order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &QuarantineRow> {
        self.days.values().flatten()
    }

    pub(crate) fn len(&self) -> usize {
        self.n_rows
    }

    /// The rows of `day`, made contiguous.
    pub(crate) fn day(&mut self, day: i64) -> &[QuarantineRow] {
        self.days.get_mut(&day).map_or(&[], |rows| rows.make_contiguous())
    }

    /// Adds `row`; when full, first drops the oldest (see the type) and
    /// answers its day.
    pub(crate) fn push(&mut self, row: QuarantineRow) -> Option<i64> {
        let mut dropped_day = None;
        if self.n_rows == QUARANTINE_ROWS_MAX
            && let Some(mut oldest) = self.days.first_entry()
        {
            oldest.get_mut().pop_front();
            dropped_day = Some(*oldest.key());
            if oldest.get().is_empty() {
                oldest.remove();
            }
            self.n_rows -= 1;
        }
        self.days.entry(day_of(row.time_ms)).or_default().push_back(row);
        self.n_rows += 1;
        dropped_day
    }

    /// Removes the days before `cutoff_day`; answers them.
    fn drop_days_before(&mut self, cutoff_day: i64) -> Vec<i64> {
        let kept = self.days.split_off(&cutoff_day);
        let dropped = std::mem::replace(&mut self.days, kept);
        self.n_rows -= dropped.values().map(VecDeque::len).sum::<usize>();
        dropped.into_keys().collect()
    }
}

// === impl Tables ===

impl Tables {
    /// Whether rows of `day` are kept (see "Retention" above).
    fn retains(&mut self, day: i64) -> bool {
        let retained = self.retained_from_day.is_none_or(|first_day| day >= first_day);
        if !retained {
            self.late_rows_dropped += 1;
        }
        retained
    }

    /// Books `row` from `edge_id` unless a conversion with its key is
    /// booked already; a copy moves from its conversion counter to
    /// `duplicates` in its rollup. Answers the booked conversion.
    fn book(&mut self, row: ConversionRow, edge_id: u32) -> Option<Conversion> {
        let key = ConversionKey::of(&row);
        let day = day_of(row.time_ms);
        if let Some(key) = &key
            && self.conversion_index.contains_key(key)
        {
            self.dirty.insert((Dataset::Rollups, day));
            let counts = self.rollups.entry(rollup_key(&row)).or_default();
            let counter = match (row.flag, row.kind) {
                // A flagged copy was counted in its flag's counter.
                (Some(flag), _) => &mut counts.flagged[flag.index()],
                (None, EventKind::Lead) => &mut counts.leads,
                (None, EventKind::Sale) => &mut counts.sales,
                // Edges ship only leads and sales as conversion rows.
                (None, EventKind::Impression | EventKind::Click) => return None,
            };
            // The edge counted the copy in this batch's own rollups, which
            // were merged above, so the counter is at least 1.
            *counter = counter.saturating_sub(1);
            counts.duplicates = counts.duplicates.saturating_add(1);
            self.conversions_duplicate += 1;
            return None;
        }
        let commission = Commission::compute(&self.rules.campaigns, &row);
        let conversion = Conversion { status: Status::booked(&row), row, edge_id, commission };
        self.dirty.insert((Dataset::Conversions, day));
        self.insert(conversion.clone());
        Some(conversion)
    }

    /// Adds a conversion to the ledger, its index and, when payable, the
    /// money rollups.
    pub(crate) fn insert(&mut self, conversion: Conversion) {
        if conversion.status.is_payable() {
            self.add_money(&conversion, 1);
        }
        if let Some(key) = ConversionKey::of(&conversion.row) {
            self.conversion_index.insert(key, self.conversions.len());
        }
        self.conversions.push(conversion);
    }

    /// Adds (`sign` 1) or removes (`sign` -1) `conversion`'s money. Totals
    /// that come to zero are removed, so `money` holds the same entries
    /// whether it was built live (where a rejection subtracts) or rebuilt
    /// from the ledger at start (where a rejected conversion adds nothing).
    fn add_money(&mut self, conversion: &Conversion, sign: i128) {
        for (key, currency, delta) in money_of(conversion, sign) {
            let entry = (key, currency);
            self.money.entry(entry.clone()).or_default().add(&delta);
            self.remove_if_zero(&entry);
        }
    }

    fn remove_if_zero(&mut self, entry: &(RollupKey, Currency)) {
        if self.money.get(entry) == Some(&MoneyTotals::default()) {
            self.money.remove(entry);
        }
    }
}

/// `conversion`'s money times `sign`, by the rollup key and currency it
/// counts under: the sale amount in its currency, the commission and the
/// parent's override in the commission's.
pub(crate) fn money_of(
    conversion: &Conversion,
    sign: i128,
) -> impl Iterator<Item = (RollupKey, Currency, MoneyTotals)> {
    let key = rollup_key(&conversion.row);
    let revenue = conversion.row.money.map(|money| {
        let totals = MoneyTotals { revenue_minor: sign * i128::from(money.minor_units), ..MoneyTotals::default() };
        (key.clone(), money.currency, totals)
    });
    let commission = &conversion.commission;
    let commission = commission.currency.map(|currency| {
        let totals = MoneyTotals {
            commission_minor: sign * i128::from(commission.amount_minor),
            parent_commission_minor: sign * i128::from(commission.parent_amount_minor),
            ..MoneyTotals::default()
        };
        (key, currency, totals)
    });
    revenue.into_iter().chain(commission)
}

/// The rollup key a conversion row counts under.
pub(crate) fn rollup_key(row: &ConversionRow) -> RollupKey {
    RollupKey {
        minute_ms: row.time_ms.div_euclid(MINUTE_MS) * MINUTE_MS,
        affiliate_id: row.affiliate_id,
        campaign_id: row.campaign_id,
        sub1: row.sub1.clone(),
    }
}

/// The wall clock in Unix ms; a clock before 1970 reads as 0.
pub(crate) fn now_ms() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
