//! The `alerts` dataset: data-quality findings, derived from what the
//! store holds at the moment they are asked for.
//!
//! | kind | severity | one row per | what it says |
//! |---|---|---|---|
//! | `edge_silent` | `critical` | edge | an edge that has shipped before sent no batch for `edge_silent_ms` (its `time` is its last batch) |
//! | `duplicates` | `warning` | minute × affiliate × campaign × sub1 | events answered or booked as duplicates: repeated event IDs, order IDs or click IDs, and copies of a conversion from another edge |
//! | `quarantined` | `warning` | UTC minute × reason | input refused and quarantined, by reason |
//! | `bot_user_agent`, `click_flood`, `fast_conversion`, `no_click_id`, `over_daily_cap` | `warning` | minute × affiliate × campaign × sub1 | accepted events an edge's fraud rule of that name counted apart (`flagged_<rule>` in `rollups`; flagged conversions are `held` in `conversions`) |
//! | `click_volume` | `warning` | affiliate (last complete UTC hour) | clicks far from the affiliate's trailing day, by a robust z-score (`anomaly.rs`) |
//! | `conversion_rate` | `warning` | affiliate (last complete UTC hour) | conversions per click far from the trailing day's |
//!
//! Derived rather than stored, the findings need no log records of their
//! own and are the same after a restart as before it, except `edge_silent`:
//! when an edge last shipped is kept in memory only, so after a start an
//! edge known from the log is measured from the start. A finding is a
//! view of the data, not an event: it goes away when what caused it does
//! (retention, an edge shipping again).
//!
//! Rows sort by time, then kind. Only `duplicates`, the fraud rows and the
//! anomaly rows carry an affiliate, so an affiliate's scoped query (which always names
//! its affiliate) sees its own and nothing about edges or quarantined
//! input. Anomaly rows have no campaign: a query filtered on a campaign
//! leaves them out.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use arrow_array::builder::{StringBuilder, TimestampMillisecondBuilder, UInt32Builder, UInt64Builder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use edgetally_protocol::Flag;
use edgetally_protocol::event::MINUTE_MS;

use crate::store::Tables;

mod anomaly;

/// How long an edge may send nothing before it is reported silent: a
/// collector seals four times a second and keeps its connection alive, so
/// a minute without a batch is an edge down, cut off or without traffic.
pub const EDGE_SILENT_SECS_DEFAULT: u64 = 60;

/// Schema of an `alerts` answer.
pub(crate) static ALERTS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("time", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("severity", DataType::Utf8, false),
        Field::new("edge_id", DataType::UInt32, true),
        Field::new("affiliate_id", DataType::UInt32, true),
        Field::new("campaign_id", DataType::UInt32, true),
        Field::new("sub1", DataType::Utf8, true),
        Field::new("count", DataType::UInt64, false),
        Field::new("message", DataType::Utf8, false),
    ]))
});

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum AlertKind {
    EdgeSilent,
    Duplicates,
    /// Events an edge's fraud rule flagged.
    Flagged(Flag),
    Quarantined,
    ClickVolume,
    ConversionRate,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Alert {
    pub(crate) time_ms: i64,
    pub(crate) kind: AlertKind,
    pub(crate) edge_id: Option<u32>,
    pub(crate) affiliate_id: Option<u32>,
    pub(crate) campaign_id: Option<u32>,
    pub(crate) sub1: Option<String>,
    /// Events for `duplicates` and `quarantined`; seconds silent for
    /// `edge_silent`.
    pub(crate) count: u64,
    pub(crate) message: String,
}

/// When each edge last shipped, and how long it may be quiet.
#[derive(Debug, Clone, Default)]
pub(crate) struct EdgeWatch {
    /// Unix ms of each edge's last batch (applied or a resend), since start.
    pub(crate) last_batch_ms: std::collections::HashMap<u32, i64>,
    /// When watching began: edges known from the log but not heard from
    /// since are measured from here.
    pub(crate) since_ms: i64,
    /// `None`: edges are not watched.
    pub(crate) silent_ms: Option<i64>,
}

// === impl AlertKind ===

impl AlertKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AlertKind::EdgeSilent => "edge_silent",
            AlertKind::Duplicates => "duplicates",
            AlertKind::Flagged(flag) => flag.as_str(),
            AlertKind::Quarantined => "quarantined",
            AlertKind::ClickVolume => "click_volume",
            AlertKind::ConversionRate => "conversion_rate",
        }
    }

    pub(crate) fn severity(self) -> &'static str {
        match self {
            AlertKind::EdgeSilent => "critical",
            AlertKind::Duplicates
            | AlertKind::Flagged(_)
            | AlertKind::Quarantined
            | AlertKind::ClickVolume
            | AlertKind::ConversionRate => "warning",
        }
    }
}

