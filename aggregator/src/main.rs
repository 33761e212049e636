//! The `edgetally-aggregator` binary: settings (flags, their
//! `EDGETALLY_AGGREGATOR_*` variables and the TOML file), logs, signals and
//! systemd's notifications around an [`Aggregator`]; writes where it
//! listens to `<data_dir>/aggregator.json`.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use edgetally_aggregator::{
    Aggregator, Config, DashboardConfig, EDGE_SILENT_SECS_DEFAULT, EdgeTokens, ExchangeRates, FlightAuth,
    REPORT_TZ_DEFAULT, RETENTION_DAYS_DEFAULT, SNAPSHOT_WAL_BYTES_DEFAULT, TlsFiles,
};
use edgetally_service::logs::{self, LogFormat};
use edgetally_service::process::{self, ServiceArgs};
use edgetally_service::settings::Loaded;
use edgetally_service::signals::Signals;
use tracing::{error, warn};

const ENV_CONFIG: &str = "EDGETALLY_AGGREGATOR_CONFIG";
const ENV_LOG_FORMAT: &str = "EDGETALLY_AGGREGATOR_LOG_FORMAT";

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
    /// Settings file (TOML) whose keys are these flags in snake_case, for
    /// example `retention_days = 400`; a flag or its variable wins over the
    /// file, the file over the default. An unknown key is an error.
    /// `aggregator/aggregator.example.toml` lists every key.
    #[arg(long, env = ENV_CONFIG)]
    config: Option<PathBuf>,
    /// Check the settings and the files they name (tokens, certificates,
    /// campaigns and commission rules), say what was checked and exit: 0
    /// when all is well, 2 when not. Binds no port and writes nothing.
    #[arg(long)]
    check_config: bool,
    /// Log lines as `text` or `json` (one object per line).
    #[arg(long, env = ENV_LOG_FORMAT, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
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
    /// TCP address for /metrics, /healthz and the web dashboard (at /).
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
    /// Seconds an edge that has shipped may send nothing before the
    /// `alerts` dataset reports it silent (`edge_silent`). 0 reports none.
    #[arg(long, env = "EDGETALLY_AGGREGATOR_EDGE_SILENT_SECS", default_value_t = EDGE_SILENT_SECS_DEFAULT)]
    edge_silent_secs: u64,
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
    /// Time zone (IANA) the dashboard's days start in, unless a viewer
    /// picks another on the page.
    #[arg(long, env = "EDGETALLY_AGGREGATOR_REPORT_TZ", default_value = REPORT_TZ_DEFAULT)]
    report_tz: String,
    /// JSON file of exchange rates into a reporting currency, for the
    /// dashboard: `{"reporting_currency":"EUR","rates":{"USD":"0.92"}}`.
    /// Without it money is shown per currency only.
    #[arg(long, env = "EDGETALLY_AGGREGATOR_EXCHANGE_RATES")]
    exchange_rates: Option<PathBuf>,
}

/// Settings a SIGHUP applies to the running aggregator (each file read
/// again: the token files, and the QUIC certificate and key when they are
/// files of the operator's); the campaigns file is also re-read on its own
/// every second. Any
/// other changed setting is named in a warning and waits for the next
/// start.
const RELOADED: [&str; 5] = ["edge_tokens", "flight_tokens", "campaigns", "tls_cert", "tls_key"];

fn main() -> ExitCode {
    process::main(check, run)
}

impl ServiceArgs for Args {
    fn log_format(&self) -> LogFormat {
        self.log_format
    }

    fn check_config(&self) -> bool {
        self.check_config
    }
}

async fn run(argv: Vec<OsString>, started: Loaded<Args>, throttle: logs::Throttle) -> anyhow::Result<()> {
    tokio::spawn(throttle.report());
    // Installed before start so a signal during start is not lost.
    let signals = Signals::install().context("install signal handlers")?;
    let args = &started.args;
    let data_dir = args.data_dir.clone();
    let config = Config {
        data_dir: args.data_dir.clone(),
        quic_listen: args.quic_listen,
        flight_listen: args.flight_listen,
        flight_sql_listen: args.flight_sql_listen,
        http_listen: args.http_listen,
        tls_cert: args.tls_cert.clone(),
        tls_key: args.tls_key.clone(),
        tls_names: args.tls_names.clone(),
        wal_fsync: args.wal_fsync,
        snapshot_wal_bytes: args.snapshot_wal_bytes,
        retention_days: Some(args.retention_days).filter(|&n_days| n_days > 0),
        edge_silent: Some(args.edge_silent_secs).filter(|&secs| secs > 0).map(std::time::Duration::from_secs),
        edge_tokens: args.edge_tokens.as_deref().map(EdgeTokens::load).transpose().context("edge tokens")?,
        campaigns: args.campaigns.clone(),
        flight_auth: args.flight_tokens.as_deref().map(FlightAuth::load).transpose().context("flight tokens")?,
        flight_tls: flight_tls_files(args),
        dashboard: DashboardConfig {
            report_tz: args.report_tz.clone(),
            exchange_rates: args
                .exchange_rates
                .as_deref()
                .map(ExchangeRates::load)
                .transpose()
                .context("exchange rates")?,
        },
    };
    let aggregator = Aggregator::start(config).await.context("start aggregator")?;
    let address_file = data_dir.join(ADDRESS_FILE_NAME);
    if let Err(error) = write_address_file(&address_file, &aggregator) {
        aggregator.shutdown().await;
        return Err(error);
    }
    let status = format!("serving Flight on {}, QUIC on {}", aggregator.flight_addr(), aggregator.quic_addr());
    process::until_stopped(signals, &status, || reload(&argv, &started, &aggregator)).await;
    aggregator.shutdown().await;
    Ok(())
}

