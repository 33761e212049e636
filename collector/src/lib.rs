//! The EdgeTally edge collector.
//!
//! It answers pixels, clicks, postbacks and event posts over HTTP, parses
//! them ([`ingest`]), mints and verifies signed click IDs against the
//! campaign snapshot ([`campaigns`], [`click_keys`]), validates with the
//! protocol's rules, counts per `(minute, affiliate_id, campaign_id, sub1)`
//! in memory ([`tally`]) and ships sealed batches to the aggregator over
//! QUIC (`uplink`). It links no query
//! engine and no Flight server: edge hosts are small and many.

use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

mod catalog;
pub mod click_keys;
pub mod dedup;
mod fraud;
mod http;
pub mod ingest;
mod journal;
mod metrics;
pub mod spool;
pub mod tally;
mod throttle;
pub mod tls;
mod uplink;
mod visitor;

use dedup::Dedup;
pub use dedup::DedupConfig;
pub use edgetally_protocol::campaigns::{self, Campaigns};
pub use edgetally_protocol::{ClickKeys, Flag};
pub use fraud::{CLICK_FLOOD_PER_MINUTE_DEFAULT, FRAUD_RULES_DEFAULT};
pub use http::{OUTCOME_HEADER, PIXEL_GIF};
pub use journal::{JOURNAL_BYTES_MAX_DEFAULT, JournalError};
#[doc(hidden)]
pub use journal::{fuzz_seed_segment as fuzz_journal_seed, fuzz_segment as fuzz_journal_segment};
pub use spool::{SpoolError, SpoolIo};
pub use tally::TallyLimits;
pub use uplink::UplinkError;

/// Default flush interval: a batch is sealed four times a second, so a
/// pixel reaches the aggregator well within a second.
pub const FLUSH_INTERVAL_DEFAULT: Duration = Duration::from_millis(250);

/// Default rollup interval: the traffic counters ship once a minute, when
/// the minute closes, so each key of each minute crosses the wire once per
/// edge; conversions and their counts still ship every flush. See
/// `uplink.rs` for the trade.
pub const ROLLUP_INTERVAL_DEFAULT: Duration = Duration::from_secs(60);

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

/// Default spool bound: at a few bytes per event, hours of an aggregator
/// outage at full load.
pub const SPOOL_BYTES_MAX_DEFAULT: u64 = 1024 * 1024 * 1024;

/// Default most batches sent and not yet acknowledged: enough to keep a
/// link with a 100 ms round trip busy at four seals a second, with room for
/// the backlog of an outage to drain quickly.
pub const UPLINK_WINDOW_DEFAULT: usize = 8;

