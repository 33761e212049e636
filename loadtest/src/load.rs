//! The load engine: keep-alive connections that send the mix open-loop at a
//! target rate, or closed-loop as fast as answers come back.
//!
//! Open loop follows wrk2: every request has an intended send time on a fixed
//! schedule. When the connection was still waiting for the server at that
//! time, latency is measured from the intended time, not from when the
//! request could be sent: a server that stalls shows its stall in the latency
//! of every request scheduled during it, instead of silently slowing the
//! generator down (coordinated omission). When the connection was idle, the
//! only delay before sending is the generator's own timer (tokio's is
//! millisecond-grained), which says nothing about the server, so latency is
//! measured from the actual send.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::{CONTENT_TYPE, HOST, USER_AGENT};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;

use crate::freshness::Tracker;
use crate::http1::{Answer, Http1Error, Io};
use crate::ledger::{Ledger, Truth};
use crate::mix::{Label, Mix, MixArgs, Plan};

/// Latencies are recorded in microseconds from 1 µs to 60 s with three
/// significant digits: about 200 KiB per histogram, one per connection task.
const LATENCY_US_MAX: u64 = 60_000_000;

#[derive(Clone)]
pub(crate) struct LoadConfig {
    /// `host:port` of each collector; connections are spread round-robin.
    pub(crate) targets: Vec<String>,
    pub(crate) connections: usize,
    /// Concurrent requests per HTTP/2 connection (1 for HTTP/1.1).
    pub(crate) streams: usize,
    pub(crate) http2: bool,
    /// Requests per second in total; `None` runs closed-loop at full speed.
    pub(crate) rate: Option<f64>,
    /// Open loop: yield through the last millisecond before each intended
    /// send time instead of sleeping to it.
    pub(crate) precise_timer: bool,
    pub(crate) duration: Option<Duration>,
    pub(crate) requests_max: Option<u64>,
    pub(crate) timeout: Duration,
    pub(crate) seed: u64,
    pub(crate) mix: MixArgs,
    /// TLS towards the targets, with the roots that verify them.
    pub(crate) tls: Option<TlsConnector>,
    /// Where leads and sales are registered for the freshness figure, when
    /// the run follows the aggregator.
    pub(crate) freshness: Option<Arc<Tracker>>,
}

/// Live counters, read by the progress line.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    pub(crate) sent: AtomicU64,
    pub(crate) answered: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) accepted_events: AtomicU64,
}

/// What one run produced.
pub(crate) struct Outcome {
    pub(crate) latency_us: Histogram<u64>,
    pub(crate) ledger: Ledger,
    /// Answers per request label and outcome (`accepted`, a rejection
    /// reason, or `http_<status>`).
    pub(crate) answers: HashMap<Label, HashMap<String, u64>>,
    /// Requests that got no answer, by error kind.
    pub(crate) errors: HashMap<&'static str, u64>,
    pub(crate) n_answered: u64,
    pub(crate) elapsed: Duration,
}

// === impl Outcome ===

impl Outcome {
    fn new() -> Outcome {
        Outcome {
            // The bounds are constants that satisfy the constructor's rules.
            latency_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds"),
            ledger: Ledger::default(),
            answers: HashMap::new(),
            errors: HashMap::new(),
            n_answered: 0,
            elapsed: Duration::ZERO,
        }
    }

    fn merge(&mut self, other: Outcome) {
        // Both histograms share the same bounds, so adding cannot fail.
        self.latency_us.add(&other.latency_us).expect("same histogram bounds");
        self.ledger.merge(other.ledger);
        for (label, outcomes) in other.answers {
            let mine = self.answers.entry(label).or_default();
            for (outcome, n) in outcomes {
                *mine.entry(outcome).or_default() += n;
            }
        }
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        self.n_answered += other.n_answered;
    }

    fn answer(&mut self, label: Label, outcome: &str) {
        let outcomes = self.answers.entry(label).or_default();
        match outcomes.get_mut(outcome) {
            Some(n) => *n += 1,
            None => {
                outcomes.insert(outcome.to_owned(), 1);
            }
        }
    }
}

