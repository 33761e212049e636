//! What a Flight ticket asks for, and how it is answered from the store.
//!
//! A [`Query`] names a dataset, a half-open time range `[from, to)`,
//! optional filters (affiliate, campaign, sub1) and, for rollups, the
//! columns to group by and the [`TimeBuckets`] that time is grouped into.
//! Its answer is one Arrow batch whose schema [`Query::schema`] tells in
//! advance, so `GetFlightInfo` and `DoGet` agree even when no row matches.
//!
//! Time buckets are cut at the local boundaries of an IANA zone from the
//! database compiled into the binary (jiff's bundled tzdb, so no system
//! tzdata is read and every host answers alike): a day starts at local
//! midnight (23 or 25 hours long when the clocks change), an hour at the
//! local hour (so at :30 or :45 past a UTC hour in zones such as
//! Asia/Kolkata). A change of offset also ends an hour: the hour repeated
//! when DST ends is two buckets, one per offset. A bucket is named by the
//! instant it starts. Rollups are read in minute order, so [`Bucketer`]
//! keeps the current bucket and asks the zone again only when a minute
//! leaves it: one zone look-up per bucket, not per row.
//!
//! A rollups answer carries money as well as counters: `currency`,
//! `revenue_minor`, `commission_minor` and `parent_commission_minor`
//! (conversions not rejected, in minor units of `currency`). A group with
//! money in several currencies has one row per currency, in code order;
//! its counters are on the first of those rows and zero on the others, so
//! a sum of any column over rows is exact. A group without money has one
//! row with a null `currency` and zero money. Sums are kept in `i128`; one
//! that does not fit the answer's `i64` is an error, never wrapped.
//!
//! A follow query (`follow.rs`) is answered instead batch by batch, from
//! each applied batch's own rows ([`Query::follow_batch`]): the same
//! filters, no grouping, and an `applied_at` column last.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use arrow_array::builder::{Int64Builder, StringBuilder, TimestampMillisecondBuilder, UInt32Builder, UInt64Builder};
use arrow_array::{ArrayRef, RecordBatch, TimestampMillisecondArray};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use edgetally_protocol::Currency;
use edgetally_protocol::batch::{
    N_COUNTERS, QUARANTINE_SCHEMA, ROLLUP_SCHEMA, RollupCounts, RollupKey, quarantine_to_batch,
};
use edgetally_protocol::event::MINUTE_MS;
use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::alerts::{ALERTS_SCHEMA, alerts_to_batch};
use crate::follow::Applied;
use crate::ledger::{Conversion, LEDGER_SCHEMA, ledger_to_batch};
use crate::store::{MoneyTotals, Store, Tables};

/// The datasets the aggregator serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dataset {
    Rollups,
    Conversions,
    Quarantine,
    /// Findings derived from the others at the moment of the query
    /// (`alerts.rs`).
    Alerts,
}

/// A rollup column that can be grouped by, in canonical (schema) order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum GroupColumn {
    Minute,
    AffiliateId,
    CampaignId,
    Sub1,
}

/// A set of group columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GroupBy {
    /// Indexed by `GroupColumn as usize`.
    columns: [bool; 4],
}

/// How long the time buckets of a rollups answer are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Granularity {
    Minute,
    Hour,
    Day,
}

/// The buckets a rollups answer groups time into: a granularity, cut at
/// the local boundaries of a zone.
#[derive(Debug, Clone)]
pub(crate) struct TimeBuckets {
    pub(crate) granularity: Granularity,
    zone: TimeZone,
    /// The zone's IANA name as the database spells it; the answer's time
    /// column carries it.
    zone_name: Arc<str>,
}

/// One time bucket: the instants `[start_ms, end_ms)`, Unix ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bucket {
    pub(crate) start_ms: i64,
    pub(crate) end_ms: i64,
}

