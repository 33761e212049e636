//! Exactly-once shipping through crashes: a collector killed with SIGKILL
//! while its counts sit in the journal and the spool, an aggregator
//! unreachable for a minute while traffic continues, and an aggregator
//! killed with SIGKILL again and again while batches stream in. Afterwards the
//! aggregator holds exactly what the collectors answered as accepted.
//!
//! Traffic comes from `edgetally-loadtest run` (its ledger follows the
//! collectors' answers) and the check is `edgetally-loadtest verify` over
//! every run's ledger. A process is killed between runs, so no request is in
//! flight at the kill: a request cut off mid-answer has an outcome its client
//! cannot know, and no ledger could count it.

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{
    Node, edge_token_file, loadtest, metric, metrics_text, os, path, write_edge_tokens, write_shop_campaigns,
};

/// How long the aggregator stays away while traffic continues.
const OUTAGE: Duration = Duration::from_secs(60);

/// One open-loop run of the generated mix against `collector`, booking
/// what it answered in `ledger`.
fn traffic(collector: &str, ledger: &Path, seed: u64) -> serde_json::Value {
    let (status, stdout) = loadtest(&[
        "run",
        "--target",
        collector,
        "--rate",
        "300",
        "--duration-secs",
        "2",
        "--connections",
        "4",
        "--affiliates",
        "200",
        "--duplicate-share",
        "0.05",
        "--malformed-share",
        "0.05",
        "--sale-share",
        "0.05",
        "--lead-share",
        "0.03",
        "--seed",
        &seed.to_string(),
        "--ledger",
        path(ledger),
        "--json",
        // Shipping is checked by `verify`, not by the report's bytes.
        "--no-metrics",
    ]);
    assert!(status.success(), "run failed: {stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("report is JSON");
    assert_eq!(report["errors"], serde_json::json!({}), "{report:#}");
    report
}

/// A run's answers that refused what was sent (a status or a pixel's
/// reason, not accepted, flagged or duplicate), whatever the request's
/// label: a repeat of a forged postback is refused too. The collector
/// quarantines each as one row.
fn refused(report: &serde_json::Value) -> u64 {
    let answers = report["answers"].as_object().expect("answers by label");
    let outcomes = answers.values().flat_map(|outcomes| outcomes.as_object().expect("outcomes"));
    outcomes
        .filter(|(outcome, _)| !["accepted", "flagged", "duplicate"].contains(&outcome.as_str()))
        .map(|(_, n)| n.as_u64().expect("a count"))
        .sum()
}

#[test]
fn killed_collectors_and_an_unreachable_aggregator_lose_and_double_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let aggregator_dir = dir.path().join("aggregator");
    let tokens_path = write_edge_tokens(dir.path(), 1);
    let token_path = edge_token_file(dir.path(), 1);
    let mut aggregator = Node::aggregator(dir.path(), &["--edge-tokens", path(&tokens_path)]);
    // A first start creates the certificate and picks the ports; the
    // aggregator then goes away before any traffic.
    let addresses = aggregator.start();
    let quic = addresses["quic"].as_str().expect("quic").to_owned();
    let flight = addresses["flight"].as_str().expect("flight").to_owned();
    let cert = addresses["quic_cert"].as_str().expect("quic_cert").to_owned();
    aggregator.kill();
    let outage_started = Instant::now();
    aggregator.args = [
        os(&["--data-dir"]),
        vec![aggregator_dir.clone().into()],
        os(&["--quic-listen", &quic, "--flight-listen", &flight, "--http-listen", "127.0.0.1:0"]),
        os(&["--flight-sql-listen", "127.0.0.1:0"]),
        os(&["--edge-tokens", path(&tokens_path)]),
    ]
    .concat();

    let campaigns_path = write_shop_campaigns(dir.path());
    let collector_dir = dir.path().join("collector");
    let collector_args = |http_listen: &str, flush_interval_ms: &str| {
        [
            os(&["--data-dir"]),
            vec![collector_dir.clone().into()],
            os(&[
                "--http-listen",
                http_listen,
                "--aggregator-addr",
                &quic,
                "--aggregator-cert",
                &cert,
                "--edge-id",
                "1",
                "--edge-token-file",
                path(&token_path),
                "--dedup-keys-max",
                "100000",
                "--flush-interval-ms",
                flush_interval_ms,
                "--campaigns",
                path(&campaigns_path),
            ]),
        ]
        .concat()
    };
    // Nothing is sealed for a minute: every count lives in the journal only.
    let mut collector =
        Node::new("edgetally-collector", collector_args("127.0.0.1:0", "60000"), collector_dir.join("collector.json"));
    let http = collector.start()["http"].as_str().expect("http").to_owned();
    let url = format!("http://{http}");
    let mut ledgers = Vec::new();
    let mut ledger = |n: usize| {
        let path = dir.path().join(format!("ledger-{n}.json"));
        ledgers.push(path.clone());
        path
    };

    // 1. Journal only, then SIGKILL: the restart replays it.
    traffic(&url, &ledger(1), 1);
    collector.kill();
    collector.args = collector_args(&http, "50");
    collector.start();
    assert!(metric(&url, "edgetally_collector_journal_replayed_total") > 0.0);

    // 2. Sealed every 50 ms into the spool (the aggregator is still away),
    //    then SIGKILL: the restart resends the spool.
    traffic(&url, &ledger(2), 2);
    // Let a few seals happen, so the spool holds batches.
    std::thread::sleep(Duration::from_millis(300));
    collector.kill();
    collector.start();
    assert!(metric(&url, "edgetally_collector_spool_recovered_frames_total") > 0.0);
    traffic(&url, &ledger(3), 3);

    // 3. The aggregator comes back after the outage; the collector ships
    //    its backlog, then takes live traffic.
    if let Some(rest) = OUTAGE.checked_sub(outage_started.elapsed()) {
        std::thread::sleep(rest);
    }
    aggregator.start();
    traffic(&url, &ledger(4), 4);

    // 4. SIGKILL the aggregator while batches stream in (one every 50 ms),
    //    several times: what it acknowledged is in its log, what it did not
    //    is resent and applied once.
    for round in 0..3 {
        aggregator.kill();
        traffic(&url, &ledger(5 + round), 5 + round as u64);
        aggregator.start();
        // Killed again while the backlog of the run is shipping.
        std::thread::sleep(Duration::from_millis(150 * (round as u64 + 1)));
    }
    aggregator.kill();
    aggregator.start();

    // 5. And the collector once more, with the aggregator up.
    traffic(&url, &ledger(8), 8);
    collector.kill();
    collector.start();
    traffic(&url, &ledger(9), 9);

    let mut args = vec!["verify".to_owned(), "--flight".to_owned(), format!("http://{flight}")];
    args.extend(["--wait-secs".to_owned(), "30".to_owned()]);
    for ledger in &ledgers {
        args.extend(["--ledger".to_owned(), path(ledger).to_owned()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, stdout) = loadtest(&args);
    assert!(status.success(), "verify failed: {stdout}");
    assert!(stdout.starts_with("verify: ok:"), "{stdout}");
    assert_eq!(metric(&url, "edgetally_collector_uplink_pending_batches"), 0.0);
}

/// A collector whose token is wrong, or whose edge id is unknown, is
/// refused by the aggregator: its batches stay in its spool and nothing of
/// it is counted, while the authenticated edge ships as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_with_a_wrong_token_or_unknown_id_are_refused() {
    let stack = crate::support::Stack::start(1);
    let mut impostors = Vec::new();
    for (edge_id, token) in [(1, "test-token-of-edge-0001-but-wrong"), (7, "test-token-of-edge-0007")] {
        let edge_dir = stack.dir.path().join(format!("impostor-{edge_id}"));
        let token_path = stack.dir.path().join(format!("impostor-{edge_id}.token"));
        std::fs::write(&token_path, token).expect("token file");
        let mut args: Vec<OsString> = stack.collector_args.iter().map(OsString::from).collect();
        args.extend(os(&["--edge-id", &edge_id.to_string(), "--http-listen", "127.0.0.1:0"]));
        args.extend([OsString::from("--data-dir"), edge_dir.clone().into()]);
        args.extend([OsString::from("--edge-token-file"), token_path.into()]);
        let mut node = Node::new("edgetally-collector", args, edge_dir.join("collector.json"));
        let url = format!("http://{}", node.start()["http"].as_str().expect("http"));
        impostors.push((node, url));
    }
    let pixel = |base: &str, n: u32| {
        for _ in 0..n {
            let url = format!("{base}/p.gif?aff=5&cmp=6");
            let status =
                std::process::Command::new("curl").args(["-sf", "-A", "Mozilla/5.0", "-o", "/dev/null", &url]).status();
            assert!(status.expect("curl").success());
        }
    };
    pixel(&stack.collectors[0], 3);
    for (_, url) in &impostors {
        pixel(url, 2);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    // Each impostor is refused (it connects at start, before any traffic)
    // and its sealed pixels wait in its spool.
    for (_, url) in &impostors {
        while metric(url, "edgetally_collector_uplink_refused_total") < 1.0
            || metric(url, "edgetally_collector_uplink_pending_batches") < 1.0
        {
            assert!(Instant::now() < deadline, "{url} was never refused with its batch spooled");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert!(metric(&stack.aggregator_http, "edgetally_aggregator_edges_refused_total") >= 2.0);
    // Only the authenticated edge's three pixels are counted.
    let ticket = serde_json::json!({"dataset": "rollups", "group_by": ["affiliate_id"]});
    loop {
        let counts = crate::support::rollups(&stack.flight_url, ticket.clone()).await;
        let impressions = counts.get("5").map_or(0, |counts| counts.impressions);
        if impressions == 3 {
            break;
        }
        assert!(impressions < 3 && Instant::now() < deadline, "impressions {impressions}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Stay a moment: the refused edges keep retrying and keep being refused.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts = crate::support::rollups(&stack.flight_url, ticket).await;
    assert_eq!(counts.get("5").map(|counts| counts.impressions), Some(3));
    drop(impostors);
}

/// A running aggregator with the shop's campaigns and edge 1's token, its
/// Flight URL, and edge 1's collector with `collector_args` (not started),
/// its state in `dir/collector`.
fn one_edge(dir: &Path, collector_args: &[&str]) -> (Node, String, Node) {
    let tokens_path = write_edge_tokens(dir, 1);
    let token_path = edge_token_file(dir, 1);
    let campaigns_path = write_shop_campaigns(dir);
    let mut aggregator =
        Node::aggregator(dir, &["--edge-tokens", path(&tokens_path), "--campaigns", path(&campaigns_path)]);
    let addresses = aggregator.start();
    let flight = format!("http://{}", addresses["flight"].as_str().unwrap());
    let collector = Node::collector(&dir.join("collector"), &addresses, &token_path, collector_args);
    (aggregator, flight, collector)
}

/// SIGTERM during load: the collector stops accepting, finishes what is in
/// flight, seals and ships the rest, and exits cleanly. Every event it
/// answered as accepted is in the aggregator, and a restart finds nothing
/// left in its spool or journal.
#[test]
fn sigterm_during_load_ships_every_accepted_event() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_aggregator, flight, mut collector) = one_edge(
        dir.path(),
        &[
            "--dedup-keys-max",
            "100000",
            // Long enough that the last seconds of counts are unsealed at
            // the signal: shutdown has to seal and ship them.
            "--flush-interval-ms",
            "2000",
        ],
    );
    let url = format!("http://{}", collector.start()["http"].as_str().unwrap());

    // Traffic for 4 s; the signal comes after 2 s. Requests after it fail to
    // connect; the ledger holds what was answered.
    let ledger = dir.path().join("ledger.json");
    let run = {
        let (url, ledger) = (url.clone(), ledger.clone());
        std::thread::spawn(move || {
            loadtest(&[
                "run",
                "--target",
                &url,
                "--rate",
                "500",
                "--duration-secs",
                "4",
                "--connections",
                "4",
                "--affiliates",
                "200",
                "--no-metrics",
                "--ledger",
                path(&ledger),
                "--json",
            ])
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let status = collector.terminate(Duration::from_secs(15));
    assert!(status.success(), "collector exited with {status}");
    let (status, stdout) = run.join().expect("load thread");
    assert!(status.success(), "run failed: {stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("report is JSON");
    assert!(report["events_accepted"].as_u64().unwrap() > 500, "{report:#}");

    let (status, stdout) = loadtest(&["verify", "--ledger", path(&ledger), "--flight", &flight, "--wait-secs", "10"]);
    assert!(status.success(), "verify failed: {stdout}");
    // Shipped before exiting: nothing waits in the spool or the journal.
    let url = format!("http://{}", collector.start()["http"].as_str().unwrap());
    assert_eq!(metric(&url, "edgetally_collector_spool_recovered_frames_total"), 0.0);
    assert_eq!(metric(&url, "edgetally_collector_journal_replayed_total"), 0.0);
}

/// Sums of a ledger file's counts by pair: leads and sales, and every
/// event it booked (accepted, flagged or duplicate).
fn ledger_sums(ledger: &Path) -> (u64, u64) {
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ledger).expect("read ledger")).expect("ledger is JSON");
    let counts = file["counts"].as_object().expect("counts");
    let sum = |names: &[&str]| -> u64 {
        counts.values().map(|counts| names.iter().map(|name| counts[*name].as_u64().unwrap()).sum::<u64>()).sum()
    };
    (sum(&["leads", "sales"]), sum(&["impressions", "clicks", "leads", "sales", "flagged", "duplicates"]))
}

/// Conversions ship with every flush while the traffic counters wait for
/// the rollup interval (rows-only seals). A collector killed with SIGKILL
/// between them replays its traffic counters from the journal, not the
/// conversions it already shipped; at its SIGTERM the full seal ships the
/// traffic, and the aggregator holds every accepted event exactly once.
#[test]
fn a_collector_killed_between_rows_only_seals_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_aggregator, flight, mut collector) = one_edge(
        dir.path(),
        // Traffic counters every three years: during the test only the
        // shutdown seals them.
        &["--dedup-keys-max", "100000", "--flush-interval-ms", "50", "--rollup-interval-ms", "100000000000"],
    );
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let totals = || {
        let totals = runtime
            .block_on(crate::support::rollups(&flight, serde_json::json!({"dataset": "rollups", "group_by": []})));
        totals.into_values().next().unwrap_or_default()
    };
    // Waits until the aggregator holds `conversions` leads and sales, and
    // checks that no traffic counter has shipped.
    let wait_for_conversions = |conversions: u64| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let totals = totals();
            assert_eq!((totals.impressions, totals.clicks, totals.duplicates), (0, 0, 0), "traffic shipped early");
            if totals.leads + totals.sales == conversions {
                return;
            }
            assert!(Instant::now() < deadline, "{} of {conversions} conversions shipped", totals.leads + totals.sales);
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    let dataset_rows = |dataset: &str| -> u64 {
        let batches = runtime.block_on(crate::support::fetch(&flight, serde_json::json!({"dataset": dataset})));
        batches.iter().map(|batch| batch.num_rows() as u64).sum()
    };

    let url = format!("http://{}", collector.start()["http"].as_str().unwrap());
    let first = dir.path().join("first.json");
    let refused = refused(&traffic(&url, &first, 1));
    let (first_conversions, first_booked) = ledger_sums(&first);
    assert!(first_conversions > 20, "{first_conversions} conversions");
    wait_for_conversions(first_conversions);
    // The last requests' rows may wait for the next flush, after the
    // gauges below last read 0: the aggregator must first hold them all.
    let deadline = Instant::now() + Duration::from_secs(10);
    while dataset_rows("quarantine") < refused {
        assert!(Instant::now() < deadline, "{} of {refused} quarantine rows shipped", dataset_rows("quarantine"));
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every row sealed, spooled and acknowledged: the journal holds notes
    // past all of them.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ["conversions_pending", "quarantine_pending", "uplink_pending_batches"]
        .iter()
        .any(|gauge| metric(&url, &format!("edgetally_collector_{gauge}")) != 0.0)
    {
        assert!(Instant::now() < deadline, "rows still waiting to ship");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(metric(&url, "edgetally_collector_seals_total{kind=\"rows\"}") > 0.0);
    let (conversion_rows, quarantine_rows) = (dataset_rows("conversions"), dataset_rows("quarantine"));
    assert!(refused > 0, "the mix has malformed requests");
    assert_eq!(quarantine_rows, refused);

    collector.kill();
    let url = format!("http://{}", collector.start()["http"].as_str().unwrap());
    // The shipped conversion and quarantine rows stay out of the replay;
    // every other journaled change of the first run (a count or a
    // duplicate) comes back.
    assert_eq!(
        metric(&url, "edgetally_collector_journal_rows_spooled_total"),
        (conversion_rows + quarantine_rows) as f64
    );
    assert_eq!(metric(&url, "edgetally_collector_journal_replayed_total"), (first_booked - conversion_rows) as f64);
    let second = dir.path().join("second.json");
    traffic(&url, &second, 2);
    wait_for_conversions(first_conversions + ledger_sums(&second).0);

    let status = collector.terminate(Duration::from_secs(15));
    assert!(status.success(), "collector exited with {status}");
    let (status, stdout) = loadtest(&[
        "verify",
        "--ledger",
        path(&first),
        "--ledger",
        path(&second),
        "--flight",
        &flight,
        "--wait-secs",
        "10",
    ]);
    assert!(status.success(), "verify failed: {stdout}");
    assert!(totals().impressions > 0);
}

/// A seal the spool cannot write goes back into the tally, and everything
/// accepted meanwhile ships exactly once when the spool works again. A
/// directory where the spool's first segment file goes makes every append
/// fail (even for root) until it is removed.
#[test]
fn a_seal_the_spool_cannot_write_is_kept_and_ships_once_it_can() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Test collectors seal everything every half second, so traffic
    // counters fail and come back too, not only conversions.
    let (_aggregator, flight, mut collector) = one_edge(dir.path(), &["--dedup-keys-max", "100000"]);
    let url = format!("http://{}", collector.start()["http"].as_str().unwrap());
    let blocker = dir.path().join("collector/spool/00000000000000000001.spool");
    std::fs::create_dir(&blocker).expect("block the first segment");

    let ledger = dir.path().join("ledger.json");
    let accepted = traffic(&url, &ledger, 11)["events_accepted"].as_u64().expect("events_accepted");
    assert!(accepted > 300, "accepted {accepted}");
    // Every flush since has failed and put its seal back: the counters are
    // still held, and nothing reached the spool.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&url, "edgetally_collector_spool_errors_total") < 2.0 {
        assert!(Instant::now() < deadline, "no failed seals");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(metric(&url, "edgetally_collector_rollup_keys") > 0.0, "the failed seals' keys are held");
    // Each failure doubles the wait for the next try: from the fourth on,
    // tries come at least 2 s (eight flushes) apart, where without the
    // back-off the spool would fail four times a second.
    while metric(&url, "edgetally_collector_spool_errors_total") < 4.0 {
        assert!(Instant::now() < deadline, "fewer than four failed seals");
        std::thread::sleep(Duration::from_millis(50));
    }
    let n_errors = metric(&url, "edgetally_collector_spool_errors_total");
    std::thread::sleep(Duration::from_millis(2_500));
    let n_retries = metric(&url, "edgetally_collector_spool_errors_total") - n_errors;
    assert!(n_retries <= 2.0, "{n_retries} failed seals in 2.5 s of back-off");
    let scrape = metrics_text(&url);
    assert!(!scrape.contains("edgetally_collector_seals_total{"), "a seal was spooled:\n{scrape}");
    assert_eq!(metric(&url, "edgetally_collector_spool_failing"), 1.0);
    // A load balancer sends traffic elsewhere meanwhile.
    assert_eq!(readyz(&url), "503 not ready: spool cannot be written");

    std::fs::remove_dir(&blocker).expect("unblock");
    let (status, stdout) = loadtest(&["verify", "--ledger", path(&ledger), "--flight", &flight, "--wait-secs", "20"]);
    assert!(status.success(), "verify failed: {stdout}");
    assert_eq!(metric(&url, "edgetally_collector_spool_failing"), 0.0);
    assert_eq!(readyz(&url), "200 ready");
}

/// The status and text of `base_url/readyz`.
fn readyz(base_url: &str) -> String {
    let output = std::process::Command::new("curl")
        .args(["-s", "-o", "-", "-w", " %{http_code}", &format!("{base_url}/readyz")])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&output.stdout);
    let (body, status) = text.trim_end().rsplit_once(' ').expect("curl wrote a status");
    format!("{status} {}", body.trim_end())
}
