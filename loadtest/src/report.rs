//! The run report: achieved rate, answers and errors by kind, latency
//! percentiles, freshness (with `--flight`), and bytes per accepted event
//! read from the collectors' metrics, as a table or as JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio_rustls::TlsConnector;

use crate::freshness::Freshness;
use crate::http1::{Connection, Request};
use crate::load::Outcome;

/// The collector metrics the report reads, summed over all collectors.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CollectorMetrics {
    pub(crate) received_bytes: f64,
    pub(crate) shipped_bytes: f64,
    pub(crate) accepted_events: f64,
    /// Unshipped state: pending batches plus held rollup keys and
    /// conversion rows. Zero once everything accepted has been shipped.
    pub(crate) unshipped: f64,
}

/// Reads and sums the metrics of every collector, over the same transport
/// the load uses (plain or TLS, always HTTP/1.1).
pub(crate) async fn scrape(targets: &[String], tls: Option<&TlsConnector>) -> anyhow::Result<CollectorMetrics> {
    let mut sum = CollectorMetrics::default();
    for target in targets {
        let read = async {
            let stream = crate::load::connect(target, tls).await?;
            let mut connection = Connection::new(stream);
            let host = target.as_str();
            let request = Request {
                post: false,
                path_and_query: "/metrics",
                host,
                user_agent: "edgetally-loadtest",
                forwarded_for: None,
                content_type: "",
                body: &[],
            };
            Ok::<_, crate::load::SendError>(connection.exchange(&request, true).await?)
        };
        let answer = tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .with_context(|| format!("reading {target}/metrics: timed out"))?
            .with_context(|| format!("reading {target}/metrics"))?;
        anyhow::ensure!(answer.status == 200, "{target}/metrics answered {}", answer.status);
        let text = String::from_utf8_lossy(&answer.body);
        let value = |prefix: &str| -> f64 {
            text.lines()
                .filter(|line| line.starts_with(prefix))
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        sum.received_bytes += value("edgetally_collector_request_received_bytes_total");
        sum.shipped_bytes += value("edgetally_collector_uplink_sent_bytes_total");
        sum.accepted_events += value("edgetally_collector_events_accepted_total");
        sum.unshipped += value("edgetally_collector_uplink_pending_batches ")
            + value("edgetally_collector_rollup_keys ")
            + value("edgetally_collector_conversions_pending ");
    }
    Ok(sum)
}

/// Waits until every collector has shipped what it accepted, up to `limit`.
pub(crate) async fn drained(
    targets: &[String],
    tls: Option<&TlsConnector>,
    limit: Duration,
) -> anyhow::Result<CollectorMetrics> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let metrics = scrape(targets, tls).await?;
        if metrics.unshipped == 0.0 || tokio::time::Instant::now() >= deadline {
            return Ok(metrics);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) mode: String,
    pub(crate) target_rate: Option<f64>,
    pub(crate) duration_secs: f64,
    pub(crate) requests_answered: u64,
    pub(crate) achieved_rate: f64,
    pub(crate) events_accepted: u64,
    /// Answers per request label and outcome.
    pub(crate) answers: BTreeMap<String, BTreeMap<String, u64>>,
    /// Requests without an answer, by error kind.
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) latency_ms: Option<Percentiles>,
    /// From a lead's or sale's send to its row in the aggregator's follow
    /// stream; absent without `--flight`.
    pub(crate) freshness: Option<Freshness>,
    pub(crate) bytes: Option<WireBytes>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Percentiles {
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) p99_9: f64,
    pub(crate) max: f64,
}

/// Bytes per accepted event, from the collectors' metrics.
#[derive(Debug, Serialize)]
pub(crate) struct WireBytes {
    pub(crate) received_per_event: f64,
    pub(crate) shipped_per_event: f64,
    pub(crate) reduction: f64,
}

// === impl Report ===

