//! Dedup window: verdicts over time, agreement with a model, the memory bound
//! and eviction.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use Verdict::{Duplicate, New};

/// A window of 70 s makes generations of exactly 10 s.
const WINDOW_MS: i64 = 70_000;
const GENERATION_MS: i64 = 10_000;

/// A time at the start of a generation.
const T0: i64 = 1_790_000_000_000;

const _: () = assert!(T0 % GENERATION_MS == 0);

fn dedup(window_ms: i64, keys_max: usize) -> Dedup {
    Dedup::with_seed(DedupConfig { window: Duration::from_millis(window_ms as u64), keys_max }, 0x5eed)
}

/// The longest a key can be remembered after its last check: it is
/// [`Verdict::New`] again once this long has passed.
fn remembered_ms_max(dedup: &Dedup) -> i64 {
    dedup.generation_ms * N_GENERATIONS as i64
}

/// Checks `(key, ms after T0, expected verdict)` in order on a 70 s window.
fn check(steps: &[(&str, i64, Verdict)]) {
    let dedup = dedup(WINDOW_MS, 1_000);
    assert_eq!(dedup.generation_ms, GENERATION_MS);
    assert!(remembered_ms_max(&dedup) <= WINDOW_MS * 3 / 2);
    for (step_idx, &(key, offset_ms, expected)) in steps.iter().enumerate() {
        let verdict = dedup.check(key.as_bytes(), T0 + offset_ms);
        assert_eq!(verdict, expected, "step {step_idx}: {key:?} at T0 + {offset_ms} ms");
    }
}

#[test]
fn new_then_duplicate() {
    check(&[("a", 0, New), ("a", 0, Duplicate), ("a", 1, Duplicate)]);
}

#[test]
fn different_keys() {
    check(&[("a", 0, New), ("b", 0, New), ("ab", 0, New), ("", 0, New), ("a", 0, Duplicate), ("", 0, Duplicate)]);
}

#[test]
fn repeat_just_inside_the_window_is_duplicate() {
    check(&[("a", 0, New), ("a", WINDOW_MS - 1, Duplicate)]);
    check(&[("a", GENERATION_MS - 1, New), ("a", GENERATION_MS - 1 + WINDOW_MS - 1, Duplicate)]);
    check(&[("a", 5_555, New), ("b", 40_000, New), ("a", 5_555 + WINDOW_MS - 1, Duplicate)]);
}

#[test]
fn repeat_after_the_longest_memory_is_new() {
    check(&[("a", 0, New), ("a", WINDOW_MS * 3 / 2 + 1, New)]);
    check(&[("a", GENERATION_MS - 1, New), ("a", GENERATION_MS - 1 + WINDOW_MS * 3 / 2 + 1, New)]);
    // Eight generations after its last check at the latest.
    check(&[("a", 0, New), ("a", 8 * GENERATION_MS - 1, Duplicate), ("a", 16 * GENERATION_MS - 1, New)]);
    check(&[("a", GENERATION_MS - 1, New), ("a", 9 * GENERATION_MS - 1, New)]);
}

#[test]
fn rotation_keeps_previous_generations() {
    check(&[("a", GENERATION_MS - 1, New), ("a", GENERATION_MS, Duplicate)]);
    check(&[("a", 0, New), ("b", 3 * GENERATION_MS, New), ("c", 69_999, New), ("a", 69_999, Duplicate)]);
    check(&[("a", 0, New), ("b", 0, New), ("b", 75_000, Duplicate), ("a", 80_000, New), ("b", 80_000, Duplicate)]);
}

#[test]
fn every_check_refreshes_the_key() {
    check(&[
        ("a", 0, New),
        ("a", WINDOW_MS - 1, Duplicate),
        ("a", 2 * WINDOW_MS - 2, Duplicate),
        ("a", 3 * WINDOW_MS - 3, Duplicate),
        ("a", 4 * WINDOW_MS + 2 * GENERATION_MS, New),
    ]);
}

#[test]
fn time_going_backwards_keeps_the_window() {
    check(&[
        ("a", WINDOW_MS, New),
        ("a", 0, Duplicate),
        // A shard records a key at the newest time it has seen, so "a" is
        // kept as if seen at `WINDOW_MS`.
        ("a", 2 * WINDOW_MS - 1, Duplicate),
        ("b", 0, New),
        ("b", WINDOW_MS - 1, Duplicate),
        ("c", -100 * WINDOW_MS, New),
        ("c", -99 * WINDOW_MS - 1, Duplicate),
        ("a", 2 * WINDOW_MS - 1, Duplicate),
        ("b", 2 * WINDOW_MS - 1, Duplicate),
    ]);
}

#[test]
fn jump_forward_expires_everything() {
    check(&[("a", 0, New), ("b", 100 * WINDOW_MS, New), ("a", 100 * WINDOW_MS, New), ("b", 0, Duplicate)]);
}

