//! The snapshot file: a round trip of marks and all three tables, and each
//! kind of damage refused by name.

use edgetally_protocol::batch::{ConversionRow, QuarantineRow, RollupCounts, RollupKey};
use edgetally_protocol::event::EventKind;

use super::*;
use crate::store::Batch;

fn store() -> Store {
    let store = Store::default();
    let key = |affiliate_id| RollupKey { minute_ms: 60_000, affiliate_id, campaign_id: 2, sub1: "s".into() };
    let conversion = ConversionRow {
        time_ms: 61_000,
        kind: EventKind::Lead,
        affiliate_id: 1,
        campaign_id: 2,
        sub1: "s".into(),
        money: None,
        order_id: Some("o-1".into()),
        click_id: None,
        event_id: None,
    };
    for (edge_id, epoch, sequence) in [(1, 4, 7), (9, 1, 2)] {
        let admission = store.apply(Batch {
            edge_id,
            epoch,
            sequence,
            rollups: vec![(key(edge_id), RollupCounts { impressions: 10, clicks: 3, ..RollupCounts::default() })],
            conversions: vec![conversion.clone()],
            quarantine: vec![QuarantineRow::new(62_000, "pixel", "bad_id", "bad affiliate_id", "aff=x")],
        });
        assert_eq!(admission, crate::store::Admission::Apply);
    }
    store
}

#[test]
fn round_trip() {
    let bytes = encode_store(42, &store()).unwrap();
    let snapshot = decode(&bytes).unwrap();
    assert_eq!(snapshot.wal_from, 42);
    let marks: HashMap<u32, EdgeMark> =
        [(1, EdgeMark { epoch: 4, high_water: 7 }), (9, EdgeMark { epoch: 1, high_water: 2 })].into();
    assert_eq!(snapshot.marks, marks);
    let restored = Store::restore(snapshot.tables, snapshot.marks);
    store().read(|expect| {
        restored.read(|tables| {
            assert_eq!(tables.rollups, expect.rollups);
            assert_eq!(tables.conversions, expect.conversions);
            assert_eq!(tables.quarantine, expect.quarantine);
            assert_eq!(tables.quarantine_dropped, expect.quarantine_dropped);
        })
    });
    assert_eq!(restored.admit(1, 4, 7), crate::store::Admission::Skip);
    assert_eq!(restored.admit(1, 4, 8), crate::store::Admission::Apply);
    // The empty store too.
    let empty = decode(&encode_store(1, &Store::default()).unwrap()).unwrap();
    assert_eq!((empty.wal_from, empty.marks.len(), empty.tables.rollups.len()), (1, 0, 0));
}

#[track_caller]
fn check(bytes: &[u8], expect: &str) {
    match decode(bytes) {
        Ok(_) => panic!("decoded, expected {expect:?}"),
        Err(error) => assert_eq!(error.to_string(), expect),
    }
}

#[test]
fn damage_refused() {
    let good = encode_store(42, &store()).unwrap();
    check(&good[..10], "10 bytes, header is 68");
    let mut magic = good.clone();
    magic[0] = b'X';
    check(&magic, "bad magic");
    let mut version = good.clone();
    version[4] = 9;
    check(&version, "unsupported version 9");
    let n_sections = (good.len() - HEADER_LEN) as u64;
    check(
        &good[..good.len() - 1],
        &format!("length mismatch: header announces {n_sections} bytes of sections, file has {}", n_sections - 1),
    );
    let mut flipped = good.clone();
    let last_idx = flipped.len() - 1;
    flipped[last_idx] ^= 1;
    assert!(matches!(decode(&flipped), Err(DecodeError::Crc { .. })));
}

#[test]
fn load_names_a_corrupt_file() {
    let data_dir = tempfile::tempdir().unwrap();
    assert!(load(data_dir.path()).unwrap().is_none());
    write(data_dir.path(), &encode_store(3, &store()).unwrap()).unwrap();
    assert_eq!(load(data_dir.path()).unwrap().unwrap().wal_from, 3);
    assert!(!data_dir.path().join(SNAPSHOT_TEMP_FILE_NAME).exists());
    let path = data_dir.path().join(SNAPSHOT_FILE_NAME);
    fs::write(&path, b"ETS1 and then nothing sensible at all, long enough for a header").unwrap();
    let error = load(data_dir.path()).unwrap_err();
    let message = error.to_string();
    assert!(message.starts_with(&format!("corrupt snapshot {}: ", path.display())), "{message}");
}