// === impl EdgeWatch ===

impl EdgeWatch {
    /// The edges in `known` that have been quiet too long at `now_ms`.
    fn silent(&self, known: impl Iterator<Item = u32>, now_ms: i64) -> Vec<Alert> {
        let Some(silent_ms) = self.silent_ms else { return Vec::new() };
        let mut alerts: Vec<Alert> = known
            .filter_map(|edge_id| {
                let last_ms = self.last_batch_ms.get(&edge_id).copied().unwrap_or(self.since_ms);
                let quiet_ms = now_ms.saturating_sub(last_ms);
                (quiet_ms >= silent_ms).then(|| {
                    let quiet_secs = (quiet_ms / 1000) as u64;
                    Alert {
                        time_ms: last_ms,
                        kind: AlertKind::EdgeSilent,
                        edge_id: Some(edge_id),
                        affiliate_id: None,
                        campaign_id: None,
                        sub1: None,
                        count: quiet_secs,
                        message: format!("edge {edge_id} has shipped no batch for {quiet_secs} s"),
                    }
                })
            })
            .collect();
        alerts.sort_by_key(|alert| (alert.time_ms, alert.edge_id));
        alerts
    }
}

/// Which findings a query wants: called with a finding's time and, for a
/// finding on a rollup key, its `(affiliate_id, campaign_id, sub1)`.
pub(crate) type Keep<'a> = dyn Fn(i64, Option<(u32, u32, &str)>) -> bool + 'a;

