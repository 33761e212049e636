//! Appending one seal to the collector's spool, synced, as the uplink does
//! four times a second: the standard path (`pwrite` + `fdatasync`) against
//! io_uring (the write linked to an `fdatasync` in one submission), for a
//! quiet edge's seal (4 KiB) and a busy one's (128 KiB). The spool lives on
//! the build's disk (`CARGO_TARGET_TMPDIR`), not a tmpfs, so the sync is
//! real.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use edgetally_collector::spool::{Spool, SpoolIo, Through};

/// A frame-shaped payload: the spool reads epoch and sequence from it.
fn frame(sequence: u64, len: usize) -> Bytes {
    let mut frame = vec![0x5A; len];
    frame[12..20].copy_from_slice(&1u64.to_le_bytes());
    frame[20..28].copy_from_slice(&sequence.to_le_bytes());
    frame.into()
}

fn spool(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("spool_append");
    for len in [4 * 1024, 128 * 1024] {
        group.throughput(Throughput::Bytes(len as u64));
        for (name, io) in [("std", SpoolIo::Std), ("io_uring", SpoolIo::Uring)] {
            let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
            let (mut spool, _) = Spool::open(dir.path(), u64::MAX, io).unwrap();
            let frames = [frame(1, len)];
            group.bench_with_input(BenchmarkId::new(name, len), &len, |bench, _| {
                bench.iter(|| {
                    let pending = spool.append(black_box(&frames), Through::all(0), 0).unwrap();
                    // Acknowledged at once, so drained segments are deleted
                    // and the spool stays small, as on a healthy link.
                    spool.ack(1, pending[0].sequence);
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, spool);
criterion_main!(benches);
