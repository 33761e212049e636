//! Dashboard answers kept by data version: the first viewer to ask for an
//! answer at a version computes it, everyone else asking at that version
//! (at once or later) gets the same bytes. A new version (a batch applied)
//! makes the next ask compute again; nothing expires on a timer.
//!
//! Bounded to [`CACHE_ENTRIES_MAX`] answers. When full, answers of older
//! versions go first; if all are current, the whole cache is cleared (a
//! burst of distinct queries, each then computed once more at most).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::OnceCell;

use super::ApiError;

/// Distinct answers kept: every (call, parameters, scope) of the viewers
/// of the moment. An answer is at most a few MiB (a table of 10,000
/// affiliates), typically a few KiB.
pub(crate) const CACHE_ENTRIES_MAX: usize = 256;

/// One answer, or the computation of it under way.
type Slot = Arc<OnceCell<Result<Bytes, ApiError>>>;

#[derive(Debug, Default)]
pub(crate) struct Cache {
    entries: Mutex<HashMap<String, (u64, Slot)>>,
    n_computed: AtomicU64,
    n_shared: AtomicU64,
}

// === impl Cache ===

impl Cache {
    /// The answer to `key` at data `version`: computed by `compute` unless
    /// it was at that version already (or is being computed now, which is
    /// then waited for). An error is kept like an answer: asking again at
    /// the same version gives the same error.
    pub(crate) async fn get(
        &self,
        key: String,
        version: u64,
        compute: impl FnOnce() -> Result<Bytes, ApiError>,
    ) -> Result<Bytes, ApiError> {
        let slot = {
            let mut entries = self.entries.lock().expect("cache lock is not poisoned");
            match entries.get(&key) {
                Some((kept_version, slot)) if *kept_version == version => slot.clone(),
                _ => {
                    if entries.len() >= CACHE_ENTRIES_MAX {
                        entries.retain(|_, (kept_version, _)| *kept_version == version);
                        if entries.len() >= CACHE_ENTRIES_MAX {
                            entries.clear();
                        }
                    }
                    let slot = Slot::default();
                    entries.insert(key, (version, slot.clone()));
                    slot
                }
            }
        };
        let mut computed = false;
        let answer = slot
            .get_or_init(|| {
                computed = true;
                std::future::ready(compute())
            })
            .await;
        let counter = if computed { &self.n_computed } else { &self.n_shared };
        counter.fetch_add(1, Ordering::Relaxed);
        answer.clone()
    }

    /// Answers computed, and answers served from one computed before.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (self.n_computed.load(Ordering::Relaxed), self.n_shared.load(Ordering::Relaxed))
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.lock().expect("cache lock is not poisoned").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_computation_per_key_and_version() {
        let cache = Cache::default();
        let answer = |text: &'static str| move || Ok(Bytes::from_static(text.as_bytes()));
        assert_eq!(cache.get("a".into(), 1, answer("a1")).await.unwrap(), "a1");
        // Same version: the kept answer, whatever compute would say.
        assert_eq!(cache.get("a".into(), 1, answer("other")).await.unwrap(), "a1");
        assert_eq!(cache.get("b".into(), 1, answer("b1")).await.unwrap(), "b1");
        // A new version computes again.
        assert_eq!(cache.get("a".into(), 2, answer("a2")).await.unwrap(), "a2");
        assert_eq!(cache.counts(), (3, 1));
        assert_eq!(cache.len(), 2);
    }

    #[tokio::test]
    async fn the_bound_drops_older_versions_first() {
        let cache = Cache::default();
        for key_idx in 0..CACHE_ENTRIES_MAX {
            let version = if key_idx == 0 { 2 } else { 1 };
            cache.get(format!("k{key_idx}"), version, || Ok(Bytes::new())).await.unwrap();
        }
        assert_eq!(cache.len(), CACHE_ENTRIES_MAX);
        cache.get("new".into(), 2, || Ok(Bytes::new())).await.unwrap();
        // Only k0 (version 2) and the new one stay.
        assert_eq!(cache.len(), 2);
        let (n_computed, n_shared) = cache.counts();
        cache.get("k0".into(), 2, || Ok(Bytes::from_static(b"again"))).await.unwrap();
        assert_eq!(cache.counts(), (n_computed, n_shared + 1));
    }
}
