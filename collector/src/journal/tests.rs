//! The journal against real mapped files: replay after a crash, the seal boundary, the bound.

use super::*;

const SEGMENT: usize = 64 * 1024;

fn key(affiliate_id: u32, sub1: &str) -> RollupKey {
    RollupKey { minute_ms: 1_795_514_400_000, affiliate_id, campaign_id: 9, sub1: sub1.into() }
}

fn sale() -> ConversionRow {
    ConversionRow {
        time_ms: 1_795_514_401_234,
        kind: EventKind::Sale,
        affiliate_id: 7,
        campaign_id: 9,
        sub1: "fb".into(),
        money: Some(Money { minor_units: 12_345, currency: Currency::parse("BHD").unwrap() }),
        order_id: Some("o-1".into()),
        click_id: None,
        event_id: Some("e-1".into()),
        flag: None,
    }
}

fn entries() -> Vec<Entry> {
    vec![
        Entry::Count { key: key(7, "fb"), kind: EventKind::Impression, unique: false, flag: None, conversion: None },
        Entry::Count { key: key(7, ""), kind: EventKind::Click, unique: true, flag: None, conversion: None },
        Entry::Count { key: key(7, "fb"), kind: EventKind::Sale, unique: false, flag: None, conversion: Some(sale()) },
        Entry::Count {
            key: key(7, ""),
            kind: EventKind::Click,
            unique: false,
            flag: Some(Flag::ClickFlood),
            conversion: None,
        },
        Entry::Count {
            key: key(7, "fb"),
            kind: EventKind::Sale,
            unique: false,
            flag: Some(Flag::OverDailyCap),
            conversion: Some(ConversionRow { order_id: Some("o-2".into()), flag: Some(Flag::OverDailyCap), ..sale() }),
        },
        Entry::Duplicate { key: key(8, "x") },
        Entry::Quarantine(QuarantineRow::new(1_795_514_400_000, "pixel", "bad_id", "bad affiliate_id", "aff=x")),
    ]
}

fn append(journal: &mut Journal, entry: &Entry) -> bool {
    journal.append(entry.as_entry_ref())
}

fn journal_files(dir: &Path) -> usize {
    fs::read_dir(dir).unwrap().count()
}

#[test]
fn entries_survive_the_process_and_replay_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (mut journal, replay, _) = Journal::open(dir.path(), SEGMENT, u64::MAX, Through::default()).unwrap();
    assert!(replay.is_empty());
    for entry in entries() {
        assert!(append(&mut journal, &entry));
    }
    // No rotation, no release: as if the process died here.
    drop(journal);
    let (_, replay, recovery) = Journal::open(dir.path(), SEGMENT, u64::MAX, Through::default()).unwrap();
    assert_eq!(replay, entries());
    assert_eq!(recovery, JournalRecovery { replayed: 7, unreadable: 0, released: 0, rows_spooled: 0 });
}

#[test]
fn spooled_segments_are_deleted_not_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut journal, _, _) = Journal::open(dir.path(), SEGMENT, u64::MAX, Through::default()).unwrap();
    let all = entries();
    append(&mut journal, &all[0]);
    append(&mut journal, &all[1]);
    let through = journal.rotate();
    assert_eq!(through, 1);
    append(&mut journal, &all[2]);
    // The batch of segment 1 reached the spool, but the process died before
    // releasing it: on start, the spool's `through` decides.
    drop(journal);
    let (journal, replay, recovery) = Journal::open(dir.path(), SEGMENT, u64::MAX, Through::all(through)).unwrap();
    assert_eq!(replay, [all[2].clone()]);
    assert_eq!(recovery, JournalRecovery { replayed: 1, unreadable: 0, released: 1, rows_spooled: 0 });
    assert_eq!(journal.next_id, 3);
}

#[test]
fn rotate_and_release() {
    let dir = tempfile::tempdir().unwrap();
    let (mut journal, _, _) = Journal::open(dir.path(), SEGMENT, u64::MAX, Through::default()).unwrap();
    // Nothing written: nothing to claim.
    assert_eq!(journal.rotate(), 0);
    let all = entries();
    append(&mut journal, &all[0]);
    assert_eq!(journal.rotate(), 1);
    // An empty stretch claims what the previous one did.
    assert_eq!(journal.rotate(), 1);
    append(&mut journal, &all[1]);
    assert_eq!(journal_files(dir.path()), 2);
    // Release of 1 leaves the active segment 2 alone.
    let paths = journal.release(1);
    assert_eq!(paths, [dir.path().join(segment_name(1))]);
    assert!(journal.release(5).is_empty(), "the active segment is never released");
    assert_eq!(journal.rotate(), 2);
    assert_eq!(journal.release(2), [dir.path().join(segment_name(2))]);
}

