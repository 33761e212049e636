//! `run`: drives the mix against one or more collectors, prints the report,
//! and writes the ledger that `verify` checks. With `--flight` it follows
//! the aggregator's conversions from before the first request to after
//! the last, for the freshness figure (`freshness.rs`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::freshness::Tracker;
use crate::load::{LoadConfig, Progress};
use crate::mix::MixArgs;
use crate::report::{Report, drained, scrape};

#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// Collector base URL (http:// or, with --tls-ca, https://); repeat or
    /// separate with commas to spread the connections over several edges.
    #[arg(long = "target", value_delimiter = ',', default_value = "http://127.0.0.1:8080")]
    targets: Vec<String>,
    /// Requests per second, open loop (latency from intended send times).
    #[arg(long, conflicts_with = "max")]
    rate: Option<f64>,
    /// Closed loop: every connection sends its next request as soon as the
    /// previous one is answered, to find peak throughput.
    #[arg(long)]
    max: bool,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Stop after this many requests, whichever comes first.
    #[arg(long)]
    requests: Option<u64>,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Open loop: meet each intended send time to the microsecond by
    /// yielding through its last millisecond instead of sleeping (tokio's
    /// timer is millisecond-grained). Keeps the generator's thread busy:
    /// for a generator on a core of its own (taskset).
    #[arg(long, requires = "rate")]
    precise_timer: bool,
    /// Speak HTTP/2 (prior knowledge, no TLS) instead of HTTP/1.1.
    #[arg(long)]
    http2: bool,
    /// Concurrent requests per HTTP/2 connection.
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// Worker threads of the generator.
    #[arg(long, default_value_t = 1)]
    pub(crate) threads: usize,
    /// Per-request time-out in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    timeout_ms: u64,
    /// Seed of every random draw; the same seed sends the same traffic.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where to write the ground-truth ledger.
    #[arg(long, default_value = "edgetally-ledger.json")]
    ledger: PathBuf,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// PEM certificates that verify https:// targets (their certificate or
    /// its CA).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Do not read the collectors' metrics (for targets that are not
    /// EdgeTally collectors; always off for https:// targets).
    #[arg(long)]
    no_metrics: bool,
    /// After the last request, wait up to this many seconds for the
    /// collectors to ship everything the run counted before reading the
    /// bytes they shipped: the traffic counters leave at their rollup
    /// interval (a minute by default).
    #[arg(long, default_value_t = 75)]
    drain_secs: u64,
    /// Flight endpoint of the aggregator the targets ship to: follow its
    /// conversions and report freshness (from a lead's or sale's send to its
    /// row in the follow stream).
    #[arg(long, env = "EDGETALLY_FLIGHT_URL")]
    flight: Option<String>,
    /// With --flight, the bearer token for the aggregator's Flight port.
    #[arg(long, env = crate::query::ENV_FLIGHT_TOKEN, hide_env_values = true)]
    flight_token: Option<String>,
    /// With --flight, how long after the last request to wait for accepted
    /// conversions not yet seen in the follow stream.
    #[arg(long, default_value_t = 5.0)]
    freshness_wait_secs: f64,
    #[command(flatten)]
    mix: MixArgs,
}

