//! Frame and ack codec cases.

use super::*;

fn sample() -> BatchFrame {
    BatchFrame {
        edge_id: 7,
        epoch: 3,
        sequence: 42,
        n_rollup_rows: 2,
        n_conversion_rows: 1,
        n_quarantine_rows: 3,
        rollups_ipc: Bytes::from_static(b"rollups"),
        conversions_ipc: Bytes::from_static(b"conv"),
        quarantine_ipc: Bytes::from_static(b"q"),
    }
}

#[test]
fn round_trip() {
    let encoded = sample().encode().unwrap();
    assert_eq!(u16::from_le_bytes([encoded[4], encoded[5]]), FRAME_VERSION);
    assert_eq!(BatchFrame::decode(Bytes::from(encoded)).unwrap(), sample());
}

fn plain_frame(frame: &BatchFrame) -> Vec<u8> {
    frame.encode_version_2().unwrap()
}

#[test]
fn version_2_frames_still_decode() {
    let plain = plain_frame(&sample());
    assert_eq!(plain.len(), FRAME_HEADER_LEN + 12);
    assert_eq!(BatchFrame::decode(Bytes::from(plain)).unwrap(), sample());
}

#[test]
fn the_frame_dictionary_is_the_sample() {
    let sample = frame_dictionary_sample();
    if std::env::var_os("EDGETALLY_WRITE_FRAME_DICTIONARY").is_some() {
        std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/src/frame/dictionary.bin"), &sample).unwrap();
    }
    assert!(
        FRAME_DICTIONARY == sample.as_slice(),
        "the sample changed (an arrow upgrade?): write it with EDGETALLY_WRITE_FRAME_DICTIONARY=1 \
         and bump FRAME_VERSION and ALPN, since both sides must hold the same dictionary"
    );
}

/// The rows of a flush between two rollup seals: a few dozen conversions
/// and quarantine rows, their streams with per-buffer compression (as
/// version 2 edges wrote them) or plain (as version 3 frames carry them).
fn flush_frame(compressed_streams: bool) -> BatchFrame {
    use crate::batch::{conversions_to_batch, encode_ipc, encode_ipc_plain, quarantine_to_batch};
    use crate::{ConversionRow, Currency, EventKind, Money, QuarantineRow};
    let eur = Currency::parse("EUR").unwrap();
    let conversions: Vec<ConversionRow> = (0..30u32)
        .map(|i| ConversionRow {
            time_ms: 1_798_761_600_000 + i64::from(i) * 7,
            kind: if i % 2 == 0 { EventKind::Sale } else { EventKind::Lead },
            affiliate_id: 1 + i * 37 % 500,
            campaign_id: 1 + i % 9,
            sub1: format!("s{}", i % 4),
            money: (i % 2 == 0).then_some(Money { minor_units: 1_000 + i64::from(i) * 311, currency: eur }),
            order_id: Some(format!("r19af2b-t{}-{i}", i % 32)),
            click_id: Some(format!("AQEBAAAA{:040x}", u64::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15))),
            event_id: None,
            flag: None,
        })
        .collect();
    let quarantine: Vec<QuarantineRow> = (0..10)
        .map(|i| QuarantineRow::new(1_798_761_600_000 + i, "pixel", "bad_id", "bad affiliate_id", "aff=x&cmp=2"))
        .collect();
    let encode = |batch: &arrow_array::RecordBatch| -> Bytes {
        let ipc = if compressed_streams { encode_ipc(batch) } else { encode_ipc_plain(batch) };
        ipc.unwrap().into()
    };
    BatchFrame {
        edge_id: 1,
        epoch: 1,
        sequence: 1,
        n_rollup_rows: 0,
        n_conversion_rows: 30,
        n_quarantine_rows: 10,
        rollups_ipc: Bytes::new(),
        conversions_ipc: encode(&conversions_to_batch(&conversions)),
        quarantine_ipc: encode(&quarantine_to_batch(&quarantine)),
    }
}

#[test]
fn a_flush_ships_in_a_fraction_of_its_plain_streams() {
    let frame = flush_frame(false);
    let version_3 = frame.encode().unwrap();
    let version_2 = plain_frame(&flush_frame(true));
    assert!(
        version_3.len() * 3 < version_2.len(),
        "version 3: {} bytes, version 2: {} bytes",
        version_3.len(),
        version_2.len()
    );
    assert_eq!(BatchFrame::decode(Bytes::from(version_3)).unwrap(), frame);
}

/// Writes the CRC a frame's header and payload now call for.
fn recompute_crc(frame: &mut [u8]) {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&frame[..FRAME_HEADER_LEN - 4]);
    crc.update(&frame[FRAME_HEADER_LEN..]);
    frame[FRAME_HEADER_LEN - 4..FRAME_HEADER_LEN].copy_from_slice(&crc.finalize().to_le_bytes());
}

