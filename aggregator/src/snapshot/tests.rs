//! The manifest: a round trip, each kind of damage refused by name; and
//! checkpoints through the partition files: what is written, what a load
//! rebuilds, what it refuses and what it deletes.

use edgetally_protocol::batch::{ConversionRow, QuarantineRow, RollupCounts, RollupKey};
use edgetally_protocol::event::EventKind;

use super::*;
use crate::ledger::Status;
use crate::store::{Admission, Batch};

/// 2026-11-24 and the day after, in days since 1970.
const DAY_1: i64 = 20_781;
const DAY_2: i64 = DAY_1 + 1;

fn conversion(time_ms: i64, order_id: &str) -> ConversionRow {
    ConversionRow {
        time_ms,
        kind: EventKind::Lead,
        affiliate_id: 1,
        campaign_id: 2,
        sub1: "s".into(),
        money: None,
        order_id: Some(order_id.into()),
        click_id: None,
        event_id: None,
        flag: None,
    }
}

/// Batch `sequence` of edge 1: one rollup row, one conversion and one
/// quarantine row on `day`, 61 s into it.
fn batch_on(day: i64, sequence: u64) -> Batch {
    let time_ms = day * DAY_MS + 61_000;
    let key = RollupKey { minute_ms: day * DAY_MS + 60_000, affiliate_id: 1, campaign_id: 2, sub1: "s".into() };
    Batch {
        edge_id: 1,
        epoch: 4,
        sequence,
        rollups: vec![(key, RollupCounts { impressions: 10, clicks: 3, leads: 1, ..RollupCounts::default() })],
        conversions: vec![conversion(time_ms, &format!("o-{sequence}"))],
        quarantine: vec![QuarantineRow::new(time_ms, "pixel", "bad_id", "bad affiliate_id", "aff=x")],
    }
}

/// Two days: batches 1 and 3 on day 1, 2 on day 2, and edge 9's copy of
/// batch 1's conversion (a cross-edge duplicate).
fn store() -> Store {
    let store = Store::default();
    for batch in [
        batch_on(DAY_1, 1),
        batch_on(DAY_2, 2),
        batch_on(DAY_1, 3),
        Batch { edge_id: 9, epoch: 1, sequence: 2, ..batch_on(DAY_1, 1) },
    ] {
        assert_eq!(store.apply(batch), Admission::Apply);
    }
    store
}

/// Steps 3 to 5 of the protocol without a log: export, files, manifest.
fn checkpoint(
    data_dir: &Path,
    wal_from: u64,
    previous: &[Partition],
    store: &Store,
    cutoff_day: Option<i64>,
) -> Manifest {
    let export = store.export(|tables, edges| export(tables, edges, cutoff_day));
    let manifest = write_checkpoint(data_dir, wal_from, previous, export).unwrap();
    if let Some(cutoff_day) = manifest.retained_from_day {
        store.drop_days_before(cutoff_day);
    }
    for partition in previous.iter().filter(|partition| !manifest.partitions.contains(partition)) {
        partition::remove(data_dir, partition).unwrap();
    }
    manifest
}

/// The tables of `restored` equal `expect`'s, the ledger as a set (a load
/// reads it back day by day).
#[track_caller]
fn check_same(restored: &Tables, expect: &Tables) {
    assert_eq!(restored.rollups, expect.rollups);
    assert_eq!(restored.money, expect.money);
    let mut conversions = restored.conversions.clone();
    let mut expect_conversions = expect.conversions.clone();
    for ledger in [&mut conversions, &mut expect_conversions] {
        ledger.sort_by_key(|conversion| (conversion.row.time_ms, conversion.row.order_id.clone()));
    }
    assert_eq!(conversions, expect_conversions);
    assert_eq!(restored.conversion_index.len(), expect.conversion_index.len());
    for (key, &conversion_idx) in &restored.conversion_index {
        assert_eq!(ConversionKey::of(&restored.conversions[conversion_idx].row).as_ref(), Some(key));
    }
    assert_eq!(restored.quarantine, expect.quarantine);
    assert_eq!(restored.quarantine_dropped, expect.quarantine_dropped);
    assert_eq!(restored.retained_from_day, expect.retained_from_day);
    assert_eq!(restored.rules.body, expect.rules.body);
}

