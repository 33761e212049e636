//! The `edgetally-collector` binary: settings (flags, their
//! `EDGETALLY_COLLECTOR_*` variables and the TOML file), logs, signals and
//! systemd's notifications around a [`Collector`].

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use edgetally_collector::{
    BODY_BYTES_MAX_DEFAULT, CLICK_FLOOD_PER_MINUTE_DEFAULT, CONNECTIONS_MAX_DEFAULT, Campaigns, Collector, Config,
    DedupConfig, FRAUD_RULES_DEFAULT, Flag, JOURNAL_BYTES_MAX_DEFAULT, REQUESTS_IN_FLIGHT_MAX_DEFAULT,
    SPOOL_BYTES_MAX_DEFAULT, SpoolIo, TallyLimits, UPLINK_WINDOW_DEFAULT, URL_BYTES_MAX_DEFAULT, click_keys,
};
use edgetally_service::logs::{self, LogFormat};
use edgetally_service::process::{self, ServiceArgs};
use edgetally_service::settings::Loaded;
use edgetally_service::signals::Signals;

const ENV_CONFIG: &str = "EDGETALLY_COLLECTOR_CONFIG";
const ENV_LOG_FORMAT: &str = "EDGETALLY_COLLECTOR_LOG_FORMAT";

/// Settings a SIGHUP applies to the running collector; any other changed
/// setting is named in a warning and waits for the next start.
const RELOADED: [&str; 3] = ["tls_cert", "tls_key", "campaigns"];

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SpoolIoArg {
    Std,
    Uring,
}

