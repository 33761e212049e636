//! Round trips of rollup and conversion rows through compressed Arrow IPC.

use super::*;

fn key(minute_ms: i64, affiliate_id: u32, sub1: &str) -> RollupKey {
    RollupKey { minute_ms, affiliate_id, campaign_id: 9, sub1: sub1.to_owned() }
}

#[test]
fn rollups_round_trip() {
    let rows = vec![
        (
            key(60_000, 1, ""),
            RollupCounts {
                impressions: 5,
                clicks: 2,
                unique_clicks: 1,
                leads: 1,
                sales: 0,
                duplicates: 3,
                flagged: [1, 0, 7, 0, 2],
            },
        ),
        (key(120_000, 2, "fb"), RollupCounts { sales: u64::MAX, ..RollupCounts::default() }),
    ];
    let bytes = encode_ipc(&rollups_to_batch(rows.iter().map(|(k, c)| (k, c)))).unwrap();
    let batches = decode_ipc(&bytes).unwrap();
    assert_eq!(batches.len(), 1);
    assert_eq!(rollups_from_batch(&batches[0]).unwrap(), rows);
}

#[test]
fn conversions_round_trip() {
    let usd = Currency::parse("USD").unwrap();
    let rows = vec![
        ConversionRow {
            time_ms: 61_000,
            kind: EventKind::Sale,
            affiliate_id: 3,
            campaign_id: 4,
            sub1: "x".into(),
            money: Some(Money { minor_units: 1234, currency: usd }),
            order_id: Some("o-1".into()),
            click_id: None,
            event_id: Some("e1".into()),
            flag: None,
        },
        ConversionRow {
            time_ms: 62_000,
            kind: EventKind::Lead,
            affiliate_id: 3,
            campaign_id: 4,
            sub1: String::new(),
            money: None,
            order_id: None,
            click_id: Some("c".into()),
            event_id: None,
            flag: Some(Flag::FastConversion),
        },
    ];
    let bytes = encode_ipc(&conversions_to_batch(&rows)).unwrap();
    let batches = decode_ipc(&bytes).unwrap();
    assert_eq!(conversions_from_batch(&batches[0]).unwrap(), rows);
}

#[test]
fn wrong_schema_is_refused() {
    let rows = [(key(0, 1, ""), RollupCounts::default())];
    let rollups = rollups_to_batch(rows.iter().map(|(k, c)| (k, c)));
    assert!(matches!(conversions_from_batch(&rollups), Err(BatchError::Schema(_))));
    assert!(decode_ipc(b"not arrow").is_err());
}

#[test]
fn quarantine_round_trip_and_bounds() {
    let long = "é".repeat(QUARANTINE_INPUT_LEN_MAX);
    let rows = vec![
        QuarantineRow::new(5, "pixel", "bad_id", "bad affiliate_id", "aff=x&cmp=1"),
        QuarantineRow::new(6, "events", "invalid_json", &"d".repeat(1000), &long),
    ];
    assert_eq!(rows[1].detail.len(), QUARANTINE_DETAIL_LEN_MAX);
    assert_eq!(rows[1].input.len(), QUARANTINE_INPUT_LEN_MAX);
    assert!(rows[1].input.chars().all(|c| c == 'é'));
    let bytes = encode_ipc(&quarantine_to_batch(&rows)).unwrap();
    assert_eq!(quarantine_from_batch(&decode_ipc(&bytes).unwrap()[0]).unwrap(), rows);
}

/// Streams on which the fuzz targets found arrow-ipc panicking or
/// allocating what the stream announced (see `decode_ipc`); each must be
/// refused as malformed.
#[test]
fn fuzz_regressions_are_refused() {
    let check = |name: &str, bytes: &[u8]| match decode_ipc(bytes) {
        Err(BatchError::Malformed(message)) => assert!(!message.is_empty(), "{name}"),
        other => panic!("{name}: expected a malformed stream, got {other:?}"),
    };
    // A buffer whose offset lies far past the message body (`batch_ipc`).
    check("buffer-past-body", include_bytes!("fuzz_regressions/buffer-past-body.arrows"));
    // The conversions payload of a frame whose CRC the fuzzer fixed up: a
    // validity bitmap shorter than its array (`frame`).
    check("frame-conversions", include_bytes!("fuzz_regressions/frame-conversions.arrows"));
    // Payloads of a frame that asked zstd for a 554 TB buffer, which aborts
    // the process when the allocation fails (`frame`).
    check("frame-huge-rollups", include_bytes!("fuzz_regressions/frame-huge-rollups.arrows"));
    check("frame-huge-conversions", include_bytes!("fuzz_regressions/frame-huge-conversions.arrows"));
    // A message body announced past the end of the stream, which arrow-ipc
    // allocated (2 GiB, zeroed) before reading (`batch_ipc`).
    check("body-past-stream", include_bytes!("fuzz_regressions/body-past-stream.arrows"));
}

