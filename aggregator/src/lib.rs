//! The center of EdgeTally: receives edge batches over QUIC and serves
//! rollups over Arrow Flight.
//!
//! This crate owns the QUIC server identity (`cert`), the ingest of
//! `BatchFrame`s with exactly-once application per edge (`ingest`), the
//! write-ahead log every batch is committed to before it is applied and
//! acknowledged (`wal`), the checkpoints that let the log be truncated
//! (`snapshot`: a manifest of sealed Parquet partitions by UTC day,
//! `partition`), the in-memory rollups and conversions (`store`),
//! what a Flight ticket asks for (`ticket`, `query`), the Flight server
//! that answers it (`flight_service`), the Flight SQL server on a port of
//! its own (`flight_sql`, DataFusion over the same datasets), who may call
//! them and read what (`auth`), the follow streams of what is applied next (`follow`), the edges' tokens (`edges`, kept as hashes by
//! `token_hash`), the campaigns
//! served to them (`catalog`), and the operations HTTP listener with
//! `/metrics` and `/healthz` (`http`, `metrics`), and the live web
//! dashboard on that listener (`dashboard`). [`Aggregator::start`]
//! loads the manifest and its partitions, replays the log after it and
//! wires them together; `main.rs` is a thin command-line shell around it.

mod admin;
mod alerts;
pub use alerts::EDGE_SILENT_SECS_DEFAULT;
mod auth;
mod catalog;
mod cert;
mod dashboard;
pub use dashboard::{DashboardConfig, ExchangeRates, REPORT_TZ_DEFAULT, RatesError};
mod edges;
mod flight_service;
mod flight_sql;
mod follow;
mod http;
mod ingest;
mod ledger;
mod metrics;
mod partition;
mod query;
mod snapshot;
mod store;
mod ticket;
mod token_hash;
mod wal;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use admin::AdminError;
pub use auth::{FLIGHT_TOKEN_LEN_MIN, FlightAuth, FlightAuthError};
pub use catalog::CatalogError;
pub use cert::CertError;
pub use edges::{EDGE_TOKEN_LEN_MIN, EdgeTokens, EdgeTokensError};
pub use partition::PartitionError;
#[doc(hidden)]
pub use snapshot::seed as seed_data_dir;
pub use snapshot::{DecodeError as SnapshotDecodeError, SnapshotError};
pub use wal::WalError;
#[doc(hidden)]
pub use wal::recover_payloads as wal_recover_payloads;

/// How long [`Aggregator::shutdown`] waits for each of QUIC, Flight and
/// Flight SQL to
/// drain before it drops what is left. Edges resend anything unacknowledged,
/// and a Flight client retries, so waiting longer only delays a restart.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How an aggregator is started.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the generated QUIC certificate and key, the write-ahead log
    /// (`wal/`), the sealed partitions
    /// (`parquet/<dataset>/day=YYYY-MM-DD/part-<generation>.parquet`) and
    /// the manifest listing them (`snapshot.bin`) live.
    pub data_dir: PathBuf,
    pub quic_listen: SocketAddr,
    pub flight_listen: SocketAddr,
    /// TCP address for Flight SQL (read-only SQL over the same datasets,
    /// with the same tokens as Flight).
    pub flight_sql_listen: SocketAddr,
    /// TCP address for `/metrics` and `/healthz`.
    pub http_listen: SocketAddr,
    /// PEM certificate chain for QUIC; with `tls_key`, replaces the
    /// self-signed certificate kept in `data_dir`.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Extra DNS names or IP addresses for a generated certificate, besides
    /// `localhost`, `127.0.0.1` and `::1`.
    pub tls_names: Vec<String>,
    /// fsync the write-ahead log before acknowledging (default true). With
    /// false a batch is acknowledged once written to the kernel: that
    /// survives a crash of the process, not a power loss or kernel crash.
    pub wal_fsync: bool,
    /// Once the log's live segments hold more than this many bytes, the
    /// store is checkpointed and the segments it covers deleted.
    pub snapshot_wal_bytes: u64,
    /// UTC days kept before today: at each checkpoint, days before today
    /// minus this many are dropped from memory and disk, and rows of them
    /// that arrive later are dropped (counted). `None` keeps every day.
    /// The command line's default is [`RETENTION_DAYS_DEFAULT`].
    pub retention_days: Option<u32>,
    /// How long an edge that has shipped may send nothing before the
    /// `alerts` dataset reports it silent; `None` reports no edge.
    pub edge_silent: Option<Duration>,
    /// The edges allowed to ship and their tokens; `None` accepts every
    /// edge that trusts the certificate (logged as a warning at start).
    pub edge_tokens: Option<EdgeTokens>,
    /// The campaign snapshot served to edges (JSON, as edges read it),
    /// watched for changes; `None`: edges use their own `--campaigns`.
    pub campaigns: Option<PathBuf>,
    /// Who may call Arrow Flight, and as what role; `None` lets every
    /// caller read everything (logged as a warning at start).
    pub flight_auth: Option<FlightAuth>,
    /// The certificate and key Flight and Flight SQL serve TLS with
    /// (TLS 1.2 and 1.3, ALPN `h2`); `None` serves them in plain text,
    /// for a loopback or a private network only.
    pub flight_tls: Option<TlsFiles>,
    /// The web dashboard's time zone and reporting currency.
    pub dashboard: DashboardConfig,
}

