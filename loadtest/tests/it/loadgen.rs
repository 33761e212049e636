//! The load generator against a real stack of two edges: its ledger follows
//! what the collectors answered, `verify` agrees with the aggregator, and a
//! corrupted expectation makes `verify` fail.

use std::collections::BTreeMap;

use crate::support::{Stack, loadtest};

/// The load generator names its visitors in x-forwarded-for; collectors
/// told to trust it tell them apart, so clicks are not one visitor's flood.
const BEHIND_LOAD_BALANCER: &[&str] = &["--client-ip-header", "x-forwarded-for"];

#[test]
fn generated_run_verifies_exactly_and_corruption_is_caught() {
    let stack = Stack::start_with(2, BEHIND_LOAD_BALANCER);
    let ledger = stack.dir.path().join("ledger.json");
    let ledger_arg = ledger.to_str().expect("utf-8 path");
    let targets = stack.collectors.join(",");
    let (status, stdout) = loadtest(&[
        "run",
        "--target",
        &targets,
        "--rate",
        "400",
        // The precise schedule here; the freshness test below keeps the
        // default one.
        "--precise-timer",
        "--duration-secs",
        "3",
        "--connections",
        "8",
        "--affiliates",
        "300",
        "--duplicate-share",
        "0.05",
        "--malformed-share",
        "0.05",
        "--sale-share",
        "0.05",
        "--lead-share",
        "0.03",
        "--events-per-post",
        "3",
        "--ledger",
        ledger_arg,
        "--json",
    ]);
    assert!(status.success(), "run failed: {stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("report is JSON");
    assert_eq!(report["errors"], serde_json::json!({}), "{report:#}");
    // Open loop at 400/s for 3 s: the schedule holds 1200 requests.
    assert_eq!(report["requests_answered"], 1200, "{report:#}");

    // Every malformed kind got the answer it deserves, and nothing else.
    let answers: BTreeMap<String, BTreeMap<String, u64>> = serde_json::from_value(report["answers"].clone()).unwrap();
    let only = |label: &str, outcome: &str| {
        let outcomes = answers.get(label).unwrap_or_else(|| panic!("no {label} requests: {answers:?}"));
        assert_eq!(outcomes.keys().collect::<Vec<_>>(), vec![outcome], "{label}: {outcomes:?}");
    };
    only("malformed_pixel", "bad_id");
    only("malformed_json", "http_400");
    only("malformed_amount", "bad_amount");
    only("malformed_oversize", "http_413");
    only("malformed_route", "http_404_not_found");
    only("malformed_click_id", "http_400_click_id_forged");
    only("pixel", "accepted");
    only("click", "accepted");
    // Crawlers' pixels are counted apart, every one.
    only("bot_pixel", "flagged");
    only("postback", "accepted");
    only("conversion_pixel", "accepted");
    only("events", "accepted");
    assert!(answers["duplicate"]["accepted"] > 0, "{answers:?}");

    // The ledger holds exactly the events the report says were accepted.
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&ledger).unwrap()).unwrap();
    let total: u64 = written["counts"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|counts| {
            ["impressions", "clicks", "leads", "sales", "flagged"].map(|kind| counts[kind].as_u64().unwrap())
        })
        .sum();
    assert_eq!(report["events_accepted"].as_u64(), Some(total));
    assert!(!written["money"].as_object().unwrap().is_empty(), "no sales in the ledger");

    let (status, stdout) =
        loadtest(&["verify", "--ledger", ledger_arg, "--flight", &stack.flight_url, "--wait-secs", "20"]);
    assert!(status.success(), "verify failed: {stdout}");
    assert!(stdout.starts_with(&format!("verify: ok: {total} events")), "{stdout}");

    // One impression too many in the expectation: verify must name it.
    let mut corrupted = written.clone();
    let (key, counts) = corrupted["counts"].as_object_mut().unwrap().iter_mut().next().unwrap();
    let key = key.clone();
    counts["impressions"] = (counts["impressions"].as_u64().unwrap() + 1).into();
    std::fs::write(&ledger, corrupted.to_string()).unwrap();
    let (status, stdout) =
        loadtest(&["verify", "--ledger", ledger_arg, "--flight", &stack.flight_url, "--wait-secs", "0"]);
    assert!(!status.success(), "verify passed a corrupted ledger: {stdout}");
    assert!(stdout.contains("verify: 1 differences"), "{stdout}");
    assert!(stdout.contains(&format!("affiliate/campaign {key}: expected impressions")), "{stdout}");

    // One minor unit off in one money total: also caught.
    let mut corrupted = written.clone();
    let (key, amount) = corrupted["money"].as_object_mut().unwrap().iter_mut().next().unwrap();
    let key = key.clone();
    *amount = (amount.as_i64().unwrap() - 1).into();
    std::fs::write(&ledger, corrupted.to_string()).unwrap();
    let (status, stdout) =
        loadtest(&["verify", "--ledger", ledger_arg, "--flight", &stack.flight_url, "--wait-secs", "0"]);
    assert!(!status.success(), "verify passed a corrupted ledger: {stdout}");
    assert!(stdout.contains(&format!("money {key}: expected")), "{stdout}");
}

