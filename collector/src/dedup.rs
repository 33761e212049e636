//! The dedup window: "was this key seen within the last `window`?", asked on
//! the hot path of every event that has a dedup key (conversions by
//! `(campaign_id, order_id)` or `(click_id, kind)`, posted items by
//! `event_id`, clicks and impressions by `(visitor hash, affiliate,
//! campaign)`). The caller encodes its key as bytes; [`Dedup`] hashes them.
//!
//! # Structure
//!
//! Keys are hashed with xxh3-128 under a seed drawn per [`Dedup`], so keys
//! chosen in advance do not pile into one shard or probe run, and a
//! fingerprint collision does not repeat across restarts (xxh3 is no MAC: this
//! hardens, it does not guarantee). Six bits of the hash pick one
//! of 64 shards, each behind its own mutex, so concurrent tasks rarely wait on
//! each other. A shard holds:
//!
//! - a bloom filter with one 64-bit word per generation in each 64-byte block,
//!   so one cache line answers "surely new" for every generation at once;
//! - the exact store: an open-addressed, linearly probed table of `u64`
//!   entries, each a 3-bit generation tag and a 61-bit fingerprint (0 marks an
//!   empty slot). Every "maybe seen" of the bloom is confirmed here, so a bloom
//!   false positive never turns a new key into a duplicate; it is only counted
//!   in [`DedupStats::bloom_false_positive`].
//!
//! # Window
//!
//! Time is cut into generations of `ceil(window / 7)`, numbered from the Unix
//! epoch, and a shard keeps eight of them: the current one and the seven
//! before it. A key is tagged with the shard's current generation at its
//! latest check, and
//! when the current generation moves on, the shard sweeps out the entries of
//! the generations that fell off the end and clears their bloom words. So a
//! key checked at `t` and again at `t'`:
//!
//! - is a [`Verdict::Duplicate`] if `t' - t < window` (it is at most seven
//!   generations old);
//! - is [`Verdict::New`] if `t' - t >= 8 * ceil(window / 7)`, about 8/7 of
//!   the window (3 h 26 min past 24 h by default); in between it may be either.
//!
//! Every check refreshes the key, so "seen" means "last seen". quinn's token
//! log keeps only two generations because each token carries its own issue
//! time; our keys carry none, and two generations of half a window would
//! forget a key after as little as half a window, while two of a whole window
//! would remember up to twice the window and need room for two windows of
//! keys. Eight generations bound the surplus to 1/7 of the window, and the
//! tag still fits in 3 bits of the entry.
//!
//! `now_ms` is passed in; nothing here reads a clock. If it goes backwards, a
//! shard keeps its current generation and records the key there: nothing is
//! rotated or wiped, and the key is remembered at least as long as it would
//! have been. A jump forward expires what is older than the new time, as it
//! should.
//!
//! # Exactness
//!
//! A key is reported [`Verdict::Duplicate`] only when its fingerprint is found
//! in the exact store. The fingerprint is 67 bits: 6 bits choose the shard and
//! 61 are stored (the home slot is derived from the stored bits, so a sweep can
//! move entries). A new key is therefore falsely reported a duplicate only if
//! its 67 bits equal those of one of the `n` keys held, with probability about
//! `n / 2^67` per check: 6.8e-14 with 10 million keys held, or one false
//! duplicate in about 470 years at 1 000 keyed events per second.
//! That is the only false duplicate. A repeat within the window is missed only
//! when the memory bound below evicted its generation early.
//!
//! # Memory
//!
//! Everything is allocated in [`Dedup::new`] and never grows. `keys_max` is the
//! number of distinct keys per window that is kept without loss: a shard holds
//! up to 8/7 of its share (the window plus the current generation), plus four
//! standard deviations for the uneven spread of keys over shards, in a table
//! loaded to at most 7/8, with 16 bloom bits per key in each generation. That
//! is about 13.1 bytes per key: 125.8 MiB for the default 10 million keys,
//! within the 128 MiB budget (checked at compile time below). When a shard's
//! table is full anyway (a burst above `keys_max` per window), the shard evicts
//! its oldest generation early and counts the keys in
//! [`DedupStats::evicted_early`]; if only the current generation is left, that
//! is the one evicted.
//!
//! # Cost
//!
//! Rotating a shard sweeps its table under its lock: about a millisecond per
//! shard at the default size, once per generation (every 3 h 26 min by
//! default). At 10 million keys the bench (`benches/benches/dedup.rs`)
//! measures a duplicate at about 120 ns and a new key at about 250 ns,
//! sweeps included. The bloom filter costs about 19 ns of the duplicate's
//! time (one more cache line) and saves nothing measurable on a new key,
//! which has to be inserted into the table anyway; it is here because
//! DESIGN.md's dedup asks for it.

