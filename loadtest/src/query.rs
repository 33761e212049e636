//! `query`: sends one ticket to an aggregator's Flight endpoint and prints
//! the record batches as a table.

use anyhow::Context;
use arrow_array::RecordBatch;
use arrow_flight::{FlightClient, Ticket};
use futures::TryStreamExt;

#[derive(Debug, clap::Args)]
pub(crate) struct QueryArgs {
    /// Flight endpoint of the aggregator.
    #[arg(long, env = "EDGETALLY_FLIGHT_URL", default_value = "http://127.0.0.1:8815")]
    flight: String,
    /// The ticket, as JSON.
    #[arg(long, default_value = r#"{"dataset":"rollups","group_by":["affiliate_id","campaign_id"]}"#)]
    ticket: String,
}

pub(crate) async fn run(args: QueryArgs) -> anyhow::Result<()> {
    let batches = fetch(&args.flight, &args.ticket).await?;
    println!("{}", arrow_cast::pretty::pretty_format_batches(&batches)?);
    Ok(())
}

/// Runs one ticket and collects the whole result.
pub(crate) async fn fetch(flight_url: &str, ticket: &str) -> anyhow::Result<Vec<RecordBatch>> {
    let channel = tonic::transport::Channel::from_shared(flight_url.to_owned())
        .context("flight url")?
        .connect()
        .await
        .with_context(|| format!("connecting to {flight_url}"))?;
    let mut client = FlightClient::new(channel);
    let stream = client.do_get(Ticket::new(ticket.to_owned())).await.context("do_get")?;
    stream.try_collect().await.context("reading the flight stream")
}
