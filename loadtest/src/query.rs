//! `query`: sends one ticket to an aggregator's Flight endpoint and prints
//! the record batches as a table. Also the Flight connection every command
//! shares, with its bearer token.

use std::sync::Arc;

use anyhow::Context;
use arrow_array::builder::StringBuilder;
use arrow_array::cast::AsArray;
use arrow_array::timezone::Tz;
use arrow_array::types::TimestampMillisecondType;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_flight::{FlightClient, Ticket};
use futures::TryStreamExt;
use jiff::Timestamp;
use jiff::tz::TimeZone;

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
    let batches = batches.iter().map(printable).collect::<anyhow::Result<Vec<_>>>()?;
    println!("{}", arrow_cast::pretty::pretty_format_batches(&batches)?);
    Ok(())
}

/// `batch` with its times in named zones (`"tz":"America/New_York"`) as
/// local RFC 3339 text. Arrow prints those only with the chrono-tz
/// database, which the workspace does not link: jiff's bundled one is
/// the only zone database in the build.
fn printable(batch: &RecordBatch) -> anyhow::Result<RecordBatch> {
    let schema = batch.schema();
    let mut columns: Vec<(String, ArrayRef)> = Vec::with_capacity(batch.num_columns());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        let times = column.as_primitive_opt::<TimestampMillisecondType>();
        let named_zone = times.and_then(|times| times.timezone()).filter(|zone| zone.parse::<Tz>().is_err());
        let column = match (times, named_zone) {
            (Some(times), Some(zone)) => {
                let zone = TimeZone::get(zone).with_context(|| format!("time zone of column {}", field.name()))?;
                let mut local = StringBuilder::with_capacity(times.len(), times.len() * 25);
                for ms in times {
                    let Some(ms) = ms else {
                        local.append_null();
                        continue;
                    };
                    let time = Timestamp::from_millisecond(ms)?.to_zoned_datetime(zone.clone());
                    local.append_value(time.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string());
                }
                Arc::new(local.finish())
            }
            _ => column.clone(),
        };
        columns.push((field.name().clone(), column));
    }
    Ok(RecordBatch::try_from_iter(columns)?)
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