/// One request's failure to get an answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("handshake: {0}")]
    Handshake(hyper::Error),
    #[error("request: {0}")]
    Request(hyper::Error),
    #[error("{0}")]
    Http1(#[from] Http1Error),
    #[error("tls: {0}")]
    Tls(String),
    #[error("timed out")]
    Timeout,
}

impl SendError {
    fn kind(&self) -> &'static str {
        match self {
            SendError::Connect(_) => "connect",
            SendError::Handshake(_) => "handshake",
            SendError::Request(_) => "request",
            SendError::Http1(Http1Error::Io(_)) => "io",
            SendError::Http1(Http1Error::Closed) => "closed",
            SendError::Http1(
                Http1Error::Parse(_) | Http1Error::HeadTooLarge | Http1Error::NoLength | Http1Error::BodyTooLarge(_),
            ) => "bad_response",
            SendError::Tls(_) => "tls",
            SendError::Timeout => "timeout",
        }
    }
}

/// The connection a task sends on: its own for HTTP/1.1, shared by the
/// tasks of one connection for HTTP/2.
enum Link {
    Http1(Option<crate::http1::Connection>),
    Http2(Arc<Mutex<Option<http2::SendRequest<Full<Bytes>>>>>),
}

// === impl Link ===

impl Link {
    async fn send(&mut self, target: &str, tls: Option<&TlsConnector>, plan: &Plan) -> Result<Answer, SendError> {
        match self {
            Link::Http1(slot) => {
                let connection = match slot {
                    Some(connection) => connection,
                    None => slot.insert(crate::http1::Connection::new(connect(target, tls).await?)),
                };
                let request = crate::http1::Request {
                    post: plan.is_post,
                    path_and_query: &plan.path_and_query,
                    host: target,
                    user_agent: plan.user_agent,
                    forwarded_for: Some(plan.visitor_ip),
                    content_type: "application/json",
                    body: &plan.body,
                };
                match connection.exchange(&request, plan.is_post).await {
                    Ok(answer) => {
                        if answer.closing {
                            *slot = None;
                        }
                        Ok(answer)
                    }
                    Err(error) => {
                        *slot = None;
                        Err(error.into())
                    }
                }
            }
            Link::Http2(shared) => {
                let mut sender = {
                    let mut slot = shared.lock().await;
                    match &*slot {
                        Some(sender) if !sender.is_closed() => sender.clone(),
                        _ => {
                            let io = TokioIo::new(connect(target, tls).await?);
                            let (sender, connection) =
                                http2::handshake(TokioExecutor::new(), io).await.map_err(SendError::Handshake)?;
                            tokio::spawn(connection);
                            slot.insert(sender).clone()
                        }
                    }
                };
                let sent = async {
                    sender.ready().await?;
                    sender.send_request(build_request(target, plan)).await
                };
                let response = match sent.await {
                    Ok(response) => response,
                    Err(error) => {
                        *shared.lock().await = None;
                        return Err(SendError::Request(error));
                    }
                };
                let status = response.status().as_u16();
                let header =
                    |name: &str| response.headers().get(name).map(|value| Bytes::copy_from_slice(value.as_bytes()));
                let outcome = header(edgetally_collector::OUTCOME_HEADER);
                let location = header("location");
                let body = response.into_body().collect().await.map_err(SendError::Request)?.to_bytes();
                Ok(Answer { status, outcome, location, body, closing: false })
            }
        }
    }
}

pub(crate) async fn connect(target: &str, tls: Option<&TlsConnector>) -> Result<Box<dyn Io>, SendError> {
    let stream = TcpStream::connect(target).await.map_err(SendError::Connect)?;
    let _ = stream.set_nodelay(true);
    let Some(tls) = tls else { return Ok(Box::new(stream)) };
    // The certificate is checked against the target's host name.
    let host = target.rsplit_once(':').map_or(target, |(host, _)| host).trim_matches(['[', ']']);
    let server_name = ServerName::try_from(host.to_owned()).map_err(|_| SendError::Tls(format!("bad host {host}")))?;
    let stream = tls.connect(server_name, stream).await.map_err(|error| SendError::Tls(error.to_string()))?;
    Ok(Box::new(stream))
}