/// Maps rollup minutes to the start of their bucket, remembering the last
/// bucket so that minutes read in order cost one zone look-up per bucket.
#[derive(Debug)]
pub(crate) struct Bucketer<'a> {
    buckets: &'a TimeBuckets,
    current: Option<Bucket>,
    /// Buckets computed so far, for tests to check there is one look-up
    /// per bucket.
    #[cfg(test)]
    n_lookups: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Query {
    pub(crate) dataset: Dataset,
    /// Inclusive lower bound, Unix ms, on the minute (rollups) or the event
    /// time (conversions).
    pub(crate) from_ms: Option<i64>,
    /// Exclusive upper bound, Unix ms.
    pub(crate) to_ms: Option<i64>,
    pub(crate) affiliate_id: Option<u32>,
    pub(crate) campaign_id: Option<u32>,
    /// Exact match; `""` matches rows that came without a sub1.
    pub(crate) sub1: Option<String>,
    /// Always [`GroupBy::ALL`] for conversions, which are not grouped,
    /// and for follow queries.
    pub(crate) group_by: GroupBy,
    /// UTC minutes (the default) for conversions, quarantine and follow
    /// queries, which are not grouped.
    pub(crate) buckets: TimeBuckets,
    /// Stream each batch applied from now on instead of answering once.
    pub(crate) follow: bool,
}

/// The column a follow answer ends with: when the aggregator applied the
/// batch the row came in.
pub(crate) const APPLIED_AT_COLUMN: &str = "applied_at";

/// The most rows in one batch of an answer: 64 Ki rows (a few MiB), so a
/// large answer streams as it is encoded, and a SQL scan of a large
/// dataset is spread over DataFusion's partitions in pieces its memory
/// pool can account for.
pub(crate) const ANSWER_BATCH_ROWS: usize = 64 * 1024;

/// A rollup key with the columns not grouped by left out, and the minute
/// replaced by the start of its bucket.
pub(crate) type GroupKey = (Option<i64>, Option<u32>, Option<u32>, Option<String>);

/// The counter columns every rollup answer ends with, in ROLLUP_SCHEMA.
const ROLLUP_COUNTER_COLUMNS: std::ops::Range<usize> = 4..4 + N_COUNTERS;

/// The money columns of a rollups answer, after the counters.
static MONEY_FIELDS: LazyLock<[Field; 4]> = LazyLock::new(|| {
    [
        Field::new("currency", DataType::Utf8, true),
        Field::new("revenue_minor", DataType::Int64, false),
        Field::new("commission_minor", DataType::Int64, false),
        Field::new("parent_commission_minor", DataType::Int64, false),
    ]
});

/// What a rollups group sums to: its counters and its money by currency.
#[derive(Debug, Default)]
pub(crate) struct GroupTotals {
    pub(crate) counts: RollupCounts,
    pub(crate) money: BTreeMap<Currency, MoneyTotals>,
}

/// Milliseconds in an hour.
const HOUR_MS: i64 = 60 * MINUTE_MS;

// === impl Dataset ===

impl Dataset {
    pub(crate) const ALL: [Dataset; 4] = [Dataset::Rollups, Dataset::Conversions, Dataset::Quarantine, Dataset::Alerts];

    pub(crate) fn parse(name: &str) -> Option<Dataset> {
        Dataset::ALL.into_iter().find(|dataset| dataset.as_str() == name)
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Dataset::Rollups => "rollups",
            Dataset::Conversions => "conversions",
            Dataset::Quarantine => "quarantine",
            Dataset::Alerts => "alerts",
        }
    }
}

// === impl GroupColumn ===

impl GroupColumn {
    pub(crate) const ALL: [GroupColumn; 4] =
        [GroupColumn::Minute, GroupColumn::AffiliateId, GroupColumn::CampaignId, GroupColumn::Sub1];

    pub(crate) fn parse(name: &str) -> Option<GroupColumn> {
        GroupColumn::ALL.into_iter().find(|column| column.as_str() == name)
    }

    /// The column's name, as in ROLLUP_SCHEMA.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            GroupColumn::Minute => "minute",
            GroupColumn::AffiliateId => "affiliate_id",
            GroupColumn::CampaignId => "campaign_id",
            GroupColumn::Sub1 => "sub1",
        }
    }
}

// === impl GroupBy ===

impl GroupBy {
    pub(crate) const ALL: GroupBy = GroupBy { columns: [true; 4] };
    pub(crate) const NONE: GroupBy = GroupBy { columns: [false; 4] };

    pub(crate) fn contains(self, column: GroupColumn) -> bool {
        self.columns[column as usize]
    }

    /// Adds `column`; false if it was there already.
    pub(crate) fn insert(&mut self, column: GroupColumn) -> bool {
        !std::mem::replace(&mut self.columns[column as usize], true)
    }

