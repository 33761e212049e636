//! The aggregator's Prometheus metrics, all in one place.
//!
//! Every value is read from [`Stats`] (and the log's fsync histogram) at
//! scrape time by one collector, so the metrics can never disagree with
//! `Aggregator::stats` and the hot path pays nothing for them. Label sets
//! are bounded: the only labels are a batch's status and a Flight refusal's
//! reason, each from a fixed set.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::{Stats, StatsSource};

/// Upper bounds of the fsync latency buckets, in microseconds. A local SSD
/// fsyncs in 50 µs to 2 ms, network and spinning disks in 2 to 50 ms; past
/// 250 ms acks stall visibly, and past a second the disk is failing. The
/// histogram behind them keeps three significant digits, so each edge is
/// exact to 0.1 %.
const FSYNC_BUCKETS_US: [u64; 13] =
    [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000];

/// Upper bounds of the conversion freshness buckets, in ms: a live
/// pipeline applies a conversion within a flush or two (250 ms each);
/// seconds mean a backlog, minutes an outage being caught up, hours late
/// postbacks.
const FRESHNESS_BUCKETS_MS: [u64; 12] =
    [250, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 300_000, 3_600_000, 86_400_000, 604_800_000];

pub(crate) struct Metrics {
    registry: Registry,
}

/// The counts of `histogram` per bucket ending at each of `bounds` (a
/// bucket's own count, not cumulative), then past the last as `u64::MAX`.
pub(crate) fn histogram_buckets(histogram: &hdrhistogram::Histogram<u64>, bounds: &[u64]) -> Vec<(u64, u64)> {
    let mut buckets = Vec::with_capacity(bounds.len() + 1);
    let mut low = 0;
    for &bound in bounds {
        buckets.push((bound, histogram.count_between(low, bound)));
        low = bound + 1;
    }
    let n_below: u64 = buckets.iter().map(|(_, count)| count).sum();
    buckets.push((u64::MAX, histogram.len() - n_below));
    buckets
}

/// Buckets in `unit`s per second (`1e6` for µs), `u64::MAX` as +Inf.
fn in_seconds(buckets: Vec<(u64, u64)>, units_per_second: f64) -> Vec<(f64, u64)> {
    buckets
        .into_iter()
        .map(|(bound, count)| (if bound == u64::MAX { f64::INFINITY } else { bound as f64 / units_per_second }, count))
        .collect()
}

/// Reads everything per scrape.
struct StatsCollector {
    source: Arc<StatsSource>,
}

// === impl Metrics ===

impl Metrics {
    pub(crate) fn new(source: Arc<StatsSource>) -> Metrics {
        let mut registry = Registry::with_prefix("edgetally_aggregator");
        registry.register_collector(Box::new(StatsCollector { source }));
        Metrics { registry }
    }

    /// The Prometheus text exposition (version 0.0.4).
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail, nor can our collector.
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry).expect("encoding into a String");
        out
    }
}

pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

// === impl StatsCollector ===

