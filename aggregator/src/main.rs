//! The `edgetally-aggregator` binary: parses flags, starts an
//! [`Aggregator`], writes where it listens to `<data_dir>/aggregator.json`
//! and runs until SIGINT or SIGTERM.

use std::fs;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use edgetally_aggregator::{
    Aggregator, Config, EdgeTokens, FlightAuth, RETENTION_DAYS_DEFAULT, SNAPSHOT_WAL_BYTES_DEFAULT, TlsFiles,
};
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;
use tracing_subscriber::EnvFilter;

const ENV_DATA_DIR: &str = "EDGETALLY_AGGREGATOR_DATA_DIR";
const ENV_QUIC_LISTEN: &str = "EDGETALLY_AGGREGATOR_QUIC_LISTEN";
const ENV_FLIGHT_LISTEN: &str = "EDGETALLY_AGGREGATOR_FLIGHT_LISTEN";
const ENV_FLIGHT_SQL_LISTEN: &str = "EDGETALLY_AGGREGATOR_FLIGHT_SQL_LISTEN";
const ENV_HTTP_LISTEN: &str = "EDGETALLY_AGGREGATOR_HTTP_LISTEN";
const ENV_TLS_CERT: &str = "EDGETALLY_AGGREGATOR_TLS_CERT";
const ENV_TLS_KEY: &str = "EDGETALLY_AGGREGATOR_TLS_KEY";
const ENV_TLS_NAME: &str = "EDGETALLY_AGGREGATOR_TLS_NAME";
const ENV_WAL_FSYNC: &str = "EDGETALLY_AGGREGATOR_WAL_FSYNC";
const ENV_SNAPSHOT_WAL_BYTES: &str = "EDGETALLY_AGGREGATOR_SNAPSHOT_WAL_BYTES";
const ENV_RETENTION_DAYS: &str = "EDGETALLY_AGGREGATOR_RETENTION_DAYS";
const ENV_FLIGHT_TOKENS: &str = "EDGETALLY_FLIGHT_TOKENS";
const ENV_FLIGHT_TLS_CERT: &str = "EDGETALLY_AGGREGATOR_FLIGHT_TLS_CERT";
const ENV_FLIGHT_TLS_KEY: &str = "EDGETALLY_AGGREGATOR_FLIGHT_TLS_KEY";

/// Where the bound addresses are written, in the data directory. Tests and
/// the local stack bind port 0 and read the real ports back from it.
const ADDRESS_FILE_NAME: &str = "aggregator.json";

