//! Fuzzes the pixel and postback query-string parser
//! (`edgetally_collector::ingest::parse_query`), the base64url JSON payload
//! of `d=` (`pixel_payload`, `parse_event`) and event validation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // hyper hands the collector the query as `&str`.
    if let Ok(query) = std::str::from_utf8(data) {
        edgetally_fuzz::check_query(query);
    }
});
