//! The aggregator as an operator runs it: SIGHUP reloads the Flight and
//! edge token files while it serves (calls and edges are checked against
//! the new tokens, open ones carry on), systemd hears readiness and
//! shutdown, and `--check-config` checks the example settings file, which
//! lists every flag.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use serde_json::json;

use crate::support::{Node, edge_token_file, flight_client, path, write_edge_tokens};

const OLD_TOKEN: &str = "it-reload-old-admin-token-0123456789abcd";
const NEW_TOKEN: &str = "it-reload-new-admin-token-0123456789abcd";

fn write_flight_tokens(path: &Path, token: &str) {
    let tokens = json!({"tokens": [{"name": "finance", "token": token, "role": "admin"}]});
    std::fs::write(path, tokens.to_string()).expect("write flight tokens");
}

/// The gRPC code of `ListFlights` as the holder of `token` (`Ok` on
/// success).
async fn list_flights_code(flight_url: &str, token: &str) -> tonic::Code {
    let mut client = flight_client(flight_url, Some(token)).await;
    let listed = match client.list_flights("").await {
        Ok(stream) => stream.try_collect::<Vec<_>>().await.map(drop),
        Err(error) => Err(error),
    };
    match listed {
        Ok(()) => tonic::Code::Ok,
        Err(arrow_flight::error::FlightError::Tonic(status)) => status.code(),
        Err(other) => panic!("flight error that is not a status: {other}"),
    }
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "{what} did not happen within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of an unlabelled sample in a Prometheus text, 0 when absent.
async fn metric(http: &str, name: &str) -> f64 {
    let url = format!("http://{http}/metrics");
    let output = Command::new("curl").args(["-sf", &url]).output().expect("curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_flight_and_edge_tokens() {
    let dir = tempfile::tempdir().expect("temp dir");
    let flight_tokens = dir.path().join("flight-tokens.json");
    write_flight_tokens(&flight_tokens, OLD_TOKEN);
    // Edges 1 and 2 have token files; the aggregator first knows edge 1 only.
    let edge_tokens = write_edge_tokens(dir.path(), 2);
    let all_edges = std::fs::read_to_string(&edge_tokens).expect("edge tokens");
    let edge_1_only = json!({"edges": [{"edge_id": 1, "token": crate::support::edge_token(1)}]});
    std::fs::write(&edge_tokens, edge_1_only.to_string()).expect("edge tokens");
    let mut aggregator =
        Node::aggregator(dir.path(), &["--flight-tokens", path(&flight_tokens), "--edge-tokens", path(&edge_tokens)]);
    let addresses = aggregator.start();
    let flight_url = format!("http://{}", addresses["flight"].as_str().expect("flight"));
    let http = addresses["http"].as_str().expect("http").to_owned();
    let mut collector =
        Node::collector(&dir.path().join("edge-2"), &addresses, &edge_token_file(dir.path(), 2), &["--edge-id", "2"]);
    collector.start();

    assert_eq!(list_flights_code(&flight_url, OLD_TOKEN).await, tonic::Code::Ok);
    assert_eq!(list_flights_code(&flight_url, NEW_TOKEN).await, tonic::Code::Unauthenticated);
    eventually("edge 2 refused", async || metric(&http, "edgetally_aggregator_edges_refused_total").await >= 1.0).await;
    // A follow stream opened with the old token outlives the reload.
    let mut follower = flight_client(&flight_url, Some(OLD_TOKEN)).await;
    let ticket = arrow_flight::Ticket::new(json!({"dataset": "rollups", "follow": true}).to_string());
    let mut follow = follower.do_get(ticket).await.expect("follow as the old admin");

    // A tokens file that does not load is refused; the old tokens stay.
    std::fs::write(&flight_tokens, "{\"tokens\": [").expect("write broken tokens");
    aggregator.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(list_flights_code(&flight_url, OLD_TOKEN).await, tonic::Code::Ok);

    write_flight_tokens(&flight_tokens, NEW_TOKEN);
    std::fs::write(&edge_tokens, all_edges).expect("edge tokens");
    aggregator.signal("HUP");
    eventually("the new Flight token accepted", async || {
        list_flights_code(&flight_url, NEW_TOKEN).await == tonic::Code::Ok
    })
    .await;
    assert_eq!(list_flights_code(&flight_url, OLD_TOKEN).await, tonic::Code::Unauthenticated);

    // Edge 2 retries and is now let in: its pixel reaches the follower,
    // whose stream opened before the reload.
    let collector_http = std::fs::read_to_string(dir.path().join("edge-2/collector.json")).expect("collector.json");
    let collector_http: serde_json::Value = serde_json::from_str(&collector_http).expect("JSON");
    let pixel = format!("http://{}/p.gif?aff=41&cmp=5", collector_http["http"].as_str().expect("http"));
    let sent =
        Command::new("curl").args(["-sf", "-A", "Mozilla/5.0", "-o", "/dev/null", &pixel]).status().expect("curl");
    assert!(sent.success());
    let batch = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let batch = follow.try_next().await.expect("follow stream").expect("follow stays open");
            if batch.num_rows() > 0 {
                return batch;
            }
        }
    })
    .await
    .expect("edge 2's pixel within 60 s");
    let affiliate = batch.column_by_name("affiliate_id").expect("affiliate_id");
    let affiliate = affiliate.as_any().downcast_ref::<arrow_array::UInt32Array>().expect("u32 affiliate ids");
    assert_eq!(affiliate.values().as_ref(), [41]);
    assert!(metric(&http, "edgetally_aggregator_batches_total{status=\"apply\"}").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_quic_certificate_while_edges_stay_connected() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    let second = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let (cert, key) =
        (write("quic-cert.pem", &first.cert.pem()), write("quic-key.pem", &first.signing_key.serialize_pem()));
    let (trusts_first, trusts_second) =
        (write("first.pem", &first.cert.pem()), write("second.pem", &second.cert.pem()));
    let tokens = write_edge_tokens(dir.path(), 2);
    let mut aggregator = Node::aggregator(
        dir.path(),
        &["--tls-cert", path(&cert), "--tls-key", path(&key), "--edge-tokens", path(&tokens)],
    );
    let addresses = aggregator.start();
    let flight_url = format!("http://{}", addresses["flight"].as_str().expect("flight"));
    // Each edge trusts one certificate only.
    let edge = |edge_id: u32, trusted: &Path| {
        let mut aggregator_addresses = addresses.clone();
        aggregator_addresses["quic_cert"] = json!(path(trusted));
        let data_dir = dir.path().join(format!("edge-{edge_id}"));
        let edge_flag = edge_id.to_string();
        Node::collector(
            &data_dir,
            &aggregator_addresses,
            &edge_token_file(dir.path(), edge_id),
            &["--edge-id", &edge_flag],
        )
    };
    let mut old_edge = edge(1, &trusts_first);
    let old_http = old_edge.start()["http"].as_str().expect("http").to_owned();
    let pixel = |http: &str, affiliate_id: u32| {
        let url = format!("http://{http}/p.gif?aff={affiliate_id}&cmp=5");
        let status = Command::new("curl").args(["-sf", "-A", "Mozilla/5.0", "-o", "/dev/null", &url]).status();
        assert!(status.expect("curl").success());
    };
    let impressions = async |affiliate_id: u32| -> u64 {
        let ticket = json!({"dataset": "rollups", "affiliate_id": affiliate_id});
        crate::support::rollup_counts(&crate::support::fetch(&flight_url, ticket).await)
            .values()
            .map(|counts| counts.impressions)
            .sum()
    };
    pixel(&old_http, 51);
    eventually("edge 1's first pixel", async || impressions(51).await == 1).await;

    std::fs::write(&cert, second.cert.pem()).expect("write the new certificate");
    std::fs::write(&key, second.signing_key.serialize_pem()).expect("write the new key");
    aggregator.signal("HUP");
    // An edge that trusts only the new certificate gets in.
    let mut new_edge = edge(2, &trusts_second);
    let new_http = new_edge.start()["http"].as_str().expect("http").to_owned();
    pixel(&new_http, 52);
    eventually("edge 2's pixel over the new certificate", async || impressions(52).await == 1).await;
    // The edge connected before the reload still ships on its connection.
    pixel(&old_http, 51);
    eventually("edge 1's second pixel", async || impressions(51).await == 2).await;
    old_edge.kill();
    new_edge.kill();
}

