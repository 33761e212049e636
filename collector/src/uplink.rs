//! Ships sealed batches to the aggregator over one QUIC connection.
//!
//! Every flush interval the uplink seals the tally into a [`BatchFrame`] with
//! the next sequence number and appends it to the [`Spool`], synced, before
//! anything is sent. Batches go out in spool order, one bidirectional stream
//! each, at most `window` unacknowledged at once; the aggregator answers
//! each stream with one [`Ack`]. An acknowledged batch leaves the spool.
//!
//! Any failure (connect, stream, ack, time-out) drops the connection and,
//! after an exponential backoff with jitter, resends every unacknowledged
//! batch in order on a new one, with the same bytes and sequence numbers:
//! the aggregator acknowledges a repeat without applying it again. While the
//! spool is full nothing is sealed, so events keep counting in the tally
//! (which grows with keys, not events).
//!
//! **Rollup interval.** Most flushes are rows-only seals: the conversions
//! (rows, money and their counts) and the quarantine rows. The traffic
//! counters wait for a full seal at each multiple of the rollup interval
//! since the Unix epoch (by default when the minute closes, so a key of a
//! minute ships once per edge instead of once per flush), at shutdown, and
//! early once half of the tally's key bound is held. At an affiliate
//! network's mix most rows of a flush are keys seen once or twice in it, so
//! this is where the wire's bytes per event are won; the price is traffic
//! counts as fresh as the interval, while money stays as fresh as the
//! flush. An edge with nothing to ship seals an empty batch every
//! [`HEARTBEAT_INTERVAL`] so the aggregator can tell it is alive.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use std::sync::Mutex;

use bytes::Bytes;
use edgetally_protocol::ConfigSnapshot;
use edgetally_protocol::batch::{conversions_to_batch, encode_ipc_plain, quarantine_to_batch, rollups_to_wire_batch};
use edgetally_protocol::frame::{ACK_LEN, ALPN, AckStatus, HELLO_ACK_LEN, Hello, HelloAck, SNAPSHOT_HEADER_LEN};
use edgetally_protocol::{Ack, BatchFrame, ConversionRow, QuarantineRow, RollupCounts, RollupKey};
use futures::future::OptionFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use rand::Rng;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::catalog::Catalog;
use crate::metrics::{KindLabels, Metrics, StatusLabels};
use crate::spool::{Pending, Spool, SpoolError};
use crate::tally::{Sealed, Tally};

/// How long one attempt (connect, send, acknowledgement) may take before it
/// counts as failed and is retried.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// An edge with nothing to ship seals an empty batch after this long, so
/// the aggregator tells a quiet edge from a dead or cut-off one (its
/// dashboard calls an edge lagging after 5 s without a batch). Only when
/// nothing waits in the spool: during an outage they would pile up.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);

/// The longest wait between seals while spool appends fail. The first
/// retry comes at the next flush and each further failure doubles the
/// wait (see [`spool_skips`]), so a broken disk costs a sort, an encode
/// and a log line every few seconds rather than every flush.
const SPOOL_RETRY_MAX: Duration = Duration::from_secs(5);

/// How long shutdown keeps trying to ship what is left.
const SHUTDOWN_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The aggregator's QUIC close code for an unknown edge or a wrong token.
const CLOSE_UNAUTHENTICATED: quinn::VarInt = quinn::VarInt::from_u32(3);

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("reading aggregator certificate {path}: {reason}")]
    Certificate { path: String, reason: String },
    #[error("tls setup: {0}")]
    Tls(String),
    #[error("binding the uplink socket: {0}")]
    Bind(std::io::Error),
    #[error("connect: {0}")]
    Connect(String),
    #[error("stream: {0}")]
    Stream(String),
    #[error("bad acknowledgement: {0}")]
    Ack(String),
    #[error("the aggregator refused this edge: unknown edge id or wrong token")]
    Refused,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("building batch: {0}")]
    Build(String),
    #[error("{0}")]
    Spool(#[from] SpoolError),
    #[error("task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

pub(crate) struct UplinkConfig<'a> {
    pub(crate) aggregator_addr: SocketAddr,
    pub(crate) aggregator_cert: &'a Path,
    pub(crate) aggregator_server_name: String,
    pub(crate) edge_id: u32,
    /// Presented in the hello of every connection.
    pub(crate) edge_token: Vec<u8>,
    /// Where snapshots from the aggregator go.
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) epoch: u64,
    pub(crate) flush_interval: Duration,
    pub(crate) rollup_interval: Duration,
    pub(crate) spool: Spool,
    /// Most batches sent and not yet acknowledged.
    pub(crate) window: usize,
    /// Most rows of each kind in one frame.
    pub(crate) batch_rows_max: usize,
}