/// Turns `http[s]://host:port[/]` into `host:port` and whether it is https.
pub(crate) fn authority(target: &str) -> anyhow::Result<(String, bool)> {
    let uri: http::Uri = target.parse().with_context(|| format!("bad target {target:?}"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => anyhow::bail!("target {target:?} must be an http:// or https:// URL"),
    };
    let authority = uri.authority().with_context(|| format!("target {target:?} has no host"))?;
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    Ok((format!("{}:{port}", authority.host()), https))
}

pub(crate) async fn run(args: RunArgs) -> anyhow::Result<()> {
    let parsed = args.targets.iter().map(|target| authority(target)).collect::<anyhow::Result<Vec<_>>>()?;
    let https = parsed.iter().any(|(_, https)| *https);
    anyhow::ensure!(parsed.iter().all(|(_, each)| *each == https), "targets must all be http:// or all https://");
    let targets: Vec<String> = parsed.into_iter().map(|(authority, _)| authority).collect();
    let tls = match (&args.tls_ca, https) {
        (Some(ca), true) => Some(crate::load::tls_connector(ca, args.http2)?),
        (None, true) => anyhow::bail!("https:// targets need --tls-ca with the certificates that verify them"),
        (_, false) => None,
    };
    let no_metrics = args.no_metrics;
    let drain_secs = args.drain_secs;
    // Metrics are read over the load's transport, always HTTP/1.1.
    let scrape_tls = match (&args.tls_ca, https) {
        (Some(ca), true) => Some(crate::load::tls_connector(ca, false)?),
        _ => None,
    };
    anyhow::ensure!(args.max || args.rate.is_some(), "choose --rate <requests/s> (open loop) or --max (closed loop)");
    let freshness_wait = Duration::try_from_secs_f64(args.freshness_wait_secs)
        .with_context(|| format!("bad --freshness-wait-secs {}", args.freshness_wait_secs))?;
    // Followed before the first request, so every conversion is in the stream.
    let freshness = match &args.flight {
        Some(flight_url) => {
            let tracker = Arc::new(Tracker::new());
            crate::freshness::follow(flight_url, args.flight_token.as_deref(), tracker.clone())
                .await
                .context("following the aggregator")?;
            Some(tracker)
        }
        None => None,
    };
    let config = LoadConfig {
        targets: targets.clone(),
        connections: args.connections,
        streams: args.streams,
        http2: args.http2,
        rate: args.rate,
        precise_timer: args.precise_timer,
        duration: Some(Duration::from_secs_f64(args.duration_secs)),
        requests_max: args.requests,
        timeout: Duration::from_millis(args.timeout_ms),
        seed: args.seed,
        mix: args.mix.clone(),
        tls,
        freshness: freshness.clone(),
    };
    let before = if no_metrics {
        None
    } else {
        Some(scrape(&targets, scrape_tls.as_ref()).await.context("reading collector metrics")?)
    };
    let progress = Arc::new(Progress::default());
    let (stop_tx, stop) = watch::channel(false);
    let ticker = tokio::spawn(progress_line(progress.clone()));
    let interrupt = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = stop_tx.send(true);
        }
    });
    let outcome = crate::load::run(&config, progress, stop).await?;
    let freshness_deadline = tokio::time::Instant::now() + freshness_wait;
    ticker.abort();
    interrupt.abort();
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    let after = if no_metrics {
        None
    } else {
        // Bytes shipped per event count once the collectors have shipped
        // what the run sent, traffic counters included: they leave at the
        // collectors' rollup interval (a minute by default).
        if std::io::stderr().is_terminal() {
            eprintln!("waiting for the collectors to ship what they counted (up to {} s)", drain_secs);
        }
        let limit = Duration::from_secs(drain_secs);
        Some(drained(&targets, scrape_tls.as_ref(), limit).await.context("reading collector metrics")?)
    };
    let freshness = match freshness {
        Some(tracker) => {
            tracker.wait_seen(freshness_deadline).await;
            Some(tracker.report())
        }
        None => None,
    };
    outcome.ledger.write(&args.ledger)?;
    let report = Report::new(&outcome, args.rate, before, after, freshness);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
        println!("ledger     {}", args.ledger.display());
    }
    Ok(())
}

/// A live progress line on a terminal, once a second.
async fn progress_line(progress: Arc<Progress>) {
    if !std::io::stderr().is_terminal() {
        return;
    }
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_answered = 0;
    loop {
        tick.tick().await;
        let answered = progress.answered.load(Ordering::Relaxed);
        eprint!(
            "\r{:>5.0} s  answered {answered:>10}  failed {:>8}  accepted events {:>10}  {:>8}/s ",
            start.elapsed().as_secs_f64(),
            progress.failed.load(Ordering::Relaxed),
            progress.accepted_events.load(Ordering::Relaxed),
            answered - last_answered,
        );
        last_answered = answered;
    }
}
