//! `stack`: the whole local EdgeTally on loopback in one process: an
//! aggregator, one collector shipping to it over QUIC, and a trickle of
//! traffic into the collector, drawn from the same mix as `run`. Both servers run from their libraries with the
//! same code paths as their binaries.
//!
//! Every start makes fresh random tokens: the edge's, and two for Flight
//! (an admin and `affiliate:1`), written to `flight-tokens.json` in the
//! data directory and printed with a `query` command line to try them.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use arrow_array::cast::AsArray;
use arrow_array::types::UInt64Type;
use tokio::sync::watch;

use crate::load::{LoadConfig, Progress};
use crate::mix::MixArgs;

#[derive(Debug, clap::Args)]
pub(crate) struct StackArgs {
    /// State directory (aggregator certificate and data). Defaults to
    /// `edgetally-stack` under the system's temporary directory.
    #[arg(long, env = "EDGETALLY_STACK_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// HTTP address of the collector.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_listen: SocketAddr,
    /// QUIC address of the aggregator.
    #[arg(long, default_value = "127.0.0.1:7443")]
    quic_listen: SocketAddr,
    /// Arrow Flight address of the aggregator.
    #[arg(long, default_value = "127.0.0.1:8815")]
    flight_listen: SocketAddr,
    /// Flight SQL address of the aggregator.
    #[arg(long, default_value = "127.0.0.1:8816")]
    flight_sql_listen: SocketAddr,
    /// HTTP address of the aggregator (`/metrics`, `/healthz`).
    #[arg(long, default_value = "127.0.0.1:8090")]
    aggregator_http_listen: SocketAddr,
    /// Generated requests per second (0 for none).
    #[arg(long, default_value_t = 20)]
    rate: u32,
    /// Seed of the traffic generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    duration_secs: Option<u64>,
    #[command(flatten)]
    mix: MixArgs,
}

