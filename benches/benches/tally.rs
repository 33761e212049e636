//! Counting a validated pixel into the collector's tally, over 10,000
//! distinct rollup keys, with the map sealed as often as the uplink seals it:
//! in memory only (`record`) and with every change journaled to a mapped
//! file as the collector runs (`record_journaled`).

use std::borrow::Cow;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use edgetally_collector::tally::{Tally, TallyLimits};
use edgetally_protocol::event::RawEvent;
use edgetally_protocol::{Event, EventKind};

const NOW_MS: i64 = 1_790_000_000_000;

/// Distinct `(minute, affiliate_id, campaign_id, sub1)` keys recorded in turn.
const N_KEYS: u32 = 10_000;

/// Records between two seals: one default flush interval (250 ms) at
/// 50,000 pixels per second. Each interval thus inserts every key once into
/// an emptied map and then counts a quarter of them again, as uniform
/// traffic over 10,000 keys would.
const SEAL_EVERY: u64 = 12_500;

/// Impression pixels for `N_KEYS` keys: 2,000 affiliates times five sub1
/// values, validated once here so the bench measures only the tally.
fn events() -> Vec<Event> {
    (0..N_KEYS)
        .map(|key_idx| {
            let affiliate_id = (key_idx % 2_000 + 1).to_string();
            let mut raw = RawEvent {
                affiliate_id: Some(Cow::Owned(affiliate_id)),
                campaign_id: Some(Cow::Borrowed("56")),
                ..RawEvent::default()
            };
            raw.subs[0] = Some(Cow::Owned(format!("newsletter-{}", key_idx / 2_000)));
            Event::validate(&raw, Some(EventKind::Impression), NOW_MS).unwrap()
        })
        .collect()
}

fn tally(criterion: &mut Criterion) {
    let events = events();
    let mut group = criterion.benchmark_group("tally");
    group.throughput(Throughput::Elements(1));
    let in_memory = Tally::new(TallyLimits::default());
    group.bench_function("record", |bench| bench.iter_custom(|n_iters| record(&in_memory, &events, n_iters)));
    let dir = tempfile::tempdir().unwrap();
    let journaled = Tally::journaled(TallyLimits::default(), dir.path()).unwrap();
    group.bench_function("record_journaled", |bench| bench.iter_custom(|n_iters| record(&journaled, &events, n_iters)));
    group.finish();

    // The longest single record while a fresh tally grows: each doubling
    // of a map rehashes every key in it under the tally's lock, while
    // every HTTP thread waits.
    let events = growing_events();
    let mut group = criterion.benchmark_group("tally_growth");
    group.sample_size(10);
    group.bench_function("longest_record_to_900k_keys", |bench| {
        bench.iter_custom(|n_iters| (0..n_iters).map(|_| longest_record(&events)).sum())
    });
    group.finish();
}

/// Distinct keys a growing tally is filled with: past the map's doubling
/// at about 460,000 keys, under the default limit of 1,000,000.
const GROWTH_KEYS: u32 = 900_000;

/// Impression pixels for `GROWTH_KEYS` keys: 9,000 affiliates times 100
/// sub1 values, in an order that mixes both.
fn growing_events() -> Vec<Event> {
    (0..GROWTH_KEYS)
        .map(|key_idx| {
            let mut raw = RawEvent {
                affiliate_id: Some(Cow::Owned((key_idx % 9_000 + 1).to_string())),
                campaign_id: Some(Cow::Borrowed("56")),
                ..RawEvent::default()
            };
            raw.subs[0] = Some(Cow::Owned(format!("s{}", key_idx / 9_000)));
            Event::validate(&raw, Some(EventKind::Impression), NOW_MS).unwrap()
        })
        .collect()
}

/// The longest single `record` while an empty tally takes `events`, each
/// a new key.
fn longest_record(events: &[Event]) -> Duration {
    let tally = Tally::new(TallyLimits::default());
    let mut longest = Duration::ZERO;
    for event in events {
        let start = Instant::now();
        tally.record(black_box(event)).unwrap();
        longest = longest.max(start.elapsed());
    }
    longest
}

/// Records `n_iters` events, sealing every `SEAL_EVERY`. Only the records
/// are timed: the seal (and dropping what it took, deleting journal segments
/// and preparing the next) is the uplink's cost, paid once per flush outside
/// the request.
fn record(tally: &Tally, events: &[Event], n_iters: u64) -> Duration {
    let mut elapsed = Duration::ZERO;
    let mut n_left = n_iters;
    let mut event_idx = 0;
    while n_left > 0 {
        let n_run = n_left.min(SEAL_EVERY);
        let start = Instant::now();
        for _ in 0..n_run {
            tally.record(black_box(&events[event_idx])).unwrap();
            event_idx = (event_idx + 1) % events.len();
        }
        elapsed += start.elapsed();
        n_left -= n_run;
        let sealed = tally.seal();
        tally.release_journal(sealed.through.journal);
        tally.prepare_journal();
        black_box(sealed);
    }
    elapsed
}

criterion_group!(benches, tally);
criterion_main!(benches);