/// Every stream this crate writes passes the length checks, empty or not.
#[test]
fn own_streams_pass_the_length_checks() {
    let empty = encode_ipc(&quarantine_to_batch(&[])).unwrap();
    assert!(check_ipc_lengths(&empty).is_ok());
    let rows = [QuarantineRow::new(1, "pixel", "bad_id", "bad id", "aff=0")];
    let one = encode_ipc(&quarantine_to_batch(&rows)).unwrap();
    assert!(check_ipc_lengths(&one).is_ok());
    assert_eq!(quarantine_from_batch(&decode_ipc(&one).unwrap()[0]).unwrap(), rows);
    // Cut anywhere before the end-of-stream marker (its last 8 bytes), the
    // stream is refused, or (cut between messages) reads as a stream without
    // the batch; never a panic.
    for len in 0..one.len() - 8 {
        if let Ok(batches) = decode_ipc(&one[..len]) {
            assert!(batches.is_empty(), "cut at {len}");
        }
    }
}

#[test]
fn the_flag_counters_are_the_flags_columns_in_order() {
    assert_eq!(RollupCounts::COLUMNS[N_COUNTERS - N_FLAGS..], Flag::COLUMNS);
    let mut counts = RollupCounts::default();
    counts.count_flagged(Flag::OverDailyCap);
    assert_eq!(counts.values()[N_COUNTERS - 1], 1);
    assert_eq!(RollupCounts::from_values(counts.values()), counts);
}

#[test]
fn wire_rollups_round_trip_with_dictionary_sub1() {
    let rows: Vec<(RollupKey, RollupCounts)> = (0..2_000u32)
        .map(|i| {
            let sub1 = match i % 4 {
                0 => String::new(),
                n => format!("placement-{n}"),
            };
            let key = RollupKey { minute_ms: 60_000, affiliate_id: i / 4, campaign_id: 9, sub1 };
            (key, RollupCounts { impressions: u64::from(i % 7), clicks: 1, ..RollupCounts::default() })
        })
        .collect();
    let wire = rollups_to_wire_batch(rows.iter().map(|(k, c)| (k, c)));
    assert_eq!(wire.schema(), *ROLLUP_WIRE_SCHEMA);
    let wire_bytes = encode_ipc(&wire).unwrap();
    let batches = decode_ipc(&wire_bytes).unwrap();
    assert_eq!(rollups_from_batch(&batches[0]).unwrap(), rows);
    // The dictionary carries each sub ID once: fewer bytes than the text.
    let plain_bytes = encode_ipc(&rollups_to_batch(rows.iter().map(|(k, c)| (k, c)))).unwrap();
    assert!(wire_bytes.len() < plain_bytes.len(), "{} >= {}", wire_bytes.len(), plain_bytes.len());
}

#[test]
fn wire_rollups_with_other_dictionary_keys_are_refused() {
    let rows = [(key(0, 1, "a"), RollupCounts::default())];
    let wire = rollups_to_wire_batch(rows.iter().map(|(k, c)| (k, c)));
    let sub1 = sub1_with_u8_keys(&wire);
    let mut fields: Vec<_> = wire.schema().fields().iter().cloned().collect();
    fields[3] = Arc::new(Field::new("sub1", sub1.data_type().clone(), false));
    let mut columns = wire.columns().to_vec();
    columns[3] = sub1;
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
    assert!(matches!(rollups_from_batch(&batch), Err(BatchError::Schema(_))));
}

fn sub1_with_u8_keys(batch: &RecordBatch) -> ArrayRef {
    let mut builder = StringDictionaryBuilder::<arrow_array::types::UInt8Type>::new();
    let dictionary = batch.column(3).as_dictionary::<Int32Type>();
    let values = dictionary.values().as_string::<i32>();
    for key in dictionary.keys().values() {
        builder.append_value(values.value(*key as usize));
    }
    Arc::new(builder.finish())
}
