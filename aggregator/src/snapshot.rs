//! Checkpoints: the manifest `snapshot.bin` and the Parquet partitions it
//! lists (`partition.rs`), so the write-ahead log can be truncated and a
//! restart replays only what came after.
//!
//! `<data_dir>/snapshot.bin` is the manifest, one little-endian file
//! (format 3):
//!
//! ```text
//! magic "ETS1" | version u16 | reserved u16 | wal_from u64 |
//! quarantine_dropped u64 | retained_from_day i64 (i64::MIN: every day) |
//! marks_len u64 | rules_len u64 | partitions_len u64 | crc32 u32 |
//! marks (edge_id u32, epoch u64, high_water u64 per edge, by edge id) |
//! rules (the campaigns file in force) |
//! partitions (dataset u8, reserved [u8; 3], crc32 u32 of the file,
//!   day i64, generation u64, n_rows u64, n_bytes u64 per file,
//!   by dataset and day)
//! ```
//!
//! The rows themselves (rollups, the ledger with status and commission,
//! quarantine) are in the partition files, one per dataset and UTC day.
//! The money rollups and the conversion index are rebuilt from the ledger
//! on load. Formats 1 and 2 (the whole store in this one file) are refused
//! with an error that says so. There is no migration: a data directory
//! written by an earlier version is read with the version that wrote it,
//! and this version starts on a new one.
//!
//! The CRC covers the header up to the CRC field and every section. The
//! manifest is written to a temporary name, fsynced, renamed over the old
//! one and the directory fsynced, so a crash leaves the old manifest or
//! the new one, never a mix. A manifest that does not read back, or a
//! partition it lists that is missing, of the wrong length or CRC, or whose
//! rows disagree with it, is a startup error naming the file: starting
//! empty would silently forget what the truncated log held.
//!
//! **Protocol** ([`Checkpointer::checkpoint`]):
//!
//! 1. Rotate the log to a new segment K. Every record appended before is in
//!    a segment below K.
//! 2. Wait until every record of the segments below K is settled: applied
//!    to the store, or given up by its applier (then never acknowledged, so
//!    its edge sends it again).
//! 3. Under the store's lock, move the retention cutoff forward (from then
//!    on rows of older days are dropped as they arrive), take the set of
//!    partitions changed since the last checkpoint, copy out their rows as
//!    Arrow batches, and every edge's mark. Records of segments ≥ K may or
//!    may not be in it.
//! 4. Write each changed partition as a new file of generation K (a day
//!    left without rows gets none), fsync the files and their directories.
//! 5. Write the manifest with `wal_from = K`: the previous manifest's
//!    files, less the days rewritten and the days before the cutoff, plus
//!    the new files.
//! 6. Only once the manifest is durable, drop the days before the cutoff
//!    from memory, delete the files it no longer lists, and the log
//!    segments below K.
//!
//! A crash before step 5 is durable leaves the old manifest with all its
//! files (the new files are unlisted and start deletes them); after it,
//! the new manifest with all its files, plus superseded files and segments
//! below K that start deletes. A checkpoint that fails before step 5 marks
//! the partitions it took as changed again, so the next one writes them.
//!
//! Replay loads the manifest and its partitions and replays segments ≥
//! `wal_from`. It is idempotent because admission skips any batch at or
//! below its edge's mark, so a record of segment ≥ K already in the
//! checkpoint is skipped, and one that is not is applied. For one edge, the
//! records in the checkpoint are a prefix of its records in log order
//! (ingest serialises admission, commit and apply per edge), so replay
//! decides every later record against the same mark as the live run did.
//! Days not rewritten are in files of earlier checkpoints and did not
//! change since: a change marks its day.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow_array::RecordBatch;
use edgetally_protocol::batch::{
    BatchError, quarantine_from_batch, quarantine_to_batch, rollups_from_batch, rollups_to_batch,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::ledger::{ConversionKey, Rules, ledger_from_batch, ledger_to_batch};
use crate::partition::{self, DAY_MS, Dataset, Partition, PartitionError, day_of, day_text};
use crate::store::{EdgeMark, QUARANTINE_ROWS_MAX, Store, Tables};
use crate::wal::{self, Wal, WalError};

pub(crate) const SNAPSHOT_FILE_NAME: &str = "snapshot.bin";
const SNAPSHOT_TEMP_FILE_NAME: &str = "snapshot.bin.tmp";
const SNAPSHOT_MAGIC: [u8; 4] = *b"ETS1";
const SNAPSHOT_VERSION: u16 = 3;
const HEADER_LEN: usize = 60;
const MARK_LEN: usize = 20;
const PARTITION_ENTRY_LEN: usize = 40;

/// After a failed checkpoint, the next attempt waits this long: a full disk
/// or a permission problem does not fix itself in milliseconds, and each
/// failure logs at ERROR.
const RETRY_DELAY: Duration = Duration::from_secs(10);

/// Why a checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{op} {}: {source}", path.display())]
    Io { op: &'static str, path: PathBuf, source: io::Error },
    #[error("corrupt snapshot {}: {source}", path.display())]
    Corrupt { path: PathBuf, source: DecodeError },
    #[error("{0}")]
    Partition(#[from] PartitionError),
    #[error("write-ahead log: {0}")]
    Wal(#[from] WalError),
    #[error("snapshot task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// What is wrong with a manifest's bytes.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{len} bytes, header is {HEADER_LEN}")]
    TooShort { len: usize },
    #[error("bad magic")]
    Magic,
    #[error(
        "unsupported version {0}: this aggregator reads version {SNAPSHOT_VERSION} (a manifest of Parquet partitions); \
         versions 1 and 2 held the whole store in one file and are not migrated"
    )]
    Version(u16),
    #[error("length mismatch: header announces {announced} bytes of sections, file has {actual}")]
    Length { announced: u64, actual: usize },
    #[error("crc mismatch: header says {expected:#010x}, content is {actual:#010x}")]
    Crc { expected: u32, actual: u32 },
    #[error("marks section of {len} bytes is not a whole number of {MARK_LEN}-byte marks")]
    Marks { len: u64 },
    #[error("partitions section of {len} bytes is not a whole number of {PARTITION_ENTRY_LEN}-byte entries")]
    Partitions { len: u64 },
    #[error("partition entry {entry_idx}: {reason}")]
    Entry { entry_idx: usize, reason: String },
    #[error("commission rules: {0}")]
    Rules(edgetally_protocol::CampaignsError),
}

/// What `snapshot.bin` says: the state outside the partitions, and the
/// partitions in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Manifest {
    /// The first log segment not covered.
    pub(crate) wal_from: u64,
    /// By edge id.
    pub(crate) marks: Vec<(u32, EdgeMark)>,
    /// The campaigns file in force.
    pub(crate) rules: bytes::Bytes,
    pub(crate) quarantine_dropped: u64,
    pub(crate) retained_from_day: Option<i64>,
    /// By dataset and day, one per `(dataset, day)`.
    pub(crate) partitions: Vec<Partition>,
}