impl Report {
    pub(crate) fn new(
        outcome: &Outcome,
        target_rate: Option<f64>,
        before: Option<CollectorMetrics>,
        after: Option<CollectorMetrics>,
        freshness: Option<Freshness>,
    ) -> Report {
        let seconds = outcome.elapsed.as_secs_f64().max(f64::EPSILON);
        let latency = &outcome.latency_us;
        let latency_ms = (!latency.is_empty()).then(|| Percentiles {
            p50: latency.value_at_quantile(0.50) as f64 / 1000.0,
            p90: latency.value_at_quantile(0.90) as f64 / 1000.0,
            p99: latency.value_at_quantile(0.99) as f64 / 1000.0,
            p99_9: latency.value_at_quantile(0.999) as f64 / 1000.0,
            max: latency.max() as f64 / 1000.0,
        });
        let bytes = match (before, after) {
            (Some(before), Some(after)) if after.accepted_events > before.accepted_events => {
                let events = after.accepted_events - before.accepted_events;
                let received = (after.received_bytes - before.received_bytes) / events;
                let shipped = (after.shipped_bytes - before.shipped_bytes) / events;
                Some(WireBytes {
                    received_per_event: received,
                    shipped_per_event: shipped,
                    reduction: if shipped > 0.0 { received / shipped } else { 0.0 },
                })
            }
            _ => None,
        };
        Report {
            mode: if target_rate.is_some() { "open-loop".into() } else { "max".into() },
            target_rate,
            duration_secs: seconds,
            requests_answered: outcome.n_answered,
            achieved_rate: outcome.n_answered as f64 / seconds,
            events_accepted: outcome.ledger.n_accepted(),
            answers: outcome
                .answers
                .iter()
                .map(|(label, outcomes)| {
                    (label.as_str().to_owned(), outcomes.iter().map(|(k, v)| (k.clone(), *v)).collect())
                })
                .collect(),
            errors: outcome.errors.iter().map(|(kind, n)| ((*kind).to_owned(), *n)).collect(),
            latency_ms,
            freshness,
            bytes,
        }
    }

    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let target = self.target_rate.map_or("max".to_owned(), |rate| format!("{rate:.0}/s"));
        out.push_str(&format!(
            "{} run: {} requests answered in {:.1} s = {:.0} requests/s (target {target}); {} events accepted\n",
            self.mode, self.requests_answered, self.duration_secs, self.achieved_rate, self.events_accepted
        ));
        out.push_str("\nanswers\n");
        for (label, outcomes) in &self.answers {
            for (outcome, n) in outcomes {
                out.push_str(&format!("  {label:<20} {outcome:<24} {n:>10}\n"));
            }
        }
        out.push_str("\nerrors (no answer)\n");
        if self.errors.is_empty() {
            out.push_str("  none\n");
        }
        for (kind, n) in &self.errors {
            out.push_str(&format!("  {kind:<45} {n:>10}\n"));
        }
        let percentiles = |name: &str, value: &Option<Percentiles>, out: &mut String| match value {
            Some(p) => out.push_str(&format!(
                "{name:<10} p50 {:>8.3}  p90 {:>8.3}  p99 {:>8.3}  p99.9 {:>8.3}  max {:>8.3}  (ms)\n",
                p.p50, p.p90, p.p99, p.p99_9, p.max
            )),
            None => out.push_str(&format!("{name:<10} n/a\n")),
        };
        out.push('\n');
        percentiles("latency", &self.latency_ms, &mut out);
        match &self.freshness {
            Some(freshness) => {
                let ms = |value: Option<f64>| value.map_or("n/a".to_owned(), |value| format!("{value:.1}"));
                out.push_str(&format!(
                    "freshness  p50 {:>8}  p90 {:>8}  p99 {:>8}  max {:>8}  (ms) over {} conversions; {} unseen, {} untracked\n",
                    ms(freshness.p50_ms),
                    ms(freshness.p90_ms),
                    ms(freshness.p99_ms),
                    ms(freshness.max_ms),
                    freshness.count,
                    freshness.unseen,
                    freshness.untracked,
                ));
                if let Some(error) = &freshness.follow_error {
                    out.push_str(&format!("           follow stream stopped early: {error}\n"));
                }
            }
            None => out.push_str("freshness  n/a (run with --flight to follow the aggregator)\n"),
        }
        match &self.bytes {
            Some(bytes) => out.push_str(&format!(
                "bytes      {:.1} received / {:.2} shipped per accepted event ({:.0}x fewer shipped)\n",
                bytes.received_per_event, bytes.shipped_per_event, bytes.reduction
            )),
            None => out.push_str("bytes      n/a\n"),
        }
        out
    }
}
