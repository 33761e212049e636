//! HTTP ingress: the edge endpoints, served over HTTP/1.1 and HTTP/2 with
//! hyper.
//!
//! Pixels always answer the GIF (a broken pixel must never break a
//! publisher's page) and count what was wrong; every other bad request gets
//! an error status and a JSON body naming the reason.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use edgetally_protocol::{Event, EventKind};
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::ingest::{Item, parse_body, parse_query};
use crate::metrics::{Metrics, ReasonLabels, RejectLabels};
use crate::tally::{Tally, TallyError};

/// The 43-byte transparent 1×1 GIF answered by every pixel.
pub const PIXEL_GIF: [u8; 43] = [
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff,
    0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02,
    0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// Response header of a pixel naming its outcome: `accepted`, or the
/// rejection reason (`bad_id`, `shed_full`, ...).
pub const OUTCOME_HEADER: &str = "x-edgetally-outcome";

/// How long a client may take to send its request head. Slow-loris clients
/// hold a connection slot each; ten seconds is ample for real clients.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of a refused oversize body is read and discarded so its client
/// sees the `413`. Costs bandwidth, never memory.
const DRAIN_BYTES_MAX: usize = 8 * 1024 * 1024;

/// How long draining an oversize body may take.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// How long in-flight requests get to finish at shutdown.
const SHUTDOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Seconds a client is told to wait when the tally is full.
const RETRY_AFTER_SECONDS: &str = "1";

pub(crate) struct Ingress {
    pub(crate) tally: Arc<Tally>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) body_bytes_max: usize,
}

type HttpResponse = Response<Full<Bytes>>;

/// Accepts connections until `shutdown` turns true, then lets in-flight
/// requests finish for a bounded time.
pub(crate) async fn serve(listener: TcpListener, ingress: Arc<Ingress>, mut shutdown: watch::Receiver<bool>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).keep_alive(true);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Running out of file descriptors is the usual cause; a
                    // short pause lets connections close instead of spinning.
                    tracing::warn!(%error, "Accepting a connection failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = crate::stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let ingress = ingress.clone();
        let service = hyper::service::service_fn(move |request| {
            let ingress = ingress.clone();
            async move { Ok::<_, Infallible>(ingress.handle(request).await) }
        });
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            // Errors here are client resets and time-outs, which are normal.
            let _ = connection.await;
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("Some HTTP connections did not finish within the drain time-out.");
    }
}

// === impl Ingress ===