#[test]
fn payloads_that_do_not_decompress_are_refused() {
    // A valid CRC over a payload that is not zstd.
    let mut frame = plain_frame(&sample());
    frame[4..6].copy_from_slice(&FRAME_VERSION.to_le_bytes());
    recompute_crc(&mut frame);
    assert!(matches!(BatchFrame::decode(Bytes::from(frame)), Err(FrameError::Decompress(_))));

    // Streams announced shorter than they decompress to: the reader stops
    // at the announced length.
    let mut short = sample().encode().unwrap();
    short[44..48].copy_from_slice(&1u32.to_le_bytes());
    recompute_crc(&mut short);
    assert!(matches!(BatchFrame::decode(Bytes::from(short)), Err(FrameError::Decompress(_))));

    // More than a frame may hold, announced: refused before decompressing.
    let mut huge = sample().encode().unwrap();
    huge[44..48].copy_from_slice(&(FRAME_BYTES_MAX as u32).to_le_bytes());
    assert!(matches!(BatchFrame::decode(Bytes::from(huge)), Err(FrameError::TooLarge { .. })));
}

#[test]
fn every_flipped_byte_is_detected() {
    let encoded = sample().encode().unwrap();
    for byte_idx in 0..encoded.len() {
        let mut corrupt = encoded.clone();
        corrupt[byte_idx] ^= 0x01;
        assert!(BatchFrame::decode(Bytes::from(corrupt)).is_err(), "flip at {byte_idx} passed");
    }
}

#[test]
fn truncation_is_detected() {
    let encoded = sample().encode().unwrap();
    for len in 0..encoded.len() {
        assert!(BatchFrame::decode(Bytes::copy_from_slice(&encoded[..len])).is_err(), "{len} bytes passed");
    }
}

#[test]
fn ack_round_trip() {
    for status in [AckStatus::Apply, AckStatus::Skip, AckStatus::Refuse] {
        let ack = Ack { edge_id: 1, epoch: 2, sequence: u64::MAX, status };
        assert_eq!(Ack::decode(&ack.encode()).unwrap(), ack);
    }
    let mut bad = Ack { edge_id: 1, epoch: 2, sequence: 3, status: AckStatus::Apply }.encode();
    bad[24] = 9;
    assert_eq!(Ack::decode(&bad), Err(FrameError::AckStatus(9)));
}

#[test]
fn hello_round_trip_and_refusals() {
    let hello = Hello { edge_id: 42, token: b"s3cret-token-of-edge-42".to_vec() };
    let bytes = hello.encode().unwrap();
    assert_eq!(Hello::decode(&bytes).unwrap(), hello);
    assert!(!format!("{hello:?}").contains("s3cret"), "the token never reaches a log");
    assert_eq!(Hello::decode(&bytes[..bytes.len() - 1]), Err(FrameError::Length { announced: 23, actual: 22 }));
    assert_eq!(Hello::decode(&bytes[..5]), Err(FrameError::TooShort { len: 5 }));
    let mut wrong = bytes.clone();
    wrong[0] = b'X';
    assert_eq!(Hello::decode(&wrong), Err(FrameError::BadMagic));
    let long = Hello { edge_id: 1, token: vec![b'a'; HELLO_TOKEN_LEN_MAX + 1] };
    assert_eq!(long.encode(), Err(FrameError::TokenTooLong));

    for accepted in [true, false] {
        let ack = HelloAck { accepted };
        assert_eq!(HelloAck::decode(&ack.encode()).unwrap(), ack);
    }
    assert_eq!(HelloAck::decode(b"ETK1\x07"), Err(FrameError::AckStatus(7)));
}

#[test]
fn config_snapshot_round_trip_and_damage() {
    let snapshot = ConfigSnapshot::new(Bytes::from_static(br#"{"campaigns":[]}"#));
    assert_eq!(snapshot.version, ConfigSnapshot::new(Bytes::from_static(br#"{"campaigns":[]}"#)).version);
    assert_ne!(snapshot.version, ConfigSnapshot::new(Bytes::from_static(br#"{"campaigns": []}"#)).version);
    let bytes = snapshot.encode().unwrap();
    let header: [u8; SNAPSHOT_HEADER_LEN] = bytes[..SNAPSHOT_HEADER_LEN].try_into().unwrap();
    let header = ConfigSnapshot::decode_header(&header).unwrap();
    let body = Bytes::copy_from_slice(&bytes[SNAPSHOT_HEADER_LEN..]);
    assert_eq!(ConfigSnapshot::from_parts(header, body.clone()).unwrap(), snapshot);

    let mut flipped = body.to_vec();
    flipped[3] ^= 1;
    assert!(matches!(ConfigSnapshot::from_parts(header, flipped.into()), Err(FrameError::Crc { .. })));
    let mut huge: [u8; SNAPSHOT_HEADER_LEN] = bytes[..SNAPSHOT_HEADER_LEN].try_into().unwrap();
    huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(ConfigSnapshot::decode_header(&huge), Err(FrameError::SnapshotTooLarge { .. })));
}

#[test]
fn ids_peeked_from_a_header() {
    let bytes = sample().encode().unwrap();
    let frame = sample();
    assert_eq!(BatchFrame::peek_ids(&bytes), Some((frame.edge_id, frame.epoch, frame.sequence)));
    assert_eq!(BatchFrame::peek_ids(&bytes[..27]), None);
}
