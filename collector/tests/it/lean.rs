//! The lean pixel loop on plain HTTP/1.1: pipelined pixels, the hand-off
//! of a connection to hyper, its time-outs, and pixels counted exactly as
//! hyper's path counts them.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{TestCollector, get, metric};

/// One answer read off a raw connection: its status, its headers (names in
/// lowercase, in the order sent) and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RawAnswer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawAnswer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(each, _)| each == name).map(|(_, value)| value.as_str())
    }

    fn outcome(&self) -> Option<&str> {
        self.header("x-edgetally-outcome")
    }
}

/// Reads one answer per request in `heads` (true for a `HEAD`, whose
/// answer has no body whatever its `content-length` says), until the
/// collector closes the connection. Returns the answers and any bytes
/// after the last of them.
async fn read_raw_answers(stream: &mut (impl AsyncRead + Unpin), heads: &[bool]) -> (Vec<RawAnswer>, Vec<u8>) {
    let mut bytes = Vec::new();
    let mut answers = Vec::new();
    while answers.len() < heads.len() {
        let mut slots = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut slots);
        if let httparse::Status::Complete(head_len) = response.parse(&bytes).expect("an HTTP answer") {
            let headers: Vec<(String, String)> = response
                .headers
                .iter()
                .map(|header| (header.name.to_lowercase(), String::from_utf8_lossy(header.value).into_owned()))
                .collect();
            let length = headers.iter().find(|(name, _)| name == "content-length");
            let body_len = match length {
                Some((_, value)) if !heads[answers.len()] => value.parse().expect("a content-length"),
                _ => 0,
            };
            if bytes.len() >= head_len + body_len {
                let body = bytes[head_len..head_len + body_len].to_vec();
                answers.push(RawAnswer { status: response.code.unwrap(), headers, body });
                bytes.drain(..head_len + body_len);
                continue;
            }
        }
        let mut chunk = [0u8; 8192];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no answer or close within 10 s after {} answers", answers.len()));
        match read {
            Ok(0) | Err(_) => break,
            Ok(n_read) => bytes.extend_from_slice(&chunk[..n_read]),
        }
    }
    (answers, bytes)
}

/// Reads exactly `n` answers to `GET`s from `stream`, each with its
/// `content-length` body, and nothing more.
async fn read_answers(stream: &mut (impl AsyncRead + Unpin), n: usize) -> Vec<RawAnswer> {
    let (answers, rest) = read_raw_answers(stream, &vec![false; n]).await;
    assert_eq!(answers.len(), n, "closed after {} answers: {answers:?}", answers.len());
    assert!(rest.is_empty(), "more than {n} answers: {rest:?}");
    answers
}

async fn connect(collector: &TestCollector) -> TcpStream {
    TcpStream::connect(collector.base_url.trim_start_matches("http://")).await.expect("connect")
}

async fn metrics_text(collector: &TestCollector) -> String {
    String::from_utf8(get(&format!("{}/metrics", collector.base_url)).await.body.to_vec()).unwrap()
}

const IMPRESSIONS: &str = r#"edgetally_collector_events_accepted_total{kind="impression"}"#;