    /// The chosen columns in canonical order.
    pub(crate) fn columns(self) -> impl Iterator<Item = GroupColumn> {
        GroupColumn::ALL.into_iter().filter(move |&column| self.contains(column))
    }

    fn key(self, key: &RollupKey) -> GroupKey {
        (
            self.contains(GroupColumn::Minute).then_some(key.minute_ms),
            self.contains(GroupColumn::AffiliateId).then_some(key.affiliate_id),
            self.contains(GroupColumn::CampaignId).then_some(key.campaign_id),
            self.contains(GroupColumn::Sub1).then(|| key.sub1.clone()),
        )
    }
}

// === impl Granularity ===

impl Granularity {
    pub(crate) const ALL: [Granularity; 3] = [Granularity::Minute, Granularity::Hour, Granularity::Day];

    pub(crate) fn parse(name: &str) -> Option<Granularity> {
        Granularity::ALL.into_iter().find(|granularity| granularity.as_str() == name)
    }

    /// The granularity's name in a ticket, which is also the name of the
    /// time column of a rollups answer.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }
}

// === impl TimeBuckets ===

impl TimeBuckets {
    /// `granularity` buckets in the zone named `zone_name` (IANA, any
    /// case); `None` if the bundled database does not know the zone.
    pub(crate) fn new(granularity: Granularity, zone_name: &str) -> Option<TimeBuckets> {
        let zone = TimeZone::get(zone_name).ok()?;
        // A zone found by name in the database has that name.
        let zone_name = zone.iana_name()?.into();
        Some(TimeBuckets { granularity, zone, zone_name })
    }

    /// `granularity` buckets in UTC, the default zone. UTC minutes are the
    /// stored minutes themselves.
    pub(crate) fn utc(granularity: Granularity) -> TimeBuckets {
        TimeBuckets { granularity, zone: TimeZone::UTC, zone_name: "UTC".into() }
    }

    pub(crate) fn zone(&self) -> &TimeZone {
        &self.zone
    }

    pub(crate) fn zone_name(&self) -> &str {
        &self.zone_name
    }

    /// The time column of a rollups answer: named after the granularity,
    /// typed with the zone, holding each bucket's start.
    fn field(&self) -> Field {
        let minute = ROLLUP_SCHEMA.field(GroupColumn::Minute as usize);
        let data_type = DataType::Timestamp(TimeUnit::Millisecond, Some(self.zone_name.as_ref().into()));
        Field::new(self.granularity.as_str(), data_type, minute.is_nullable())
    }

    /// The bucket that holds the instant `time_ms`.
    pub(crate) fn bucket(&self, time_ms: i64) -> Result<Bucket, jiff::Error> {
        match self.granularity {
            // Every zone has kept whole-minute offsets since 1972, so a
            // local minute is a UTC minute: no look-up needed.
            Granularity::Minute => {
                let start_ms = time_ms - time_ms.rem_euclid(MINUTE_MS);
                Ok(Bucket { start_ms, end_ms: start_ms + MINUTE_MS })
            }
            Granularity::Hour => self.hour(time_ms),
            Granularity::Day => self.day(time_ms),
        }
    }

    /// The local hour of `time_ms` under its offset, cut short where the
    /// offset changes inside it.
    fn hour(&self, time_ms: i64) -> Result<Bucket, jiff::Error> {
        let timestamp = Timestamp::from_millisecond(time_ms)?;
        let offset_ms = i64::from(self.zone.to_offset(timestamp).seconds()) * 1000;
        let mut start_ms = time_ms - (time_ms + offset_ms).rem_euclid(HOUR_MS);
        let mut end_ms = start_ms + HOUR_MS;
        // The latest change at or before `time_ms` (transitions fall on
        // whole seconds, so "before the next millisecond" is "at or before").
        let next = Timestamp::from_millisecond(time_ms + 1)?;
        if let Some(change) = self.zone.preceding(next).find(|transition| self.changes_offset(transition)) {
            start_ms = start_ms.max(change.timestamp().as_millisecond());
        }
        if let Some(change) = self.zone.following(timestamp).find(|transition| self.changes_offset(transition)) {
            end_ms = end_ms.min(change.timestamp().as_millisecond());
        }
        Ok(Bucket { start_ms, end_ms })
    }