#[test]
fn short_windows_still_cover_the_window() {
    for (window, generation_ms) in
        [(Duration::ZERO, 1), (Duration::from_micros(1_500), 1), (Duration::from_millis(8), 2)]
    {
        let dedup = Dedup::with_seed(DedupConfig { window, keys_max: 100 }, 1);
        assert_eq!(dedup.generation_ms, generation_ms, "{window:?}");
        assert_eq!(dedup.check(b"a", T0), New);
        assert_eq!(dedup.check(b"a", T0 + window.as_millis() as i64), Duplicate, "{window:?}");
        assert_eq!(dedup.check(b"a", T0 + 100), New, "{window:?}");
    }
    // A window too long for milliseconds in an i64 keeps every key.
    let dedup = Dedup::with_seed(DedupConfig { window: Duration::MAX, keys_max: 100 }, 1);
    assert_eq!(dedup.check(b"a", i64::MIN), New);
    assert_eq!(dedup.check(b"a", i64::MAX), Duplicate);
}

#[test]
fn extreme_times_do_not_panic() {
    let dedup = dedup(1, 100);
    for now_ms in [i64::MIN, i64::MAX, 0, i64::MIN, -1, i64::MAX] {
        dedup.check(b"a", now_ms);
    }
    assert_eq!(dedup.check(b"a", i64::MAX), Duplicate);
}

#[test]
fn sweeps_keep_every_live_key() {
    // About 77 keys per shard of 163, so nothing is evicted early.
    let dedup = dedup(WINDOW_MS, 6_400);
    let key = |generation: i64, key_idx: i64| (generation * 1_000 + key_idx).to_le_bytes();
    for generation in 0..7 {
        for key_idx in 0..700 {
            assert_eq!(dedup.check(&key(generation, key_idx), T0 + generation * GENERATION_MS), New);
        }
    }
    // Generation 8 drops generation 0, and its bloom words, and keeps 1 to 7.
    let now_ms = T0 + 8 * GENERATION_MS;
    for key_idx in 0..700 {
        assert_eq!(dedup.check(&key(0, key_idx), now_ms), New);
    }
    assert!(dedup.stats().bloom_false_positive < 70, "{:?}", dedup.stats());
    for generation in 1..7 {
        for key_idx in 0..700 {
            assert_eq!(dedup.check(&key(generation, key_idx), now_ms), Duplicate, "generation {generation}");
        }
    }
    let stats = dedup.stats();
    assert_eq!((stats.keys, stats.duplicates, stats.evicted_early), (4_900, 4_200, 0));
    assert_eq!(stats.bloom_maybe, stats.bloom_false_positive + stats.duplicates);
}

#[test]
fn full_shards_evict_their_oldest_generation() {
    let keys_max = 6_400;
    let dedup = dedup(WINDOW_MS, keys_max);
    let memory_bytes = dedup.memory_bytes();
    let keys_held_max = (N_SHARDS * Layout::new(keys_max).keys_max_per_shard) as u64;
    let check_all = |key_idxs: std::ops::Range<u64>, now_ms: i64, expected: Verdict| {
        for key_idx in key_idxs {
            assert_eq!(dedup.check(&key_idx.to_le_bytes(), now_ms), expected, "key {key_idx}");
        }
    };
    // A window's worth of keys in three generations fits.
    check_all(0..6_400, T0, New);
    check_all(6_400..7_680, T0 + GENERATION_MS, New);
    assert_eq!(dedup.stats().evicted_early, 0);
    // More in the third generation fill most shards, which drop the oldest
    // generation but keep the two newer ones.
    check_all(7_680..10_880, T0 + 2 * GENERATION_MS, New);
    check_all(6_400..10_880, T0 + 2 * GENERATION_MS, Duplicate);
    let stats = dedup.stats();
    assert!(0 < stats.evicted_early && stats.evicted_early <= 6_400, "{stats:?}");
    assert_eq!(stats.keys + stats.evicted_early, 10_880);
    // A flood far past the bound in one generation: the current generation
    // itself is evicted over and over, memory stays put.
    check_all(10_880..200_000, T0 + 3 * GENERATION_MS, New);
    let stats = dedup.stats();
    assert!(stats.keys <= keys_held_max, "{stats:?}");
    assert_eq!(stats.keys + stats.evicted_early, 200_000);
    assert_eq!(dedup.memory_bytes(), memory_bytes);
    // The newest keys are still there.
    check_all(199_990..200_000, T0 + 3 * GENERATION_MS, Duplicate);
}

#[test]
fn concurrent_checks_agree_on_one_new() {
    let dedup = dedup(WINDOW_MS, 100_000);
    let n_keys = 20_000u64;
    let n_new: u64 = std::thread::scope(|scope| {
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    (0..n_keys).filter(|key_idx| dedup.check(&key_idx.to_le_bytes(), T0) == New).count() as u64
                })
            })
            .collect();
        tasks.into_iter().map(|task| task.join().unwrap()).sum()
    });
    assert_eq!(n_new, n_keys);
    assert_eq!(dedup.stats().duplicates, 3 * n_keys);
}