/// A TLS client for the targets, trusting the certificates in `ca_pem`,
/// offering `h2` or `http/1.1` by ALPN.
pub(crate) fn tls_connector(ca_pem: &std::path::Path, http2: bool) -> anyhow::Result<TlsConnector> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls_pki_types::CertificateDer::pem_file_iter(ca_pem)
        .with_context(|| format!("reading {}", ca_pem.display()))?
    {
        roots.add(certificate.with_context(|| format!("reading {}", ca_pem.display()))?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![if http2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Runs the load until the duration or the request cap is reached, or
/// `stop` turns true.
pub(crate) async fn run(
    config: &LoadConfig,
    progress: Arc<Progress>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Outcome> {
    anyhow::ensure!(!config.targets.is_empty(), "no target collector");
    anyhow::ensure!(config.connections > 0 && config.streams > 0, "connections and streams must be positive");
    if let Some(rate) = config.rate {
        anyhow::ensure!(rate > 0.0 && rate.is_finite(), "rate must be positive, got {rate}");
    }
    anyhow::ensure!(
        config.duration.is_some() || config.requests_max.is_some() || config.rate.is_some(),
        "a max-rate run needs a duration or a request cap to stop by itself"
    );
    let n_tasks = config.connections * if config.http2 { config.streams } else { 1 };
    let setup = crate::mix::Setup::new(&config.mix).context("building the traffic mix")?;
    let start = Instant::now();
    let end = config.duration.map(|duration| start + duration);
    let mut tasks = Vec::with_capacity(n_tasks);
    for connection_idx in 0..config.connections {
        let target = config.targets[connection_idx % config.targets.len()].clone();
        let shared = Arc::new(Mutex::new(None));
        let n_streams = if config.http2 { config.streams } else { 1 };
        for stream_idx in 0..n_streams {
            let task_idx = connection_idx * n_streams + stream_idx;
            let link = if config.http2 { Link::Http2(shared.clone()) } else { Link::Http1(None) };
            let mix = Mix::new(&config.mix, task_idx, setup.clone()).context("building the traffic mix")?;
            let schedule = config.rate.map(|rate| Schedule {
                first: start + Duration::from_secs_f64(task_idx as f64 / rate),
                interval: Duration::from_secs_f64(n_tasks as f64 / rate),
                precise: config.precise_timer,
            });
            let task = Task {
                target: target.clone(),
                tls: config.tls.clone(),
                link,
                mix,
                rng: StdRng::seed_from_u64(config.seed.wrapping_mul(1_000_003).wrapping_add(task_idx as u64)),
                schedule,
                end,
                requests_max: config.requests_max,
                timeout: config.timeout,
                progress: progress.clone(),
                stop: stop.clone(),
                freshness: config.freshness.clone(),
            };
            tasks.push(tokio::spawn(task.run()));
        }
    }
    let mut outcome = Outcome::new();
    for task in tasks {
        outcome.merge(task.await.context("load task panicked")?);
    }
    outcome.elapsed = start.elapsed();
    Ok(outcome)
}

struct Schedule {
    first: Instant,
    interval: Duration,
    /// Yield through the last millisecond before a send instead of
    /// sleeping to it.
    precise: bool,
}

struct Task {
    target: String,
    tls: Option<TlsConnector>,
    link: Link,
    mix: Mix,
    rng: StdRng,
    schedule: Option<Schedule>,
    end: Option<Instant>,
    requests_max: Option<u64>,
    timeout: Duration,
    progress: Arc<Progress>,
    stop: watch::Receiver<bool>,
    freshness: Option<Arc<Tracker>>,
}

// === impl Task ===

impl Task {
    async fn run(mut self) -> Outcome {
        let mut outcome = Outcome::new();
        let mut previous: Option<Plan> = None;
        let mut previous_done = Instant::now();
        for request_idx in 0u32.. {
            let intended = match &self.schedule {
                Some(schedule) => schedule.first + schedule.interval * request_idx,
                None => Instant::now(),
            };
            if self.end.is_some_and(|end| intended >= end) || *self.stop.borrow() {
                break;
            }
            if intended > Instant::now() {
                // tokio's timer wakes up to a millisecond late: a precise
                // schedule sleeps to a millisecond before and yields the
                // rest, letting the other connections run meanwhile.
                let precise = self.schedule.as_ref().is_some_and(|schedule| schedule.precise);
                let wake =
                    if precise { intended.checked_sub(Duration::from_millis(1)).unwrap_or(intended) } else { intended };
                if wake > Instant::now() {
                    tokio::select! {
                        _ = tokio::time::sleep_until(wake) => {}
                        _ = self.stop.wait_for(|stop| *stop) => break,
                    }
                }
                while Instant::now() < intended {
                    tokio::task::yield_now().await;
                }
            }
            let n_sent = self.progress.sent.fetch_add(1, Ordering::Relaxed);
            if self.requests_max.is_some_and(|max| n_sent >= max) {
                break;
            }
            // Busy at the intended time: the wait was the server's. Idle: the
            // wait was our timer's.
            let started = if previous_done > intended { intended } else { Instant::now() };
            let plan = self.mix.next(&mut self.rng, previous.as_ref());
            if outcome.ledger.first_sent_ms == 0 {
                outcome.ledger.first_sent_ms = now_ms();
            }
            // Order ids this send registered for freshness; empty (and not
            // allocated) for everything but leads and sales.
            let tracked: Vec<&str> = match &self.freshness {
                Some(tracker) => {
                    let sent_at = Instant::now();
                    let order_ids = plan.truths.iter().filter_map(|truth| truth.order_id.as_deref());
                    order_ids.filter(|order_id| tracker.sent(order_id, sent_at)).collect()
                }
                None => Vec::new(),
            };
            let answer =
                tokio::time::timeout(self.timeout, self.link.send(&self.target, self.tls.as_ref(), &plan)).await;
            let answer = answer.unwrap_or(Err(SendError::Timeout));
            previous_done = Instant::now();
            let latency_us = (previous_done - started).as_micros().min(u128::from(LATENCY_US_MAX)) as u64;
            match answer {
                Ok(answer) => {
                    // Saturated to the histogram's upper bound above.
                    outcome.latency_us.saturating_record(latency_us.max(1));
                    outcome.n_answered += 1;
                    outcome.ledger.last_answer_ms = now_ms();
                    self.progress.answered.fetch_add(1, Ordering::Relaxed);
                    let mut accepted_order_ids = Vec::new();
                    let n_accepted = settle(&mut outcome, &mut self.mix, &plan, &answer, &mut |truth| {
                        if !tracked.is_empty()
                            && let Some(order_id) = truth.order_id.as_deref()
                        {
                            accepted_order_ids.push(order_id);
                        }
                    });
                    self.progress.accepted_events.fetch_add(n_accepted, Ordering::Relaxed);
                    if let Some(tracker) = &self.freshness {
                        for order_id in &tracked {
                            tracker.answered(order_id, accepted_order_ids.contains(order_id));
                        }
                    }
                }
                Err(error) => {
                    if let Some(tracker) = &self.freshness {
                        for order_id in &tracked {
                            tracker.answered(order_id, false);
                        }
                    }
                    *outcome.errors.entry(error.kind()).or_default() += 1;
                    self.progress.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%error, target = %self.target, "Request failed.");
                    // A refused connection would otherwise spin in max mode.
                    if self.schedule.is_none() && matches!(error, SendError::Connect(_)) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            previous = Some(plan);
        }
        outcome
    }
}

/// An HTTP/2 request, which carries the scheme and authority in its URI.
fn build_request(target: &str, plan: &Plan) -> http::Request<Full<Bytes>> {
    let uri = format!("http://{target}{}", plan.path_and_query);
    let builder = http::Request::builder()
        .method(if plan.is_post { http::Method::POST } else { http::Method::GET })
        .uri(uri)
        .header(HOST, target)
        .header(USER_AGENT, plan.user_agent)
        .header("x-forwarded-for", plan.visitor_ip.to_string());
    let builder = if plan.is_post { builder.header(CONTENT_TYPE, "application/json") } else { builder };
    // Every part comes from the mix, which only produces valid URIs and
    // header values.
    builder.body(Full::new(plan.body.clone())).expect("valid request")
}

/// Books an answer into the ledger and the answer counts, and gives the
/// mix the click ID of an accepted click; calls `on_accept` with each
/// accepted event and returns their number.
fn settle<'plan>(
    outcome: &mut Outcome,
    mix: &mut Mix,
    plan: &'plan Plan,
    answer: &Answer,
    on_accept: &mut dyn FnMut(&'plan Truth),
) -> u64 {
    let verdict = || answer.outcome.as_deref().and_then(|value| std::str::from_utf8(value).ok());
    match (plan.is_post, answer.status) {
        // A click: the redirect carries the click ID for later conversions.
        (false, 302) => {
            let flagged = verdict() == Some("flagged");
            let Some(truth) = plan.truths.first().filter(|_| verdict() == Some("accepted") || flagged) else {
                outcome.answer(plan.label, verdict().unwrap_or("no_outcome"));
                return 0;
            };
            outcome.answer(plan.label, if flagged { "flagged" } else { "accepted" });
            outcome.ledger.accept(truth, flagged);
            on_accept(truth);
            match answer.location.as_deref().and_then(click_id_in) {
                Some(click_id) => mix.remember_click(click_id, truth.affiliate_id, truth.campaign_id),
                None => outcome.answer(plan.label, "no_click_id_in_location"),
            }
            1
        }
        // A pixel or postback answered 200 carries its outcome in a header
        // (pixels) or its body (postbacks).
        (false, 200) => {
            let status = match verdict() {
                Some(verdict) => verdict.to_owned(),
                None => serde_json::from_slice::<serde_json::Value>(&answer.body)
                    .ok()
                    .and_then(|body| body["status"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| "no_outcome".to_owned()),
            };
            let flagged = status == "flagged";
            let accepted = status == "accepted" || flagged;
            let label = status.as_str();
            outcome.answer(plan.label, label);
            if label == "duplicate"
                && let Some(truth) = plan.truths.first()
            {
                outcome.ledger.duplicate(truth);
            }
            match plan.truths.first().filter(|_| accepted) {
                Some(truth) => {
                    outcome.ledger.accept(truth, flagged);
                    on_accept(truth);
                    1
                }
                None => 0,
            }
        }
        (false, status) => {
            let reason = serde_json::from_slice::<serde_json::Value>(&answer.body)
                .ok()
                .and_then(|body| body["reason"].as_str().map(|reason| format!("http_{status}_{reason}")));
            outcome.answer(plan.label, reason.as_deref().unwrap_or(&format!("http_{status}")));
            0
        }
        (true, 200) => {
            let Ok(body) = serde_json::from_slice::<serde_json::Value>(&answer.body) else {
                outcome.answer(plan.label, "unreadable_answer");
                return 0;
            };
            let results = body["results"].as_array().map(Vec::as_slice).unwrap_or_default();
            if results.len() != plan.truths.len() {
                outcome.answer(plan.label, "result_count_mismatch");
                return 0;
            }
            let mut n_accepted = 0;
            for (truth, result) in plan.truths.iter().zip(results) {
                if result["status"] == "accepted" || result["status"] == "flagged" {
                    let flagged = result["status"] == "flagged";
                    outcome.ledger.accept(truth, flagged);
                    on_accept(truth);
                    outcome.answer(plan.label, if flagged { "flagged" } else { "accepted" });
                    n_accepted += 1;
                } else if result["status"] == "duplicate" {
                    outcome.ledger.duplicate(truth);
                    outcome.answer(plan.label, "duplicate");
                } else {
                    outcome.answer(plan.label, result["reason"].as_str().unwrap_or("rejected"));
                }
            }
            n_accepted
        }
        (true, status) => {
            outcome.answer(plan.label, &format!("http_{status}"));
            0
        }
    }
}

/// The click ID in a landing URL: the 48-character value of its `click_id`
/// (or other) parameter or path segment.
fn click_id_in(location: &[u8]) -> Option<&str> {
    let location = std::str::from_utf8(location).ok()?;
    location.split(['=', '&', '/', '?']).find(|part| part.len() == edgetally_protocol::click_id::CLICK_ID_LEN)
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as i64)
}
