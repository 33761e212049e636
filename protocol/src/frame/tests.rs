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
    assert_eq!(encoded.len(), FRAME_HEADER_LEN + 12);
    assert_eq!(BatchFrame::decode(Bytes::from(encoded)).unwrap(), sample());
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