#[test]
fn segments_roll_over_and_the_bound_holds() {
    let dir = tempfile::tempdir().unwrap();
    let (mut journal, _, _) = Journal::open(dir.path(), SEGMENT, 2 * SEGMENT as u64, Through::default()).unwrap();
    let entry = &entries()[2];
    let mut n_written = 0;
    while append(&mut journal, entry) {
        n_written += 1;
    }
    assert_eq!(journal_files(dir.path()), 2);
    assert_eq!(journal.bytes(), 2 * SEGMENT as u64);
    drop(journal);
    let (_, replay, _) = Journal::open(dir.path(), SEGMENT, 2 * SEGMENT as u64, Through::default()).unwrap();
    assert_eq!(replay.len(), n_written);
}

#[test]
fn a_record_cut_short_ends_its_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (mut journal, _, _) = Journal::open(dir.path(), SEGMENT, u64::MAX, Through::default()).unwrap();
    let all = entries();
    append(&mut journal, &all[0]);
    append(&mut journal, &all[1]);
    let second_at = {
        let active = journal.active.as_ref().unwrap();
        active.at
    };
    drop(journal);
    let path = dir.path().join(segment_name(1));
    let mut bytes = fs::read(&path).unwrap();
    // The second record's last byte never made it.
    bytes[second_at - 1] ^= 0xFF;
    fs::write(&path, &bytes).unwrap();
    let (_, replay, _) = Journal::open(dir.path(), SEGMENT, u64::MAX, Through::default()).unwrap();
    assert_eq!(replay, [all[0].clone()]);
}

#[test]
fn a_prepared_spare_is_used_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (mut journal, _, _) = Journal::open(dir.path(), SEGMENT, u64::MAX, Through::default()).unwrap();
    let all = entries();
    let (id, path, bytes) = journal.reserve_spare().unwrap();
    assert_eq!(id, 1);
    assert!(journal.reserve_spare().is_none(), "one spare at a time");
    assert_eq!(journal.install_spare(id, Some(prepare_segment(&path, bytes).unwrap())), None);
    append(&mut journal, &all[0]);
    assert_eq!(journal.rotate(), 1, "the spare became segment 1");

    // A spare that arrives after a later segment was created inline is
    // handed back for deletion, never used out of order.
    let (late_id, late_path, bytes) = journal.reserve_spare().unwrap();
    assert_eq!(late_id, 2);
    append(&mut journal, &all[1]);
    assert_eq!(journal.rotate(), 3);
    let late = journal.install_spare(late_id, Some(prepare_segment(&late_path, bytes).unwrap()));
    assert_eq!(late, Some(late_path));
    drop(journal);
    fs::remove_file(dir.path().join(segment_name(2))).unwrap();
    let (_, replay, _) = Journal::open(dir.path(), SEGMENT, u64::MAX, Through::default()).unwrap();
    assert_eq!(replay, all[..2]);
}

#[test]
fn the_fuzz_checks_hold_on_whole_torn_and_flipped_segments() {
    let seed = fuzz_seed_segment();
    let check = |bytes: &[u8]| fuzz_segment(tempfile::tempdir().unwrap().path(), bytes);
    // Seven entries and a note that the first sale was spooled.
    assert_eq!(check(&seed), 6);
    // A torn tail ends the segment at the last whole record.
    let records: Vec<usize> = {
        let mut ends = Vec::new();
        let mut at = 0;
        while let Some(header) = seed.get(at..at + RECORD_HEADER_LEN) {
            let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
            if len == 0 {
                break;
            }
            at += RECORD_HEADER_LEN + len;
            ends.push(at);
        }
        ends
    };
    assert_eq!(records.len(), 8);
    // Cut before the note: the sale replays.
    assert_eq!(check(&seed[..records[2] + 3]), 3);
    // A flipped byte in the fourth record's payload stops the reader there.
    let mut flipped = seed.clone();
    flipped[records[2] + RECORD_HEADER_LEN] ^= 0x40;
    assert_eq!(check(&flipped), 3);
    assert_eq!(check(&[]), 0);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

    /// The fuzz target's checks on damaged copies of a real segment: bytes
    /// flipped, the tail cut, noise appended.
    #[test]
    fn the_fuzz_checks_hold_on_damaged_segments(
        flips in proptest::collection::vec((0usize..400, 1u8..=255), 0..4),
        cut in 0usize..400,
        noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
    ) {
        let mut bytes = fuzz_seed_segment();
        for (at, mask) in flips {
            let at = at % bytes.len();
            bytes[at] ^= mask;
        }
        bytes.truncate(cut.min(bytes.len()));
        bytes.extend_from_slice(&noise);
        let n_entries = fuzz_segment(tempfile::tempdir().unwrap().path(), &bytes);
        proptest::prop_assert!(n_entries <= 7 + noise.len() / RECORD_HEADER_LEN);
    }
}