#[derive(Debug, Parser)]
#[command(name = "edgetally-collector", version, about = "EdgeTally edge collector")]
struct Args {
    /// Settings file (TOML) whose keys are these flags in snake_case, for
    /// example `flush_interval_ms = 250`; a flag or its variable wins over
    /// the file, the file over the default. An unknown key is an error.
    /// `collector/collector.example.toml` lists every key.
    #[arg(long, env = ENV_CONFIG)]
    config: Option<PathBuf>,
    /// Check the settings and the files they name (certificates, keys,
    /// campaigns, token), say what was checked and exit: 0 when all is
    /// well, 2 when not. Binds no port and writes nothing.
    #[arg(long)]
    check_config: bool,
    /// Log lines as `text` or `json` (one object per line).
    #[arg(long, env = ENV_LOG_FORMAT, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Directory for the collector's state; `collector.json` with the bound
    /// addresses is written here once the collector is listening.
    #[arg(long, env = "EDGETALLY_COLLECTOR_DATA_DIR")]
    data_dir: PathBuf,
    /// Address of the HTTP listener (port 0 picks a free port).
    #[arg(long, env = "EDGETALLY_COLLECTOR_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    http_listen: SocketAddr,
    /// QUIC address of the aggregator.
    #[arg(long, env = "EDGETALLY_COLLECTOR_AGGREGATOR_ADDR", default_value = "127.0.0.1:7443")]
    aggregator_addr: SocketAddr,
    /// PEM certificate the aggregator presents (its `quic-cert.pem`), or the
    /// CA that signed it.
    #[arg(long, env = "EDGETALLY_COLLECTOR_AGGREGATOR_CERT")]
    aggregator_cert: PathBuf,
    /// Name checked against the aggregator's certificate.
    #[arg(long, env = "EDGETALLY_COLLECTOR_AGGREGATOR_SERVER_NAME", default_value = "localhost")]
    aggregator_server_name: String,
    /// This edge's id, unique among the edges of one aggregator.
    #[arg(long, env = "EDGETALLY_COLLECTOR_EDGE_ID", default_value_t = 1)]
    edge_id: u32,
    /// File holding this edge's token for the aggregator (one line; the
    /// aggregator's --edge-tokens lists it). A file, not a flag, so the
    /// token stays out of process listings.
    #[arg(long, env = "EDGETALLY_COLLECTOR_EDGE_TOKEN_FILE")]
    edge_token_file: Option<PathBuf>,
    /// How often a batch is sealed and shipped, in milliseconds.
    #[arg(long, env = "EDGETALLY_COLLECTOR_FLUSH_INTERVAL_MS", default_value_t = 250)]
    flush_interval_ms: u64,
    /// How often the traffic counters (impressions, clicks, duplicates,
    /// flagged traffic) ship, in milliseconds, at multiples of it since the
    /// Unix epoch: 60000 ships each minute's rows once, when it closes.
    /// Conversions and their counts ship with every flush. At or below the
    /// flush interval, everything ships with every flush.
    #[arg(long, env = "EDGETALLY_COLLECTOR_ROLLUP_INTERVAL_MS", default_value_t = 60_000)]
    rollup_interval_ms: u64,
    /// Bound of the on-disk spool of unacknowledged batches, in bytes; when
    /// full, sealing waits and counts keep growing in memory.
    #[arg(long, env = "EDGETALLY_COLLECTOR_SPOOL_BYTES_MAX", default_value_t = SPOOL_BYTES_MAX_DEFAULT)]
    spool_bytes_max: u64,
    /// Bound of the on-disk journal of changes not yet sealed, in bytes.
    #[arg(long, env = "EDGETALLY_COLLECTOR_JOURNAL_BYTES_MAX", default_value_t = JOURNAL_BYTES_MAX_DEFAULT)]
    journal_bytes_max: u64,
    /// How the spool writes and syncs: `std` (pwrite + fdatasync) or
    /// `uring` (one io_uring submission; measured no faster, so not the
    /// default).
    #[arg(long, env = "EDGETALLY_COLLECTOR_SPOOL_IO", value_enum, default_value_t = SpoolIoArg::Std)]
    spool_io: SpoolIoArg,
    /// Threads serving HTTP, each with its own listening socket on the
    /// address (SO_REUSEPORT) and its own single-threaded runtime; default:
    /// one per CPU. 0 serves HTTP on the shared runtime.
    #[arg(long, env = "EDGETALLY_COLLECTOR_HTTP_WORKERS")]
    http_workers: Option<usize>,
    /// Most batches sent to the aggregator and not yet acknowledged.
    #[arg(long, env = "EDGETALLY_COLLECTOR_UPLINK_WINDOW", default_value_t = UPLINK_WINDOW_DEFAULT)]
    uplink_window: usize,
    /// Campaign snapshot (JSON: landing URLs and attribution windows), used
    /// until the aggregator sends its own (which is then kept in the data
    /// directory and preferred on later starts). Without any, clicks answer
    /// 404 and click IDs cannot be attributed.
    #[arg(long, env = "EDGETALLY_COLLECTOR_CAMPAIGNS")]
    campaigns: Option<PathBuf>,
    /// Click-signing keys (JSON); created with a random key when missing.
    /// Defaults to `click-keys.json` in the data directory.
    #[arg(long, env = "EDGETALLY_COLLECTOR_CLICK_KEYS")]
    click_keys: Option<PathBuf>,
    /// A repeated order ID, click ID or event ID within this many seconds
    /// is answered `duplicate` and not counted again.
    #[arg(long, env = "EDGETALLY_COLLECTOR_DEDUP_WINDOW_SECS", default_value_t = 86_400)]
    dedup_window_secs: u64,
    /// Distinct keys the dedup window holds per window without loss; memory
    /// is about 13.1 bytes per key, allocated at start (10 million: 126 MiB).
    #[arg(long, env = "EDGETALLY_COLLECTOR_DEDUP_KEYS_MAX", default_value_t = 10_000_000)]
    dedup_keys_max: usize,
    /// PEM certificate chain to serve HTTPS (TLS 1.2 and 1.3) with; needs
    /// --tls-key. Without both, the collector speaks plain HTTP (behind a
    /// load balancer that terminates TLS).
    #[arg(long, env = "EDGETALLY_COLLECTOR_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "EDGETALLY_COLLECTOR_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Most open HTTP connections; more are answered 503 and closed.
    #[arg(long, env = "EDGETALLY_COLLECTOR_CONNECTIONS_MAX", default_value_t = CONNECTIONS_MAX_DEFAULT)]
    connections_max: usize,
    /// Most requests handled at once; more are shed with 503 and
    /// Retry-After (pixels: the GIF, uncounted, reason shed_overload).
    #[arg(long, env = "EDGETALLY_COLLECTOR_REQUESTS_IN_FLIGHT_MAX", default_value_t = REQUESTS_IN_FLIGHT_MAX_DEFAULT)]
    requests_in_flight_max: usize,
    /// Longest request target (path and query), in bytes; longer gets 414.
    #[arg(long, env = "EDGETALLY_COLLECTOR_URL_BYTES_MAX", default_value_t = URL_BYTES_MAX_DEFAULT)]
    url_bytes_max: usize,
    /// Milliseconds a client may take to send a request head; also how long
    /// an idle keep-alive connection is kept.
    #[arg(long, env = "EDGETALLY_COLLECTOR_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    header_read_timeout_ms: u64,
    /// Answer HTTP/1.1 keep-alive pixels (GET /p.gif and /cv.gif), plain or
    /// TLS without HTTP/2 chosen, in a lean loop over httparse; anything
    /// else on the connection is served by hyper. `false` serves all with
    /// hyper.
    #[arg(long, env = "EDGETALLY_COLLECTOR_LEAN_PIXELS", default_value_t = true, action = clap::ArgAction::Set)]
    lean_pixels: bool,
    /// A visitor's repeated clicks on one affiliate's campaign within this
    /// many seconds are counted as clicks but not as unique clicks.
    #[arg(long, env = "EDGETALLY_COLLECTOR_UNIQUE_WINDOW_SECS", default_value_t = 3_600)]
    unique_window_secs: u64,
    /// Distinct (visitor, affiliate, campaign) keys the uniqueness window
    /// holds (about 13.1 bytes each, allocated at start).
    #[arg(long, env = "EDGETALLY_COLLECTOR_UNIQUE_KEYS_MAX", default_value_t = 1_000_000)]
    unique_keys_max: usize,
    /// Take the client IP from the last address in this header, appended by
    /// a trusted load balancer (for example x-forwarded-for); without it the
    /// peer address is the client.
    #[arg(long, env = "EDGETALLY_COLLECTOR_CLIENT_IP_HEADER")]
    client_ip_header: Option<http::HeaderName>,
    /// Requests per second allowed per client IP (0: no limit, the default,
    /// right behind a load balancer); over it, 429 (pixels: the GIF,
    /// uncounted, reason rate_limited).
    #[arg(long, env = "EDGETALLY_COLLECTOR_IP_RATE_PER_SEC", default_value_t = 0)]
    ip_rate_per_sec: u32,
    /// Burst allowed per client IP above the rate (default: twice the rate).
    #[arg(long, env = "EDGETALLY_COLLECTOR_IP_RATE_BURST")]
    ip_rate_burst: Option<u32>,
    /// Fraud rules that count accepted events apart (flagged, held from
    /// payouts until reviewed), by name: bot_user_agent, click_flood,
    /// fast_conversion, no_click_id, over_daily_cap; an empty value (`""`
    /// in the settings file) turns them all off. no_click_id is off by
    /// default: only posted events can lack a click ID, and those come
    /// from merchants' own servers, which often report conversions that no
    /// click led to (a coupon code, a phone order).
    #[arg(
        long,
        env = "EDGETALLY_COLLECTOR_FRAUD_RULES",
        value_delimiter = ',',
        default_value = FRAUD_RULES_DEFAULT,
        value_parser = parse_flag
    )]
    fraud_rules: Vec<FlagArg>,
    /// Clicks one visitor (client IP and user agent) may make in a UTC
    /// minute before the rest are flagged click_flood (0: no limit).
    #[arg(long, env = "EDGETALLY_COLLECTOR_CLICK_FLOOD_PER_MINUTE", default_value_t = CLICK_FLOOD_PER_MINUTE_DEFAULT)]
    click_flood_per_minute: u32,
    /// Largest accepted `POST /v1/events` body, in bytes.
    #[arg(long, env = "EDGETALLY_COLLECTOR_BODY_BYTES_MAX", default_value_t = BODY_BYTES_MAX_DEFAULT)]
    body_bytes_max: usize,
}