/// An acknowledgement being awaited.
type AckFuture = futures::future::BoxFuture<'static, (Pending, Result<AckStatus, UplinkError>)>;
/// A connection attempt under way: the connection and its control stream.
type ConnectFuture = futures::future::BoxFuture<'static, Result<Connected, UplinkError>>;

/// A connection whose hello the aggregator accepted.
struct Connected {
    connection: quinn::Connection,
    /// Our half of the control stream, kept open for the connection's life.
    _control: quinn::SendStream,
    /// Reads configuration snapshots from the control stream.
    snapshots: tokio::task::JoinHandle<()>,
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.snapshots.abort();
    }
}

pub(crate) struct Uplink {
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    aggregator_addr: SocketAddr,
    server_name: String,
    edge_id: u32,
    epoch: u64,
    flush_interval: Duration,
    /// In milliseconds; 0 when every seal is a full one.
    rollup_interval_ms: u64,
    /// When the next full seal is due, Unix milliseconds.
    next_full_ms: u64,
    /// When a seal was last spooled.
    last_spooled: Instant,
    window: usize,
    batch_rows_max: usize,
    /// Shared with blocking tasks for its file I/O; only the uplink uses it.
    spool: Arc<Mutex<Spool>>,
    connection: Option<Connected>,
    edge_token: Arc<[u8]>,
    catalog: Arc<Catalog>,
    /// Polled by the run loop, so a slow handshake never holds up sealing.
    connecting: Option<ConnectFuture>,
    /// How many batches at the front of the spool were sent on the current
    /// connection (acknowledged ones the spool still holds included).
    n_sent: usize,
    acks: FuturesUnordered<AckFuture>,
    next_sequence: u64,
    n_failures: u32,
    retry_at: Instant,
    /// Spool appends failed in a row, and flushes left to pass without a
    /// seal before the next try.
    spool_failures: u32,
    spool_skips: u32,
}

/// The certificates in the PEM file the aggregator is trusted by: its own
/// certificate or the CA that signed it.
pub(crate) fn trust_roots(path: &Path) -> Result<rustls::RootCertStore, UplinkError> {
    let certificate_error = |reason: String| UplinkError::Certificate { path: path.display().to_string(), reason };
    let mut roots = rustls::RootCertStore::empty();
    let certificates = CertificateDer::pem_file_iter(path).map_err(|error| certificate_error(error.to_string()))?;
    for certificate in certificates {
        let certificate = certificate.map_err(|error| certificate_error(error.to_string()))?;
        roots.add(certificate).map_err(|error| certificate_error(error.to_string()))?;
    }
    if roots.is_empty() {
        return Err(certificate_error("no certificate in file".into()));
    }
    Ok(roots)
}

// === impl Uplink ===

