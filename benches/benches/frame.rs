//! Sealing rollups into a frame and decoding it again, by rows per batch.

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use edgetally_protocol::batch::{decode_ipc, encode_ipc_plain, rollups_from_batch, rollups_to_wire_batch};
use edgetally_protocol::{BatchFrame, RollupCounts, RollupKey};

fn rows(n_rows: u32) -> Vec<(RollupKey, RollupCounts)> {
    (0..n_rows)
        .map(|row_idx| {
            let key = RollupKey {
                minute_ms: 1_790_000_000_000 + i64::from(row_idx % 3) * 60_000,
                affiliate_id: row_idx % 10_000,
                campaign_id: row_idx % 50,
                sub1: format!("sub{}", row_idx % 20),
            };
            let counts = RollupCounts {
                duplicates: u64::from(row_idx % 2),
                unique_clicks: u64::from(row_idx % 5),
                impressions: u64::from(row_idx % 97),
                clicks: u64::from(row_idx % 7),
                leads: 0,
                sales: 1,
                // One row in a hundred has a flagged event.
                flagged: [u64::from(row_idx % 100 == 0), 0, 0, 0, 0],
            };
            (key, counts)
        })
        .collect()
}

/// Seals rollup rows into an encoded frame, as the collector's uplink does:
/// a plain IPC stream, compressed with the frame.
fn seal(rows: &[(RollupKey, RollupCounts)]) -> Vec<u8> {
    let ipc = encode_ipc_plain(&rollups_to_wire_batch(rows.iter().map(|(key, counts)| (key, counts)))).unwrap();
    BatchFrame {
        edge_id: 1,
        epoch: 1,
        sequence: 1,
        n_rollup_rows: rows.len() as u32,
        n_conversion_rows: 0,
        n_quarantine_rows: 0,
        rollups_ipc: ipc.into(),
        conversions_ipc: Bytes::new(),
        quarantine_ipc: Bytes::new(),
    }
    .encode()
    .unwrap()
}

fn frame(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("frame");
    for n_rows in [100u32, 10_000] {
        let rows = rows(n_rows);
        group.throughput(Throughput::Elements(u64::from(n_rows)));
        group.bench_with_input(BenchmarkId::new("seal", n_rows), &rows, |bench, rows| bench.iter(|| seal(rows)));
        let encoded = Bytes::from(seal(&rows));
        group.bench_with_input(BenchmarkId::new("decode", n_rows), &encoded, |bench, encoded| {
            bench.iter(|| {
                let frame = BatchFrame::decode(encoded.clone()).unwrap();
                let batches = decode_ipc(&frame.rollups_ipc).unwrap();
                rollups_from_batch(&batches[0]).unwrap().len()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, frame);
criterion_main!(benches);
