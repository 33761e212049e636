//! The configuration the aggregator serves its edges: today the campaign
//! snapshot (landing URLs, attribution windows), read from `--campaigns`.
//!
//! The file is validated with the same rules the edges apply
//! ([`Campaigns::parse`]); an invalid file stops the start, and an invalid
//! edit later is logged and ignored, so edges keep the last good snapshot.
//! The file is checked for changes every [`POLL_INTERVAL`]; a change is
//! published on a `watch` channel that every edge connection's control
//! stream follows, so each edge gets the snapshot on connect and again on
//! every change.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use edgetally_protocol::{Campaigns, CampaignsError, ConfigSnapshot};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info};

/// How often the campaigns file is checked for changes: edits reach every
/// edge within about this long.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("read {}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("campaigns in {}", path.display())]
    Invalid { path: PathBuf, source: CampaignsError },
}

/// What edge connections follow: the current snapshot, if any.
pub(crate) type SnapshotReceiver = watch::Receiver<Option<Arc<ConfigSnapshot>>>;

/// Reads and validates the campaigns file.
pub(crate) fn read(path: &Path) -> Result<(ConfigSnapshot, usize), CatalogError> {
    let body = std::fs::read(path).map_err(|source| CatalogError::Read { path: path.to_owned(), source })?;
    let text = String::from_utf8_lossy(&body);
    let campaigns =
        Campaigns::parse(&text).map_err(|source| CatalogError::Invalid { path: path.to_owned(), source })?;
    Ok((ConfigSnapshot::new(Bytes::from(body)), campaigns.len()))
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

/// Loads the file (an error stops the start) and spawns the task that
/// watches it. Without a file, edges get no snapshot and use their own.
pub(crate) fn start(path: Option<&Path>) -> Result<(SnapshotReceiver, Option<JoinHandle<()>>), CatalogError> {
    let Some(path) = path else {
        let (_sender, receiver) = watch::channel(None);
        return Ok((receiver, None));
    };
    let mut last_stamp = stamp(path);
    let (snapshot, n_campaigns) = read(path)?;
    info!(path = %path.display(), n_campaigns, version = snapshot.version, "Serving campaigns to edges.");
    let (sender, receiver) = watch::channel(Some(Arc::new(snapshot)));
    let path = path.to_owned();
    let task = tokio::spawn(async move {
        let mut interval = tokio::time::interval(POLL_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let now = stamp(&path);
            if now == last_stamp {
                continue;
            }
            last_stamp = now;
            let path = path.clone();
            match tokio::task::spawn_blocking(move || read(&path)).await {
                Ok(Ok((snapshot, n_campaigns))) => {
                    let changed = sender.send_if_modified(|current| {
                        if current.as_ref().is_some_and(|current| current.version == snapshot.version) {
                            return false;
                        }
                        *current = Some(Arc::new(snapshot.clone()));
                        true
                    });
                    if changed {
                        info!(n_campaigns, version = snapshot.version, "Campaigns changed; sending them to edges.");
                    }
                }
                Ok(Err(error)) => {
                    let detail = match &error {
                        CatalogError::Read { source, .. } => source.to_string(),
                        CatalogError::Invalid { source, .. } => source.to_string(),
                    };
                    error!(%error, %detail, "Campaigns file unusable; edges keep the last good snapshot.");
                }
                Err(error) => error!(%error, "Reading campaigns failed."),
            }
        }
    });
    Ok((receiver, Some(task)))
}