use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use xxhash_rust::xxh3::xxh3_128_with_seed;

/// Default window: one day. Memory depends only on how many keys arrive
/// within it.
const WINDOW_DEFAULT: Duration = Duration::from_secs(24 * 60 * 60);

/// Default distinct keys per window kept without loss: 10 million, about 115
/// new keys per second all day on one edge, in 125.8 MiB.
const KEYS_MAX_DEFAULT: usize = 10_000_000;

/// The memory budget of the window at [`KEYS_MAX_DEFAULT`].
const MEMORY_BYTES_MAX_DEFAULT: usize = 128 * 1024 * 1024;

/// Shards, each behind its own mutex: 64 keeps the chance that two of a
/// handful of concurrent checks contend low, and costs 64 cache-padded shard
/// headers, 16 KiB.
const N_SHARDS: usize = 64;

/// Generations kept per shard: the current one and seven before it, each
/// `ceil(window / 7)` long. More generations bound the surplus memory more
/// tightly but need more tag bits and bloom words; eight fill a 64-byte bloom
/// block and a 3-bit tag exactly.
const N_GENERATIONS: usize = 8;

/// Bits of an entry that hold the generation tag.
const TAG_BITS: u32 = N_GENERATIONS.trailing_zeros();

/// Bits of an entry that hold the fingerprint.
const FINGERPRINT_BITS: u32 = u64::BITS - TAG_BITS;

const FINGERPRINT_MASK: u64 = (1 << FINGERPRINT_BITS) - 1;

/// Bloom bits per key in a generation's word column, when the generation
/// holds a seventh of the shard's keys (a steady rate). At 16 bits and
/// [`BLOOM_HASHES`] bits per key, a 64-bit word answers "maybe" for a new key
/// about 0.3% of the time, so about 2% over a full window's seven generations
/// (1.97% measured at 10 million keys per window). A burst that puts all keys
/// in one generation leaves it about 2.3 bits per key (15% false "maybe" over
/// 10 million keys at one time). A false "maybe" costs little: the probe it
/// triggers is the one the insert needs anyway. It costs 2.3 bytes per key.
const BLOOM_BITS_PER_KEY: usize = 16;

/// Bits set per key in its bloom word. Five is optimal for 16 bits per key in
/// 64-bit blocks.
const BLOOM_HASHES: u32 = 5;

/// Bits of the low hash half used for bloom bit positions, after the six
/// shard bits. The block index comes from the top bits of the same half.
const BLOOM_BIT_INDEX_BITS: u32 = 6;

/// An empty slot of the exact store. Real entries are never 0 because their
/// fingerprint is never 0.
const EMPTY: u64 = 0;

const _: () = assert!(N_GENERATIONS.is_power_of_two() && N_GENERATIONS >= 2);
const _: () = assert!(N_SHARDS.is_power_of_two() && N_SHARDS <= 64);
// The shard bits and the bloom bit indexes come from the low 64 bits of the
// hash and must not overlap its top bits, which pick the bloom block.
const _: () = assert!(N_SHARDS.trailing_zeros() + BLOOM_HASHES * BLOOM_BIT_INDEX_BITS <= 40);
const _: () = assert!(size_of::<BloomBlock>() == 64);
const _: () = assert!(Layout::new(KEYS_MAX_DEFAULT).memory_bytes() <= MEMORY_BYTES_MAX_DEFAULT);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupConfig {
    /// A repeat within this long is a duplicate. Keys are remembered up to
    /// about 8/7 of it (see the module docs).
    pub window: Duration,
    /// Distinct keys per window kept without loss. Memory is allocated up
    /// front, about 13.1 bytes per key.
    pub keys_max: usize,
}