fn manifest() -> Manifest {
    let partition = |dataset, day, generation| Partition {
        dataset,
        day,
        generation,
        n_rows: 12,
        n_bytes: 3_456,
        crc32: 0xdead_beef,
    };
    Manifest {
        wal_from: 42,
        marks: vec![(1, EdgeMark { epoch: 4, high_water: 7 }), (9, EdgeMark { epoch: 1, high_water: 2 })],
        rules: bytes::Bytes::from_static(br#"{"campaigns":[]}"#),
        quarantine_dropped: 5,
        retained_from_day: Some(DAY_1),
        partitions: vec![
            partition(Dataset::Rollups, DAY_1, 40),
            partition(Dataset::Rollups, DAY_2, 42),
            partition(Dataset::Conversions, DAY_1, 42),
            partition(Dataset::Quarantine, DAY_2, 30),
        ],
    }
}

#[test]
fn manifest_round_trip() {
    for manifest in [manifest(), Manifest { retained_from_day: None, ..manifest() }, Manifest::default()] {
        assert_eq!(decode(&encode(&manifest)).unwrap(), manifest);
    }
}

#[track_caller]
fn check(bytes: &[u8], expect: &str) {
    match decode(bytes) {
        Ok(manifest) => panic!("decoded {manifest:?}, expected {expect:?}"),
        Err(error) => assert_eq!(error.to_string(), expect),
    }
}

#[test]
fn damage_refused() {
    let good = encode(&manifest());
    check(&good[..10], "10 bytes, header is 60");
    let mut magic = good.clone();
    magic[0] = b'X';
    check(&magic, "bad magic");
    let mut version = good.clone();
    version[4] = 2;
    check(
        &version,
        "unsupported version 2: this aggregator reads version 3 (a manifest of Parquet partitions); \
         versions 1 and 2 held the whole store in one file and are not migrated",
    );
    let n_sections = (good.len() - HEADER_LEN) as u64;
    check(
        &good[..good.len() - 1],
        &format!("length mismatch: header announces {n_sections} bytes of sections, file has {}", n_sections - 1),
    );
    let mut flipped = good.clone();
    let last_idx = flipped.len() - 1;
    flipped[last_idx] ^= 1;
    assert!(matches!(decode(&flipped), Err(DecodeError::Crc { .. })));

    // Entries that pass the CRC but break the manifest's rules.
    let with = |partitions: Vec<Partition>| encode(&Manifest { partitions, ..manifest() });
    let entry = manifest().partitions[0];
    check(
        &with(vec![entry, entry]),
        "partition entry 1: rollups day 2026-11-24 follows day 2026-11-24: entries must be one per dataset and day, in order",
    );
    check(
        &with(vec![Partition { day: DAY_2, ..entry }, entry]),
        "partition entry 1: rollups day 2026-11-24 follows day 2026-11-25: entries must be one per dataset and day, in order",
    );
    check(
        &with(vec![Partition { day: DAY_1 - 1, ..entry }]),
        "partition entry 0: rollups day 2026-11-23 is before retention",
    );
    let mut unknown = with(vec![entry]);
    let entry_idx = unknown.len() - PARTITION_ENTRY_LEN;
    unknown[entry_idx] = 7;
    let crc = {
        let mut crc = crc32fast::Hasher::new();
        crc.update(&unknown[..HEADER_LEN - 4]);
        crc.update(&unknown[HEADER_LEN..]);
        crc.finalize()
    };
    unknown[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    check(&unknown, "partition entry 0: unknown dataset 7");
}

#[test]
fn checkpoint_round_trip() {
    let data_dir = tempfile::tempdir().unwrap();
    let store = store();
    let manifest = checkpoint(data_dir.path(), 6, &[], &store, None);
    // One file per dataset and day, each day's rows in it.
    let listed: Vec<(Dataset, i64, u64, u64)> = manifest
        .partitions
        .iter()
        .map(|partition| (partition.dataset, partition.day, partition.generation, partition.n_rows))
        .collect();
    assert_eq!(
        listed,
        [
            (Dataset::Rollups, DAY_1, 6, 1),
            (Dataset::Rollups, DAY_2, 6, 1),
            (Dataset::Conversions, DAY_1, 6, 2),
            (Dataset::Conversions, DAY_2, 6, 1),
            (Dataset::Quarantine, DAY_1, 6, 3),
            (Dataset::Quarantine, DAY_2, 6, 1),
        ]
    );
    assert!(data_dir.path().join("parquet/conversions/day=2026-11-25/part-00000000000000000006.parquet").is_file());

    let snapshot = load(data_dir.path()).unwrap().unwrap();
    assert_eq!((snapshot.wal_from, &snapshot.partitions), (6, &manifest.partitions));
    let marks: HashMap<u32, EdgeMark> =
        [(1, EdgeMark { epoch: 4, high_water: 3 }), (9, EdgeMark { epoch: 1, high_water: 2 })].into();
    assert_eq!(snapshot.marks, marks);
    let restored = Store::restore(snapshot.tables, snapshot.marks);
    store.read(|expect| restored.read(|tables| check_same(tables, expect)));
    // The duplicate was moved to `duplicates` live, and stays there.
    restored.read(|tables| {
        let counts: Vec<(u64, u64)> = tables.rollups.values().map(|counts| (counts.leads, counts.duplicates)).collect();
        assert_eq!(counts, [(2, 1), (1, 0)]);
    });
    assert_eq!(restored.admit(1, 4, 3), Admission::Skip);
    assert_eq!(restored.admit(1, 4, 4), Admission::Apply);
    // Nothing changed: the next checkpoint writes no file and keeps the list.
    let again = checkpoint(data_dir.path(), 8, &manifest.partitions, &restored, None);
    assert_eq!(again.partitions, manifest.partitions);
    assert_eq!(again.wal_from, 8);
}

#[test]
fn only_changed_days_are_rewritten() {
    let data_dir = tempfile::tempdir().unwrap();
    let store = store();
    let first = checkpoint(data_dir.path(), 6, &[], &store, None);
    // A batch on day 2, and a status change of a conversion of day 1.
    assert_eq!(store.apply(batch_on(DAY_2, 4)), Admission::Apply);
    let key = ConversionKey::Order { campaign_id: 2, order_id: "o-1".into() };
    assert_eq!(store.set_status(&key, Status::Rejected).unwrap().status, Status::Rejected);
    let second = checkpoint(data_dir.path(), 9, &first.partitions, &store, None);
    let generations: Vec<(Dataset, i64, u64, u64)> = second
        .partitions
        .iter()
        .map(|partition| (partition.dataset, partition.day, partition.generation, partition.n_rows))
        .collect();
    assert_eq!(
        generations,
        [
            (Dataset::Rollups, DAY_1, 6, 1),
            (Dataset::Rollups, DAY_2, 9, 1),
            (Dataset::Conversions, DAY_1, 9, 2),
            (Dataset::Conversions, DAY_2, 9, 2),
            (Dataset::Quarantine, DAY_1, 6, 3),
            (Dataset::Quarantine, DAY_2, 9, 2),
        ]
    );
    // The superseded files are gone, the kept ones stay.
    let n_files = walk(&data_dir.path().join(PARQUET_DIR)).len();
    assert_eq!(n_files, 6);
    let restored = load(data_dir.path()).unwrap().unwrap();
    store.read(|expect| check_same(&restored.tables, expect));
    let rejected = restored.tables.conversions.iter().filter(|conversion| conversion.status == Status::Rejected);
    assert_eq!(rejected.count(), 1);
}

const PARQUET_DIR: &str = crate::partition::PARQUET_DIR_NAME;

/// Every file under `dir`, sorted.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files.sort();
    files
}

#[test]
fn retention_drops_days_and_late_rows() {
    let data_dir = tempfile::tempdir().unwrap();
    let store = store();
    let first = checkpoint(data_dir.path(), 6, &[], &store, None);
    let second = checkpoint(data_dir.path(), 7, &first.partitions, &store, Some(DAY_2));
    assert_eq!(second.retained_from_day, Some(DAY_2));
    assert!(second.partitions.iter().all(|partition| partition.day == DAY_2), "{second:?}");
    assert!(!data_dir.path().join("parquet/rollups/day=2026-11-24").exists());
    store.read(|tables| {
        assert_eq!(tables.rollups.len(), 1);
        assert_eq!((tables.conversions.len(), tables.conversion_index.len(), tables.quarantine.len()), (1, 1, 1));
        assert_eq!(tables.money.len(), 0, "no conversion had money");
    });
    // A late copy of a dropped conversion, and rows of the dropped day, are
    // dropped and counted: the day stays closed.
    assert_eq!(store.apply(Batch { edge_id: 9, epoch: 1, sequence: 3, ..batch_on(DAY_1, 1) }), Admission::Apply);
    store.read(|tables| {
        assert_eq!((tables.rollups.len(), tables.conversions.len(), tables.quarantine.len()), (1, 1, 1));
        assert_eq!(tables.late_rows_dropped, 3);
        assert!(tables.dirty.is_empty(), "{:?}", tables.dirty);
    });
    // A cutoff never moves back.
    let third = checkpoint(data_dir.path(), 8, &second.partitions, &store, Some(DAY_1));
    assert_eq!(third.retained_from_day, Some(DAY_2));
    let restored = load(data_dir.path()).unwrap().unwrap();
    store.read(|expect| check_same(&restored.tables, expect));
}

#[test]
fn load_refuses_damage_and_deletes_only_leftovers() {
    let data_dir = tempfile::tempdir().unwrap();
    let manifest = checkpoint(data_dir.path(), 6, &[], &store(), None);
    // A crash leftover: a file of a checkpoint whose manifest never landed.
    let leftover = Partition { generation: 7, ..manifest.partitions[0] };
    fs::copy(manifest.partitions[0].path(data_dir.path()), leftover.path(data_dir.path())).unwrap();

    // A damaged listed file stops the load, naming it, and deletes nothing.
    let damaged = manifest.partitions[2];
    let path = damaged.path(data_dir.path());
    let good = fs::read(&path).unwrap();
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x10;
    fs::write(&path, &flipped).unwrap();
    let error = load(data_dir.path()).unwrap_err();
    assert!(
        matches!(&error, SnapshotError::Partition(PartitionError::Crc { path: named, .. }) if named == &path),
        "{error}"
    );
    assert!(leftover.path(data_dir.path()).exists());
    fs::remove_file(&path).unwrap();
    let error = load(data_dir.path()).unwrap_err();
    assert_eq!(error.to_string(), format!("partition {} listed in the manifest is missing", path.display()));
    fs::write(&path, &good).unwrap();

    // Whole again: the load succeeds and the leftover is gone, unread.
    let snapshot = load(data_dir.path()).unwrap().unwrap();
    assert_eq!(snapshot.partitions, manifest.partitions);
    assert!(!leftover.path(data_dir.path()).exists());
    assert_eq!(walk(&data_dir.path().join(PARQUET_DIR)).len(), 6);

    // Without a manifest every partition file is a leftover.
    fs::remove_file(data_dir.path().join(SNAPSHOT_FILE_NAME)).unwrap();
    assert!(load(data_dir.path()).unwrap().is_none());
    assert!(walk(&data_dir.path().join(PARQUET_DIR)).is_empty());
}

#[test]
fn load_names_a_corrupt_manifest() {
    let data_dir = tempfile::tempdir().unwrap();
    assert!(load(data_dir.path()).unwrap().is_none());
    write(data_dir.path(), &encode(&Manifest { wal_from: 3, ..Manifest::default() })).unwrap();
    assert_eq!(load(data_dir.path()).unwrap().unwrap().wal_from, 3);
    assert!(!data_dir.path().join(SNAPSHOT_TEMP_FILE_NAME).exists());
    let path = data_dir.path().join(SNAPSHOT_FILE_NAME);
    fs::write(&path, b"ETS1 and then nothing sensible at all, long enough for a header").unwrap();
    let error = load(data_dir.path()).unwrap_err();
    let message = error.to_string();
    assert!(message.starts_with(&format!("corrupt snapshot {}: ", path.display())), "{message}");
}