/// The settings file shipped beside a binary's crate.
fn example(crate_dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join(crate_dir)
        .join(format!("{crate_dir}.example.toml"))
}

#[test]
fn systemd_hears_ready_and_stopping() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind");
    socket.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    // The example file as is, with the test's own data directory and ports
    // on the command line.
    let mut aggregator = Node::aggregator(dir.path(), &["--config", path(&example("aggregator"))]);
    aggregator.envs.push(("NOTIFY_SOCKET".into(), socket_path.into()));
    let addresses = aggregator.start();
    let mut buffer = [0u8; 4096];
    let n_bytes = socket.recv(&mut buffer).expect("a notification within 30 s");
    let ready = String::from_utf8_lossy(&buffer[..n_bytes]).into_owned();
    let flight = addresses["flight"].as_str().expect("flight");
    assert!(ready.lines().any(|line| line == "READY=1"), "{ready:?}");
    assert!(ready.lines().any(|line| line.starts_with(&format!("STATUS=serving Flight on {flight}"))), "{ready:?}");
    let status = aggregator.terminate_notified(Duration::from_secs(30), || {
        let n_bytes = socket.recv(&mut buffer).expect("a notification within 30 s");
        String::from_utf8_lossy(&buffer[..n_bytes]).into_owned()
    });
    assert!(status.0.lines().any(|line| line == "STOPPING=1"), "{:?}", status.0);
    assert!(status.1.success());
}