    /// From the start of the local day of `time_ms` to the start of the
    /// next: local midnight, or the first instant after it when midnight
    /// falls into a gap, the earlier one when it is repeated.
    fn day(&self, time_ms: i64) -> Result<Bucket, jiff::Error> {
        let date = self.zone.to_datetime(Timestamp::from_millisecond(time_ms)?).date();
        let start = date.to_zoned_datetime(self.zone.clone())?;
        let end = date.tomorrow()?.to_zoned_datetime(self.zone.clone())?;
        Ok(Bucket { start_ms: start.timestamp().as_millisecond(), end_ms: end.timestamp().as_millisecond() })
    }

    /// False for transitions that only rename the zone's abbreviation or
    /// flip its DST flag: those must not cut an hour.
    fn changes_offset(&self, transition: &jiff::tz::TimeZoneTransition<'_>) -> bool {
        let before = transition.timestamp().as_millisecond() - 1;
        Timestamp::from_millisecond(before).is_ok_and(|before| self.zone.to_offset(before) != transition.offset())
    }
}

/// Two zones with the same IANA name from the one bundled database are the
/// same zone.
impl PartialEq for TimeBuckets {
    fn eq(&self, other: &TimeBuckets) -> bool {
        self.granularity == other.granularity && self.zone_name == other.zone_name
    }
}

impl Eq for TimeBuckets {}

// === impl Bucket ===

impl Bucket {
    fn contains(self, time_ms: i64) -> bool {
        self.start_ms <= time_ms && time_ms < self.end_ms
    }
}

// === impl Bucketer ===

impl<'a> Bucketer<'a> {
    pub(crate) fn new(buckets: &'a TimeBuckets) -> Bucketer<'a> {
        Bucketer {
            buckets,
            current: None,
            #[cfg(test)]
            n_lookups: 0,
        }
    }

    /// The start of the bucket of `minute_ms`.
    pub(crate) fn start_of(&mut self, minute_ms: i64) -> Result<i64, ArrowError> {
        if let Some(bucket) = self.current
            && bucket.contains(minute_ms)
        {
            return Ok(bucket.start_ms);
        }
        let bucket = self.buckets.bucket(minute_ms).map_err(|error| {
            ArrowError::ComputeError(format!(
                "{} bucket of {minute_ms} ms in {}: {error}",
                self.buckets.granularity.as_str(),
                self.buckets.zone_name
            ))
        })?;
        #[cfg(test)]
        {
            self.n_lookups += 1;
        }
        self.current = Some(bucket);
        Ok(bucket.start_ms)
    }
}

// === impl Query ===

impl Query {
    /// All of `dataset`, rollups grouped by every key column: what
    /// `ListFlights` names.
    pub(crate) fn whole(dataset: Dataset) -> Query {
        Query {
            dataset,
            from_ms: None,
            to_ms: None,
            affiliate_id: None,
            campaign_id: None,
            sub1: None,
            group_by: GroupBy::ALL,
            buckets: TimeBuckets::utc(Granularity::Minute),
            follow: false,
        }
    }

    /// The schema of the answer: for rollups, the group columns with their
    /// ROLLUP_SCHEMA types (the time column named and typed by
    /// [`TimeBuckets`]) followed by the counters; for conversions,
    /// CONVERSION_SCHEMA; for quarantine, QUARANTINE_SCHEMA. A follow
    /// answer adds [`APPLIED_AT_COLUMN`] (non-null, ms, UTC) last.
    pub(crate) fn schema(&self) -> SchemaRef {
        let schema = self.rows_schema();
        if !self.follow {
            return schema;
        }
        let applied_at =
            Field::new(APPLIED_AT_COLUMN, DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false);
        let fields: Vec<Field> =
            schema.fields().iter().map(|field| field.as_ref().clone()).chain(std::iter::once(applied_at)).collect();
        Arc::new(Schema::new(fields))
    }

