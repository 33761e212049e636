//! The live web dashboard, on the aggregator's HTTP listener: the page and
//! its assets (compiled in from `aggregator/dashboard/`, so `cargo run`
//! needs no front-end build), and the JSON and Server-Sent Events API it
//! reads, described call by call in `aggregator/dashboard/API.md`.
//!
//! Callers log in with a Flight token (the same tokens, reloaded with
//! them): `POST /api/login` checks it and sets it as an `HttpOnly`,
//! `SameSite=Strict` cookie, and every later call checks it again, so a
//! token removed by a reload, or a JWT past its expiry, stops working at
//! once (an open stream ends within a second). An `affiliate:<id>` token
//! sees only its own rows ([`Scope`]).
//!
//! Answers are computed by `report` under one store lock and kept by data
//! version in `cache`: many viewers cost one computation per version. The
//! live feed is `stream`. Money is converted to a reporting currency with
//! `rates`.

mod cache;
mod rates;
mod report;
mod stream;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use edgetally_protocol::Currency;
use futures::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_SECURITY_POLICY, CONTENT_TYPE, COOKIE, HeaderMap,
    HeaderValue, SET_COOKIE, X_CONTENT_TYPE_OPTIONS,
};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use rates::{ExchangeRates, RatesError};

use crate::auth::{FlightTokens, Role};
use crate::query::{Granularity, GroupColumn, TimeBuckets};
use crate::store::{Store, now_ms};
use report::{PeriodName, ReportError, Selection};

/// A response body: whole, or a stream of events.
pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The session cookie: the token, base64url, so any token is a valid
/// cookie value.
const COOKIE_NAME: &str = "edgetally_session";

/// The most a login body may be: a JWT with room.
const LOGIN_BODY_BYTES_MAX: usize = 16 * 1024;

/// How long a login body may take to arrive.
const LOGIN_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The default `--report-tz`.
pub const REPORT_TZ_DEFAULT: &str = "UTC";

/// The page may load only its own assets and talk only to its origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("../dashboard/index.html");
const APP_JS: &str = include_str!("../dashboard/app.js");
const MODEL_JS: &str = include_str!("../dashboard/model.js");
const APP_CSS: &str = include_str!("../dashboard/app.css");

/// How the dashboard reports.
#[derive(Debug, Clone)]
pub struct DashboardConfig {
    /// The zone days start in unless the viewer picks another (IANA).
    pub report_tz: String,
    /// Rates into a reporting currency; `None` shows money per currency only.
    pub exchange_rates: Option<ExchangeRates>,
}

/// What a caller may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    All,
    Affiliate(u32),
}

/// A refused call: a status and a sentence for the caller.
#[derive(Debug, Clone)]
struct ApiError {
    status: StatusCode,
    message: String,
}

pub(crate) struct Dashboard {
    store: Arc<Store>,
    /// `None`: the aggregator runs without tokens and everyone is admin.
    auth: Option<Arc<FlightTokens>>,
    /// The default zone, day buckets.
    report_tz: TimeBuckets,
    rates: Option<ExchangeRates>,
    edge_silent_ms: Option<i64>,
    cache: cache::Cache,
    hub: Arc<stream::Hub>,
    stop: watch::Sender<bool>,
    n_unauthenticated: AtomicU64,
    n_permission_denied: AtomicU64,
    n_bad_requests: AtomicU64,
}

/// Counters of the dashboard for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DashboardStats {
    pub(crate) answers_computed: u64,
    pub(crate) answers_shared: u64,
    pub(crate) cache_entries: u64,
    pub(crate) streams: u64,
    pub(crate) streams_resynced: u64,
    pub(crate) refused_unauthenticated: u64,
    pub(crate) refused_permission_denied: u64,
    pub(crate) bad_requests: u64,
}

/// A stream's viewer: its credential, checked again every heartbeat.
struct StreamViewer {
    dashboard: Arc<Dashboard>,
    credential: Option<Vec<u8>>,
}

// === impl ApiError ===

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }

    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    fn internal(error: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
    }
}

impl From<ReportError> for ApiError {
    fn from(error: ReportError) -> ApiError {
        match error {
            ReportError::TooManyBuckets { .. } => ApiError::bad(error.to_string()),
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
        }
    }
}

// === impl Dashboard ===

