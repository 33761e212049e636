//! What an operator runs the collector with: the settings file (and its
//! precedence under flags and environment variables), `--check-config`,
//! systemd's notifications, and SIGHUP reloading the TLS certificate while
//! clients stay connected.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls_pki_types::CertificateDer;

use crate::support::{get, metric};

const BINARY: &str = env!("CARGO_BIN_EXE_edgetally-collector");

/// The example settings file shipped beside the crate.
fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("collector.example.toml")
}

/// A temporary directory with an aggregator certificate to trust (no
/// aggregator runs: these tests are about the process, not shipping).
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().expect("temp dir");
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
        std::fs::write(dir.path().join("aggregator-cert.pem"), certified.cert.pem()).expect("write cert");
        Site { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).expect("write file");
        path
    }

    /// The collector command with only what every run needs on the command
    /// line; the rest is up to the test.
    fn command(&self) -> Command {
        let mut command = Command::new(BINARY);
        command
            .env_clear()
            .env("RUST_LOG", "info")
            .arg("--aggregator-cert")
            .arg(self.path("aggregator-cert.pem"))
            .args(["--aggregator-addr", "127.0.0.1:9", "--dedup-keys-max", "1000", "--unique-keys-max", "1000"]);
        command
    }

    fn run(&self, command: &mut Command) -> Output {
        command.stdin(Stdio::null()).output().expect("run edgetally-collector")
    }

    /// Starts the collector and waits for its addresses file.
    fn start(&self, command: &mut Command) -> Running {
        let child = command
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("TEST_LOG").is_some() { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .expect("spawn edgetally-collector");
        let addresses = self.path("collector/collector.json");
        let deadline = Instant::now() + Duration::from_secs(30);
        let http = loop {
            if let Ok(text) = std::fs::read_to_string(&addresses) {
                let value: serde_json::Value = serde_json::from_str(&text).expect("addresses JSON");
                break value["http"].as_str().expect("http address").to_owned();
            }
            assert!(Instant::now() < deadline, "{} did not appear", addresses.display());
            std::thread::sleep(Duration::from_millis(20));
        };
        Running { child, http }
    }
}

struct Running {
    child: Child,
    http: String,
}

impl Running {
    fn signal(&self, name: &str) {
        let status = Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status();
        assert!(status.expect("kill").success(), "kill -{name}");
    }

    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "the collector did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn the_settings_file_sets_what_flags_and_variables_leave_open() {
    let site = Site::new();
    let data_dir = site.path("collector");
    let settings = site.write(
        "collector.toml",
        &format!(
            "data_dir = {data_dir:?}\nhttp_listen = \"127.0.0.1:0\"\nurl_bytes_max = 300\nbody_bytes_max = 100\nhttp_workers = 0\n"
        ),
    );
    // The file sets the URL and body limits; the environment wins for the
    // body, a flag for the URL.
    let mut command = site.command();
    command.arg("--config").arg(&settings).env("EDGETALLY_COLLECTOR_BODY_BYTES_MAX", "200");
    let running = site.start(command.arg("--url-bytes-max").arg("400"));
    let base = format!("http://{}", running.http);
    let pixel = |target_len: usize| {
        let query = format!("/p.gif?aff=1&cmp=2&sub1={}", "a".repeat(target_len - "/p.gif?aff=1&cmp=2&sub1=".len()));
        format!("{base}{query}")
    };
    assert_eq!(get(&pixel(400)).await.status, 200);
    assert_eq!(get(&pixel(401)).await.status, 414);
    let body = |n_bytes: usize| {
        let event = r#"{"kind":"impression","affiliate_id":1,"campaign_id":2}"#;
        format!("{event}{}", " ".repeat(n_bytes - event.len()))
    };
    assert_eq!(crate::support::post(&format!("{base}/v1/events"), body(200)).await.status, 200);
    assert_eq!(crate::support::post(&format!("{base}/v1/events"), body(201)).await.status, 413);
}