impl Default for DedupConfig {
    fn default() -> DedupConfig {
        DedupConfig { window: WINDOW_DEFAULT, keys_max: KEYS_MAX_DEFAULT }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    New,
    Duplicate,
}

/// What [`Dedup::stats`] reports. `keys` is a gauge; the others count from
/// [`Dedup::new`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DedupStats {
    /// Keys held now, including generations that a shard not checked since
    /// has yet to rotate out.
    pub keys: u64,
    /// Checks made.
    pub checks: u64,
    /// Checks for which the bloom filter said "maybe seen".
    pub bloom_maybe: u64,
    /// Of those, checks whose key the exact store did not hold.
    pub bloom_false_positive: u64,
    /// Checks answered [`Verdict::Duplicate`].
    pub duplicates: u64,
    /// Keys forgotten before their time because a shard was full.
    pub evicted_early: u64,
}

/// The dedup window; share it behind an `Arc`.
pub struct Dedup {
    config: DedupConfig,
    generation_ms: i64,
    seed: u64,
    memory_bytes: usize,
    shards: Box<[Shard]>,
}

/// Padded to its own cache lines so that tasks locking neighbouring shards do
/// not slow each other down.
#[repr(align(128))]
struct Shard {
    window: Mutex<ShardWindow>,
}

struct ShardWindow {
    /// The newest generation this shard has seen; `None` before its first
    /// check.
    generation: Option<i64>,
    table: Table,
    bloom: Box<[BloomBlock]>,
    n_keys_by_tag: [usize; N_GENERATIONS],
    keys_max: usize,
    counters: Counters,
}

/// The exact store of one shard, linearly probed. Invariant: it always has an
/// empty slot, so every probe ends.
struct Table {
    slots: Box<[u64]>,
}

/// One bloom word per generation, indexed by tag.
#[derive(Clone, Copy, Default)]
#[repr(align(64))]
struct BloomBlock([u64; N_GENERATIONS]);

#[derive(Default)]
struct Counters {
    checks: u64,
    bloom_maybe: u64,
    bloom_false_positive: u64,
    duplicates: u64,
    evicted_early: u64,
}

/// The parts of a key's hash.
struct KeyHash {
    shard_idx: usize,
    /// 61 bits, never 0; also picks the home slot.
    fingerprint: u64,
    /// The low hash half: shard bits, bloom bit indexes and bloom block.
    bloom_bits: u64,
}

/// The sizes of one shard for a `keys_max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    keys_max_per_shard: usize,
    n_slots: usize,
    n_bloom_blocks: usize,
}

// === impl Dedup ===

impl Dedup {
    /// Allocates the whole window up front: [`Dedup::memory_bytes`], about
    /// 13.1 bytes per key of `keys_max`.
    pub fn new(config: DedupConfig) -> Dedup {
        Dedup::with_seed(config, std::collections::hash_map::RandomState::new().hash_one(N_SHARDS))
    }

    /// Like [`Dedup::new`] with a fixed hash seed, so tests can replay.
    fn with_seed(config: DedupConfig, seed: u64) -> Dedup {
        let layout = Layout::new(config.keys_max);
        // A fraction of a millisecond counts as a whole one, so that
        // `t' - t < window` in whole milliseconds stays inside the window.
        let window_ms = config.window.as_nanos().div_ceil(1_000_000);
        let generation_ms = window_ms.div_ceil(N_GENERATIONS as u128 - 1).clamp(1, i64::MAX as u128) as i64;
        let shards: Box<[Shard]> = (0..N_SHARDS)
            .map(|_| Shard {
                window: Mutex::new(ShardWindow {
                    generation: None,
                    table: Table { slots: vec![EMPTY; layout.n_slots].into_boxed_slice() },
                    bloom: vec![BloomBlock::default(); layout.n_bloom_blocks].into_boxed_slice(),
                    n_keys_by_tag: [0; N_GENERATIONS],
                    keys_max: layout.keys_max_per_shard,
                    counters: Counters::default(),
                }),
            })
            .collect();
        let memory_bytes = size_of::<Dedup>()
            + shards
                .iter()
                .map(|shard| {
                    let window = lock(shard);
                    size_of::<Shard>()
                        + size_of_val::<[u64]>(&window.table.slots)
                        + size_of_val::<[BloomBlock]>(&window.bloom)
                })
                .sum::<usize>();
        Dedup { config, generation_ms, seed, memory_bytes, shards }
    }

