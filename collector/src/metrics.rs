//! The collector's Prometheus metrics, all in one place.
//!
//! Label sets are bounded: routes, kinds and reasons are static strings from
//! fixed sets, never request data.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use edgetally_protocol::fraud::N_FLAGS;
use edgetally_protocol::{Event, EventKind, Flag};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::dedup::{Dedup, DedupStats};
use crate::fraud::RulesState;
use crate::tally::JournalState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabels {
    pub(crate) kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RejectLabels {
    /// Where the event came in: `pixel` or `events`.
    pub(crate) source: &'static str,
    pub(crate) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SourceLabels {
    pub(crate) source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    pub(crate) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RuleLabels {
    pub(crate) rule: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FieldLabels {
    pub(crate) field: &'static str,
}

/// Upper bounds of the lateness buckets, in seconds: on time (a pixel
/// without `ts` is received when it happens), a retry, a postback queued
/// for minutes, an hour, a batch upload of a day, a week.
const LATENESS_BUCKETS_SECS: [f64; 9] = [1.0, 10.0, 60.0, 300.0, 3_600.0, 21_600.0, 86_400.0, 259_200.0, 604_800.0];

/// Upper bounds of the shipping lag buckets, in seconds: a batch acked
/// within a flush or two (250 ms each by default), a slow or retried round
/// trip, then an outage's backlog draining after minutes or an hour.
const SHIPPING_LAG_BUCKETS_SECS: [f64; 11] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0, 60.0, 300.0, 3_600.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StatusLabels {
    pub(crate) status: &'static str,
}

pub(crate) struct Metrics {
    registry: Registry,
    events_accepted: Family<KindLabels, Counter>,
    /// The counters of `events_accepted` per kind, resolved once: counting
    /// an accepted event is then one atomic add, with no label lookup.
    accepted_by_kind: [Counter; 4],
    /// Receive time minus event time of accepted events.
    events_lateness: Histogram,
    /// Accepted conversions without a field that makes them traceable.
    conversions_missing: Family<FieldLabels, Counter>,
    /// Its counters per field, resolved once: order_id, click_id.
    missing_by_field: [Counter; 2],
    pub(crate) events_rejected: Family<RejectLabels, Counter>,
    events_duplicate: Family<SourceLabels, Counter>,
    /// Accepted events a fraud rule set apart, by rule.
    events_flagged: Family<RuleLabels, Counter>,
    /// Its counters in [`Flag::ALL`] order, resolved once.
    flagged_by_rule: [Counter; N_FLAGS],
    fraud_flood_visitors: Gauge,
    fraud_flood_untracked: Counter,
    /// `fraud_flood_untracked` at the last scrape.
    fraud_flood_untracked_seen: AtomicU64,
    dedup_memory_bytes: Gauge,
    dedup_keys: Gauge,
    dedup_checks: Counter,
    dedup_bloom_maybe: Counter,
    dedup_bloom_false_positive: Counter,
    dedup_evicted_early: Counter,
    /// Bloom false positives per new key checked, since start.
    dedup_bloom_false_positive_ratio: Gauge<f64, AtomicU64>,
    /// The dedup counters at the last scrape, to add only what is new.
    dedup_seen: Mutex<DedupStats>,
    pub(crate) requests_refused: Family<ReasonLabels, Counter>,
    pub(crate) request_received_bytes: Counter,
    pub(crate) connections_open: Gauge,
    pub(crate) requests_in_flight: Gauge,
    pub(crate) uplink_batches: Family<StatusLabels, Counter>,
    pub(crate) uplink_sent_bytes: Counter,
    pub(crate) uplink_retries: Counter,
    pub(crate) uplink_refused: Counter,
    pub(crate) uplink_pending_batches: Gauge,
    pub(crate) spool_bytes: Gauge,
    pub(crate) spool_full: Gauge,
    pub(crate) spool_errors: Counter,
    /// 1 while the last seal could not be written to the spool.
    pub(crate) spool_failing: Gauge,
    /// Seals spooled, by `kind`: `full` or `rows` (conversions and
    /// quarantine only).
    pub(crate) seals: Family<KindLabels, Counter>,
    pub(crate) spool_oldest_unacked_seconds: Gauge<f64, AtomicU64>,
    /// Seal to acknowledgement of each applied or skipped batch.
    pub(crate) uplink_shipping_lag: Histogram,
    pub(crate) spool_recovered_frames: Counter,
    pub(crate) spool_corrupt_records: Counter,
    pub(crate) spool_torn_tails: Counter,
    pub(crate) journal_bytes: Gauge,
    pub(crate) journal_unjournaled: Counter,
    pub(crate) journal_replayed: Counter,
    pub(crate) journal_unreadable: Counter,
    pub(crate) journal_rows_spooled: Counter,
    /// `journal_unjournaled` at the last scrape.
    journal_unjournaled_seen: AtomicU64,
    pub(crate) rollup_keys: Gauge,
    pub(crate) conversions_pending: Gauge,
    pub(crate) quarantine_pending: Gauge,
    pub(crate) quarantine_discarded: Counter,
    /// Warnings and errors the log's rate limit held back.
    log_lines_suppressed: Counter,
    /// `edgetally_service::logs::suppressed_total` at the last scrape.
    log_lines_suppressed_seen: AtomicU64,
}

// === impl Metrics ===

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("edgetally_collector");
        let metrics = Metrics {
            events_accepted: Family::default(),
            accepted_by_kind: Default::default(),
            events_lateness: Histogram::new(LATENESS_BUCKETS_SECS),
            conversions_missing: Family::default(),
            missing_by_field: Default::default(),
            events_rejected: Family::default(),
            events_duplicate: Family::default(),
            events_flagged: Family::default(),
            flagged_by_rule: Default::default(),
            fraud_flood_visitors: Gauge::default(),
            fraud_flood_untracked: Counter::default(),
            fraud_flood_untracked_seen: AtomicU64::new(0),
            dedup_memory_bytes: Gauge::default(),
            dedup_keys: Gauge::default(),
            dedup_checks: Counter::default(),
            dedup_bloom_maybe: Counter::default(),
            dedup_bloom_false_positive: Counter::default(),
            dedup_evicted_early: Counter::default(),
            dedup_bloom_false_positive_ratio: Gauge::default(),
            dedup_seen: Mutex::new(DedupStats::default()),
            requests_refused: Family::default(),
            request_received_bytes: Counter::default(),
            connections_open: Gauge::default(),
            requests_in_flight: Gauge::default(),
            uplink_batches: Family::default(),
            uplink_sent_bytes: Counter::default(),
            uplink_retries: Counter::default(),
            uplink_refused: Counter::default(),
            uplink_pending_batches: Gauge::default(),
            spool_bytes: Gauge::default(),
            spool_full: Gauge::default(),
            spool_errors: Counter::default(),
            spool_failing: Gauge::default(),
            seals: Family::default(),
            spool_oldest_unacked_seconds: Gauge::default(),
            uplink_shipping_lag: Histogram::new(SHIPPING_LAG_BUCKETS_SECS),
            spool_recovered_frames: Counter::default(),
            spool_corrupt_records: Counter::default(),
            spool_torn_tails: Counter::default(),
            journal_bytes: Gauge::default(),
            journal_unjournaled: Counter::default(),
            journal_replayed: Counter::default(),
            journal_unreadable: Counter::default(),
            journal_rows_spooled: Counter::default(),
            journal_unjournaled_seen: AtomicU64::new(0),
            rollup_keys: Gauge::default(),
            conversions_pending: Gauge::default(),
            quarantine_pending: Gauge::default(),
            quarantine_discarded: Counter::default(),
            log_lines_suppressed: Counter::default(),
            log_lines_suppressed_seen: AtomicU64::new(0),
            registry: Registry::default(),
        };
        registry.register("events_accepted", "Events accepted, by kind", metrics.events_accepted.clone());
        registry.register(
            "events_rejected",
            "Events rejected by validation, by source and reason",
            metrics.events_rejected.clone(),
        );
        registry.register(
            "events_duplicate",
            "Events answered as repeats of one already counted, by source",
            metrics.events_duplicate.clone(),
        );
        registry.register(
            "events_flagged",
            "Accepted events a fraud rule counted apart from clean ones, by rule (also in events_accepted)",
            metrics.events_flagged.clone(),
        );
        registry.register(
            "fraud_flood_visitors",
            "Visitors whose clicks this minute the click flood rule counts",
            metrics.fraud_flood_visitors.clone(),
        );
        registry.register(
            "fraud_flood_untracked",
            "Clicks the click flood rule could not count because its visitor map was full",
            metrics.fraud_flood_untracked.clone(),
        );
        registry.register(
            "dedup_memory_bytes",
            "Bytes allocated for the dedup window",
            metrics.dedup_memory_bytes.clone(),
        );
        registry.register("dedup_keys", "Keys held in the dedup window", metrics.dedup_keys.clone());
        registry.register("dedup_checks", "Keys checked against the dedup window", metrics.dedup_checks.clone());
        registry.register(
            "dedup_bloom_maybe",
            "Checks the bloom filter answered maybe-seen",
            metrics.dedup_bloom_maybe.clone(),
        );
        registry.register(
            "dedup_bloom_false_positive",
            "Maybe-seen answers the exact store found new",
            metrics.dedup_bloom_false_positive.clone(),
        );
        registry.register(
            "dedup_evicted_early",
            "Keys forgotten before the window ended because the window was full",
            metrics.dedup_evicted_early.clone(),
        );
        registry.register(
            "dedup_bloom_false_positive_ratio",
            "Bloom false positives per new key checked, since start",
            metrics.dedup_bloom_false_positive_ratio.clone(),
        );
        registry.register(
            "requests_refused",
            "Requests refused before any event was read, by reason",
            metrics.requests_refused.clone(),
        );
        registry.register(
            "request_received_bytes",
            "Bytes of HTTP request heads and bodies received",
            metrics.request_received_bytes.clone(),
        );
        registry.register(
            "uplink_batches",
            "Batches acknowledged by the aggregator, by status (apply, skip, refuse)",
            metrics.uplink_batches.clone(),
        );
        registry.register("connections_open", "Open HTTP connections", metrics.connections_open.clone());
        registry.register(
            "requests_in_flight",
            "HTTP requests being handled (bounded by --requests-in-flight-max); health checks and scrapes are not counted",
            metrics.requests_in_flight.clone(),
        );
        registry.register("uplink_sent_bytes", "Frame bytes sent to the aggregator", metrics.uplink_sent_bytes.clone());
        registry.register(
            "uplink_retries",
            "Failed attempts to ship (connect, stream, ack, time-out); each is retried after a backoff",
            metrics.uplink_retries.clone(),
        );
        registry.register(
            "uplink_refused",
            "Connections the aggregator refused: unknown edge id or wrong token",
            metrics.uplink_refused.clone(),
        );
        registry.register(
            "uplink_pending_batches",
            "Sealed batches in the spool waiting for an acknowledgement",
            metrics.uplink_pending_batches.clone(),
        );
        registry.register("spool_bytes", "Bytes of spool segments on disk", metrics.spool_bytes.clone());
        registry.register(
            "spool_full",
            "1 while the spool holds its bound and sealing waits (counts keep growing in memory)",
            metrics.spool_full.clone(),
        );
        registry.register("spool_errors", "Seals that could not be written to the spool", metrics.spool_errors.clone());
        registry.register(
            "spool_failing",
            "1 while the last seal could not be written to the spool (its counts wait in memory and the journal)",
            metrics.spool_failing.clone(),
        );
        registry.register(
            "seals",
            "Seals spooled, by kind: full, or rows (conversions and quarantine, the traffic counters left for the rollup interval)",
            metrics.seals.clone(),
        );
        registry.register(
            "spool_oldest_unacked_seconds",
            "Age of the oldest batch not yet acknowledged by the aggregator",
            metrics.spool_oldest_unacked_seconds.clone(),
        );
        registry.register(
            "uplink_shipping_lag_seconds",
            "Time from sealing a batch to the aggregator's acknowledgement, per batch (spool and retries included)",
            metrics.uplink_shipping_lag.clone(),
        );
        registry.register(
            "spool_recovered_frames",
            "Frames read back from the spool at start",
            metrics.spool_recovered_frames.clone(),
        );
        registry.register(
            "spool_corrupt_records",
            "Spool records skipped at start because their CRC did not match",
            metrics.spool_corrupt_records.clone(),
        );
        registry.register(
            "spool_torn_tails",
            "Spool segments found cut short at start (a crash during an append)",
            metrics.spool_torn_tails.clone(),
        );
        registry.register("journal_bytes", "Bytes of journal segments on disk", metrics.journal_bytes.clone());
        registry.register(
            "journal_unjournaled",
            "Changes counted but not journaled (journal full or failing); a crash would lose them",
            metrics.journal_unjournaled.clone(),
        );
        registry.register(
            "journal_replayed",
            "Journal entries replayed into the tally at start",
            metrics.journal_replayed.clone(),
        );
        registry.register(
            "journal_unreadable",
            "Journal entries skipped at start because they could not be read",
            metrics.journal_unreadable.clone(),
        );
        registry.register(
            "journal_rows_spooled",
            "Journal entries not replayed at start because a rows-only seal had spooled them (conversions and quarantine rows)",
            metrics.journal_rows_spooled.clone(),
        );
        registry.register("rollup_keys", "Rollup keys held in memory, not yet sealed", metrics.rollup_keys.clone());
        registry.register(
            "conversions_pending",
            "Conversion rows held in memory, not yet sealed",
            metrics.conversions_pending.clone(),
        );
        let accepted_by_kind = EventKind::ALL
            .map(|kind| metrics.events_accepted.get_or_create(&KindLabels { kind: kind.as_str() }).clone());
        registry.register(
            "quarantine_pending",
            "Quarantined inputs held in memory, not yet sealed",
            metrics.quarantine_pending.clone(),
        );
        registry.register(
            "quarantine_discarded",
            "Rejected inputs not kept because the quarantine was full (still counted by reason)",
            metrics.quarantine_discarded.clone(),
        );
        registry.register(
            "log_lines_suppressed",
            "Warning and error log lines held back by the per-call-site rate limit",
            metrics.log_lines_suppressed.clone(),
        );
        registry.register(
            "events_lateness_seconds",
            "Receive time minus event time of accepted events (0 for events in the future)",
            metrics.events_lateness.clone(),
        );
        registry.register(
            "conversions_missing",
            "Accepted conversions without order_id (no dedup by order, across edges or in time) or click_id (not attributed to a click)",
            metrics.conversions_missing.clone(),
        );
        let missing_by_field = ["order_id", "click_id"]
            .map(|field| metrics.conversions_missing.get_or_create(&FieldLabels { field }).clone());
        let flagged_by_rule =
            Flag::ALL.map(|flag| metrics.events_flagged.get_or_create(&RuleLabels { rule: flag.as_str() }).clone());
        Metrics { registry, accepted_by_kind, missing_by_field, flagged_by_rule, ..metrics }
    }

    /// Counts an accepted event: its kind, how late it came, and for a
    /// conversion the traceability fields it lacks.
    pub(crate) fn accepted(&self, event: &Event, now_ms: i64) {
        self.accepted_by_kind[event.kind as usize].inc();
        self.events_lateness.observe(now_ms.saturating_sub(event.time_ms).max(0) as f64 / 1_000.0);
        if event.kind.is_conversion() {
            let missing = [
                event.order_id.is_none(),
                event.click_id.is_none(),
                event.kind == EventKind::Sale && event.money.is_none(),
            ];
            for (counter, missing) in self.missing_by_field.iter().zip(missing) {
                if missing {
                    counter.inc();
                }
            }
        }
    }

    /// Counts an accepted event a fraud rule set apart.
    pub(crate) fn flagged(&self, flag: Flag) {
        self.flagged_by_rule[flag.index()].inc();
    }

    /// Brings the fraud rules' metrics up to date; called per scrape.
    pub(crate) fn observe_rules(&self, state: RulesState) {
        self.fraud_flood_visitors.set(state.flood_visitors as i64);
        let seen = self.fraud_flood_untracked_seen.swap(state.n_flood_untracked, Ordering::Relaxed);
        self.fraud_flood_untracked.inc_by(state.n_flood_untracked.saturating_sub(seen));
    }

    pub(crate) fn duplicate(&self, source: &'static str) {
        self.events_duplicate.get_or_create(&SourceLabels { source }).inc();
    }

    /// Brings the dedup metrics up to date; called per scrape, not per event.
    pub(crate) fn observe_dedup(&self, dedup: &Dedup) {
        let stats = dedup.stats();
        // Poisoning would need a panic in the few lines below, which only
        // do arithmetic; the last stats are still a fine base if it happens.
        let mut seen = self.dedup_seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.dedup_memory_bytes.set(dedup.memory_bytes() as i64);
        self.dedup_keys.set(stats.keys as i64);
        self.dedup_checks.inc_by(stats.checks.saturating_sub(seen.checks));
        self.dedup_bloom_maybe.inc_by(stats.bloom_maybe.saturating_sub(seen.bloom_maybe));
        self.dedup_bloom_false_positive.inc_by(stats.bloom_false_positive.saturating_sub(seen.bloom_false_positive));
        self.dedup_evicted_early.inc_by(stats.evicted_early.saturating_sub(seen.evicted_early));
        let n_new = stats.checks.saturating_sub(stats.duplicates);
        let ratio = if n_new == 0 { 0.0 } else { stats.bloom_false_positive as f64 / n_new as f64 };
        self.dedup_bloom_false_positive_ratio.set(ratio);
        *seen = stats;
    }

    /// Brings the journal metrics up to date; called per scrape.
    pub(crate) fn observe_journal(&self, state: JournalState) {
        self.journal_bytes.set(state.bytes as i64);
        let seen = self.journal_unjournaled_seen.swap(state.n_unjournaled, Ordering::Relaxed);
        self.journal_unjournaled.inc_by(state.n_unjournaled.saturating_sub(seen));
    }

    /// Brings the log metrics up to date; called per scrape.
    pub(crate) fn observe_logs(&self) {
        let total = edgetally_service::logs::suppressed_total();
        let seen = self.log_lines_suppressed_seen.swap(total, Ordering::Relaxed);
        self.log_lines_suppressed.inc_by(total.saturating_sub(seen));
    }

    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encoding into a String");
        out
    }
}