/// A checkpoint as read back: the store's tables and marks, and the
/// partitions in force (the next checkpoint supersedes them).
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// The first log segment not covered.
    pub(crate) wal_from: u64,
    pub(crate) marks: HashMap<u32, EdgeMark>,
    pub(crate) tables: Tables,
    pub(crate) partitions: Vec<Partition>,
}

/// What a checkpoint copies out of the store under its lock.
struct Export {
    marks: Vec<(u32, EdgeMark)>,
    rules: bytes::Bytes,
    quarantine_dropped: u64,
    retained_from_day: Option<i64>,
    /// Every partition taken from `Tables::dirty`.
    taken: Vec<(Dataset, i64)>,
    /// The rows of those inside retention, empty days left out.
    batches: Vec<(Dataset, i64, RecordBatch)>,
}

/// Runs the checkpoint protocol, one at a time.
pub(crate) struct Checkpointer {
    data_dir: PathBuf,
    store: Arc<Store>,
    wal: Arc<Wal>,
    retention_days: Option<u32>,
    /// The partitions the last manifest lists; held for a whole checkpoint.
    running: tokio::sync::Mutex<Vec<Partition>>,
    snapshots_written: AtomicU64,
    days_dropped: AtomicU64,
    n_partitions: AtomicU64,
    n_partition_bytes: AtomicU64,
}

