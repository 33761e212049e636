//! The in-memory state: merged rollups, conversion rows, and each edge's
//! high-water mark.
//!
//! Applying a batch and raising its edge's high-water mark happen under one
//! lock, so two copies of a batch arriving at once cannot both be applied.
//! The lock is a `std` mutex and is never held across an `.await`.
//!
//! Everything here is rebuilt on start from the snapshot and the
//! write-ahead log (`snapshot.rs`, `wal.rs`); the store itself does no I/O.
//!
//! Once [`Store::publish`] is called (after replay, so replay never
//! publishes), every applied batch is also sent to the followers
//! (`follow.rs`), under the same lock, so they see the apply order. It is
//! copied for them only while someone follows.
//!
//! Nothing in the tables is bounded yet: rollups grow with keys and conversions with
//! rows until retention and Parquet partitions arrive.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use edgetally_protocol::batch::{ConversionRow, QuarantineRow, RollupCounts, RollupKey};
use tokio::sync::broadcast;

use crate::follow::{Applied, Feed};

/// Where an edge is in its stream of batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct EdgeMark {
    pub(crate) epoch: u64,
    /// The highest sequence applied within `epoch`; 0 before the first.
    pub(crate) high_water: u64,
}

/// What to do with a batch, given its edge's mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Apply,
    Skip,
}

/// One decoded batch of one edge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Batch {
    pub(crate) edge_id: u32,
    pub(crate) epoch: u64,
    pub(crate) sequence: u64,
    pub(crate) rollups: Vec<(RollupKey, RollupCounts)>,
    pub(crate) conversions: Vec<ConversionRow>,
    pub(crate) quarantine: Vec<QuarantineRow>,
}

/// Quarantine rows kept in memory, oldest dropped first: review needs the
/// recent ones, and at about 1.3 KiB a row this bounds them to 1.3 GiB
/// worst case (typical rows are a tenth of that).
pub(crate) const QUARANTINE_ROWS_MAX: usize = 1_000_000;

/// The data a query reads.
#[derive(Debug, Default)]
pub(crate) struct Tables {
    pub(crate) rollups: BTreeMap<RollupKey, RollupCounts>,
    /// In arrival order.
    pub(crate) conversions: Vec<ConversionRow>,
    /// In arrival order.
    pub(crate) quarantine: VecDeque<QuarantineRow>,
    /// Quarantine rows dropped to keep the bound.
    pub(crate) quarantine_dropped: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Store {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    tables: Tables,
    edges: HashMap<u32, EdgeMark>,
    /// Where applied batches go for followers; `None` before
    /// [`Store::publish`] (during replay) and after
    /// [`Store::stop_publishing`].
    followers: Option<broadcast::Sender<Arc<Applied>>>,
}

// === impl EdgeMark ===

impl EdgeMark {
    /// A newer epoch starts over from high-water 0; an older epoch is a
    /// leftover of a previous run of the edge and was dealt with then.
    pub(crate) fn admit(&self, epoch: u64, sequence: u64) -> Admission {
        let high_water = match epoch.cmp(&self.epoch) {
            std::cmp::Ordering::Less => return Admission::Skip,
            std::cmp::Ordering::Equal => self.high_water,
            std::cmp::Ordering::Greater => 0,
        };
        if sequence > high_water { Admission::Apply } else { Admission::Skip }
    }
}

// === impl Store ===

impl Store {
    /// Applies `batch` unless its edge's high-water mark says it was applied
    /// before. An applied batch is published to the followers, if any.
    pub(crate) fn apply(&self, batch: Batch) -> Admission {
        let mut inner = self.lock();
        let Inner { tables, edges, followers } = &mut *inner;
        let mark = edges.entry(batch.edge_id).or_default();
        let admission = mark.admit(batch.epoch, batch.sequence);
        if admission == Admission::Apply {
            *mark = EdgeMark { epoch: batch.epoch, high_water: batch.sequence };
            // Copied before its rows move into the tables, and only for
            // someone to read.
            let published = followers
                .as_ref()
                .filter(|sender| sender.receiver_count() > 0)
                .map(|sender| (sender, Applied { applied_at_ms: now_ms(), batch: batch.clone() }));
            for (key, counts) in batch.rollups {
                tables.rollups.entry(key).or_default().merge(&counts);
            }
            tables.conversions.extend(batch.conversions);
            for row in batch.quarantine {
                if tables.quarantine.len() == QUARANTINE_ROWS_MAX {
                    tables.quarantine.pop_front();
                    tables.quarantine_dropped += 1;
                }
                tables.quarantine.push_back(row);
            }
            if let Some((sender, applied)) = published {
                // Fails only if every follower left since the count above;
                // then nobody misses the batch.
                let _ = sender.send(Arc::new(applied));
            }
        }
        admission
    }

    /// From now on, publishes every applied batch to followers through a
    /// queue of `queue_max` batches (`follow::FOLLOW_QUEUE_MAX`, smaller
    /// in tests). Called once the log is replayed: replay publishes
    /// nothing.
    pub(crate) fn publish(&self, queue_max: usize) {
        let (sender, _) = broadcast::channel(queue_max);
        self.lock().followers = Some(sender);
    }

    /// Stops publishing: every follower's feed ends once it has read what
    /// was published before. Called at shutdown.
    pub(crate) fn stop_publishing(&self) {
        self.lock().followers = None;
    }

    /// A feed of every batch applied from now on; `None` when the store is
    /// not publishing.
    pub(crate) fn follow(&self) -> Option<Feed> {
        self.lock().followers.as_ref().map(broadcast::Sender::subscribe)
    }

    /// What [`Store::apply`] would do with the batch now. Ingest asks
    /// before writing a batch to the log, so a resent batch costs no write;
    /// `apply` asks again under its lock.
    pub(crate) fn admit(&self, edge_id: u32, epoch: u64, sequence: u64) -> Admission {
        self.lock().edges.get(&edge_id).copied().unwrap_or_default().admit(epoch, sequence)
    }

    /// A store holding `tables` with the edges at `marks`, as a snapshot
    /// left them.
    pub(crate) fn restore(tables: Tables, marks: HashMap<u32, EdgeMark>) -> Store {
        Store { inner: Mutex::new(Inner { tables, edges: marks, followers: None }) }
    }

    /// Runs `export` on the whole state under the lock, with the quarantine
    /// made contiguous so it reads as one slice. `export` is synchronous and
    /// holds up every apply; copy out what is needed and encode later.
    pub(crate) fn export<R>(&self, export: impl FnOnce(&Tables, &HashMap<u32, EdgeMark>) -> R) -> R {
        let mut inner = self.lock();
        let Inner { tables, edges, .. } = &mut *inner;
        tables.quarantine.make_contiguous();
        export(tables, edges)
    }

    /// Runs `read` on the tables under the lock. `read` is synchronous, so
    /// the lock cannot be held across an `.await`; keep it short.
    pub(crate) fn read<R>(&self, read: impl FnOnce(&Tables) -> R) -> R {
        read(&self.lock().tables)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Poisoned only if a panic hit mid-apply; the tables may then hold
        // half a batch, which must not be served or extended.
        self.inner.lock().expect("store lock is not poisoned")
    }
}

/// The wall clock in Unix ms; a clock before 1970 reads as 0.
fn now_ms() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