impl Dashboard {
    /// A dashboard over `store`, with its hub following the store from
    /// now on. `report_tz` must be a zone of the bundled database (the
    /// command line checks it).
    pub(crate) fn start(
        store: Arc<Store>,
        auth: Option<Arc<FlightTokens>>,
        config: DashboardConfig,
        edge_silent: Option<Duration>,
    ) -> Result<(Arc<Dashboard>, JoinHandle<()>), String> {
        let report_tz = TimeBuckets::new(Granularity::Day, &config.report_tz)
            .ok_or_else(|| format!("unknown time zone {:?}", config.report_tz))?;
        let (stop, stop_rx) = watch::channel(false);
        let hub = Arc::new(stream::Hub::new());
        let feed = store.follow().ok_or("the store is not publishing yet")?;
        let hub_task = tokio::spawn(stream::run_hub(feed, hub.clone(), stop_rx));
        let dashboard = Arc::new(Dashboard {
            store,
            auth,
            report_tz,
            rates: config.exchange_rates,
            edge_silent_ms: edge_silent.map(|silent| i64::try_from(silent.as_millis()).unwrap_or(i64::MAX)),
            cache: cache::Cache::default(),
            hub,
            stop,
            n_unauthenticated: AtomicU64::new(0),
            n_permission_denied: AtomicU64::new(0),
            n_bad_requests: AtomicU64::new(0),
        });
        Ok((dashboard, hub_task))
    }

    /// Ends every stream and the hub: shutdown.
    pub(crate) fn stop(&self) {
        self.stop.send_replace(true);
    }

    pub(crate) fn stats(&self) -> DashboardStats {
        let (answers_computed, answers_shared) = self.cache.counts();
        DashboardStats {
            answers_computed,
            answers_shared,
            cache_entries: self.cache.len() as u64,
            streams: self.hub.n_streams(),
            streams_resynced: self.hub.n_resyncs(),
            refused_unauthenticated: self.n_unauthenticated.load(Ordering::Relaxed),
            refused_permission_denied: self.n_permission_denied.load(Ordering::Relaxed),
            bad_requests: self.n_bad_requests.load(Ordering::Relaxed),
        }
    }

    /// Whether `path` is the dashboard's.
    pub(crate) fn serves(path: &str) -> bool {
        path == "/" || path.starts_with("/assets/") || path.starts_with("/api/")
    }

    pub(crate) async fn handle(self: &Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        let result = match (request.method(), request.uri().path()) {
            (&Method::GET, "/") => Ok(asset(INDEX_HTML, "text/html; charset=utf-8")),
            (&Method::GET, "/assets/app.js") => Ok(asset(APP_JS, "text/javascript; charset=utf-8")),
            (&Method::GET, "/assets/model.js") => Ok(asset(MODEL_JS, "text/javascript; charset=utf-8")),
            (&Method::GET, "/assets/app.css") => Ok(asset(APP_CSS, "text/css; charset=utf-8")),
            (&Method::POST, "/api/login") => self.login(request).await,
            (&Method::POST, "/api/logout") => Ok(logout()),
            (&Method::GET, path) if path.starts_with("/api/") => self.data_call(&request).await,
            (_, path) if known_path(path) => Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")),
            _ => Err(ApiError::new(StatusCode::NOT_FOUND, "no such page or call")),
        };
        result.unwrap_or_else(|error| self.refused(error))
    }

