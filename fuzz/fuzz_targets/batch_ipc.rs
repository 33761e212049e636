//! Fuzzes the Arrow IPC payloads of a frame past its CRC: `decode_ipc` then
//! `rollups_from_batch`, `conversions_from_batch` or `quarantine_from_batch`
//! (chosen by the first byte). Rows that decode survive a round trip.
#![no_main]

use edgetally_fuzz::Payload;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    edgetally_fuzz::let_arrow_panics_unwind();
    let Some((&selector, ipc)) = data.split_first() else { return };
    let payload = match selector % 3 {
        0 => Payload::Rollups,
        1 => Payload::Conversions,
        _ => Payload::Quarantine,
    };
    edgetally_fuzz::check_payload(payload, ipc);
});