impl Uplink {
    pub(crate) fn new(config: UplinkConfig<'_>) -> Result<Uplink, UplinkError> {
        let roots = trust_roots(config.aggregator_cert)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|error| UplinkError::Tls(error.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        // 0-RTT data can be replayed by an attacker, so it stays off.
        tls.enable_early_data = false;
        let quic_tls = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|error| UplinkError::Tls(error.to_string()))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(quic_tls));
        let mut transport = quinn::TransportConfig::default();
        // Keep-alives stop idle NAT and load-balancer mappings from expiring
        // between batches.
        transport.keep_alive_interval(Some(Duration::from_secs(5)));
        // Enough in flight to send a window of frames without stalling on
        // the congestion controller's default send buffer; the aggregator's
        // receive windows are sized to match.
        transport.send_window(64 * 1024 * 1024);
        client_config.transport_config(Arc::new(transport));
        let bind: SocketAddr = if config.aggregator_addr.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = quinn::Endpoint::client(bind).map_err(UplinkError::Bind)?;
        Ok(Uplink {
            endpoint,
            client_config,
            aggregator_addr: config.aggregator_addr,
            server_name: config.aggregator_server_name,
            edge_id: config.edge_id,
            epoch: config.epoch,
            flush_interval: config.flush_interval,
            rollup_interval_ms: if config.rollup_interval > config.flush_interval {
                config.rollup_interval.as_millis() as u64
            } else {
                0
            },
            next_full_ms: 0,
            last_spooled: Instant::now(),
            window: config.window.max(1),
            batch_rows_max: config.batch_rows_max.max(1),
            spool: Arc::new(Mutex::new(config.spool)),
            connection: None,
            edge_token: config.edge_token.into(),
            catalog: config.catalog,
            connecting: None,
            n_sent: 0,
            acks: FuturesUnordered::new(),
            next_sequence: 1,
            n_failures: 0,
            retry_at: Instant::now(),
            spool_failures: 0,
            spool_skips: 0,
        })
    }

    /// Seals and ships every flush interval until `shutdown` turns true, then
    /// seals what is left into the spool and tries for a bounded time to
    /// ship it; what is still unacknowledged then ships after the restart.
    pub(crate) async fn run(mut self, tally: Arc<Tally>, metrics: Arc<Metrics>, mut shutdown: watch::Receiver<bool>) {
        self.update_spool_metrics(&metrics);
        let mut interval = tokio::time::interval(self.flush_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {
                    let full = self.full_seal_due(&tally);
                    self.seal(&tally, &metrics, full).await;
                }
                Some((pending, result)) = self.acks.next(), if !self.acks.is_empty() => {
                    self.settle(pending, result, &metrics);
                }
                Some(connected) = OptionFuture::from(self.connecting.as_mut()), if self.connecting.is_some() => {
                    self.connected(connected, &metrics);
                }
                _ = crate::stopped(&mut shutdown) => break,
            }
            self.send(&metrics).await;
        }

        let deadline = Instant::now() + SHUTDOWN_FLUSH_TIMEOUT;
        // Seal what is left; stop when a seal makes no progress (nothing
        // left, the spool full, or a spool error put it back). A failing
        // spool gets one more try now, whatever its back-off.
        self.spool_skips = 0;
        loop {
            let sequence = self.next_sequence;
            self.seal(&tally, &metrics, true).await;
            if self.next_sequence == sequence {
                break;
            }
        }
        self.retry_at = Instant::now();
        while self.lock_spool().pending().len() > 0 && Instant::now() < deadline {
            self.send(&metrics).await;
            if let Some(connecting) = self.connecting.as_mut() {
                match tokio::time::timeout_at(deadline, connecting).await {
                    Ok(connected) => self.connected(connected, &metrics),
                    Err(_) => break,
                }
                continue;
            }
            if self.acks.is_empty() {
                // Backing off after a failure.
                tokio::time::sleep_until(self.retry_at.max(Instant::now() + BACKOFF_MIN).min(deadline)).await;
                continue;
            }
            match tokio::time::timeout_at(deadline, self.acks.next()).await {
                Ok(Some((pending, result))) => self.settle(pending, result, &metrics),
                Ok(None) | Err(_) => break,
            }
        }
        let n_unshipped = self.lock_spool().pending().len();
        let (n_keys, n_conversions, n_quarantined) = tally.len();
        if n_unshipped > 0 {
            tracing::warn!(
                n_unshipped,
                "Shutdown left batches unacknowledged; they stay in the spool and ship after the restart."
            );
        }
        if n_keys + n_conversions + n_quarantined > 0 {
            tracing::warn!(
                n_keys,
                n_conversions,
                n_quarantined,
                "Shutdown left counts unsealed (the spool is full); the journal keeps them for the restart."
            );
        }
        if let Some(connected) = self.connection.take() {
            connected.connection.close(0u32.into(), b"shutdown");
        }
        // Closing the endpoint also ends a connection attempt still waiting
        // on an unreachable aggregator, which would otherwise hold
        // `wait_idle` until its idle time-out (30 s) and a SIGTERM during an
        // outage past systemd's stop time-out.
        self.endpoint.close(0u32.into(), b"shutdown");
        self.endpoint.wait_idle().await;
        // The uplink owns the only other reference, in `self`; tasks that
        // borrowed it for I/O have all finished.
        if let Ok(spool) = Arc::try_unwrap(self.spool) {
            spool.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner()).close();
        }
    }

    /// Whether this flush seals everything, or only the conversions and
    /// quarantine rows: a full seal is due at every multiple of the rollup
    /// interval, and sooner once the traffic keys fill half of their bound
    /// (so a busy minute never makes the tally refuse new keys).
    fn full_seal_due(&mut self, tally: &Tally) -> bool {
        if self.rollup_interval_ms == 0 {
            return true;
        }
        let now_ms = crate::unix_ms();
        if self.next_full_ms == 0 {
            self.next_full_ms = next_multiple(now_ms, self.rollup_interval_ms);
        }
        now_ms >= self.next_full_ms || tally.traffic_keys() >= tally.limits().rollup_keys_max / 2
    }

    /// Seals the tally into the spool, unless the spool is full or backing
    /// off after a failed append: everything when `full`, else the
    /// conversions and quarantine rows.
    ///
    /// A rows-only seal, once spooled, is noted in the journal; when the
    /// note cannot be written (the journal is full or failing), a full seal
    /// follows at once, so a restart cannot count those rows again.
    async fn seal(&mut self, tally: &Arc<Tally>, metrics: &Metrics, mut full: bool) {
        let spool_full = self.lock_spool().is_full();
        metrics.spool_full.set(i64::from(spool_full));
        let mut release_through = 0;
        let backing_off = self.spool_skips > 0;
        self.spool_skips = self.spool_skips.saturating_sub(1);
        // At most twice: a rows-only seal whose note failed, then a full one.
        for _ in 0..if spool_full || backing_off { 0 } else { 2 } {
            // Sorting a busy edge's keys takes milliseconds: off the async
            // workers, as the encoding is.
            let sealing = tally.clone();
            let sealed = match tokio::task::spawn_blocking(
                move || {
                    if full { sealing.seal() } else { sealing.seal_rows() }
                },
            )
            .await
            {
                Ok(sealed) => sealed,
                Err(error) => {
                    // Cancelled before it ran (the runtime is stopping), so
                    // the tally and its journal still hold everything; a
                    // panic inside `seal` cannot happen short of allocation
                    // failure, which aborts.
                    tracing::error!(%error, "Sealing did not finish.");
                    break;
                }
            };
            if full {
                self.next_full_ms = next_multiple(crate::unix_ms(), self.rollup_interval_ms.max(1));
            }
            let mut noted = true;
            let heartbeat = self.last_spooled.elapsed() >= HEARTBEAT_INTERVAL && self.lock_spool().pending().len() == 0;
            if !sealed.is_empty() || heartbeat {
                let sequence = self.next_sequence;
                let (sealed, spooled) = self.spool_sealed(sequence, sealed).await;
                match spooled {
                    Ok(n_frames) => {
                        if self.spool_failures > 0 {
                            tracing::info!(n_failures = self.spool_failures, "The spool takes appends again.");
                            self.spool_failures = 0;
                            metrics.spool_failing.set(0);
                        }
                        self.next_sequence += n_frames;
                        self.last_spooled = Instant::now();
                        metrics.seals.get_or_create(&KindLabels { kind: if full { "full" } else { "rows" } }).inc();
                        if full {
                            release_through = sealed.through.journal;
                        } else {
                            noted = tally.mark_rows_spooled(sealed.through.rows);
                        }
                    }
                    Err(error) => {
                        // Back into the tally: a seal after the back-off
                        // tries again.
                        self.spool_failures = self.spool_failures.saturating_add(1);
                        self.spool_skips = spool_skips(self.flush_interval, self.spool_failures);
                        if self.spool_failures == 1 || self.spool_failures.is_power_of_two() {
                            let retry = self.flush_interval * (self.spool_skips + 1);
                            tracing::error!(
                                %error,
                                sequence,
                                n_failures = self.spool_failures,
                                retry_ms = retry.as_millis() as u64,
                                "Could not spool a sealed batch; keeping its counts in memory."
                            );
                        }
                        metrics.spool_errors.inc();
                        metrics.spool_failing.set(1);
                        tally.restore(sealed);
                    }
                }
            }
            if noted || full {
                break;
            }
            tracing::warn!("Could not note a spooled rows-only seal in the journal; sealing everything now.");
            full = true;
        }
        // File work off the async workers: delete the spooled journal
        // segments, and have the next one ready before an append needs it.
        let journal = tally.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            journal.release_journal(release_through);
            journal.prepare_journal();
        });
        if let Err(error) = prepared.await {
            tracing::warn!(%error, "Journal upkeep failed.");
        }
        let (n_keys, n_conversions, n_quarantined) = tally.len();
        metrics.rollup_keys.set(n_keys as i64);
        metrics.conversions_pending.set(n_conversions as i64);
        metrics.quarantine_pending.set(n_quarantined as i64);
        self.update_spool_metrics(metrics);
    }

    /// Encodes a seal as frames of at most `batch_rows_max` rows of each
    /// kind, numbered from `sequence`, and appends them to the spool as one
    /// synced record, on a blocking thread: encoding and compressing a busy
    /// edge's seal takes milliseconds. Returns the seal, to be put back if
    /// it could not be spooled, and how many frames it took.
    async fn spool_sealed(&mut self, sequence: u64, sealed: Sealed) -> (Sealed, Result<u64, UplinkError>) {
        let (rows, edge_id, epoch, spool) = (self.batch_rows_max, self.edge_id, self.epoch, self.spool.clone());
        let sealed = Arc::new(sealed);
        let encoding = sealed.clone();
        let sealed_ms = crate::unix_ms();
        let spooled = tokio::task::spawn_blocking(move || {
            let frames = encode_sealed(&encoding, edge_id, epoch, sequence, rows)?;
            spool.lock().expect("spool lock is not poisoned").append(&frames, encoding.through, sealed_ms)?;
            Ok(frames.len() as u64)
        })
        .await
        .unwrap_or_else(|error| Err(UplinkError::Task(error)));
        // A finished blocking task (returned, panicked or cancelled) has
        // dropped its closure, and with it the other reference.
        let sealed = Arc::try_unwrap(sealed).expect("the encoding task is finished");
        (sealed, spooled)
    }

    /// Sends spooled batches until `window` are unacknowledged, once
    /// connected; starts connecting when there is something to send.
    async fn send(&mut self, metrics: &Metrics) {
        if Instant::now() < self.retry_at || self.connecting.is_some() {
            return;
        }
        let connected = self.connection.as_ref().is_some_and(|connected| connected.connection.close_reason().is_none());
        if !connected {
            self.connection = None;
            // Connected even when idle: the connection carries the
            // aggregator's configuration too.
            if self.acks.is_empty() {
                self.connecting = Some(self.connect());
            }
            return;
        }
        loop {
            let next = {
                let spool = self.lock_spool();
                if self.acks.len() >= self.window {
                    return;
                }
                match spool.pending().nth(self.n_sent) {
                    Some(pending) => *pending,
                    None => return,
                }
            };
            match tokio::time::timeout(ATTEMPT_TIMEOUT, self.send_one(next)).await {
                Ok(Ok(ack)) => {
                    self.acks.push(ack);
                    self.n_sent += 1;
                    metrics.uplink_sent_bytes.inc_by(u64::from(next.frame_len));
                }
                Ok(Err(error)) => return self.fail(metrics, error),
                Err(_) => return self.fail(metrics, UplinkError::Timeout(ATTEMPT_TIMEOUT)),
            }
        }
    }

    /// Opens a stream, writes the batch and returns the wait for its ack.
    async fn send_one(&mut self, pending: Pending) -> Result<AckFuture, UplinkError> {
        let spool = self.spool.clone();
        let frame =
            tokio::task::spawn_blocking(move || spool.lock().expect("spool lock is not poisoned").read(&pending))
                .await??;
        let connection = self
            .connection
            .as_ref()
            .map(|connected| connected.connection.clone())
            .ok_or_else(|| UplinkError::Connect("not connected".into()))?;
        let (mut send, mut recv) =
            connection.open_bi().await.map_err(|error| UplinkError::Stream(error.to_string()))?;
        send.write_all(&frame).await.map_err(|error| UplinkError::Stream(error.to_string()))?;
        send.finish().map_err(|error| UplinkError::Stream(error.to_string()))?;
        let edge_id = self.edge_id;
        Ok(Box::pin(async move {
            let ack = async {
                let answer = recv.read_to_end(ACK_LEN).await.map_err(|error| UplinkError::Stream(error.to_string()))?;
                let ack = Ack::decode(&answer).map_err(|error| UplinkError::Ack(error.to_string()))?;
                if (ack.edge_id, ack.epoch, ack.sequence) != (edge_id, pending.epoch, pending.sequence) {
                    return Err(UplinkError::Ack(format!(
                        "ack for edge {} epoch {} sequence {}, sent edge {edge_id} epoch {} sequence {}",
                        ack.edge_id, ack.epoch, ack.sequence, pending.epoch, pending.sequence
                    )));
                }
                Ok(ack.status)
            };
            let result =
                tokio::time::timeout(ATTEMPT_TIMEOUT, ack).await.unwrap_or(Err(UplinkError::Timeout(ATTEMPT_TIMEOUT)));
            (pending, result)
        }))
    }

    /// Deals with one acknowledgement (or its failure).
    fn settle(&mut self, pending: Pending, result: Result<AckStatus, UplinkError>, metrics: &Metrics) {
        let status = match result {
            Ok(status) => status,
            Err(error) => return self.fail(metrics, error),
        };
        let status_label = match status {
            AckStatus::Apply => "apply",
            AckStatus::Skip => "skip",
            AckStatus::Refuse => {
                tracing::error!(
                    epoch = pending.epoch,
                    sequence = pending.sequence,
                    "Aggregator refused a batch as malformed; its rows are lost."
                );
                "refuse"
            }
        };
        metrics.uplink_batches.get_or_create(&StatusLabels { status: status_label }).inc();
        // A clock stepped back since the seal reads as no lag.
        let lag_ms = crate::unix_ms().saturating_sub(pending.sealed_ms);
        metrics.uplink_shipping_lag.observe(lag_ms as f64 / 1_000.0);
        let n_done = self.lock_spool().ack(pending.epoch, pending.sequence);
        self.n_sent -= n_done;
        self.n_failures = 0;
        self.update_spool_metrics(metrics);
    }

    /// Drops the connection and every awaited ack; after a backoff, sending
    /// starts again from the oldest unacknowledged batch.
    fn fail(&mut self, metrics: &Metrics, error: UplinkError) {
        metrics.uplink_retries.inc();
        if let Some(connected) = self.connection.take() {
            connected.connection.close(0u32.into(), b"retry");
        }
        self.acks = FuturesUnordered::new();
        self.n_sent = 0;
        self.n_failures = self.n_failures.saturating_add(1);
        let ceiling = BACKOFF_MIN.saturating_mul(1 << self.n_failures.min(10)).min(BACKOFF_MAX);
        // Full jitter spreads the retries of many edges after an outage.
        let delay = rand::rng().random_range(BACKOFF_MIN..=ceiling.max(BACKOFF_MIN));
        self.retry_at = Instant::now() + delay;
        if self.n_failures == 1 || self.n_failures.is_power_of_two() {
            tracing::warn!(%error, n_failures = self.n_failures, retry_ms = delay.as_millis() as u64, "Shipping a batch failed; retrying.");
        }
    }

    /// A connection attempt with its hello, bounded by `ATTEMPT_TIMEOUT`.
    fn connect(&self) -> ConnectFuture {
        let connecting =
            self.endpoint.connect_with(self.client_config.clone(), self.aggregator_addr, &self.server_name);
        let hello = Hello { edge_id: self.edge_id, token: self.edge_token.to_vec() };
        let catalog = self.catalog.clone();
        let attempt = async move {
            let connection = connecting
                .map_err(|error| UplinkError::Connect(error.to_string()))?
                .await
                .map_err(|error| UplinkError::Connect(error.to_string()))?;
            let stream_error = |error: String| UplinkError::Stream(format!("control stream: {error}"));
            let (mut send, mut recv) = connection.open_bi().await.map_err(|error| stream_error(error.to_string()))?;
            let hello = hello.encode().map_err(|error| UplinkError::Connect(error.to_string()))?;
            send.write_all(&hello).await.map_err(|error| stream_error(error.to_string()))?;
            let mut answer = [0u8; HELLO_ACK_LEN];
            if let Err(error) = recv.read_exact(&mut answer).await {
                return Err(match connection.close_reason() {
                    Some(quinn::ConnectionError::ApplicationClosed(close))
                        if close.error_code == CLOSE_UNAUTHENTICATED =>
                    {
                        UplinkError::Refused
                    }
                    _ => stream_error(error.to_string()),
                });
            }
            let ack = HelloAck::decode(&answer).map_err(|error| UplinkError::Ack(error.to_string()))?;
            if !ack.accepted {
                return Err(UplinkError::Refused);
            }
            let snapshots = tokio::spawn(read_snapshots(recv, catalog));
            Ok(Connected { connection, _control: send, snapshots })
        };
        Box::pin(async move {
            match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
                Ok(connected) => connected,
                Err(_) => Err(UplinkError::Timeout(ATTEMPT_TIMEOUT)),
            }
        })
    }

    fn connected(&mut self, connected: Result<Connected, UplinkError>, metrics: &Metrics) {
        self.connecting = None;
        match connected {
            Ok(connected) => {
                tracing::info!(aggregator = %self.aggregator_addr, "Uplink connected.");
                self.connection = Some(connected);
            }
            Err(UplinkError::Refused) => {
                tracing::error!(
                    aggregator = %self.aggregator_addr,
                    edge_id = self.edge_id,
                    "The aggregator refused this edge (unknown edge id or wrong token); batches stay in the spool."
                );
                metrics.uplink_refused.inc();
                self.fail(metrics, UplinkError::Refused);
            }
            Err(error) => self.fail(metrics, error),
        }
    }

    fn update_spool_metrics(&self, metrics: &Metrics) {
        let spool = self.lock_spool();
        metrics.spool_bytes.set(spool.bytes() as i64);
        metrics.uplink_pending_batches.set(spool.pending().len() as i64);
        let oldest_ms = spool.pending().next().map_or(0, |pending| crate::unix_ms().saturating_sub(pending.sealed_ms));
        metrics.spool_oldest_unacked_seconds.set(oldest_ms as f64 / 1000.0);
    }

    fn lock_spool(&self) -> std::sync::MutexGuard<'_, Spool> {
        // The spool's methods leave it consistent at every return; a panic
        // inside one would be a defect that a restart recovers from disk.
        self.spool.lock().expect("spool lock is not poisoned")
    }
}

