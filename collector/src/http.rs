//! HTTP ingress: the edge endpoints, served over HTTP/1.1 and HTTP/2 with
//! hyper.
//!
//! Pixels always answer the GIF (a broken pixel must never break a
//! publisher's page) and count what was wrong; every other bad request gets
//! an error status and a JSON body naming the reason.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use edgetally_protocol::event::ID_TEXT_LEN_MAX;
use edgetally_protocol::event::RawEvent;
use edgetally_protocol::{Click, ClickIdError, ClickKeys, Event, EventError, EventKind, Flag, QuarantineRow, SubId};
use http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, RETRY_AFTER, USER_AGENT};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::catalog::Catalog;
use crate::dedup::{Dedup, Verdict};
use crate::fraud::{Rules, Signals};
use crate::ingest::{Item, parse_body, parse_event, parse_query, pixel_payload};
use crate::metrics::{Metrics, ReasonLabels, RejectLabels};
use crate::tally::{Recorded, Tally};
use crate::throttle::{Throttle, Throttled};
use crate::visitor::VisitorHasher;

/// The 43-byte transparent 1×1 GIF answered by every pixel.
pub const PIXEL_GIF: [u8; 43] = [
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff,
    0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02,
    0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// Response header of a pixel naming its outcome: `accepted`, or the
/// rejection reason (`bad_id`, `shed_full`, ...).
pub const OUTCOME_HEADER: &str = "x-edgetally-outcome";

/// [`OUTCOME_HEADER`] as a header name built once, not parsed per answer.
const OUTCOME: HeaderName = HeaderName::from_static(OUTCOME_HEADER);

/// A dedup key: a tag byte, a scope of at most four bytes, and an ID.
const DEDUP_KEY_BYTES_MAX: usize = 1 + 4 + ID_TEXT_LEN_MAX;

/// How much of a refused oversize body is read and discarded so its client
/// sees the `413`. Costs bandwidth, never memory.
const DRAIN_BYTES_MAX: usize = 8 * 1024 * 1024;

/// How long draining an oversize body may take.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest request head (request line and headers). Real pixel and
/// postback heads are under 2 KiB; hyper answers a larger one with `431`.
const HEAD_BYTES_MAX: usize = 64 * 1024;

/// How long a TLS handshake may take before the connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a connection over the limit is told before it is closed.
const CONNECTIONS_FULL_ANSWER: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// How long in-flight requests get to finish at shutdown.
const SHUTDOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Seconds a client is told to wait when the tally is full.
const RETRY_AFTER_SECONDS: &str = "1";

pub(crate) struct Ingress {
    pub(crate) tally: Arc<Tally>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) body_bytes_max: usize,
    pub(crate) edge_id: u32,
    pub(crate) campaigns: Arc<Catalog>,
    pub(crate) click_keys: ClickKeys,
    pub(crate) dedup: Dedup,
    /// The window in which a visitor's repeated clicks are not unique.
    pub(crate) uniques: Dedup,
    pub(crate) visitors: VisitorHasher,
    /// The fraud rules that set accepted events apart.
    pub(crate) rules: Rules,
    /// Header carrying the client IP when a trusted load balancer is in
    /// front (for example `x-forwarded-for`); the peer address otherwise.
    pub(crate) client_ip_header: Option<HeaderName>,
    /// Per-client request rate, when edges are reached directly.
    pub(crate) throttle: Option<Throttle>,
    /// One permit per open connection.
    pub(crate) connections: Arc<Semaphore>,
    pub(crate) connections_max: usize,
    /// Requests being handled, bodies included.
    pub(crate) requests: InFlight,
    pub(crate) url_bytes_max: usize,
    /// How long a client may take to send a request head, and how long an
    /// idle keep-alive connection waits for the next one.
    pub(crate) header_read_timeout: Duration,
    /// Whether HTTP/1.1 pixels (plain, or TLS without HTTP/2 chosen) are
    /// answered by the lean loop ([`lean`]) rather than by hyper.
    pub(crate) lean_pixels: bool,
}

type HttpResponse = Response<Full<Bytes>>;

