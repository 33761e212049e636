//! The spool against real files: records, acknowledgements, corruption, torn tails, the bound.

use std::io::Write;

use super::*;

/// Bytes shaped like a frame header with `epoch` and `sequence`, then
/// `extra` filler bytes; the spool only reads those two fields.
fn frame(epoch: u64, sequence: u64, extra: usize) -> Vec<u8> {
    let mut frame = vec![0xAB; 28 + extra];
    frame[12..20].copy_from_slice(&epoch.to_le_bytes());
    frame[20..28].copy_from_slice(&sequence.to_le_bytes());
    frame
}

fn append1(spool: &mut Spool, frame: Vec<u8>, journal_through: u64) -> Pending {
    let pending = spool.append(&[Bytes::from(frame)], Through::all(journal_through), 1_000).unwrap();
    assert_eq!(pending.len(), 1);
    pending[0]
}

fn ids(spool: &Spool) -> Vec<(u64, u64)> {
    spool.pending().map(|pending| (pending.epoch, pending.sequence)).collect()
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn append_read_ack_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, recovery) = Spool::open(dir.path(), u64::MAX, SpoolIo::Std).unwrap();
    assert_eq!(recovery, Recovery::default());
    for sequence in 1..=3 {
        append1(&mut spool, frame(7, sequence, 100), 10 + sequence);
    }
    assert_eq!(ids(&spool), [(7, 1), (7, 2), (7, 3)]);
    let second = *spool.pending().nth(1).unwrap();
    assert_eq!(spool.read(&second).unwrap(), frame(7, 2, 100));
    assert_eq!(spool.bytes(), 3 * (12 + 36 + 4 + 128));

    // Out of order: 2 is held until 1 is acknowledged.
    assert_eq!(spool.ack(7, 2), 0);
    assert_eq!(ids(&spool), [(7, 1), (7, 2), (7, 3)]);
    assert_eq!(spool.ack(7, 1), 2);
    assert_eq!(ids(&spool), [(7, 3)]);
    // An ack of something not pending changes nothing.
    spool.ack(7, 1);
    spool.ack(9, 9);
    assert_eq!(ids(&spool), [(7, 3)]);
    drop(spool);

    let (spool, recovery) = Spool::open(dir.path(), u64::MAX, SpoolIo::Std).unwrap();
    // The segment is still live (one record unacknowledged), so all three
    // come back; the aggregator skips the two it applied.
    assert_eq!(recovery, Recovery { frames: 3, corrupt: 0, torn: 0, through: Through::all(13) });
    assert_eq!(ids(&spool), [(7, 1), (7, 2), (7, 3)]);
    let last = *spool.pending().last().unwrap();
    assert_eq!(spool.read(&last).unwrap(), frame(7, 3, 100));
}

#[test]
fn drained_segments_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(dir.path(), u64::MAX, SpoolIo::Std).unwrap();
    let big = SEGMENT_BYTES_TARGET as usize / 2;
    for sequence in 1..=5 {
        append1(&mut spool, frame(1, sequence, big), sequence);
    }
    // Two records and a bit fill a segment: 1–2, 3–4 roll over, 5 starts the third.
    assert_eq!(segment_files(dir.path()).len(), 3);
    for sequence in 1..=4 {
        spool.ack(1, sequence);
    }
    assert_eq!(segment_files(dir.path()), [segment_name(3)]);
    spool.ack(1, 5);
    // The current segment stays (it is appended to next) but is empty of
    // pending records; a reopen deletes it.
    assert_eq!(spool.pending().len(), 0);
    drop(spool);
    let (mut spool, recovery) = Spool::open(dir.path(), u64::MAX, SpoolIo::Std).unwrap();
    assert_eq!(recovery.frames, 1, "a drained current segment is resent once after a crash");
    assert_eq!(ids(&spool), [(1, 5)]);
    // A clean close of a drained spool leaves nothing to resend.
    spool.ack(1, 5);
    spool.close();
    let (_, recovery) = Spool::open(dir.path(), u64::MAX, SpoolIo::Std).unwrap();
    assert_eq!(recovery.frames, 0);
}

