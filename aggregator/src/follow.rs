//! Follow: Flight `DoGet` streams that stay open and carry each batch the
//! store applies from now on (`{"dataset":…,"follow":true}`).
//!
//! [`Store::apply`](crate::store::Store::apply) publishes every applied
//! batch, with the time it was applied, on a `tokio::sync::broadcast`
//! channel of [`FOLLOW_QUEUE_MAX`] batches, under the store lock, so every
//! follower sees batches in apply order. Each follower filters and encodes
//! them for its own ticket in [`stream`].
//!
//! **Invariant:** a follower never silently misses a batch. One that falls
//! [`FOLLOW_QUEUE_MAX`] batches behind gets [`FollowError::Lagged`] naming
//! how many it missed, and its stream ends; the client reads again and
//! follows again. Lags are counted (`followers_lagged`).
//!
//! **Invariant:** replay at start publishes nothing: the store publishes
//! only between `Store::publish` (called once the log is replayed) and
//! `Store::stop_publishing` (at shutdown, which ends every follow stream
//! with [`FollowError::Stopped`] so the Flight server can drain).
//!
//! At most [`FOLLOWERS_MAX`] follow at once; past it a follow is refused
//! with [`FollowError::TooMany`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow_array::RecordBatch;
use arrow_schema::ArrowError;
use edgetally_protocol::Currency;
use edgetally_protocol::batch::RollupKey;
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, broadcast};
use tracing::{debug, warn};

use crate::ledger::Conversion;
use crate::query::Query;
use crate::store::{Batch, MoneyTotals};

/// Applied batches a follower may fall behind by before it is cut off. At
/// one batch per edge per 250 ms flush, 1024 batches is 2.5 s of 100 edges,
/// far more than encoding a batch takes. The queue holds a batch only until
/// the slowest follower has read it, so with no follower lagging it is
/// near empty; its worst case is 1024 decoded batches (typically tens of
/// KiB each, bounded by the 64 MiB frame). Tokio rounds a broadcast
/// capacity up to a power of two, so it is one.
pub(crate) const FOLLOW_QUEUE_MAX: usize = 1024;
const _: () = assert!(FOLLOW_QUEUE_MAX.is_power_of_two());

/// Concurrent follow streams. Each costs a task's worth of memory plus
/// its share of the queue, and filters and encodes every applied batch, so
/// past a few hundred the apply rate, not memory, is what they cost.
/// Dashboards follow once per viewer-facing process, not per viewer.
pub(crate) const FOLLOWERS_MAX: usize = 256;

/// One applied batch as followers see it.
#[derive(Debug)]
pub(crate) struct Applied {
    /// The store's data version once it was applied.
    pub(crate) version: u64,
    /// When the store applied it, Unix ms.
    pub(crate) applied_at_ms: i64,
    /// The batch's rollups and quarantine rows; its conversions are in
    /// `conversions`, as booked.
    pub(crate) batch: Batch,
    /// Conversions booked by the batch (copies of booked ones left out),
    /// or the one a status change changed.
    pub(crate) conversions: Vec<Conversion>,
    /// The change to the money rollups: booked conversions' money, or a
    /// rejected conversion's leaving (negative) and an un-rejected one's
    /// coming back.
    pub(crate) money: Vec<(RollupKey, Currency, MoneyTotals)>,
}

/// What follows one ticket receives from the store.
pub(crate) type Feed = broadcast::Receiver<Arc<Applied>>;

#[derive(Debug, thiserror::Error)]
pub(crate) enum FollowError {
    #[error("too many followers: {FOLLOWERS_MAX} follow already; retry later")]
    TooMany,
    #[error("the aggregator is not publishing changes (it is shutting down); follow again once it is back")]
    Stopped,
    #[error("follower fell behind and missed {n_missed} batches; read the dataset again, then follow again")]
    Lagged { n_missed: u64 },
    #[error("build follow batch: {0}")]
    Arrow(#[from] ArrowError),
}

/// The count of follow streams, and of those cut off for lagging.
#[derive(Debug)]
pub(crate) struct Followers {
    slots: Arc<Semaphore>,
    n_lagged: AtomicU64,
}

/// A follower's place among the [`FOLLOWERS_MAX`]; freed when its stream
/// is dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
}

// === impl Followers ===

impl Followers {
    pub(crate) fn new() -> Followers {
        Followers { slots: Arc::new(Semaphore::new(FOLLOWERS_MAX)), n_lagged: AtomicU64::new(0) }
    }

    /// A slot for one more follower, or [`FollowError::TooMany`].
    pub(crate) fn admit(&self) -> Result<Slot, FollowError> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Ok(Slot { _permit: permit }),
            Err(TryAcquireError::NoPermits) => Err(FollowError::TooMany),
            // The semaphore is never closed.
            Err(TryAcquireError::Closed) => Err(FollowError::Stopped),
        }
    }

    /// Follow streams open now.
    pub(crate) fn n_followers(&self) -> u64 {
        (FOLLOWERS_MAX - self.slots.available_permits()) as u64
    }

    /// Follow streams cut off for lagging, since start.
    pub(crate) fn n_lagged(&self) -> u64 {
        self.n_lagged.load(Ordering::Relaxed)
    }
}

/// The batches `query` sees in `feed`: each applied batch filtered by the
/// ticket, with `applied_at` as the last column; batches with no matching
/// row are left out. Ends with an error after a lag, a shutdown or a
/// failure to build a batch; holds `slot` until dropped.
pub(crate) fn stream(
    query: Query,
    feed: Feed,
    slot: Slot,
    followers: Arc<Followers>,
) -> impl Stream<Item = Result<RecordBatch, FollowError>> + Send + 'static {
    struct State {
        query: Query,
        feed: Feed,
        _slot: Slot,
        followers: Arc<Followers>,
        ended: bool,
    }
    let state = State { query, feed, _slot: slot, followers, ended: false };
    futures::stream::unfold(state, |mut state| async move {
        if state.ended {
            return None;
        }
        loop {
            let error = match state.feed.recv().await {
                Ok(applied) => match state.query.follow_batch(&applied) {
                    Ok(Some(batch)) => return Some((Ok(batch), state)),
                    Ok(None) => continue,
                    Err(error) => FollowError::Arrow(error),
                },
                Err(RecvError::Lagged(n_missed)) => {
                    state.followers.n_lagged.fetch_add(1, Ordering::Relaxed);
                    warn!(n_missed, dataset = state.query.dataset.as_str(), "Follower lagged; cutting it off.");
                    FollowError::Lagged { n_missed }
                }
                Err(RecvError::Closed) => {
                    debug!("Store stopped publishing; ending a follow stream.");
                    FollowError::Stopped
                }
            };
            state.ended = true;
            return Some((Err(error), state));
        }
    })
}

#[cfg(test)]
mod tests;
