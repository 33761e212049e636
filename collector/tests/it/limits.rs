//! TLS and limits: each limit answers its own status and is counted, while
//! other clients keep being served.

use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{TestCollector, get, metric};

fn refused(text: &str, reason: &str) -> u64 {
    metric(text, &format!(r#"edgetally_collector_requests_refused_total{{reason="{reason}"}}"#))
}

async fn metrics_text(base: &str) -> String {
    String::from_utf8(get(&format!("{base}/metrics")).await.body.to_vec()).unwrap()
}

#[tokio::test]
async fn tls_serves_http1_and_http2_and_refuses_tls_1_1() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = dir.path().join("edge-cert.pem");
    let key = dir.path().join("edge-key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let collector =
        TestCollector::start_in(dir, &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    let port = collector.base_url.rsplit(':').next().unwrap().to_owned();
    let resolve = format!("localhost:{port}:127.0.0.1");
    let url = format!("https://localhost:{port}/p.gif?aff=1&cmp=2");

    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let output = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_version} %{http_code} %{size_download}", flag])
            .args(["--cacert", cert.to_str().unwrap(), "--resolve", &resolve, &url])
            .output()
            .expect("curl is installed");
        assert_eq!(String::from_utf8_lossy(&output.stdout), format!("{version} 200 43"));
    }

    // rustls speaks TLS 1.2 and 1.3 only: a client offering TLS 1.1 (and
    // allowed to by its own security level) is refused in the handshake.
    let handshake = |version_flag: &str| {
        Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), version_flag])
            .args(["-cipher", "DEFAULT:@SECLEVEL=0", "-servername", "localhost"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl is installed")
    };
    let old = handshake("-tls1_1");
    assert!(!old.status.success(), "TLS 1.1 handshake succeeded");
    assert!(String::from_utf8_lossy(&old.stderr).contains("alert"), "{}", String::from_utf8_lossy(&old.stderr));
    let current = handshake("-tls1_2");
    assert!(String::from_utf8_lossy(&current.stdout).contains("Protocol  : TLSv1.2"));

    // Plain HTTP on the TLS port is a failed handshake, counted.
    let mut plain = TcpStream::connect(format!("127.0.0.1:{port}")).await.unwrap();
    plain.write_all(b"GET /p.gif HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(!answer.starts_with(b"HTTP/1.1 200"));
    let metrics = Command::new("curl")
        .args(["-s", "--cacert", cert.to_str().unwrap(), "--resolve", &resolve])
        .arg(format!("https://localhost:{port}/metrics"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&metrics.stdout);
    assert_eq!(refused(&text, "tls_handshake"), 2, "{text}");
    assert_eq!(metric(&text, r#"edgetally_collector_events_accepted_total{kind="impression"}"#), 2, "{text}");
}

#[tokio::test]
async fn connection_limit_sheds_with_503_and_recovers() {
    let collector = TestCollector::start(&["--connections-max", "2"]);
    let addr = collector.base_url.trim_start_matches("http://").to_owned();
    let request = b"GET /healthz HTTP/1.1\r\nhost: edge\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut buf = [0u8; 256];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(stream);
    }
    let mut third = TcpStream::connect(&addr).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");

    // A held connection still works; once one closes, a new one is served.
    held[0].write_all(request).await.unwrap();
    let mut buf = [0u8; 256];
    let n = held[0].read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: edge\r\nconnection: close\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        if answer.starts_with("HTTP/1.1 200") {
            assert!(refused(&answer, "connections_full") >= 1, "{answer}");
            assert_eq!(metric(&answer, "edgetally_collector_connections_open"), 2, "{answer}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no connection slot came free: {answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn long_urls_and_slow_clients_get_their_answers() {
    let collector = TestCollector::start(&["--url-bytes-max", "200", "--header-read-timeout-ms", "300"]);
    let base = &collector.base_url;
    let long = format!("{base}/p.gif?aff=1&cmp=2&cb={}", "9".repeat(200));
    let answer = get(&long).await;
    assert_eq!(answer.status, 414);
    assert_eq!(answer.json()["error"], format!("url too long: {} bytes, limit is 200", long.len() - base.len()));

    // A client that never finishes its request head is cut off, while
    // another client is served meanwhile.
    let addr = base.trim_start_matches("http://");
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /p.gif?aff=1&cmp=2 HTTP/1.1\r\nhost: ed").await.unwrap();
    assert_eq!(get(&format!("{base}/healthz")).await.status, 200);
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the slow client was never cut off");
    assert!(!String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 200"));

    let text = metrics_text(base).await;
    assert_eq!(refused(&text, "url_too_long"), 1, "{text}");
    assert_eq!(metric(&text, r#"edgetally_collector_events_accepted_total{kind="impression"}"#), 0, "{text}");
}

#[tokio::test]
async fn a_flood_from_one_client_is_limited_while_others_are_served() {
    flood_from_one_client("true").await;
}

/// As above, pixels answered by hyper rather than the lean loop.
#[tokio::test]
async fn a_flood_from_one_client_is_limited_on_hypers_path_too() {
    flood_from_one_client("false").await;
}

async fn flood_from_one_client(lean_pixels: &str) {
    let collector = TestCollector::start(&[
        "--lean-pixels",
        lean_pixels,
        "--ip-rate-per-sec",
        "1",
        "--ip-rate-burst",
        "5",
        "--client-ip-header",
        "x-forwarded-for",
    ]);
    let base = &collector.base_url;
    let pixel = |client: &'static str| {
        let request = http::Request::get(format!("{base}/p.gif?aff=1&cmp=2"))
            .header("x-forwarded-for", client)
            .body(http_body_util::Full::default())
            .unwrap();
        async move {
            let answer = crate::support::send(request).await;
            assert_eq!(answer.status, 200);
            assert_eq!(&answer.body[..], &edgetally_collector::PIXEL_GIF[..]);
            answer.headers["x-edgetally-outcome"].to_str().unwrap().to_owned()
        }
    };
    let mut outcomes = Vec::new();
    for _ in 0..10 {
        outcomes.push(pixel("203.0.113.9").await);
    }
    // A burst of five, then one more per second at most.
    assert_eq!(outcomes[..5], ["accepted"; 5]);
    let n_limited = outcomes.iter().filter(|outcome| *outcome == "rate_limited").count();
    assert!(n_limited >= 4, "{outcomes:?}");
    let request = http::Request::post(format!("{base}/v1/events"))
        .header("x-forwarded-for", "203.0.113.9")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    let answer = crate::support::send(request).await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.headers["retry-after"], "1");
    assert_eq!(answer.json()["reason"], "rate_limited");

    // Another client, and health checks, are served meanwhile.
    assert_eq!(pixel("203.0.113.10").await, "accepted");
    assert_eq!(get(&format!("{base}/healthz")).await.status, 200);
    let text = metrics_text(base).await;
    let limited = r#"edgetally_collector_events_rejected_total{source="pixel",reason="rate_limited"}"#;
    assert_eq!(metric(&text, limited), n_limited as u64, "{text}");
    assert_eq!(refused(&text, "rate_limited"), 1, "{text}");
    let accepted = r#"edgetally_collector_events_accepted_total{kind="impression"}"#;
    assert_eq!(metric(&text, accepted), 11 - n_limited as u64, "{text}");
}

#[tokio::test]
async fn requests_past_the_in_flight_limit_are_shed_at_once() {
    requests_past_the_in_flight_limit("true").await;
}

/// As above, pixels answered by hyper rather than the lean loop.
#[tokio::test]
async fn requests_past_the_in_flight_limit_are_shed_on_hypers_path_too() {
    requests_past_the_in_flight_limit("false").await;
}

async fn requests_past_the_in_flight_limit(lean_pixels: &str) {
    let collector = TestCollector::start(&["--lean-pixels", lean_pixels, "--requests-in-flight-max", "1"]);
    let base = &collector.base_url;
    let addr = base.trim_start_matches("http://");
    // A post whose body is still arriving holds the one slot. Requests run
    // on both HTTP workers, so a pixel of the loop below can hold the slot
    // at the moment a post's head arrives: then the post is the one shed
    // (answered 503 at once), and another takes its place.
    let body = r#"{"kind":"click","affiliate_id":1,"campaign_id":2}"#;
    let head = format!("POST /v1/events HTTP/1.1\r\nhost: edge\r\ncontent-length: {}\r\n\r\n", body.len());
    let open_slow = async || {
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(head.as_bytes()).await.unwrap();
        slow.write_all(&body.as_bytes()[..10]).await.unwrap();
        slow
    };
    let mut slow = open_slow().await;
    let mut n_slow_shed = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let shed_pixel = loop {
        let mut early = [0u8; 1024];
        if let Ok(read) = tokio::time::timeout(Duration::from_millis(50), slow.read(&mut early)).await {
            let early = String::from_utf8_lossy(&early[..read.unwrap()]).into_owned();
            assert!(early.starts_with("HTTP/1.1 503"), "{early}");
            n_slow_shed += 1;
            slow = open_slow().await;
            continue;
        }
        let answer = get(&format!("{base}/p.gif?aff=1&cmp=2")).await;
        assert_eq!(answer.status, 200);
        let outcome = answer.headers["x-edgetally-outcome"].to_str().unwrap().to_owned();
        if outcome == "shed_overload" || tokio::time::Instant::now() > deadline {
            break outcome;
        }
    };
    assert_eq!(shed_pixel, "shed_overload");
    let answer = crate::support::post(&format!("{base}/v1/events"), body).await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.headers["retry-after"], "1");
    assert_eq!(answer.json()["reason"], "shed_overload");
    // Health checks are answered regardless, and scrapes are not counted
    // in flight: the slow post is.
    assert_eq!(get(&format!("{base}/healthz")).await.status, 200);
    let in_flight = "edgetally_collector_requests_in_flight";
    assert_eq!(metric(&metrics_text(base).await, in_flight), 1);

    // Once the slow post completes, it is accepted and the slot frees up.
    slow.write_all(&body.as_bytes()[10..]).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = slow.read(&mut buf).await.unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""accepted":1"#), "{answer}");
    assert_eq!(get(&format!("{base}/p.gif?aff=1&cmp=2")).await.headers["x-edgetally-outcome"], "accepted");
    let text = metrics_text(base).await;
    assert_eq!(metric(&text, in_flight), 0, "{text}");
    assert_eq!(refused(&text, "shed_overload"), 1 + n_slow_shed, "{text}");
    let shed = r#"edgetally_collector_events_rejected_total{source="pixel",reason="shed_overload"}"#;
    // The probing loop stops at its first shed pixel.
    assert_eq!(metric(&text, shed), 1, "{text}");
}