/// The bound on requests being handled. A request past it is shed at
/// once, never queued, so a plain counter does: a tokio semaphore would
/// also take its waiters' lock on every release, for waiters there never
/// are.
#[derive(Debug)]
pub(crate) struct InFlight {
    n_in_flight: AtomicUsize,
    max: usize,
}

/// One request counted in [`InFlight`] until dropped.
#[derive(Debug)]
pub(crate) struct InFlightGuard<'a>(&'a InFlight);

impl InFlight {
    pub(crate) fn new(max: usize) -> InFlight {
        InFlight { n_in_flight: AtomicUsize::new(0), max }
    }

    /// Counts a request in, unless the bound is reached. An attempt past
    /// the bound takes its count back, so the requests let in never
    /// exceed `max`.
    pub(crate) fn try_enter(&self) -> Option<InFlightGuard<'_>> {
        if self.n_in_flight.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.n_in_flight.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(InFlightGuard(self))
    }

    /// Requests being handled now.
    pub(crate) fn len(&self) -> usize {
        self.n_in_flight.load(Ordering::Relaxed).min(self.max)
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.n_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts connections until `shutdown` turns true, then lets in-flight
/// requests finish for a bounded time. Past `connections_max` open
/// connections a new one is answered `503` and closed at once.
pub(crate) async fn serve(
    listener: TcpListener,
    ingress: Arc<Ingress>,
    tls: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(ingress.header_read_timeout)
        .max_buf_size(HEAD_BYTES_MAX)
        .keep_alive(true);
    builder.http2().max_header_list_size(HEAD_BYTES_MAX as u32);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
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
        let Ok(permit) = ingress.connections.clone().try_acquire_owned() else {
            ingress.metrics.requests_refused.get_or_create(&ReasonLabels { reason: "connections_full" }).inc();
            // A best-effort answer without a task per refused connection:
            // under a flood, refusing must cost less than serving.
            let _ = stream.try_write(CONNECTIONS_FULL_ANSWER);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (builder, ingress, tls, watcher) = (builder.clone(), ingress.clone(), tls.clone(), graceful.watcher());
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None if ingress.lean_pixels => {
                    serve_lean(&builder, stream, peer.ip(), ingress, watcher, shutdown).await;
                }
                None => serve_connection(&builder, TokioIo::new(stream), peer.ip(), ingress, watcher).await,
                Some(acceptor) => match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    // A client that chose HTTP/2 goes to hyper at once.
                    Ok(Ok(stream)) if ingress.lean_pixels && stream.get_ref().1.alpn_protocol() != Some(b"h2") => {
                        serve_lean(&builder, stream, peer.ip(), ingress, watcher, shutdown).await;
                    }
                    Ok(Ok(stream)) => {
                        serve_connection(&builder, TokioIo::new(stream), peer.ip(), ingress, watcher).await;
                    }
                    Ok(Err(_)) | Err(_) => {
                        let labels = ReasonLabels { reason: "tls_handshake" };
                        ingress.metrics.requests_refused.get_or_create(&labels).inc();
                    }
                },
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("Some HTTP connections did not finish within the drain time-out.");
    }
}

/// Serves a connection in the lean pixel loop, then with hyper from the
/// first request the loop hands over. The watcher is held while the loop
/// serves, so the drain at shutdown waits for it too.
async fn serve_lean<S>(
    builder: &auto::Builder<TokioExecutor>,
    stream: S,
    peer_ip: IpAddr,
    ingress: Arc<Ingress>,
    watcher: Watcher,
    shutdown: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match lean::serve(stream, peer_ip, &ingress, shutdown).await {
        lean::Ended::Closed => drop(watcher),
        lean::Ended::HandOff(stream) => {
            serve_connection(builder, TokioIo::new(stream), peer_ip, ingress, watcher).await
        }
    }
}

async fn serve_connection<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    peer_ip: IpAddr,
    ingress: Arc<Ingress>,
    watcher: Watcher,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let ingress = ingress.clone();
        async move { Ok::<_, Infallible>(ingress.handle(request, peer_ip).await) }
    });
    let connection = builder.serve_connection_with_upgrades(io, service);
    // Errors here are client resets and time-outs, which are normal.
    let _ = watcher.watch(connection.into_owned()).await;
}