#[derive(Debug, Clone)]
pub struct Config {
    /// Holds the spool, the journal, the epoch file and the lock that keeps
    /// a second collector off them.
    pub data_dir: PathBuf,
    /// Bound of the spool on disk; when full, sealing waits and counts stay
    /// in memory.
    pub spool_bytes_max: u64,
    /// Bound of the journal on disk.
    pub journal_bytes_max: u64,
    /// How the spool writes and syncs.
    pub spool_io: SpoolIo,
    /// Most batches sent and not yet acknowledged.
    pub uplink_window: usize,
    pub http_listen: SocketAddr,
    /// Threads serving HTTP, each with its own single-threaded runtime and
    /// its own listening socket on `http_listen` (`SO_REUSEPORT`: the kernel
    /// spreads connections), as nginx runs one worker per core. 0 serves
    /// HTTP on the caller's runtime instead.
    pub http_workers: usize,
    pub aggregator_addr: SocketAddr,
    /// PEM file with the certificate (or its CA) that the aggregator's QUIC
    /// endpoint presents.
    pub aggregator_cert: PathBuf,
    pub aggregator_server_name: String,
    pub edge_id: u32,
    /// The token this edge presents to the aggregator (empty: none).
    pub edge_token: Vec<u8>,
    pub flush_interval: Duration,
    /// How often the traffic counters ship (at multiples of it since the
    /// Unix epoch); at or below `flush_interval`, with every flush.
    pub rollup_interval: Duration,
    pub body_bytes_max: usize,
    pub tally_limits: TallyLimits,
    /// Campaign landing URLs and attribution windows, used until the
    /// aggregator sends its own (and only when none was kept from an
    /// earlier run).
    pub campaigns: Campaigns,
    /// Keys that sign and verify click IDs.
    pub click_keys: ClickKeys,
    /// The dedup window of order IDs, click IDs and event IDs.
    pub dedup: DedupConfig,
    /// The window in which a visitor's repeated clicks on one affiliate's
    /// campaign are not unique.
    pub uniques: DedupConfig,
    /// The fraud rules in force (see `fraud.rs`).
    pub fraud_rules: Vec<Flag>,
    /// Clicks a visitor may make in a UTC minute before the rest are
    /// flagged `click_flood`; 0 for no limit.
    pub click_flood_per_minute: u32,
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
    /// Answer HTTP/1.1 keep-alive pixels (`GET /p.gif`, `/cv.gif`), plain
    /// or TLS without HTTP/2 chosen, in a lean loop over `httparse` instead
    /// of hyper; any other request hands its connection to hyper.
    pub lean_pixels: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding http listener on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("uplink: {0}")]
    Uplink(#[from] UplinkError),
    #[error("tls: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("{0}")]
    Spool(#[from] SpoolError),
    #[error("{0}")]
    Journal(#[from] JournalError),
    #[error("data dir {path}: {reason}")]
    DataDir { path: String, reason: String },
}

/// Binds `n` listening sockets on `addr` with `SO_REUSEPORT`; with port 0,
/// the first picks the port and the others join it. The collector's HTTP
/// workers each serve one (and `bare-gif` the same way, so the baseline
/// runs the same model).
pub fn bind_http(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut listeners: Vec<std::net::TcpListener> = Vec::with_capacity(n);
    for _ in 0..n {
        let addr = listeners.first().map_or(Ok(addr), std::net::TcpListener::local_addr)?;
        let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(HTTP_BACKLOG)?;
        listeners.push(socket.into());
    }
    Ok(listeners)
}

/// Pending connections per listening socket before the kernel refuses
/// more: a burst of reconnecting clients after a restart fits.
const HTTP_BACKLOG: i32 = 4096;

/// Starts one thread per listener, each serving it on a single-threaded
/// runtime: requests never hop between threads, which on a busy edge costs
/// more than the work of a pixel. Returns a task that ends when they all do.
fn spawn_http_workers(
    listeners: Vec<std::net::TcpListener>,
    ingress: &Arc<http::Ingress>,
    tls: Option<&tls::Tls>,
    shutdown: &watch::Receiver<bool>,
) -> std::io::Result<JoinHandle<()>> {
    let mut finished = Vec::with_capacity(listeners.len());
    for (worker_idx, listener) in listeners.into_iter().enumerate() {
        let (done, finished_rx) = tokio::sync::oneshot::channel::<()>();
        let (ingress, tls, shutdown) = (ingress.clone(), tls.map(|tls| tls.acceptor().clone()), shutdown.clone());
        std::thread::Builder::new().name(format!("http-{worker_idx}")).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(error) => {
                    tracing::error!(%error, worker_idx, "HTTP worker could not start its runtime.");
                    return;
                }
            };
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => http::serve(listener, ingress, tls, shutdown).await,
                    Err(error) => tracing::error!(%error, worker_idx, "HTTP worker could not use its listener."),
                }
            });
            // Dropping `done` tells the collector this worker is finished.
            drop(done);
        })?;
        finished.push(finished_rx);
    }
    Ok(tokio::spawn(async move {
        for finished in finished {
            // Only ever dropped, never sent: the error is the signal.
            let _ = finished.await;
        }
    }))
}