#[test]
fn a_bad_settings_file_stops_the_start_naming_the_key() {
    let site = Site::new();
    let data_dir = site.path("collector");
    for (text, expect) in [
        ("url_bytes_maxx = 10", "unknown key `url_bytes_maxx` (did you mean `url_bytes_max`?)"),
        ("flush_interval_ms = \"fast\"", "key `flush_interval_ms`: \"fast\" is not valid"),
        ("spool_io = \"mmap\"", "key `spool_io`: \"mmap\" is not valid"),
        ("http_listen = [1, 2]", "key `http_listen`: takes one value"),
    ] {
        let settings = site.write("bad.toml", text);
        let output = site.run(site.command().arg("--data-dir").arg(&data_dir).arg("--config").arg(&settings));
        assert_eq!(output.status.code(), Some(2), "{text}: {}", stderr(&output));
        assert!(stderr(&output).contains(expect), "{text}: {}", stderr(&output));
        assert!(stderr(&output).contains(&settings.display().to_string()), "{}", stderr(&output));
        assert!(!data_dir.exists(), "{text}: a refused start wrote nothing");
    }
}

#[test]
fn check_config_reads_every_named_file_and_writes_nothing() {
    let site = Site::new();
    let data_dir = site.path("collector");
    let check = |extra: &[&std::ffi::OsStr]| {
        site.run(
            site.command()
                .arg("--config")
                .arg(example())
                .arg("--data-dir")
                .arg(&data_dir)
                .arg("--check-config")
                .args(extra),
        )
    };
    let output = check(&[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("configuration ok ("), "{stdout}");
    assert!(stdout.contains("click keys") && stdout.contains("created at start"), "{stdout}");
    assert!(!data_dir.exists(), "a check creates no data directory");

    // Every file the settings name is read as at start.
    let mismatched = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    let cert = site.write("cert.pem", &mismatched.cert.pem());
    let key = site.write("key.pem", &other.signing_key.serialize_pem());
    let campaigns = site.write("campaigns.json", "{\"campaigns\": [{\"id\": 3}]}");
    let missing = site.path("missing.json");
    // A missing keys file is made at start, so that check passes.
    for (flags, refusal) in [
        (
            vec!["--tls-cert".as_ref(), cert.as_os_str(), "--tls-key".as_ref(), key.as_os_str()],
            Some("does not belong to the certificate"),
        ),
        (vec!["--campaigns".as_ref(), campaigns.as_os_str()], Some("campaigns in")),
        (vec!["--click-keys".as_ref(), missing.as_os_str()], None),
    ] {
        let output = check(&flags);
        match refusal {
            None => assert!(output.status.success(), "{flags:?}: {}", stderr(&output)),
            Some(expect) => {
                assert_eq!(output.status.code(), Some(2), "{expect}: {}", stderr(&output));
                assert!(stderr(&output).contains(expect), "{expect}: {}", stderr(&output));
            }
        }
    }
    assert!(!data_dir.exists(), "a failed check creates no data directory");
}

/// The notifications a process sent to the socket, split into messages.
fn notifications(socket: &UnixDatagram, until: &str, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while !seen.iter().any(|message: &String| message.lines().any(|line| line == until)) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no {until} within {limit:?}; got {seen:?}");
        socket.set_read_timeout(Some(left)).expect("timeout");
        if let Ok(n_bytes) = socket.recv(&mut buffer) {
            seen.push(String::from_utf8_lossy(&buffer[..n_bytes]).into_owned());
        }
    }
    seen
}

#[test]
fn systemd_hears_ready_watchdog_reloading_and_stopping() {
    let site = Site::new();
    let socket_path = site.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    let mut command = site.command();
    command
        .arg("--data-dir")
        .arg(site.path("collector"))
        .args(["--http-listen", "127.0.0.1:0"])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000");
    let mut running = site.start(&mut command);

    let seen = notifications(&socket, "READY=1", Duration::from_secs(30));
    let ready = seen.last().expect("a message");
    assert!(ready.lines().any(|line| line.starts_with("STATUS=serving HTTP on 127.0.0.1:")), "{ready:?}");
    // Pings at half of WATCHDOG_USEC: several within a second.
    let seen = notifications(&socket, "WATCHDOG=1", Duration::from_secs(5));
    assert!(seen.iter().all(|message| !message.contains("STOPPING")), "{seen:?}");

    running.signal("HUP");
    let seen = notifications(&socket, "RELOADING=1", Duration::from_secs(10));
    let reloading = seen.last().expect("a message");
    assert!(reloading.lines().any(|line| line.starts_with("MONOTONIC_USEC=")), "{reloading:?}");
    notifications(&socket, "READY=1", Duration::from_secs(10));

    running.signal("TERM");
    notifications(&socket, "STOPPING=1", Duration::from_secs(10));
    // Keep reading, as systemd does: a full socket would hold the sender.
    std::thread::spawn(move || while socket.recv(&mut [0u8; 4096]).is_ok() {});
    assert!(running.wait(Duration::from_secs(30)).success());
}