/// Why one event was not counted: a bounded reason label and a message.
#[derive(Debug)]
struct Rejection {
    reason: &'static str,
    detail: String,
}

impl From<EventError> for Rejection {
    fn from(error: EventError) -> Rejection {
        Rejection { reason: error.reason(), detail: error.to_string() }
    }
}

impl From<ClickIdError> for Rejection {
    fn from(error: ClickIdError) -> Rejection {
        Rejection { reason: error.reason(), detail: error.to_string() }
    }
}

/// Where an event came in, for metrics and for how its answer looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Pixel,
    Click,
    Postback,
    ConversionPixel,
    Events,
    /// A request refused before any event was read from it.
    Request,
}

impl Source {
    fn as_str(&self) -> &'static str {
        match self {
            Source::Pixel => "pixel",
            Source::Click => "click",
            Source::Postback => "postback",
            Source::ConversionPixel => "conversion_pixel",
            Source::Events => "events",
            Source::Request => "request",
        }
    }
}

// === impl Ingress ===

impl Ingress {
    async fn handle(&self, request: Request<Incoming>, peer_ip: IpAddr) -> HttpResponse {
        let path = request.uri().path();
        let method = request.method();
        let query = request.uri().query().unwrap_or("");
        let target_len = request.uri().path_and_query().map_or(0, |target| target.as_str().len());
        self.metrics.request_received_bytes.inc_by(head_len(&request, target_len) as u64);
        if target_len > self.url_bytes_max {
            let limit = self.url_bytes_max;
            let message = format!("url too long: {target_len} bytes, limit is {limit}");
            return self.refuse("url_too_long", StatusCode::URI_TOO_LONG, message, &request_line(&request));
        }
        let readable = matches!(method, &Method::GET | &Method::HEAD);
        let probe = matches!(path, "/healthz" | "/readyz" | "/metrics");
        // Health checks are always answered, and not counted. The guard
        // lives until the answer is made.
        let _in_flight = match self.admit(probe, || self.client_ip(forwarded_for(&request, self), peer_ip)) {
            Ok(guard) => guard,
            Err((status, rejection)) => {
                if let Some(source) = pixel_source(path) {
                    return gif(self.outcome(source, Err(rejection), query));
                }
                self.metrics.requests_refused.get_or_create(&ReasonLabels { reason: rejection.reason }).inc();
                return rejection_response(status, &rejection);
            }
        };
        match path {
            "/p.gif" if readable => gif(self.pixel(Source::Pixel, query, user_agent(&request), now_ms())),
            "/cv.gif" if readable => gif(self.pixel(Source::ConversionPixel, query, user_agent(&request), now_ms())),
            "/pb" if readable => self.postback(query),
            "/v1/events" if method == Method::POST => self.events(request).await,
            "/healthz" if readable => text(StatusCode::OK, "ok\n"),
            "/readyz" if readable => self.readiness(),
            "/metrics" if readable => {
                self.metrics.observe_dedup(&self.dedup);
                self.metrics.observe_journal(self.tally.journal_state());
                self.metrics.observe_rules(self.rules.state());
                self.metrics.observe_logs();
                let n_open = self.connections_max - self.connections.available_permits();
                self.metrics.connections_open.set(n_open as i64);
                self.metrics.requests_in_flight.set(self.requests.len() as i64);
                let mut response = Response::new(Full::new(Bytes::from(self.metrics.render())));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                );
                response
            }
            _ if readable && path.starts_with("/c/") => {
                let visitor = self.visitor(&request, peer_ip);
                self.click(&path[3..], query, visitor, self.is_bot(user_agent(&request)))
            }
            "/p.gif" | "/cv.gif" | "/pb" | "/healthz" | "/readyz" | "/metrics" => self.refuse(
                "method_not_allowed",
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method {method} not allowed on {path}, use GET"),
                &request_line(&request),
            ),
            "/v1/events" => self.refuse(
                "method_not_allowed",
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method {method} not allowed on {path}, use POST"),
                &request_line(&request),
            ),
            _ if path.starts_with("/c/") => self.refuse(
                "method_not_allowed",
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method {method} not allowed on clicks, use GET"),
                &request_line(&request),
            ),
            _ => {
                let shown: String = path.chars().take(64).collect();
                self.refuse(
                    "not_found",
                    StatusCode::NOT_FOUND,
                    format!("unknown route: {shown}"),
                    &request_line(&request),
                )
            }
        }
    }

    /// Attributes, validates and counts one event. A conversion's click ID
    /// gives its affiliate and campaign (which must agree with any given)
    /// and must fall within the campaign's attribution window.
    fn accept(
        &self,
        source: Source,
        raw: &mut RawEvent<'_>,
        default_kind: Option<EventKind>,
        signals: Signals<'_>,
        now_ms: i64,
    ) -> Result<(Event, Recorded), Rejection> {
        let click = match raw.click_id.as_deref().filter(|text| !text.is_empty()) {
            Some(text) => Some(Click::verify(text, &self.click_keys)?),
            None if matches!(source, Source::Postback | Source::ConversionPixel) => {
                return Err(EventError::Missing { field: "click_id" }.into());
            }
            None => None,
        };
        if let Some(click) = &click {
            for (field, slot, id) in [
                ("affiliate_id", &mut raw.affiliate_id, click.affiliate_id),
                ("campaign_id", &mut raw.campaign_id, click.campaign_id),
            ] {
                let from_click = id.to_string();
                match slot.as_deref().filter(|text| !text.is_empty()) {
                    Some(given) if given != from_click => {
                        return Err(Rejection {
                            reason: "click_id_mismatch",
                            detail: format!("click_id_mismatch: {field} {given} differs from the click's {from_click}"),
                        });
                    }
                    _ => *slot = Some(Cow::Owned(from_click)),
                }
            }
        }
        let event = Event::validate(raw, default_kind, now_ms)?;
        // Conversions need the campaigns (attribution window, fraud
        // settings); pixels and clicks do not fetch them.
        let campaigns = event.kind.is_conversion().then(|| self.campaigns.get());
        if let Some(click) = &click {
            let campaign = campaigns.as_ref().and_then(|campaigns| campaigns.campaign(click.campaign_id));
            let campaign = campaign.ok_or_else(|| Rejection {
                reason: "unknown_campaign",
                detail: format!("unknown campaign {}", click.campaign_id),
            })?;
            click.check_window(event.time_ms, campaign.attribution_window_ms)?;
        }
        let signals = Signals { click: click.as_ref(), ..signals };
        // A click is unique unless the same visitor clicked the same
        // affiliate's campaign within the uniqueness window. Clicks without
        // a visitor (posted by servers) cannot be told apart and count as
        // unique.
        let unique = match signals.visitor {
            Some(visitor) if event.kind == EventKind::Click => {
                let mut key = [0u8; 17];
                key[0] = b'v';
                key[1..9].copy_from_slice(&visitor.to_le_bytes());
                key[9..13].copy_from_slice(&event.affiliate_id.to_le_bytes());
                key[13..17].copy_from_slice(&event.campaign_id.to_le_bytes());
                self.uniques.check(&key, now_ms) == Verdict::New
            }
            _ => true,
        };
        let recorded = self
            .tally
            .record_unless(
                &event,
                unique,
                || self.rules.flag(&event, signals, campaigns.as_deref(), now_ms),
                || self.is_duplicate(&event, now_ms),
            )
            .map_err(|error| Rejection { reason: "shed_full", detail: error.to_string() })?;
        match recorded {
            Recorded::Counted => self.metrics.accepted(&event, now_ms),
            Recorded::Flagged(flag) => {
                self.metrics.accepted(&event, now_ms);
                self.metrics.flagged(flag);
            }
            Recorded::Duplicate => self.metrics.duplicate(source.as_str()),
        }
        Ok((event, recorded))
    }

    /// Asks the dedup window about every key of the event: its event ID,
    /// and for a conversion its order ID within the campaign, or else its
    /// click ID and kind. Each check records its key.
    fn is_duplicate(&self, event: &Event, now_ms: i64) -> bool {
        let mut key = [0u8; DEDUP_KEY_BYTES_MAX];
        let mut seen = |tag: u8, scope: &[u8], id: &SubId| {
            let len = 1 + scope.len() + id.as_str().len();
            key[0] = tag;
            key[1..1 + scope.len()].copy_from_slice(scope);
            key[1 + scope.len()..len].copy_from_slice(id.as_str().as_bytes());
            self.dedup.check(&key[..len], now_ms) == Verdict::Duplicate
        };
        if let Some(event_id) = &event.event_id
            && seen(b'e', &[], event_id)
        {
            return true;
        }
        if !event.kind.is_conversion() {
            return false;
        }
        match (&event.order_id, &event.click_id) {
            (Some(order_id), _) => seen(b'o', &event.campaign_id.to_le_bytes(), order_id),
            (None, Some(click_id)) => seen(b'c', &[event.kind as u8], click_id),
            (None, None) => false,
        }
    }

    /// Admits a request past the bound on requests in flight and, when
    /// edges are reached directly, the client's rate; or says why not, with
    /// the status to answer. Past the bound a request is shed at once
    /// rather than queued. Probes (health checks, scrapes) are neither
    /// counted nor limited.
    fn admit(
        &self,
        probe: bool,
        client_ip: impl FnOnce() -> IpAddr,
    ) -> Result<Option<InFlightGuard<'_>>, (StatusCode, Rejection)> {
        if probe {
            return Ok(None);
        }
        let Some(guard) = self.requests.try_enter() else {
            let detail = "shed_overload: too many requests in flight".into();
            return Err((StatusCode::SERVICE_UNAVAILABLE, Rejection { reason: "shed_overload", detail }));
        };
        if let Some(throttle) = &self.throttle {
            match throttle.check(client_ip()) {
                Throttled::Allow => {}
                Throttled::Untracked => {
                    self.metrics.requests_refused.get_or_create(&ReasonLabels { reason: "throttle_untracked" }).inc();
                }
                Throttled::Limit => {
                    let detail = "rate_limited: too many requests from this client".into();
                    return Err((StatusCode::TOO_MANY_REQUESTS, Rejection { reason: "rate_limited", detail }));
                }
            }
        }
        Ok(Some(guard))
    }

    /// Whether a request to a browser endpoint came with a bot's user
    /// agent; the scan is skipped when the bot rule is off.
    fn is_bot(&self, user_agent: &[u8]) -> bool {
        self.rules.is_on(Flag::BotUserAgent) && edgetally_protocol::fraud::is_bot_user_agent(user_agent)
    }

    /// The visitor hash of a browser request: its client IP (the peer, or
    /// the last address of the configured header, which the trusted load
    /// balancer in front appends) and its user agent. The IP goes no
    /// further than this function.
    fn visitor(&self, request: &Request<Incoming>, peer_ip: IpAddr) -> u64 {
        let client_ip = self.client_ip(forwarded_for(request, self), peer_ip);
        self.visitors.hash(client_ip, user_agent(request), now_ms())
    }

    /// The client's IP: the peer, or the last address of the configured
    /// header (`forwarded`, its last value), which the trusted load
    /// balancer in front appends.
    fn client_ip(&self, forwarded: Option<&[u8]>, peer_ip: IpAddr) -> IpAddr {
        forwarded.and_then(forwarded_ip).unwrap_or(peer_ip)
    }

    /// Counts a rejected event and quarantines it with its input for
    /// review.
    fn rejected(&self, source: Source, rejection: &Rejection, input: &str) {
        let row = QuarantineRow::new(now_ms(), source.as_str(), rejection.reason, &rejection.detail, input);
        if !self.tally.quarantine(row) {
            self.metrics.quarantine_discarded.inc();
        }
        let labels = RejectLabels { source: source.as_str(), reason: rejection.reason };
        self.metrics.events_rejected.get_or_create(&labels).inc();
    }

    /// `GET /p.gif` (an impression, from its query or a `d` payload) and
    /// `GET /cv.gif` (a conversion attributed by its click ID): counts it
    /// and gives its outcome word, which the GIF's [`OUTCOME_HEADER`]
    /// carries. `now_ms` is the clock read for it (the lean loop dates its
    /// answer with the same reading).
    fn pixel(&self, source: Source, query: &str, user_agent: &[u8], now_ms: i64) -> &'static str {
        let signals = Signals { bot_user_agent: self.is_bot(user_agent), ..Signals::default() };
        let outcome = if source == Source::Pixel {
            let impression = Some(EventKind::Impression);
            match pixel_payload(query) {
                None => self.accept(source, &mut parse_query(query), impression, signals, now_ms),
                Some(Ok(mut bytes)) => match parse_event(&mut bytes) {
                    Item::Event(mut raw) => self.accept(source, &mut raw, impression, signals, now_ms),
                    Item::Invalid { reason, detail } => Err(Rejection { reason, detail }),
                },
                Some(Err(reason)) => Err(Rejection { reason, detail: "bad payload: d is not base64url".into() }),
            }
        } else {
            self.accept(source, &mut parse_query(query), Some(EventKind::Sale), signals, now_ms)
        };
        self.outcome(source, outcome.map(|(_, recorded)| recorded), query)
    }

    /// The outcome word of a pixel; a rejected one is counted and
    /// quarantined with its `input`.
    fn outcome(&self, source: Source, outcome: Result<Recorded, Rejection>, input: &str) -> &'static str {
        match outcome {
            Ok(recorded) => label(recorded),
            Err(rejection) => {
                self.rejected(source, &rejection, input);
                rejection.reason
            }
        }
    }

    /// `GET /c/{campaign_id}?aff=&sub1..5=`: counts the click, mints its
    /// signed click ID and redirects to the campaign's landing URL.
    fn click(&self, campaign_text: &str, query: &str, visitor: u64, bot_user_agent: bool) -> HttpResponse {
        let mut raw = parse_query(query);
        raw.kind = None;
        raw.click_id = None;
        raw.campaign_id = Some(Cow::Borrowed(campaign_text));
        let now_ms = now_ms();
        let campaigns = self.campaigns.get();
        let campaign = campaign_text.parse().ok().and_then(|id| campaigns.campaign(id));
        let outcome = match campaign {
            None => Err(Rejection {
                reason: "unknown_campaign",
                detail: format!("unknown campaign: {}", campaign_text.chars().take(16).collect::<String>()),
            }),
            Some(_) => {
                let signals = Signals { bot_user_agent, visitor: Some(visitor), click: None };
                self.accept(Source::Click, &mut raw, Some(EventKind::Click), signals, now_ms)
            }
        };
        // A repeated click (same event ID) still gets its redirect: a visitor
        // is never stranded; it is counted as a duplicate, not a click.
        let (campaign, event, recorded) = match (campaign, outcome) {
            (Some(campaign), Ok((event, recorded))) => (campaign, event, recorded),
            (_, Err(rejection)) => {
                self.rejected(Source::Click, &rejection, query);
                let status = match rejection.reason {
                    "unknown_campaign" => StatusCode::NOT_FOUND,
                    "shed_full" => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::BAD_REQUEST,
                };
                return rejection_response(status, &rejection);
            }
            (None, Ok(_)) => unreachable!("a click without a campaign is rejected above"),
        };
        let click = Click {
            key_id: 0,
            edge_id: self.edge_id,
            time_ms: event.time_ms,
            affiliate_id: event.affiliate_id,
            campaign_id: event.campaign_id,
            nonce: rand::random(),
        };
        let click_id = match click.mint(&self.click_keys) {
            Ok(click_id) => click_id,
            Err(error) => {
                // Only a clock before 1970 or past year 10889 gets here.
                tracing::error!(%error, "Minting a click id failed.");
                return rejection_response(StatusCode::INTERNAL_SERVER_ERROR, &Rejection::from(error));
            }
        };
        let subs = event.subs.each_ref().map(|sub| sub.as_ref().map_or("", |sub| sub.as_str()));
        let location = campaign.landing(&click_id, event.affiliate_id, subs);
        let mut response = Response::new(Full::default());
        *response.status_mut() = StatusCode::FOUND;
        let headers = response.headers_mut();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(OUTCOME, HeaderValue::from_static(label(recorded)));
        match HeaderValue::try_from(location) {
            Ok(location) => {
                headers.insert(LOCATION, location);
            }
            Err(_) => {
                // Landing URLs are checked for control characters at load and
                // substituted values are URL-safe, so this is a defect.
                tracing::error!(campaign_id = event.campaign_id, "A landing URL is not a valid header value.");
                *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            }
        }
        response
    }

    /// `GET /pb`: a server-to-server conversion attributed by its click
    /// ID, answered in JSON. Postbacks come from servers, whose user agents
    /// are HTTP libraries by nature: the bot rule does not apply.
    fn postback(&self, query: &str) -> HttpResponse {
        let source = Source::Postback;
        let outcome = self
            .accept(source, &mut parse_query(query), Some(EventKind::Sale), Signals::default(), now_ms())
            .map(|(_, recorded)| recorded);
        let mut response = match &outcome {
            Ok(recorded) => json_response(StatusCode::OK, &json!({"status": label(*recorded)})),
            Err(rejection) => {
                self.rejected(source, rejection, query);
                let status = if rejection.reason == "shed_full" {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::BAD_REQUEST
                };
                rejection_response(status, rejection)
            }
        };
        let verdict = outcome.as_ref().map_or_else(|rejection| rejection.reason, |recorded| label(*recorded));
        response.headers_mut().insert(OUTCOME, HeaderValue::from_static(verdict));
        response
    }

    async fn events(&self, request: Request<Incoming>) -> HttpResponse {
        let limit = self.body_bytes_max;
        // Kept for the quarantine row of a refused body; the body itself is
        // not kept (it may be large, and its text is consumed by parsing).
        let line = request_line(&request);
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
                    &line,
                );
            }
            Err(BodyRead::Failed(error)) => {
                let message = format!("reading the body failed: {error}");
                return self.refuse("body_read", StatusCode::BAD_REQUEST, message, &line);
            }
        };
        self.metrics.request_received_bytes.inc_by(body.len() as u64);
        let items = match parse_body(&mut body, ndjson) {
            Ok(items) => items,
            Err(error) => return self.refuse("bad_body", StatusCode::BAD_REQUEST, error.to_string(), &line),
        };
        let now_ms = now_ms();
        let mut results = Vec::with_capacity(items.len());
        let (mut n_accepted, mut n_flagged, mut n_duplicates, mut n_rejected) = (0u64, 0u64, 0u64, 0u64);
        let mut shed = false;
        for item in items {
            let outcome = match item {
                Item::Event(mut raw) => self
                    .accept(Source::Events, &mut raw, None, Signals::default(), now_ms)
                    .map(|(_, recorded)| recorded),
                Item::Invalid { reason, detail } => Err(Rejection { reason, detail }),
            };
            results.push(match outcome {
                Ok(Recorded::Counted) => {
                    n_accepted += 1;
                    json!({"status": "accepted"})
                }
                Ok(Recorded::Flagged(flag)) => {
                    n_flagged += 1;
                    json!({"status": "flagged", "flag": flag.as_str()})
                }
                Ok(Recorded::Duplicate) => {
                    n_duplicates += 1;
                    json!({"status": "duplicate"})
                }
                Err(rejection) => {
                    n_rejected += 1;
                    shed |= rejection.reason == "shed_full";
                    self.rejected(Source::Events, &rejection, "");
                    json!({"status": "rejected", "reason": rejection.reason, "error": rejection.detail})
                }
            });
        }
        let body = json!({"accepted": n_accepted, "flagged": n_flagged, "duplicates": n_duplicates, "rejected": n_rejected, "results": results});
        let mut response = json_response(StatusCode::OK, &body);
        if shed {
            // Items refused for capacity can be retried; say when.
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
        }
        response
    }

    /// Ready unless accepted events could not be kept safe: the spool is
    /// full (the aggregator has been unreachable for long) or the journal
    /// cannot take more. The collector still answers; a load balancer
    /// should move traffic to another edge.
    fn readiness(&self) -> HttpResponse {
        if self.metrics.spool_full.get() != 0 {
            return text(StatusCode::SERVICE_UNAVAILABLE, "not ready: spool full\n");
        }
        if self.metrics.spool_failing.get() != 0 {
            return text(StatusCode::SERVICE_UNAVAILABLE, "not ready: spool cannot be written\n");
        }
        if self.tally.journal_state().failing {
            return text(StatusCode::SERVICE_UNAVAILABLE, "not ready: journal full or failing\n");
        }
        text(StatusCode::OK, "ready\n")
    }

    /// Answers a request refused for what the client sent (a route, a
    /// method, a size or a body), counts it and quarantines it with its
    /// request line for review. Requests shed for load or a client's rate
    /// are counted only: they are not bad input, and keeping each would
    /// cost work exactly when there is none to spare.
    fn refuse(&self, reason: &'static str, status: StatusCode, message: String, request_line: &str) -> HttpResponse {
        self.metrics.requests_refused.get_or_create(&ReasonLabels { reason }).inc();
        let row = QuarantineRow::new(now_ms(), Source::Request.as_str(), reason, &message, request_line);
        if !self.tally.quarantine(row) {
            self.metrics.quarantine_discarded.inc();
        }
        json_response(status, &json!({"error": message, "reason": reason}))
    }
}

