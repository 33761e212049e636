//! The live feed of the dashboard: `GET /api/stream`, Server-Sent Events.
//!
//! One hub task follows the store (one subscriber however many viewers
//! there are) and turns each applied batch into a [`Delta`]: its rollup
//! deltas summed over sub1, with the money that moved. The delta is
//! encoded once for unscoped viewers; an affiliate's stream encodes only
//! its own rows. Each stream is a task writing events into a small
//! bounded channel that is the response body.
//!
//! **Invariant:** a viewer never silently misses a delta. The hub is
//! subscribed from start, and a stream subscribes to the hub before it
//! sends `hello`, so everything applied after `hello` reaches it; a page
//! fetches its data after `hello` and applies deltas above the version it
//! read. A stream that falls [`STREAM_QUEUE_MAX`] deltas behind (or a hub
//! that falls behind the store) sends `resync`, and the page fetches
//! everything again. Resyncs are counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use edgetally_protocol::batch::RollupCounts;
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc, watch};
use tracing::debug;

use super::Scope;
use crate::follow::Applied;
use crate::follow::Feed;
use crate::query::{Dataset, GroupBy, GroupColumn, Query};
use crate::store::{MoneyTotals, Store, now_ms};

/// Streams open at once; past it a viewer gets 503 and its page retries
/// with backoff. Each costs a task, a channel of [`STREAM_BUFFER`] events
/// and its share of the hub's queue.
pub(crate) const STREAMS_MAX: usize = 512;

/// Deltas a stream may fall behind the hub by before it is told to
/// resync: at four batches a second per edge, tens of seconds of a few
/// edges, far more than sending one event takes.
pub(crate) const STREAM_QUEUE_MAX: usize = 256;

/// Encoded events waiting to be written to one viewer's connection.
pub(crate) const STREAM_BUFFER: usize = 8;

/// How often a stream says it is alive, with the data version and the
/// time of the last applied batch, so the page can show its freshness.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// What the hub tells every stream.
#[derive(Debug)]
pub(crate) enum HubEvent {
    Delta(Delta),
    /// The hub fell behind the store and missed batches.
    Resync,
}

/// One applied batch as the dashboard sees it.
#[derive(Debug)]
pub(crate) struct Delta {
    rows: Vec<DeltaRow>,
    head: DeltaHead,
    /// The whole delta as an SSE event, for viewers that see every row.
    event: Bytes,
}

#[derive(Debug, Clone, Copy, Serialize)]
struct DeltaHead {
    version: u64,
    applied_at_ms: i64,
    edge_id: u32,
}

#[derive(Debug, Serialize)]
struct DeltaRow {
    minute_ms: i64,
    affiliate_id: u32,
    campaign_id: u32,
    impressions: u64,
    clicks: u64,
    unique_clicks: u64,
    leads: u64,
    sales: u64,
    duplicates: u64,
    /// Events a fraud rule flagged, every rule together.
    flagged: u64,
    money: Vec<DeltaMoney>,
}

#[derive(Debug, Serialize)]
struct DeltaMoney {
    currency: String,
    revenue_minor: String,
    commission_minor: String,
    parent_commission_minor: String,
}

#[derive(Serialize)]
struct DeltaJson<'a> {
    #[serde(flatten)]
    head: DeltaHead,
    rows: Vec<&'a DeltaRow>,
}

/// The hub's side: where deltas are sent, and the streams' bound.
#[derive(Debug)]
pub(crate) struct Hub {
    sender: broadcast::Sender<Arc<HubEvent>>,
    streams: Arc<Semaphore>,
    n_resyncs: AtomicU64,
}

// === impl Delta ===

impl Delta {
    fn of(applied: &Applied) -> Delta {
        let mut query = Query::whole(Dataset::Rollups);
        query.group_by = GroupBy::NONE;
        for column in [GroupColumn::Minute, GroupColumn::AffiliateId, GroupColumn::CampaignId] {
            query.group_by.insert(column);
        }
        let rows: Vec<DeltaRow> = query
            .follow_groups(applied)
            .into_iter()
            .map(|((minute_ms, affiliate_id, campaign_id, _), totals)| {
                let RollupCounts { impressions, clicks, unique_clicks, leads, sales, duplicates, .. } = totals.counts;
                let flagged = totals.counts.n_flagged();
                let money = totals
                    .money
                    .iter()
                    .filter(|(_, money)| **money != MoneyTotals::default())
                    .map(|(currency, money)| DeltaMoney {
                        currency: currency.code().to_owned(),
                        revenue_minor: money.revenue_minor.to_string(),
                        commission_minor: money.commission_minor.to_string(),
                        parent_commission_minor: money.parent_commission_minor.to_string(),
                    })
                    .collect();
                DeltaRow {
                    minute_ms: minute_ms.unwrap_or_default(),
                    affiliate_id: affiliate_id.unwrap_or_default(),
                    campaign_id: campaign_id.unwrap_or_default(),
                    impressions,
                    clicks,
                    unique_clicks,
                    leads,
                    sales,
                    duplicates,
                    flagged,
                    money,
                }
            })
            .collect();
        let head = DeltaHead {
            version: applied.version,
            applied_at_ms: applied.applied_at_ms,
            edge_id: applied.batch.edge_id,
        };
        let event = encode(head, rows.iter());
        Delta { rows, head, event }
    }

