//! Snapshots of the whole store, so the write-ahead log can be truncated
//! and a restart replays only what came after.
//!
//! `<data_dir>/snapshot.bin` is one little-endian file:
//!
//! ```text
//! magic "ETS1" | version u16 | reserved u16 | wal_from u64 |
//! quarantine_dropped u64 | marks_len u64 | rollups_len u64 |
//! conversions_len u64 | quarantine_len u64 | rules_len u64 | crc32 u32 |
//! marks (edge_id u32, epoch u64, high_water u64 per edge, by edge id) |
//! rollups, quarantine (Arrow IPC, as frames carry them) and conversions
//! (Arrow IPC of the ledger, with status and commission) |
//! rules (the campaigns file in force)
//! ```
//!
//! The money rollups and the conversion index are rebuilt from the ledger
//! on load. Version 1 (no ledger columns, no rules) is not read: it
//! predates commissions.
//!
//! The CRC covers the header up to the CRC field and every section. The
//! file is written to a temporary name, fsynced, renamed over the old one
//! and the directory fsynced, so a crash leaves the old snapshot or the new
//! one, never a mix. A snapshot that does not read back is a startup error:
//! starting empty would silently forget what the truncated log held.
//!
//! **Protocol** ([`Checkpointer::checkpoint`]):
//!
//! 1. Rotate the log to a new segment K. Every record appended before is in
//!    a segment below K.
//! 2. Wait until every record of the segments below K is settled: applied
//!    to the store, or given up by its applier (then never acknowledged, so
//!    its edge sends it again).
//! 3. Under the store's lock, copy out the tables and every edge's mark;
//!    write them with `wal_from = K`. Records of segments ≥ K may or may not
//!    be in it.
//! 4. Only once the snapshot is durable, delete the segments below K.
//!
//! Replay loads the snapshot and replays segments ≥ `wal_from`. It is
//! idempotent because admission skips any batch at or below its edge's
//! mark, so a record of segment ≥ K already in the snapshot is skipped, and
//! one that is not is applied. For one edge, the records in the snapshot
//! are a prefix of its records in log order (ingest serialises admission,
//! commit and apply per edge), so replay decides every later record against
//! the same mark as the live run did. A crash between steps leaves either
//! the old snapshot with all its segments, or the new one with some
//! segments below K left over, which start deletes.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow_array::RecordBatch;
use edgetally_protocol::batch::{
    BatchError, decode_ipc, encode_ipc, quarantine_from_batch, quarantine_to_batch, rollups_from_batch,
    rollups_to_batch,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info};

use crate::ledger::{Rules, ledger_from_batch, ledger_to_batch};
use crate::store::{EdgeMark, Store, Tables};
use crate::wal::{self, Wal, WalError};

pub(crate) const SNAPSHOT_FILE_NAME: &str = "snapshot.bin";
const SNAPSHOT_TEMP_FILE_NAME: &str = "snapshot.bin.tmp";
const SNAPSHOT_MAGIC: [u8; 4] = *b"ETS1";
const SNAPSHOT_VERSION: u16 = 2;
const HEADER_LEN: usize = 68;
const MARK_LEN: usize = 20;