/// A fraud rule's name, or nothing (the empty value that turns every rule
/// off).
#[derive(Debug, Clone, Copy)]
struct FlagArg(Option<Flag>);

fn parse_flag(text: &str) -> Result<FlagArg, String> {
    if text.is_empty() {
        return Ok(FlagArg(None));
    }
    Flag::parse(text).map(|flag| FlagArg(Some(flag))).ok_or_else(|| {
        let names: Vec<&str> = Flag::ALL.iter().map(|flag| flag.as_str()).collect();
        format!("unknown fraud rule {text:?}: expected one of {}", names.join(", "))
    })
}

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
    let signals = Signals::install().context("installing signal handlers")?;
    let args = &started.args;
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    let click_keys = click_keys::load_or_create(&click_keys_path(args))?;
    let config = config(args, click_keys)?;
    let collector = Collector::start(config).await?;
    let addrs = serde_json::json!({ "http": collector.http_addr().to_string() });
    write_atomic(&args.data_dir.join("collector.json"), addrs.to_string().as_bytes())?;
    let status = format!("serving HTTP on {}", collector.http_addr());
    process::until_stopped(signals, &status, || reload(&argv, &started, &collector)).await;
    collector.shutdown().await;
    Ok(())
}

/// Applies a SIGHUP: loads the settings again (the file may have changed),
/// reads the TLS pair and the local campaigns file again, and names every
/// other changed setting, which needs a restart. Any error keeps what is in
/// use and says why.
fn reload(argv: &[OsString], started: &Loaded<Args>, collector: &Collector) {
    let Some(newer) = process::reload_settings(argv, started, &RELOADED) else { return };
    let args = &newer.args;
    match (collector.tls(), args.tls_cert.as_deref().zip(args.tls_key.as_deref())) {
        (Some(tls), Some((cert, key))) => match tls.reload(cert, key) {
            Ok(()) => tracing::info!(cert = %cert.display(), "TLS certificate reloaded."),
            Err(error) => tracing::error!(%error, "TLS certificate not reloaded; keeping the one in use."),
        },
        (None, None) => {}
        _ => tracing::warn!("Turning TLS on or off takes effect at the next start."),
    }
    if let Some(path) = &args.campaigns {
        match read_campaigns(path) {
            Ok(campaigns) => {
                let n_campaigns = campaigns.len();
                if collector.reload_campaigns(campaigns) {
                    tracing::info!(path = %path.display(), n_campaigns, "Campaigns reloaded.");
                } else {
                    tracing::info!(path = %path.display(), "Campaigns file not used: the aggregator's snapshot is in use.");
                }
            }
            Err(error) => {
                tracing::error!(error = %format!("{error:#}"), "Campaigns not reloaded; keeping the ones in use.")
            }
        }
    }
}

