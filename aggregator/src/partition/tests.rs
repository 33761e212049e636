//! Partition files: day names, a round trip through the `parquet` reader,
//! and every kind of damage refused with the file's name.

use arrow_array::cast::AsArray;
use edgetally_protocol::batch::{QuarantineRow, quarantine_to_batch};

use super::*;

#[track_caller]
fn check_day(time_ms: i64, expect: &str) {
    assert_eq!(day_text(day_of(time_ms)), expect, "time {time_ms} ms");
}

#[test]
fn days_are_utc_dates() {
    check_day(0, "1970-01-01");
    check_day(DAY_MS - 1, "1970-01-01");
    check_day(DAY_MS, "1970-01-02");
    check_day(-1, "1969-12-31");
    check_day(951_782_400_000, "2000-02-29");
    check_day(951_868_800_000, "2000-03-01");
    check_day(1_795_514_400_000, "2026-11-24");
    check_day(1_795_564_799_999, "2026-11-24");
    check_day(1_795_564_800_000, "2026-11-25");
    check_day(4_107_542_400_000, "2100-03-01");
    check_day(253_402_300_799_999, "9999-12-31");
    // Every day of 1900..2200 agrees with jiff's calendar.
    let mut date = jiff::civil::date(1900, 1, 1);
    let first_day = -25_567;
    for day in first_day..first_day + 300 * 366 {
        assert_eq!(day_text(day), date.to_string(), "day {day}");
        date = date.tomorrow().unwrap();
    }
    // Nothing an i64 of milliseconds names panics.
    let _ = day_text(day_of(i64::MIN));
    let _ = day_text(day_of(i64::MAX));
}

fn rows(n_rows: i64) -> RecordBatch {
    let rows: Vec<QuarantineRow> = (0..n_rows)
        .map(|row_idx| QuarantineRow::new(1_795_514_400_000 + row_idx, "pixel", "bad_id", "bad affiliate_id", "aff=x"))
        .collect();
    quarantine_to_batch(&rows)
}

const DAY: i64 = 20_781;

#[test]
fn round_trip_through_the_parquet_reader() {
    let data_dir = tempfile::tempdir().unwrap();
    let batch = rows(1_000);
    let partition = write(data_dir.path(), Dataset::Quarantine, DAY, 7, &batch).unwrap();
    let path = data_dir.path().join("parquet/quarantine/day=2026-11-24/part-00000000000000000007.parquet");
    assert_eq!(partition.path(data_dir.path()), path);
    assert_eq!((partition.n_rows, partition.n_bytes), (1_000, fs::metadata(&path).unwrap().len()));
    // Any Parquet reader: the plain builder, no knowledge of ours.
    let file = File::open(&path).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let compression = reader.metadata().row_group(0).column(0).compression();
    assert!(matches!(compression, Compression::ZSTD(_)), "{compression:?}");
    let read_back: Vec<RecordBatch> = reader.build().unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(read_back[0].num_rows(), 1_000);
    assert_eq!(read_back[0].schema(), batch.schema());
    assert_eq!(read_back, std::slice::from_ref(&batch));
    assert_eq!(read(data_dir.path(), &partition).unwrap(), [batch]);
    // A generation is written once.
    let again = write(data_dir.path(), Dataset::Quarantine, DAY, 7, &rows(1)).unwrap_err();
    assert!(again.to_string().starts_with(&format!("write {}: ", path.display())), "{again}");
}

#[track_caller]
fn check_damage(data_dir: &Path, partition: &Partition, expect: &str) {
    let error = read(data_dir, partition).unwrap_err();
    let path = partition.path(data_dir);
    assert_eq!(error.to_string(), expect.replace("{path}", &path.display().to_string()));
}

