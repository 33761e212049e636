//! Sealed Parquet partitions: the rows of the store, one file per dataset
//! and UTC day, laid out so that any Parquet reader (DataFusion, DuckDB,
//! Spark, pandas) can read the directory as a hive-partitioned table:
//!
//! ```text
//! <data_dir>/parquet/<dataset>/day=YYYY-MM-DD/part-<generation>.parquet
//! ```
//!
//! `rollups` holds `ROLLUP_SCHEMA` rows by the day of `minute`,
//! `conversions` the ledger (`LEDGER_SCHEMA`, with status and commission)
//! by the day of `time`, and `quarantine` `QUARANTINE_SCHEMA` rows by the
//! day of `time`. Days are UTC: the store holds UTC milliseconds only.
//!
//! A file is written once and never changed. When a day changes, the next
//! checkpoint writes the whole day again as a new file with a new
//! generation (the checkpoint's `wal_from`, so generations only grow) and
//! the manifest (`snapshot.rs`) names the new file; the old one is deleted
//! only after that manifest is durable. Which file of a day is in force is
//! decided by the manifest alone, never by listing the directory: a file
//! the manifest does not name is a leftover of an interrupted checkpoint
//! and is deleted at start.
//!
//! The manifest records each file's length and CRC-32, so a missing,
//! truncated or damaged file is a startup error naming it, never an empty
//! day. The Parquet footer's Arrow schema is compared with the dataset's,
//! the row count with the manifest's, and every row's day with the
//! partition's, before a row reaches the store.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use edgetally_protocol::batch::{QUARANTINE_SCHEMA, ROLLUP_SCHEMA};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::ledger::LEDGER_SCHEMA;

/// The directory of every partition, in the data directory.
pub(crate) const PARQUET_DIR_NAME: &str = "parquet";

/// Milliseconds in a UTC day: days have no leap seconds in Unix time.
pub(crate) const DAY_MS: i64 = 86_400_000;

/// Rows per batch when reading a file back: large enough that batch
/// overhead does not matter, small enough that a day is not decoded into
/// one huge array on top of the rows built from it.
const READ_BATCH_ROWS: usize = 64 * 1024;

/// The zstd level of every page. Level 3 (zstd's default) compresses these
/// rows (repetitive ids and short strings) to a fifth or less at a few
/// hundred MB/s, so a checkpoint is bound by the disk, not by compression.
const ZSTD_LEVEL: i32 = 3;

/// A dataset kept as partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Dataset {
    Rollups,
    Conversions,
    Quarantine,
}

/// One partition file in force, as the manifest lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Partition {
    pub(crate) dataset: Dataset,
    /// Days since 1970-01-01, UTC.
    pub(crate) day: i64,
    /// The `wal_from` of the checkpoint that wrote it.
    pub(crate) generation: u64,
    pub(crate) n_rows: u64,
    pub(crate) n_bytes: u64,
    /// CRC-32 of the whole file.
    pub(crate) crc32: u32,
}

/// Why a partition could not be written or read. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error("{op} {}: {source}", path.display())]
    Io { op: &'static str, path: PathBuf, source: io::Error },
    #[error("partition {} listed in the manifest is missing", path.display())]
    Missing { path: PathBuf },
    #[error("partition {} is {actual} bytes, the manifest says {expected}", path.display())]
    Length { path: PathBuf, expected: u64, actual: u64 },
    #[error("partition {} crc mismatch: manifest says {expected:#010x}, content is {actual:#010x}", path.display())]
    Crc { path: PathBuf, expected: u32, actual: u32 },
    #[error("partition {}: parquet: {reason}", path.display())]
    Parquet { path: PathBuf, reason: String },
    #[error("partition {}: {reason}", path.display())]
    Rows { path: PathBuf, reason: String },
    #[error("encode {dataset} partition of day {day}: {reason}")]
    Encode { dataset: &'static str, day: String, reason: String },
}

// === impl Dataset ===

impl Dataset {
    pub(crate) const ALL: [Dataset; 3] = [Dataset::Rollups, Dataset::Conversions, Dataset::Quarantine];

    /// The directory name, as Flight tickets name the dataset too.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Dataset::Rollups => "rollups",
            Dataset::Conversions => "conversions",
            Dataset::Quarantine => "quarantine",
        }
    }

    /// The byte that names the dataset in the manifest.
    pub(crate) fn code(self) -> u8 {
        match self {
            Dataset::Rollups => 1,
            Dataset::Conversions => 2,
            Dataset::Quarantine => 3,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Dataset> {
        Dataset::ALL.into_iter().find(|dataset| dataset.code() == code)
    }

    pub(crate) fn schema(self) -> SchemaRef {
        match self {
            Dataset::Rollups => ROLLUP_SCHEMA.clone(),
            Dataset::Conversions => LEDGER_SCHEMA.clone(),
            Dataset::Quarantine => QUARANTINE_SCHEMA.clone(),
        }
    }
}

// === impl Partition ===

impl Partition {
    /// `parquet/<dataset>/day=YYYY-MM-DD/part-<generation>.parquet`, under
    /// `data_dir`.
    pub(crate) fn path(&self, data_dir: &Path) -> PathBuf {
        day_dir(data_dir, self.dataset, self.day).join(file_name(self.generation))
    }
}

/// Days since 1970-01-01 of a UTC time in milliseconds.
pub(crate) fn day_of(time_ms: i64) -> i64 {
    time_ms.div_euclid(DAY_MS)
}

/// `YYYY-MM-DD` of a day since 1970-01-01 (proleptic Gregorian), by
/// Howard Hinnant's `civil_from_days`: exact for every day an `i64` of
/// milliseconds can name, with no table and no failure.
pub(crate) fn day_text(day: i64) -> String {
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day_of_month = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day_of_month:02}")
}