/// Applies every configuration snapshot the aggregator sends on the control
/// stream until it ends. A snapshot that fails its checks is logged and
/// skipped: the edge keeps the one it has.
async fn read_snapshots(mut recv: quinn::RecvStream, catalog: Arc<Catalog>) {
    loop {
        let mut header = [0u8; SNAPSHOT_HEADER_LEN];
        if let Err(error) = recv.read_exact(&mut header).await {
            tracing::debug!(%error, "Control stream ended.");
            return;
        }
        let header = match ConfigSnapshot::decode_header(&header) {
            Ok(header) => header,
            Err(error) => {
                tracing::error!(%error, "Bad snapshot header on the control stream; ignoring the stream.");
                return;
            }
        };
        let mut body = vec![0u8; header.len];
        if let Err(error) = recv.read_exact(&mut body).await {
            tracing::debug!(%error, "Control stream ended mid-snapshot.");
            return;
        }
        let applied = ConfigSnapshot::from_parts(header, body.into())
            .map_err(|error| error.to_string())
            .and_then(|snapshot| catalog.apply(&snapshot).map_err(|error| error.to_string()));
        if let Err(error) = applied {
            tracing::error!(%error, "Campaign snapshot from the aggregator refused; keeping the current one.");
        }
    }
}

/// A seal as frames of at most `rows` rows of each kind, numbered from
/// `sequence`.
fn encode_sealed(
    sealed: &Sealed,
    edge_id: u32,
    epoch: u64,
    sequence: u64,
    rows: usize,
) -> Result<Vec<Bytes>, UplinkError> {
    let rollups = sealed.rollup_rows();
    let n_frames = [rollups.len(), sealed.conversions.len(), sealed.quarantine.len()]
        .into_iter()
        .map(|n| n.div_ceil(rows))
        .max()
        .unwrap_or(0)
        .max(1);
    let chunk = |i: usize, len: usize| (i * rows).min(len)..((i + 1) * rows).min(len);
    (0..n_frames)
        .map(|i| {
            build_frame(
                edge_id,
                epoch,
                sequence + i as u64,
                &rollups[chunk(i, rollups.len())],
                &sealed.conversions[chunk(i, sealed.conversions.len())],
                &sealed.quarantine[chunk(i, sealed.quarantine.len())],
            )
        })
        .collect()
}