#[test]
fn damage_is_refused_by_name() {
    let data_dir = tempfile::tempdir().unwrap();
    let partition = write(data_dir.path(), Dataset::Quarantine, DAY, 3, &rows(10)).unwrap();
    let path = partition.path(data_dir.path());
    let good = fs::read(&path).unwrap();
    let n_bytes = good.len();

    check_damage(
        data_dir.path(),
        &Partition { n_rows: 11, ..partition },
        "partition {path}: 10 rows, the manifest says 11",
    );
    check_damage(
        data_dir.path(),
        &Partition { dataset: Dataset::Rollups, ..partition },
        &format!(
            "partition {} listed in the manifest is missing",
            Partition { dataset: Dataset::Rollups, ..partition }.path(data_dir.path()).display()
        ),
    );

    fs::write(&path, &good[..n_bytes - 1]).unwrap();
    check_damage(
        data_dir.path(),
        &partition,
        &format!("partition {{path}} is {} bytes, the manifest says {n_bytes}", n_bytes - 1),
    );
    let mut flipped = good.clone();
    flipped[n_bytes / 2] ^= 1;
    fs::write(&path, &flipped).unwrap();
    let actual = crc32fast::hash(&flipped);
    check_damage(
        data_dir.path(),
        &partition,
        &format!("partition {{path}} crc mismatch: manifest says {:#010x}, content is {actual:#010x}", partition.crc32),
    );
    // Bytes that match their entry but are not Parquet: refused, no panic.
    let garbage = vec![0x55u8; n_bytes];
    fs::write(&path, &garbage).unwrap();
    let forged = Partition { crc32: crc32fast::hash(&garbage), ..partition };
    let error = read(data_dir.path(), &forged).unwrap_err();
    assert!(matches!(error, PartitionError::Parquet { .. }), "{error}");
    // A Parquet file of another dataset's schema.
    fs::remove_file(&path).unwrap();
    let other = write(data_dir.path(), Dataset::Quarantine, DAY, 3, &rows(10)).unwrap();
    let error = read(data_dir.path(), &Partition { dataset: Dataset::Rollups, ..other }).unwrap_err();
    assert!(matches!(error, PartitionError::Missing { .. }), "{error}");
    let as_rollups = Partition { dataset: Dataset::Rollups, ..other };
    fs::create_dir_all(as_rollups.path(data_dir.path()).parent().unwrap()).unwrap();
    fs::copy(&path, as_rollups.path(data_dir.path())).unwrap();
    let error = read(data_dir.path(), &as_rollups).unwrap_err().to_string();
    assert!(error.contains("schema is not the rollups schema"), "{error}");
    assert_eq!(read(data_dir.path(), &other).unwrap()[0].column(1).as_string::<i32>().value(0), "pixel");
}

#[test]
fn unlisted_files_are_removed() {
    let data_dir = tempfile::tempdir().unwrap();
    let kept = write(data_dir.path(), Dataset::Quarantine, DAY, 3, &rows(2)).unwrap();
    let superseded = write(data_dir.path(), Dataset::Quarantine, DAY, 2, &rows(1)).unwrap();
    let leftover = write(data_dir.path(), Dataset::Rollups, DAY + 1, 4, &rollup_rows()).unwrap();
    let temp = data_dir.path().join("parquet/conversions/day=2026-11-26/part-00000000000000000004.parquet.tmp");
    fs::create_dir_all(temp.parent().unwrap()).unwrap();
    fs::write(&temp, b"half").unwrap();
    // Not ours: a file beside the day directories is left alone.
    let note = data_dir.path().join("parquet/rollups/README");
    fs::write(&note, b"notes").unwrap();

    let listed = HashSet::from([kept.path(data_dir.path())]);
    assert_eq!(remove_unlisted(data_dir.path(), &listed).unwrap(), 3);
    assert!(kept.path(data_dir.path()).exists());
    assert!(!superseded.path(data_dir.path()).exists());
    assert!(!leftover.path(data_dir.path()).parent().unwrap().exists(), "empty day directories go");
    assert!(!temp.parent().unwrap().exists());
    assert!(note.exists());
    assert_eq!(remove_unlisted(data_dir.path(), &listed).unwrap(), 0);
    // No parquet directory at all is nothing to do.
    assert_eq!(remove_unlisted(tempfile::tempdir().unwrap().path(), &HashSet::new()).unwrap(), 0);
}

fn rollup_rows() -> RecordBatch {
    use edgetally_protocol::batch::{RollupCounts, RollupKey, rollups_to_batch};
    let key = RollupKey { minute_ms: (DAY + 1) * DAY_MS, affiliate_id: 1, campaign_id: 2, sub1: String::new() };
    let counts = RollupCounts { impressions: 1, ..RollupCounts::default() };
    rollups_to_batch([(&key, &counts)].into_iter())
}