/// After a failed snapshot, the next attempt waits this long: a full disk
/// or a permission problem does not fix itself in milliseconds, and each
/// failure logs at ERROR.
const RETRY_DELAY: Duration = Duration::from_secs(10);

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{op} {}: {source}", path.display())]
    Io { op: &'static str, path: PathBuf, source: io::Error },
    #[error("corrupt snapshot {}: {source}", path.display())]
    Corrupt { path: PathBuf, source: DecodeError },
    #[error("encode snapshot tables: {0}")]
    Encode(BatchError),
    #[error("write-ahead log: {0}")]
    Wal(#[from] WalError),
    #[error("snapshot task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// What is wrong with a snapshot file's bytes.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{len} bytes, header is {HEADER_LEN}")]
    TooShort { len: usize },
    #[error("bad magic")]
    Magic,
    #[error("unsupported version {0}")]
    Version(u16),
    #[error("length mismatch: header announces {announced} bytes of sections, file has {actual}")]
    Length { announced: u64, actual: usize },
    #[error("crc mismatch: header says {expected:#010x}, content is {actual:#010x}")]
    Crc { expected: u32, actual: u32 },
    #[error("marks section of {len} bytes is not a whole number of {MARK_LEN}-byte marks")]
    Marks { len: u64 },
    #[error("{table} table: {source}")]
    Table { table: &'static str, source: BatchError },
    #[error("commission rules: {0}")]
    Rules(edgetally_protocol::CampaignsError),
}

/// A snapshot as read back.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// The first log segment not covered.
    pub(crate) wal_from: u64,
    pub(crate) marks: HashMap<u32, EdgeMark>,
    pub(crate) tables: Tables,
}

/// Runs the snapshot protocol, one at a time.
pub(crate) struct Checkpointer {
    data_dir: PathBuf,
    store: Arc<Store>,
    wal: Arc<Wal>,
    running: tokio::sync::Mutex<()>,
    snapshots_written: AtomicU64,
}

// === impl Checkpointer ===

impl Checkpointer {
    pub(crate) fn new(data_dir: PathBuf, store: Arc<Store>, wal: Arc<Wal>) -> Checkpointer {
        Checkpointer {
            data_dir,
            store,
            wal,
            running: tokio::sync::Mutex::new(()),
            snapshots_written: AtomicU64::new(0),
        }
    }

    pub(crate) fn snapshots_written(&self) -> u64 {
        self.snapshots_written.load(Ordering::Relaxed)
    }

    /// Snapshots the store and deletes the log segments it covers (see the
    /// protocol above). Answers `wal_from`.
    pub(crate) async fn checkpoint(&self) -> Result<u64, SnapshotError> {
        let _running = self.running.lock().await;
        let wal_from = self.wal.rotate().await?;
        self.wal.settled_below(wal_from).await;
        let (store, data_dir) = (self.store.clone(), self.data_dir.clone());
        tokio::task::spawn_blocking(move || {
            let bytes = encode_store(wal_from, &store)?;
            write(&data_dir, &bytes)
        })
        .await??;
        self.snapshots_written.fetch_add(1, Ordering::Relaxed);
        let n_removed = self.wal.remove_segments_below(wal_from)?;
        info!(wal_from, n_removed, "Snapshot written; write-ahead log truncated.");
        Ok(wal_from)
    }
}

/// Snapshots whenever the log asks (past `snapshot_wal_bytes`) until
/// `stop` fires; a snapshot under way is finished first.
pub(crate) async fn run(checkpointer: Arc<Checkpointer>, mut due: mpsc::Receiver<()>, mut stop: oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            asked = due.recv() => {
                let Some(()) = asked else { break };
                if let Err(error) = checkpointer.checkpoint().await {
                    error!(%error, retry_ms = RETRY_DELAY.as_millis(), "Snapshot failed; the write-ahead log grows until one succeeds.");
                    tokio::select! {
                        _ = &mut stop => break,
                        () = tokio::time::sleep(RETRY_DELAY) => {}
                    }
                }
            }
        }
    }
}

/// Copies the store out under its lock and encodes it; the Arrow arrays are
/// built under the lock, the compression happens after.
fn encode_store(wal_from: u64, store: &Store) -> Result<Vec<u8>, SnapshotError> {
    let (marks, rollups, conversions, quarantine, quarantine_dropped, rules) = store.export(|tables, edges| {
        let mut marks: Vec<(u32, EdgeMark)> = edges.iter().map(|(&edge_id, &mark)| (edge_id, mark)).collect();
        marks.sort_unstable_by_key(|&(edge_id, _)| edge_id);
        let (quarantine, rest) = tables.quarantine.as_slices();
        debug_assert!(rest.is_empty(), "Store::export makes the quarantine contiguous");
        (
            marks,
            rollups_to_batch(tables.rollups.iter()),
            ledger_to_batch(tables.conversions.iter()),
            quarantine_to_batch(quarantine),
            tables.quarantine_dropped,
            tables.rules.body.clone(),
        )
    });
    encode(wal_from, &marks, [&rollups, &conversions, &quarantine], quarantine_dropped, &rules)
}

/// Encodes a snapshot file's bytes; `tables` are rollups, conversions (the
/// ledger) and quarantine; `rules` the campaigns file in force.
pub(crate) fn encode(
    wal_from: u64,
    marks: &[(u32, EdgeMark)],
    tables: [&RecordBatch; 3],
    quarantine_dropped: u64,
    rules: &[u8],
) -> Result<Vec<u8>, SnapshotError> {
    let mut marks_bytes = Vec::with_capacity(marks.len() * MARK_LEN);
    for (edge_id, mark) in marks {
        marks_bytes.extend_from_slice(&edge_id.to_le_bytes());
        marks_bytes.extend_from_slice(&mark.epoch.to_le_bytes());
        marks_bytes.extend_from_slice(&mark.high_water.to_le_bytes());
    }
    let [rollups, conversions, quarantine] = tables.map(encode_ipc);
    let sections = [
        marks_bytes,
        rollups.map_err(SnapshotError::Encode)?,
        conversions.map_err(SnapshotError::Encode)?,
        quarantine.map_err(SnapshotError::Encode)?,
        rules.to_vec(),
    ];
    let mut out = Vec::with_capacity(HEADER_LEN + sections.iter().map(Vec::len).sum::<usize>());
    out.extend_from_slice(&SNAPSHOT_MAGIC);
    out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&wal_from.to_le_bytes());
    out.extend_from_slice(&quarantine_dropped.to_le_bytes());
    for section in &sections {
        out.extend_from_slice(&(section.len() as u64).to_le_bytes());
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out);
    for section in &sections {
        crc.update(section);
    }
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    debug_assert_eq!(out.len(), HEADER_LEN);
    for section in &sections {
        out.extend_from_slice(section);
    }
    Ok(out)
}