impl Ingress {
    async fn handle(&self, request: Request<Incoming>) -> HttpResponse {
        let path = request.uri().path();
        let method = request.method();
        self.metrics.request_received_bytes.inc_by(head_len(&request) as u64);
        match (path, method) {
            ("/p.gif", &Method::GET | &Method::HEAD) => self.pixel(request.uri().query().unwrap_or("")),
            ("/v1/events", &Method::POST) => self.events(request).await,
            ("/healthz", &Method::GET) => text(StatusCode::OK, "ok\n"),
            ("/readyz", &Method::GET) => text(StatusCode::OK, "ready\n"),
            ("/metrics", &Method::GET) => {
                let mut response = Response::new(Full::new(Bytes::from(self.metrics.render())));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                );
                response
            }
            ("/p.gif" | "/healthz" | "/readyz" | "/metrics", _) => self.refuse(
                "method_not_allowed",
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method {method} not allowed on {path}"),
            ),
            ("/v1/events", _) => self.refuse(
                "method_not_allowed",
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method {method} not allowed on {path}, use POST"),
            ),
            _ => {
                let shown: String = path.chars().take(64).collect();
                self.refuse("not_found", StatusCode::NOT_FOUND, format!("unknown route: {shown}"))
            }
        }
    }

    fn pixel(&self, query: &str) -> HttpResponse {
        let raw = parse_query(query);
        let now_ms = now_ms();
        let reason = match Event::validate(&raw, Some(EventKind::Impression), now_ms) {
            Ok(event) => match self.tally.record(&event) {
                Ok(()) => {
                    self.metrics.accepted(event.kind);
                    None
                }
                Err(TallyError::KeysFull(_) | TallyError::ConversionsFull(_)) => Some("shed_full"),
            },
            Err(error) => Some(error.reason()),
        };
        let mut response = Response::new(Full::new(Bytes::from_static(&PIXEL_GIF)));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("image/gif"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        // The GIF is the same whatever happened; the outcome header lets an
        // integrator (and the load generator's ledger) see what was counted.
        let outcome = match reason {
            None => HeaderValue::from_static("accepted"),
            Some(reason) => {
                self.metrics.events_rejected.get_or_create(&RejectLabels { source: "pixel", reason }).inc();
                HeaderValue::from_static(reason)
            }
        };
        headers.insert(OUTCOME_HEADER, outcome);
        response
    }

    async fn events(&self, request: Request<Incoming>) -> HttpResponse {
        let limit = self.body_bytes_max;
        let ndjson =
            request.headers().get(CONTENT_TYPE).and_then(|value| value.to_str().ok()).is_some_and(|value| {
                value.starts_with("application/x-ndjson") || value.starts_with("application/jsonl")
            });
        let mut body = match read_body(request.into_body(), limit).await {
            Ok(body) => body,
            Err(BodyRead::TooLarge) => {
                return self.refuse(
                    "body_too_large",
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("body too large: limit is {limit} bytes"),
                );
            }
            Err(BodyRead::Failed(error)) => {
                return self.refuse("body_read", StatusCode::BAD_REQUEST, format!("reading the body failed: {error}"));
            }
        };
        self.metrics.request_received_bytes.inc_by(body.len() as u64);
        let items = match parse_body(&mut body, ndjson) {
            Ok(items) => items,
            Err(error) => return self.refuse("bad_body", StatusCode::BAD_REQUEST, error.to_string()),
        };
        let now_ms = now_ms();
        let mut results = Vec::with_capacity(items.len());
        let (mut n_accepted, mut n_rejected) = (0u64, 0u64);
        let mut shed = false;
        for item in &items {
            let outcome = match item {
                Item::Event(raw) => match Event::validate(raw, None, now_ms) {
                    Ok(event) => match self.tally.record(&event) {
                        Ok(()) => {
                            self.metrics.accepted(event.kind);
                            Ok(())
                        }
                        Err(error) => {
                            shed = true;
                            Err(("shed_full", error.to_string()))
                        }
                    },
                    Err(error) => Err((error.reason(), error.to_string())),
                },
                Item::Invalid { reason, detail } => Err((*reason, detail.clone())),
            };
            results.push(match outcome {
                Ok(()) => {
                    n_accepted += 1;
                    json!({"status": "accepted"})
                }
                Err((reason, detail)) => {
                    n_rejected += 1;
                    self.metrics.events_rejected.get_or_create(&RejectLabels { source: "events", reason }).inc();
                    json!({"status": "rejected", "reason": reason, "error": detail})
                }
            });
        }
        let body = json!({"accepted": n_accepted, "rejected": n_rejected, "results": results});
        let mut response = json_response(StatusCode::OK, &body);
        if shed {
            // Items refused for capacity can be retried; say when.
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
        }
        response
    }

    fn refuse(&self, reason: &'static str, status: StatusCode, message: String) -> HttpResponse {
        self.metrics.requests_refused.get_or_create(&ReasonLabels { reason }).inc();
        json_response(status, &json!({"error": message, "reason": reason}))
    }
}

/// The size of the request head as HTTP/1.1 puts it on the wire: request
/// line, header lines and the blank line. HTTP/2 compresses heads, so there it
/// is an upper bound.
fn head_len(request: &Request<Incoming>) -> usize {
    let target_len = request.uri().path_and_query().map_or(1, |target| target.as_str().len());
    let request_line = request.method().as_str().len() + 1 + target_len + " HTTP/1.1\r\n".len();
    let headers: usize = request.headers().iter().map(|(name, value)| name.as_str().len() + 2 + value.len() + 2).sum();
    request_line + headers + 2
}

enum BodyRead {
    TooLarge,
    Failed(hyper::Error),
}

/// Reads a body of at most `limit` bytes. A larger one is read on and
/// discarded up to [`DRAIN_BYTES_MAX`] for at most [`DRAIN_TIMEOUT`], so the
/// client, still sending, gets to read the `413` instead of a connection
/// reset.
async fn read_body(mut body: Incoming, limit: usize) -> Result<Vec<u8>, BodyRead> {
    let announced = body.size_hint().exact().unwrap_or(0);
    let mut collected = Vec::with_capacity(usize::try_from(announced).unwrap_or(0).min(limit));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyRead::Failed)?;
        if let Some(data) = frame.data_ref() {
            if collected.len() + data.len() > limit || announced > limit as u64 {
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain(&mut body, collected.len() + data.len())).await;
                return Err(BodyRead::TooLarge);
            }
            collected.extend_from_slice(data);
        }
    }
    Ok(collected)
}

async fn drain(body: &mut Incoming, mut n_read: usize) {
    while n_read < DRAIN_BYTES_MAX {
        match body.frame().await {
            Some(Ok(frame)) => n_read += frame.data_ref().map_or(0, |data| data.len()),
            _ => return,
        }
    }
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn text(status: StatusCode, body: &'static str) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

fn now_ms() -> i64 {
    // A clock before 1970 is a broken host; counting such events at time 0
    // makes them fail the time window rather than crash the collector.
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as i64)
}
