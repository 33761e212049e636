//! The log's reader on damaged segments (flipped bytes, a torn tail, zeros,
//! garbage), recovery on a directory, and the writer's round trip.

use std::time::Duration;

use super::*;

/// Bounds each async test so a hang fails instead of stalling CI.
const TEST_TIMEOUT: Duration = Duration::from_secs(30);

fn record(payload: &[u8]) -> Vec<u8> {
    let mut record = Vec::new();
    record.extend_from_slice(&RECORD_MAGIC);
    record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    record.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    record.extend_from_slice(payload);
    record
}

/// Three records of 5, 8 and 3 payload bytes: at offsets 0, 17 and 37, 52
/// bytes in all.
fn three_records() -> Vec<u8> {
    [&b"first"[..], b"secondly", b"3rd"].iter().flat_map(|payload| record(payload)).collect()
}

/// What `scan` found, with payloads as text for short expectations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    Record(usize, &'static str),
    Corrupt(usize, usize, Damage),
    Torn(usize),
}

#[track_caller]
fn check(bytes: &[u8], expect: &[Found]) {
    let found: Vec<Found> = scan(bytes)
        .into_iter()
        .map(|scanned| match scanned {
            Scanned::Record { offset, payload } => {
                let text = String::from_utf8(bytes[payload].to_vec()).unwrap();
                Found::Record(offset, text.leak())
            }
            Scanned::Corrupt { offset, end, reason } => Found::Corrupt(offset, end, reason),
            Scanned::TornTail { offset } => Found::Torn(offset),
        })
        .collect();
    assert_eq!(found, expect);
}

fn with(mut bytes: Vec<u8>, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    edit(&mut bytes);
    bytes
}

#[test]
fn scan_segments() {
    use Found::{Corrupt, Record as Rec, Torn};
    let good = three_records();
    let sound = [Rec(0, "first"), Rec(17, "secondly"), Rec(37, "3rd")];
    check(&[], &[]);
    check(&good, &sound);

    // Flipped payload bytes in the middle record: it is skipped, the records
    // around it are kept.
    let flipped = with(good.clone(), |bytes| bytes[30] ^= 0xff);
    let crc = crc32fast::hash(b"secondly");
    let flipped_crc = crc32fast::hash(&flipped[29..37]);
    check(
        &flipped,
        &[Rec(0, "first"), Corrupt(17, 37, Damage::Crc { expected: crc, actual: flipped_crc }), Rec(37, "3rd")],
    );
    // A damaged magic or an absurd length in the middle: the same.
    check(
        &with(good.clone(), |bytes| bytes[17] = b'X'),
        &[Rec(0, "first"), Corrupt(17, 37, Damage::Magic), Rec(37, "3rd")],
    );
    let huge = with(good.clone(), |bytes| bytes[21..25].copy_from_slice(&u32::MAX.to_le_bytes()));
    check(&huge, &[Rec(0, "first"), Corrupt(17, 37, Damage::TooLarge { len: u32::MAX as usize }), Rec(37, "3rd")]);
    // A length past the end but a sound record after it is damage, not a
    // torn tail.
    let long = with(good.clone(), |bytes| bytes[21..25].copy_from_slice(&1000u32.to_le_bytes()));
    check(&long, &[Rec(0, "first"), Corrupt(17, 37, Damage::Incomplete { len: 1000 }), Rec(37, "3rd")]);
    // Garbage between records.
    let mut garbage = record(b"first");
    garbage.extend_from_slice(b"ETW1 noise ETW");
    garbage.extend_from_slice(&record(b"after"));
    let noise_len = u32::from_le_bytes(*b" noi") as usize;
    check(&garbage, &[Rec(0, "first"), Corrupt(17, 31, Damage::TooLarge { len: noise_len }), Rec(31, "after")]);

    // Torn tails: the last record cut anywhere, or zeros after the last.
    check(&good[..good.len() - 1], &[Rec(0, "first"), Rec(17, "secondly"), Torn(37)]);
    check(&good[..37 + 5], &[Rec(0, "first"), Rec(17, "secondly"), Torn(37)]);
    check(&good[..37 + 12], &[Rec(0, "first"), Rec(17, "secondly"), Torn(37)]);
    check(&good[..20], &[Rec(0, "first"), Torn(17)]);
    check(&with(good.clone(), |bytes| bytes.extend_from_slice(&[0; 4096])), &[sound[0], sound[1], sound[2], Torn(52)]);
    // A whole last record with a bad CRC is damage, not a torn tail: it was
    // written whole, so it may have been acknowledged.
    let last_flipped = with(good.clone(), |bytes| bytes[50] ^= 1);
    let last_crc = (crc32fast::hash(b"3rd"), crc32fast::hash(&last_flipped[49..52]));
    check(
        &last_flipped,
        &[
            Rec(0, "first"),
            Rec(17, "secondly"),
            Corrupt(37, 52, Damage::Crc { expected: last_crc.0, actual: last_crc.1 }),
        ],
    );
    check(b"junk at the end", &[Corrupt(0, 15, Damage::Magic)]);
}