// === impl Checkpointer ===

impl Checkpointer {
    /// `partitions`: those the manifest loaded at start lists.
    pub(crate) fn new(
        data_dir: PathBuf,
        store: Arc<Store>,
        wal: Arc<Wal>,
        retention_days: Option<u32>,
        partitions: Vec<Partition>,
    ) -> Checkpointer {
        let n_partition_bytes = partitions.iter().map(|partition| partition.n_bytes).sum();
        Checkpointer {
            data_dir,
            store,
            wal,
            retention_days,
            n_partitions: AtomicU64::new(partitions.len() as u64),
            n_partition_bytes: AtomicU64::new(n_partition_bytes),
            running: tokio::sync::Mutex::new(partitions),
            snapshots_written: AtomicU64::new(0),
            days_dropped: AtomicU64::new(0),
        }
    }

    pub(crate) fn snapshots_written(&self) -> u64 {
        self.snapshots_written.load(Ordering::Relaxed)
    }

    /// Distinct UTC days dropped by retention since start.
    pub(crate) fn days_dropped(&self) -> u64 {
        self.days_dropped.load(Ordering::Relaxed)
    }

    /// Partition files the manifest lists, and their bytes.
    pub(crate) fn partitions_on_disk(&self) -> (u64, u64) {
        (self.n_partitions.load(Ordering::Relaxed), self.n_partition_bytes.load(Ordering::Relaxed))
    }

    fn count_partitions(&self, partitions: &[Partition]) {
        self.n_partitions.store(partitions.len() as u64, Ordering::Relaxed);
        let n_bytes = partitions.iter().map(|partition| partition.n_bytes).sum();
        self.n_partition_bytes.store(n_bytes, Ordering::Relaxed);
    }

    /// Writes the changed partitions and a manifest, then deletes what they
    /// supersede and the log segments they cover (see the protocol above).
    /// Answers `wal_from`.
    pub(crate) async fn checkpoint(&self) -> Result<u64, SnapshotError> {
        let mut in_force = self.running.lock().await;
        let wal_from = self.wal.rotate().await?;
        self.wal.settled_below(wal_from).await;
        let cutoff_day = self.retention_days.map(|n_days| day_of(now_ms()) - i64::from(n_days));
        let export = {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || store.export(|tables, edges| export(tables, edges, cutoff_day))).await?
        };
        let taken = export.taken.clone();
        let retained_from_day = export.retained_from_day;
        let (data_dir, previous) = (self.data_dir.clone(), in_force.clone());
        let written =
            tokio::task::spawn_blocking(move || write_checkpoint(&data_dir, wal_from, &previous, export)).await;
        let manifest = match written {
            Ok(Ok(manifest)) => manifest,
            Ok(Err(error)) => {
                self.store.mark_dirty(taken);
                return Err(error);
            }
            Err(error) => {
                self.store.mark_dirty(taken);
                return Err(error.into());
            }
        };
        self.snapshots_written.fetch_add(1, Ordering::Relaxed);
        if let Some(cutoff_day) = retained_from_day {
            let store = self.store.clone();
            let n_days = tokio::task::spawn_blocking(move || store.drop_days_before(cutoff_day)).await?;
            if n_days > 0 {
                self.days_dropped.fetch_add(n_days, Ordering::Relaxed);
                info!(n_days, first_day_kept = %day_text(cutoff_day), "Retention dropped days.");
            }
        }
        let superseded: Vec<Partition> =
            in_force.iter().filter(|partition| !manifest.partitions.contains(partition)).copied().collect();
        let data_dir = self.data_dir.clone();
        let n_superseded = superseded.len();
        tokio::task::spawn_blocking(move || {
            for partition in &superseded {
                // The manifest no longer names it; start deletes it if this fails.
                if let Err(error) = partition::remove(&data_dir, partition) {
                    warn!(%error, "Superseded partition not deleted; the next start deletes it.");
                }
            }
        })
        .await?;
        self.count_partitions(&manifest.partitions);
        let n_partitions = manifest.partitions.len();
        *in_force = manifest.partitions;
        let n_removed = self.wal.remove_segments_below(wal_from)?;
        info!(
            wal_from,
            n_written = taken.len(),
            n_superseded,
            n_partitions,
            n_removed,
            "Checkpoint written; write-ahead log truncated."
        );
        Ok(wal_from)
    }
}

