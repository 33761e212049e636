//! The campaign snapshot an edge works from, and where it comes from.
//!
//! The aggregator is the source of truth: it sends its snapshot on the
//! connection's control stream at connect and after every change. The edge
//! validates it (the same [`Campaigns::parse`] rules), keeps it on disk
//! (`<data_dir>/campaigns.json`, written atomically) and swaps it in. On
//! start, the kept snapshot is used if there is one, so an edge starts with
//! the last campaigns it was given even while the aggregator is
//! unreachable; else the `--campaigns` file, else none.
//!
//! Requests read the current snapshot through a shared pointer taken under a
//! read lock held for a pointer copy, so a swap never blocks them for long.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use edgetally_protocol::{Campaigns, CampaignsError, ConfigSnapshot};

/// The file name of the kept snapshot in the data directory.
const KEPT_FILE_NAME: &str = "campaigns.json";

#[derive(Debug, thiserror::Error)]
pub(crate) enum CatalogError {
    #[error("campaign snapshot {version:#018x}: {source}")]
    Invalid { version: u64, source: CampaignsError },
    #[error("keeping the campaign snapshot in {path}: {source}")]
    Keep { path: String, source: std::io::Error },
}

pub(crate) struct Catalog {
    current: RwLock<Arc<Campaigns>>,
    /// Version of the snapshot in use, if it came from the aggregator.
    version: RwLock<Option<u64>>,
    kept_path: PathBuf,
}

// === impl Catalog ===

impl Catalog {
    /// The kept snapshot if `data_dir` has a valid one, else `fallback`.
    pub(crate) fn open(data_dir: &Path, fallback: Campaigns) -> Catalog {
        let kept_path = data_dir.join(KEPT_FILE_NAME);
        let kept = match std::fs::read(&kept_path) {
            Ok(body) => match Campaigns::parse(&String::from_utf8_lossy(&body)) {
                Ok(campaigns) => {
                    tracing::info!(
                        path = %kept_path.display(),
                        n_campaigns = campaigns.len(),
                        "Starting from the campaigns the aggregator sent last."
                    );
                    Some((campaigns, ConfigSnapshot::new(body.into()).version))
                }
                Err(error) => {
                    tracing::error!(%error, path = %kept_path.display(), "Kept campaign snapshot unreadable; ignoring it.");
                    None
                }
            },
            Err(_) => None,
        };
        let (campaigns, version) = match kept {
            Some((campaigns, version)) => (campaigns, Some(version)),
            None => (fallback, None),
        };
        Catalog { current: RwLock::new(Arc::new(campaigns)), version: RwLock::new(version), kept_path }
    }

    /// The snapshot in use.
    pub(crate) fn get(&self) -> Arc<Campaigns> {
        // Poisoned only by a panic during a pointer swap, which cannot leave
        // a torn value.
        self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Validates, keeps and swaps in a snapshot from the aggregator.
    /// Returns false when it is the one in use already.
    pub(crate) fn apply(&self, snapshot: &ConfigSnapshot) -> Result<bool, CatalogError> {
        // Held throughout, so a reload of the local file cannot swap its
        // campaigns in between this swap and the version that marks it.
        let mut version = self.version.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if *version == Some(snapshot.version) {
            return Ok(false);
        }
        let campaigns = Campaigns::parse(&String::from_utf8_lossy(&snapshot.body))
            .map_err(|source| CatalogError::Invalid { version: snapshot.version, source })?;
        self.keep(&snapshot.body)?;
        let n_campaigns = campaigns.len();
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(campaigns);
        *version = Some(snapshot.version);
        tracing::info!(version = snapshot.version, n_campaigns, "Campaigns updated from the aggregator.");
        Ok(true)
    }

    /// Swaps in campaigns from the local file, unless a snapshot from the
    /// aggregator (kept or received) is in use. Returns whether it swapped.
    pub(crate) fn replace_local(&self, campaigns: Campaigns) -> bool {
        let version = self.version.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        if version.is_some() {
            return false;
        }
        // The version lock stays held so a snapshot from the aggregator
        // cannot land between the check and the swap and be overwritten.
        // Read-locked here, write-locked by `apply`: the two exclude each other.
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(campaigns);
        true
    }

    fn keep(&self, body: &[u8]) -> Result<(), CatalogError> {
        crate::write_atomic(&self.kept_path, body, 0o644)
            .map_err(|source| CatalogError::Keep { path: self.kept_path.display().to_string(), source })
    }
}