#[test]
fn check_config_passes_the_example_and_names_a_bad_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("aggregator");
    let run = |settings: &Path| {
        Command::new(crate::support::binary("edgetally-aggregator"))
            .env_clear()
            .args(["--config", path(settings), "--data-dir", path(&data_dir), "--check-config"])
            .output()
            .expect("run the aggregator")
    };
    let output = run(&example("aggregator"));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("configuration ok ("));
    assert!(!data_dir.exists(), "a check writes nothing");

    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "retention_dayz = 30\n").expect("write settings");
    let output = run(&typo);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unknown key `retention_dayz` (did you mean `retention_days`?)"), "{stderr}");

    let tokens = dir.path().join("flight-tokens.json");
    std::fs::write(&tokens, "{\"tokens\": [{\"name\": \"a\", \"token\": \"short\", \"role\": \"admin\"}]}")
        .expect("write tokens");
    let settings = dir.path().join("tokens.toml");
    std::fs::write(&settings, format!("flight_tokens = {:?}\n", path(&tokens))).expect("write settings");
    let output = run(&settings);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("flight tokens"), "{stderr}");
}

#[test]
fn the_example_files_list_every_flag() {
    for (binary, crate_dir) in [("edgetally-collector", "collector"), ("edgetally-aggregator", "aggregator")] {
        let help = Command::new(crate::support::binary(binary)).arg("--help").output().expect("run --help");
        let help = String::from_utf8_lossy(&help.stdout);
        let keys: Vec<String> = help
            .lines()
            .filter_map(|line| line.trim_start().strip_prefix("--"))
            .filter_map(|rest| rest.split([' ', '=', '<']).next())
            .filter(|long| !["help", "version", "config", "check-config"].contains(long))
            .map(|long| long.replace('-', "_"))
            .collect();
        assert!(keys.len() > 15, "{binary}: found only {keys:?} in --help");
        let text = std::fs::read_to_string(example(crate_dir)).expect("read the example");
        let missing: Vec<&String> = keys
            .iter()
            .filter(|key| {
                !text.lines().any(|line| line.trim_start_matches(['#', ' ']).starts_with(&format!("{key} = ")))
            })
            .collect();
        assert!(missing.is_empty(), "{binary}: keys missing from its example file: {missing:?}");
    }
}