/// The GIF, whatever happened; the outcome header lets an integrator (and
/// the load generator's ledger) see what was counted.
fn gif(outcome: &'static str) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from_static(&PIXEL_GIF)));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("image/gif"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(OUTCOME, HeaderValue::from_static(outcome));
    response
}

/// The source of a pixel path: `/p.gif` and `/cv.gif` answer the GIF,
/// whatever happens.
fn pixel_source(path: &str) -> Option<Source> {
    match path {
        "/p.gif" => Some(Source::Pixel),
        "/cv.gif" => Some(Source::ConversionPixel),
        _ => None,
    }
}

/// A request's user agent; empty when it sent none.
fn user_agent(request: &Request<Incoming>) -> &[u8] {
    request.headers().get(USER_AGENT).map_or(&b""[..], |value| value.as_bytes())
}

/// The last address of a client IP header's value. A value with bytes
/// outside visible ASCII (which `HeaderValue::to_str` refuses) names none.
fn forwarded_ip(value: &[u8]) -> Option<IpAddr> {
    if !value.iter().all(|&byte| byte == b'\t' || (0x20..0x7f).contains(&byte)) {
        return None;
    }
    std::str::from_utf8(value).ok()?.rsplit(',').next()?.trim().parse().ok()
}

/// The last value of the client IP header the collector is told to trust.
fn forwarded_for<'r>(request: &'r Request<Incoming>, ingress: &Ingress) -> Option<&'r [u8]> {
    let name = ingress.client_ip_header.as_ref()?;
    request.headers().get_all(name).iter().next_back().map(HeaderValue::as_bytes)
}