/// Checkpoints whenever the log asks (past `snapshot_wal_bytes`) until
/// `stop` fires; a checkpoint under way is finished first.
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

/// Step 3 of the protocol, under the store's lock: moves the cutoff, takes
/// the changed partitions and builds their Arrow batches (compression
/// happens after, outside the lock).
fn export(tables: &mut Tables, edges: &HashMap<u32, EdgeMark>, cutoff_day: Option<i64>) -> Export {
    let retained_from_day = match (tables.retained_from_day, cutoff_day) {
        (Some(kept), Some(cutoff)) => Some(kept.max(cutoff)),
        (kept, cutoff) => kept.or(cutoff),
    };
    tables.retained_from_day = retained_from_day;
    let mut marks: Vec<(u32, EdgeMark)> = edges.iter().map(|(&edge_id, &mark)| (edge_id, mark)).collect();
    marks.sort_unstable_by_key(|&(edge_id, _)| edge_id);
    let taken: Vec<(Dataset, i64)> = std::mem::take(&mut tables.dirty).into_iter().collect();
    let retained = |day: i64| retained_from_day.is_none_or(|first_day| day >= first_day);
    let conversion_days: BTreeSet<i64> = taken
        .iter()
        .filter(|&&(dataset, day)| dataset == Dataset::Conversions && retained(day))
        .map(|&(_, day)| day)
        .collect();
    let mut conversions_by_day: HashMap<i64, Vec<&crate::ledger::Conversion>> = HashMap::new();
    if !conversion_days.is_empty() {
        for conversion in &tables.conversions {
            let day = day_of(conversion.row.time_ms);
            if conversion_days.contains(&day) {
                conversions_by_day.entry(day).or_default().push(conversion);
            }
        }
    }
    let mut batches = Vec::new();
    for &(dataset, day) in taken.iter().filter(|&&(_, day)| retained(day)) {
        let batch = match dataset {
            Dataset::Rollups => {
                let minute = |minute_ms: i64| edgetally_protocol::batch::RollupKey {
                    minute_ms,
                    affiliate_id: 0,
                    campaign_id: 0,
                    sub1: String::new(),
                };
                let start_ms = day.saturating_mul(DAY_MS);
                let end_ms = start_ms.saturating_add(DAY_MS);
                let rows: Vec<_> = tables.rollups.range(minute(start_ms)..minute(end_ms)).collect();
                rollups_to_batch(rows.into_iter())
            }
            Dataset::Conversions => {
                let rows = conversions_by_day.get(&day).map_or(&[][..], Vec::as_slice);
                ledger_to_batch(rows.iter().copied())
            }
            Dataset::Quarantine => quarantine_to_batch(tables.quarantine.day(day)),
        };
        if batch.num_rows() > 0 {
            batches.push((dataset, day, batch));
        }
    }
    Export {
        marks,
        rules: tables.rules.body.clone(),
        quarantine_dropped: tables.quarantine_dropped,
        retained_from_day,
        taken,
        batches,
    }
}

