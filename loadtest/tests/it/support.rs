//! Starting the aggregator and collector processes, and reading rollups back
//! over Arrow Flight.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::{TimestampMillisecondType, UInt32Type, UInt64Type};
use arrow_flight::error::FlightError;
use arrow_flight::{FlightClient, Ticket};
use futures::TryStreamExt;

/// A process killed on drop.
pub(crate) struct Process {
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn binary(name: &str) -> PathBuf {
    // The test executable lives in target/<profile>/deps; the workspace's
    // binaries live one level up.
    let exe = std::env::current_exe().expect("test executable path");
    let path = exe.parent().and_then(Path::parent).expect("target dir").join(name);
    assert!(path.exists(), "{} is missing: run `cargo build --workspace --bins` first", path.display());
    path
}

/// The collectors' rollup interval in these tests, in milliseconds.
pub(crate) const TEST_ROLLUP_INTERVAL_MS: &str = "500";

pub(crate) fn spawn(name: &str, args: &[&std::ffi::OsStr]) -> Process {
    spawn_with(name, args, &[])
}

/// [`spawn`] with extra environment variables.
fn spawn_with(name: &str, args: &[&std::ffi::OsStr], envs: &[(OsString, OsString)]) -> Process {
    let show_logs = std::env::var_os("TEST_LOG").is_some();
    let child = Command::new(binary(name))
        .env_clear()
        .env("RUST_LOG", if show_logs { "debug" } else { "warn" })
        // Collectors ship traffic counters every half second instead of
        // every minute, so a test reads them back soon after its traffic,
        // while conversions still ship between them (rows-only seals). A
        // flag or an entry of `envs` wins.
        .env("EDGETALLY_COLLECTOR_ROLLUP_INTERVAL_MS", TEST_ROLLUP_INTERVAL_MS)
        .envs(envs.iter().map(|(key, value)| (key, value)))
        .args(args)
        .stdout(Stdio::null())
        .stderr(if show_logs { Stdio::inherit() } else { Stdio::null() })
        .spawn()
        .unwrap_or_else(|error| panic!("spawning {name}: {error}"));
    Process { child }
}

pub(crate) fn wait_for_json(path: &Path) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return serde_json::from_str(&text).expect("addresses file is JSON");
        }
        assert!(Instant::now() < deadline, "{} did not appear", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One aggregator and collectors shipping to it.
pub(crate) struct Stack {
    /// Base URL of each collector.
    pub(crate) collectors: Vec<String>,
    pub(crate) flight_url: String,
    /// Base URL of the aggregator's HTTP listener (`/metrics`).
    pub(crate) aggregator_http: String,
    /// Arguments a further collector needs to ship to this aggregator (all
    /// but its data dir, listen address, edge id and token).
    pub(crate) collector_args: Vec<String>,
    pub(crate) dir: tempfile::TempDir,
    /// The aggregator first, then each collector.
    processes: Vec<Process>,
}

impl Stack {
    /// Kills every collector (no shutdown code runs); the aggregator goes on.
    pub(crate) fn stop_collectors(&mut self) {
        self.processes.truncate(1);
    }

    pub(crate) fn start(n_collectors: u32) -> Stack {
        Stack::start_with(n_collectors, &[])
    }

    /// Starts the stack with extra flags for every collector.
    pub(crate) fn start_with(n_collectors: u32, collector_args: &[&str]) -> Stack {
        Stack::start_configured(n_collectors, collector_args, &[])
    }

    /// Starts the stack with extra flags for every collector and for the
    /// aggregator.
    pub(crate) fn start_configured(n_collectors: u32, collector_args: &[&str], aggregator_args: &[&str]) -> Stack {
        let dir = tempfile::tempdir().expect("temp dir");
        let aggregator_dir = dir.path().join("aggregator");
        // Edges 1..=n authenticate with a token each.
        let tokens_path = write_edge_tokens(dir.path(), n_collectors);
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "--data-dir".as_ref(),
            aggregator_dir.as_os_str(),
            "--quic-listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--flight-listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--flight-sql-listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--http-listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--edge-tokens".as_ref(),
            tokens_path.as_os_str(),
        ];
        args.extend(aggregator_args.iter().map(std::ffi::OsStr::new));
        let mut processes = vec![spawn("edgetally-aggregator", &args)];
        let addrs = wait_for_json(&aggregator_dir.join("aggregator.json"));
        let quic = addrs["quic"].as_str().expect("quic address").to_owned();
        let flight = addrs["flight"].as_str().expect("flight address").to_owned();
        let cert = addrs["quic_cert"].as_str().expect("quic_cert path").to_owned();
        let aggregator_http = format!("http://{}", addrs["http"].as_str().expect("http address"));
        // Every edge shares one campaign snapshot (the mix's default 200
        // campaigns) and one click-signing key, so a click minted at one
        // edge converts at another.
        let campaigns_path = write_shop_campaigns(dir.path());
        let keys_path = dir.path().join("click-keys.json");
        let mut collectors = Vec::new();
        for edge_id in 1..=n_collectors {
            let collector_dir = dir.path().join(format!("collector-{edge_id}"));
            let token_path = edge_token_file(dir.path(), edge_id);
            let edge_id = edge_id.to_string();
            let mut args: Vec<&std::ffi::OsStr> = collector_args.iter().map(|arg| arg.as_ref()).collect();
            args.extend::<[&std::ffi::OsStr; 20]>([
                "--edge-token-file".as_ref(),
                token_path.as_os_str(),
                "--data-dir".as_ref(),
                collector_dir.as_os_str(),
                "--http-listen".as_ref(),
                "127.0.0.1:0".as_ref(),
                "--aggregator-addr".as_ref(),
                quic.as_ref(),
                "--aggregator-cert".as_ref(),
                cert.as_ref(),
                "--edge-id".as_ref(),
                edge_id.as_ref(),
                "--dedup-keys-max".as_ref(),
                "100000".as_ref(),
                "--campaigns".as_ref(),
                campaigns_path.as_os_str(),
                "--click-keys".as_ref(),
                keys_path.as_os_str(),
                "--flush-interval-ms".as_ref(),
                "50".as_ref(),
            ]);
            processes.push(spawn("edgetally-collector", &args));
            let addrs = wait_for_json(&collector_dir.join("collector.json"));
            collectors.push(format!("http://{}", addrs["http"].as_str().expect("http address")));
        }
        let collector_args = [
            "--aggregator-addr",
            &quic,
            "--aggregator-cert",
            &cert,
            "--campaigns",
            campaigns_path.to_str().expect("utf-8 temp path"),
            "--click-keys",
            keys_path.to_str().expect("utf-8 temp path"),
            "--dedup-keys-max",
            "100000",
            "--flush-interval-ms",
            "50",
        ]
        .map(str::to_owned)
        .to_vec();
        Stack { collectors, flight_url: format!("http://{flight}"), aggregator_http, collector_args, dir, processes }
    }
}