#[test]
fn is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Dedup>();
}

#[test]
fn layouts() {
    let check = |keys_max: usize, expected: Layout| assert_eq!(Layout::new(keys_max), expected, "{keys_max}");
    check(0, Layout { keys_max_per_shard: 8, n_slots: 10, n_bloom_blocks: 1 });
    check(6_400, Layout { keys_max_per_shard: 163, n_slots: 187, n_bloom_blocks: 6 });
    check(10_000_000, Layout { keys_max_per_shard: 180_268, n_slots: 206_021, n_bloom_blocks: 6_439 });
    // Saturates rather than overflowing.
    let _ = Layout::new(usize::MAX);
}

#[test]
fn default_window_holds_ten_million_keys_within_budget() {
    let dedup = Dedup::with_seed(DedupConfig::default(), 0x5eed);
    let memory_bytes = dedup.memory_bytes();
    assert_eq!(memory_bytes, Layout::new(KEYS_MAX_DEFAULT).memory_bytes());
    assert!(memory_bytes <= 128 * 1024 * 1024, "{memory_bytes}");
    // Ten million distinct keys spread over one window, as a steady rate
    // would: all new, none evicted.
    let n_keys = 10_000_000u64;
    let window_ms = DedupConfig::default().window.as_millis() as u64;
    let n_duplicates = (0..n_keys)
        .filter(|&key_idx| {
            let now_ms = T0 + (key_idx * window_ms / n_keys) as i64;
            dedup.check(&key_idx.to_le_bytes(), now_ms) == Duplicate
        })
        .count();
    assert_eq!(n_duplicates, 0);
    let stats = dedup.stats();
    assert_eq!((stats.keys, stats.duplicates, stats.evicted_early), (n_keys, 0, 0));
    assert_eq!(stats.bloom_false_positive, stats.bloom_maybe);
    assert!(stats.bloom_false_positive < n_keys / 100, "{stats:?}");
    assert_eq!(dedup.memory_bytes(), memory_bytes);
}

/// Steps time and key through `ops` and holds each verdict to the model: a
/// key's last check and the newest time seen by then.
fn check_model(dedup: &Dedup, window_ms: i64, ops: &[(u16, i64)]) -> Result<(), TestCaseError> {
    let mut seen: HashMap<u16, (i64, i64)> = HashMap::new();
    let (mut now_ms, mut newest_ms) = (T0, T0);
    for (op_idx, &(key, step_ms)) in ops.iter().enumerate() {
        now_ms += step_ms;
        newest_ms = newest_ms.max(now_ms);
        let verdict = dedup.check(&key.to_le_bytes(), now_ms);
        match seen.get(&key) {
            None => prop_assert_eq!(verdict, New, "op {}: key {} never seen", op_idx, key),
            Some(&(seen_ms, seen_newest_ms)) => {
                // A repeat within the window is a duplicate, unless a full
                // shard evicted early. A shard records a key at its newest
                // time, which is between the two.
                if newest_ms - seen_ms < window_ms && dedup.stats().evicted_early == 0 {
                    prop_assert_eq!(verdict, Duplicate, "op {}: key {} seen at {}", op_idx, key, seen_ms - T0);
                }
                if now_ms - seen_newest_ms >= remembered_ms_max(dedup) {
                    prop_assert_eq!(verdict, New, "op {}: key {} seen at {}", op_idx, key, seen_ms - T0);
                }
            }
        }
        seen.insert(key, (now_ms, newest_ms));
    }
    Ok(())
}

fn step_ms() -> impl Strategy<Value = i64> {
    prop_oneof![8 => 0..WINDOW_MS / 4, 1 => -WINDOW_MS..0, 1 => WINDOW_MS / 2..3 * WINDOW_MS]
}

proptest! {
    #[test]
    fn agrees_with_model(seed: u64, ops in prop::collection::vec((0u16..12, step_ms()), 1..300)) {
        let dedup = Dedup::with_seed(DedupConfig { window: Duration::from_millis(WINDOW_MS as u64), keys_max: 1_000 }, seed);
        check_model(&dedup, WINDOW_MS, &ops)?;
        prop_assert_eq!(dedup.stats().evicted_early, 0);
    }

    #[test]
    fn agrees_with_model_when_full(
        seed: u64,
        window_ms in 1i64..5_000,
        keys_max in 0usize..200,
        ops in prop::collection::vec((0u16..500, 0i64..20), 1..2_000),
    ) {
        // Up to a few hundred keys live over shards of 8 to 20 keys:
        // collisions, sweeps and early evictions.
        let config = DedupConfig { window: Duration::from_millis(window_ms as u64), keys_max };
        let dedup = Dedup::with_seed(config, seed);
        let memory_bytes = dedup.memory_bytes();
        check_model(&dedup, window_ms, &ops)?;
        prop_assert_eq!(dedup.memory_bytes(), memory_bytes);
    }
}
