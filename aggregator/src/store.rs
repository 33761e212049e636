//! The in-memory state: merged rollups, conversion rows, and each edge's
//! high-water mark.
//!
//! Applying a batch and raising its edge's high-water mark happen under one
//! lock, so two copies of a batch arriving at once cannot both be applied.
//! The lock is a `std` mutex and is never held across an `.await`.
//!
//! Everything here is rebuilt on start from the snapshot and the
//! write-ahead log (`snapshot.rs`, `wal.rs`); the store itself does no I/O.
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
//! Nothing in the tables is bounded yet: rollups grow with keys and conversions with
//! rows until retention and Parquet partitions arrive.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use edgetally_protocol::Currency;
use edgetally_protocol::batch::{ConversionRow, QuarantineRow, RollupCounts, RollupKey};
use edgetally_protocol::event::{EventKind, MINUTE_MS};
use tokio::sync::broadcast;

use crate::follow::{Applied, Feed};
use crate::ledger::{Commission, Conversion, ConversionKey, Rules, Status};

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
    /// In arrival order.
    pub(crate) quarantine: VecDeque<QuarantineRow>,
    /// Quarantine rows dropped to keep the bound.
    pub(crate) quarantine_dropped: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Store {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    tables: Tables,
    edges: HashMap<u32, EdgeMark>,
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
        let Inner { tables, edges, followers } = &mut *inner;
        let mark = edges.entry(batch.edge_id).or_default();
        let admission = mark.admit(batch.epoch, batch.sequence);
        if admission == Admission::Apply {
            *mark = EdgeMark { epoch: batch.epoch, high_water: batch.sequence };
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
                (sender, Applied { applied_at_ms: now_ms(), batch, conversions: Vec::new(), money: Vec::new() })
            });
            for (key, counts) in batch.rollups {
                tables.rollups.entry(key).or_default().merge(&counts);
            }
            let mut booked = Vec::new();
            for row in batch.conversions {
                if let Some(conversion) = tables.book(row, batch.edge_id)
                    && published.is_some()
                {
                    booked.push(conversion);
                }
            }
            for row in batch.quarantine {
                if tables.quarantine.len() == QUARANTINE_ROWS_MAX {
                    tables.quarantine.pop_front();
                    tables.quarantine_dropped += 1;
                }
                tables.quarantine.push_back(row);
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
    /// rollups when it is rejected and comes back when it is approved or
    /// pending again. Answers the conversion as it now stands, published to
    /// followers of `conversions` like a new row.
    pub(crate) fn set_status(&self, key: &ConversionKey, status: Status) -> Option<Conversion> {
        let mut inner = self.lock();
        let Inner { tables, followers, .. } = &mut *inner;
        let &conversion_idx = tables.conversion_index.get(key)?;
        let old = tables.conversions[conversion_idx].status;
        let sign = match (old == Status::Rejected, status == Status::Rejected) {
            (false, true) => -1,
            (true, false) => 1,
            _ => 0,
        };
        if sign != 0 {
            let conversion = tables.conversions[conversion_idx].clone();
            tables.add_money(&conversion, sign);
        }
        tables.conversions[conversion_idx].status = status;
        let conversion = tables.conversions[conversion_idx].clone();
        if old != status
            && let Some(sender) = followers.as_ref().filter(|sender| sender.receiver_count() > 0)
        {
            let money = if sign == 0 { Vec::new() } else { money_of(&conversion, sign).collect() };
            let applied = Applied {
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
        Store { inner: Mutex::new(Inner { tables, edges: marks, followers: None }) }
    }

    /// Runs `export` on the whole state under the lock, with the quarantine
    /// made contiguous so it reads as one slice. `export` is synchronous and
    /// holds up every apply; copy out what is needed and encode later.
    pub(crate) fn export<R>(&self, export: impl FnOnce(&Tables, &HashMap<u32, EdgeMark>) -> R) -> R {
        let mut inner = self.lock();
        let Inner { tables, edges, .. } = &mut *inner;
        tables.quarantine.make_contiguous();
        export(tables, edges)
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

// === impl Tables ===

impl Tables {
    /// Books `row` from `edge_id` unless a conversion with its key is
    /// booked already; a copy moves from its conversion counter to
    /// `duplicates` in its rollup. Answers the booked conversion.
    fn book(&mut self, row: ConversionRow, edge_id: u32) -> Option<Conversion> {
        let key = ConversionKey::of(&row);
        if let Some(key) = &key
            && self.conversion_index.contains_key(key)
        {
            let counts = self.rollups.entry(rollup_key(&row)).or_default();
            let counter = match row.kind {
                EventKind::Lead => &mut counts.leads,
                EventKind::Sale => &mut counts.sales,
                // Edges ship only leads and sales as conversion rows.
                EventKind::Impression | EventKind::Click => return None,
            };
            // The edge counted the copy in this batch's own rollups, which
            // were merged above, so the counter is at least 1.
            *counter = counter.saturating_sub(1);
            counts.duplicates = counts.duplicates.saturating_add(1);
            self.conversions_duplicate += 1;
            return None;
        }
        let commission = Commission::compute(&self.rules.campaigns, &row);
        let conversion = Conversion { row, edge_id, status: Status::Pending, commission };
        self.insert(conversion.clone());
        Some(conversion)
    }

    /// Adds a conversion to the ledger, its index and, unless rejected, the
    /// money rollups.
    pub(crate) fn insert(&mut self, conversion: Conversion) {
        if conversion.status != Status::Rejected {
            self.add_money(&conversion, 1);
        }
        if let Some(key) = ConversionKey::of(&conversion.row) {
            self.conversion_index.insert(key, self.conversions.len());
        }
        self.conversions.push(conversion);
    }

    /// Adds (`sign` 1) or removes (`sign` -1) `conversion`'s money.
    fn add_money(&mut self, conversion: &Conversion, sign: i128) {
        for (key, currency, delta) in money_of(conversion, sign) {
            self.money.entry((key, currency)).or_default().add(&delta);
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
fn now_ms() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