/// Checks that the aggregator's certificate file holds certificates the
/// uplink can trust (`--check-config`).
pub fn check_aggregator_cert(path: &Path) -> Result<(), UplinkError> {
    uplink::trust_roots(path).map(drop)
}

/// Unix time in milliseconds (0 for a clock before 1970).
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Takes the data directory's lock: two collectors on one spool and journal
/// would ship each other's batches and corrupt the journal's mappings.
fn lock_data_dir(data_dir: &Path) -> Result<File, Error> {
    let path = data_dir.join("collector.lock");
    let error = |reason: String| Error::DataDir { path: data_dir.display().to_string(), reason };
    std::fs::create_dir_all(data_dir).map_err(|source| error(source.to_string()))?;
    let file = File::create(&path).map_err(|source| error(format!("{}: {source}", path.display())))?;
    file.try_lock().map_err(|_| error("in use by another collector (collector.lock is held)".into()))?;
    Ok(file)
}

/// The edge's epoch for this run: one more than the last run's, and never
/// below the current time in milliseconds, so a collector whose data
/// directory was lost still starts above any epoch the aggregator knows.
fn next_epoch(data_dir: &Path) -> Result<u64, Error> {
    let path = data_dir.join("epoch");
    let error = |reason: String| Error::DataDir { path: path.display().to_string(), reason };
    let last = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u64>().map_err(|_| error(format!("not a number: {:?}", text.trim())))?,
        Err(source) if source.kind() == std::io::ErrorKind::NotFound => 0,
        Err(source) => return Err(error(source.to_string())),
    };
    let epoch = (last + 1).max(unix_ms());
    write_atomic(&path, format!("{epoch}\n").as_bytes(), 0o644).map_err(|source| error(source.to_string()))?;
    Ok(epoch)
}

/// Replaces `path` with `contents` so that a crash leaves the old file or
/// the new one, never a mix: a synced temporary file with `mode` is renamed
/// over it and the directory synced, so the new name survives too.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let temp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&temp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&temp, path)?;
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Resolves once `shutdown` turns true (or its sender is gone), without
/// holding the watch guard across an await.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// A running collector.
pub struct Collector {
    /// Held (locked) for the collector's life.
    _data_dir_lock: File,
    http_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    http_task: JoinHandle<()>,
    uplink_task: JoinHandle<()>,
    /// The HTTP listener's TLS, whose certificate a reload replaces.
    tls: Option<tls::Tls>,
    catalog: Arc<catalog::Catalog>,
}

// === impl Collector ===