/// EdgeTally aggregator: receives edge batches over QUIC and serves rollups
/// over Arrow Flight.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Directory for the generated QUIC certificate, aggregator.json, the
    /// write-ahead log (wal/), the sealed Parquet partitions
    /// (parquet/<dataset>/day=YYYY-MM-DD/part-<generation>.parquet) and
    /// snapshot.bin, the manifest that lists them.
    #[arg(long, env = ENV_DATA_DIR)]
    data_dir: PathBuf,
    /// UDP address for QUIC from collectors.
    #[arg(long, env = ENV_QUIC_LISTEN, default_value = "127.0.0.1:7443")]
    quic_listen: SocketAddr,
    /// TCP address for Arrow Flight.
    #[arg(long, env = ENV_FLIGHT_LISTEN, default_value = "127.0.0.1:8815")]
    flight_listen: SocketAddr,
    /// TCP address for Flight SQL: read-only SQL over rollups, conversions
    /// and quarantine, with the same tokens as Flight.
    #[arg(long, env = ENV_FLIGHT_SQL_LISTEN, default_value = "127.0.0.1:8816")]
    flight_sql_listen: SocketAddr,
    /// TCP address for /metrics and /healthz.
    #[arg(long, env = ENV_HTTP_LISTEN, default_value = "127.0.0.1:8090")]
    http_listen: SocketAddr,
    /// PEM certificate chain for QUIC (with --tls-key); default: a
    /// self-signed one generated in the data directory.
    #[arg(long, env = ENV_TLS_CERT, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = ENV_TLS_KEY, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Extra DNS name or IP address for the generated certificate;
    /// repeatable (comma-separated in the environment).
    #[arg(long = "tls-name", env = ENV_TLS_NAME, value_delimiter = ',')]
    tls_names: Vec<String>,
    /// fsync the write-ahead log before acknowledging a batch. false only
    /// writes to the kernel: that survives a crash of the process, not a
    /// power loss.
    #[arg(long, env = ENV_WAL_FSYNC, default_value_t = true, action = clap::ArgAction::Set)]
    wal_fsync: bool,
    /// Snapshot the store and truncate the write-ahead log once its live
    /// segments hold more than this many bytes.
    #[arg(long, env = ENV_SNAPSHOT_WAL_BYTES, default_value_t = SNAPSHOT_WAL_BYTES_DEFAULT)]
    snapshot_wal_bytes: u64,
    /// UTC days kept before today: each checkpoint drops older days from
    /// memory and disk (400: a little over 13 months). 0 keeps every day.
    #[arg(long, env = ENV_RETENTION_DAYS, default_value_t = RETENTION_DAYS_DEFAULT)]
    retention_days: u32,
    /// JSON file of the edges allowed to ship and their tokens:
    /// `{"edges": [{"edge_id": 1, "token": "…"}]}`. Without it every edge
    /// that trusts the QUIC certificate is accepted.
    #[arg(long, env = "EDGETALLY_AGGREGATOR_EDGE_TOKENS")]
    edge_tokens: Option<PathBuf>,
    /// Campaign snapshot served to every edge (JSON:
    /// `{"campaigns": [{"id": 3, "landing_url": "https://…{click_id}",
    /// "attribution_window_secs": 2592000}]}`), checked for changes every
    /// second. Without it edges use their own `--campaigns`.
    #[arg(long, env = "EDGETALLY_AGGREGATOR_CAMPAIGNS")]
    campaigns: Option<PathBuf>,
    /// JSON file of who may call Arrow Flight: static bearer tokens with a
    /// role (`admin`, `affiliate:<id>`, `edge`) and optional JWT keys
    /// (README, "Flight auth"). Without it anyone who reaches the Flight
    /// port may read every dataset.
    #[arg(long, env = ENV_FLIGHT_TOKENS)]
    flight_tokens: Option<PathBuf>,
    /// PEM certificate chain for TLS on the Flight and Flight SQL ports
    /// (with --flight-tls-key); clients then connect with `grpc+tls://`.
    /// Without it both ports speak plain text.
    #[arg(long, env = ENV_FLIGHT_TLS_CERT, requires = "flight_tls_key")]
    flight_tls_cert: Option<PathBuf>,
    /// PEM private key for --flight-tls-cert.
    #[arg(long, env = ENV_FLIGHT_TLS_KEY, requires = "flight_tls_cert")]
    flight_tls_key: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colors only for a person at a terminal, not for journald or files.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: start tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the whole chain: "bind quic on …: Address in use".
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let data_dir = args.data_dir.clone();
    let config = Config {
        data_dir: args.data_dir,
        quic_listen: args.quic_listen,
        flight_listen: args.flight_listen,
        flight_sql_listen: args.flight_sql_listen,
        http_listen: args.http_listen,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        tls_names: args.tls_names,
        wal_fsync: args.wal_fsync,
        snapshot_wal_bytes: args.snapshot_wal_bytes,
        retention_days: Some(args.retention_days).filter(|&n_days| n_days > 0),
        edge_tokens: args.edge_tokens.as_deref().map(EdgeTokens::load).transpose().context("edge tokens")?,
        campaigns: args.campaigns,
        flight_auth: args.flight_tokens.as_deref().map(FlightAuth::load).transpose().context("flight tokens")?,
        flight_tls: args.flight_tls_cert.zip(args.flight_tls_key).map(|(cert, key)| TlsFiles { cert, key }),
    };
    // Installed before start so a signal during start is not lost.
    let mut sigterm = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let aggregator = Aggregator::start(config).await.context("start aggregator")?;
    let address_file = data_dir.join(ADDRESS_FILE_NAME);
    if let Err(error) = write_address_file(&address_file, &aggregator) {
        aggregator.shutdown().await;
        return Err(error);
    }
    tokio::select! {
        _ = sigterm.recv() => info!(signal = "SIGTERM", "Shutting down."),
        _ = sigint.recv() => info!(signal = "SIGINT", "Shutting down."),
    }
    aggregator.shutdown().await;
    Ok(())
}

/// Writes `{"quic":…,"flight":…,"flight_sql":…,"flight_tls":…,"http":…,"quic_cert":…}`
/// via a temp file and a
/// rename, so a reader never sees half of it.
fn write_address_file(path: &Path, aggregator: &Aggregator) -> anyhow::Result<()> {
    let addresses = serde_json::json!({
        "quic": aggregator.quic_addr().to_string(),
        "flight": aggregator.flight_addr().to_string(),
        "flight_sql": aggregator.flight_sql_addr().to_string(),
        "flight_tls": aggregator.flight_tls(),
        "http": aggregator.http_addr().to_string(),
        "quic_cert": aggregator.quic_cert_path(),
    });
    let mut temp_path = path.as_os_str().to_owned();
    temp_path.push(".tmp");
    let temp_path = PathBuf::from(temp_path);
    let write = || -> std::io::Result<()> {
        let mut file = fs::File::create(&temp_path)?;
        file.write_all(addresses.to_string().as_bytes())?;
        file.sync_all()?;
        fs::rename(&temp_path, path)
    };
    write().with_context(|| format!("write {}", path.display()))
}