fn write_segment(dir: &Path, number: u64, bytes: &[u8]) {
    fs::write(segment_path(dir, number), bytes).unwrap();
}

/// Recovers `dir` from `from_segment`; answers what it found and the
/// records as `(segment, offset, payload)`.
fn recover_all(dir: &Path, from_segment: u64) -> (Recovery, Vec<(u64, u64, Vec<u8>)>) {
    let mut records = Vec::new();
    let recovery = recover(dir, from_segment, |record| {
        records.push((record.segment, record.offset, record.payload.to_vec()));
    })
    .unwrap();
    (recovery, records)
}

#[test]
fn recover_missing_and_empty() {
    let data_dir = tempfile::tempdir().unwrap();
    let dir = data_dir.path().join("wal");
    let fresh = Recovery { next_segment: 1, ..Recovery::default() };
    assert_eq!(recover_all(&dir, FIRST_SEGMENT), (fresh, Vec::new()));
    assert!(dir.is_dir());
    assert_eq!(recover_all(&dir, FIRST_SEGMENT), (fresh, Vec::new()));
    // An empty segment (created, then a crash before any append).
    write_segment(&dir, 1, &[]);
    assert_eq!(recover_all(&dir, FIRST_SEGMENT), (Recovery { next_segment: 2, ..fresh }, Vec::new()));
    // A snapshot's `wal_from` past every segment: appends start there.
    assert_eq!(recover_all(&dir, 9), (Recovery { next_segment: 9, ..fresh }, Vec::new()));
}

#[test]
fn recover_skips_damage_and_truncates_torn_tail() {
    let data_dir = tempfile::tempdir().unwrap();
    let dir = data_dir.path().join("wal");
    fs::create_dir(&dir).unwrap();
    // Segment 3 is below `from_segment`: a truncation a crash interrupted.
    write_segment(&dir, 3, &three_records());
    write_segment(&dir, 4, &with(three_records(), |bytes| bytes[30] ^= 0xff));
    let torn = three_records();
    write_segment(&dir, 6, &torn[..45]);
    fs::write(dir.join("notes.txt"), b"not a segment").unwrap();

    let (recovery, records) = recover_all(&dir, 4);
    assert_eq!(
        recovery,
        Recovery { n_records: 4, n_corrupt: 1, n_torn_tails: 1, live_bytes: 52 + 37, next_segment: 7 }
    );
    let expect: Vec<(u64, u64, Vec<u8>)> = vec![
        (4, 0, b"first".to_vec()),
        (4, 37, b"3rd".to_vec()),
        (6, 0, b"first".to_vec()),
        (6, 17, b"secondly".to_vec()),
    ];
    assert_eq!(records, expect);
    assert!(!segment_path(&dir, 3).exists());
    assert_eq!(fs::metadata(segment_path(&dir, 6)).unwrap().len(), 37);
    assert!(dir.join("notes.txt").exists());

    // Once truncated, the tail is gone for good; the damage is reported
    // again, since it may hold evidence.
    let (again, records_again) = recover_all(&dir, 4);
    assert_eq!(again, Recovery { n_torn_tails: 0, ..recovery });
    assert_eq!(records_again, expect);
}

#[test]
fn segment_names() {
    assert_eq!(segment_path(Path::new("w"), 1), Path::new("w/00000000000000000001.wal"));
    assert_eq!(parse_segment_name("00000000000000000001.wal"), Some(1));
    assert_eq!(parse_segment_name("18446744073709551615.wal"), Some(u64::MAX));
    assert_eq!(parse_segment_name("1.wal"), None);
    assert_eq!(parse_segment_name("0000000000000000000x.wal"), None);
    assert_eq!(parse_segment_name("00000000000000000001.wal.tmp"), None);
}