/// A PEM certificate chain and its PEM private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The default `snapshot_wal_bytes`. Replay reads the log at start at a few
/// hundred MiB/s, so 64 MiB keeps a restart within a second or so, while a
/// snapshot (the whole store, compressed) is written at most once per
/// 64 MiB of batches.
pub const SNAPSHOT_WAL_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;

/// The default `retention_days` of the command line: 400 days, a little
/// over 13 months, so finance can always compare a month with the same
/// month a year before and settle disputes about it, while the store stays
/// bounded. Payouts and chargebacks of affiliate networks settle within
/// weeks, far inside it.
pub const RETENTION_DAYS_DEFAULT: u32 = 400;

/// Snapshot requests waiting: one pending is enough, since a snapshot
/// covers everything logged before it starts.
const SNAPSHOT_DUE_QUEUE_MAX: usize = 1;

/// The write-ahead log's directory, in the data directory.
const WAL_DIR_NAME: &str = "wal";

/// Counters of what the aggregator did since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Batches received and applied, skipped (at or below their edge's
    /// high-water mark) and refused (malformed), since start.
    pub batches_applied: u64,
    pub batches_skipped: u64,
    pub batches_refused: u64,
    /// Edge connections refused: unknown edge, wrong token or no hello.
    pub edges_refused: u64,
    pub rollup_rows_applied: u64,
    pub conversion_rows_applied: u64,
    /// Log records read back at start and offered to the store (applied,
    /// or skipped as already in the snapshot).
    pub wal_records_replayed: u64,
    /// Log records found damaged or undecodable at start, and skipped.
    pub wal_records_corrupt: u64,
    /// Interrupted appends truncated away at start.
    pub wal_torn_tails: u64,
    /// Snapshots written since start (each truncates the log).
    pub snapshots_written: u64,
    /// Parquet partition files the manifest lists, and their bytes.
    pub partitions: u64,
    pub partition_bytes: u64,
    /// Distinct UTC days dropped by retention since start.
    pub retention_days_dropped: u64,
    /// Rows of applied batches (and of replay) that fell on days already
    /// dropped by retention, and were dropped, since start.
    pub retention_late_rows_dropped: u64,
    /// Bytes of the log's live segments.
    pub wal_bytes: u64,
    pub wal_fsyncs: u64,
    pub wal_fsync_p50_us: u64,
    pub wal_fsync_p99_us: u64,
    pub wal_fsync_max_us: u64,
    /// Flight follow streams open now.
    pub followers: u64,
    /// Follow streams cut off since start because they fell behind.
    pub followers_lagged: u64,
    /// Flight calls refused since start: no, wrong or expired token, and
    /// a role that may not make the call or read what it asked for.
    pub flight_refused_unauthenticated: u64,
    pub flight_refused_permission_denied: u64,
    /// Flight SQL queries planning or running now, and those refused since
    /// start because the most allowed at once were.
    pub flight_sql_queries: u64,
    pub flight_sql_queries_refused: u64,
    /// Dashboard answers computed, and served again from one computed
    /// at the same data version, since start; answers kept now.
    pub dashboard_answers_computed: u64,
    pub dashboard_answers_shared: u64,
    pub dashboard_cache_entries: u64,
    /// Dashboard live streams open now, and told to resync since start.
    pub dashboard_streams: u64,
    pub dashboard_streams_resynced: u64,
    /// Dashboard calls refused since start: not logged in, not allowed,
    /// and malformed (bad parameter, unknown call).
    pub dashboard_refused_unauthenticated: u64,
    pub dashboard_refused_permission_denied: u64,
    pub dashboard_bad_requests: u64,
}

