//! `query`: sends one ticket to an aggregator's Flight endpoint and prints
//! the record batches as a table. Also the Flight connection every command
//! shares, with its bearer token.

use anyhow::Context;
use arrow_array::RecordBatch;
use arrow_flight::{FlightClient, Ticket};
use futures::TryStreamExt;

/// The bearer token for an aggregator started with `--flight-tokens`.
pub(crate) const ENV_FLIGHT_TOKEN: &str = "EDGETALLY_FLIGHT_TOKEN";

#[derive(Debug, clap::Args)]
pub(crate) struct QueryArgs {
    /// Flight endpoint of the aggregator.
    #[arg(long, env = "EDGETALLY_FLIGHT_URL", default_value = "http://127.0.0.1:8815")]
    flight: String,
    /// Bearer token for the aggregator's Flight port, sent as
    /// `authorization: Bearer <token>` (needed when it runs with
    /// `--flight-tokens`).
    #[arg(long, env = ENV_FLIGHT_TOKEN, hide_env_values = true)]
    flight_token: Option<String>,
    /// The ticket, as JSON.
    #[arg(long, default_value = r#"{"dataset":"rollups","group_by":["affiliate_id","campaign_id"]}"#)]
    ticket: String,
}

pub(crate) async fn run(args: QueryArgs) -> anyhow::Result<()> {
    let batches = fetch(&args.flight, args.flight_token.as_deref(), &args.ticket).await?;
    println!("{}", arrow_cast::pretty::pretty_format_batches(&batches)?);
    Ok(())
}

/// Runs one ticket and collects the whole result.
pub(crate) async fn fetch(flight_url: &str, token: Option<&str>, ticket: &str) -> anyhow::Result<Vec<RecordBatch>> {
    let mut client = connect(flight_url, token).await?;
    let stream = client.do_get(Ticket::new(ticket.to_owned())).await.context("do_get")?;
    stream.try_collect().await.context("reading the flight stream")
}

/// Connects to `flight_url`; with a `token`, every call carries
/// `authorization: Bearer <token>`.
pub(crate) async fn connect(flight_url: &str, token: Option<&str>) -> anyhow::Result<FlightClient> {
    let channel = tonic::transport::Channel::from_shared(flight_url.to_owned())
        .context("flight url")?
        .connect()
        .await
        .with_context(|| format!("connecting to {flight_url}"))?;
    let mut client = FlightClient::new(channel);
    if let Some(token) = token {
        // The error would quote the header value, which holds the token.
        client
            .add_header("authorization", &format!("Bearer {token}"))
            .map_err(|_| anyhow::anyhow!("the flight token is not a valid header value"))?;
    }
    Ok(client)
}
