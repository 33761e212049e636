//! Criterion benchmarks of EdgeTally's hot paths, one file per subsystem in
//! `benches/`: `frame` (sealing a batch into compressed Arrow IPC and a
//! frame, and decoding it), `ingest` (parsing and validating pixels and
//! event bodies), `dedup` (the dedup window), `click_id` (minting and
//! verifying signed click IDs) and `tally` (counting a validated event).
//! Run with `cargo bench -p edgetally-benches`.
//!
//! The crate also builds `bare-gif` (`src/bin/bare-gif.rs`), a hyper server
//! that only answers the pixel GIF: `benches/compare.sh` measures the
//! release collector against it and against nginx's `empty_gif`.
