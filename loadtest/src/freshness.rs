//! Freshness: how long an accepted conversion takes from the request that
//! carried it to its row in the aggregator's `follow` stream of
//! `conversions`.
//!
//! Load tasks register each lead or sale by its order id just before
//! sending ([`Tracker::sent`]) and settle it once answered
//! ([`Tracker::answered`]); the follow task reports the order ids of every
//! row it receives ([`Tracker::arrived`]). Either of answer and row can
//! come first, so an entry keeps whichever it saw until the other one
//! comes. Only conversions touch the tracker, a small share of the
//! traffic, and each touch is one short lock.
//!
//! **Invariant:** an accepted conversion the tracker registered is counted
//! exactly once, either as seen (in the histogram) or as unseen at the
//! end. One sent while [`PENDING_MAX`] were waiting is not registered and
//! is counted as untracked instead; a second send of an order id already
//! waiting (a duplicate) is not registered either, since the collector
//! answers it as a duplicate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use arrow_array::RecordBatch;
use arrow_array::cast::AsArray;
use arrow_flight::Ticket;
use arrow_flight::decode::FlightRecordBatchStream;
use futures::TryStreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The follow ticket: every new conversion row.
const FOLLOW_TICKET: &str = r#"{"dataset":"conversions","follow":true}"#;

/// Conversions sent and not yet both answered and seen. A conversion
/// waits here about one flush interval plus a round trip (well under a
/// second), so even 10,000 conversions/s keep a few thousand entries; the
/// bound only matters when the aggregator stops delivering. At about
/// 100 bytes an entry it caps the map near 10 MiB.
pub(crate) const PENDING_MAX: usize = 100_000;

/// Freshness is recorded in microseconds from 1 µs to 10 minutes with
/// three significant digits; slower rows are recorded as 10 minutes.
const FRESHNESS_US_MAX: u64 = 600_000_000;

/// The shared state of one run's freshness measurement.
pub(crate) struct Tracker {
    inner: Mutex<Inner>,
    /// Woken when the last accepted conversion is seen or the follow
    /// stream fails.
    settled: Notify,
}

struct Inner {
    pending: HashMap<String, Pending>,
    freshness_us: Histogram<u64>,
    /// Accepted conversions not yet seen.
    n_unseen: u64,
    /// Conversions sent while `pending` was full, so not measured.
    n_untracked: u64,
    /// Why the follow stream stopped, if it did.
    follow_error: Option<String>,
}

/// What is known of one conversion in flight.
struct Pending {
    sent_at: Instant,
    accepted: bool,
    /// When its row arrived, if before its answer.
    arrived_at: Option<Instant>,
}

/// The report's freshness figures.
#[derive(Debug, Serialize)]
pub(crate) struct Freshness {
    /// Accepted conversions seen in the follow stream.
    pub(crate) count: u64,
    /// Accepted conversions not seen before the wait ended.
    pub(crate) unseen: u64,
    /// Conversions sent while [`PENDING_MAX`] were waiting: not measured.
    pub(crate) untracked: u64,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p90_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    pub(crate) max_ms: Option<f64>,
    /// Why the follow stream ended early, if it did.
    pub(crate) follow_error: Option<String>,
}

// === impl Tracker ===

impl Tracker {
    pub(crate) fn new() -> Tracker {
        Tracker {
            inner: Mutex::new(Inner {
                pending: HashMap::new(),
                // The bounds are constants that satisfy the constructor's rules.
                freshness_us: Histogram::new_with_bounds(1, FRESHNESS_US_MAX, 3).expect("valid histogram bounds"),
                n_unseen: 0,
                n_untracked: 0,
                follow_error: None,
            }),
            settled: Notify::new(),
        }
    }

    /// Registers a conversion about to be sent; true when this send owns
    /// the entry and must settle it with [`Tracker::answered`].
    pub(crate) fn sent(&self, order_id: &str, sent_at: Instant) -> bool {
        let mut inner = self.lock();
        if inner.pending.contains_key(order_id) {
            return false;
        }
        if inner.pending.len() >= PENDING_MAX {
            inner.n_untracked += 1;
            return false;
        }
        inner.pending.insert(order_id.to_owned(), Pending { sent_at, accepted: false, arrived_at: None });
        true
    }