/// Why an aggregator could not start. Messages leave out their source,
/// which `source()` returns: `main` prints the whole chain.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("create data dir {}", path.display())]
    DataDir { path: PathBuf, source: io::Error },
    #[error("quic certificate")]
    Cert(#[from] CertError),
    #[error("flight tls")]
    FlightTls(#[source] CertError),
    #[error("quic tls config")]
    Tls(#[from] rustls::Error),
    #[error("quic tls config")]
    QuicCrypto(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    #[error("bind quic on {addr}")]
    QuicBind { addr: SocketAddr, source: io::Error },
    #[error("bind flight on {addr}")]
    FlightBind { addr: SocketAddr, source: io::Error },
    #[error("bind flight sql on {addr}")]
    FlightSqlBind { addr: SocketAddr, source: io::Error },
    #[error("flight sql query engine")]
    FlightSqlEngine(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("bind http on {addr}")]
    HttpBind { addr: SocketAddr, source: io::Error },
    #[error("write-ahead log")]
    Wal(#[from] WalError),
    #[error("campaigns")]
    Catalog(#[from] CatalogError),
    #[error("snapshot")]
    Snapshot(#[from] SnapshotError),
    #[error("replay task")]
    Replay(#[from] tokio::task::JoinError),
    #[error("commission rules")]
    Rules(#[source] edgetally_protocol::CampaignsError),
    #[error("log the commission rules")]
    Admin(#[from] admin::AdminError),
    #[error("dashboard: {0}")]
    Dashboard(String),
}

/// Logs and applies every change of the campaigns file as the commission
/// rules in force, until the catalog stops.
async fn follow_rules(mut snapshots: catalog::SnapshotReceiver, wal: Arc<wal::Wal>, store: Arc<store::Store>) {
    while snapshots.changed().await.is_ok() {
        let body = snapshots.borrow_and_update().as_ref().map(|snapshot| snapshot.body.clone()).unwrap_or_default();
        // The catalog only publishes files that parse.
        let rules = match ledger::Rules::parse(body) {
            Ok(rules) => rules,
            Err(error) => {
                warn!(%error, "Campaigns file has unusable commission rules; the previous rules stay.");
                continue;
            }
        };
        if let Err(error) = admin::set_rules(&wal, &store, rules).await {
            warn!(%error, "Commission rules not logged; the previous rules stay until the next change.");
        }
    }
}

/// A running aggregator: both listeners are bound and serving.
pub struct Aggregator {
    quic_addr: SocketAddr,
    flight_addr: SocketAddr,
    flight_sql_addr: SocketAddr,
    http_addr: SocketAddr,
    quic_cert_path: PathBuf,
    flight_tls: bool,
    endpoint: quinn::Endpoint,
    stats: Arc<StatsSource>,
    /// `None` when Flight runs without tokens.
    flight_auth: Option<Arc<auth::FlightTokens>>,
    store: Arc<store::Store>,
    wal: Arc<wal::Wal>,
    checkpointer: Arc<snapshot::Checkpointer>,
    http_shutdown: oneshot::Sender<()>,
    http_task: JoinHandle<()>,
    dashboard_hub_task: JoinHandle<()>,
    snapshot_stop: oneshot::Sender<()>,
    snapshot_task: JoinHandle<()>,
    ingest_task: JoinHandle<()>,
    catalog_task: Option<JoinHandle<()>>,
    rules_task: JoinHandle<()>,
    flight_shutdown: oneshot::Sender<()>,
    flight_task: JoinHandle<Result<(), tonic::transport::Error>>,
    flight_sql_shutdown: oneshot::Sender<()>,
    flight_sql_task: JoinHandle<Result<(), tonic::transport::Error>>,
}

// --- `--check-config`: each file as a start reads it, nothing bound or
// written. ---

/// Checks the campaigns file: the campaigns edges are sent and the
/// commission rules. Returns the number of campaigns.
pub fn check_campaigns(path: &Path) -> Result<usize, Error> {
    let (snapshot, n_campaigns) = catalog::read(path)?;
    ledger::Rules::parse(snapshot.body).map_err(Error::Rules)?;
    Ok(n_campaigns)
}

/// Checks a QUIC certificate chain and key as the QUIC endpoint takes them.
pub fn check_quic_tls(cert: &Path, key: &Path) -> Result<(), Error> {
    quic_server_config(cert, key).map(drop)
}

/// The QUIC endpoint's configuration for a PEM chain and key on disk.
fn quic_server_config(cert: &Path, key: &Path) -> Result<quinn::ServerConfig, Error> {
    let identity = cert::load(cert.to_owned(), key)?;
    ingest::server_config(identity.cert_chain, identity.key)
}

/// Checks that the dashboard's time zone is in the bundled database.
pub fn check_report_tz(name: &str) -> Result<(), Error> {
    query::TimeBuckets::new(query::Granularity::Day, name)
        .map(drop)
        .ok_or_else(|| Error::Dashboard(format!("unknown time zone {name:?}: give an IANA name such as Europe/Berlin")))
}

/// Checks the Flight TLS pair as the Flight ports take it.
pub fn check_flight_tls(files: &TlsFiles) -> Result<(), Error> {
    cert::flight_tls(files).map(drop).map_err(Error::FlightTls)
}

/// What [`Stats`] is read from; shared with the metrics endpoint.
pub(crate) struct StatsSource {
    ingest: Arc<ingest::Ingest>,
    store: Arc<store::Store>,
    pub(crate) wal: Arc<wal::Wal>,
    checkpointer: Arc<snapshot::Checkpointer>,
    replay: ingest::Replay,
    followers: Arc<follow::Followers>,
    flight_refusals: Arc<flight_service::Refusals>,
    flight_sql_queries: Arc<flight_sql::SqlSlots>,
    dashboard: Arc<dashboard::Dashboard>,
}

// === impl Aggregator ===

impl Aggregator {
    /// Loads or creates the QUIC identity, rebuilds the store from the
    /// write-ahead log, binds both listeners and spawns their tasks on the
    /// current tokio runtime.
    pub async fn start(config: Config) -> Result<Aggregator, Error> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| Error::DataDir { path: config.data_dir.clone(), source })?;
        let identity = cert::load_or_generate(&config)?;
        let flight_tls = config.flight_tls.as_ref().map(cert::flight_tls).transpose().map_err(Error::FlightTls)?;

        let wal_dir = config.data_dir.join(WAL_DIR_NAME);
        let (store, replay, partitions) = {
            let (data_dir, wal_dir) = (config.data_dir.clone(), wal_dir.clone());
            // Reading and decoding the snapshot and the log is blocking work.
            tokio::task::spawn_blocking(move || -> Result<_, Error> {
                let (store, wal_from, partitions) = match snapshot::load(&data_dir)? {
                    Some(snapshot) => {
                        info!(
                            wal_from = snapshot.wal_from,
                            n_edges = snapshot.marks.len(),
                            n_partitions = snapshot.partitions.len(),
                            "Snapshot loaded."
                        );
                        let store = store::Store::restore(snapshot.tables, snapshot.marks);
                        (store, snapshot.wal_from, snapshot.partitions)
                    }
                    None => (store::Store::default(), wal::FIRST_SEGMENT, Vec::new()),
                };
                let replay = ingest::replay(&wal_dir, wal_from, &store)?;
                Ok((Arc::new(store), replay, partitions))
            })
            .await??
        };
        info!(
            n_records = replay.recovery.n_records,
            n_applied = replay.n_applied,
            n_skipped = replay.n_skipped,
            n_corrupt = replay.recovery.n_corrupt + replay.n_undecodable,
            n_torn_tails = replay.recovery.n_torn_tails,
            "Write-ahead log replayed."
        );
        // Only now: what replay applied is history, not news.
        store.publish(follow::FOLLOW_QUEUE_MAX);
        // After replay: edges known from the log are measured from here.
        store.watch_edges(config.edge_silent);
        let (snapshot_due, snapshot_due_rx) = mpsc::channel(SNAPSHOT_DUE_QUEUE_MAX);
        let wal_config = wal::WalConfig { fsync: config.wal_fsync, snapshot_wal_bytes: config.snapshot_wal_bytes };
        let wal = Arc::new(wal::Wal::start(
            &wal_dir,
            replay.recovery.next_segment,
            replay.recovery.live_bytes,
            wal_config,
            snapshot_due,
        )?);
        let checkpointer = Arc::new(snapshot::Checkpointer::new(
            config.data_dir.clone(),
            store.clone(),
            wal.clone(),
            config.retention_days,
            partitions,
        ));
        let (snapshot_stop, snapshot_stop_rx) = oneshot::channel();
        let snapshot_task = tokio::spawn(snapshot::run(checkpointer.clone(), snapshot_due_rx, snapshot_stop_rx));

        match &config.edge_tokens {
            Some(tokens) => info!(n_edges = tokens.len(), "Edges authenticate with tokens."),
            None => warn!("No edge tokens configured: any edge that trusts the QUIC certificate may ship."),
        }
        let (snapshots, catalog_task) = catalog::start(config.campaigns.as_deref())?;
        // The rules in force before the first batch is taken, then a task
        // that follows every change of the file.
        let rules = snapshots.borrow().as_ref().map(|snapshot| snapshot.body.clone()).unwrap_or_default();
        admin::set_rules(&wal, &store, ledger::Rules::parse(rules).map_err(Error::Rules)?).await?;
        let rules_task = tokio::spawn(follow_rules(snapshots.clone(), wal.clone(), store.clone()));
        let ingest = Arc::new(ingest::Ingest::new(store.clone(), wal.clone(), config.edge_tokens.clone(), snapshots));
        let server_config = ingest::server_config(identity.cert_chain, identity.key)?;
        let endpoint = quinn::Endpoint::server(server_config, config.quic_listen)
            .map_err(|source| Error::QuicBind { addr: config.quic_listen, source })?;
        let quic_addr = endpoint.local_addr().map_err(|source| Error::QuicBind { addr: config.quic_listen, source })?;
        let ingest_task = tokio::spawn(ingest::serve(endpoint.clone(), ingest.clone()));

        let listener = TcpListener::bind(config.flight_listen)
            .await
            .map_err(|source| Error::FlightBind { addr: config.flight_listen, source })?;
        let flight_addr =
            listener.local_addr().map_err(|source| Error::FlightBind { addr: config.flight_listen, source })?;
        let (flight_shutdown, shutdown_signal) = oneshot::channel();
        let followers = Arc::new(follow::Followers::new());
        match &config.flight_auth {
            Some(auth) => info!(
                n_tokens = auth.n_tokens(),
                n_jwt_keys = auth.n_jwt_keys(),
                "Flight callers authenticate with bearer tokens."
            ),
            None => warn!("No Flight tokens configured: anyone who reaches the Flight port may read every dataset."),
        }
        let off_loopback = !(config.flight_listen.ip().is_loopback() && config.flight_sql_listen.ip().is_loopback());
        if flight_tls.is_none() && off_loopback {
            warn!(
                flight = %config.flight_listen,
                flight_sql = %config.flight_sql_listen,
                "Flight serves plain text off loopback: tokens and data cross the network unencrypted."
            );
        }
        let flight_refusals = Arc::new(flight_service::Refusals::default());
        let flight_auth = config.flight_auth.map(|auth| Arc::new(auth::FlightTokens::new(auth)));
        let flight_task = tokio::spawn(flight_service::serve(
            flight_service::Port { listener, tls: flight_tls.clone() },
            store.clone(),
            wal.clone(),
            followers.clone(),
            flight_auth.clone(),
            flight_refusals.clone(),
            async {
                // Either a send or a dropped sender means stop.
                let _ = shutdown_signal.await;
            },
        ));

        // Flight SQL: the same tokens, and its refusals counted with
        // Flight's.
        let listener = TcpListener::bind(config.flight_sql_listen)
            .await
            .map_err(|source| Error::FlightSqlBind { addr: config.flight_sql_listen, source })?;
        let flight_sql_addr =
            listener.local_addr().map_err(|source| Error::FlightSqlBind { addr: config.flight_sql_listen, source })?;
        let sql_runtime = flight_sql::runtime_env().map_err(|error| Error::FlightSqlEngine(Box::new(error)))?;
        let (flight_sql_shutdown, sql_shutdown_signal) = oneshot::channel();
        let flight_sql_queries = Arc::new(flight_sql::SqlSlots::new());
        let flight_sql_task = tokio::spawn(flight_sql::serve(
            flight_service::Port { listener, tls: flight_tls.clone() },
            store.clone(),
            sql_runtime,
            flight_sql_queries.clone(),
            flight_auth.clone(),
            flight_refusals.clone(),
            async {
                // Either a send or a dropped sender means stop.
                let _ = sql_shutdown_signal.await;
            },
        ));

        // Its hub follows the store from here, before HTTP serves anyone.
        let (dashboard, dashboard_hub_task) =
            dashboard::Dashboard::start(store.clone(), flight_auth.clone(), config.dashboard, config.edge_silent)
                .map_err(Error::Dashboard)?;
        let stats = Arc::new(StatsSource {
            ingest,
            store: store.clone(),
            wal: wal.clone(),
            checkpointer: checkpointer.clone(),
            replay,
            followers,
            flight_refusals,
            flight_sql_queries,
            dashboard: dashboard.clone(),
        });
        let listener = TcpListener::bind(config.http_listen)
            .await
            .map_err(|source| Error::HttpBind { addr: config.http_listen, source })?;
        let http_addr = listener.local_addr().map_err(|source| Error::HttpBind { addr: config.http_listen, source })?;
        let (http_shutdown, http_shutdown_rx) = oneshot::channel();
        let http = Arc::new(http::Http { metrics: metrics::Metrics::new(stats.clone()), wal: wal.clone(), dashboard });
        let http_task = tokio::spawn(http::serve(listener, http, http_shutdown_rx));

        info!(quic = %quic_addr, flight = %flight_addr, flight_sql = %flight_sql_addr, http = %http_addr, quic_cert = %identity.cert_path.display(), "Aggregator started.");
        Ok(Aggregator {
            quic_addr,
            flight_addr,
            flight_sql_addr,
            http_addr,
            quic_cert_path: identity.cert_path,
            flight_tls: flight_tls.is_some(),
            endpoint,
            stats,
            flight_auth,
            store,
            wal,
            checkpointer,
            http_shutdown,
            http_task,
            dashboard_hub_task,
            snapshot_stop,
            snapshot_task,
            ingest_task,
            catalog_task,
            rules_task,
            flight_shutdown,
            flight_task,
            flight_sql_shutdown,
            flight_sql_task,
        })
    }

    /// Reads the QUIC certificate chain and key again (SIGHUP) and presents
    /// them to every later edge connection; connected edges keep theirs.
    /// A pair that does not load is refused and the one in use stays.
    pub fn reload_quic_tls(&self, cert: &Path, key: &Path) -> Result<(), Error> {
        self.endpoint.set_server_config(Some(quic_server_config(cert, key)?));
        info!(cert = %cert.display(), "QUIC certificate reloaded.");
        Ok(())
    }

    /// Replaces the Flight and Flight SQL tokens (SIGHUP): every later
    /// call is checked against the new set. False when the aggregator runs
    /// without tokens (open to every caller), which only a restart changes.
    pub fn reload_flight_tokens(&self, auth: FlightAuth) -> bool {
        let Some(tokens) = &self.flight_auth else { return false };
        info!(n_tokens = auth.n_tokens(), n_jwt_keys = auth.n_jwt_keys(), "Flight tokens reloaded.");
        tokens.replace(auth);
        true
    }

    /// Replaces the edge tokens (SIGHUP): every later edge connection is
    /// checked against the new set; connected edges stay connected. False
    /// when the aggregator accepts every edge, which only a restart changes.
    pub fn reload_edge_tokens(&self, tokens: EdgeTokens) -> bool {
        let n_edges = tokens.len();
        let replaced = self.stats.ingest.replace_edge_tokens(tokens);
        if replaced {
            info!(n_edges, "Edge tokens reloaded.");
        }
        replaced
    }

    /// The bound QUIC address (the real port when `quic_listen` had port 0).
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    /// The bound Arrow Flight address.
    pub fn flight_addr(&self) -> SocketAddr {
        self.flight_addr
    }

    /// The bound Flight SQL address.
    pub fn flight_sql_addr(&self) -> SocketAddr {
        self.flight_sql_addr
    }

    /// The bound address of `/metrics` and `/healthz`.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The absolute path of the PEM certificate collectors must trust.
    pub fn quic_cert_path(&self) -> &Path {
        &self.quic_cert_path
    }

    /// Whether Flight and Flight SQL speak TLS (`grpc+tls://`) rather
    /// than plain text (`grpc://`).
    pub fn flight_tls(&self) -> bool {
        self.flight_tls
    }

    /// Counters of what the aggregator did so far.
    pub fn stats(&self) -> Stats {
        self.stats.stats()
    }

    /// Stops accepting, closes every edge connection and stops the Flight
    /// and Flight SQL servers. A batch applied whose ack was cut off is resent by its edge
    /// and skipped then, so closing mid-stream loses nothing.
    pub async fn shutdown(self) {
        if let Some(task) = &self.catalog_task {
            task.abort();
        }
        self.rules_task.abort();
        self.endpoint.close(ingest::CLOSE_SHUTDOWN, b"shutdown");
        if let Err(error) = self.ingest_task.await {
            warn!(%error, "Ingest task failed.");
        }
        if tokio::time::timeout(SHUTDOWN_GRACE, self.endpoint.wait_idle()).await.is_err() {
            warn!(grace_ms = SHUTDOWN_GRACE.as_millis(), "QUIC endpoint did not drain in time.");
        }
        // The receiver lives as long as the task; if it is gone the task
        // has stopped already, which the join reports.
        let _ = self.snapshot_stop.send(());
        if let Err(error) = self.snapshot_task.await {
            warn!(%error, "Snapshot task failed.");
        }
        // A final snapshot, so the next start replays nothing. Appliers still
        // draining are waited for (their records are in the segments it
        // covers); ones that come later land in the new segment.
        match tokio::time::timeout(SHUTDOWN_GRACE, self.checkpointer.checkpoint()).await {
            Ok(Ok(wal_from)) => info!(wal_from, "Shutdown snapshot written."),
            Ok(Err(error)) => warn!(%error, "Shutdown snapshot failed; the next start replays the log."),
            Err(_) => warn!(
                grace_ms = SHUTDOWN_GRACE.as_millis(),
                "Shutdown snapshot not done in time; the next start replays the log."
            ),
        }
        // Appliers still draining get `Closed` and send no ack; their edges
        // resend after the restart.
        self.wal.close().await;

        // Follow streams end once they have sent what was applied, so the
        // server below can drain.
        self.store.stop_publishing();
        // The receiver lives as long as the server task; if it is gone the
        // server has stopped already, which the join below reports.
        let _ = self.flight_shutdown.send(());
        let mut flight_task = self.flight_task;
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut flight_task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => warn!(%error, "Flight server failed."),
            Ok(Err(error)) => warn!(%error, "Flight task failed."),
            Err(_) => {
                warn!(grace_ms = SHUTDOWN_GRACE.as_millis(), "Flight server did not drain in time.");
                flight_task.abort();
            }
        }
        // SQL answers end by themselves (they are bounded in time), so the
        // server drains like Flight's.
        let _ = self.flight_sql_shutdown.send(());
        let mut flight_sql_task = self.flight_sql_task;
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut flight_sql_task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => warn!(%error, "Flight SQL server failed."),
            Ok(Err(error)) => warn!(%error, "Flight SQL task failed."),
            Err(_) => {
                warn!(grace_ms = SHUTDOWN_GRACE.as_millis(), "Flight SQL server did not drain in time.");
                flight_sql_task.abort();
            }
        }
        let _ = self.http_shutdown.send(());
        if let Err(error) = self.http_task.await {
            warn!(%error, "HTTP task failed.");
        }
        // Stopped with the HTTP listener; its feed ended with publishing.
        if let Err(error) = self.dashboard_hub_task.await {
            warn!(%error, "Dashboard hub task failed.");
        }
        info!("Aggregator stopped.");
    }
}

// === impl StatsSource ===

impl StatsSource {
    pub(crate) fn stats(&self) -> Stats {
        let counts = self.ingest.counts();
        let wal = self.wal.stats();
        let (partitions, partition_bytes) = self.checkpointer.partitions_on_disk();
        let dashboard = self.dashboard.stats();
        Stats {
            batches_applied: counts.batches_applied,
            batches_skipped: counts.batches_skipped,
            batches_refused: counts.batches_refused,
            edges_refused: counts.edges_refused,
            rollup_rows_applied: counts.rollup_rows_applied,
            conversion_rows_applied: counts.conversion_rows_applied,
            wal_records_replayed: self.replay.n_applied + self.replay.n_skipped,
            wal_records_corrupt: self.replay.recovery.n_corrupt + self.replay.n_undecodable,
            wal_torn_tails: self.replay.recovery.n_torn_tails,
            wal_bytes: wal.live_bytes,
            snapshots_written: self.checkpointer.snapshots_written(),
            partitions,
            partition_bytes,
            retention_days_dropped: self.checkpointer.days_dropped(),
            retention_late_rows_dropped: self.store.late_rows_dropped(),
            wal_fsyncs: wal.n_fsyncs,
            wal_fsync_p50_us: wal.fsync_p50_us,
            wal_fsync_p99_us: wal.fsync_p99_us,
            wal_fsync_max_us: wal.fsync_max_us,
            followers: self.followers.n_followers(),
            followers_lagged: self.followers.n_lagged(),
            flight_refused_unauthenticated: self.flight_refusals.n_unauthenticated(),
            flight_refused_permission_denied: self.flight_refusals.n_permission_denied(),
            flight_sql_queries: self.flight_sql_queries.n_running(),
            flight_sql_queries_refused: self.flight_sql_queries.n_refused(),
            dashboard_answers_computed: dashboard.answers_computed,
            dashboard_answers_shared: dashboard.answers_shared,
            dashboard_cache_entries: dashboard.cache_entries,
            dashboard_streams: dashboard.streams,
            dashboard_streams_resynced: dashboard.streams_resynced,
            dashboard_refused_unauthenticated: dashboard.refused_unauthenticated,
            dashboard_refused_permission_denied: dashboard.refused_permission_denied,
            dashboard_bad_requests: dashboard.bad_requests,
        }
    }
}

#[cfg(test)]
mod tests;
