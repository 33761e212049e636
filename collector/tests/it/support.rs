//! Starting a collector process and talking HTTP to it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A collector process with its own temporary directory; killed on drop.
pub(crate) struct TestCollector {
    child: Child,
    pub(crate) base_url: String,
    pub(crate) dir: tempfile::TempDir,
}

impl TestCollector {
    /// Starts a collector whose aggregator is absent: HTTP behaviour does
    /// not depend on shipping, and unshipped counts stay in memory.
    pub(crate) fn start(extra_args: &[&str]) -> TestCollector {
        TestCollector::start_in(tempfile::tempdir().expect("temp dir"), extra_args)
    }

    /// Starts a collector whose data directory is `dir/collector`, so a test
    /// can put files (campaigns, keys) in `dir` first.
    pub(crate) fn start_in(dir: tempfile::TempDir, extra_args: &[&str]) -> TestCollector {
        let cert_path = dir.path().join("aggregator-cert.pem");
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
        std::fs::write(&cert_path, certified.cert.pem()).expect("write cert");
        let data_dir = dir.path().join("collector");
        let mut command = Command::new(env!("CARGO_BIN_EXE_edgetally-collector"));
        command
            .env_clear()
            .env("RUST_LOG", "warn")
            // Traffic counters are sealed every half second, not every
            // minute; a test's flag wins.
            .env("EDGETALLY_COLLECTOR_ROLLUP_INTERVAL_MS", "500")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--http-listen", "127.0.0.1:0", "--aggregator-addr", "127.0.0.1:9"])
            // A small dedup window keeps many test collectors cheap.
            .args(["--dedup-keys-max", "100000"])
            .arg("--aggregator-cert")
            .arg(&cert_path)
            .args(extra_args)
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("TEST_LOG").is_some() { Stdio::inherit() } else { Stdio::null() });
        let child = command.spawn().expect("spawn edgetally-collector");
        let addrs = wait_for_file(&data_dir.join("collector.json"));
        let http = addrs["http"].as_str().expect("http address").to_owned();
        TestCollector { child, base_url: format!("http://{http}"), dir }
    }
}

impl TestCollector {
    /// Sends the collector `SIGTERM`, as a service manager stops it.
    pub(crate) fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        assert!(status.expect("kill").success(), "kill -TERM");
    }
}

impl Drop for TestCollector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_file(path: &Path) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return serde_json::from_str(&text).expect("addresses file is JSON");
        }
        assert!(Instant::now() < deadline, "{} did not appear", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: Bytes,
}

impl Answer {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| panic!("not JSON: {:?}", self.body))
    }
}

pub(crate) fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub(crate) async fn send(request: http::Request<Full<Bytes>>) -> Answer {
    let response = client().request(request).await.expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    Answer { status, headers, body }
}

pub(crate) async fn get(url: &str) -> Answer {
    send(http::Request::get(url).body(Full::default()).expect("request")).await
}

pub(crate) async fn post(url: &str, body: impl Into<Bytes>) -> Answer {
    send(http::Request::post(url).body(Full::new(body.into())).expect("request")).await
}

/// The value of one sample line of the Prometheus text, 0 when absent.
pub(crate) fn metric(text: &str, series: &str) -> u64 {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0)
}

/// Sends raw bytes on a fresh connection and reads until the server closes.
pub(crate) async fn raw_http(base_url: &str, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base_url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}
