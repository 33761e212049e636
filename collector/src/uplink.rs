//! Ships sealed batches to the aggregator over one QUIC connection.
//!
//! Every flush interval the uplink seals the tally into a [`BatchFrame`] with
//! the next sequence number, sends it on a fresh bidirectional stream and
//! waits for the aggregator's [`Ack`] of that sequence number. At most one
//! batch is in flight: while it is unacknowledged nothing new is sealed, so
//! events keep counting in the tally (which grows with keys, not events). A
//! failed attempt resends the same frame, with the same sequence number,
//! after an exponential backoff with jitter; the aggregator acknowledges a
//! repeat without applying it again.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edgetally_protocol::batch::{conversions_to_batch, encode_ipc, quarantine_to_batch, rollups_to_batch};
use edgetally_protocol::frame::{ACK_LEN, ALPN, AckStatus};
use edgetally_protocol::{Ack, BatchFrame};
use rand::Rng;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::{Metrics, StatusLabels};
use crate::tally::{Sealed, Tally};

/// How long one attempt (connect, send, acknowledgement) may take before it
/// counts as failed and is retried.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// How long shutdown keeps trying to ship what is left.
const SHUTDOWN_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

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
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("building batch: {0}")]
    Build(String),
}

pub(crate) struct UplinkConfig<'a> {
    pub(crate) aggregator_addr: SocketAddr,
    pub(crate) aggregator_cert: &'a Path,
    pub(crate) aggregator_server_name: String,
    pub(crate) edge_id: u32,
    pub(crate) epoch: u64,
    pub(crate) flush_interval: Duration,
}

struct InFlight {
    sequence: u64,
    frame: Bytes,
}

pub(crate) struct Uplink {
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    aggregator_addr: SocketAddr,
    server_name: String,
    edge_id: u32,
    epoch: u64,
    flush_interval: Duration,
    connection: Option<quinn::Connection>,
    in_flight: Option<InFlight>,
    next_sequence: u64,
    n_failures: u32,
    retry_at: Instant,
}

// === impl Uplink ===

