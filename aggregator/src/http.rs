//! The HTTP listener: `GET /metrics` (Prometheus text), `GET /healthz`,
//! and the dashboard's page and API (`dashboard.rs`); anything else is 404.
//!
//! `/healthz` answers 503 once the write-ahead log has stopped after a failed
//! write or fsync: the aggregator then acknowledges nothing, and only a
//! restart recovers, which is what an orchestrator should do.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};
use tracing::{debug, warn};

use crate::dashboard::{Body, Dashboard};
use crate::metrics::{self, Metrics};
use crate::wal::Wal;

/// Open connections at once; past it a new one is closed at once. Scrapers
/// and probes hold one or two each, a dashboard viewer two to six (its
/// live stream and its fetches): 1024 serves a few hundred viewers and
/// bounds the memory a misbehaving client can take.
const CONNECTIONS_MAX: usize = 1024;

/// How long a client may take to send a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long shutdown lets open requests finish.
const SHUTDOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) struct Http {
    pub(crate) metrics: Metrics,
    pub(crate) wal: Arc<Wal>,
    pub(crate) dashboard: Arc<Dashboard>,
}

type HttpResponse = Response<Body>;

/// Serves until `shutdown` fires (or its sender is dropped).
pub(crate) async fn serve(listener: TcpListener, http: Arc<Http>, mut shutdown: oneshot::Receiver<()>) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let connections = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, usually; pause instead of spinning.
                    warn!(%error, "Accepting an HTTP connection failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            debug!(peer = %peer, connections_max = CONNECTIONS_MAX, "HTTP connection refused: too many open.");
            continue;
        };
        let http = http.clone();
        let service = hyper::service::service_fn(move |request| {
            let http = http.clone();
            async move { Ok::<_, Infallible>(http.handle(request).await) }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _permit = permit;
            // Errors here are client resets and time-outs, which are normal.
            let _ = connection.await;
        });
    }
    drop(listener);
    // Live streams end, so their connections can drain.
    http.dashboard.stop();
    if tokio::time::timeout(SHUTDOWN_DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        warn!("Some HTTP connections did not finish within the drain time-out.");
    }
}

// === impl Http ===

impl Http {
    async fn handle(&self, request: Request<Incoming>) -> HttpResponse {
        if Dashboard::serves(request.uri().path()) {
            return self.dashboard.handle(request).await;
        }
        match (request.method(), request.uri().path()) {
            (&Method::GET, "/metrics") => {
                let mut response = Response::new(Full::new(Bytes::from(self.metrics.render())).boxed_unsync());
                response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(metrics::CONTENT_TYPE));
                response
            }
            (&Method::GET, "/healthz") if self.wal.failed() => {
                text(StatusCode::SERVICE_UNAVAILABLE, "write-ahead log failed; restart the aggregator\n")
            }
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}