/// What `--check-config` checks: every number the settings bound, and every
/// file they name, read and parsed as at start. Returns what it checked.
fn check(args: &Args) -> anyhow::Result<Vec<String>> {
    let mut checked = vec!["settings".to_owned()];
    check_bounds(args)?;
    edgetally_collector::check_aggregator_cert(&args.aggregator_cert)?;
    checked.push(format!("aggregator certificate {}", args.aggregator_cert.display()));
    if let Some(path) = &args.campaigns {
        read_campaigns(path)?;
        checked.push(format!("campaigns {}", path.display()));
    }
    if let Some(path) = &args.edge_token_file {
        read_edge_token(path)?;
        checked.push(format!("edge token {}", path.display()));
    }
    let click_keys_path = click_keys_path(args);
    if click_keys_path.exists() {
        click_keys::load(&click_keys_path)?;
        checked.push(format!("click keys {}", click_keys_path.display()));
    } else {
        checked.push(format!("click keys {} (missing: created at start)", click_keys_path.display()));
    }
    if let Some((cert, key)) = args.tls_cert.as_deref().zip(args.tls_key.as_deref()) {
        edgetally_collector::tls::check(cert, key)?;
        checked.push(format!("TLS pair {} {}", cert.display(), key.display()));
    }
    Ok(checked)
}

