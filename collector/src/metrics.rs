//! The collector's Prometheus metrics, all in one place.
//!
//! Label sets are bounded: routes, kinds and reasons are static strings from
//! fixed sets, never request data.

use edgetally_protocol::EventKind;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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
pub(crate) struct ReasonLabels {
    pub(crate) reason: &'static str,
}

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
    pub(crate) events_rejected: Family<RejectLabels, Counter>,
    pub(crate) requests_refused: Family<ReasonLabels, Counter>,
    pub(crate) request_received_bytes: Counter,
    pub(crate) uplink_batches: Family<StatusLabels, Counter>,
    pub(crate) uplink_sent_bytes: Counter,
    pub(crate) uplink_errors: Counter,
    pub(crate) uplink_pending_batches: Gauge,
    pub(crate) rollup_keys: Gauge,
    pub(crate) conversions_pending: Gauge,
}

// === impl Metrics ===

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("edgetally_collector");
        let metrics = Metrics {
            events_accepted: Family::default(),
            accepted_by_kind: Default::default(),
            events_rejected: Family::default(),
            requests_refused: Family::default(),
            request_received_bytes: Counter::default(),
            uplink_batches: Family::default(),
            uplink_sent_bytes: Counter::default(),
            uplink_errors: Counter::default(),
            uplink_pending_batches: Gauge::default(),
            rollup_keys: Gauge::default(),
            conversions_pending: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("events_accepted", "Events accepted, by kind", metrics.events_accepted.clone());
        registry.register(
            "events_rejected",
            "Events rejected by validation, by source and reason",
            metrics.events_rejected.clone(),
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
        registry.register("uplink_sent_bytes", "Frame bytes sent to the aggregator", metrics.uplink_sent_bytes.clone());
        registry.register("uplink_errors", "Failed attempts to ship a batch", metrics.uplink_errors.clone());
        registry.register(
            "uplink_pending_batches",
            "Sealed batches waiting for an acknowledgement",
            metrics.uplink_pending_batches.clone(),
        );
        registry.register("rollup_keys", "Rollup keys held in memory, not yet sealed", metrics.rollup_keys.clone());
        registry.register(
            "conversions_pending",
            "Conversion rows held in memory, not yet sealed",
            metrics.conversions_pending.clone(),
        );
        let accepted_by_kind = EventKind::ALL
            .map(|kind| metrics.events_accepted.get_or_create(&KindLabels { kind: kind.as_str() }).clone());
        Metrics { registry, accepted_by_kind, ..metrics }
    }

    pub(crate) fn accepted(&self, kind: EventKind) {
        self.accepted_by_kind[kind as usize].inc();
    }

    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encoding into a String");
        out
    }
}
