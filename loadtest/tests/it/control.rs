//! The control stream: the aggregator serves the campaign snapshot, a change
//! to its file reaches a running edge, and an edge restarted while the
//! aggregator is away starts from the snapshot it kept.

use std::time::{Duration, Instant};

use crate::support::{Node, edge_token_file, path, write_edge_tokens};

/// The `Location` a click on campaign 1 is redirected to, if it is.
fn landing(collector: &str) -> Option<String> {
    let url = format!("{collector}/c/1?aff=9&sub1=ctl");
    let output = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", &url])
        .output()
        .expect("curl");
    let answer = String::from_utf8_lossy(&output.stdout).into_owned();
    let (status, location) = answer.split_once(' ')?;
    (status == "302").then(|| location.to_owned())
}

/// Waits until a click lands on a URL starting with `prefix`.
fn wait_for_landing(collector: &str, prefix: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let landing = landing(collector);
        if landing.as_deref().is_some_and(|landing| landing.starts_with(prefix)) {
            return;
        }
        assert!(Instant::now() < deadline, "clicks land on {landing:?}, not {prefix}…");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn campaigns(host: &str) -> String {
    serde_json::json!({"campaigns": [
        {"id": 1, "landing_url": format!("https://{host}/p?cid={{click_id}}&s={{sub1}}")},
    ]})
    .to_string()
}

#[test]
fn campaigns_come_from_the_aggregator_and_are_kept() {
    let dir = tempfile::tempdir().expect("temp dir");
    let campaigns_path = dir.path().join("aggregator-campaigns.json");
    std::fs::write(&campaigns_path, campaigns("first.example")).unwrap();
    let tokens_path = write_edge_tokens(dir.path(), 1);
    let token_path = edge_token_file(dir.path(), 1);

    let mut aggregator =
        Node::aggregator(dir.path(), &["--edge-tokens", path(&tokens_path), "--campaigns", path(&campaigns_path)]);
    let addresses = aggregator.start();

    // The collector has no --campaigns of its own.
    let collector_dir = dir.path().join("collector");
    let mut collector = Node::collector(&collector_dir, &addresses, &token_path, &["--dedup-keys-max", "10000"]);
    let url = format!("http://{}", collector.start()["http"].as_str().unwrap());
    // It connects at start and gets the snapshot.
    wait_for_landing(&url, "https://first.example/p?cid=");

    // An edit reaches the running edge.
    std::fs::write(&campaigns_path, campaigns("second.example")).unwrap();
    wait_for_landing(&url, "https://second.example/p?cid=");
    // An invalid edit is ignored: the edge keeps the last good snapshot.
    std::fs::write(&campaigns_path, r#"{"campaigns": [{"id": 0, "landing_url": "ftp://x"}]}"#).unwrap();
    std::thread::sleep(Duration::from_millis(2_500));
    assert!(landing(&url).unwrap().starts_with("https://second.example/"));

    // The aggregator goes away; a restarted edge starts from what it kept.
    aggregator.kill();
    collector.kill();
    let url = format!("http://{}", collector.start()["http"].as_str().unwrap());
    let kept = landing(&url).expect("a click is redirected right after the restart");
    assert!(kept.starts_with("https://second.example/p?cid="), "{kept}");
}