fn flight_tls_files(args: &Args) -> Option<TlsFiles> {
    args.flight_tls_cert.clone().zip(args.flight_tls_key.clone()).map(|(cert, key)| TlsFiles { cert, key })
}

/// Applies a SIGHUP: loads the settings again (the file may have changed),
/// reads the token files again and names every other changed setting,
/// which needs a restart. A file that does not load keeps what is in use.
fn reload(argv: &[OsString], started: &Loaded<Args>, aggregator: &Aggregator) {
    let Some(newer) = process::reload_settings(argv, started, &RELOADED) else { return };
    let args = &newer.args;
    match (started.args.tls_cert.is_some(), args.tls_cert.as_deref().zip(args.tls_key.as_deref())) {
        (true, Some((cert, key))) => {
            if let Err(error) = aggregator.reload_quic_tls(cert, key) {
                // The crate's errors leave their source to the chain.
                let error = anyhow::Error::from(error);
                error!(error = %format!("{error:#}"), "QUIC certificate not reloaded; keeping the one in use.");
            }
        }
        (false, None) => {}
        _ => warn!("Switching between a generated and a configured QUIC certificate takes effect at the next start."),
    }
    reload_tokens(
        "Flight",
        args.flight_tokens.as_deref().map(FlightAuth::load),
        started.args.flight_tokens.is_some(),
        |auth| aggregator.reload_flight_tokens(auth),
    );
    reload_tokens(
        "Edge",
        args.edge_tokens.as_deref().map(EdgeTokens::load),
        started.args.edge_tokens.is_some(),
        |tokens| aggregator.reload_edge_tokens(tokens),
    );
}

/// Applies one token file on reload: `loaded` is the file read again
/// (`None`: the settings name none now), `in_use` whether the aggregator
/// started with one, `replace` swaps the tokens in and says whether it
/// could. Turning tokens on or off waits for a restart; a file that does
/// not load keeps the tokens in use.
fn reload_tokens<T, E: std::fmt::Display>(
    kind: &str,
    loaded: Option<Result<T, E>>,
    in_use: bool,
    replace: impl FnOnce(T) -> bool,
) {
    match loaded {
        Some(Ok(tokens)) => {
            let replaced = replace(tokens);
            if !replaced {
                warn!(kind, "Tokens were off at start; turning them on takes effect at the next start.");
            }
        }
        Some(Err(error)) => error!(kind, %error, "Tokens not reloaded; keeping the ones in use."),
        None if in_use => warn!(kind, "Turning tokens off takes effect at the next start; keeping the ones in use."),
        None => {}
    }
}

/// What `--check-config` checks: every file the settings name, read and
/// parsed as at start. Returns what it checked.
fn check(args: &Args) -> anyhow::Result<Vec<String>> {
    let mut checked = vec!["settings".to_owned()];
    if let Some(path) = &args.edge_tokens {
        let tokens = EdgeTokens::load(path).context("edge tokens")?;
        checked.push(format!("edge tokens {} ({} edges)", path.display(), tokens.len()));
    }
    if let Some(path) = &args.flight_tokens {
        let auth = FlightAuth::load(path).context("flight tokens")?;
        checked.push(format!(
            "flight tokens {} ({} tokens, {} JWT keys)",
            path.display(),
            auth.n_tokens(),
            auth.n_jwt_keys()
        ));
    }
    if let Some(path) = &args.campaigns {
        let n_campaigns = edgetally_aggregator::check_campaigns(path).context("campaigns")?;
        checked.push(format!("campaigns and commission rules {} ({n_campaigns} campaigns)", path.display()));
    }
    match args.tls_cert.as_deref().zip(args.tls_key.as_deref()) {
        Some((cert, key)) => {
            edgetally_aggregator::check_quic_tls(cert, key).context("QUIC TLS")?;
            checked.push(format!("QUIC TLS pair {} {}", cert.display(), key.display()));
        }
        None => checked.push("QUIC certificate (the data directory's, generated at start if missing)".to_owned()),
    }
    if let Some(files) = flight_tls_files(args) {
        edgetally_aggregator::check_flight_tls(&files).context("Flight TLS")?;
        checked.push(format!("Flight TLS pair {} {}", files.cert.display(), files.key.display()));
    }
    edgetally_aggregator::check_report_tz(&args.report_tz).context("report time zone")?;
    checked.push(format!("report time zone {}", args.report_tz));
    if let Some(path) = &args.exchange_rates {
        ExchangeRates::load(path).context("exchange rates")?;
        checked.push(format!("exchange rates {}", path.display()));
    }
    Ok(checked)
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
