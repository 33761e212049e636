//! What a Flight ticket asks for, and how it is answered from the store.
//!
//! A [`Query`] names a dataset, a half-open time range `[from, to)`,
//! optional filters (affiliate, campaign, sub1) and, for rollups, the
//! columns to group by. Its answer is one Arrow batch whose schema
//! [`Query::schema`] tells in advance, so `GetFlightInfo` and `DoGet`
//! agree even when no row matches.
//!
//! A follow query (`follow.rs`) is answered instead batch by batch, from
//! each applied batch's own rows ([`Query::follow_batch`]): the same
//! filters, no grouping, and an `applied_at` column last.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::builder::{StringBuilder, TimestampMillisecondBuilder, UInt32Builder, UInt64Builder};
use arrow_array::{ArrayRef, RecordBatch, TimestampMillisecondArray};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use edgetally_protocol::batch::{
    CONVERSION_SCHEMA, N_COUNTERS, QUARANTINE_SCHEMA, ROLLUP_SCHEMA, RollupCounts, RollupKey, conversions_to_batch,
    quarantine_to_batch, rollups_to_batch,
};

use crate::follow::Applied;
use crate::store::{Store, Tables};

/// The datasets the aggregator serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dataset {
    Rollups,
    Conversions,
    Quarantine,
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
    /// Stream each batch applied from now on instead of answering once.
    pub(crate) follow: bool,
}

/// The column a follow answer ends with: when the aggregator applied the
/// batch the row came in.
pub(crate) const APPLIED_AT_COLUMN: &str = "applied_at";

/// A rollup key with the columns not grouped by left out.
type GroupKey = (Option<i64>, Option<u32>, Option<u32>, Option<String>);

/// The counter columns every rollup answer ends with, in ROLLUP_SCHEMA.
const ROLLUP_COUNTER_COLUMNS: std::ops::Range<usize> = 4..4 + N_COUNTERS;

// === impl Dataset ===

impl Dataset {
    pub(crate) const ALL: [Dataset; 3] = [Dataset::Rollups, Dataset::Conversions, Dataset::Quarantine];