impl Uplink {
    pub(crate) fn new(config: UplinkConfig<'_>) -> Result<Uplink, UplinkError> {
        let certificate_error =
            |reason: String| UplinkError::Certificate { path: config.aggregator_cert.display().to_string(), reason };
        let mut roots = rustls::RootCertStore::empty();
        let certificates = CertificateDer::pem_file_iter(config.aggregator_cert)
            .map_err(|error| certificate_error(error.to_string()))?;
        for certificate in certificates {
            let certificate = certificate.map_err(|error| certificate_error(error.to_string()))?;
            roots.add(certificate).map_err(|error| certificate_error(error.to_string()))?;
        }
        if roots.is_empty() {
            return Err(certificate_error("no certificate in file".into()));
        }
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
            connection: None,
            in_flight: None,
            next_sequence: 1,
            n_failures: 0,
            retry_at: Instant::now(),
        })
    }

    /// Seals and ships every flush interval until `shutdown` turns true, then
    /// tries for a bounded time to ship what is left.
    pub(crate) async fn run(mut self, tally: Arc<Tally>, metrics: Arc<Metrics>, mut shutdown: watch::Receiver<bool>) {
        let mut interval = tokio::time::interval(self.flush_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = crate::stopped(&mut shutdown) => break,
            }
            self.step(&tally, &metrics).await;
        }
        let deadline = Instant::now() + SHUTDOWN_FLUSH_TIMEOUT;
        while Instant::now() < deadline {
            let (n_keys, n_conversions, n_quarantined) = tally.len();
            if self.in_flight.is_none() && n_keys == 0 && n_conversions == 0 && n_quarantined == 0 {
                break;
            }
            self.retry_at = self.retry_at.min(Instant::now());
            self.step(&tally, &metrics).await;
            if self.in_flight.is_some() {
                tokio::time::sleep(BACKOFF_MIN).await;
            }
        }
        let (n_keys, n_conversions, n_quarantined) = tally.len();
        if self.in_flight.is_some() || n_keys > 0 || n_conversions > 0 || n_quarantined > 0 {
            tracing::error!(
                unacknowledged = self.in_flight.is_some(),
                n_keys,
                n_conversions,
                n_quarantined,
                "Shutdown left data unshipped; it is lost without a spool."
            );
        }
        if let Some(connection) = self.connection.take() {
            connection.close(0u32.into(), b"shutdown");
        }
        self.endpoint.wait_idle().await;
    }

    /// One attempt: seal if nothing is in flight, then try to ship.
    async fn step(&mut self, tally: &Tally, metrics: &Metrics) {
        if self.in_flight.is_none() {
            let sealed = tally.seal();
            let (n_keys, n_conversions, n_quarantined) = tally.len();
            metrics.rollup_keys.set(n_keys as i64);
            metrics.conversions_pending.set(n_conversions as i64);
            metrics.quarantine_pending.set(n_quarantined as i64);
            if sealed.is_empty() {
                return;
            }
            match build_frame(self.edge_id, self.epoch, self.next_sequence, &sealed) {
                Ok(frame) => {
                    self.in_flight = Some(InFlight { sequence: self.next_sequence, frame });
                    self.next_sequence += 1;
                    metrics.uplink_pending_batches.set(1);
                }
                Err(error) => {
                    // Building only fails on an internal defect; the rows are
                    // counted as lost so the loss is visible.
                    tracing::error!(%error, "Sealed batch could not be encoded; its rows are lost.");
                    metrics.uplink_batches.get_or_create(&StatusLabels { status: "unencodable" }).inc();
                    return;
                }
            }
        }
        if Instant::now() < self.retry_at {
            return;
        }
        let Some(in_flight) = &self.in_flight else { return };
        let (sequence, frame) = (in_flight.sequence, in_flight.frame.clone());
        match tokio::time::timeout(ATTEMPT_TIMEOUT, self.ship(sequence, &frame)).await {
            Ok(Ok(status)) => {
                let status_label = match status {
                    AckStatus::Apply => "apply",
                    AckStatus::Skip => "skip",
                    AckStatus::Refuse => {
                        tracing::error!(sequence, "Aggregator refused a batch as malformed; its rows are lost.");
                        "refuse"
                    }
                };
                metrics.uplink_batches.get_or_create(&StatusLabels { status: status_label }).inc();
                metrics.uplink_sent_bytes.inc_by(frame.len() as u64);
                metrics.uplink_pending_batches.set(0);
                self.in_flight = None;
                self.n_failures = 0;
            }
            Ok(Err(error)) => self.fail(metrics, error),
            Err(_) => self.fail(metrics, UplinkError::Timeout(ATTEMPT_TIMEOUT)),
        }
    }

    fn fail(&mut self, metrics: &Metrics, error: UplinkError) {
        metrics.uplink_errors.inc();
        self.connection = None;
        self.n_failures = self.n_failures.saturating_add(1);
        let ceiling = BACKOFF_MIN.saturating_mul(1 << self.n_failures.min(10)).min(BACKOFF_MAX);
        // Full jitter spreads the retries of many edges after an outage.
        let delay = rand::rng().random_range(BACKOFF_MIN..=ceiling.max(BACKOFF_MIN));
        self.retry_at = Instant::now() + delay;
        if self.n_failures == 1 || self.n_failures.is_power_of_two() {
            tracing::warn!(%error, n_failures = self.n_failures, retry_ms = delay.as_millis() as u64, "Shipping a batch failed; retrying.");
        }
    }

    async fn ship(&mut self, sequence: u64, frame: &Bytes) -> Result<AckStatus, UplinkError> {
        let connection = match &self.connection {
            Some(connection) if connection.close_reason().is_none() => connection.clone(),
            _ => {
                let connecting = self
                    .endpoint
                    .connect_with(self.client_config.clone(), self.aggregator_addr, &self.server_name)
                    .map_err(|error| UplinkError::Connect(error.to_string()))?;
                let connection = connecting.await.map_err(|error| UplinkError::Connect(error.to_string()))?;
                tracing::info!(aggregator = %self.aggregator_addr, "Uplink connected.");
                self.connection = Some(connection.clone());
                connection
            }
        };
        let (mut send, mut recv) =
            connection.open_bi().await.map_err(|error| UplinkError::Stream(error.to_string()))?;
        send.write_all(frame).await.map_err(|error| UplinkError::Stream(error.to_string()))?;
        send.finish().map_err(|error| UplinkError::Stream(error.to_string()))?;
        let answer = recv.read_to_end(ACK_LEN).await.map_err(|error| UplinkError::Stream(error.to_string()))?;
        let ack = Ack::decode(&answer).map_err(|error| UplinkError::Ack(error.to_string()))?;
        if (ack.edge_id, ack.epoch, ack.sequence) != (self.edge_id, self.epoch, sequence) {
            return Err(UplinkError::Ack(format!(
                "ack for edge {} epoch {} sequence {}, sent edge {} epoch {} sequence {sequence}",
                ack.edge_id, ack.epoch, ack.sequence, self.edge_id, self.epoch
            )));
        }
        Ok(ack.status)
    }
}

fn build_frame(edge_id: u32, epoch: u64, sequence: u64, sealed: &Sealed) -> Result<Bytes, UplinkError> {
    let build = |error: String| UplinkError::Build(error);
    let rollups_ipc = if sealed.rollups.is_empty() {
        Vec::new()
    } else {
        encode_ipc(&rollups_to_batch(sealed.rollups.iter().map(|(key, counts)| (key, counts))))
            .map_err(|error| build(error.to_string()))?
    };
    let conversions_ipc = if sealed.conversions.is_empty() {
        Vec::new()
    } else {
        encode_ipc(&conversions_to_batch(&sealed.conversions)).map_err(|error| build(error.to_string()))?
    };
    let quarantine_ipc = if sealed.quarantine.is_empty() {
        Vec::new()
    } else {
        encode_ipc(&quarantine_to_batch(&sealed.quarantine)).map_err(|error| build(error.to_string()))?
    };
    let frame = BatchFrame {
        edge_id,
        epoch,
        sequence,
        n_rollup_rows: u32::try_from(sealed.rollups.len()).map_err(|error| build(error.to_string()))?,
        n_conversion_rows: u32::try_from(sealed.conversions.len()).map_err(|error| build(error.to_string()))?,
        n_quarantine_rows: u32::try_from(sealed.quarantine.len()).map_err(|error| build(error.to_string()))?,
        rollups_ipc: rollups_ipc.into(),
        conversions_ipc: conversions_ipc.into(),
        quarantine_ipc: quarantine_ipc.into(),
    };
    Ok(frame.encode().map_err(|error| build(error.to_string()))?.into())
}