    /// The event for a viewer of `scope`; `None` when no row is its.
    fn event_for(&self, scope: Scope) -> Option<Bytes> {
        match scope {
            Scope::All => Some(self.event.clone()),
            Scope::Affiliate(affiliate_id) => {
                let mut rows = self.rows.iter().filter(|row| row.affiliate_id == affiliate_id).peekable();
                rows.peek()?;
                Some(encode(self.head, rows))
            }
        }
    }
}

fn encode<'a>(head: DeltaHead, rows: impl Iterator<Item = &'a DeltaRow>) -> Bytes {
    event("delta", &DeltaJson { head, rows: rows.collect() })
}

/// `event: <name>` and one `data:` line of compact JSON (which never
/// holds a newline).
pub(crate) fn event(name: &str, data: &impl Serialize) -> Bytes {
    let json = serde_json::to_string(data).expect("dashboard events serialize");
    Bytes::from(format!("event: {name}\ndata: {json}\n\n"))
}

// === impl Hub ===

impl Hub {
    pub(crate) fn new() -> Hub {
        let (sender, _) = broadcast::channel(STREAM_QUEUE_MAX);
        Hub { sender, streams: Arc::new(Semaphore::new(STREAMS_MAX)), n_resyncs: AtomicU64::new(0) }
    }

    /// A place for one more stream; `None` when [`STREAMS_MAX`] are open.
    pub(crate) fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.streams.clone().try_acquire_owned().ok()
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<HubEvent>> {
        self.sender.subscribe()
    }

    pub(crate) fn n_streams(&self) -> u64 {
        (STREAMS_MAX - self.streams.available_permits()) as u64
    }

    pub(crate) fn n_resyncs(&self) -> u64 {
        self.n_resyncs.load(Ordering::Relaxed)
    }

    fn resynced(&self) {
        self.n_resyncs.fetch_add(1, Ordering::Relaxed);
    }
}

/// Follows the store's `feed` until `stop`: each applied batch becomes a
/// delta for the streams (built only while one is open). The feed is
/// taken before the aggregator serves HTTP, so no batch applied while a
/// stream is open escapes it.
pub(crate) async fn run_hub(mut feed: Feed, hub: Arc<Hub>, mut stop: watch::Receiver<bool>) {
    loop {
        let applied = tokio::select! {
            applied = feed.recv() => applied,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        let event = match applied {
            Ok(applied) if hub.sender.receiver_count() > 0 => HubEvent::Delta(Delta::of(&applied)),
            Ok(_) => continue,
            Err(RecvError::Lagged(n_missed)) => {
                debug!(n_missed, "Dashboard hub fell behind the store; streams resync.");
                HubEvent::Resync
            }
            // The store stopped publishing: shutdown.
            Err(RecvError::Closed) => return,
        };
        // Fails only when no stream is open, which is fine.
        let _ = hub.sender.send(Arc::new(event));
    }
}

/// What one stream needs to keep checking that its viewer may still see.
pub(crate) trait Viewer: Send + 'static {
    /// The viewer's scope now; `None` once its token is no longer valid
    /// (removed by a reload, or an expired JWT): the stream then ends.
    fn scope_now(&self) -> Option<Scope>;
}

/// Runs one viewer's stream into `out` until the viewer leaves, its token
/// stops being valid, or `stop`.
pub(crate) async fn run_stream(
    store: Arc<Store>,
    hub: Arc<Hub>,
    viewer: impl Viewer,
    mut scope: Scope,
    out: mpsc::Sender<Bytes>,
    mut stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    #[derive(Serialize)]
    struct Hello {
        version: u64,
        now_ms: i64,
    }
    #[derive(Serialize)]
    struct Heartbeat {
        version: u64,
        now_ms: i64,
        last_applied_ms: Option<i64>,
    }
    #[derive(Serialize)]
    struct Resync {
        reason: &'static str,
    }
    // Subscribed before `hello`: see the module's invariant.
    let mut deltas = hub.subscribe();
    let (version, _) = store.version();
    if out.send(event("hello", &Hello { version, now_ms: now_ms() })).await.is_err() {
        return;
    }
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let message = tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return,
            _ = heartbeat.tick() => {
                let Some(now_scope) = viewer.scope_now() else { return };
                scope = now_scope;
                let (version, last_applied_ms) = store.version();
                Some(event("heartbeat", &Heartbeat { version, now_ms: now_ms(), last_applied_ms }))
            }
            received = deltas.recv() => match received {
                Ok(hub_event) => match hub_event.as_ref() {
                    HubEvent::Delta(delta) => delta.event_for(scope),
                    HubEvent::Resync => {
                        hub.resynced();
                        Some(event("resync", &Resync { reason: "the dashboard fell behind the aggregator" }))
                    }
                },
                Err(RecvError::Lagged(_)) => {
                    hub.resynced();
                    Some(event("resync", &Resync { reason: "this stream fell behind" }))
                }
                Err(RecvError::Closed) => return,
            },
        };
        let Some(message) = message else { continue };
        tokio::select! {
            sent = out.send(message) => if sent.is_err() {
                // The viewer left.
                return;
            },
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}