    pub(crate) fn parse(name: &str) -> Option<Dataset> {
        Dataset::ALL.into_iter().find(|dataset| dataset.as_str() == name)
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Dataset::Rollups => "rollups",
            Dataset::Conversions => "conversions",
            Dataset::Quarantine => "quarantine",
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
            follow: false,
        }
    }

    /// The schema of the answer: for rollups, the group columns with their
    /// ROLLUP_SCHEMA types followed by the counters; for conversions,
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
            Dataset::Conversions => CONVERSION_SCHEMA.clone(),
            Dataset::Quarantine => QUARANTINE_SCHEMA.clone(),
            Dataset::Rollups => {
                let group_fields = self.group_by.columns().map(|column| ROLLUP_SCHEMA.field(column as usize));
                let counter_fields = ROLLUP_COUNTER_COLUMNS.map(|column_idx| ROLLUP_SCHEMA.field(column_idx));
                let fields: Vec<Field> = group_fields.chain(counter_fields).cloned().collect();
                Arc::new(Schema::new(fields))
            }
        }
    }

    /// Answers the query from `store`, rows sorted by the group columns
    /// (rollups) or by time (conversions). Ignores `follow`: the answer is
    /// what the store holds now, in [`Query::rows_schema`].
    pub(crate) fn execute(&self, store: &Store) -> Result<RecordBatch, ArrowError> {
        match self.dataset {
            Dataset::Rollups => {
                let groups = store.read(|tables| self.group_rollups(tables));
                self.rollups_to_batch(groups)
            }
            Dataset::Conversions => {
                let mut rows = store.read(|tables| {
                    tables
                        .conversions
                        .iter()
                        .filter(|row| {
                            self.in_range(row.time_ms) && self.matches(row.affiliate_id, row.campaign_id, &row.sub1)
                        })
                        .cloned()
                        .collect::<Vec<_>>()
                });
                // Stable, so rows of the same millisecond keep arrival order.
                rows.sort_by_key(|row| row.time_ms);
                Ok(conversions_to_batch(&rows))
            }
            Dataset::Quarantine => {
                // Quarantined input has no trusted keys: the ticket parser
                // refuses filters on it.
                let mut rows = store.read(|tables| {
                    tables.quarantine.iter().filter(|row| self.in_range(row.time_ms)).cloned().collect::<Vec<_>>()
                });
                rows.sort_by_key(|row| row.time_ms);
                Ok(quarantine_to_batch(&rows))
            }
        }
    }

    /// What a follower of this query sees of `applied`: its rows that pass
    /// the filters, in the batch's order (rollups as the per-batch deltas
    /// the edge shipped, not totals), with `applied_at` last; `None` when
    /// no row passes.
    pub(crate) fn follow_batch(&self, applied: &Applied) -> Result<Option<RecordBatch>, ArrowError> {
        let batch = &applied.batch;
        let rows = match self.dataset {
            Dataset::Rollups => {
                let rows: Vec<&(RollupKey, RollupCounts)> = batch
                    .rollups
                    .iter()
                    .filter(|(key, _)| {
                        self.in_range(key.minute_ms) && self.matches(key.affiliate_id, key.campaign_id, &key.sub1)
                    })
                    .collect();
                (!rows.is_empty()).then(|| rollups_to_batch(rows.iter().map(|(key, counts)| (key, counts))))
            }
            Dataset::Conversions => {
                let rows: Vec<_> = batch
                    .conversions
                    .iter()
                    .filter(|row| {
                        self.in_range(row.time_ms) && self.matches(row.affiliate_id, row.campaign_id, &row.sub1)
                    })
                    .cloned()
                    .collect();
                (!rows.is_empty()).then(|| conversions_to_batch(&rows))
            }
            Dataset::Quarantine => {
                // The ticket parser refuses filters here.
                let rows: Vec<_> = batch.quarantine.iter().filter(|row| self.in_range(row.time_ms)).cloned().collect();
                (!rows.is_empty()).then(|| quarantine_to_batch(&rows))
            }
        };
        let Some(rows) = rows else { return Ok(None) };
        let applied_at =
            TimestampMillisecondArray::from_value(applied.applied_at_ms, rows.num_rows()).with_timezone("UTC");
        let mut columns = rows.columns().to_vec();
        columns.push(Arc::new(applied_at));
        // Checks the columns against the schema (types, nullability) again.
        RecordBatch::try_new(self.schema(), columns).map(Some)
    }

    fn in_range(&self, time_ms: i64) -> bool {
        self.from_ms.is_none_or(|from_ms| time_ms >= from_ms) && self.to_ms.is_none_or(|to_ms| time_ms < to_ms)
    }

    /// Whether a row with these keys passes the ticket's filters.
    fn matches(&self, affiliate_id: u32, campaign_id: u32, sub1: &str) -> bool {
        self.affiliate_id.is_none_or(|wanted| wanted == affiliate_id)
            && self.campaign_id.is_none_or(|wanted| wanted == campaign_id)
            && self.sub1.as_deref().is_none_or(|wanted| wanted == sub1)
    }

    fn group_rollups(&self, tables: &Tables) -> BTreeMap<GroupKey, RollupCounts> {
        // Rollups are ordered by minute first, so the time range is a range
        // scan rather than a filter over everything.
        let lower = RollupKey {
            minute_ms: self.from_ms.unwrap_or(i64::MIN),
            affiliate_id: 0,
            campaign_id: 0,
            sub1: String::new(),
        };
        let mut groups: BTreeMap<GroupKey, RollupCounts> = BTreeMap::new();
        for (key, counts) in tables.rollups.range(lower..) {
            if self.to_ms.is_some_and(|to_ms| key.minute_ms >= to_ms) {
                break;
            }
            if !self.matches(key.affiliate_id, key.campaign_id, &key.sub1) {
                continue;
            }
            groups.entry(self.group_by.key(key)).or_default().merge(counts);
        }
        groups
    }

    fn rollups_to_batch(&self, groups: BTreeMap<GroupKey, RollupCounts>) -> Result<RecordBatch, ArrowError> {
        let n_rows = groups.len();
        let mut minute = TimestampMillisecondBuilder::with_capacity(n_rows).with_timezone("UTC");
        let mut affiliate_id = UInt32Builder::with_capacity(n_rows);
        let mut campaign_id = UInt32Builder::with_capacity(n_rows);
        let mut sub1 = StringBuilder::with_capacity(n_rows, n_rows * 8);
        let mut counters: [UInt64Builder; N_COUNTERS] = std::array::from_fn(|_| UInt64Builder::with_capacity(n_rows));
        for ((group_minute, group_affiliate_id, group_campaign_id, group_sub1), counts) in groups {
            // A column not grouped by is `None` in every key and its builder
            // is left out below, so these appends of `None` are never read.
            minute.append_option(group_minute);
            affiliate_id.append_option(group_affiliate_id);
            campaign_id.append_option(group_campaign_id);
            sub1.append_option(group_sub1);
            for (builder, value) in counters.iter_mut().zip(counts.values()) {
                builder.append_value(value);
            }
        }
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(4 + N_COUNTERS);
        for column in self.group_by.columns() {
            columns.push(match column {
                GroupColumn::Minute => Arc::new(minute.finish()),
                GroupColumn::AffiliateId => Arc::new(affiliate_id.finish()),
                GroupColumn::CampaignId => Arc::new(campaign_id.finish()),
                GroupColumn::Sub1 => Arc::new(sub1.finish()),
            });
        }
        columns.extend(counters.iter_mut().map(|builder| Arc::new(builder.finish()) as ArrayRef));
        // Checks the columns against the schema (types, nullability) again.
        RecordBatch::try_new(self.rows_schema(), columns)
    }
}

#[cfg(test)]
mod tests;