    fn refused(&self, error: ApiError) -> Response<Body> {
        let counter = match error.status {
            StatusCode::UNAUTHORIZED => &self.n_unauthenticated,
            StatusCode::FORBIDDEN => &self.n_permission_denied,
            _ => &self.n_bad_requests,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut response =
            json_response(serde_json::to_vec(&serde_json::json!({"error": error.message})).unwrap_or_default());
        *response.status_mut() = error.status;
        response
    }

    /// The scope of the caller that sent `credential` (a whole
    /// `Authorization` value).
    fn scope_of(&self, credential: Option<&[u8]>) -> Result<(Scope, String), ApiError> {
        let Some(auth) = &self.auth else { return Ok((Scope::All, "admin".to_owned())) };
        let role = auth
            .current()
            .authenticate(credential)
            .map_err(|error| ApiError::new(StatusCode::UNAUTHORIZED, format!("not logged in: {error}")))?;
        match role {
            Role::Admin => Ok((Scope::All, role.to_string())),
            Role::Affiliate(affiliate_id) => Ok((Scope::Affiliate(affiliate_id), role.to_string())),
            Role::Edge => Err(ApiError::new(StatusCode::FORBIDDEN, "an edge token may not read the dashboard")),
        }
    }

    async fn login(&self, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Login {
            token: String,
        }
        let body =
            tokio::time::timeout(LOGIN_BODY_TIMEOUT, Limited::new(request.into_body(), LOGIN_BODY_BYTES_MAX).collect())
                .await
                .map_err(|_| ApiError::new(StatusCode::REQUEST_TIMEOUT, "the login body did not arrive in time"))?
                .map_err(|_| {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("a login body is at most {LOGIN_BODY_BYTES_MAX} bytes"),
                    )
                })?
                .to_bytes();
        let login: Login = serde_json::from_slice(&body)
            .map_err(|error| ApiError::bad(format!("expected {{\"token\":\"…\"}}: {error}")))?;
        let credential = format!("Bearer {}", login.token);
        let (_, role) = self.scope_of(Some(credential.as_bytes()))?;
        let mut response = json_response(serde_json::to_vec(&serde_json::json!({"role": role})).unwrap_or_default());
        let cookie = format!(
            "{COOKIE_NAME}={}; HttpOnly; SameSite=Strict; Path=/",
            URL_SAFE_NO_PAD.encode(login.token.as_bytes())
        );
        let cookie = HeaderValue::from_str(&cookie).expect("base64url is a valid header value");
        response.headers_mut().insert(SET_COOKIE, cookie);
        Ok(response)
    }

    /// Every authenticated GET under `/api/`.
    async fn data_call(self: &Arc<Self>, request: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
        let path = request.uri().path();
        let credential = credential(request.headers());
        let (scope, role) = self.scope_of(credential.as_deref())?;
        let params = Params::parse(
            request.uri().query(),
            allowed_params(path)
                .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no such call: {path}")))?,
        )?;
        match path {
            "/api/session" => self.session(scope, &role),
            "/api/stream" => self.stream(scope, credential),
            "/api/health" => Ok(json_value(&self.health(scope))),
            "/api/alerts" => self.alerts(scope, &params).await,
            _ => self.report(path, scope, &params).await,
        }
    }

    fn session(&self, scope: Scope, role: &str) -> Result<Response<Body>, ApiError> {
        let exponents: BTreeMap<String, u8> =
            Currency::all().map(|currency| (currency.code().to_owned(), currency.exponent())).collect();
        let (version, _) = self.store.version();
        Ok(json_value(&serde_json::json!({
            "role": role,
            "affiliate_id": match scope { Scope::All => None, Scope::Affiliate(id) => Some(id) },
            "tz": self.report_tz.zone_name(),
            "reporting_currency": self.rates.as_ref().map(|rates| rates.reporting().code().to_owned()),
            "rates": self.rates.as_ref().map(|rates| rates.texts().clone()).unwrap_or_default(),
            "exponents": exponents,
            "version": version,
        })))
    }