/// Every finding in `tables` and `watch` at `now_ms`, sorted by time, then
/// kind; `keep` decides, before a row is built, which rollup keys and times
/// are wanted.
pub(crate) fn findings(
    tables: &Tables,
    edges: impl Iterator<Item = u32>,
    watch: &EdgeWatch,
    now_ms: i64,
    keep: &Keep<'_>,
) -> Vec<Alert> {
    let mut alerts: Vec<Alert> =
        watch.silent(edges, now_ms).into_iter().filter(|alert| keep(alert.time_ms, None)).collect();
    for (key, counts) in &tables.rollups {
        if (counts.duplicates == 0 && counts.n_flagged() == 0)
            || !keep(key.minute_ms, Some((key.affiliate_id, key.campaign_id, &key.sub1)))
        {
            continue;
        }
        for (flag, n_flagged) in Flag::ALL.into_iter().zip(counts.flagged) {
            if n_flagged == 0 {
                continue;
            }
            alerts.push(Alert {
                time_ms: key.minute_ms,
                kind: AlertKind::Flagged(flag),
                edge_id: None,
                affiliate_id: Some(key.affiliate_id),
                campaign_id: Some(key.campaign_id),
                sub1: Some(key.sub1.clone()),
                count: n_flagged,
                message: format!(
                    "{n_flagged} {} flagged {} for affiliate {} on campaign {}",
                    plural(n_flagged, "event", "events"),
                    flag.as_str(),
                    key.affiliate_id,
                    key.campaign_id
                ),
            });
        }
        if counts.duplicates == 0 {
            continue;
        }
        alerts.push(Alert {
            time_ms: key.minute_ms,
            kind: AlertKind::Duplicates,
            edge_id: None,
            affiliate_id: Some(key.affiliate_id),
            campaign_id: Some(key.campaign_id),
            sub1: Some(key.sub1.clone()),
            count: counts.duplicates,
            message: format!(
                "{} duplicate {} for affiliate {} on campaign {}",
                counts.duplicates,
                plural(counts.duplicates, "event", "events"),
                key.affiliate_id,
                key.campaign_id
            ),
        });
    }
    let mut quarantined: BTreeMap<(i64, &str), u64> = BTreeMap::new();
    for row in tables.quarantine.iter() {
        let minute_ms = row.time_ms.div_euclid(MINUTE_MS) * MINUTE_MS;
        if keep(minute_ms, None) {
            *quarantined.entry((minute_ms, row.reason.as_str())).or_default() += 1;
        }
    }
    alerts.extend(quarantined.into_iter().map(|((minute_ms, reason), n_rows)| Alert {
        time_ms: minute_ms,
        kind: AlertKind::Quarantined,
        edge_id: None,
        affiliate_id: None,
        campaign_id: None,
        sub1: None,
        count: n_rows,
        message: format!("{n_rows} {} quarantined: {reason}", plural(n_rows, "input", "inputs")),
    }));
    alerts.extend(anomaly::anomalies(tables, now_ms).into_iter().filter(|alert| {
        let affiliate_id = alert.affiliate_id.expect("anomalies are per affiliate");
        // No campaign: campaign id 0 matches no campaign filter.
        keep(alert.time_ms, Some((affiliate_id, 0, "")))
    }));
    // Stable: within one time and kind, rows keep the order built above.
    alerts.sort_by_key(|alert| (alert.time_ms, alert.kind));
    alerts
}

fn plural(n: u64, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}

/// The rows as an Arrow batch in [`ALERTS_SCHEMA`].
pub(crate) fn alerts_to_batch(rows: &[Alert]) -> RecordBatch {
    let n_rows = rows.len();
    let mut time = TimestampMillisecondBuilder::with_capacity(n_rows).with_timezone("UTC");
    let mut kind = StringBuilder::with_capacity(n_rows, n_rows * 12);
    let mut severity = StringBuilder::with_capacity(n_rows, n_rows * 8);
    let mut ids: [UInt32Builder; 3] = std::array::from_fn(|_| UInt32Builder::with_capacity(n_rows));
    let mut sub1 = StringBuilder::with_capacity(n_rows, n_rows * 8);
    let mut count = UInt64Builder::with_capacity(n_rows);
    let mut message = StringBuilder::with_capacity(n_rows, n_rows * 48);
    for row in rows {
        time.append_value(row.time_ms);
        kind.append_value(row.kind.as_str());
        severity.append_value(row.kind.severity());
        for (builder, id) in ids.iter_mut().zip([row.edge_id, row.affiliate_id, row.campaign_id]) {
            builder.append_option(id);
        }
        sub1.append_option(row.sub1.as_deref());
        count.append_value(row.count);
        message.append_value(&row.message);
    }
    let [edge_id, affiliate_id, campaign_id] = ids.map(|mut builder| Arc::new(builder.finish()) as ArrayRef);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(time.finish()),
        Arc::new(kind.finish()),
        Arc::new(severity.finish()),
        edge_id,
        affiliate_id,
        campaign_id,
        Arc::new(sub1.finish()),
        Arc::new(count.finish()),
        Arc::new(message.finish()),
    ];
    // The columns are built above in schema order with matching types.
    RecordBatch::try_new(ALERTS_SCHEMA.clone(), columns).expect("alert columns match ALERTS_SCHEMA")
}

#[cfg(test)]
mod tests;