/// Also the end-to-end test of the spool's io_uring path.
#[test]
fn closed_loop_over_http2_stops_at_the_request_cap() {
    let stack = Stack::start_with(1, &[BEHIND_LOAD_BALANCER, &["--spool-io", "uring"]].concat());
    let ledger = stack.dir.path().join("ledger.json");
    let ledger_arg = ledger.to_str().expect("utf-8 path");
    let (status, stdout) = loadtest(&[
        "run",
        "--target",
        &stack.collectors[0],
        "--max",
        "--http2",
        "--connections",
        "2",
        "--streams",
        "4",
        "--requests",
        "300",
        "--ledger",
        ledger_arg,
        "--json",
    ]);
    assert!(status.success(), "run failed: {stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("report is JSON");
    assert_eq!(report["mode"], "max");
    assert_eq!(report["requests_answered"], 300, "{report:#}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report:#}");
    let (status, stdout) =
        loadtest(&["verify", "--ledger", ledger_arg, "--flight", &stack.flight_url, "--wait-secs", "20"]);
    assert!(status.success(), "verify failed: {stdout}");
}

#[test]
fn runs_against_tls_collectors_over_http1_and_http2() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let pem_dir = tempfile::tempdir().unwrap();
    let cert = pem_dir.path().join("edge-cert.pem");
    let key = pem_dir.path().join("edge-key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let stack = Stack::start_with(
        1,
        &[BEHIND_LOAD_BALANCER, &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]].concat(),
    );
    let port = stack.collectors[0].rsplit(':').next().unwrap();
    let target = format!("https://localhost:{port}");
    let mut expected_total = 0;
    for (protocol, extra) in [("http1", None), ("http2", Some("--http2"))] {
        let ledger = stack.dir.path().join(format!("ledger-{protocol}.json"));
        let mut args = vec![
            "run",
            "--target",
            &target,
            "--tls-ca",
            cert.to_str().unwrap(),
            "--max",
            "--connections",
            "2",
            "--requests",
            "200",
            "--ledger",
            ledger.to_str().unwrap(),
            "--json",
        ];
        args.extend(extra);
        let (status, stdout) = loadtest(&args);
        assert!(status.success(), "{protocol} run failed: {stdout}");
        let report: serde_json::Value = serde_json::from_str(&stdout).expect("report is JSON");
        assert_eq!(report["requests_answered"], 200, "{protocol}: {report:#}");
        assert_eq!(report["errors"], serde_json::json!({}), "{protocol}: {report:#}");
        expected_total += report["events_accepted"].as_u64().unwrap();
        // Bytes per event come from the collector's metrics, read over TLS
        // too: a pixel request is well over 100 bytes on the wire.
        let received = report["bytes"]["received_per_event"].as_f64();
        assert!(received.is_some_and(|received| received > 100.0), "{protocol}: {report:#}");
        // The second run's minutes also hold the first run's events, so
        // only the first verifies alone; both together are checked below.
        if protocol == "http1" {
            let ledger = ledger.to_str().unwrap();
            let (status, stdout) =
                loadtest(&["verify", "--ledger", ledger, "--flight", &stack.flight_url, "--wait-secs", "20"]);
            assert!(status.success(), "verify failed: {stdout}");
        }
    }
    // Both runs' accepted events, and nothing else, reach the aggregator.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ticket = serde_json::json!({"dataset": "rollups", "group_by": []});
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let totals = runtime.block_on(crate::support::rollups(&stack.flight_url, ticket.clone()));
        let counts = totals.values().next().copied().unwrap_or_default();
        let counted = counts.impressions + counts.clicks + counts.leads + counts.sales + counts.flagged;
        if counted == expected_total {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "aggregator counts {counted}, expected {expected_total}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// With `--flight`, every accepted lead and sale is seen in the
/// aggregator's follow stream, once, and timed.
#[test]
fn freshness_counts_every_accepted_conversion() {
    let stack = Stack::start_with(1, BEHIND_LOAD_BALANCER);
    let ledger = stack.dir.path().join("ledger.json");
    let (status, stdout) = loadtest(&[
        "run",
        "--target",
        &stack.collectors[0],
        "--flight",
        &stack.flight_url,
        "--rate",
        "300",
        "--duration-secs",
        "3",
        "--connections",
        "4",
        "--affiliates",
        "100",
        "--lead-share",
        "0.05",
        "--sale-share",
        "0.10",
        "--duplicate-share",
        "0.05",
        "--malformed-share",
        "0.05",
        "--events-per-post",
        "2",
        "--ledger",
        ledger.to_str().expect("utf-8 path"),
        "--json",
    ]);
    assert!(status.success(), "run failed: {stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("report is JSON");
    assert_eq!(report["errors"], serde_json::json!({}), "{report:#}");

    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&ledger).unwrap()).unwrap();
    let n_conversions: u64 = written["counts"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|counts| ["leads", "sales"].map(|kind| counts[kind].as_u64().unwrap()))
        .sum();
    assert!(n_conversions > 0, "no conversion accepted: {report:#}");
    let freshness = &report["freshness"];
    assert_eq!(freshness["count"].as_u64(), Some(n_conversions), "{report:#}");
    assert_eq!(freshness["unseen"], 0, "{report:#}");
    assert_eq!(freshness["untracked"], 0, "{report:#}");
    assert_eq!(freshness["follow_error"], serde_json::Value::Null, "{report:#}");
    // A correctness bound (every row arrived, and soon), not a speed claim.
    let p99_ms = freshness["p99_ms"].as_f64().expect("p99 with conversions seen");
    assert!(0.0 < p99_ms && p99_ms < 5_000.0, "{report:#}");
    assert!(freshness["p50_ms"].as_f64().unwrap() <= p99_ms, "{report:#}");
    assert!(p99_ms <= freshness["max_ms"].as_f64().unwrap(), "{report:#}");
}