    /// Records `key` seen at `now_ms` (Unix milliseconds) and says whether it
    /// was already seen within the window.
    pub fn check(&self, key: &[u8], now_ms: i64) -> Verdict {
        let hash = KeyHash::new(self.seed, key);
        let now_generation = now_ms.div_euclid(self.generation_ms);
        lock(&self.shards[hash.shard_idx]).check(&hash, now_generation)
    }

    /// Bytes allocated for the window: every table and bloom filter, at full
    /// capacity, which is allocated up front.
    pub fn memory_bytes(&self) -> usize {
        self.memory_bytes
    }

    pub fn stats(&self) -> DedupStats {
        let mut stats = DedupStats::default();
        for shard in &self.shards {
            let window = lock(shard);
            stats.keys += window.n_keys() as u64;
            stats.checks += window.counters.checks;
            stats.bloom_maybe += window.counters.bloom_maybe;
            stats.bloom_false_positive += window.counters.bloom_false_positive;
            stats.duplicates += window.counters.duplicates;
            stats.evicted_early += window.counters.evicted_early;
        }
        stats
    }
}

impl std::fmt::Debug for Dedup {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Dedup")
            .field("config", &self.config)
            .field("generation_ms", &self.generation_ms)
            .field("memory_bytes", &self.memory_bytes)
            .finish_non_exhaustive()
    }
}

fn lock(shard: &Shard) -> MutexGuard<'_, ShardWindow> {
    // No code path panics while holding this lock. If one did, a sweep might
    // have been cut short: keys would be forgotten, but nothing would be
    // reported a duplicate that was not seen, so the window stays usable.
    shard.window.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// === impl ShardWindow ===

impl ShardWindow {
    fn check(&mut self, hash: &KeyHash, now_generation: i64) -> Verdict {
        let tag = self.advance(now_generation);
        self.counters.checks += 1;
        let block_idx = fastrange(hash.bloom_bits, self.bloom.len());
        let mask = bloom_mask(hash.bloom_bits);
        let maybe_seen = self.bloom[block_idx].0.iter().any(|word| word & mask == mask);
        let vacant_idx = if maybe_seen {
            self.counters.bloom_maybe += 1;
            match self.table.find(hash.fingerprint) {
                Ok(slot_idx) => {
                    self.counters.duplicates += 1;
                    let tag_seen = entry_tag(self.table.slots[slot_idx]);
                    if tag_seen != tag {
                        self.table.slots[slot_idx] = entry(tag, hash.fingerprint);
                        self.n_keys_by_tag[tag_seen] -= 1;
                        self.n_keys_by_tag[tag] += 1;
                        self.bloom[block_idx].0[tag] |= mask;
                    }
                    return Verdict::Duplicate;
                }
                Err(vacant_idx) => {
                    self.counters.bloom_false_positive += 1;
                    Some(vacant_idx)
                }
            }
        } else {
            None
        };
        let vacant_idx = if self.n_keys() >= self.keys_max {
            // Eviction moves entries, so the probe starts over.
            self.evict_oldest(tag);
            self.table.vacant(hash.fingerprint)
        } else {
            vacant_idx.unwrap_or_else(|| self.table.vacant(hash.fingerprint))
        };
        self.table.slots[vacant_idx] = entry(tag, hash.fingerprint);
        self.n_keys_by_tag[tag] += 1;
        self.bloom[block_idx].0[tag] |= mask;
        Verdict::New
    }