/// Decodes a snapshot file's bytes, checking the CRC before any Arrow.
pub(crate) fn decode(bytes: &[u8]) -> Result<Snapshot, DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::TooShort { len: bytes.len() });
    }
    let u64_at = |idx: usize| u64::from_le_bytes(bytes[idx..idx + 8].try_into().expect("an 8-byte slice"));
    if bytes[..4] != SNAPSHOT_MAGIC {
        return Err(DecodeError::Magic);
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != SNAPSHOT_VERSION {
        return Err(DecodeError::Version(version));
    }
    let wal_from = u64_at(8);
    let quarantine_dropped = u64_at(16);
    let section_lens = [u64_at(24), u64_at(32), u64_at(40), u64_at(48), u64_at(56)];
    let expected = u32::from_le_bytes(bytes[64..68].try_into().expect("a 4-byte slice"));
    let announced = section_lens.iter().try_fold(0u64, |sum, &len| sum.checked_add(len)).unwrap_or(u64::MAX);
    let actual = bytes.len() - HEADER_LEN;
    if announced != actual as u64 {
        return Err(DecodeError::Length { announced, actual });
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&bytes[..HEADER_LEN - 4]);
    crc.update(&bytes[HEADER_LEN..]);
    let actual = crc.finalize();
    if actual != expected {
        return Err(DecodeError::Crc { expected, actual });
    }
    // The lengths add up to the file's, so each fits in a usize.
    let mut sections = [&[][..]; 5];
    let mut start = HEADER_LEN;
    for (section, len) in sections.iter_mut().zip(section_lens) {
        *section = &bytes[start..start + len as usize];
        start += len as usize;
    }
    let [marks_bytes, rollups, conversions, quarantine, rules] = sections;
    if marks_bytes.len() % MARK_LEN != 0 {
        return Err(DecodeError::Marks { len: marks_bytes.len() as u64 });
    }
    let marks = marks_bytes
        .chunks_exact(MARK_LEN)
        .map(|mark| {
            let edge_id = u32::from_le_bytes(mark[..4].try_into().expect("a 4-byte slice"));
            let epoch = u64::from_le_bytes(mark[4..12].try_into().expect("an 8-byte slice"));
            let high_water = u64::from_le_bytes(mark[12..20].try_into().expect("an 8-byte slice"));
            (edge_id, EdgeMark { epoch, high_water })
        })
        .collect();
    let mut tables = Tables { quarantine_dropped, ..Tables::default() };
    for (key, counts) in decode_table("rollups", rollups, rollups_from_batch)? {
        tables.rollups.entry(key).or_default().merge(&counts);
    }
    for conversion in decode_table("conversions", conversions, ledger_from_batch)? {
        tables.insert(conversion);
    }
    tables.quarantine = decode_table("quarantine", quarantine, quarantine_from_batch)?.into();
    if !rules.is_empty() {
        tables.rules = Rules::parse(bytes::Bytes::copy_from_slice(rules)).map_err(DecodeError::Rules)?;
    }
    Ok(Snapshot { wal_from, marks, tables })
}

fn decode_table<T>(
    table: &'static str,
    ipc: &[u8],
    rows_from_batch: impl Fn(&RecordBatch) -> Result<Vec<T>, BatchError>,
) -> Result<Vec<T>, DecodeError> {
    let mut rows = Vec::new();
    for batch in decode_ipc(ipc).map_err(|source| DecodeError::Table { table, source })? {
        rows.extend(rows_from_batch(&batch).map_err(|source| DecodeError::Table { table, source })?);
    }
    Ok(rows)
}

/// Reads `<data_dir>/snapshot.bin`; `None` if there is none.
pub(crate) fn load(data_dir: &Path) -> Result<Option<Snapshot>, SnapshotError> {
    let path = data_dir.join(SNAPSHOT_FILE_NAME);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SnapshotError::Io { op: "read", path, source }),
    };
    decode(&bytes).map(Some).map_err(|source| SnapshotError::Corrupt { path, source })
}

/// Replaces `<data_dir>/snapshot.bin` with `bytes`, durably.
fn write(data_dir: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    let temp_path = data_dir.join(SNAPSHOT_TEMP_FILE_NAME);
    let path = data_dir.join(SNAPSHOT_FILE_NAME);
    let write_temp = || -> io::Result<()> {
        let mut file = File::create(&temp_path)?;
        file.write_all(bytes)?;
        file.sync_all()
    };
    write_temp().map_err(|source| SnapshotError::Io { op: "write", path: temp_path.clone(), source })?;
    fs::rename(&temp_path, &path).map_err(|source| SnapshotError::Io { op: "rename", path: path.clone(), source })?;
    // The rename must be durable before any segment it covers is deleted.
    wal::sync_dir(data_dir)?;
    Ok(())
}

#[cfg(test)]
mod tests;