    /// The schema without `applied_at`.
    fn rows_schema(&self) -> SchemaRef {
        match self.dataset {
            Dataset::Conversions => LEDGER_SCHEMA.clone(),
            Dataset::Quarantine => QUARANTINE_SCHEMA.clone(),
            Dataset::Alerts => ALERTS_SCHEMA.clone(),
            Dataset::Rollups => {
                let group_fields = self.group_by.columns().map(|column| match column {
                    GroupColumn::Minute => self.buckets.field(),
                    _ => ROLLUP_SCHEMA.field(column as usize).clone(),
                });
                let counter_fields = ROLLUP_COUNTER_COLUMNS.map(|column_idx| ROLLUP_SCHEMA.field(column_idx).clone());
                let fields: Vec<Field> =
                    group_fields.chain(counter_fields).chain(MONEY_FIELDS.iter().cloned()).collect();
                Arc::new(Schema::new(fields))
            }
        }
    }

    /// Answers the query from `store`, rows sorted by the group columns
    /// (rollups) or by time (conversions), in batches of at most
    /// [`ANSWER_BATCH_ROWS`] rows. Ignores `follow`: the answer is what the
    /// store holds now, in [`Query::rows_schema`].
    pub(crate) fn execute(&self, store: &Store) -> Result<Vec<RecordBatch>, ArrowError> {
        match self.dataset {
            Dataset::Rollups => {
                let groups = store.read(|tables| self.group_rollups(tables))?;
                in_batches(groups, |chunk| self.rollups_to_batch(chunk))
            }
            // Built under the lock straight from the ledger: cloning the
            // conversions out first would copy every string twice.
            Dataset::Conversions => store.read(|tables| {
                let ledger = &tables.conversions;
                let mut rows: Vec<usize> =
                    (0..ledger.len()).filter(|&row_idx| self.has_conversion(&ledger[row_idx])).collect();
                // Stable, so rows of the same millisecond keep arrival order.
                rows.sort_by_key(|&row_idx| ledger[row_idx].row.time_ms);
                in_batches(rows, |chunk| Ok(ledger_to_batch(chunk.iter().map(|&row_idx| &ledger[row_idx]))))
            }),
            Dataset::Quarantine => {
                // Quarantined input has no trusted keys: the ticket parser
                // refuses filters on it.
                let mut rows = store.read(|tables| {
                    tables.quarantine.iter().filter(|row| self.in_range(row.time_ms)).cloned().collect::<Vec<_>>()
                });
                rows.sort_by_key(|row| row.time_ms);
                in_batches(rows, |chunk| Ok(quarantine_to_batch(&chunk)))
            }
            Dataset::Alerts => {
                // A finding without keys (an edge, quarantined input)
                // passes only a ticket that filters on no key.
                let unfiltered = self.affiliate_id.is_none() && self.campaign_id.is_none() && self.sub1.is_none();
                let keep = |time_ms: i64, keys: Option<(u32, u32, &str)>| {
                    self.in_range(time_ms)
                        && keys.map_or(unfiltered, |(affiliate_id, campaign_id, sub1)| {
                            self.matches(affiliate_id, campaign_id, sub1)
                        })
                };
                in_batches(store.alerts(crate::store::now_ms(), &keep), |chunk| Ok(alerts_to_batch(&chunk)))
            }
        }
    }

    /// What a follower of this query sees of `applied`: its rows that pass
    /// the filters (rollups as deltas, not totals: the counters the edge
    /// shipped and the money that moved, by key and currency; conversions
    /// and quarantine in the batch's order), with `applied_at` last;
    /// `None` when no row passes.
    pub(crate) fn follow_batch(&self, applied: &Applied) -> Result<Option<RecordBatch>, ArrowError> {
        let batch = &applied.batch;
        let rows = match self.dataset {
            Dataset::Rollups => {
                let groups = self.follow_groups(applied);
                (!groups.is_empty()).then(|| self.rollups_to_batch(groups.into_iter().collect())).transpose()?
            }
            Dataset::Conversions => {
                let rows: Vec<&Conversion> =
                    applied.conversions.iter().filter(|conversion| self.has_conversion(conversion)).collect();
                (!rows.is_empty()).then(|| ledger_to_batch(rows.into_iter()))
            }
            Dataset::Quarantine => {
                // The ticket parser refuses filters here.
                let rows: Vec<_> = batch.quarantine.iter().filter(|row| self.in_range(row.time_ms)).cloned().collect();
                (!rows.is_empty()).then(|| quarantine_to_batch(&rows))
            }
            // Findings are derived, not applied: the ticket parser refuses
            // to follow them.
            Dataset::Alerts => None,
        };
        let Some(rows) = rows else { return Ok(None) };
        let applied_at =
            TimestampMillisecondArray::from_value(applied.applied_at_ms, rows.num_rows()).with_timezone("UTC");
        let mut columns = rows.columns().to_vec();
        columns.push(Arc::new(applied_at));
        // Checks the columns against the schema (types, nullability) again.
        RecordBatch::try_new(self.schema(), columns).map(Some)
    }