fn dataset_dir(data_dir: &Path, dataset: Dataset) -> PathBuf {
    data_dir.join(PARQUET_DIR_NAME).join(dataset.name())
}

fn day_dir(data_dir: &Path, dataset: Dataset, day: i64) -> PathBuf {
    dataset_dir(data_dir, dataset).join(format!("day={}", day_text(day)))
}

fn file_name(generation: u64) -> String {
    format!("part-{generation:020}.parquet")
}

/// Encodes `batch` as one Parquet file: zstd pages, the Arrow schema in
/// the footer so readers get back the exact types (unsigned ids, UTC
/// timestamps).
pub(crate) fn encode(dataset: Dataset, day: i64, batch: &RecordBatch) -> Result<Vec<u8>, PartitionError> {
    let bad = |error: parquet::errors::ParquetError| PartitionError::Encode {
        dataset: dataset.name(),
        day: day_text(day),
        reason: error.to_string(),
    };
    let level = ZstdLevel::try_new(ZSTD_LEVEL).map_err(bad)?;
    let properties = WriterProperties::builder().set_compression(Compression::ZSTD(level)).build();
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, batch.schema(), Some(properties)).map_err(bad)?;
    writer.write(batch).map_err(bad)?;
    writer.close().map_err(bad)?;
    Ok(bytes)
}

/// Writes `batch` as the partition `(dataset, day)` of `generation` and
/// fsyncs the file (not its directories: see [`sync_dirs`]). Answers its
/// manifest entry.
pub(crate) fn write(
    data_dir: &Path,
    dataset: Dataset,
    day: i64,
    generation: u64,
    batch: &RecordBatch,
) -> Result<Partition, PartitionError> {
    let bytes = encode(dataset, day, batch)?;
    let partition = Partition {
        dataset,
        day,
        generation,
        n_rows: batch.num_rows() as u64,
        n_bytes: bytes.len() as u64,
        crc32: crc32fast::hash(&bytes),
    };
    let dir = day_dir(data_dir, dataset, day);
    fs::create_dir_all(&dir).map_err(|source| PartitionError::Io { op: "create", path: dir.clone(), source })?;
    let path = partition.path(data_dir);
    let write_file = || -> io::Result<()> {
        // A generation is new, so an existing file of that name is a
        // surprise to report, never something to overwrite.
        let mut file = File::options().write(true).create_new(true).open(&path)?;
        file.write_all(&bytes)?;
        file.sync_all()
    };
    write_file().map_err(|source| PartitionError::Io { op: "write", path: path.clone(), source })?;
    Ok(partition)
}

/// Makes the directory entries of `partitions` durable: each day
/// directory, the dataset directories, `parquet/` and the data directory
/// (which holds `parquet/`).
pub(crate) fn sync_dirs(data_dir: &Path, partitions: &[Partition]) -> Result<(), PartitionError> {
    let mut dirs: Vec<PathBuf> =
        partitions.iter().map(|partition| day_dir(data_dir, partition.dataset, partition.day)).collect();
    dirs.extend(Dataset::ALL.map(|dataset| dataset_dir(data_dir, dataset)));
    dirs.push(data_dir.join(PARQUET_DIR_NAME));
    dirs.push(data_dir.to_owned());
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        let sync = File::open(&dir).and_then(|dir| dir.sync_all());
        match sync {
            Ok(()) => {}
            // A dataset with no partition yet has no directory.
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(PartitionError::Io { op: "fsync directory", path: dir, source }),
        }
    }
    Ok(())
}