impl fmt::Debug for StatsCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatsCollector").finish_non_exhaustive()
    }
}

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let stats: Stats = self.source.stats();

        let mut batches = encoder.encode_descriptor(
            "batches",
            "Batches received from edges, by what was done: apply, skip (at or below the edge's high-water mark), refuse (malformed)",
            None,
            MetricType::Counter,
        )?;
        for (status, n_batches) in
            [("apply", stats.batches_applied), ("skip", stats.batches_skipped), ("refuse", stats.batches_refused)]
        {
            ConstCounter::new(n_batches).encode(batches.encode_family(&[("status", status)])?)?;
        }
        let mut flight_refused = encoder.encode_descriptor(
            "flight_refused",
            "Flight calls refused, by reason: unauthenticated (no, wrong or expired token), permission_denied (the role may not make the call or read what it asked for)",
            None,
            MetricType::Counter,
        )?;
        for (reason, n_calls) in [
            ("unauthenticated", stats.flight_refused_unauthenticated),
            ("permission_denied", stats.flight_refused_permission_denied),
        ] {
            ConstCounter::new(n_calls).encode(flight_refused.encode_family(&[("reason", reason)])?)?;
        }
        let mut dashboard_refused = encoder.encode_descriptor(
            "dashboard_refused",
            "Dashboard calls refused, by reason: unauthenticated (no, wrong or expired token), permission_denied (an edge token, or an affiliate asking for another's rows)",
            None,
            MetricType::Counter,
        )?;
        for (reason, n_calls) in [
            ("unauthenticated", stats.dashboard_refused_unauthenticated),
            ("permission_denied", stats.dashboard_refused_permission_denied),
        ] {
            ConstCounter::new(n_calls).encode(dashboard_refused.encode_family(&[("reason", reason)])?)?;
        }
        let counters = [
            ("edges_refused", "Edge connections refused: unknown edge, wrong token or no hello", stats.edges_refused),
            ("rollup_rows_applied", "Rollup rows of applied batches", stats.rollup_rows_applied),
            ("conversion_rows_applied", "Conversion rows of applied batches", stats.conversion_rows_applied),
            (
                "wal_records_replayed",
                "Write-ahead log records replayed at start (applied, or skipped as already in the snapshot)",
                stats.wal_records_replayed,
            ),
            (
                "wal_records_corrupt",
                "Write-ahead log records found damaged or undecodable at start, and skipped",
                stats.wal_records_corrupt,
            ),
            ("wal_torn_tails", "Interrupted appends truncated from the write-ahead log at start", stats.wal_torn_tails),
            ("snapshots_written", "Snapshots of the store written, each truncating the log", stats.snapshots_written),
            (
                "retention_days_dropped",
                "Distinct UTC days dropped from memory and disk by retention",
                stats.retention_days_dropped,
            ),
            (
                "retention_late_rows_dropped",
                "Rows of applied or replayed batches dropped because their UTC day was already dropped by retention",
                stats.retention_late_rows_dropped,
            ),
            (
                "followers_lagged",
                "Flight follow streams cut off because they fell a whole queue of batches behind",
                stats.followers_lagged,
            ),
            (
                "log_lines_suppressed",
                "Warning and error log lines held back by the per-call-site rate limit",
                edgetally_service::logs::suppressed_total(),
            ),
            (
                "dashboard_answers_computed",
                "Dashboard answers computed (once per call, parameters and data version)",
                stats.dashboard_answers_computed,
            ),
            (
                "dashboard_answers_shared",
                "Dashboard answers served from one computed before at the same data version",
                stats.dashboard_answers_shared,
            ),
            (
                "dashboard_streams_resynced",
                "Dashboard live streams told to fetch everything again because they fell behind",
                stats.dashboard_streams_resynced,
            ),
            (
                "dashboard_bad_requests",
                "Dashboard calls refused as malformed: an unknown call or parameter, a bad value",
                stats.dashboard_bad_requests,
            ),
            (
                "flight_sql_queries_refused",
                "Flight SQL queries refused with RESOURCE_EXHAUSTED because the most allowed at once were planning or running",
                stats.flight_sql_queries_refused,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)?;
        }
        let gauges = [
            ("wal_bytes", "Bytes in the write-ahead log's live segments", stats.wal_bytes),
            ("followers", "Flight follow streams open", stats.followers),
            ("partitions", "Parquet partition files the manifest lists", stats.partitions),
            ("partition_bytes", "Bytes of the Parquet partition files the manifest lists", stats.partition_bytes),
            ("flight_sql_queries", "Flight SQL queries planning or running now", stats.flight_sql_queries),
            ("dashboard_streams", "Dashboard live streams (Server-Sent Events) open", stats.dashboard_streams),
            (
                "dashboard_cache_entries",
                "Dashboard answers kept for the data version they were computed at",
                stats.dashboard_cache_entries,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }

        let (buckets_us, sum_us, count) = self.source.wal.fsync_buckets(&FSYNC_BUCKETS_US);
        let buckets = in_seconds(buckets_us, 1e6);
        let mut fsync = encoder.encode_descriptor(
            "wal_fsync_duration_seconds",
            "Time one group commit of the write-ahead log spent in fsync",
            None,
            MetricType::Histogram,
        )?;
        fsync.encode_histogram::<NoLabelSet>(sum_us as f64 / 1e6, count, &buckets, None)?;

        let (buckets_ms, sum_ms, count) = self.source.store.freshness_buckets(&FRESHNESS_BUCKETS_MS);
        let mut freshness = encoder.encode_descriptor(
            "conversion_freshness_seconds",
            "Event time to the moment it was applied here, of conversions booked live (not replayed): how far behind the numbers are",
            None,
            MetricType::Histogram,
        )?;
        freshness.encode_histogram::<NoLabelSet>(sum_ms as f64 / 1e3, count, &in_seconds(buckets_ms, 1e3), None)?;
        Ok(())
    }
}
