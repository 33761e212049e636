//! Criterion benchmarks of EdgeTally's hot paths, one file per subsystem in
//! `benches/`: `frame` (sealing a batch into compressed Arrow IPC and a
//! frame, and decoding it) and `ingest` (parsing and validating pixels and
//! event bodies). Run with `cargo bench -p edgetally-benches`.