#[tokio::test]
async fn pipelined_pixels_then_a_post_share_one_connection() {
    let collector = TestCollector::start(&[]);
    let mut stream = connect(&collector).await;
    let event = r#"{"kind":"impression","affiliate_id":2,"campaign_id":2}"#;
    let requests = [
        "GET /p.gif?aff=1&cmp=2&eid=lean-1 HTTP/1.1\r\nhost: edge\r\nuser-agent: Mozilla/5.0\r\n\r\n".to_owned(),
        "GET /p.gif?aff=1&cmp=2&eid=lean-1 HTTP/1.1\r\nhost: edge\r\nconnection: keep-alive\r\n\r\n".to_owned(),
        "GET /p.gif?aff=x&cmp=2 HTTP/1.1\r\nhost: edge\r\n\r\n".to_owned(),
        format!(
            "POST /v1/events HTTP/1.1\r\nhost: edge\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{event}",
            event.len()
        ),
        // After the hand-off, hyper answers the rest of the connection.
        "GET /p.gif?aff=3&cmp=2 HTTP/1.1\r\nhost: edge\r\n\r\n".to_owned(),
    ];
    // All in one write: the loop answers the three pixels in one go, then
    // hands hyper the POST with what follows it.
    stream.write_all(requests.concat().as_bytes()).await.unwrap();
    let answers = read_answers(&mut stream, 5).await;
    let outcomes: Vec<_> = answers.iter().map(|answer| (answer.status, answer.outcome())).collect();
    assert_eq!(
        outcomes,
        [
            (200, Some("accepted")),
            (200, Some("duplicate")),
            (200, Some("bad_id")),
            (200, None),
            (200, Some("accepted"))
        ]
    );
    assert!(answers[..3].iter().all(|answer| answer.body == edgetally_collector::PIXEL_GIF), "{answers:?}");
    let posted: serde_json::Value = serde_json::from_slice(&answers[3].body).unwrap();
    assert_eq!(posted["accepted"], 1, "{posted}");
    // A HEAD answer has no body to read, whatever its content-length says.
    stream.write_all(b"HEAD /p.gif?aff=4&cmp=2 HTTP/1.1\r\nhost: edge\r\n\r\n").await.unwrap();
    let (head, rest) = read_raw_answers(&mut stream, &[true]).await;
    assert_eq!((head[0].status, head[0].outcome(), rest.as_slice()), (200, Some("accepted"), &b""[..]), "{head:?}");

    let text = metrics_text(&collector).await;
    // aff=1 (once; its repeat is a duplicate), the posted aff=2, aff=3 and
    // the HEAD's aff=4.
    assert_eq!(metric(&text, IMPRESSIONS), 4, "{text}");
    assert_eq!(metric(&text, r#"edgetally_collector_events_duplicate_total{source="pixel"}"#), 1, "{text}");
    assert_eq!(metric(&text, r#"edgetally_collector_events_rejected_total{source="pixel",reason="bad_id"}"#), 1);
}

#[tokio::test]
async fn a_long_pipeline_is_answered_in_order_across_reads_and_writes() {
    let collector = TestCollector::start(&[]);
    let mut stream = connect(&collector).await;
    // 400 heads of about 45 bytes: more than the loop's read buffer holds,
    // and answers more than it writes at once.
    let requests: String = (0..400).map(|aff| format!("GET /p.gif?aff={aff}&cmp=2 HTTP/1.1\r\n\r\n")).collect();
    assert!(requests.len() > 8 * 1024, "{}", requests.len());
    let (mut read_half, mut write_half) = stream.split();
    // Read as the answers come, so neither side waits on the other.
    let (written, answers) = tokio::join!(write_half.write_all(requests.as_bytes()), read_answers(&mut read_half, 400));
    written.unwrap();
    let outcomes: Vec<&str> = answers.iter().map(|answer| answer.outcome().unwrap()).collect();
    // aff=0 is not a valid affiliate; every other one is counted once.
    assert_eq!(outcomes[0], "bad_id");
    assert!(outcomes[1..].iter().all(|outcome| *outcome == "accepted"), "{outcomes:?}");
    assert_eq!(metric(&metrics_text(&collector).await, IMPRESSIONS), 399);
}

#[tokio::test]
async fn tls_connections_get_the_loop_and_the_hand_off_too() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("edge-cert.pem"), dir.path().join("edge-key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let (cert, key) = (cert.to_str().unwrap().to_owned(), key.to_str().unwrap().to_owned());
    let collector =
        TestCollector::start_in(dir, &["--tls-cert", &cert, "--tls-key", &key, "--header-read-timeout-ms", "500"]);
    let addr = collector.base_url.trim_start_matches("http://").to_owned();
    let mut store = rustls::RootCertStore::empty();
    store.add(certified.cert.der().clone()).unwrap();
    let tls = async |alpn: &[&[u8]]| {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store.clone())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        connector.connect(name, TcpStream::connect(&addr).await.unwrap()).await.expect("TLS handshake")
    };
    let event = r#"{"kind":"impression","affiliate_id":2,"campaign_id":2}"#;
    let post = format!(
        "POST /v1/events HTTP/1.1\r\nhost: edge\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{event}",
        event.len()
    );
    // A client that offers HTTP/1.1 by ALPN, and one that offers nothing.
    for alpn in [&[&b"http/1.1"[..]][..], &[]] {
        let mut stream = tls(alpn).await;
        let requests = [
            "GET /p.gif?aff=1&cmp=2 HTTP/1.1\r\nhost: edge\r\n\r\n",
            "GET /p.gif?aff=x&cmp=2 HTTP/1.1\r\nhost: edge\r\n\r\n",
            &post,
            "GET /p.gif?aff=3&cmp=2 HTTP/1.1\r\nhost: edge\r\n\r\n",
        ];
        stream.write_all(requests.concat().as_bytes()).await.unwrap();
        let answers = read_answers(&mut stream, 4).await;
        let outcomes: Vec<_> = answers.iter().map(|answer| (answer.status, answer.outcome())).collect();
        assert_eq!(outcomes, [(200, Some("accepted")), (200, Some("bad_id")), (200, None), (200, Some("accepted"))]);
        assert_eq!(answers[0].body, edgetally_collector::PIXEL_GIF);
    }
    // A head begun and never finished is cut off by the loop, which counts
    // it (hyper's path does not): the TLS pixels were the loop's.
    let mut slow = tls(&[b"http/1.1"]).await;
    slow.write_all(b"GET /p.gif?aff=1&cmp=2 HTTP/1.1\r\nhost: ed").await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0))), "not cut off: {read:?} {rest:?}");
    let mut stream = tls(&[b"http/1.1"]).await;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: edge\r\n\r\n").await.unwrap();
    let text = String::from_utf8(read_answers(&mut stream, 1).await.remove(0).body).unwrap();
    assert_eq!(metric(&text, IMPRESSIONS), 6, "{text}");
    assert_eq!(metric(&text, r#"edgetally_collector_requests_refused_total{reason="header_read_timeout"}"#), 1);
}

#[tokio::test]
async fn connection_close_and_http_1_0_get_hypers_answer_and_close() {
    let collector = TestCollector::start(&[]);
    for (request, connection) in [
        ("GET /p.gif?aff=1&cmp=2 HTTP/1.1\r\nhost: edge\r\nconnection: close\r\n\r\n", Some("close")),
        ("GET /p.gif?aff=1&cmp=2 HTTP/1.0\r\n\r\n", None),
    ] {
        let mut stream = connect(&collector).await;
        stream.write_all(request.as_bytes()).await.unwrap();
        let answers = read_answers(&mut stream, 1).await;
        assert_eq!((answers[0].status, answers[0].outcome()), (200, Some("accepted")));
        assert_eq!(answers[0].header("connection"), connection, "{request}");
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        assert!(matches!(read, Ok(Ok(0))), "{request}: not closed: {read:?} {rest:?}");
    }
    assert_eq!(metric(&metrics_text(&collector).await, IMPRESSIONS), 2);
}

#[tokio::test]
async fn busy_connections_outlive_the_header_read_timeout_and_slow_heads_do_not() {
    let collector = TestCollector::start(&["--header-read-timeout-ms", "300"]);
    // A pixel every 100 ms for a second: each head comes within the
    // time-out, so the connection is kept though it lives past it.
    let mut busy = connect(&collector).await;
    for _ in 0..10 {
        busy.write_all(b"GET /p.gif?aff=1&cmp=2 HTTP/1.1\r\nhost: edge\r\n\r\n").await.unwrap();
        assert_eq!(read_answers(&mut busy, 1).await[0].outcome(), Some("accepted"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A head begun after an answer and never finished is cut off, and
    // counted; an idle connection is closed, and not counted.
    let mut slow = connect(&collector).await;
    slow.write_all(b"GET /p.gif?aff=1&cmp=2 HTTP/1.1\r\nhost: edge\r\n\r\n").await.unwrap();
    assert_eq!(read_answers(&mut slow, 1).await[0].outcome(), Some("accepted"));
    slow.write_all(b"GET /p.gif?aff=1&cmp=2 HTTP/1.1\r\nhost: ed").await.unwrap();
    let mut idle = connect(&collector).await;
    for stream in [&mut slow, &mut idle] {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        assert!(matches!(read, Ok(Ok(0))), "not cut off: {read:?} {rest:?}");
    }
    let text = metrics_text(&collector).await;
    assert_eq!(metric(&text, IMPRESSIONS), 11, "{text}");
    assert_eq!(metric(&text, r#"edgetally_collector_requests_refused_total{reason="header_read_timeout"}"#), 1);
}

#[tokio::test]
async fn http2_with_prior_knowledge_is_handed_to_hyper() {
    let collector = TestCollector::start(&[]);
    let client = Client::builder(TokioExecutor::new()).http2_only(true).build_http::<Full<bytes::Bytes>>();
    for aff in 1..=3 {
        let url = format!("{}/p.gif?aff={aff}&cmp=2", collector.base_url);
        let response = client.get(url.parse().unwrap()).await.expect("h2 request");
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert_eq!(response.headers()["x-edgetally-outcome"], "accepted");
        assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), edgetally_collector::PIXEL_GIF[..]);
    }
    assert_eq!(metric(&metrics_text(&collector).await, IMPRESSIONS), 3);
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections_at_once() {
    let collector = TestCollector::start(&[]);
    let mut idle = connect(&collector).await;
    idle.write_all(b"GET /p.gif?aff=1&cmp=2 HTTP/1.1\r\nhost: edge\r\n\r\n").await.unwrap();
    assert_eq!(read_answers(&mut idle, 1).await[0].outcome(), Some("accepted"));
    collector.terminate();
    // Well within the header read time-out (10 s) and the drain time-out
    // (5 s), and before the process exits (its last shipping attempt to
    // the absent aggregator takes 5 s): the connection is closed as soon
    // as shutdown begins.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), idle.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0))), "not closed at shutdown: {read:?} {rest:?}");
}

/// The same pixels, on one keep-alive connection, against a
/// collector with the lean loop and one without it: same answers, same
/// counts.
#[tokio::test]
async fn lean_and_hyper_count_pixels_alike() {
    let pixels = [
        ("/p.gif?aff=1&cmp=2&sub1=a%2Db&eid=same-1", "Mozilla/5.0"),
        ("/p.gif?aff=1&cmp=2&sub1=a-b&eid=same-1", "Mozilla/5.0"),
        ("/p.gif?aff=1&cmp=2", "Googlebot/2.1 (+http://www.google.com/bot.html)"),
        ("/p.gif?aff=-1&cmp=2", "Mozilla/5.0"),
        ("/p.gif?aff=1", "Mozilla/5.0"),
        ("/p.gif?aff=1&cmp=2&sub1=%FF", "Mozilla/5.0"),
        ("/p.gif?aff=1&cmp=2&bogus=1", "Mozilla/5.0"),
        ("/p.gif?d=not*base64", "Mozilla/5.0"),
        ("/p.gif?d=eyJraW5kIjoiaW1wcmVzc2lvbiIsImFmZmlsaWF0ZV9pZCI6NSwiY2FtcGFpZ25faWQiOjZ9", "Mozilla/5.0"),
        ("/cv.gif?click_id=forged&amount=1.00&currency=USD", "Mozilla/5.0"),
        ("/cv.gif?amount=1.00&currency=USD", "Mozilla/5.0"),
    ];
    let mut seen = Vec::new();
    for lean in ["true", "false"] {
        let collector = TestCollector::start(&["--lean-pixels", lean]);
        let mut stream = connect(&collector).await;
        let mut outcomes = Vec::new();
        for (target, user_agent) in pixels {
            let request = format!("GET {target} HTTP/1.1\r\nhost: edge\r\nuser-agent: {user_agent}\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let answer = read_answers(&mut stream, 1).await.remove(0);
            assert_eq!((answer.status, answer.body.as_slice()), (200, &edgetally_collector::PIXEL_GIF[..]));
            outcomes.push(answer.outcome().unwrap().to_owned());
        }
        let text = metrics_text(&collector).await;
        let mut counts: Vec<String> = text
            .lines()
            .filter(|line| {
                ["events_accepted_total", "events_rejected_total", "events_duplicate_total", "events_flagged_total"]
                    .iter()
                    .any(|name| line.starts_with(&format!("edgetally_collector_{name}")))
            })
            .map(str::to_owned)
            .collect();
        counts.sort();
        seen.push((outcomes, counts));
    }
    assert_eq!(seen[0], seen[1]);
    let (outcomes, counts) = &seen[0];
    assert_eq!(
        outcomes,
        &[
            "accepted",
            "duplicate",
            "flagged",
            "bad_id",
            "missing_field",
            "bad_charset",
            "accepted",
            "bad_payload",
            "accepted",
            "click_id_truncated",
            "missing_field"
        ]
    );
    // The flagged one is accepted too, and counted apart.
    let impressions = r#"edgetally_collector_events_accepted_total{kind="impression"} 4"#;
    assert!(counts.iter().any(|line| line == impressions), "{counts:?}");
}

/// One answer as both paths must give it, its headers sorted and without
/// `date`; `None` when the collector closed the connection without one.
type Seen = Option<RawAnswer>;

/// A valid pixel sent after each random request on its connection: what
/// it gets shows where the collector thought the random request ended.
const FOLLOW_UP: &[u8] = b"GET /p.gif?aff=9&cmp=9 HTTP/1.1\r\nhost: edge\r\n\r\n";

/// Sends `requests` on a fresh connection, in one write, and reads an
/// answer to each, `None` for those after the collector closed it.
async fn answers_to(collector: &TestCollector, requests: &[&[u8]]) -> Vec<Seen> {
    let mut stream = connect(collector).await;
    stream.write_all(&requests.concat()).await.unwrap();
    let heads: Vec<bool> = requests.iter().map(|request| request.starts_with(b"HEAD ")).collect();
    let (answers, _) = read_raw_answers(&mut stream, &heads).await;
    let mut seen: Vec<Seen> = answers
        .into_iter()
        .map(|mut answer| {
            answer.headers.retain(|(name, _)| name != "date");
            answer.headers.sort();
            Some(answer)
        })
        .collect();
    seen.resize(requests.len(), None);
    seen
}

/// A random pixel request: mostly well-formed, with values drawn from
/// bytes that need escaping, bytes the URI parser refuses, escapes that
/// decode to bad UTF-8, and headers the loop must hand to hyper.
fn random_request(rng: &mut impl Rng) -> Vec<u8> {
    const PATHS: &[&str] = &["/p.gif", "/p.gif", "/p.gif", "/cv.gif", "/p.gifx", "/P.GIF", "/pb"];
    const KEYS: &[&str] =
        &["aff", "cmp", "sub1", "sub2", "sub5", "eid", "ts", "d", "click_id", "amount", "currency", "bogus", ""];
    const PIECES: &[&str] = &[
        "1",
        "2",
        "42",
        "0",
        "-1",
        "4294967296",
        "a",
        "Z",
        "x-y_z.~",
        "%2D",
        "%41",
        "%FF",
        "%",
        "%zz",
        "+",
        "{",
        "}",
        "\"",
        "#",
        "|",
        "^",
        "`",
        "<",
        ">",
        "\\",
        ";",
        "=",
        "&",
        "/",
        "?",
        ":",
        "@",
        "!",
        "$",
        "'",
        "(",
        ")",
        "*",
        ",",
        "USD",
        "1.00",
        "12.345",
        "eyJraW5kIjoiaW1wcmVzc2lvbiIsImFmZmlsaWF0ZV9pZCI6NSwiY2FtcGFpZ25faWQiOjZ9",
    ];
    const AGENTS: &[&str] = &["Mozilla/5.0", "Googlebot/2.1", "curl/8.0", ""];
    const EXTRA: &[&str] = &[
        "",
        "",
        "",
        "connection: keep-alive\r\n",
        "content-length: 0\r\n",
        "x-forwarded-for: 10.0.0.1\r\n",
        "content-length: 2\r\n",
        "connection: upgrade\r\n",
        "expect: 100-continue\r\n",
    ];
    let mut target = PATHS[rng.random_range(0..PATHS.len())].to_owned();
    // Most carry a valid affiliate and campaign, so that what follows
    // decides the outcome.
    let valid = rng.random_range(0..10) < 7;
    if valid {
        target.push_str(&format!("?aff={}&cmp={}", rng.random_range(1..6), rng.random_range(1..4)));
    }
    for pair_idx in 0..rng.random_range(0..4) {
        target.push(if pair_idx == 0 && !valid { '?' } else { '&' });
        target.push_str(KEYS[rng.random_range(0..KEYS.len())]);
        target.push('=');
        for _ in 0..rng.random_range(0..4) {
            target.push_str(PIECES[rng.random_range(0..PIECES.len())]);
        }
    }
    let method = if rng.random_range(0..20) == 0 { "HEAD" } else { "GET" };
    let user_agent = AGENTS[rng.random_range(0..AGENTS.len())];
    let extra = EXTRA[rng.random_range(0..EXTRA.len())];
    let body = if extra == "content-length: 2\r\n" { "{}" } else { "" };
    format!("{method} {target} HTTP/1.1\r\nhost: edge\r\nuser-agent: {user_agent}\r\n{extra}\r\n{body}").into_bytes()
}

/// Random pixel requests, in the same order, to a collector with the lean
/// loop and one without it: every answer and every event counter agree,
/// each request on its own connection, then pipelined on one.
#[tokio::test]
async fn random_pixels_get_the_same_answers_and_counts_on_both_paths() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(20_261_206);
    let requests: Vec<Vec<u8>> = (0..300).map(|_| random_request(&mut rng)).collect();
    let mut seen: Vec<(Vec<Vec<Seen>>, Vec<String>)> = Vec::new();
    for lean in ["true", "false"] {
        let collector = TestCollector::start(&["--lean-pixels", lean]);
        let mut answers = Vec::with_capacity(requests.len() + 1);
        for request in &requests {
            answers.push(answers_to(&collector, &[request, FOLLOW_UP]).await);
        }
        // Then every request that kept its connection open, pipelined on
        // one connection: the loop hands it to hyper at the first that is
        // not a pixel, mid-pipeline.
        // Pixels first, so that the hand-off comes after answers made from
        // the same read.
        let kept: Vec<&[u8]> = [FOLLOW_UP; 3]
            .into_iter()
            .chain(
                requests
                    .iter()
                    .zip(&answers)
                    .filter(|(_, answers)| answers[1].is_some())
                    .map(|(request, _)| request.as_slice()),
            )
            .collect();
        answers.push(answers_to(&collector, &kept).await);
        let text = metrics_text(&collector).await;
        let mut counts: Vec<String> = text
            .lines()
            .filter(|line| line.starts_with("edgetally_collector_events_") || line.contains("requests_refused_total"))
            .filter(|line| !line.starts_with('#') && !line.contains("lateness"))
            .map(str::to_owned)
            .collect();
        counts.sort();
        seen.push((answers, counts));
    }
    let (lean, hyper) = (&seen[0], &seen[1]);
    for (idx, (lean_answers, hyper_answers)) in lean.0.iter().zip(&hyper.0).enumerate() {
        let request = requests.get(idx).map_or("the pipeline".into(), |request| String::from_utf8_lossy(request));
        assert_eq!(lean_answers, hyper_answers, "request {idx}: {request}");
    }
    assert_eq!(lean.1, hyper.1);
    // The mix reaches every kind of answer: counted, refused and rejected.
    let singles = &lean.0[..requests.len()];
    let statuses: std::collections::BTreeSet<u16> =
        singles.iter().flat_map(|answers| &answers[0]).map(|answer| answer.status).collect();
    assert!(statuses.is_superset(&[200, 400].into()), "{statuses:?}");
    let outcomes: std::collections::BTreeSet<&str> =
        singles.iter().flat_map(|answers| &answers[0]).filter_map(RawAnswer::outcome).collect();
    for outcome in ["accepted", "flagged", "bad_id", "missing_field"] {
        assert!(outcomes.contains(outcome), "{outcome} never answered: {outcomes:?}");
    }
    // Most follow-ups were answered (the rest came after an answer that
    // closed the connection, on both paths alike).
    let n_followed = singles.iter().filter(|answers| answers[1].is_some()).count();
    assert!(n_followed > 200, "{n_followed}");
    // The pipeline went on past hand-offs: most of it was answered.
    let pipeline = &lean.0[requests.len()];
    assert_eq!(pipeline.len(), 3 + n_followed);
    let n_answered = pipeline.iter().filter(|answer| answer.is_some()).count();
    assert!(n_answered > n_followed / 2, "{n_answered} of {n_followed}");
}
