//! Criterion benchmarks of EdgeTally's hot paths, one file per subsystem in
//! `benches/`: `frame` (sealing a batch into compressed Arrow IPC and a
//! frame, and decoding it), `ingest` (parsing and validating pixels and
//! event bodies), `dedup` (the dedup window), `click_id` (minting and
//! verifying signed click IDs), `tally` (counting a validated event),
//! `spool` (appending a seal, standard I/O against io_uring) and `flight`
//! (reading a 10-million-row ledger back over Arrow Flight and Flight SQL).
//! Run with `cargo bench -p edgetally-benches`.
//!
//! The crate also builds `bare-gif` (`src/bin/bare-gif.rs`), a hyper server
//! that only answers the pixel GIF: `benches/compare.sh` measures the
//! release collector against it and against nginx's `empty_gif`.
//!
//! `seed-conversions` (`src/bin/seed-conversions.rs`) writes an aggregator
//! data directory holding a large synthetic ledger, [`synthetic_ledger`],
//! which `benches/flight.rs` and `benches/doget.sh` read back over Arrow
//! Flight and Flight SQL.

use edgetally_protocol::money::{Currency, Money};
use edgetally_protocol::{ConversionRow, EventKind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

/// Affiliates of the synthetic ledger, Zipf-distributed as in the load
/// generator's realistic mix.
pub const LEDGER_AFFILIATES: u32 = 10_000;

/// Campaigns of the synthetic ledger: odd ones pay CPA 2.00 USD, even ones
/// an 8 % revenue share. Affiliates 1..=100 have affiliate 10,001 as their
/// parent, which earns 5 % on top of their commissions.
pub const LEDGER_CAMPAIGNS: u32 = 50;

/// The campaigns file the synthetic ledger is priced under.
pub fn ledger_rules() -> String {
    let campaigns: Vec<String> = (1..=LEDGER_CAMPAIGNS)
        .map(|id| {
            let payout = if id % 2 == 1 {
                r#"{"type": "cpa", "amount": "2.00", "currency": "USD"}"#
            } else {
                r#"{"type": "revshare", "percent": "8"}"#
            };
            format!(r#"{{"id": {id}, "landing_url": "https://shop.example/{id}?c={{click_id}}", "payout": {payout}}}"#)
        })
        .collect();
    let parent = LEDGER_AFFILIATES + 1;
    let mut affiliates: Vec<String> = (1..=100).map(|id| format!(r#"{{"id": {id}, "parent_id": {parent}}}"#)).collect();
    affiliates.push(format!(r#"{{"id": {parent}, "override_percent": "5"}}"#));
    format!(r#"{{"campaigns": [{}], "affiliates": [{}]}}"#, campaigns.join(", "), affiliates.join(", "))
}

/// `n_rows` conversions spread evenly over the UTC day that starts at
/// `day_start_ms`, the same for the same arguments: 90 % sales of 5.00 to
/// 500.00 (70 % USD, 20 % EUR, 10 % JPY) and 10 % leads without an amount,
/// each with a unique order ID, a 32-character click ID and one of 100
/// sub1 values.
pub fn synthetic_ledger(n_rows: usize, day_start_ms: i64) -> Vec<ConversionRow> {
    const DAY_MS: i64 = 86_400_000;
    const CLICK_ID_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let affiliates = Zipf::new(f64::from(LEDGER_AFFILIATES), 1.0).expect("a valid Zipf");
    let (usd, eur, jpy) = (Currency::parse("USD"), Currency::parse("EUR"), Currency::parse("JPY"));
    let (usd, eur, jpy) = (usd.expect("USD"), eur.expect("EUR"), jpy.expect("JPY"));
    let step_ms = DAY_MS / n_rows.max(1) as i64;
    (0..n_rows)
        .map(|i| {
            let kind = if rng.random_ratio(1, 10) { EventKind::Lead } else { EventKind::Sale };
            let money = (kind == EventKind::Sale).then(|| {
                let cents = rng.random_range(500..=50_000_i64);
                match rng.random_range(0..10) {
                    0..7 => Money { minor_units: cents, currency: usd },
                    7..9 => Money { minor_units: cents, currency: eur },
                    // JPY has no minor unit: about 100 yen a dollar.
                    _ => Money { minor_units: cents, currency: jpy },
                }
            });
            let click_id: String =
                (0..32).map(|_| char::from(CLICK_ID_CHARS[rng.random_range(0..CLICK_ID_CHARS.len())])).collect();
            ConversionRow {
                time_ms: day_start_ms + step_ms.max(1) * i as i64 % DAY_MS,
                kind,
                affiliate_id: affiliates.sample(&mut rng) as u32,
                campaign_id: rng.random_range(1..=LEDGER_CAMPAIGNS),
                sub1: format!("s{}", rng.random_range(0..100)),
                money,
                order_id: Some(format!("ord-{i:010}")),
                click_id: Some(click_id),
                event_id: None,
                flag: None,
            }
        })
        .collect()
}