    /// The rollup deltas of `applied` that pass the filters, grouped (time
    /// as stored: UTC minutes, whatever the buckets).
    pub(crate) fn follow_groups(&self, applied: &Applied) -> BTreeMap<GroupKey, GroupTotals> {
        let mut groups: BTreeMap<GroupKey, GroupTotals> = BTreeMap::new();
        for (key, counts) in &applied.batch.rollups {
            if self.has_rollup(key) {
                groups.entry(self.group_by.key(key)).or_default().counts.merge(counts);
            }
        }
        for (key, currency, delta) in &applied.money {
            if self.has_rollup(key) {
                let totals = groups.entry(self.group_by.key(key)).or_default();
                totals.money.entry(*currency).or_default().add(delta);
            }
        }
        groups
    }

    fn in_range(&self, time_ms: i64) -> bool {
        self.from_ms.is_none_or(|from_ms| time_ms >= from_ms) && self.to_ms.is_none_or(|to_ms| time_ms < to_ms)
    }

    fn has_rollup(&self, key: &RollupKey) -> bool {
        self.in_range(key.minute_ms) && self.matches(key.affiliate_id, key.campaign_id, &key.sub1)
    }

    fn has_conversion(&self, conversion: &Conversion) -> bool {
        let row = &conversion.row;
        self.in_range(row.time_ms) && self.matches(row.affiliate_id, row.campaign_id, &row.sub1)
    }

    /// Whether a row with these keys passes the ticket's filters.
    fn matches(&self, affiliate_id: u32, campaign_id: u32, sub1: &str) -> bool {
        self.affiliate_id.is_none_or(|wanted| wanted == affiliate_id)
            && self.campaign_id.is_none_or(|wanted| wanted == campaign_id)
            && self.sub1.as_deref().is_none_or(|wanted| wanted == sub1)
    }

    /// The rollups and money of `tables` that pass the filters, summed by
    /// group, time as the start of its bucket.
    pub(crate) fn group_rollups(&self, tables: &Tables) -> Result<BTreeMap<GroupKey, GroupTotals>, ArrowError> {
        // Rollups and money are ordered by minute first, so the time range
        // is a range scan rather than a filter over everything.
        let lower = RollupKey {
            minute_ms: self.from_ms.unwrap_or(i64::MIN),
            affiliate_id: 0,
            campaign_id: 0,
            sub1: String::new(),
        };
        let mut groups: BTreeMap<GroupKey, GroupTotals> = BTreeMap::new();
        let mut bucketer = Bucketer::new(&self.buckets);
        for (key, counts) in tables.rollups.range(&lower..) {
            if self.to_ms.is_some_and(|to_ms| key.minute_ms >= to_ms) {
                break;
            }
            if self.matches(key.affiliate_id, key.campaign_id, &key.sub1) {
                groups.entry(self.group_key(key, &mut bucketer)?).or_default().counts.merge(counts);
            }
        }
        // The money scan starts over at the first minute: the bucketer
        // still looks up a zone once per bucket.
        let mut bucketer = Bucketer::new(&self.buckets);
        for ((key, currency), totals) in tables.money.range((lower, Currency::least())..) {
            if self.to_ms.is_some_and(|to_ms| key.minute_ms >= to_ms) {
                break;
            }
            if self.matches(key.affiliate_id, key.campaign_id, &key.sub1) {
                let group = groups.entry(self.group_key(key, &mut bucketer)?).or_default();
                group.money.entry(*currency).or_default().add(totals);
            }
        }
        Ok(groups)
    }

    /// The group `key` counts in: its grouped columns, time as the start
    /// of its bucket.
    fn group_key(&self, key: &RollupKey, bucketer: &mut Bucketer) -> Result<GroupKey, ArrowError> {
        let mut group_key = self.group_by.key(key);
        if let Some(minute_ms) = group_key.0 {
            group_key.0 = Some(bucketer.start_of(minute_ms)?);
        }
        Ok(group_key)
    }