impl Collector {
    pub async fn start(config: Config) -> Result<Collector, Error> {
        let mut listeners = bind_http(config.http_listen, config.http_workers.max(1))
            .map_err(|source| Error::Bind { addr: config.http_listen, source })?;
        let http_addr = listeners[0].local_addr().map_err(|source| Error::Bind { addr: config.http_listen, source })?;
        let data_dir_lock = lock_data_dir(&config.data_dir)?;
        let epoch = next_epoch(&config.data_dir)?;
        let metrics = Arc::new(metrics::Metrics::new());
        let (spool, spool_recovery) =
            spool::Spool::open(&config.data_dir.join("spool"), config.spool_bytes_max, config.spool_io)?;
        let (journal, replay, journal_recovery) = journal::Journal::open(
            &config.data_dir.join("journal"),
            journal::SEGMENT_BYTES_DEFAULT,
            config.journal_bytes_max,
            spool_recovery.through,
        )?;
        metrics.spool_recovered_frames.inc_by(spool_recovery.frames);
        metrics.spool_corrupt_records.inc_by(spool_recovery.corrupt);
        metrics.spool_torn_tails.inc_by(spool_recovery.torn);
        metrics.journal_replayed.inc_by(journal_recovery.replayed);
        metrics.journal_unreadable.inc_by(journal_recovery.unreadable);
        metrics.journal_rows_spooled.inc_by(journal_recovery.rows_spooled);
        if spool_recovery != spool::Recovery::default() || journal_recovery.replayed > 0 {
            tracing::info!(
                spooled_frames = spool_recovery.frames,
                spool_corrupt = spool_recovery.corrupt,
                spool_torn = spool_recovery.torn,
                journal_replayed = journal_recovery.replayed,
                journal_rows_spooled = journal_recovery.rows_spooled,
                "Recovered what the last run left unshipped."
            );
        }
        let tally = Arc::new(tally::Tally::with_journal(config.tally_limits, journal, replay));
        let catalog = Arc::new(catalog::Catalog::open(&config.data_dir, config.campaigns));
        let uplink = uplink::Uplink::new(uplink::UplinkConfig {
            aggregator_addr: config.aggregator_addr,
            aggregator_cert: &config.aggregator_cert,
            aggregator_server_name: config.aggregator_server_name.clone(),
            edge_id: config.edge_id,
            edge_token: config.edge_token.clone(),
            catalog: catalog.clone(),
            epoch,
            flush_interval: config.flush_interval,
            rollup_interval: config.rollup_interval,
            spool,
            window: config.uplink_window,
            batch_rows_max: config.tally_limits.batch_rows_max,
        })?;
        let tls = match &config.tls {
            Some((cert, key)) => Some(tls::Tls::load(cert, key)?),
            None => None,
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let ingress = Arc::new(http::Ingress {
            tally: tally.clone(),
            metrics: metrics.clone(),
            body_bytes_max: config.body_bytes_max,
            edge_id: config.edge_id,
            campaigns: catalog.clone(),
            click_keys: config.click_keys,
            dedup: Dedup::new(config.dedup),
            uniques: Dedup::new(config.uniques),
            visitors: visitor::VisitorHasher::new(),
            rules: fraud::Rules::new(&config.fraud_rules, config.click_flood_per_minute),
            client_ip_header: config.client_ip_header,
            throttle: config
                .ip_rate
                .map(|(per_second, burst)| throttle::Throttle::new(per_second, burst, throttle::TRACKED_MAX_DEFAULT)),
            connections: Arc::new(Semaphore::new(config.connections_max)),
            connections_max: config.connections_max,
            requests: http::InFlight::new(config.requests_in_flight_max),
            url_bytes_max: config.url_bytes_max,
            header_read_timeout: config.header_read_timeout,
            lean_pixels: config.lean_pixels,
        });
        let http_task = if config.http_workers == 0 {
            let listener = listeners.pop().expect("one listener was bound");
            let listener =
                TcpListener::from_std(listener).map_err(|source| Error::Bind { addr: config.http_listen, source })?;
            let acceptor = tls.as_ref().map(|tls| tls.acceptor().clone());
            tokio::spawn(http::serve(listener, ingress, acceptor, shutdown_rx.clone()))
        } else {
            spawn_http_workers(listeners, &ingress, tls.as_ref(), &shutdown_rx)
                .map_err(|source| Error::Bind { addr: config.http_listen, source })?
        };
        let uplink_task = tokio::spawn(uplink.run(tally, metrics, shutdown_rx));
        tracing::info!(http = %http_addr, edge_id = config.edge_id, epoch, aggregator = %config.aggregator_addr, "Collector started.");
        Ok(Collector { _data_dir_lock: data_dir_lock, http_addr, shutdown, http_task, uplink_task, tls, catalog })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The HTTP listener's TLS, when it serves HTTPS.
    pub fn tls(&self) -> Option<&tls::Tls> {
        self.tls.as_ref()
    }

    /// Puts the campaigns of the local `--campaigns` file in use, unless the
    /// aggregator has sent a snapshot (which is the source of truth and
    /// wins). Returns whether they were put in use.
    pub fn reload_campaigns(&self, campaigns: Campaigns) -> bool {
        self.catalog.replace_local(campaigns)
    }

    /// Stops accepting, lets in-flight requests finish, then ships what is
    /// left for a bounded time.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.http_task.await;
        let _ = self.uplink_task.await;
    }
}