/// Steps 4 and 5: the new files, then the manifest naming them. On
/// failure, deletes the files it wrote (best effort: start deletes
/// unlisted files anyway).
fn write_checkpoint(
    data_dir: &Path,
    wal_from: u64,
    previous: &[Partition],
    export: Export,
) -> Result<Manifest, SnapshotError> {
    let mut written = Vec::with_capacity(export.batches.len());
    let result = (|| -> Result<Manifest, SnapshotError> {
        for (dataset, day, batch) in &export.batches {
            written.push(partition::write(data_dir, *dataset, *day, wal_from, batch)?);
        }
        partition::sync_dirs(data_dir, &written)?;
        let taken: HashSet<(Dataset, i64)> = export.taken.iter().copied().collect();
        let retained = |day: i64| export.retained_from_day.is_none_or(|first_day| day >= first_day);
        let mut partitions: Vec<Partition> = previous
            .iter()
            .filter(|partition| !taken.contains(&(partition.dataset, partition.day)) && retained(partition.day))
            .copied()
            .chain(written.iter().copied())
            .collect();
        partitions.sort_unstable_by_key(|partition| (partition.dataset, partition.day));
        let manifest = Manifest {
            wal_from,
            marks: export.marks,
            rules: export.rules,
            quarantine_dropped: export.quarantine_dropped,
            retained_from_day: export.retained_from_day,
            partitions,
        };
        write(data_dir, &encode(&manifest))?;
        Ok(manifest)
    })();
    if result.is_err() {
        for partition in &written {
            let _ = partition::remove(data_dir, partition);
        }
    }
    result
}

/// Encodes a manifest's bytes.
pub(crate) fn encode(manifest: &Manifest) -> Vec<u8> {
    let mut marks = Vec::with_capacity(manifest.marks.len() * MARK_LEN);
    for (edge_id, mark) in &manifest.marks {
        marks.extend_from_slice(&edge_id.to_le_bytes());
        marks.extend_from_slice(&mark.epoch.to_le_bytes());
        marks.extend_from_slice(&mark.high_water.to_le_bytes());
    }
    let mut partitions = Vec::with_capacity(manifest.partitions.len() * PARTITION_ENTRY_LEN);
    for partition in &manifest.partitions {
        partitions.push(partition.dataset.code());
        partitions.extend_from_slice(&[0; 3]);
        partitions.extend_from_slice(&partition.crc32.to_le_bytes());
        partitions.extend_from_slice(&partition.day.to_le_bytes());
        partitions.extend_from_slice(&partition.generation.to_le_bytes());
        partitions.extend_from_slice(&partition.n_rows.to_le_bytes());
        partitions.extend_from_slice(&partition.n_bytes.to_le_bytes());
    }
    let sections = [&marks[..], &manifest.rules[..], &partitions[..]];
    let mut out = Vec::with_capacity(HEADER_LEN + sections.iter().map(|section| section.len()).sum::<usize>());
    out.extend_from_slice(&SNAPSHOT_MAGIC);
    out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&manifest.wal_from.to_le_bytes());
    out.extend_from_slice(&manifest.quarantine_dropped.to_le_bytes());
    out.extend_from_slice(&manifest.retained_from_day.unwrap_or(i64::MIN).to_le_bytes());
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
    out
}