    /// One row per group and currency (see the module's documentation).
    fn rollups_to_batch(&self, groups: Vec<(GroupKey, GroupTotals)>) -> Result<RecordBatch, ArrowError> {
        // At most; zero money rows are left out below.
        let n_rows = groups.iter().map(|(_, group)| group.money.len().max(1)).sum();
        let mut time = TimestampMillisecondBuilder::with_capacity(n_rows).with_timezone(self.buckets.zone_name());
        let mut affiliate_id = UInt32Builder::with_capacity(n_rows);
        let mut campaign_id = UInt32Builder::with_capacity(n_rows);
        let mut sub1 = StringBuilder::with_capacity(n_rows, n_rows * 8);
        let mut counters: [UInt64Builder; N_COUNTERS] = std::array::from_fn(|_| UInt64Builder::with_capacity(n_rows));
        let mut currency = StringBuilder::with_capacity(n_rows, n_rows * 3);
        let mut money: [Int64Builder; 3] = std::array::from_fn(|_| Int64Builder::with_capacity(n_rows));
        for ((group_time, group_affiliate_id, group_campaign_id, group_sub1), mut group) in groups {
            // Money that nets to zero (a sale and its reversal) is no money.
            group.money.retain(|_, totals| *totals != MoneyTotals::default());
            let zero = RollupCounts::default();
            let by_currency: Vec<(Option<Currency>, MoneyTotals)> = if group.money.is_empty() {
                vec![(None, MoneyTotals::default())]
            } else {
                group.money.into_iter().map(|(currency, totals)| (Some(currency), totals)).collect()
            };
            for (row_idx, (row_currency, totals)) in by_currency.into_iter().enumerate() {
                // A column not grouped by is `None` in every key and its
                // builder is left out below, so these appends of `None`
                // are never read.
                time.append_option(group_time);
                affiliate_id.append_option(group_affiliate_id);
                campaign_id.append_option(group_campaign_id);
                sub1.append_option(group_sub1.clone());
                let counts = if row_idx == 0 { &group.counts } else { &zero };
                for (builder, value) in counters.iter_mut().zip(counts.values()) {
                    builder.append_value(value);
                }
                currency.append_option(row_currency.as_ref().map(Currency::code));
                let amounts = [totals.revenue_minor, totals.commission_minor, totals.parent_commission_minor];
                for ((builder, amount), field) in money.iter_mut().zip(amounts).zip(&MONEY_FIELDS[1..]) {
                    let amount = i64::try_from(amount).map_err(|_| {
                        ArrowError::ComputeError(format!(
                            "{} {amount} in {} does not fit an i64: narrow the query",
                            field.name(),
                            row_currency.as_ref().map_or("", Currency::code),
                        ))
                    })?;
                    builder.append_value(amount);
                }
            }
        }
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(4 + N_COUNTERS + MONEY_FIELDS.len());
        for column in self.group_by.columns() {
            columns.push(match column {
                GroupColumn::Minute => Arc::new(time.finish()),
                GroupColumn::AffiliateId => Arc::new(affiliate_id.finish()),
                GroupColumn::CampaignId => Arc::new(campaign_id.finish()),
                GroupColumn::Sub1 => Arc::new(sub1.finish()),
            });
        }
        columns.extend(counters.iter_mut().map(|builder| Arc::new(builder.finish()) as ArrayRef));
        columns.push(Arc::new(currency.finish()));
        columns.extend(money.iter_mut().map(|builder| Arc::new(builder.finish()) as ArrayRef));
        // Checks the columns against the schema (types, nullability) again.
        RecordBatch::try_new(self.rows_schema(), columns)
    }
}

/// Builds one batch per [`ANSWER_BATCH_ROWS`] of `rows`, in order.
fn in_batches<T>(
    rows: impl IntoIterator<Item = T>,
    mut build: impl FnMut(Vec<T>) -> Result<RecordBatch, ArrowError>,
) -> Result<Vec<RecordBatch>, ArrowError> {
    let mut rows = rows.into_iter();
    let mut batches = Vec::new();
    loop {
        let chunk: Vec<T> = rows.by_ref().take(ANSWER_BATCH_ROWS).collect();
        if chunk.is_empty() {
            return Ok(batches);
        }
        batches.push(build(chunk)?);
    }
}

#[cfg(test)]
mod tests;