/// A closed spool in `dir` holding frames 1..=3 of epoch 4; returns its
/// segment's path and the frames' offsets in it.
fn three_frames(dir: &Path) -> (PathBuf, Vec<u64>) {
    let (mut spool, _) = Spool::open(dir, u64::MAX, SpoolIo::Std).unwrap();
    let offsets = (1..=3).map(|sequence| append1(&mut spool, frame(4, sequence, 64), 0).offset).collect();
    (dir.join(segment_name(1)), offsets)
}

#[test]
fn corrupt_record_is_skipped_and_neighbours_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (path, offsets) = three_frames(dir.path());
    let mut bytes = fs::read(&path).unwrap();
    // Flip payload bytes of the middle record.
    let at = offsets[1] as usize + 40;
    bytes[at] ^= 0xFF;
    bytes[at + 1] ^= 0xFF;
    fs::write(&path, &bytes).unwrap();

    let (spool, recovery) = Spool::open(dir.path(), u64::MAX, SpoolIo::Std).unwrap();
    assert_eq!(recovery, Recovery { frames: 2, corrupt: 1, torn: 0, through: Through::all(0) });
    assert_eq!(ids(&spool), [(4, 1), (4, 3)]);
    let last = *spool.pending().last().unwrap();
    assert_eq!(spool.read(&last).unwrap(), frame(4, 3, 64));
}

#[test]
fn corrupt_length_field_resyncs_on_the_next_magic() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = three_frames(dir.path());
    let mut bytes = fs::read(&path).unwrap();
    // A huge length in the first record's header.
    bytes[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    fs::write(&path, &bytes).unwrap();

    let (spool, recovery) = Spool::open(dir.path(), u64::MAX, SpoolIo::Std).unwrap();
    assert_eq!(recovery.corrupt, 1);
    assert_eq!(recovery.torn, 0);
    assert_eq!(ids(&spool), [(4, 2), (4, 3)]);
}

#[test]
fn torn_tail_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(dir.path(), u64::MAX, SpoolIo::Std).unwrap();
    append1(&mut spool, frame(2, 1, 64), 0);
    append1(&mut spool, frame(2, 2, 64), 0);
    let good_len = spool.bytes();
    drop(spool);
    let path = dir.path().join(segment_name(1));
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    // Half of a third record, as a crash mid-append leaves it.
    let record = encode_record(&[Bytes::from(frame(2, 3, 64))], Through::all(0), 1_000);
    file.write_all(&record[..record.len() / 2]).unwrap();
    drop(file);

    let (spool, recovery) = Spool::open(dir.path(), u64::MAX, SpoolIo::Std).unwrap();
    assert_eq!(recovery, Recovery { frames: 2, corrupt: 0, torn: 1, through: Through::all(0) });
    assert_eq!(ids(&spool), [(2, 1), (2, 2)]);
    assert_eq!(fs::metadata(&path).unwrap().len(), good_len);
    // New records go to a new segment and the old ones stay readable.
    drop(spool);
    let (mut spool, _) = Spool::open(dir.path(), u64::MAX, SpoolIo::Std).unwrap();
    append1(&mut spool, frame(3, 1, 8), 0);
    assert_eq!(ids(&spool), [(2, 1), (2, 2), (3, 1)]);
}

#[test]
fn full_at_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let record_len = (12 + 20 + 4 + 28 + 100) as u64;
    let (mut spool, _) = Spool::open(dir.path(), 2 * record_len, SpoolIo::Std).unwrap();
    append1(&mut spool, frame(1, 1, 100), 0);
    assert!(!spool.is_full());
    append1(&mut spool, frame(1, 2, 100), 0);
    assert!(spool.is_full());
}

#[test]
fn a_seal_of_several_frames_is_one_record() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(dir.path(), u64::MAX, SpoolIo::Std).unwrap();
    let frames: Vec<Bytes> = (1..=3).map(|sequence| Bytes::from(frame(5, sequence, 10 * sequence as usize))).collect();
    let pending = spool.append(&frames, Through::all(42), 7_000).unwrap();
    assert_eq!(pending.iter().map(|pending| pending.sequence).collect::<Vec<_>>(), [1, 2, 3]);
    for (pending, frame) in pending.iter().zip(&frames) {
        assert_eq!(&spool.read(pending).unwrap(), frame);
        assert_eq!(pending.sealed_ms, 7_000);
    }
    // Acknowledged one by one; the segment lives until all three are.
    assert_eq!(spool.ack(5, 1), 1);
    drop(spool);
    let (spool, recovery) = Spool::open(dir.path(), u64::MAX, SpoolIo::Std).unwrap();
    assert_eq!(recovery, Recovery { frames: 3, corrupt: 0, torn: 0, through: Through::all(42) });
    assert_eq!(spool.read(spool.pending().last().unwrap()).unwrap(), frames[2]);
}

