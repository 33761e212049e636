//! Signed click IDs: minting one for a click redirect, and verifying one
//! carried back by a postback or conversion pixel.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use edgetally_protocol::{Click, ClickKey, ClickKeys};

const NOW_MS: i64 = 1_790_000_000_000;

/// Distinct IDs the verify bench cycles over, so it does not decode one
/// string that stays in the L1 cache with its branch history.
const N_IDS: u32 = 1024;

fn click(nonce: u32) -> Click {
    Click { key_id: 0, edge_id: 7, time_ms: NOW_MS, affiliate_id: 1234 + nonce % 100, campaign_id: 56, nonce }
}

fn click_id(criterion: &mut Criterion) {
    // Two keys, the current one second, as during a rotation: the look-up
    // walks past the retired key.
    let keys = ClickKeys::new(2, vec![(1, ClickKey([1; 32])), (2, ClickKey([2; 32]))]).unwrap();
    let mut group = criterion.benchmark_group("click_id");
    group.throughput(Throughput::Elements(1));
    let mut nonce = 0u32;
    group.bench_function("mint", |bench| {
        bench.iter(|| {
            nonce = nonce.wrapping_add(1);
            click(nonce).mint(&keys).unwrap()
        })
    });
    let ids: Vec<String> = (0..N_IDS).map(|nonce| click(nonce).mint(&keys).unwrap()).collect();
    let mut id_idx = 0usize;
    group.bench_function("verify", |bench| {
        bench.iter(|| {
            id_idx = (id_idx + 1) % ids.len();
            Click::verify(&ids[id_idx], &keys).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, click_id);
criterion_main!(benches);