pub(crate) async fn run(args: StackArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir.unwrap_or_else(|| std::env::temp_dir().join("edgetally-stack"));
    let aggregator_dir = data_dir.join("aggregator");
    std::fs::create_dir_all(&aggregator_dir).with_context(|| format!("creating {}", aggregator_dir.display()))?;
    // Campaigns 1..=N, as many as the mix draws from, each landing on a
    // placeholder shop page that carries the click ID. Odd campaigns pay a
    // 10 % revenue share, even ones 2.00 USD per conversion, so the
    // dashboard has commissions to show.
    let campaigns_path = data_dir.join("campaigns.json");
    let campaigns: Vec<serde_json::Value> = (1..=args.mix.campaigns)
        .map(|id| {
            let payout = if id % 2 == 1 {
                serde_json::json!({"type": "revshare", "percent": "10"})
            } else {
                serde_json::json!({"type": "cpa", "amount": "2.00", "currency": "USD"})
            };
            serde_json::json!({
                "id": id,
                "landing_url": format!("https://shop.example/landing/{id}?click_id={{click_id}}&sub1={{sub1}}"),
                "payout": payout,
            })
        })
        .collect();
    // Illustrative rates for the dashboard's reporting currency.
    let rates_path = data_dir.join("exchange-rates.json");
    let rates = r#"{"reporting_currency":"EUR","rates":{"USD":"0.92","GBP":"1.17","JPY":"0.0061","BHD":"2.44"}}"#;
    std::fs::write(&rates_path, rates).with_context(|| format!("writing {}", rates_path.display()))?;
    let snapshot = serde_json::json!({ "campaigns": campaigns }).to_string();
    std::fs::write(&campaigns_path, &snapshot).with_context(|| format!("writing {}", campaigns_path.display()))?;
    // One edge, with a fresh random token each start.
    let edge_token = random_token();
    let mut edge_tokens = edgetally_aggregator::EdgeTokens::default();
    edge_tokens.insert(1, edge_token.as_bytes())?;
    // Flight: an admin, and affiliate 1 to show what an affiliate sees.
    let admin_token = random_token();
    let affiliate_token = random_token();
    let flight_tokens_path = data_dir.join("flight-tokens.json");
    write_flight_tokens(&flight_tokens_path, &admin_token, &affiliate_token)?;
    let flight_auth = edgetally_aggregator::FlightAuth::load(&flight_tokens_path)?;
    let aggregator = edgetally_aggregator::Aggregator::start(edgetally_aggregator::Config {
        data_dir: aggregator_dir,
        quic_listen: args.quic_listen,
        flight_listen: args.flight_listen,
        flight_sql_listen: args.flight_sql_listen,
        http_listen: args.aggregator_http_listen,
        tls_cert: None,
        tls_key: None,
        tls_names: Vec::new(),
        wal_fsync: true,
        snapshot_wal_bytes: edgetally_aggregator::SNAPSHOT_WAL_BYTES_DEFAULT,
        retention_days: Some(edgetally_aggregator::RETENTION_DAYS_DEFAULT),
        edge_tokens: Some(edge_tokens),
        campaigns: Some(campaigns_path.clone()),
        flight_auth: Some(flight_auth),
        flight_tls: None,
        dashboard: edgetally_aggregator::DashboardConfig {
            report_tz: edgetally_aggregator::REPORT_TZ_DEFAULT.into(),
            exchange_rates: Some(edgetally_aggregator::ExchangeRates::load(&rates_path)?),
        },
        edge_silent: Some(std::time::Duration::from_secs(edgetally_aggregator::EDGE_SILENT_SECS_DEFAULT)),
    })
    .await
    .context("starting the aggregator")?;
    let collector = edgetally_collector::Collector::start(edgetally_collector::Config {
        data_dir: data_dir.join("collector"),
        spool_bytes_max: edgetally_collector::SPOOL_BYTES_MAX_DEFAULT,
        journal_bytes_max: edgetally_collector::JOURNAL_BYTES_MAX_DEFAULT,
        spool_io: edgetally_collector::SpoolIo::Std,
        uplink_window: edgetally_collector::UPLINK_WINDOW_DEFAULT,
        http_listen: args.http_listen,
        http_workers: 0,
        aggregator_addr: aggregator.quic_addr(),
        aggregator_cert: aggregator.quic_cert_path().to_owned(),
        aggregator_server_name: "localhost".to_owned(),
        edge_id: 1,
        edge_token: edge_token.into_bytes(),
        flush_interval: edgetally_collector::FLUSH_INTERVAL_DEFAULT,
        rollup_interval: edgetally_collector::ROLLUP_INTERVAL_DEFAULT,
        body_bytes_max: edgetally_collector::BODY_BYTES_MAX_DEFAULT,
        tally_limits: edgetally_collector::TallyLimits::default(),
        campaigns: edgetally_collector::Campaigns::parse(&snapshot)?,
        click_keys: edgetally_collector::click_keys::load_or_create(&data_dir.join("click-keys.json"))?,
        dedup: edgetally_collector::DedupConfig::default(),
        uniques: edgetally_collector::DedupConfig {
            window: std::time::Duration::from_secs(3_600),
            keys_max: 1_000_000,
        },
        // The traffic below comes from the load generator, which names
        // its visitors in x-forwarded-for as a load balancer would.
        client_ip_header: Some(http::HeaderName::from_static("x-forwarded-for")),
        ip_rate: None,
        fraud_rules: edgetally_collector::FRAUD_RULES_DEFAULT
            .split(',')
            .filter_map(edgetally_collector::Flag::parse)
            .collect(),
        click_flood_per_minute: edgetally_collector::CLICK_FLOOD_PER_MINUTE_DEFAULT,
        tls: None,
        connections_max: edgetally_collector::CONNECTIONS_MAX_DEFAULT,
        url_bytes_max: edgetally_collector::URL_BYTES_MAX_DEFAULT,
        requests_in_flight_max: edgetally_collector::REQUESTS_IN_FLIGHT_MAX_DEFAULT,
        header_read_timeout: edgetally_collector::HEADER_READ_TIMEOUT_DEFAULT,
        lean_pixels: true,
    })
    .await
    .context("starting the collector")?;

    let http = collector.http_addr();
    let flight = aggregator.flight_addr();
    println!("EdgeTally local stack is running (state in {}).", data_dir.display());
    println!("  dashboard http://{}/   (log in with the admin or the affiliate:1 token below)", aggregator.http_addr());
    println!("  pixel     http://{http}/p.gif?aff=1&cmp=1&sub1=demo");
    println!(
        "  events    POST http://{http}/v1/events   e.g. {{\"kind\":\"sale\",\"affiliate_id\":1,\"campaign_id\":1,\"amount\":\"12.34\",\"currency\":\"USD\"}}"
    );
    println!("  click     http://{http}/c/1?aff=1&sub1=demo   (campaigns in {})", campaigns_path.display());
    println!("  postback  http://{http}/pb?click_id=<from the click's Location>&amount=12.34&currency=USD");
    println!("  metrics   http://{http}/metrics (collector), http://{}/metrics (aggregator)", aggregator.http_addr());
    println!("  flight    http://{flight}   (tokens in {})", flight_tokens_path.display());
    println!("            admin token        {admin_token}");
    println!("            affiliate:1 token  {affiliate_token}");
    println!(
        "            read it: cargo run -p edgetally-loadtest -- query --flight http://{flight} --flight-token {admin_token}"
    );
    println!(
        "            as affiliate 1: cargo run -p edgetally-loadtest -- query --flight http://{flight} --flight-token {affiliate_token} --ticket '{{\"dataset\":\"conversions\"}}'"
    );
    println!(
        "  sql       grpc://{}   (Flight SQL, same tokens; tables rollups, conversions, quarantine)",
        aggregator.flight_sql_addr()
    );
    println!("  quic      {} (certificate {})", aggregator.quic_addr(), aggregator.quic_cert_path().display());
    println!("  traffic   {} requests/s generated; Ctrl-C stops", args.rate);

    let flight_url = format!("http://{flight}");
    let (stop_tx, stop) = watch::channel(false);
    let progress = Arc::new(Progress::default());
    let load = (args.rate > 0).then(|| {
        let config = LoadConfig {
            targets: vec![http.to_string()],
            connections: 2,
            streams: 1,
            http2: false,
            rate: Some(f64::from(args.rate)),
            precise_timer: false,
            duration: args.duration_secs.map(Duration::from_secs),
            requests_max: None,
            timeout: Duration::from_secs(5),
            seed: args.seed,
            mix: args.mix.clone(),
            tls: None,
            freshness: None,
        };
        let progress = progress.clone();
        let stop = stop.clone();
        tokio::spawn(async move { crate::load::run(&config, progress, stop).await })
    });
    let mut report_tick = tokio::time::interval(Duration::from_secs(5));
    let finish = async {
        match args.duration_secs {
            Some(secs) => tokio::time::sleep(Duration::from_secs(secs)).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::pin!(finish);
    loop {
        tokio::select! {
            _ = &mut finish => break,
            _ = report_tick.tick() => {
                let answered = progress.answered.load(Ordering::Relaxed);
                let accepted = progress.accepted_events.load(Ordering::Relaxed);
                match counted_events(&flight_url, &admin_token).await {
                    Ok(counted) => println!(
                        "sent {answered} requests, the collector accepted {accepted} events, the aggregator counts {counted}"
                    ),
                    Err(error) => println!("sent {answered} requests; reading the aggregator failed: {error:#}"),
                }
            }
        }
    }
    let _ = stop_tx.send(true);
    if let Some(load) = load {
        load.await.context("traffic task")?.context("traffic")?;
    }
    println!("Stopping.");
    collector.shutdown().await;
    aggregator.shutdown().await;
    Ok(())
}

/// A token of 48 random hex digits (192 bits).
fn random_token() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..48).map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)])).collect()
}

/// Writes the aggregator's `--flight-tokens` file, readable by its owner
/// only.
fn write_flight_tokens(path: &Path, admin_token: &str, affiliate_token: &str) -> anyhow::Result<()> {
    let tokens = serde_json::json!({"tokens": [
        {"name": "stack-admin", "token": admin_token, "role": "admin"},
        {"name": "stack-affiliate-1", "token": affiliate_token, "role": "affiliate:1"},
    ]});
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
        file.write_all(tokens.to_string().as_bytes())
    };
    write().with_context(|| format!("writing {}", path.display()))
}

/// All events the aggregator has counted, over all time and keys.
async fn counted_events(flight_url: &str, token: &str) -> anyhow::Result<u64> {
    let batches = crate::query::fetch(flight_url, Some(token), r#"{"dataset":"rollups","group_by":[]}"#).await?;
    let mut total = 0u64;
    for batch in &batches {
        for column in ["impressions", "clicks", "leads", "sales"] {
            let column = batch.column_by_name(column).with_context(|| format!("column {column} missing"))?;
            total += column.as_primitive::<UInt64Type>().iter().flatten().sum::<u64>();
        }
    }
    Ok(total)
}