    /// Moves the shard to `now_generation` if that is newer, dropping the
    /// generations that fall off the end, and returns the current tag.
    fn advance(&mut self, now_generation: i64) -> usize {
        let Some(generation) = self.generation else {
            self.generation = Some(now_generation);
            return generation_tag(now_generation);
        };
        if now_generation <= generation {
            // The same generation, or time went backwards: record into the
            // newest generation, which remembers the key at least as long.
            return generation_tag(generation);
        }
        let n_steps = now_generation.abs_diff(generation);
        if n_steps >= N_GENERATIONS as u64 {
            if self.n_keys() > 0 {
                self.table.slots.fill(EMPTY);
            }
            self.bloom.fill(BloomBlock::default());
            self.n_keys_by_tag = [0; N_GENERATIONS];
        } else {
            // Generation `g + step` reuses the tag of `g + step - 8`, which
            // has just expired.
            let tag = generation_tag(generation);
            let expired_tags =
                (1..=n_steps as usize).fold(0u32, |tags, step| tags | 1 << ((tag + step) % N_GENERATIONS));
            self.remove(expired_tags);
        }
        self.generation = Some(now_generation);
        generation_tag(now_generation)
    }

    /// Drops the oldest generation that holds keys, to make room.
    fn evict_oldest(&mut self, tag: usize) {
        // The oldest generation has the tag after the current one.
        let oldest_tag = (1..=N_GENERATIONS)
            .map(|age| (tag + age) % N_GENERATIONS)
            .find(|&oldest_tag| self.n_keys_by_tag[oldest_tag] > 0)
            .unwrap_or(tag);
        let n_evicted = self.remove(1 << oldest_tag);
        self.counters.evicted_early += n_evicted as u64;
    }

    /// Removes the entries whose tag is in the bit set `tags`, clears their
    /// bloom words and returns how many entries went.
    fn remove(&mut self, tags: u32) -> usize {
        let n_removed: usize =
            (0..N_GENERATIONS).filter(|tag| tags & 1 << tag != 0).map(|tag| self.n_keys_by_tag[tag]).sum();
        if n_removed > 0 {
            self.table.retain(|entry| tags & 1 << entry_tag(entry) == 0);
        }
        for tag in (0..N_GENERATIONS).filter(|tag| tags & 1 << tag != 0) {
            self.n_keys_by_tag[tag] = 0;
            for block in self.bloom.iter_mut() {
                block.0[tag] = 0;
            }
        }
        n_removed
    }

    fn n_keys(&self) -> usize {
        self.n_keys_by_tag.iter().sum()
    }
}

// === impl Table ===

impl Table {
    /// The slot holding `fingerprint`, or the empty slot where its probe
    /// ended.
    fn find(&self, fingerprint: u64) -> Result<usize, usize> {
        let mut slot_idx = home_slot(fingerprint, self.slots.len());
        loop {
            let slot = self.slots[slot_idx];
            if slot == EMPTY {
                return Err(slot_idx);
            }
            if slot & FINGERPRINT_MASK == fingerprint {
                return Ok(slot_idx);
            }
            slot_idx = self.next(slot_idx);
        }
    }

    /// The first empty slot of `fingerprint`'s probe sequence.
    fn vacant(&self, fingerprint: u64) -> usize {
        let mut slot_idx = home_slot(fingerprint, self.slots.len());
        while self.slots[slot_idx] != EMPTY {
            slot_idx = self.next(slot_idx);
        }
        slot_idx
    }