/// Decodes a manifest's bytes, checking the CRC before anything else, then
/// that the partitions are one per `(dataset, day)`, in order, and none
/// before the retention cutoff.
pub(crate) fn decode(bytes: &[u8]) -> Result<Manifest, DecodeError> {
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
    let retained_from_day = Some(u64_at(24) as i64).filter(|&day| day != i64::MIN);
    let section_lens = [u64_at(32), u64_at(40), u64_at(48)];
    let expected = u32::from_le_bytes(bytes[56..60].try_into().expect("a 4-byte slice"));
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
    let mut sections = [&[][..]; 3];
    let mut start = HEADER_LEN;
    for (section, len) in sections.iter_mut().zip(section_lens) {
        *section = &bytes[start..start + len as usize];
        start += len as usize;
    }
    let [marks_bytes, rules, partitions_bytes] = sections;
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
    if partitions_bytes.len() % PARTITION_ENTRY_LEN != 0 {
        return Err(DecodeError::Partitions { len: partitions_bytes.len() as u64 });
    }
    let mut partitions: Vec<Partition> = Vec::with_capacity(partitions_bytes.len() / PARTITION_ENTRY_LEN);
    for (entry_idx, entry) in partitions_bytes.chunks_exact(PARTITION_ENTRY_LEN).enumerate() {
        let bad = |reason: String| DecodeError::Entry { entry_idx, reason };
        let u64_at = |idx: usize| u64::from_le_bytes(entry[idx..idx + 8].try_into().expect("an 8-byte slice"));
        let dataset = Dataset::from_code(entry[0]).ok_or_else(|| bad(format!("unknown dataset {}", entry[0])))?;
        let partition = Partition {
            dataset,
            crc32: u32::from_le_bytes(entry[4..8].try_into().expect("a 4-byte slice")),
            day: u64_at(8) as i64,
            generation: u64_at(16),
            n_rows: u64_at(24),
            n_bytes: u64_at(32),
        };
        if let Some(previous) = partitions.last()
            && (previous.dataset, previous.day) >= (partition.dataset, partition.day)
        {
            return Err(bad(format!(
                "{} day {} follows day {}: entries must be one per dataset and day, in order",
                dataset.name(),
                day_text(partition.day),
                day_text(previous.day)
            )));
        }
        if retained_from_day.is_some_and(|first_day| partition.day < first_day) {
            return Err(bad(format!("{} day {} is before retention", dataset.name(), day_text(partition.day))));
        }
        partitions.push(partition);
    }
    Ok(Manifest {
        wal_from,
        marks,
        rules: bytes::Bytes::copy_from_slice(rules),
        quarantine_dropped,
        retained_from_day,
        partitions,
    })
}

/// Reads `<data_dir>/snapshot.bin` and every partition it lists, then
/// deletes the partition files it does not list; `None` if there is no
/// manifest (every partition file is then a leftover). Nothing is deleted
/// unless everything read back.
pub(crate) fn load(data_dir: &Path) -> Result<Option<Snapshot>, SnapshotError> {
    let path = data_dir.join(SNAPSHOT_FILE_NAME);
    let manifest = match fs::read(&path) {
        Ok(bytes) => Some(decode(&bytes).map_err(|source| SnapshotError::Corrupt { path: path.clone(), source })?),
        Err(error) if error.kind() == io::ErrorKind::NotFound => None,
        Err(source) => return Err(SnapshotError::Io { op: "read", path, source }),
    };
    let snapshot = match manifest {
        Some(manifest) => Some(restore(data_dir, manifest, &path)?),
        None => None,
    };
    let listed: HashSet<PathBuf> = snapshot
        .iter()
        .flat_map(|snapshot| snapshot.partitions.iter().map(|partition| partition.path(data_dir)))
        .collect();
    let n_removed = partition::remove_unlisted(data_dir, &listed)?;
    if n_removed > 0 {
        warn!(n_removed, "Deleted partition files no manifest lists: leftovers of an interrupted checkpoint.");
    }
    Ok(snapshot)
}