/// The token of edge `edge_id` in a test stack.
pub(crate) fn edge_token(edge_id: u32) -> String {
    format!("test-token-of-edge-{edge_id:04}")
}

/// Writes the aggregator's `--edge-tokens` file for edges 1..=`n_edges`
/// and each edge's `--edge-token-file` in `dir`; returns the former.
pub(crate) fn write_edge_tokens(dir: &Path, n_edges: u32) -> PathBuf {
    let edges: Vec<serde_json::Value> =
        (1..=n_edges).map(|edge_id| serde_json::json!({"edge_id": edge_id, "token": edge_token(edge_id)})).collect();
    let path = dir.join("edge-tokens.json");
    std::fs::write(&path, serde_json::json!({ "edges": edges }).to_string()).expect("edge tokens");
    for edge_id in 1..=n_edges {
        std::fs::write(edge_token_file(dir, edge_id), edge_token(edge_id)).expect("edge token file");
    }
    path
}

/// Where [`write_edge_tokens`] put edge `edge_id`'s token.
pub(crate) fn edge_token_file(dir: &Path, edge_id: u32) -> PathBuf {
    dir.join(format!("edge-{edge_id}.token"))
}

/// Writes the campaign snapshot the generated mix draws from (campaigns
/// 1..=200 on a placeholder shop) into `dir`; returns its path.
pub(crate) fn write_shop_campaigns(dir: &Path) -> PathBuf {
    let campaigns: Vec<serde_json::Value> = (1..=200)
        .map(|id| serde_json::json!({"id": id, "landing_url": format!("https://shop.example/{id}?click_id={{click_id}}")}))
        .collect();
    let path = dir.join("campaigns.json");
    std::fs::write(&path, serde_json::json!({ "campaigns": campaigns }).to_string()).expect("campaigns");
    path
}

/// The value of one unlabelled metric (its first sample) at `base_url`.
pub(crate) fn metric(base_url: &str, name: &str) -> f64 {
    metric_in(&metrics_text(base_url), name)
}