#[tokio::test]
async fn appends_commit_in_order() {
    tokio::time::timeout(TEST_TIMEOUT, appends_commit_in_order_inner()).await.expect("test finishes in time");
}

async fn appends_commit_in_order_inner() {
    let data_dir = tempfile::tempdir().unwrap();
    let dir = data_dir.path().join("wal");
    let (recovery, _) = recover_all(&dir, FIRST_SEGMENT);
    let (snapshot_due, mut snapshot_due_rx) = mpsc::channel(1);
    let config = WalConfig { fsync: true, snapshot_wal_bytes: 40 };
    let wal = Wal::start(&dir, recovery.next_segment, recovery.live_bytes, config, snapshot_due).unwrap();

    let first = wal.append(Bytes::from_static(b"first")).await.unwrap();
    assert_eq!(first.segment, 1);
    assert!(snapshot_due_rx.try_recv().is_err(), "17 bytes are below the limit");
    // Appends racing each other: each is committed once, in some order.
    let (second, third) =
        tokio::join!(wal.append(Bytes::from_static(b"secondly")), wal.append(Bytes::from_static(b"3rd")));
    drop((first, second.unwrap(), third.unwrap()));
    assert_eq!(snapshot_due_rx.recv().await, Some(()), "52 bytes are past the limit");
    let stats = wal.stats();
    assert_eq!(stats.live_bytes, 52);
    assert!((2..=3).contains(&stats.n_fsyncs), "{stats:?}");
    assert!(stats.fsync_p50_us <= stats.fsync_p99_us && stats.fsync_p99_us <= stats.fsync_max_us, "{stats:?}");
    wal.close().await;
    assert!(matches!(wal.append(Bytes::from_static(b"late")).await, Err(WalError::Closed)));

    let (recovery, records) = recover_all(&dir, FIRST_SEGMENT);
    assert_eq!(recovery, Recovery { n_records: 3, live_bytes: 52, next_segment: 2, ..Recovery::default() });
    let mut payloads: Vec<Vec<u8>> = records.into_iter().map(|(_, _, payload)| payload).collect();
    assert_eq!(payloads[0], b"first");
    payloads[1..].sort();
    assert_eq!(payloads[1..], [b"3rd".to_vec(), b"secondly".to_vec()]);
}

#[tokio::test]
async fn rotation_and_settlement() {
    tokio::time::timeout(TEST_TIMEOUT, rotation_and_settlement_inner()).await.expect("test finishes in time");
}

async fn rotation_and_settlement_inner() {
    use futures::FutureExt;

    let data_dir = tempfile::tempdir().unwrap();
    let dir = data_dir.path().join("wal");
    let (recovery, _) = recover_all(&dir, FIRST_SEGMENT);
    let (snapshot_due, _snapshot_due_rx) = mpsc::channel(1);
    let config = WalConfig { fsync: false, snapshot_wal_bytes: u64::MAX };
    let wal = Wal::start(&dir, recovery.next_segment, recovery.live_bytes, config, snapshot_due).unwrap();

    let commit = wal.append(Bytes::from_static(b"first")).await.unwrap();
    assert_eq!(wal.rotate().await.unwrap(), 2);
    // An empty segment is not rotated again.
    assert_eq!(wal.rotate().await.unwrap(), 2);
    let mut settled = std::pin::pin!(wal.settled_below(2));
    assert!(settled.as_mut().now_or_never().is_none(), "the record of segment 1 is unsettled");
    // Records of later segments do not hold it up.
    let later = wal.append(Bytes::from_static(b"later")).await.unwrap();
    assert_eq!(later.segment, 2);
    drop(commit);
    settled.await;
    assert_eq!(wal.remove_segments_below(2).unwrap(), 1);
    assert_eq!(wal.stats(), WalStats { live_bytes: 17, ..WalStats::default() }, "no fsync when off");
    drop(later);
    wal.close().await;
    let (recovery, records) = recover_all(&dir, 2);
    assert_eq!(recovery, Recovery { n_records: 1, live_bytes: 17, next_segment: 3, ..Recovery::default() });
    assert_eq!(records, [(2, 0, b"later".to_vec())]);
}