    /// Settles a conversion this send registered: accepted ones wait for
    /// (or match) their row, the rest are forgotten.
    pub(crate) fn answered(&self, order_id: &str, accepted: bool) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        if !accepted {
            inner.pending.remove(order_id);
            return;
        }
        let Some(pending) = inner.pending.get_mut(order_id) else { return };
        match pending.arrived_at {
            Some(arrived_at) => {
                let freshness = arrived_at - pending.sent_at;
                inner.pending.remove(order_id);
                record(&mut inner.freshness_us, freshness);
            }
            None => {
                pending.accepted = true;
                inner.n_unseen += 1;
            }
        }
    }

    /// The rows of `batch`, received at `arrived_at`. Order ids this run
    /// did not send (other traffic) are ignored.
    pub(crate) fn arrived(&self, batch: &RecordBatch, arrived_at: Instant) {
        let Some(order_ids) = batch.column_by_name("order_id") else { return };
        let Some(order_ids) = order_ids.as_string_opt::<i32>() else { return };
        let mut inner = self.lock();
        let inner = &mut *inner;
        for order_id in order_ids.iter().flatten() {
            let Some(pending) = inner.pending.get_mut(order_id) else { continue };
            if pending.accepted {
                let freshness = arrived_at - pending.sent_at;
                inner.pending.remove(order_id);
                inner.n_unseen -= 1;
                record(&mut inner.freshness_us, freshness);
            } else {
                pending.arrived_at.get_or_insert(arrived_at);
            }
        }
        if inner.n_unseen == 0 {
            self.settled.notify_waiters();
        }
    }

    /// Records why the follow stream stopped; nothing more will be seen.
    fn failed(&self, error: String) {
        self.lock().follow_error.get_or_insert(error);
        self.settled.notify_waiters();
    }

    /// Waits until every accepted conversion was seen, the follow stream
    /// failed, or `deadline`.
    pub(crate) async fn wait_seen(&self, deadline: Instant) {
        loop {
            let settled = self.settled.notified();
            tokio::pin!(settled);
            // Registered before the check, so a wake-up in between is kept.
            settled.as_mut().enable();
            {
                let inner = self.lock();
                if inner.n_unseen == 0 || inner.follow_error.is_some() {
                    return;
                }
            }
            tokio::select! {
                _ = settled => {}
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    /// The figures so far.
    pub(crate) fn report(&self) -> Freshness {
        let inner = self.lock();
        let histogram = &inner.freshness_us;
        let ms = |us: u64| us as f64 / 1000.0;
        let quantile = |quantile: f64| (!histogram.is_empty()).then(|| ms(histogram.value_at_quantile(quantile)));
        Freshness {
            count: histogram.len(),
            unseen: inner.n_unseen,
            untracked: inner.n_untracked,
            p50_ms: quantile(0.50),
            p90_ms: quantile(0.90),
            p99_ms: quantile(0.99),
            max_ms: (!histogram.is_empty()).then(|| ms(histogram.max())),
            follow_error: inner.follow_error.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Poisoned only if a panic hit while booking, which the run reports
        // as a failed task anyway.
        self.inner.lock().expect("freshness lock is not poisoned")
    }
}

fn record(histogram: &mut Histogram<u64>, freshness: Duration) {
    let us = freshness.as_micros().min(u128::from(FRESHNESS_US_MAX)) as u64;
    histogram.saturating_record(us.max(1));
}

/// Opens the follow stream on `flight_url`; once this returns, every
/// conversion the aggregator applies from now on is in it. The stream is
/// read by a spawned task that reports rows to `tracker` until it ends.
/// `token` is the Flight bearer token, if the aggregator needs one.
pub(crate) async fn follow(flight_url: &str, token: Option<&str>, tracker: Arc<Tracker>) -> anyhow::Result<()> {
    let mut client = crate::query::connect(flight_url, token).await?;
    let stream = client.do_get(Ticket::new(FOLLOW_TICKET)).await.context("following conversions")?;
    tokio::spawn(read(stream, tracker));
    Ok(())
}

async fn read(mut stream: FlightRecordBatchStream, tracker: Arc<Tracker>) {
    let error = loop {
        match stream.try_next().await {
            Ok(Some(batch)) => tracker.arrived(&batch, Instant::now()),
            Ok(None) => break "the follow stream ended".to_owned(),
            Err(error) => break error.to_string(),
        }
    };
    tracing::warn!(%error, "Follow stream stopped; freshness stops here.");
    tracker.failed(error);
}

#[cfg(test)]
mod tests;
