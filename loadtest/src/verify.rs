//! `verify`: reads the aggregator back over Arrow Flight and compares counts
//! and money per affiliate and campaign with a ledger, exactly.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, UInt32Type, UInt64Type};
use arrow_array::{Array, RecordBatch};
use edgetally_protocol::Flag;
use serde_json::json;

use crate::ledger::{Counts, Ledger};
use crate::query::{ENV_FLIGHT_TOKEN, fetch};

const MINUTE_MS: i64 = 60_000;

#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    /// Ledger written by `run`; repeat it to check the sum of several runs.
    #[arg(long, default_value = "edgetally-ledger.json")]
    ledger: Vec<PathBuf>,
    /// Flight endpoint of the aggregator.
    #[arg(long, env = "EDGETALLY_FLIGHT_URL", default_value = "http://127.0.0.1:8815")]
    flight: String,
    /// Bearer token for the aggregator's Flight port (an admin's, to read
    /// every affiliate).
    #[arg(long, env = ENV_FLIGHT_TOKEN, hide_env_values = true)]
    flight_token: Option<String>,
    /// Keep re-reading for up to this many seconds while the aggregator
    /// catches up, before declaring a mismatch. The default covers the
    /// collectors' default rollup interval (a minute), after which the
    /// last traffic counters ship.
    #[arg(long, default_value_t = 75)]
    wait_secs: u64,
}

/// Exits non-zero (through the error) when the aggregator disagrees.
pub(crate) async fn run(args: VerifyArgs) -> anyhow::Result<()> {
    let mut expected = Ledger::default();
    for path in &args.ledger {
        expected.merge(Ledger::read(path)?);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.wait_secs);
    loop {
        let actual = read_back(&args.flight, args.flight_token.as_deref(), &expected).await?;
        let differences = expected.diff(&actual);
        if differences.is_empty() {
            println!(
                "verify: ok: {} events over {} affiliate/campaign pairs and {} money totals match exactly",
                expected.n_accepted(),
                expected.counts.len(),
                expected.money.len()
            );
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            println!("verify: {} differences between the ledger and the aggregator:", differences.len());
            for line in differences.iter().take(50) {
                println!("  {line}");
            }
            if differences.len() > 50 {
                println!("  ... and {} more", differences.len() - 50);
            }
            anyhow::bail!("the aggregator disagrees with the ledger in {} places", differences.len());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What the aggregator holds for the ledger's time window, as a ledger.
async fn read_back(flight_url: &str, token: Option<&str>, expected: &Ledger) -> anyhow::Result<Ledger> {
    let from = expected.first_sent_ms.div_euclid(MINUTE_MS) * MINUTE_MS;
    let to = expected.last_answer_ms.div_euclid(MINUTE_MS) * MINUTE_MS + MINUTE_MS;
    let mut actual =
        Ledger { first_sent_ms: expected.first_sent_ms, last_answer_ms: expected.last_answer_ms, ..Ledger::default() };
    let ticket = json!({"dataset": "rollups", "from": from, "to": to, "group_by": ["affiliate_id", "campaign_id"]});
    for batch in fetch(flight_url, token, &ticket.to_string()).await? {
        let affiliate_id = column(&batch, "affiliate_id")?.as_primitive::<UInt32Type>().clone();
        let campaign_id = column(&batch, "campaign_id")?.as_primitive::<UInt32Type>().clone();
        let counter =
            |name: &str| -> anyhow::Result<_> { Ok(column(&batch, name)?.as_primitive::<UInt64Type>().clone()) };
        let (impressions, clicks, leads, sales, duplicates) =
            (counter("impressions")?, counter("clicks")?, counter("leads")?, counter("sales")?, counter("duplicates")?);
        let flagged = Flag::COLUMNS.into_iter().map(counter).collect::<anyhow::Result<Vec<_>>>()?;
        for row_idx in 0..batch.num_rows() {
            let counts = Counts {
                impressions: impressions.value(row_idx),
                clicks: clicks.value(row_idx),
                leads: leads.value(row_idx),
                sales: sales.value(row_idx),
                duplicates: duplicates.value(row_idx),
                flagged: flagged.iter().map(|counter| counter.value(row_idx)).sum(),
            };
            actual.counts.entry((affiliate_id.value(row_idx), campaign_id.value(row_idx))).or_default().add(&counts);
        }
    }
    let ticket = json!({"dataset": "conversions", "from": from, "to": to});
    for batch in fetch(flight_url, token, &ticket.to_string()).await? {
        let affiliate_id = column(&batch, "affiliate_id")?.as_primitive::<UInt32Type>().clone();
        let campaign_id = column(&batch, "campaign_id")?.as_primitive::<UInt32Type>().clone();
        let amount = column(&batch, "amount_minor")?.as_primitive::<Int64Type>().clone();
        let currency = column(&batch, "currency")?.as_string::<i32>().clone();
        for row_idx in 0..batch.num_rows() {
            if amount.is_null(row_idx) {
                continue;
            }
            let key = (affiliate_id.value(row_idx), campaign_id.value(row_idx), currency.value(row_idx).to_owned());
            *actual.money.entry(key).or_default() += amount.value(row_idx);
        }
    }
    Ok(actual)
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> anyhow::Result<&'a dyn Array> {
    batch
        .column_by_name(name)
        .map(|column| column.as_ref())
        .with_context(|| format!("column {name} missing from the answer"))
}