/// Reads the file of `partition` back: length and CRC first, then the
/// Parquet, whose schema must be the dataset's and whose row count must be
/// the manifest's. Rows are checked for their day by the caller, which
/// decodes them.
pub(crate) fn read(data_dir: &Path, partition: &Partition) -> Result<Vec<RecordBatch>, PartitionError> {
    let path = partition.path(data_dir);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Err(PartitionError::Missing { path }),
        Err(source) => return Err(PartitionError::Io { op: "read", path, source }),
    };
    if bytes.len() as u64 != partition.n_bytes {
        return Err(PartitionError::Length { path, expected: partition.n_bytes, actual: bytes.len() as u64 });
    }
    let actual = crc32fast::hash(&bytes);
    if actual != partition.crc32 {
        return Err(PartitionError::Crc { path, expected: partition.crc32, actual });
    }
    let batches =
        decode(bytes::Bytes::from(bytes)).map_err(|reason| PartitionError::Parquet { path: path.clone(), reason })?;
    let expected_schema = partition.dataset.schema();
    let mut n_rows = 0u64;
    for batch in &batches {
        if batch.schema().fields() != expected_schema.fields() {
            return Err(PartitionError::Rows {
                path,
                reason: format!("schema is not the {} schema: {:?}", partition.dataset.name(), batch.schema()),
            });
        }
        n_rows += batch.num_rows() as u64;
    }
    if n_rows != partition.n_rows {
        return Err(PartitionError::Rows {
            path,
            reason: format!("{n_rows} rows, the manifest says {}", partition.n_rows),
        });
    }
    Ok(batches)
}

/// Decodes a Parquet file's batches. The bytes passed the manifest's CRC,
/// so they are what this process wrote; the reader still runs under
/// `catch_unwind` (like `decode_ipc`), so even a file that matches its CRC
/// by accident cannot panic the start.
fn decode(bytes: bytes::Bytes) -> Result<Vec<RecordBatch>, String> {
    let decode = || -> Result<Vec<RecordBatch>, String> {
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|builder| builder.with_batch_size(READ_BATCH_ROWS).build())
            .map_err(|error| error.to_string())?;
        reader.collect::<Result<Vec<_>, _>>().map_err(|error| error.to_string())
    };
    std::panic::catch_unwind(decode)
        .unwrap_or_else(|panic| Err(format!("reader panicked: {}", edgetally_protocol::batch::panic_message(&*panic))))
}

/// Deletes `partition`'s file; a file already gone is fine. Its day
/// directory goes too once empty.
pub(crate) fn remove(data_dir: &Path, partition: &Partition) -> Result<(), PartitionError> {
    let path = partition.path(data_dir);
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(PartitionError::Io { op: "remove", path, source }),
    }
    // Fails while the directory still holds a file, which is expected.
    let _ = fs::remove_dir(day_dir(data_dir, partition.dataset, partition.day));
    Ok(())
}

/// Deletes every file under the day directories of `parquet/` that is not
/// in `listed` (paths as [`Partition::path`] builds them), and day
/// directories left empty: leftovers of a checkpoint that did not reach
/// its manifest, or of deletions a crash cut short. Other directories are
/// left alone. Answers how many files were deleted.
pub(crate) fn remove_unlisted(data_dir: &Path, listed: &HashSet<PathBuf>) -> Result<u64, PartitionError> {
    let io_error = |op: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| PartitionError::Io { op, path, source }
    };
    let mut n_removed = 0;
    for dataset in Dataset::ALL {
        let dataset_dir = dataset_dir(data_dir, dataset);
        let day_dirs = match fs::read_dir(&dataset_dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(PartitionError::Io { op: "list", path: dataset_dir, source }),
        };
        for entry in day_dirs {
            let day_dir = entry.map_err(io_error("list", &dataset_dir))?.path();
            let is_day_dir = day_dir.is_dir()
                && day_dir.file_name().and_then(|name| name.to_str()).is_some_and(|name| name.starts_with("day="));
            if !is_day_dir {
                continue;
            }
            for entry in fs::read_dir(&day_dir).map_err(io_error("list", &day_dir))? {
                let path = entry.map_err(io_error("list", &day_dir))?.path();
                if path.is_file() && !listed.contains(&path) {
                    fs::remove_file(&path).map_err(io_error("remove", &path))?;
                    n_removed += 1;
                }
            }
            // Fails while the directory still holds a file, which is expected.
            let _ = fs::remove_dir(&day_dir);
        }
    }
    Ok(n_removed)
}

#[cfg(test)]
mod tests;
