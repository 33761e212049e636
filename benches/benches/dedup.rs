//! The dedup window on the hot path: a key never seen and a key seen, in a
//! window that holds its default 10 million keys.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use edgetally_collector::dedup::{Dedup, DedupConfig, Verdict};

const T0: i64 = 1_790_000_000_000;

/// Keys in the window: the default `keys_max`.
const N_KEYS: u64 = 10_000_000;

/// Odd, so that `key_idx * KEY_STRIDE % N_KEYS` visits every key in an order
/// the caches cannot follow.
const KEY_STRIDE: u64 = 6_700_417;

/// A default window filled with `N_KEYS` keys arriving at the steady rate it
/// is sized for, its clock at the end of that window, and the time between
/// two keys.
fn filled() -> (Dedup, f64, f64) {
    let config = DedupConfig::default();
    let step_ms = config.window.as_millis() as f64 / N_KEYS as f64;
    let dedup = Dedup::new(config);
    for key_idx in 0..N_KEYS {
        let now_ms = T0 + (key_idx as f64 * step_ms) as i64;
        assert_eq!(dedup.check(&key_idx.to_le_bytes(), now_ms), Verdict::New, "key {key_idx}");
    }
    let stats = dedup.stats();
    eprintln!(
        "dedup: {} keys in {} bytes, bloom false positives {} ({:.3}% of new keys)",
        stats.keys,
        dedup.memory_bytes(),
        stats.bloom_false_positive,
        100.0 * stats.bloom_false_positive as f64 / N_KEYS as f64,
    );
    (dedup, T0 as f64 + N_KEYS as f64 * step_ms, step_ms)
}

fn dedup(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("dedup");
    group.throughput(Throughput::Elements(1));
    {
        let (dedup, now_ms, _) = filled();
        let now_ms = now_ms as i64;
        let mut key_idx = 0u64;
        group.bench_function("lookup_duplicate", |bench| {
            bench.iter(|| {
                key_idx += 1;
                dedup.check(&(key_idx * KEY_STRIDE % N_KEYS).to_le_bytes(), now_ms)
            })
        });
    }
    {
        // New keys keep arriving at the steady rate, so generations rotate as
        // in production and the window stays full: the figure includes the
        // share of rotation sweeps.
        let (dedup, mut now_ms, step_ms) = filled();
        let mut key_idx = N_KEYS;
        group.bench_function("insert_new", |bench| {
            bench.iter(|| {
                key_idx += 1;
                now_ms += step_ms;
                dedup.check(&key_idx.to_le_bytes(), now_ms as i64)
            })
        });
        let stats = dedup.stats();
        assert_eq!(stats.evicted_early, 0, "{stats:?}");
        eprintln!("dedup: after insert_new, {stats:?}");
    }
    group.finish();
}

criterion_group!(benches, dedup);
criterion_main!(benches);