/// One scrape of `base_url/metrics`, for reading several values that must
/// agree with each other.
pub(crate) fn metrics_text(base_url: &str) -> String {
    let url = format!("{base_url}/metrics");
    let output = Command::new("curl").args(["-sf", &url]).output().expect("curl");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The value of `name` (with its labels) in a scrape.
pub(crate) fn metric_in(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in the scrape:\n{text}"))
}

/// Runs `edgetally-loadtest` to completion and returns its exit status and
/// standard output.
pub(crate) fn loadtest(args: &[&str]) -> (std::process::ExitStatus, String) {
    let output = Command::new(binary("edgetally-loadtest"))
        .env_clear()
        .args(args)
        .stderr(if std::env::var_os("TEST_LOG").is_some() { Stdio::inherit() } else { Stdio::null() })
        .output()
        .expect("running edgetally-loadtest");
    (output.status, String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Rollup counters read back, keyed by whatever the ticket grouped by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) impressions: u64,
    pub(crate) clicks: u64,
    pub(crate) unique_clicks: u64,
    pub(crate) leads: u64,
    pub(crate) sales: u64,
    pub(crate) duplicates: u64,
    /// Every fraud rule's counter together.
    pub(crate) flagged: u64,
}

/// A group key as text: the group-by columns that are present, joined by `|`
/// in the order time (`minute`, `hour` or `day`, in Unix ms), affiliate_id,
/// campaign_id, sub1.
pub(crate) type GroupKey = String;

/// Runs one Flight ticket and collects its batches.
pub(crate) async fn fetch(flight_url: &str, ticket: serde_json::Value) -> Vec<arrow_array::RecordBatch> {
    fetch_as(flight_url, None, ticket).await.expect("do_get")
}

/// A Flight client that sends `authorization: Bearer <token>` when given a
/// token.
pub(crate) async fn flight_client(flight_url: &str, token: Option<&str>) -> FlightClient {
    let channel = tonic::transport::Channel::from_shared(flight_url.to_owned())
        .expect("flight url")
        .connect()
        .await
        .expect("connect to flight");
    let mut client = FlightClient::new(channel);
    if let Some(token) = token {
        client.add_header("authorization", &format!("Bearer {token}")).expect("token is a header value");
    }
    client
}

/// Runs one Flight ticket as the holder of `token`; a refusal is its status.
pub(crate) async fn fetch_as(
    flight_url: &str,
    token: Option<&str>,
    ticket: serde_json::Value,
) -> Result<Vec<arrow_array::RecordBatch>, tonic::Status> {
    let mut client = flight_client(flight_url, token).await;
    let status = |error: FlightError| match error {
        FlightError::Tonic(status) => *status,
        other => panic!("flight error that is not a status: {other}"),
    };
    let stream = client.do_get(Ticket::new(ticket.to_string())).await.map_err(status)?;
    stream.try_collect().await.map_err(status)
}

pub(crate) async fn rollups(flight_url: &str, ticket: serde_json::Value) -> BTreeMap<GroupKey, Counts> {
    rollup_counts(&fetch(flight_url, ticket).await)
}

/// Rollup batches as counters by group.
pub(crate) fn rollup_counts(batches: &[arrow_array::RecordBatch]) -> BTreeMap<GroupKey, Counts> {
    let mut out = BTreeMap::new();
    for batch in batches {
        let schema = batch.schema();
        let column = |name: &str| schema.index_of(name).ok().map(|idx| batch.column(idx).clone());
        // The time column is named after the ticket's granularity.
        let minute = column("minute").or_else(|| column("hour")).or_else(|| column("day"));
        let affiliate_id = column("affiliate_id");
        let campaign_id = column("campaign_id");
        let sub1 = column("sub1");
        let counter = |name: &str| column(name).unwrap_or_else(|| panic!("column {name} missing in {schema:?}"));
        let counters = ["impressions", "clicks", "unique_clicks", "leads", "sales", "duplicates"].map(counter);
        let flagged = edgetally_protocol::Flag::COLUMNS.map(counter);
        for row_idx in 0..batch.num_rows() {
            let mut parts = Vec::new();
            if let Some(minute) = &minute {
                parts.push(minute.as_primitive::<TimestampMillisecondType>().value(row_idx).to_string());
            }
            for ids in [&affiliate_id, &campaign_id].into_iter().flatten() {
                parts.push(ids.as_primitive::<UInt32Type>().value(row_idx).to_string());
            }
            if let Some(sub1) = &sub1 {
                parts.push(sub1.as_string::<i32>().value(row_idx).to_owned());
            }
            let value = |counter_idx: usize| counters[counter_idx].as_primitive::<UInt64Type>().value(row_idx);
            let counts = Counts {
                impressions: value(0),
                clicks: value(1),
                unique_clicks: value(2),
                leads: value(3),
                sales: value(4),
                duplicates: value(5),
                flagged: flagged.iter().map(|column| column.as_primitive::<UInt64Type>().value(row_idx)).sum(),
            };
            // A group with money in several currencies has a row per
            // currency; its counters are on the first row only.
            let key = parts.join("|");
            match out.entry(key) {
                std::collections::btree_map::Entry::Vacant(entry) => {
                    entry.insert(counts);
                }
                std::collections::btree_map::Entry::Occupied(entry) => {
                    assert_eq!(counts, Counts::default(), "group {} counted on two rows", entry.key());
                }
            }
        }
    }
    out
}

/// A process that can be killed and started again with the same flags.
pub(crate) struct Node {
    name: &'static str,
    pub(crate) args: Vec<OsString>,
    /// Environment variables besides `RUST_LOG` (the rest is cleared).
    pub(crate) envs: Vec<(OsString, OsString)>,
    addresses: PathBuf,
    process: Option<Process>,
}

impl Node {
    pub(crate) fn new(name: &'static str, args: Vec<OsString>, addresses: PathBuf) -> Node {
        Node { name, args, envs: Vec::new(), addresses, process: None }
    }

    /// An aggregator with its state in `dir/aggregator`, on ephemeral
    /// loopback ports, with `extra` flags (not started).
    pub(crate) fn aggregator(dir: &Path, extra: &[&str]) -> Node {
        let data_dir = dir.join("aggregator");
        let args = [
            os(&["--data-dir", path(&data_dir)]),
            os(&["--quic-listen", "127.0.0.1:0", "--flight-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]),
            os(&["--flight-sql-listen", "127.0.0.1:0"]),
            os(extra),
        ]
        .concat();
        Node::new("edgetally-aggregator", args, data_dir.join("aggregator.json"))
    }

    /// A collector with its state in `data_dir`, its HTTP listener on an
    /// ephemeral loopback port, shipping to the aggregator at `aggregator`
    /// (its addresses file) with the token in `token_path`, with `extra`
    /// flags (not started).
    pub(crate) fn collector(
        data_dir: &Path,
        aggregator: &serde_json::Value,
        token_path: &Path,
        extra: &[&str],
    ) -> Node {
        let address = |name: &str| aggregator[name].as_str().unwrap_or_else(|| panic!("aggregator {name}")).to_owned();
        let (quic, cert) = (address("quic"), address("quic_cert"));
        let args = [
            os(&["--data-dir", path(data_dir), "--http-listen", "127.0.0.1:0"]),
            os(&["--aggregator-addr", &quic, "--aggregator-cert", &cert, "--edge-token-file", path(token_path)]),
            os(extra),
        ]
        .concat();
        Node::new("edgetally-collector", args, data_dir.join("collector.json"))
    }

    /// Starts the process and waits for its addresses file.
    pub(crate) fn start(&mut self) -> serde_json::Value {
        let _ = std::fs::remove_file(&self.addresses);
        let args: Vec<&std::ffi::OsStr> = self.args.iter().map(OsString::as_os_str).collect();
        self.process = Some(spawn_with(self.name, &args, &self.envs));
        wait_for_json(&self.addresses)
    }

    /// Sends a signal (`HUP`, `TERM`, …) to the running process.
    pub(crate) fn signal(&self, name: &str) {
        let pid = self.process.as_ref().expect("the node is running").child.id().to_string();
        let sent = Command::new("kill").args([&format!("-{name}"), &pid]).status().expect("kill");
        assert!(sent.success(), "kill -{name} {pid}");
    }

    /// SIGKILL: no shutdown code runs.
    pub(crate) fn kill(&mut self) {
        drop(self.process.take());
    }

    /// SIGTERM, then waits up to `limit` for the process to exit by itself.
    pub(crate) fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        self.terminate_notified(limit, || ()).1
    }

    /// [`Node::terminate`], calling `between` after the signal is sent and
    /// before waiting for the exit.
    pub(crate) fn terminate_notified<T>(
        &mut self,
        limit: Duration,
        between: impl FnOnce() -> T,
    ) -> (T, std::process::ExitStatus) {
        let mut process = self.process.take().expect("the node is running");
        let pid = process.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        assert!(sent.success(), "kill -TERM {pid}");
        let seen = between();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = process.child.try_wait().expect("waiting for the process") {
                return (seen, status);
            }
            assert!(Instant::now() < deadline, "{} did not exit within {limit:?} of SIGTERM", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub(crate) fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

pub(crate) fn path(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}