    fn stream(self: &Arc<Self>, scope: Scope, credential: Option<Vec<u8>>) -> Result<Response<Body>, ApiError> {
        let permit = self.hub.admit().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{} live streams are open; retry later", stream::STREAMS_MAX),
            )
        })?;
        let (out, events) = mpsc::channel(stream::STREAM_BUFFER);
        let viewer = StreamViewer { dashboard: self.clone(), credential };
        tokio::spawn(stream::run_stream(
            self.store.clone(),
            self.hub.clone(),
            viewer,
            scope,
            out,
            self.stop.subscribe(),
            permit,
        ));
        let frames = futures::stream::unfold(events, |mut events| async move {
            events.recv().await.map(|event| (Ok::<_, Infallible>(Frame::data(event)), events))
        });
        let mut response = Response::new(StreamBody::new(frames.boxed()).boxed_unsync());
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(response)
    }

    fn health(&self, scope: Scope) -> serde_json::Value {
        let now = now_ms();
        let (version, last_applied_ms) = self.store.version();
        let edges: Vec<serde_json::Value> = match scope {
            Scope::Affiliate(_) => Vec::new(),
            Scope::All => self
                .store
                .edges_last_batch()
                .into_iter()
                .map(|(edge_id, last_batch_ms)| {
                    let age_ms = now.saturating_sub(last_batch_ms).max(0);
                    serde_json::json!({
                        "edge_id": edge_id,
                        "last_batch_ms": last_batch_ms,
                        "age_ms": age_ms,
                        "state": report::edge_state(age_ms, self.edge_silent_ms),
                    })
                })
                .collect(),
        };
        serde_json::json!({"version": version, "now_ms": now, "last_applied_ms": last_applied_ms, "edges": edges})
    }

    async fn alerts(&self, scope: Scope, params: &Params) -> Result<Response<Body>, ApiError> {
        let csv = params.csv()?;
        let now = now_ms();
        let (version, _) = self.store.version();
        // `edge_silent` moves with time, not data: kept five seconds at most.
        let key = format!("alerts|{scope:?}|{csv}|{}", now / 5_000);
        let store = self.store.clone();
        let answer = self
            .cache
            .get(key, version, move || {
                let keep = |_: i64, keys: Option<(u32, u32, &str)>| match scope {
                    Scope::All => true,
                    Scope::Affiliate(affiliate_id) => keys.is_some_and(|(id, _, _)| id == affiliate_id),
                };
                let rows = report::alert_rows(store.alerts(now, &keep));
                if csv {
                    report::alerts_csv(&rows).map(Bytes::from).map_err(ApiError::internal)
                } else {
                    serde_json::to_vec(&serde_json::json!({"version": version, "rows": rows}))
                        .map(Bytes::from)
                        .map_err(ApiError::internal)
                }
            })
            .await?;
        Ok(if csv { csv_response(answer, "edgetally-alerts.csv") } else { json_response(answer) })
    }

    /// `overview`, `table` and `series`: computed once per version.
    async fn report(&self, path: &str, scope: Scope, params: &Params) -> Result<Response<Body>, ApiError> {
        let zone = match params.get("tz") {
            Some(name) => TimeBuckets::new(Granularity::Day, name).ok_or_else(|| {
                ApiError::bad(format!("unknown time zone {name:?}: give an IANA name such as Europe/Berlin"))
            })?,
            None => self.report_tz.clone(),
        };
        let period = match params.get("period") {
            Some(name) => PeriodName::parse(name).ok_or_else(|| {
                let names: Vec<&str> = PeriodName::ALL.iter().map(|period| period.as_str()).collect();
                ApiError::bad(format!("unknown period {name:?}: expected one of {}", names.join(", ")))
            })?,
            None => PeriodName::Today,
        };
        let (period, previous) = period.resolve(&zone, now_ms())?;
        let mut affiliate_id = params.id("affiliate_id")?;
        if let Scope::Affiliate(own) = scope {
            if affiliate_id.is_some_and(|asked| asked != own) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("affiliate:{own} may read only affiliate {own}"),
                ));
            }
            affiliate_id = Some(own);
        }
        let campaign_id = params.id("campaign_id")?;
        let csv = params.csv()?;
        let by = match (path, params.get("by")) {
            ("/api/table", Some("affiliate")) => Some(GroupColumn::AffiliateId),
            ("/api/table", Some("campaign")) => Some(GroupColumn::CampaignId),
            ("/api/table", other) => {
                return Err(ApiError::bad(format!("by must be affiliate or campaign, not {:?}", other.unwrap_or(""))));
            }
            _ => None,
        };
        let granularity = match params.get("granularity") {
            Some(name) => Granularity::parse(name)
                .ok_or_else(|| ApiError::bad(format!("unknown granularity {name:?}: expected minute, hour or day")))?,
            None if matches!(period.name, "today" | "yesterday") => Granularity::Hour,
            None => Granularity::Day,
        };
        let q = params.get("q").map(str::to_owned);
        if csv && path != "/api/table" {
            return Err(ApiError::bad("format=csv is for table and alerts"));
        }
        let key = format!(
            "{path}|{:?}|{}|{}|{}|{affiliate_id:?}|{campaign_id:?}|{by:?}|{}|{q:?}|{csv}",
            scope,
            period.from_ms,
            period.to_ms,
            zone.zone_name(),
            granularity.as_str()
        );
        let (version, _) = self.store.version();
        let selection =
            Selection { period, previous, zone: &zone, affiliate_id, campaign_id, rates: self.rates.as_ref() };
        let store = &self.store;
        let answer = self
            .cache
            .get(key, version, || {
                let json = match (path, by) {
                    ("/api/overview", _) => selection.overview(store)?,
                    ("/api/series", _) => selection.series(store, granularity)?,
                    (_, Some(by)) if csv => {
                        let (_, rows) = selection.table(store, by)?;
                        return report::table_csv(by, &rows, q.as_deref()).map(Bytes::from).map_err(ApiError::internal);
                    }
                    (_, Some(by)) => selection.table_json(store, by, q.as_deref())?,
                    _ => unreachable!("allowed_params admits only these paths"),
                };
                serde_json::to_vec(&json).map(Bytes::from).map_err(ApiError::internal)
            })
            .await?;
        if csv {
            let by = if by == Some(GroupColumn::AffiliateId) { "affiliates" } else { "campaigns" };
            return Ok(csv_response(answer, &format!("edgetally-{by}.csv")));
        }
        Ok(json_response(answer))
    }
}