/// `METHOD target` of a request, as a quarantine row keeps it (truncated
/// there to the row's input limit).
fn request_line<B>(request: &Request<B>) -> String {
    let target = request.uri().path_and_query().map_or("", |target| target.as_str());
    format!("{} {target}", request.method())
}

/// The size of the request head as HTTP/1.1 puts it on the wire: request
/// line, header lines and the blank line. HTTP/2 compresses heads, so there it
/// is an upper bound.
fn head_len(request: &Request<Incoming>, target_len: usize) -> usize {
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

/// The outcome word of a counted or repeated event.
fn label(recorded: Recorded) -> &'static str {
    match recorded {
        Recorded::Counted => "accepted",
        Recorded::Flagged(_) => "flagged",
        Recorded::Duplicate => "duplicate",
    }
}

fn rejection_response(status: StatusCode, rejection: &Rejection) -> HttpResponse {
    let mut response =
        json_response(status, &json!({"status": "rejected", "reason": rejection.reason, "error": rejection.detail}));
    if matches!(status, StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS) {
        response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
    }
    response
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

pub(crate) fn now_ms() -> i64 {
    // A clock before 1970 is a broken host; counting such events at time 0
    // makes them fail the time window rather than crash the collector.
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as i64)
}

mod lean;

#[cfg(test)]
mod tests;