    /// Keeps the entries for which `keep` holds, in one pass. The pass
    /// starts just after an empty slot, so no probe sequence wraps into it
    /// from behind, and walks each run of full slots in order. Once a slot of
    /// the run has been emptied, every later entry of the run is taken out
    /// and put back at the first empty slot of its probe: entries only move
    /// back towards their home, over entries already placed.
    fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        // The table always has an empty slot; if it somehow had none, leaving
        // it untouched is safe, only not shrunk.
        let Some(empty_idx) = self.slots.iter().position(|&slot| slot == EMPTY) else { return };
        let mut run_has_gap = false;
        for slot_idx in (empty_idx + 1..self.slots.len()).chain(0..empty_idx) {
            // Entries only move back, so this slot is as it was before the pass.
            let slot = self.slots[slot_idx];
            if slot == EMPTY {
                run_has_gap = false;
            } else if !keep(slot) {
                self.slots[slot_idx] = EMPTY;
                run_has_gap = true;
            } else if run_has_gap {
                self.slots[slot_idx] = EMPTY;
                let vacant_idx = self.vacant(slot & FINGERPRINT_MASK);
                self.slots[vacant_idx] = slot;
            }
        }
    }

    fn next(&self, slot_idx: usize) -> usize {
        if slot_idx + 1 == self.slots.len() { 0 } else { slot_idx + 1 }
    }
}

// === impl KeyHash ===

impl KeyHash {
    fn new(seed: u64, key: &[u8]) -> KeyHash {
        let hash = xxh3_128_with_seed(key, seed);
        let low = hash as u64;
        let high = (hash >> 64) as u64;
        // A zero fingerprint would read as an empty slot; mapping it to 1
        // makes one value in 2^61 twice as likely, which changes nothing.
        let fingerprint = (high >> TAG_BITS).max(1);
        KeyHash { shard_idx: (low % N_SHARDS as u64) as usize, fingerprint, bloom_bits: low }
    }
}

// === impl Layout ===

impl Layout {
    const fn new(keys_max: usize) -> Layout {
        // A steady `keys_max` per window fills eight generations of a seventh
        // of the window each.
        let keys_held_max = keys_max.saturating_add(keys_max / (N_GENERATIONS - 1));
        let keys_mean = keys_held_max.div_ceil(N_SHARDS);
        // Keys spread over shards binomially; four standard deviations
        // (1% at the default) keep every shard under its limit until the
        // total is.
        let keys_max_per_shard = keys_mean.saturating_add(4 * keys_mean.isqrt()).saturating_add(8);
        // A load of at most 7/8 keeps probes short; the extra slot keeps one
        // empty slot even at the limit.
        let n_slots = keys_max_per_shard.saturating_add(keys_max_per_shard / 7).saturating_add(1);
        let bloom_bits = keys_max_per_shard.saturating_mul(BLOOM_BITS_PER_KEY) / (N_GENERATIONS - 1);
        let n_bloom_blocks = bloom_bits.div_ceil(u64::BITS as usize);
        let n_bloom_blocks = if n_bloom_blocks == 0 { 1 } else { n_bloom_blocks };
        Layout { keys_max_per_shard, n_slots, n_bloom_blocks }
    }

    /// What [`Dedup::memory_bytes`] reports for this layout.
    const fn memory_bytes(&self) -> usize {
        let shard_bytes =
            size_of::<Shard>() + self.n_slots * size_of::<u64>() + self.n_bloom_blocks * size_of::<BloomBlock>();
        size_of::<Dedup>() + N_SHARDS * shard_bytes
    }
}

fn entry(tag: usize, fingerprint: u64) -> u64 {
    (tag as u64) << FINGERPRINT_BITS | fingerprint
}

fn entry_tag(entry: u64) -> usize {
    (entry >> FINGERPRINT_BITS) as usize
}

fn generation_tag(generation: i64) -> usize {
    generation.rem_euclid(N_GENERATIONS as i64) as usize
}

fn home_slot(fingerprint: u64, n_slots: usize) -> usize {
    fastrange(fingerprint << TAG_BITS, n_slots)
}

/// Maps `hash` onto `0..n` by its top bits, without a division.
fn fastrange(hash: u64, n: usize) -> usize {
    ((u128::from(hash) * n as u128) >> 64) as usize
}

fn bloom_mask(bloom_bits: u64) -> u64 {
    let shard_bits = N_SHARDS.trailing_zeros();
    (0..BLOOM_HASHES).fold(0, |mask, hash_idx| {
        let bit_idx = (bloom_bits >> (shard_bits + hash_idx * BLOOM_BIT_INDEX_BITS)) & 63;
        mask | 1 << bit_idx
    })
}

#[cfg(test)]
mod tests;
