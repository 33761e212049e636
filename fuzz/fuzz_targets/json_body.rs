//! Fuzzes the `POST /v1/events` body parser (`edgetally_collector::ingest::
//! parse_body`: one JSON object, an array or NDJSON, through simd-json) and
//! validation of every item. The first byte chooses NDJSON by content type.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else { return };
    let mut body = body.to_vec();
    edgetally_fuzz::check_body(&mut body, flags & 1 == 1);
});