/// A TLS client that trusts both test certificates and says which one the
/// server presented.
fn tls_connector(roots: &[&rcgen::CertifiedKey<rcgen::KeyPair>]) -> tokio_rustls::TlsConnector {
    let mut store = rustls::RootCertStore::empty();
    for certified in roots {
        store.add(certified.cert.der().clone()).expect("trust the test certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // A resumed session presents no certificate, and rustls then reports
    // the one of the session it resumed: every handshake here is a full one.
    config.resumption = rustls::client::Resumption::disabled();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// An HTTP/1.1 keep-alive connection over TLS, and the certificate the
/// server presented on it.
async fn connect(
    connector: &tokio_rustls::TlsConnector,
    addr: &str,
) -> (hyper::client::conn::http1::SendRequest<Empty<Bytes>>, CertificateDer<'static>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let presented = tls.get_ref().1.peer_certificates().expect("a certificate")[0].clone().into_owned();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.expect("HTTP handshake");
    tokio::spawn(connection);
    (sender, presented)
}

async fn health(sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>) -> u16 {
    sender.ready().await.expect("connection ready");
    let request = http::Request::get("/healthz").header("host", "localhost").body(Empty::new()).expect("request");
    let response = sender.send_request(request).await.expect("response on the kept connection");
    let status = response.status().as_u16();
    response.into_body().collect().await.expect("body");
    status
}

#[tokio::test]
async fn sighup_reloads_the_certificate_while_clients_stay_connected() {
    let site = Site::new();
    let first = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    let second = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    let (cert, key) =
        (site.write("tls-cert.pem", &first.cert.pem()), site.write("tls-key.pem", &first.signing_key.serialize_pem()));
    let mut command = site.command();
    command.arg("--data-dir").arg(site.path("collector")).args(["--http-listen", "127.0.0.1:0"]);
    let running = site.start(command.arg("--tls-cert").arg(&cert).arg("--tls-key").arg(&key));
    let connector = tls_connector(&[&first, &second]);

    let (mut kept, presented) = connect(&connector, &running.http).await;
    assert_eq!(presented, *first.cert.der());
    assert_eq!(health(&mut kept).await, 200);

    // A broken pair is refused on reload; the old one is still served.
    std::fs::write(&key, second.signing_key.serialize_pem()).expect("write a key of another certificate");
    running.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(connect(&connector, &running.http).await.1, *first.cert.der());

    // The whole new pair: new connections get it, the kept one goes on.
    std::fs::write(&cert, second.cert.pem()).expect("write the new certificate");
    running.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (mut fresh, presented) = connect(&connector, &running.http).await;
        if presented == *second.cert.der() {
            assert_eq!(health(&mut fresh).await, 200);
            break;
        }
        assert!(Instant::now() < deadline, "the new certificate was not served within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(health(&mut kept).await, 200, "the connection open across both reloads still serves");
    assert_eq!(health(&mut kept).await, 200);

    // Nothing was refused on the way.
    let (mut fresh, _) = connect(&connector, &running.http).await;
    fresh.ready().await.expect("ready");
    let request = http::Request::get("/metrics").header("host", "localhost").body(Empty::new()).expect("request");
    let body = fresh.send_request(request).await.expect("metrics").into_body().collect().await.expect("body");
    let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
    assert_eq!(metric(&text, "edgetally_collector_requests_refused_total{reason=\"tls_handshake\"}"), 0, "{text}");
}