/// How many flushes pass without a seal after the `n_failures`th spool
/// append in a row failed: none after the first, then 1, 3, 7, ... so
/// the wait doubles, up to [`SPOOL_RETRY_MAX`].
fn spool_skips(flush_interval: Duration, n_failures: u32) -> u32 {
    let most = (SPOOL_RETRY_MAX.as_millis() / flush_interval.as_millis().max(1)).saturating_sub(1);
    let doubling = (1u128 << n_failures.saturating_sub(1).min(64)) - 1;
    doubling.min(most) as u32
}

/// The first multiple of `step` after `now`.
fn next_multiple(now: u64, step: u64) -> u64 {
    (now / step + 1) * step
}

fn build_frame(
    edge_id: u32,
    epoch: u64,
    sequence: u64,
    rollups: &[(RollupKey, RollupCounts)],
    conversions: &[ConversionRow],
    quarantine: &[QuarantineRow],
) -> Result<Bytes, UplinkError> {
    let build = |error: String| UplinkError::Build(error);
    let rollups_ipc = if rollups.is_empty() {
        Vec::new()
    } else {
        encode_ipc_plain(&rollups_to_wire_batch(rollups.iter().map(|(key, counts)| (key, counts))))
            .map_err(|error| build(error.to_string()))?
    };
    let conversions_ipc = if conversions.is_empty() {
        Vec::new()
    } else {
        encode_ipc_plain(&conversions_to_batch(conversions)).map_err(|error| build(error.to_string()))?
    };
    let quarantine_ipc = if quarantine.is_empty() {
        Vec::new()
    } else {
        encode_ipc_plain(&quarantine_to_batch(quarantine)).map_err(|error| build(error.to_string()))?
    };
    let frame = BatchFrame {
        edge_id,
        epoch,
        sequence,
        n_rollup_rows: u32::try_from(rollups.len()).map_err(|error| build(error.to_string()))?,
        n_conversion_rows: u32::try_from(conversions.len()).map_err(|error| build(error.to_string()))?,
        n_quarantine_rows: u32::try_from(quarantine.len()).map_err(|error| build(error.to_string()))?,
        rollups_ipc: rollups_ipc.into(),
        conversions_ipc: conversions_ipc.into(),
        quarantine_ipc: quarantine_ipc.into(),
    };
    Ok(frame.encode().map_err(|error| build(error.to_string()))?.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_retries_wait_twice_as_long_each_time_up_to_five_seconds() {
        let flush = Duration::from_millis(250);
        let skips: Vec<u32> = (1..=8).map(|n_failures| spool_skips(flush, n_failures)).collect();
        assert_eq!(skips, [0, 1, 3, 7, 15, 19, 19, 19]);
        assert_eq!(spool_skips(flush, u32::MAX), 19);
        // A flush interval at or past the ceiling retries at every flush.
        assert_eq!(spool_skips(Duration::from_secs(5), 9), 0);
        assert_eq!(spool_skips(Duration::from_secs(60), 9), 0);
    }
}