// === impl StreamViewer ===

impl stream::Viewer for StreamViewer {
    fn scope_now(&self) -> Option<Scope> {
        self.dashboard.scope_of(self.credential.as_deref()).ok().map(|(scope, _)| scope)
    }
}

/// The parameters of a call, each given at most once.
struct Params(BTreeMap<String, String>);

impl Params {
    fn parse(query: Option<&str>, allowed: &[&str]) -> Result<Params, ApiError> {
        let mut params = BTreeMap::new();
        for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if !allowed.contains(&name.as_ref()) {
                let expected = if allowed.is_empty() { "none".to_owned() } else { allowed.join(", ") };
                return Err(ApiError::bad(format!("unknown parameter {name:?}: expected {expected}")));
            }
            if params.insert(name.clone().into_owned(), value.into_owned()).is_some() {
                return Err(ApiError::bad(format!("parameter {name:?} is given twice")));
            }
        }
        Ok(Params(params))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn id(&self, name: &str) -> Result<Option<u32>, ApiError> {
        self.get(name)
            .map(|text| {
                text.parse::<u32>().ok().filter(|&id| id != 0).ok_or_else(|| {
                    ApiError::bad(format!("{name} must be a number from 1 to {}, not {text:?}", u32::MAX))
                })
            })
            .transpose()
    }

    fn csv(&self) -> Result<bool, ApiError> {
        match self.get("format") {
            None | Some("json") => Ok(false),
            Some("csv") => Ok(true),
            Some(other) => Err(ApiError::bad(format!("format must be json or csv, not {other:?}"))),
        }
    }
}

/// The parameters each GET call takes; `None` for no such call.
fn allowed_params(path: &str) -> Option<&'static [&'static str]> {
    const PERIOD: [&str; 4] = ["period", "tz", "affiliate_id", "campaign_id"];
    Some(match path {
        "/api/session" | "/api/stream" | "/api/health" => &[],
        "/api/alerts" => &["format"],
        "/api/overview" => &PERIOD,
        "/api/table" => &["period", "tz", "affiliate_id", "campaign_id", "by", "format", "q"],
        "/api/series" => &["period", "tz", "affiliate_id", "campaign_id", "granularity"],
        _ => return None,
    })
}

fn known_path(path: &str) -> bool {
    matches!(path, "/" | "/assets/app.js" | "/assets/model.js" | "/assets/app.css" | "/api/login" | "/api/logout")
        || allowed_params(path).is_some()
}

/// The caller's credential as an `Authorization` value: the header, or
/// else the session cookie.
fn credential(headers: &HeaderMap) -> Option<Vec<u8>> {
    if let Some(authorization) = headers.get(AUTHORIZATION) {
        return Some(authorization.as_bytes().to_vec());
    }
    let token = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE_NAME)?.strip_prefix('='))?;
    let token = URL_SAFE_NO_PAD.decode(token).ok()?;
    let mut credential = b"Bearer ".to_vec();
    credential.extend_from_slice(&token);
    Some(credential)
}

fn logout() -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()).boxed_unsync());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let cookie = format!("{COOKIE_NAME}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    response.headers_mut().insert(SET_COOKIE, HeaderValue::from_str(&cookie).expect("a valid header value"));
    response
}

fn asset(body: &'static str, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The assets change with the binary: revalidate rather than keep.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    response
}

fn json_response(body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()).boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

fn json_value(value: &serde_json::Value) -> Response<Body> {
    json_response(serde_json::to_vec(value).unwrap_or_default())
}

fn csv_response(body: Bytes, file_name: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(body).boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let disposition = format!("attachment; filename=\"{file_name}\"");
    headers.insert(CONTENT_DISPOSITION, HeaderValue::from_str(&disposition).expect("a plain file name"));
    response
}
