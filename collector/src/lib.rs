//! The EdgeTally edge collector.
//!
//! It answers pixels, clicks, postbacks and event posts over HTTP, parses
//! them ([`ingest`]), mints and verifies signed click IDs against the
//! campaign snapshot ([`campaigns`], [`click_keys`]), validates with the
//! protocol's rules, counts per `(minute, affiliate_id, campaign_id, sub1)`
//! in memory ([`tally`]) and ships sealed batches to the aggregator over
//! QUIC (`uplink`). It links no query
//! engine and no Flight server: edge hosts are small and many.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

pub mod campaigns;
pub mod click_keys;
pub mod dedup;
mod http;
pub mod ingest;
mod metrics;
pub mod tally;
mod throttle;
pub mod tls;
mod uplink;
mod visitor;

pub use campaigns::Campaigns;
use dedup::Dedup;
pub use dedup::DedupConfig;
pub use edgetally_protocol::ClickKeys;
pub use http::{OUTCOME_HEADER, PIXEL_GIF};
pub use tally::TallyLimits;
pub use uplink::UplinkError;

/// Default flush interval: a batch is sealed four times a second, so a
/// pixel reaches the aggregator well within a second.
pub const FLUSH_INTERVAL_DEFAULT: Duration = Duration::from_millis(250);

/// Default largest `POST /v1/events` body: 1 MiB holds thousands of events,
/// and bounds the memory of one request.
pub const BODY_BYTES_MAX_DEFAULT: usize = 1024 * 1024;

/// Default most open connections: a collector's file descriptor limit is
/// set well above it, and each idle keep-alive connection costs a few KiB.
pub const CONNECTIONS_MAX_DEFAULT: usize = 10_000;

/// Default most requests in flight: far above what two cores finish in a
/// second's worth of queueing at pixel latencies, and each holds at most a
/// body (1 MiB by default) in memory, which bounds request memory.
pub const REQUESTS_IN_FLIGHT_MAX_DEFAULT: usize = 4_096;

/// Default longest request target: 8 KiB, as common proxies allow; real
/// pixels and postbacks are under 1 KiB.
pub const URL_BYTES_MAX_DEFAULT: usize = 8 * 1024;

/// Default time for a request head, and for an idle keep-alive connection:
/// slow-loris clients hold a connection slot each, and ten seconds is ample
/// for real clients.
pub const HEADER_READ_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Config {
    pub http_listen: SocketAddr,
    pub aggregator_addr: SocketAddr,
    /// PEM file with the certificate (or its CA) that the aggregator's QUIC
    /// endpoint presents.
    pub aggregator_cert: PathBuf,
    pub aggregator_server_name: String,
    pub edge_id: u32,
    pub flush_interval: Duration,
    pub body_bytes_max: usize,
    pub tally_limits: TallyLimits,
    /// Campaign landing URLs and attribution windows.
    pub campaigns: Campaigns,
    /// Keys that sign and verify click IDs.
    pub click_keys: ClickKeys,
    /// The dedup window of order IDs, click IDs and event IDs.
    pub dedup: DedupConfig,
    /// The window in which a visitor's repeated clicks on one affiliate's
    /// campaign are not unique.
    pub uniques: DedupConfig,
    /// Header with the client IP set by a trusted load balancer in front.
    pub client_ip_header: Option<::http::HeaderName>,
    /// Requests per second and burst allowed per client IP; `None` for no
    /// limit (the right choice behind a load balancer without
    /// `client_ip_header`, where every request comes from one address).
    pub ip_rate: Option<(NonZeroU32, NonZeroU32)>,
    /// Certificate chain and key (PEM) to serve HTTPS; plain HTTP without.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Most open HTTP connections; more are answered `503` and closed.
    pub connections_max: usize,
    /// Most requests handled at once (bodies being read included); more are
    /// shed with `503` and `Retry-After` (pixels: the GIF, uncounted).
    pub requests_in_flight_max: usize,
    /// Longest request target (path and query) in bytes; longer gets `414`.
    pub url_bytes_max: usize,
    /// How long a client may take to send a request head; also how long an
    /// idle keep-alive connection is kept.
    pub header_read_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding http listener on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("uplink: {0}")]
    Uplink(#[from] UplinkError),
    #[error("tls: {0}")]
    Tls(#[from] tls::TlsError),
}

/// Resolves once `shutdown` turns true (or its sender is gone), without
/// holding the watch guard across an await.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// A running collector.
pub struct Collector {
    http_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    http_task: JoinHandle<()>,
    uplink_task: JoinHandle<()>,
}

// === impl Collector ===

impl Collector {
    pub async fn start(config: Config) -> Result<Collector, Error> {
        let listener = TcpListener::bind(config.http_listen)
            .await
            .map_err(|source| Error::Bind { addr: config.http_listen, source })?;
        let http_addr = listener.local_addr().map_err(|source| Error::Bind { addr: config.http_listen, source })?;
        // The epoch only has to grow across restarts of one edge; start time
        // in milliseconds does, short of a clock set back.
        let epoch = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |elapsed| elapsed.as_millis() as u64);
        let uplink = uplink::Uplink::new(uplink::UplinkConfig {
            aggregator_addr: config.aggregator_addr,
            aggregator_cert: &config.aggregator_cert,
            aggregator_server_name: config.aggregator_server_name.clone(),
            edge_id: config.edge_id,
            epoch,
            flush_interval: config.flush_interval,
        })?;
        let tls = match &config.tls {
            Some((cert, key)) => Some(tls::acceptor(cert, key)?),
            None => None,
        };
        let tally = Arc::new(tally::Tally::new(config.tally_limits));
        let metrics = Arc::new(metrics::Metrics::new());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let ingress = Arc::new(http::Ingress {
            tally: tally.clone(),
            metrics: metrics.clone(),
            body_bytes_max: config.body_bytes_max,
            edge_id: config.edge_id,
            campaigns: config.campaigns,
            click_keys: config.click_keys,
            dedup: Dedup::new(config.dedup),
            uniques: Dedup::new(config.uniques),
            visitors: visitor::VisitorHasher::new(),
            client_ip_header: config.client_ip_header,
            throttle: config
                .ip_rate
                .map(|(per_second, burst)| throttle::Throttle::new(per_second, burst, throttle::TRACKED_MAX_DEFAULT)),
            connections: Arc::new(Semaphore::new(config.connections_max)),
            connections_max: config.connections_max,
            requests: Arc::new(Semaphore::new(config.requests_in_flight_max)),
            url_bytes_max: config.url_bytes_max,
            header_read_timeout: config.header_read_timeout,
        });
        let http_task = tokio::spawn(http::serve(listener, ingress, tls, shutdown_rx.clone()));
        let uplink_task = tokio::spawn(uplink.run(tally, metrics, shutdown_rx));
        tracing::info!(http = %http_addr, edge_id = config.edge_id, epoch, aggregator = %config.aggregator_addr, "Collector started.");
        Ok(Collector { http_addr, shutdown, http_task, uplink_task })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Stops accepting, lets in-flight requests finish, then ships what is
    /// left for a bounded time.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.http_task.await;
        let _ = self.uplink_task.await;
    }
}
