//! Fuzzes the batch frame decoder (`BatchFrame::decode`) on raw bytes, as
//! the aggregator reads a QUIC stream: a frame that decodes encodes to a
//! frame that decodes the same, and its Arrow payloads decode or are
//! refused, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    edgetally_fuzz::let_arrow_panics_unwind();
    edgetally_fuzz::check_frame(data);
});
