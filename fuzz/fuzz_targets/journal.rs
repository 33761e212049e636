//! Fuzzes the collector's journal reader: the input is written as the one
//! segment of a journal directory and opened as a start after a crash
//! would (`fuzz_journal_segment`). Opening never panics; every entry read
//! back survives its own encode and decode; a second start finds the same
//! entries; the reopened journal still appends.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("a temporary directory");
    edgetally_collector::fuzz_journal_segment(dir.path(), data);
});