/// `--click-keys`, by default `click-keys.json` in the data directory.
fn click_keys_path(args: &Args) -> PathBuf {
    args.click_keys.clone().unwrap_or_else(|| args.data_dir.join("click-keys.json"))
}

fn check_bounds(args: &Args) -> anyhow::Result<()> {
    // Each key costs about 13 bytes allocated at start: a billion is 13 GB.
    anyhow::ensure!(
        (1..=1_000_000_000).contains(&args.dedup_keys_max),
        "--dedup-keys-max must be from 1 to 1000000000, got {}",
        args.dedup_keys_max
    );
    Ok(())
}

fn read_campaigns(path: &Path) -> anyhow::Result<Campaigns> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Campaigns::parse(&text).with_context(|| format!("campaigns in {}", path.display()))
}

fn read_edge_token(path: &Path) -> anyhow::Result<Vec<u8>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.trim().as_bytes().to_vec())
}

fn config(args: &Args, click_keys: edgetally_collector::ClickKeys) -> anyhow::Result<Config> {
    check_bounds(args)?;
    let campaigns = match &args.campaigns {
        Some(path) => read_campaigns(path)?,
        None => Campaigns::default(),
    };
    let edge_token = match &args.edge_token_file {
        Some(path) => read_edge_token(path)?,
        None => Vec::new(),
    };
    Ok(Config {
        edge_token,
        data_dir: args.data_dir.clone(),
        spool_bytes_max: args.spool_bytes_max,
        journal_bytes_max: args.journal_bytes_max,
        spool_io: match args.spool_io {
            SpoolIoArg::Std => SpoolIo::Std,
            SpoolIoArg::Uring => SpoolIo::Uring,
        },
        uplink_window: args.uplink_window.max(1),
        http_listen: args.http_listen,
        http_workers: args
            .http_workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)),
        aggregator_addr: args.aggregator_addr,
        aggregator_cert: args.aggregator_cert.clone(),
        aggregator_server_name: args.aggregator_server_name.clone(),
        edge_id: args.edge_id,
        flush_interval: Duration::from_millis(args.flush_interval_ms.max(1)),
        rollup_interval: Duration::from_millis(args.rollup_interval_ms),
        body_bytes_max: args.body_bytes_max,
        tally_limits: TallyLimits::default(),
        campaigns,
        click_keys,
        tls: args.tls_cert.clone().zip(args.tls_key.clone()),
        connections_max: args.connections_max.max(1),
        url_bytes_max: args.url_bytes_max,
        requests_in_flight_max: args.requests_in_flight_max.max(1),
        header_read_timeout: Duration::from_millis(args.header_read_timeout_ms.max(1)),
        lean_pixels: args.lean_pixels,
        uniques: DedupConfig {
            window: Duration::from_secs(args.unique_window_secs.max(1)),
            keys_max: args.unique_keys_max.clamp(1, 1_000_000_000),
        },
        client_ip_header: args.client_ip_header.clone(),
        ip_rate: std::num::NonZeroU32::new(args.ip_rate_per_sec).map(|per_second| {
            let burst = args.ip_rate_burst.unwrap_or(per_second.get().saturating_mul(2));
            (per_second, std::num::NonZeroU32::new(burst).unwrap_or(per_second))
        }),
        dedup: DedupConfig {
            window: Duration::from_secs(args.dedup_window_secs.max(1)),
            keys_max: args.dedup_keys_max,
        },
        fraud_rules: args.fraud_rules.iter().filter_map(|rule| rule.0).collect(),
        click_flood_per_minute: args.click_flood_per_minute,
    })
}

fn write_atomic(path: &std::path::Path, contents: &[u8]) -> anyhow::Result<()> {
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, contents).with_context(|| format!("writing {}", temp.display()))?;
    std::fs::rename(&temp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
