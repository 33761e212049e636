//! Changes that do not come from edges but must survive a restart exactly
//! like batches: a new set of commission rules, and an admin's change of a
//! conversion's status. Each is appended to the write-ahead log and applied
//! in its turn (`wal.rs`, "Apply order"), so replay prices every
//! conversion under the rules it was priced under live and reverses what
//! was reversed.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tracing::info;

use crate::ledger::{Conversion, RULES_RECORD_MAGIC, Rules, STATUS_RECORD_MAGIC, StatusChange};
use crate::store::Store;
use crate::wal::{Wal, WalError};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("write-ahead log: {0}")]
    Wal(#[from] WalError),
    #[error("apply task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Makes `rules` the rules in force unless they are already: logs them,
/// then applies them in their turn.
pub(crate) async fn set_rules(wal: &Wal, store: &Arc<Store>, rules: Rules) -> Result<(), AdminError> {
    if store.rules_body() == rules.body {
        return Ok(());
    }
    let mut record = BytesMut::with_capacity(RULES_RECORD_MAGIC.len() + rules.body.len());
    record.put_slice(&RULES_RECORD_MAGIC);
    record.put_slice(&rules.body);
    let commit = wal.append(record.freeze()).await?;
    commit.turn().await;
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        store.set_rules(rules);
        drop(commit);
    })
    .await?;
    info!("Commission rules changed; new conversions are priced under them.");
    Ok(())
}

/// Logs `change` and applies it in its turn; answers the conversion as it
/// now stands, or `None` if no conversion has the key (the record is
/// logged anyway and replays to the same `None`).
pub(crate) async fn set_status(
    wal: &Wal,
    store: &Arc<Store>,
    change: StatusChange,
) -> Result<Option<Conversion>, AdminError> {
    let json = change.render();
    let mut record = BytesMut::with_capacity(STATUS_RECORD_MAGIC.len() + json.len());
    record.put_slice(&STATUS_RECORD_MAGIC);
    record.put_slice(&json);
    let commit = wal.append(record.freeze()).await?;
    commit.turn().await;
    let store = store.clone();
    let conversion = tokio::task::spawn_blocking(move || {
        let conversion = store.set_status(&change.key, change.status);
        drop(commit);
        conversion
    })
    .await?;
    Ok(conversion)
}

/// What a log record that is not a batch frame holds.
pub(crate) enum AdminRecord {
    Rules(Rules),
    Status(StatusChange),
}

/// Reads an admin record; `None` if `payload` is not one (a batch frame),
/// `Some(Err)` if it is one but does not decode.
pub(crate) fn decode(payload: &Bytes) -> Option<Result<AdminRecord, String>> {
    let magic = payload.get(..4)?;
    if magic == RULES_RECORD_MAGIC {
        let rules = Rules::parse(payload.slice(4..)).map_err(|error| format!("rules record: {error}"));
        return Some(rules.map(AdminRecord::Rules));
    }
    if magic == STATUS_RECORD_MAGIC {
        let change = StatusChange::parse(&payload[4..]).map_err(|error| format!("status record: {error}"));
        return Some(change.map(AdminRecord::Status));
    }
    None
}