/// Rebuilds the tables from `manifest` and its partitions.
fn restore(data_dir: &Path, manifest: Manifest, manifest_path: &Path) -> Result<Snapshot, SnapshotError> {
    let rules = Rules::parse(manifest.rules).map_err(|source| SnapshotError::Corrupt {
        path: manifest_path.to_owned(),
        source: DecodeError::Rules(source),
    })?;
    let mut tables = Tables {
        rules,
        quarantine_dropped: manifest.quarantine_dropped,
        retained_from_day: manifest.retained_from_day,
        ..Tables::default()
    };
    for partition in &manifest.partitions {
        let batches = partition::read(data_dir, partition)?;
        let path = partition.path(data_dir);
        let bad = |reason: String| PartitionError::Rows { path: path.clone(), reason };
        let rows_of = |source: BatchError| bad(format!("{source}"));
        let wrong_day = |time_ms: i64| {
            bad(format!(
                "a row of {} (time {time_ms} ms) in the partition of {}",
                day_text(day_of(time_ms)),
                day_text(partition.day)
            ))
        };
        for batch in &batches {
            match partition.dataset {
                Dataset::Rollups => {
                    for (key, counts) in rollups_from_batch(batch).map_err(rows_of)? {
                        if day_of(key.minute_ms) != partition.day {
                            return Err(wrong_day(key.minute_ms).into());
                        }
                        if tables.rollups.insert(key.clone(), counts).is_some() {
                            return Err(bad(format!("rollup key {key:?} appears twice")).into());
                        }
                    }
                }
                Dataset::Conversions => {
                    for conversion in ledger_from_batch(batch).map_err(rows_of)? {
                        if day_of(conversion.row.time_ms) != partition.day {
                            return Err(wrong_day(conversion.row.time_ms).into());
                        }
                        if let Some(key) = ConversionKey::of(&conversion.row)
                            && tables.conversion_index.contains_key(&key)
                        {
                            return Err(bad(format!("conversion {key:?} is booked twice")).into());
                        }
                        tables.insert(conversion);
                    }
                }
                Dataset::Quarantine => {
                    for row in quarantine_from_batch(batch).map_err(rows_of)? {
                        if day_of(row.time_ms) != partition.day {
                            return Err(wrong_day(row.time_ms).into());
                        }
                        if tables.quarantine.len() == QUARANTINE_ROWS_MAX {
                            return Err(bad(format!("more than {QUARANTINE_ROWS_MAX} quarantine rows")).into());
                        }
                        tables.quarantine.push(row);
                    }
                }
            }
        }
    }
    let marks = manifest.marks.into_iter().collect();
    Ok(Snapshot { wal_from: manifest.wal_from, marks, tables, partitions: manifest.partitions })
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
    // The rename must be durable before any segment or file it supersedes
    // is deleted.
    wal::sync_dir(data_dir)?;
    Ok(())
}

/// The wall clock in Unix ms, for the retention cutoff; a clock before
/// 1970 reads as 0.
fn now_ms() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;

/// Writes into the empty `data_dir` a checkpoint that holds `conversions`,
/// booked as one batch of edge `edge_id` under the commission rules of the
/// campaigns file `rules` (with their leads and sales counted in the
/// rollups), so that an aggregator started on it serves them from its
/// sealed partitions. Answers the partition files written. For benchmarks
/// that need a large ledger without shipping it through an edge first;
/// not a way to import data.
#[doc(hidden)]
pub fn seed(
    data_dir: &Path,
    rules: bytes::Bytes,
    edge_id: u32,
    conversions: Vec<edgetally_protocol::batch::ConversionRow>,
) -> Result<Vec<PathBuf>, crate::Error> {
    use edgetally_protocol::{EventKind, RollupCounts};

    fs::create_dir_all(data_dir).map_err(|source| crate::Error::DataDir { path: data_dir.to_owned(), source })?;
    let store = Store::default();
    store.set_rules(Rules::parse(rules).map_err(crate::Error::Rules)?);
    let mut rollups: std::collections::BTreeMap<_, RollupCounts> = std::collections::BTreeMap::new();
    for row in &conversions {
        let counts = rollups.entry(crate::store::rollup_key(row)).or_default();
        match row.kind {
            EventKind::Lead => counts.leads += 1,
            _ => counts.sales += 1,
        }
    }
    let batch = crate::store::Batch {
        edge_id,
        epoch: 1,
        sequence: 1,
        rollups: rollups.into_iter().collect(),
        conversions,
        quarantine: Vec::new(),
    };
    store.apply(batch);
    let export = store.export(|tables, edges| export(tables, edges, None));
    let manifest = write_checkpoint(data_dir, wal::FIRST_SEGMENT, &[], export)?;
    Ok(manifest.partitions.iter().map(|partition| partition.path(data_dir)).collect())
}
