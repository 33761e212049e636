//! The center of EdgeTally: receives edge batches over QUIC and serves
//! rollups over Arrow Flight.
//!
//! This crate owns the QUIC server identity (`cert`), the ingest of
//! `BatchFrame`s with exactly-once application per edge (`ingest`), the
//! in-memory rollups and conversions (`store`), what a Flight ticket asks
//! for (`ticket`, `query`) and the Flight server that answers it
//! (`flight_service`). [`Aggregator::start`] wires them together; `main.rs`
//! is a thin command-line shell around it.
//!
//! Not here yet: the write-ahead log (the store is memory only, so a restart
//! forgets everything, high-water marks included), edge authentication,
//! commissions, Parquet, Flight SQL and HTTP.

mod cert;
mod flight_service;
mod ingest;
mod query;
mod store;
mod ticket;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use cert::CertError;
pub use ingest::Stats;

/// How long [`Aggregator::shutdown`] waits for each of QUIC and Flight to
/// drain before it drops what is left. Edges resend anything unacknowledged,
/// and a Flight client retries, so waiting longer only delays a restart.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How an aggregator is started.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the generated QUIC certificate and key live.
    pub data_dir: PathBuf,
    pub quic_listen: SocketAddr,
    pub flight_listen: SocketAddr,
    /// PEM certificate chain for QUIC; with `tls_key`, replaces the
    /// self-signed certificate kept in `data_dir`.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Extra DNS names or IP addresses for a generated certificate, besides
    /// `localhost`, `127.0.0.1` and `::1`.
    pub tls_names: Vec<String>,
}

/// Why an aggregator could not start. Messages leave out their source,
/// which `source()` returns: `main` prints the whole chain.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("create data dir {}", path.display())]
    DataDir { path: PathBuf, source: io::Error },
    #[error("quic certificate")]
    Cert(#[from] CertError),
    #[error("quic tls config")]
    Tls(#[from] rustls::Error),
    #[error("quic tls config")]
    QuicCrypto(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    #[error("bind quic on {addr}")]
    QuicBind { addr: SocketAddr, source: io::Error },
    #[error("bind flight on {addr}")]
    FlightBind { addr: SocketAddr, source: io::Error },
}

/// A running aggregator: both listeners are bound and serving.
pub struct Aggregator {
    quic_addr: SocketAddr,
    flight_addr: SocketAddr,
    quic_cert_path: PathBuf,
    endpoint: quinn::Endpoint,
    ingest: Arc<ingest::Ingest>,
    ingest_task: JoinHandle<()>,
    flight_shutdown: oneshot::Sender<()>,
    flight_task: JoinHandle<Result<(), tonic::transport::Error>>,
}

// === impl Aggregator ===

impl Aggregator {
    /// Loads or creates the QUIC identity, binds both listeners and spawns
    /// their tasks on the current tokio runtime.
    pub async fn start(config: Config) -> Result<Aggregator, Error> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| Error::DataDir { path: config.data_dir.clone(), source })?;
        let identity = cert::load_or_generate(&config)?;
        let store = Arc::new(store::Store::default());

        let ingest = Arc::new(ingest::Ingest::new(store.clone()));
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
        let flight_task = tokio::spawn(flight_service::serve(listener, store, async {
            // Either a send or a dropped sender means stop.
            let _ = shutdown_signal.await;
        }));

        info!(quic = %quic_addr, flight = %flight_addr, quic_cert = %identity.cert_path.display(), "Aggregator started.");
        Ok(Aggregator {
            quic_addr,
            flight_addr,
            quic_cert_path: identity.cert_path,
            endpoint,
            ingest,
            ingest_task,
            flight_shutdown,
            flight_task,
        })
    }

    /// The bound QUIC address (the real port when `quic_listen` had port 0).
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    /// The bound Arrow Flight address.
    pub fn flight_addr(&self) -> SocketAddr {
        self.flight_addr
    }

    /// The absolute path of the PEM certificate collectors must trust.
    pub fn quic_cert_path(&self) -> &Path {
        &self.quic_cert_path
    }

    /// Counters of what ingest did so far.
    pub fn stats(&self) -> Stats {
        self.ingest.stats()
    }

    /// Stops accepting, closes every edge connection and stops the Flight
    /// server. A batch applied whose ack was cut off is resent by its edge
    /// and skipped then, so closing mid-stream loses nothing.
    pub async fn shutdown(self) {
        self.endpoint.close(ingest::CLOSE_SHUTDOWN, b"shutdown");
        if let Err(error) = self.ingest_task.await {
            warn!(%error, "Ingest task failed.");
        }
        if tokio::time::timeout(SHUTDOWN_GRACE, self.endpoint.wait_idle()).await.is_err() {
            warn!(grace_ms = SHUTDOWN_GRACE.as_millis(), "QUIC endpoint did not drain in time.");
        }

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
        info!("Aggregator stopped.");
    }
}

#[cfg(test)]
mod tests;
