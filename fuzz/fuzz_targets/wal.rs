//! Fuzzes the aggregator's write-ahead log reader: the input is written as
//! a log segment and recovered as a start would (`wal_recover_payloads`,
//! which runs the aggregator's `recover`). Recovery succeeds or returns an
//! error, every payload it hands out is a whole record of the input, and a
//! second recovery (after torn tails were truncated) hands out the same.
#![no_main]

use edgetally_aggregator::wal_recover_payloads;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("00000000000000000001.wal"), data).expect("write the segment");
    let Ok(payloads) = wal_recover_payloads(dir.path()) else { return };
    for payload in &payloads {
        let mut record = Vec::with_capacity(12 + payload.len());
        record.extend_from_slice(b"ETW1");
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        record.extend_from_slice(payload);
        assert!(data.windows(record.len()).any(|window| window == record), "a payload that was not a record");
    }
    let again = wal_recover_payloads(dir.path()).expect("a recovered log recovers again");
    assert_eq!(again, payloads);
});
