//! Decoding of frames: what is applied, and what is refused and why.

use edgetally_protocol::batch::{encode_ipc, rollups_to_batch};

use super::*;

fn rollups_ipc(n_rows: u32) -> Bytes {
    let rows: Vec<(RollupKey, RollupCounts)> = (0..n_rows)
        .map(|row_idx| {
            let key = RollupKey { minute_ms: 60_000, affiliate_id: row_idx + 1, campaign_id: 2, sub1: String::new() };
            (key, RollupCounts { impressions: 3, ..RollupCounts::default() })
        })
        .collect();
    Bytes::from(encode_ipc(&rollups_to_batch(rows.iter().map(|(key, counts)| (key, counts)))).unwrap())
}

fn frame(sequence: u64, n_rollup_rows: u32, rollups_ipc: Bytes) -> BatchFrame {
    BatchFrame {
        edge_id: 4,
        epoch: 5,
        sequence,
        n_rollup_rows,
        n_conversion_rows: 0,
        n_quarantine_rows: 0,
        rollups_ipc,
        conversions_ipc: Bytes::new(),
        quarantine_ipc: Bytes::new(),
    }
}

/// `Ok(n_rollup_rows)` for a decoded batch, else the refusal message.
#[track_caller]
fn check(bytes: Vec<u8>, expect: Result<usize, &str>) {
    let expect_frame = Bytes::from(bytes);
    match (decode(expect_frame.clone()), expect) {
        (Received::Batch { batch, frame }, Ok(n_rows)) => {
            assert_eq!((batch.edge_id, batch.epoch), (4, 5));
            assert_eq!(batch.rollups.len(), n_rows);
            assert!(batch.conversions.is_empty());
            assert_eq!(frame, expect_frame, "the frame is kept as received");
        }
        (Received::Refuse { error, .. }, Err(message)) => assert_eq!(error.to_string(), message),
        (Received::Batch { batch, .. }, Err(message)) => panic!("applied {batch:?}, expected refusal {message:?}"),
        (Received::Refuse { error, .. }, Ok(_)) => panic!("refused: {error}"),
    }
}

#[test]
fn decode_frames() {
    check(frame(1, 2, rollups_ipc(2)).encode().unwrap(), Ok(2));
    // An empty payload is no rows.
    check(frame(1, 0, Bytes::new()).encode().unwrap(), Ok(0));
    check(frame(1, 0, rollups_ipc(0)).encode().unwrap(), Ok(0));
    check(
        frame(1, 3, rollups_ipc(2)).encode().unwrap(),
        Err("rollups row count mismatch: header says 3, payload has 2"),
    );
    check(frame(1, 1, Bytes::new()).encode().unwrap(), Err("rollups row count mismatch: header says 1, payload has 0"));
    check(frame(0, 2, rollups_ipc(2)).encode().unwrap(), Err("sequence 0 is below the first sequence 1"));
    check(b"short".to_vec(), Err("frame: frame too short: 5 bytes, header is 56"));
    let mut corrupt = frame(1, 2, rollups_ipc(2)).encode().unwrap();
    let last_idx = corrupt.len() - 1;
    corrupt[last_idx] ^= 1;
    assert!(matches!(
        decode(Bytes::from(corrupt)),
        Received::Refuse { error: IngestError::Frame(FrameError::Crc { .. }), .. }
    ));
    // A sound frame whose payload is not Arrow keeps its ids for the ack.
    match decode(Bytes::from(frame(9, 1, Bytes::from_static(b"not arrow")).encode().unwrap())) {
        Received::Refuse { ids, error: IngestError::Payload { payload: "rollups", .. } } => {
            assert_eq!((ids.edge_id, ids.epoch, ids.sequence), (4, 5, 9));
        }
        Received::Refuse { error, .. } => panic!("wrong refusal: {error}"),
        Received::Batch { .. } => panic!("garbage applied"),
    }
    // Conversions where rollups belong fail the schema check.
    let mut swapped = frame(1, 0, Bytes::new());
    swapped.conversions_ipc = rollups_ipc(1);
    swapped.n_conversion_rows = 1;
    assert!(matches!(
        decode(Bytes::from(swapped.encode().unwrap())),
        Received::Refuse { error: IngestError::Payload { payload: "conversions", .. }, .. }
    ));
}
