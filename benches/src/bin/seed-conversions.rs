//! Writes an aggregator data directory that holds a large synthetic
//! conversions ledger (`edgetally_benches::synthetic_ledger`, priced under
//! `ledger_rules`), sealed in Parquet partitions as a checkpoint leaves
//! them, so `edgetally-aggregator --data-dir DIR` serves it at once.
//!
//! Usage: `seed-conversions --data-dir DIR [--rows N]`; prints the
//! partition files written, one per line. The ledger falls on yesterday
//! (UTC), inside any retention.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use edgetally_benches::{ledger_rules, synthetic_ledger};

#[derive(Debug, Parser)]
struct Args {
    /// An empty or missing directory to write.
    #[arg(long)]
    data_dir: PathBuf,
    /// Conversions in the ledger.
    #[arg(long, default_value_t = 10_000_000)]
    rows: usize,
}

fn main() -> anyhow::Result<()> {
    const DAY_MS: i64 = 86_400_000;
    let args = Args::parse();
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    let yesterday_ms = (now_ms / DAY_MS - 1) * DAY_MS;
    let ledger = synthetic_ledger(args.rows, yesterday_ms);
    let files = edgetally_aggregator::seed_data_dir(&args.data_dir, ledger_rules().into(), 1, ledger)?;
    for file in files {
        println!("{}", file.display());
    }
    Ok(())
}