#[test]
fn other_files_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("notes.txt"), "x").unwrap();
    let (spool, recovery) = Spool::open(dir.path(), u64::MAX, SpoolIo::Std).unwrap();
    assert_eq!(recovery.frames, 0);
    assert_eq!(spool.pending().len(), 0);
    assert!(dir.path().join("notes.txt").exists());
}

#[test]
fn io_uring_writes_the_same_records() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(dir.path(), u64::MAX, SpoolIo::Uring).unwrap();
    let frames: Vec<Bytes> =
        (1..=3).map(|sequence| Bytes::from(frame(6, sequence, 1000 * sequence as usize))).collect();
    spool.append(&frames[..2], Through::all(4), 1_000).unwrap();
    spool.append(&frames[2..], Through::all(5), 2_000).unwrap();
    for (pending, frame) in spool.pending().zip(&frames) {
        assert_eq!(&spool.read(pending).unwrap(), frame);
    }
    let uring_bytes = fs::read(dir.path().join(segment_name(1))).unwrap();
    drop(spool);

    // Byte for byte what the standard path writes.
    let std_dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(std_dir.path(), u64::MAX, SpoolIo::Std).unwrap();
    spool.append(&frames[..2], Through::all(4), 1_000).unwrap();
    spool.append(&frames[2..], Through::all(5), 2_000).unwrap();
    assert_eq!(fs::read(std_dir.path().join(segment_name(1))).unwrap(), uring_bytes);

    let (spool, recovery) = Spool::open(dir.path(), u64::MAX, SpoolIo::Uring).unwrap();
    assert_eq!(recovery, Recovery { frames: 3, corrupt: 0, torn: 0, through: Through::all(5) });
    assert_eq!(spool.read(spool.pending().last().unwrap()).unwrap(), frames[2]);
}

#[test]
fn rows_positions_and_version_1_records_recover() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(dir.path(), u64::MAX, SpoolIo::Std).unwrap();
    let rows = |segment, offset| Through::rows(JournalPosition { segment, offset });
    spool.append(&[Bytes::from(frame(4, 1, 8))], Through::all(3), 1_000).unwrap();
    spool.append(&[Bytes::from(frame(4, 2, 8))], rows(4, 900), 1_000).unwrap();
    spool.append(&[Bytes::from(frame(4, 3, 8))], rows(4, 120), 1_000).unwrap();
    drop(spool);
    // A record of the first layout, as an older collector left it.
    let mut old = Vec::new();
    let old_frame = frame(4, 4, 8);
    let payload_len = PAYLOAD_PREFIX_LEN_V1 + 4 + old_frame.len();
    old.extend_from_slice(&MAGIC_V1);
    old.extend_from_slice(&(payload_len as u32).to_le_bytes());
    old.extend_from_slice(&[0; 4]);
    old.extend_from_slice(&2u64.to_le_bytes());
    old.extend_from_slice(&1_000u64.to_le_bytes());
    old.extend_from_slice(&1u32.to_le_bytes());
    old.extend_from_slice(&(old_frame.len() as u32).to_le_bytes());
    old.extend_from_slice(&old_frame);
    let crc = crc32fast::hash(&old[RECORD_HEADER_LEN..]);
    old[8..12].copy_from_slice(&crc.to_le_bytes());
    fs::write(dir.path().join(segment_name(100)), &old).unwrap();

    let (spool, recovery) = Spool::open(dir.path(), u64::MAX, SpoolIo::Std).unwrap();
    // The highest full segment, and the latest rows position.
    assert_eq!(recovery.through, Through { journal: 3, rows: JournalPosition { segment: 4, offset: 900 } });
    assert_eq!(recovery.frames, 4);
    assert_eq!(ids(&spool), [(4, 1), (4, 2), (4, 3), (4, 4)]);
    assert_eq!(Through::all(3).rows, JournalPosition { segment: 4, offset: 0 });
}
