//! The whole aggregator in-process: a real batch over QUIC, trusting the
//! generated certificate, then a real Flight `DoGet` of what it applied.

use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{UInt32Type, UInt64Type};
use arrow_flight::{FlightClient, FlightDescriptor, Ticket};
use bytes::Bytes;
use edgetally_protocol::QuarantineRow;
use edgetally_protocol::batch::{
    ConversionRow, RollupCounts, RollupKey, conversions_to_batch, encode_ipc, quarantine_to_batch, rollups_to_batch,
};
use edgetally_protocol::event::EventKind;
use edgetally_protocol::frame::{ACK_LEN, ALPN, Ack, AckStatus, BatchFrame, HELLO_ACK_LEN, Hello, HelloAck};
use futures::TryStreamExt;
use quinn::crypto::rustls::QuicClientConfig;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::*;

/// Bounds the whole test so a hang fails instead of stalling CI.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

fn frame() -> BatchFrame {
    let rollups = [
        (
            RollupKey { minute_ms: 1_795_514_400_000, affiliate_id: 7, campaign_id: 100, sub1: "fb".into() },
            [40, 3, 1, 0],
        ),
        (
            RollupKey { minute_ms: 1_795_514_400_000, affiliate_id: 7, campaign_id: 200, sub1: String::new() },
            [2, 1, 0, 1],
        ),
        (
            RollupKey { minute_ms: 1_795_514_460_000, affiliate_id: 8, campaign_id: 100, sub1: String::new() },
            [9, 0, 0, 0],
        ),
    ]
    .map(|(key, [impressions, clicks, leads, sales])| {
        (key, RollupCounts { impressions, clicks, unique_clicks: 0, leads, sales, duplicates: 0, flagged: [0; 5] })
    });
    let conversions = [ConversionRow {
        time_ms: 1_795_514_401_000,
        kind: EventKind::Lead,
        affiliate_id: 7,
        campaign_id: 100,
        sub1: "fb".into(),
        money: None,
        order_id: Some("o-1".into()),
        click_id: None,
        event_id: None,
        flag: None,
    }];
    BatchFrame {
        edge_id: 3,
        epoch: 1,
        sequence: 1,
        n_rollup_rows: 3,
        n_conversion_rows: 1,
        n_quarantine_rows: 1,
        rollups_ipc: encode_ipc(&rollups_to_batch(rollups.iter().map(|(key, counts)| (key, counts)))).unwrap().into(),
        conversions_ipc: encode_ipc(&conversions_to_batch(&conversions)).unwrap().into(),
        quarantine_ipc: encode_ipc(&quarantine_to_batch(&[QuarantineRow::new(
            1_795_514_400_000,
            "pixel",
            "bad_id",
            "bad affiliate_id",
            "aff=x",
        )]))
        .unwrap()
        .into(),
    }
}

/// `frame()` as batch `sequence` of its edge: the same rows each time,
/// except the conversion's order ID `o-<sequence>` (the ledger books one
/// conversion per order).
fn frame_at(sequence: u64) -> Vec<u8> {
    let conversion = ConversionRow {
        time_ms: 1_795_514_401_000,
        kind: EventKind::Lead,
        affiliate_id: 7,
        campaign_id: 100,
        sub1: "fb".into(),
        money: None,
        order_id: Some(format!("o-{sequence}")),
        click_id: None,
        event_id: None,
        flag: None,
    };
    let conversions_ipc = encode_ipc(&conversions_to_batch(&[conversion])).unwrap().into();
    BatchFrame { sequence, conversions_ipc, ..frame() }.encode().unwrap()
}

/// `stats` without the fsync latencies, which vary from run to run.
fn without_latency(stats: Stats) -> Stats {
    assert!(stats.wal_fsync_p50_us <= stats.wal_fsync_p99_us, "{stats:?}");
    assert!(stats.wal_fsync_p99_us <= stats.wal_fsync_max_us, "{stats:?}");
    Stats { wal_fsync_p50_us: 0, wal_fsync_p99_us: 0, wal_fsync_max_us: 0, ..stats }
}

/// What Flight serves, summed: impressions and clicks of affiliates 7 and
/// 8, conversion rows, quarantine rows.
#[derive(Debug, PartialEq, Eq)]
struct Totals {
    impressions: [u64; 2],
    clicks: [u64; 2],
    n_conversions: usize,
    n_quarantine: usize,
}

/// `frame()` applied `n_batches` times.
fn totals_after(n_batches: u64) -> Totals {
    let n = n_batches as usize;
    Totals {
        impressions: [42 * n_batches, 9 * n_batches],
        clicks: [4 * n_batches, 0],
        n_conversions: n,
        n_quarantine: n,
    }
}

async fn totals(aggregator: &Aggregator) -> Totals {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", aggregator.flight_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut flight = FlightClient::new(channel);
    let batches = do_get(&mut flight, r#"{"dataset":"rollups","group_by":["affiliate_id"]}"#).await;
    let mut totals = Totals { impressions: [0; 2], clicks: [0; 2], n_conversions: 0, n_quarantine: 0 };
    for batch in &batches {
        let affiliate_ids = batch.column(0).as_primitive::<UInt32Type>();
        for row_idx in 0..batch.num_rows() {
            let affiliate_idx = match affiliate_ids.value(row_idx) {
                7 => 0,
                8 => 1,
                other => panic!("unexpected affiliate {other}"),
            };
            totals.impressions[affiliate_idx] += batch.column(1).as_primitive::<UInt64Type>().value(row_idx);
            totals.clicks[affiliate_idx] += batch.column(2).as_primitive::<UInt64Type>().value(row_idx);
        }
    }
    let conversions = do_get(&mut flight, r#"{"dataset":"conversions"}"#).await;
    totals.n_conversions = conversions.iter().map(|batch| batch.num_rows()).sum();
    let quarantine = do_get(&mut flight, r#"{"dataset":"quarantine"}"#).await;
    totals.n_quarantine = quarantine.iter().map(|batch| batch.num_rows()).sum();
    totals
}

/// Sends batches `sequences` of the test edge on one connection and checks
/// each ack.
async fn send_all(aggregator: &Aggregator, sequences: std::ops::RangeInclusive<u64>, expect: AckStatus) {
    let (endpoint, connection) = connect(aggregator).await;
    for sequence in sequences {
        let ack = send(&connection, &frame_at(sequence)).await;
        assert_eq!(ack, Ack { edge_id: 3, epoch: 1, sequence, status: expect });
    }
    connection.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
}

fn wal_segments(data_dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data_dir.join(WAL_DIR_NAME))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// `GET path` over a fresh HTTP/1.1 connection: status and body.
async fn http_get(aggregator: &Aggregator, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(aggregator.http_addr()).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// The value of each sample of `/metrics` whose name (with labels) starts
/// with `edgetally_aggregator_`, for exact comparison.
async fn scrape(aggregator: &Aggregator) -> std::collections::BTreeMap<String, String> {
    let (status, body) = http_get(aggregator, "/metrics").await;
    assert_eq!(status, 200);
    body.lines()
        .filter(|line| line.starts_with("edgetally_aggregator_"))
        .map(|line| {
            let (name, value) = line.rsplit_once(' ').unwrap();
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

#[track_caller]
fn check_samples(samples: &std::collections::BTreeMap<String, String>, expect: &[(&str, &str)]) {
    for (name, value) in expect {
        assert_eq!(samples.get(*name).map(String::as_str), Some(*value), "{name} in {samples:#?}");
    }
}

/// Connects as edge 3 (the edge of `frame()`) without a token, which an
/// aggregator without configured tokens accepts.
async fn connect(aggregator: &Aggregator) -> (quinn::Endpoint, quinn::Connection) {
    let (endpoint, connection) = connect_quic(aggregator).await;
    let (ack, _control) = hello(&connection, 3, b"").await.expect("hello answered");
    assert!(ack.accepted);
    (endpoint, connection)
}

/// Sends a hello on the control stream; `None` when the connection was
/// closed before an answer.
async fn hello(connection: &quinn::Connection, edge_id: u32, token: &[u8]) -> Option<(HelloAck, quinn::SendStream)> {
    let (mut send, mut recv) = connection.open_bi().await.ok()?;
    send.write_all(&Hello { edge_id, token: token.to_vec() }.encode().unwrap()).await.ok()?;
    let mut answer = [0u8; HELLO_ACK_LEN];
    recv.read_exact(&mut answer).await.ok()?;
    Some((HelloAck::decode(&answer).unwrap(), send))
}

async fn connect_quic(aggregator: &Aggregator) -> (quinn::Endpoint, quinn::Connection) {
    connect_quic_as(aggregator, ALPN).await.expect("the aggregator accepts the current ALPN")
}

/// Connects offering only `alpn`; the handshake's error when refused.
async fn connect_quic_as(
    aggregator: &Aggregator,
    alpn: &[u8],
) -> Result<(quinn::Endpoint, quinn::Connection), quinn::ConnectionError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(aggregator.quic_cert_path()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let client_config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connection = endpoint.connect_with(client_config, aggregator.quic_addr(), "localhost").unwrap().await?;
    Ok((endpoint, connection))
}

#[tokio::test]
async fn edges_one_version_behind_still_ship() {
    tokio::time::timeout(TEST_TIMEOUT, edges_one_version_behind_still_ship_inner())
        .await
        .expect("test finishes in time");
}

async fn edges_one_version_behind_still_ship_inner() {
    let data_dir = tempfile::tempdir().unwrap();
    let aggregator = Aggregator::start(loopback_config(data_dir.path())).await.unwrap();
    // An edge that does not know this protocol is refused in the handshake.
    assert!(connect_quic_as(&aggregator, b"edgetally/1").await.is_err());
    // One that ships version 2 frames (streams as they are) is not.
    let (_endpoint, connection) = connect_quic_as(&aggregator, b"edgetally/2").await.unwrap();
    let (ack, _control) = hello(&connection, 3, b"").await.expect("hello answered");
    assert!(ack.accepted);
    let plain = frame().encode_version_2().unwrap();
    assert_eq!(u16::from_le_bytes([plain[4], plain[5]]), 2);
    let ack = send(&connection, &plain).await;
    assert_eq!(ack, Ack { edge_id: 3, epoch: 1, sequence: 1, status: AckStatus::Apply });
    // And the same batch compressed is the same batch: skipped.
    let ack = send(&connection, &frame().encode().unwrap()).await;
    assert_eq!(ack.status, AckStatus::Skip);
    let mut flight = flight_client(&aggregator).await;
    let batches = do_get(&mut flight, r#"{"dataset": "conversions"}"#).await;
    assert_eq!(batches.iter().map(|batch| batch.num_rows()).sum::<usize>(), 1);
}

async fn send(connection: &quinn::Connection, bytes: &[u8]) -> Ack {
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    send.finish().unwrap();
    let ack = recv.read_to_end(ACK_LEN).await.unwrap();
    Ack::decode(&ack).unwrap()
}

async fn do_get(flight: &mut FlightClient, ticket: &str) -> Vec<arrow_array::RecordBatch> {
    let stream = flight.do_get(Ticket::new(ticket.to_owned())).await.unwrap();
    stream.try_collect().await.unwrap()
}

/// An aggregator on ephemeral loopback ports with its state in `data_dir`.
pub(crate) fn loopback_config(data_dir: &std::path::Path) -> Config {
    Config {
        data_dir: data_dir.to_owned(),
        quic_listen: "127.0.0.1:0".parse().unwrap(),
        flight_listen: "127.0.0.1:0".parse().unwrap(),
        flight_sql_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        tls_cert: None,
        tls_key: None,
        tls_names: Vec::new(),
        wal_fsync: true,
        snapshot_wal_bytes: SNAPSHOT_WAL_BYTES_DEFAULT,
        retention_days: Some(RETENTION_DAYS_DEFAULT),
        edge_tokens: None,
        campaigns: None,
        flight_auth: None,
        flight_tls: None,
        dashboard: crate::DashboardConfig { report_tz: crate::REPORT_TZ_DEFAULT.into(), exchange_rates: None },
        edge_silent: Some(std::time::Duration::from_secs(crate::EDGE_SILENT_SECS_DEFAULT)),
    }
}

#[tokio::test]
async fn batch_over_quic_then_flight() {
    tokio::time::timeout(TEST_TIMEOUT, batch_over_quic_then_flight_inner()).await.expect("test finishes in time");
}

async fn batch_over_quic_then_flight_inner() {
    let data_dir = tempfile::tempdir().unwrap();
    let config = loopback_config(data_dir.path());
    let aggregator = Aggregator::start(config).await.unwrap();
    assert_ne!(aggregator.quic_addr().port(), 0);
    assert_ne!(aggregator.flight_addr().port(), 0);
    assert_eq!(aggregator.quic_cert_path(), data_dir.path().join("quic-cert.pem"));

    let (endpoint, connection) = connect(&aggregator).await;
    let bytes = frame().encode().unwrap();
    let expect_ack = |status| Ack { edge_id: 3, epoch: 1, sequence: 1, status };
    assert_eq!(send(&connection, &bytes).await, expect_ack(AckStatus::Apply));
    assert_eq!(send(&connection, &bytes).await, expect_ack(AckStatus::Skip));
    let refused = send(&connection, b"not a frame").await;
    assert_eq!(refused.status, AckStatus::Refuse);
    assert_eq!(
        without_latency(aggregator.stats()),
        Stats {
            batches_applied: 1,
            batches_skipped: 1,
            batches_refused: 1,
            rollup_rows_applied: 3,
            conversion_rows_applied: 1,
            // One record: the applied frame. The skip and the refusal cost
            // no write.
            wal_bytes: (wal::RECORD_HEADER_LEN + bytes.len()) as u64,
            wal_fsyncs: 1,
            ..Stats::default()
        }
    );

    let channel = tonic::transport::Channel::from_shared(format!("http://{}", aggregator.flight_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut flight = FlightClient::new(channel);

    let batches = do_get(&mut flight, r#"{"dataset":"rollups","group_by":["affiliate_id"]}"#).await;
    assert_eq!(batches.len(), 1);
    let batch = &batches[0];
    let names: Vec<&str> = batch.schema_ref().fields().iter().map(|field| field.name().as_str()).collect();
    assert_eq!(
        names,
        [
            "affiliate_id",
            "impressions",
            "clicks",
            "unique_clicks",
            "leads",
            "sales",
            "duplicates",
            "flagged_bot_user_agent",
            "flagged_click_flood",
            "flagged_fast_conversion",
            "flagged_no_click_id",
            "flagged_over_daily_cap",
            "currency",
            "revenue_minor",
            "commission_minor",
            "parent_commission_minor"
        ]
    );
    let affiliate_ids: Vec<u32> = batch.column(0).as_primitive::<UInt32Type>().values().to_vec();
    assert_eq!(affiliate_ids, [7, 8]);
    let counter = |column_idx: usize| batch.column(column_idx).as_primitive::<UInt64Type>().values().to_vec();
    // Sent twice, counted once.
    assert_eq!(counter(1), [42, 9]);
    assert_eq!(counter(2), [4, 0]);
    assert_eq!(counter(3), [0, 0]);
    assert_eq!(counter(4), [1, 0]);
    assert_eq!(counter(5), [1, 0]);
    assert_eq!(counter(6), [0, 0]);

    // Sent twice, quarantined once.
    let quarantine = do_get(&mut flight, r#"{"dataset":"quarantine"}"#).await;
    assert_eq!(quarantine.iter().map(|batch| batch.num_rows()).sum::<usize>(), 1);
    assert_eq!(quarantine[0].column_by_name("reason").unwrap().as_string::<i32>().value(0), "bad_id");
    let conversions = do_get(&mut flight, r#"{"dataset":"conversions","affiliate_id":7}"#).await;
    assert_eq!(conversions.iter().map(|batch| batch.num_rows()).sum::<usize>(), 1);

    // An empty answer still has its schema.
    let mut stream = flight.do_get(Ticket::new(r#"{"dataset":"rollups","affiliate_id":99}"#)).await.unwrap();
    assert!(stream.try_next().await.unwrap().is_none());
    assert_eq!(stream.schema().unwrap().fields().len(), 19);

    let error = flight.do_get(Ticket::new(r#"{"dataset":"clicks"}"#)).await.unwrap_err();
    assert!(error.to_string().contains("unknown dataset"), "{error}");

    let infos: Vec<_> = flight.list_flights("").await.unwrap().try_collect().await.unwrap();
    let commands: Vec<Bytes> = infos.iter().map(|info| info.flight_descriptor.clone().unwrap().cmd).collect();
    assert_eq!(
        commands,
        [
            Bytes::from(r#"{"dataset":"rollups"}"#),
            Bytes::from(r#"{"dataset":"conversions"}"#),
            Bytes::from(r#"{"dataset":"quarantine"}"#),
            Bytes::from(r#"{"dataset":"alerts"}"#),
        ]
    );

    let descriptor = FlightDescriptor::new_cmd(r#"{"dataset":"rollups","group_by":["sub1"]}"#);
    let info = flight.get_flight_info(descriptor.clone()).await.unwrap();
    assert_eq!(info.endpoint.len(), 1);
    assert_eq!(info.endpoint[0].ticket.as_ref().unwrap().ticket, descriptor.cmd);
    let schema = flight.get_schema(descriptor).await.unwrap();
    assert_eq!(schema, info.try_decode_schema().unwrap());
    assert_eq!(schema.field(0).name(), "sub1");

    connection.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    aggregator.shutdown().await;
}

#[tokio::test]
async fn restart_reuses_certificate() {
    let data_dir = tempfile::tempdir().unwrap();
    let config = loopback_config(data_dir.path());
    let first = Aggregator::start(config.clone()).await.unwrap();
    let cert_pem = std::fs::read(first.quic_cert_path()).unwrap();
    first.shutdown().await;
    let second = Aggregator::start(config).await.unwrap();
    assert_eq!(std::fs::read(second.quic_cert_path()).unwrap(), cert_pem);
    second.shutdown().await;
}

#[tokio::test]
async fn restart_keeps_counts_and_marks() {
    tokio::time::timeout(TEST_TIMEOUT, restart_keeps_counts_and_marks_inner()).await.expect("test finishes in time");
}

async fn restart_keeps_counts_and_marks_inner() {
    let data_dir = tempfile::tempdir().unwrap();
    let config = loopback_config(data_dir.path());
    let first = Aggregator::start(config.clone()).await.unwrap();
    send_all(&first, 1..=3, AckStatus::Apply).await;
    assert_eq!(totals(&first).await, totals_after(3));
    first.shutdown().await;

    let second = Aggregator::start(config.clone()).await.unwrap();
    assert_eq!(totals(&second).await, totals_after(3));
    // Shutdown snapshotted and truncated the log, so there is nothing to
    // replay: segment 1 is gone, 2 (the snapshot's `wal_from`) is empty and
    // this run appends to 3.
    assert_eq!((second.stats().wal_records_replayed, second.stats().wal_bytes), (0, 0));
    assert_eq!(wal_segments(data_dir.path()), ["00000000000000000002.wal", "00000000000000000003.wal"]);
    // The marks survived: old batches are skipped, the next is applied.
    send_all(&second, 1..=3, AckStatus::Skip).await;
    send_all(&second, 4..=4, AckStatus::Apply).await;
    assert_eq!(totals(&second).await, totals_after(4));
    let stats = second.stats();
    assert_eq!((stats.batches_applied, stats.batches_skipped, stats.wal_records_corrupt), (1, 3, 0));
    second.shutdown().await;

    let third = Aggregator::start(config).await.unwrap();
    assert_eq!(totals(&third).await, totals_after(4));
    third.shutdown().await;
}

/// A crash: the runtime is dropped with the aggregator still running, so
/// nothing is flushed or snapshotted; then an append cut off mid-record is
/// left at the log's end. The restart replays every acknowledged batch,
/// truncates the torn record and keeps the marks.
#[test]
fn crash_replays_wal() {
    let data_dir = tempfile::tempdir().unwrap();
    let config = loopback_config(data_dir.path());
    let runtime = || tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    let crashed = runtime();
    crashed.block_on(async {
        tokio::time::timeout(TEST_TIMEOUT, async {
            let aggregator = Aggregator::start(config.clone()).await.unwrap();
            send_all(&aggregator, 1..=2, AckStatus::Apply).await;
            // No shutdown: dropped as a kill would leave it.
            drop(aggregator);
        })
        .await
        .expect("test finishes in time");
    });
    drop(crashed);

    let segments = wal_segments(data_dir.path());
    let last_segment = data_dir.path().join(WAL_DIR_NAME).join(segments.last().unwrap());
    let torn = frame_at(3);
    let mut torn_record = wal::RECORD_MAGIC.to_vec();
    torn_record.extend_from_slice(&(torn.len() as u32).to_le_bytes());
    torn_record.extend_from_slice(&crc32fast::hash(&torn).to_le_bytes());
    torn_record.extend_from_slice(&torn[..torn.len() / 2]);
    let mut file = std::fs::OpenOptions::new().append(true).open(&last_segment).unwrap();
    std::io::Write::write_all(&mut file, &torn_record).unwrap();
    drop(file);

    runtime().block_on(async {
        tokio::time::timeout(TEST_TIMEOUT, async {
            let aggregator = Aggregator::start(config.clone()).await.unwrap();
            let stats = aggregator.stats();
            assert_eq!(
                (stats.wal_records_replayed, stats.wal_records_corrupt, stats.wal_torn_tails),
                (2, 0, 1),
                "{stats:?}"
            );
            assert_eq!(totals(&aggregator).await, totals_after(2));
            check_samples(
                &scrape(&aggregator).await,
                &[
                    ("edgetally_aggregator_wal_records_replayed_total", "2"),
                    ("edgetally_aggregator_wal_records_corrupt_total", "0"),
                    ("edgetally_aggregator_wal_torn_tails_total", "1"),
                ],
            );
            send_all(&aggregator, 1..=2, AckStatus::Skip).await;
            // The torn batch was never acknowledged; its edge sends it again.
            send_all(&aggregator, 3..=3, AckStatus::Apply).await;
            assert_eq!(totals(&aggregator).await, totals_after(3));
            aggregator.shutdown().await;
        })
        .await
        .expect("test finishes in time");
    });
}

/// Polls `condition` until it holds; the caller bounds the wait.
async fn wait_until(mut condition: impl FnMut() -> bool) {
    while !condition() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// With a 1-byte limit every commit asks for a snapshot. Waiting for each
/// before the next batch makes their number exact; after a crash the
/// restart loads the last one, and the covered segments are gone.
#[test]
fn snapshots_truncate_wal() {
    let data_dir = tempfile::tempdir().unwrap();
    let config = Config { snapshot_wal_bytes: 1, ..loopback_config(data_dir.path()) };
    let runtime = || tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    let crashed = runtime();
    crashed.block_on(async {
        tokio::time::timeout(TEST_TIMEOUT, async {
            let aggregator = Aggregator::start(config.clone()).await.unwrap();
            for sequence in 1..=5 {
                send_all(&aggregator, sequence..=sequence, AckStatus::Apply).await;
                wait_until(|| aggregator.stats().snapshots_written >= sequence).await;
            }
            let stats = aggregator.stats();
            assert_eq!((stats.snapshots_written, stats.wal_bytes), (5, 0), "{stats:?}");
            // Snapshot n rotated to segment n + 1 and deleted the ones below.
            assert_eq!(wal_segments(data_dir.path()), ["00000000000000000006.wal"]);
            let snapshot = snapshot::load(data_dir.path()).unwrap().unwrap();
            assert_eq!(snapshot.wal_from, 6);
            drop(aggregator);
        })
        .await
        .expect("test finishes in time");
    });
    drop(crashed);

    runtime().block_on(async {
        tokio::time::timeout(TEST_TIMEOUT, async {
            let aggregator = Aggregator::start(config.clone()).await.unwrap();
            let stats = aggregator.stats();
            assert_eq!((stats.wal_records_replayed, stats.wal_records_corrupt, stats.wal_torn_tails), (0, 0, 0));
            assert_eq!(totals(&aggregator).await, totals_after(5));
            assert_eq!(wal_segments(data_dir.path()), ["00000000000000000006.wal", "00000000000000000007.wal"]);
            send_all(&aggregator, 1..=5, AckStatus::Skip).await;
            send_all(&aggregator, 6..=6, AckStatus::Apply).await;
            wait_until(|| aggregator.stats().snapshots_written >= 1).await;
            assert_eq!(totals(&aggregator).await, totals_after(6));
            aggregator.shutdown().await;
        })
        .await
        .expect("test finishes in time");
    });

    runtime().block_on(async {
        tokio::time::timeout(TEST_TIMEOUT, async {
            let aggregator = Aggregator::start(config.clone()).await.unwrap();
            assert_eq!(aggregator.stats().wal_records_replayed, 0);
            assert_eq!(totals(&aggregator).await, totals_after(6));
            aggregator.shutdown().await;
        })
        .await
        .expect("test finishes in time");
    });
}

/// A snapshot that does not read back stops the start, naming the file.
#[tokio::test]
async fn corrupt_snapshot_is_a_startup_error() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let data_dir = tempfile::tempdir().unwrap();
        let config = loopback_config(data_dir.path());
        let aggregator = Aggregator::start(config.clone()).await.unwrap();
        send_all(&aggregator, 1..=1, AckStatus::Apply).await;
        aggregator.shutdown().await;
        let path = data_dir.path().join(snapshot::SNAPSHOT_FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        let last_idx = bytes.len() - 1;
        bytes[last_idx] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let error = Aggregator::start(config).await.err().expect("a corrupt snapshot fails the start");
        let Error::Snapshot(SnapshotError::Corrupt { path: named, .. }) = &error else {
            panic!("wrong error: {error:?}");
        };
        assert_eq!(named, &path);
    })
    .await
    .expect("test finishes in time");
}

#[tokio::test]
async fn metrics_and_health() {
    tokio::time::timeout(TEST_TIMEOUT, metrics_and_health_inner()).await.expect("test finishes in time");
}

async fn metrics_and_health_inner() {
    let data_dir = tempfile::tempdir().unwrap();
    let aggregator = Aggregator::start(loopback_config(data_dir.path())).await.unwrap();
    assert_ne!(aggregator.http_addr().port(), 0);
    let (endpoint, connection) = connect(&aggregator).await;
    for (sequence, status) in [(1, AckStatus::Apply), (2, AckStatus::Apply), (1, AckStatus::Skip)] {
        assert_eq!(send(&connection, &frame_at(sequence)).await.status, status);
    }
    assert_eq!(send(&connection, b"not a frame").await.status, AckStatus::Refuse);
    connection.close(0u32.into(), b"done");
    endpoint.wait_idle().await;

    // Compressed, the two frames need not be the same length.
    let wal_len = 2 * wal::RECORD_HEADER_LEN + frame_at(1).len() + frame_at(2).len();
    let wal_bytes = wal_len.to_string();
    let samples = scrape(&aggregator).await;
    check_samples(
        &samples,
        &[
            ("edgetally_aggregator_batches_total{status=\"apply\"}", "2"),
            ("edgetally_aggregator_batches_total{status=\"skip\"}", "1"),
            ("edgetally_aggregator_batches_total{status=\"refuse\"}", "1"),
            ("edgetally_aggregator_rollup_rows_applied_total", "6"),
            ("edgetally_aggregator_conversion_rows_applied_total", "2"),
            ("edgetally_aggregator_wal_records_replayed_total", "0"),
            ("edgetally_aggregator_wal_records_corrupt_total", "0"),
            ("edgetally_aggregator_wal_torn_tails_total", "0"),
            ("edgetally_aggregator_snapshots_written_total", "0"),
            ("edgetally_aggregator_wal_bytes", &wal_bytes),
            // One fsync per applied batch: they came one at a time.
            ("edgetally_aggregator_wal_fsync_duration_seconds_count", "2"),
            ("edgetally_aggregator_wal_fsync_duration_seconds_bucket{le=\"+Inf\"}", "2"),
        ],
    );
    let n_buckets = samples
        .keys()
        .filter(|name| name.starts_with("edgetally_aggregator_wal_fsync_duration_seconds_bucket"))
        .count();
    assert_eq!(n_buckets, 14);
    let stats = aggregator.stats();
    assert_eq!((stats.wal_fsyncs, stats.wal_bytes), (2, wal_len as u64));

    assert_eq!(http_get(&aggregator, "/healthz").await, (200, "ok".to_owned()));
    assert_eq!(http_get(&aggregator, "/nope").await.0, 404);
    aggregator.shutdown().await;
}

#[tokio::test]
async fn unknown_edges_and_wrong_tokens_are_refused() {
    tokio::time::timeout(TEST_TIMEOUT, unknown_edges_and_wrong_tokens_are_refused_inner())
        .await
        .expect("test finishes in time");
}

async fn unknown_edges_and_wrong_tokens_are_refused_inner() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut tokens = EdgeTokens::default();
    tokens.insert(3, b"token-of-edge-3-0123456789").unwrap();
    tokens.insert(4, b"token-of-edge-4-0123456789").unwrap();
    let config = Config { edge_tokens: Some(tokens), ..loopback_config(data_dir.path()) };
    let aggregator = Aggregator::start(config).await.unwrap();

    // Wrong token, another edge's token, an unknown edge, no token: each
    // refused, and the connection closed.
    let refusals: [(u32, &[u8]); 4] = [
        (3, b"token-of-edge-3-012345678X"),
        (3, b"token-of-edge-4-0123456789"),
        (9, b"token-of-edge-3-0123456789"),
        (3, b""),
    ];
    for (edge_id, token) in refusals {
        let (_endpoint, connection) = connect_quic(&aggregator).await;
        if let Some((ack, _control)) = hello(&connection, edge_id, token).await {
            assert!(!ack.accepted, "edge {edge_id} accepted");
        }
        let closed = connection.closed().await;
        assert!(
            matches!(&closed, quinn::ConnectionError::ApplicationClosed(close) if close.error_code == ingest::CLOSE_UNAUTHENTICATED),
            "{closed:?}"
        );
    }
    assert_eq!(aggregator.stats().edges_refused, 4);

    // The right token ships; a frame of another edge on that connection is
    // refused, not applied.
    let (_endpoint, connection) = connect_quic(&aggregator).await;
    let (ack, _control) = hello(&connection, 3, b"token-of-edge-3-0123456789").await.unwrap();
    assert!(ack.accepted);
    let bytes = frame().encode().unwrap();
    assert_eq!(send(&connection, &bytes).await.status, AckStatus::Apply);
    let other = BatchFrame { edge_id: 4, ..frame() }.encode().unwrap();
    assert_eq!(send(&connection, &other).await.status, AckStatus::Refuse);
    let stats = aggregator.stats();
    assert_eq!((stats.batches_applied, stats.batches_refused, stats.edges_refused), (1, 1, 4));
    aggregator.shutdown().await;
}

/// `frame()` as batch `sequence`, its conversions replaced by one lead per
/// `(affiliate_id, order_id)`.
fn frame_with_conversions(sequence: u64, conversions: &[(u32, &str)]) -> Vec<u8> {
    let rows: Vec<ConversionRow> = conversions
        .iter()
        .map(|&(affiliate_id, order_id)| ConversionRow {
            time_ms: 1_795_514_401_000,
            kind: EventKind::Lead,
            affiliate_id,
            campaign_id: 100,
            sub1: String::new(),
            money: None,
            order_id: Some(order_id.to_owned()),
            click_id: None,
            event_id: None,
            flag: None,
        })
        .collect();
    frame_of_conversions(sequence, &rows)
}

/// Batch `sequence` of `frame()`'s edge with its rollups and quarantine,
/// and `rows` as its conversions.
fn frame_of_conversions(sequence: u64, rows: &[ConversionRow]) -> Vec<u8> {
    BatchFrame {
        sequence,
        n_conversion_rows: rows.len() as u32,
        conversions_ipc: encode_ipc(&conversions_to_batch(rows)).unwrap().into(),
        ..frame()
    }
    .encode()
    .unwrap()
}

async fn flight_client(aggregator: &Aggregator) -> FlightClient {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", aggregator.flight_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    FlightClient::new(channel)
}

/// The next batch of a follow stream, whose last column is `applied_at`.
async fn next_follow(stream: &mut arrow_flight::decode::FlightRecordBatchStream) -> arrow_array::RecordBatch {
    let batch = stream.try_next().await.unwrap().expect("the follow stream stays open");
    assert_eq!(batch.schema().fields().last().unwrap().name(), "applied_at");
    batch
}

/// The values of `column` (strings or unsigned integers) as text.
fn texts(batch: &arrow_array::RecordBatch, column: &str) -> Vec<String> {
    let values = batch.column_by_name(column).unwrap();
    match values.data_type() {
        arrow_schema::DataType::Utf8 => {
            values.as_string::<i32>().iter().map(|value| value.unwrap().to_owned()).collect()
        }
        arrow_schema::DataType::UInt32 => {
            values.as_primitive::<UInt32Type>().values().iter().map(ToString::to_string).collect()
        }
        arrow_schema::DataType::UInt64 => {
            values.as_primitive::<UInt64Type>().values().iter().map(ToString::to_string).collect()
        }
        other => panic!("unexpected type {other}"),
    }
}

/// The batch's one `applied_at`, checked to be the same on every row.
fn applied_at(batch: &arrow_array::RecordBatch) -> i64 {
    use arrow_array::types::TimestampMillisecondType;
    let column = batch.column_by_name("applied_at").unwrap().as_primitive::<TimestampMillisecondType>();
    let first = column.value(0);
    assert!(column.values().iter().all(|&ms| ms == first), "{column:?}");
    first
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test]
async fn follow_streams_applied_batches() {
    tokio::time::timeout(TEST_TIMEOUT, follow_streams_applied_batches_inner()).await.expect("test finishes in time");
}

async fn follow_streams_applied_batches_inner() {
    let data_dir = tempfile::tempdir().unwrap();
    let aggregator = Aggregator::start(loopback_config(data_dir.path())).await.unwrap();
    let mut flight = flight_client(&aggregator).await;
    let mut every = flight.do_get(Ticket::new(r#"{"dataset":"conversions","follow":true}"#)).await.unwrap();
    let mut of_7 =
        flight.do_get(Ticket::new(r#"{"dataset":"conversions","follow":true,"affiliate_id":7}"#)).await.unwrap();
    let mut rollups = flight.do_get(Ticket::new(r#"{"dataset":"rollups","follow":true}"#)).await.unwrap();
    let mut quarantine = flight.do_get(Ticket::new(r#"{"dataset":"quarantine","follow":true}"#)).await.unwrap();
    assert_eq!(aggregator.stats().followers, 4);

    let error = flight.do_get(Ticket::new(r#"{"dataset":"rollups","follow":true,"group_by":["minute"]}"#)).await;
    let Err(arrow_flight::error::FlightError::Tonic(status)) = error else { panic!("follow with group_by: {error:?}") };
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "bad ticket: group_by cannot be combined with follow: follow streams each applied batch's rollup rows, ungrouped"
    );

    let (endpoint, connection) = connect(&aggregator).await;
    let before_ms = unix_ms();
    let first = frame_with_conversions(1, &[(7, "o-1"), (8, "o-2")]);
    assert_eq!(send(&connection, &first).await.status, AckStatus::Apply);
    // A batch skipped as a resend is not news.
    assert_eq!(send(&connection, &first).await.status, AckStatus::Skip);
    let second = frame_with_conversions(2, &[(7, "o-3")]);
    assert_eq!(send(&connection, &second).await.status, AckStatus::Apply);
    let after_ms = unix_ms();

    let first_batch = next_follow(&mut every).await;
    assert_eq!(texts(&first_batch, "order_id"), ["o-1", "o-2"]);
    let second_batch = next_follow(&mut every).await;
    assert_eq!(texts(&second_batch, "order_id"), ["o-3"]);
    // One time per batch, in apply order, between send and ack.
    let (first_applied, second_applied) = (applied_at(&first_batch), applied_at(&second_batch));
    assert!(before_ms <= first_applied && first_applied <= second_applied && second_applied <= after_ms);

    for (order_id, applied) in [("o-1", first_applied), ("o-3", second_applied)] {
        let batch = next_follow(&mut of_7).await;
        assert_eq!((texts(&batch, "order_id"), applied_at(&batch)), (vec![order_id.to_owned()], applied));
    }

    // The rollup rows of each batch as shipped: deltas, not totals.
    for applied in [first_applied, second_applied] {
        let batch = next_follow(&mut rollups).await;
        assert_eq!(applied_at(&batch), applied);
        assert_eq!(texts(&batch, "affiliate_id"), ["7", "7", "8"]);
        assert_eq!(texts(&batch, "campaign_id"), ["100", "200", "100"]);
        assert_eq!(texts(&batch, "impressions"), ["40", "2", "9"]);
        assert_eq!(texts(&batch, "clicks"), ["3", "1", "0"]);
        let batch = next_follow(&mut quarantine).await;
        assert_eq!((texts(&batch, "reason"), applied_at(&batch)), (vec!["bad_id".to_owned()], applied));
    }

    check_samples(
        &scrape(&aggregator).await,
        &[("edgetally_aggregator_followers", "4"), ("edgetally_aggregator_followers_lagged_total", "0")],
    );
    connection.close(0u32.into(), b"done");
    endpoint.wait_idle().await;

    // Shutdown ends every follow stream with UNAVAILABLE, so it does not
    // wait out the Flight server's grace period.
    let started = std::time::Instant::now();
    let shutdown = tokio::spawn(aggregator.shutdown());
    for stream in [&mut every, &mut of_7, &mut rollups, &mut quarantine] {
        let Err(arrow_flight::error::FlightError::Tonic(status)) = stream.try_next().await else {
            panic!("the follow stream ends with an error")
        };
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
    }
    shutdown.await.unwrap();
    assert!(started.elapsed() < SHUTDOWN_GRACE, "shutdown took {:?}", started.elapsed());
}

/// `FOLLOWERS_MAX` follow; one more is refused until one leaves.
#[tokio::test]
async fn followers_are_bounded() {
    tokio::time::timeout(TEST_TIMEOUT, followers_are_bounded_inner()).await.expect("test finishes in time");
}

async fn followers_are_bounded_inner() {
    let data_dir = tempfile::tempdir().unwrap();
    let aggregator = Aggregator::start(loopback_config(data_dir.path())).await.unwrap();
    let ticket = r#"{"dataset":"conversions","follow":true}"#;
    // A connection carries `STREAMS_PER_CONNECTION_MAX` streams at once.
    let streams_per_connection = 16;
    let mut streams = Vec::new();
    for _ in 0..follow::FOLLOWERS_MAX / streams_per_connection {
        let mut flight = flight_client(&aggregator).await;
        for _ in 0..streams_per_connection {
            streams.push(flight.do_get(Ticket::new(ticket)).await.unwrap());
        }
    }
    assert_eq!(aggregator.stats().followers, follow::FOLLOWERS_MAX as u64);
    let mut flight = flight_client(&aggregator).await;
    let Err(arrow_flight::error::FlightError::Tonic(status)) = flight.do_get(Ticket::new(ticket)).await else {
        panic!("follower past the limit admitted")
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
    streams.pop();
    wait_until(|| aggregator.stats().followers == follow::FOLLOWERS_MAX as u64 - 1).await;
    streams.push(flight.do_get(Ticket::new(ticket)).await.unwrap());
    assert_eq!(aggregator.stats().followers, follow::FOLLOWERS_MAX as u64);
    drop(streams);
    aggregator.shutdown().await;
}

const FLIGHT_ADMIN_TOKEN: &str = "flight-admin-token-0123456789abcdefgh";
const FLIGHT_AFFILIATE_7_TOKEN: &str = "flight-affiliate-7-token-0123456789ab";
const FLIGHT_EDGE_TOKEN: &str = "flight-edge-token-0123456789abcdefghi";

/// A raw Flight client (every answer a `Status`) that sends
/// `authorization: Bearer <token>` when given one.
async fn raw_flight_client(
    aggregator: &Aggregator,
    token: Option<&str>,
) -> arrow_flight::flight_service_client::FlightServiceClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        impl tonic::service::Interceptor + Clone + use<>,
    >,
> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", aggregator.flight_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> =
        token.map(|token| format!("Bearer {token}").parse().unwrap());
    let interceptor = move |mut request: tonic::Request<()>| {
        if let Some(authorization) = &authorization {
            request.metadata_mut().insert("authorization", authorization.clone());
        }
        Ok(request)
    };
    arrow_flight::flight_service_client::FlightServiceClient::with_interceptor(channel, interceptor)
}

/// What each Flight call answers a caller holding `token`: `OK` or the
/// status code.
async fn flight_codes(aggregator: &Aggregator, token: Option<&str>) -> Vec<(&'static str, tonic::Code)> {
    use arrow_flight::{Action, Criteria, Empty, FlightData, HandshakeRequest};
    fn code<T>(result: Result<T, tonic::Status>) -> tonic::Code {
        result.map_or_else(|status| status.code(), |_| tonic::Code::Ok)
    }
    let mut client = raw_flight_client(aggregator, token).await;
    let rollups = FlightDescriptor::new_cmd(r#"{"dataset":"rollups"}"#);
    vec![
        ("handshake", code(client.handshake(futures::stream::empty::<HandshakeRequest>()).await)),
        ("list_flights", code(client.list_flights(Criteria::default()).await)),
        ("get_flight_info", code(client.get_flight_info(rollups.clone()).await)),
        ("poll_flight_info", code(client.poll_flight_info(rollups.clone()).await)),
        ("get_schema", code(client.get_schema(rollups).await)),
        ("do_get", code(client.do_get(Ticket::new(r#"{"dataset":"rollups"}"#)).await)),
        ("do_put", code(client.do_put(futures::stream::empty::<FlightData>()).await)),
        ("do_action", code(client.do_action(Action::new("flush", "")).await)),
        ("list_actions", code(client.list_actions(Empty::default()).await)),
        ("do_exchange", code(client.do_exchange(futures::stream::empty::<FlightData>()).await)),
    ]
}

#[tokio::test]
async fn flight_calls_need_a_role() {
    tokio::time::timeout(TEST_TIMEOUT, flight_calls_need_a_role_inner()).await.expect("test finishes in time");
}

async fn flight_calls_need_a_role_inner() {
    use tonic::Code::{InvalidArgument, Ok as Allowed, PermissionDenied, Unauthenticated, Unimplemented};

    let data_dir = tempfile::tempdir().unwrap();
    let tokens_path = data_dir.path().join("flight-tokens.json");
    let tokens = serde_json::json!({"tokens": [
        {"name": "finance", "token": FLIGHT_ADMIN_TOKEN, "role": "admin"},
        {"name": "aff-7", "token": FLIGHT_AFFILIATE_7_TOKEN, "role": "affiliate:7"},
        {"name": "edge", "token": FLIGHT_EDGE_TOKEN, "role": "edge"},
    ]});
    std::fs::write(&tokens_path, tokens.to_string()).unwrap();
    let flight_auth = Some(FlightAuth::load(&tokens_path).unwrap());
    let aggregator = Aggregator::start(Config { flight_auth, ..loopback_config(data_dir.path()) }).await.unwrap();
    let (endpoint, connection) = connect(&aggregator).await;
    assert_eq!(send(&connection, &frame_at(1)).await.status, AckStatus::Apply);

    let calls = ["handshake", "list_flights", "get_flight_info", "poll_flight_info", "get_schema", "do_get", "do_put"];
    let with = |codes: [tonic::Code; 10]| -> Vec<(&'static str, tonic::Code)> {
        calls.into_iter().chain(["do_action", "list_actions", "do_exchange"]).zip(codes).collect()
    };
    for token in [None, Some("wrong-token-0123456789abcdefghijklmnop")] {
        assert_eq!(flight_codes(&aggregator, token).await, with([Unauthenticated; 10]), "{token:?}");
    }
    assert_eq!(flight_codes(&aggregator, Some(FLIGHT_EDGE_TOKEN)).await, with([PermissionDenied; 10]));
    assert_eq!(
        flight_codes(&aggregator, Some(FLIGHT_AFFILIATE_7_TOKEN)).await,
        with([
            Unimplemented,
            Allowed,
            Allowed,
            Unimplemented,
            Allowed,
            Allowed,
            PermissionDenied,
            PermissionDenied,
            PermissionDenied,
            PermissionDenied
        ])
    );
    assert_eq!(
        flight_codes(&aggregator, Some(FLIGHT_ADMIN_TOKEN)).await,
        with([
            Unimplemented,
            Allowed,
            Allowed,
            Unimplemented,
            Allowed,
            Allowed,
            Unimplemented,
            // The admin may act; "flush" is not an action.
            InvalidArgument,
            Allowed,
            Unimplemented
        ])
    );

    // The affiliate reads its own rows only, and its flight infos and
    // listed tickets say so.
    let mut affiliate = flight_client(&aggregator).await;
    affiliate.add_header("authorization", &format!("Bearer {FLIGHT_AFFILIATE_7_TOKEN}")).unwrap();
    let batches = do_get(&mut affiliate, r#"{"dataset":"rollups","group_by":["affiliate_id"]}"#).await;
    let affiliate_ids: Vec<u32> =
        batches.iter().flat_map(|batch| batch.column(0).as_primitive::<UInt32Type>().values().to_vec()).collect();
    assert_eq!(affiliate_ids, [7]);
    let error = affiliate.do_get(Ticket::new(r#"{"dataset":"rollups","affiliate_id":8}"#)).await.unwrap_err();
    assert!(
        matches!(&error, arrow_flight::error::FlightError::Tonic(status) if status.code() == PermissionDenied
            && status.message() == "permission denied: affiliate:7 may not read affiliate 8"),
        "{error:?}"
    );
    let info = affiliate.get_flight_info(FlightDescriptor::new_cmd(r#"{"dataset":"conversions"}"#)).await.unwrap();
    assert_eq!(info.endpoint[0].ticket.as_ref().unwrap().ticket, r#"{"affiliate_id":7,"dataset":"conversions"}"#);
    let infos: Vec<_> = affiliate.list_flights("").await.unwrap().try_collect().await.unwrap();
    let tickets: Vec<Bytes> = infos.iter().map(|info| info.endpoint[0].ticket.clone().unwrap().ticket).collect();
    assert_eq!(
        tickets,
        [
            Bytes::from(r#"{"affiliate_id":7,"dataset":"rollups"}"#),
            Bytes::from(r#"{"affiliate_id":7,"dataset":"conversions"}"#),
            Bytes::from(r#"{"affiliate_id":7,"dataset":"alerts"}"#),
        ]
    );
    // A refusal never repeats the token.
    let mut wrong = flight_client(&aggregator).await;
    wrong.add_header("authorization", "Bearer wrong-token-0123456789abcdefghijklmnop").unwrap();
    let error = wrong.do_get(Ticket::new(r#"{"dataset":"rollups"}"#)).await.unwrap_err();
    assert!(
        matches!(&error, arrow_flight::error::FlightError::Tonic(status) if status.code() == Unauthenticated
            && status.message() == "unauthenticated: unknown token"),
        "{error:?}"
    );

    // 20 calls without a valid token; 10 by the edge, 4 by the affiliate
    // in the table and 1 after it.
    let stats = aggregator.stats();
    assert_eq!((stats.flight_refused_unauthenticated, stats.flight_refused_permission_denied), (21, 15));
    check_samples(
        &scrape(&aggregator).await,
        &[
            ("edgetally_aggregator_flight_refused_total{reason=\"unauthenticated\"}", "21"),
            ("edgetally_aggregator_flight_refused_total{reason=\"permission_denied\"}", "15"),
        ],
    );
    connection.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    aggregator.shutdown().await;
}

/// Campaign 100 pays 10 % of the sale, campaign 200 a 2.50 USD CPA.
const PARTITION_RULES: &str = r#"{"campaigns": [
  {"id": 100, "landing_url": "https://a.example/", "payout": {"type": "revshare", "percent": "10"}},
  {"id": 200, "landing_url": "https://b.example/", "payout": {"type": "cpa", "amount": "2.50", "currency": "USD"}}
]}"#;

/// Starts of UTC days: 2026-11-23, 2026-11-24, and 2025-01-01 (far
/// enough back for a 30-day retention to drop).
const DAY_1_MS: i64 = 1_795_392_000_000;
const DAY_2_MS: i64 = 1_795_478_400_000;
const OLD_DAY_MS: i64 = 1_735_689_600_000;

/// Batch `sequence` of edge 3 on the day starting at `day_ms`: two rollup
/// rows, a sale of `amount` USD per `(campaign_id, order_id)`, and a
/// quarantine row.
fn frame_on_day(sequence: u64, day_ms: i64, sales: &[(u32, &str, &str)]) -> Vec<u8> {
    let minute_ms = day_ms + 600_000;
    let rollups = [(7, 100, "fb"), (8, 200, "")].map(|(affiliate_id, campaign_id, sub1)| {
        let key = RollupKey { minute_ms, affiliate_id, campaign_id, sub1: sub1.into() };
        (key, RollupCounts { impressions: 10, clicks: 2, sales: 1, ..RollupCounts::default() })
    });
    let conversions: Vec<ConversionRow> = sales
        .iter()
        .enumerate()
        .map(|(sale_idx, &(campaign_id, order_id, amount))| ConversionRow {
            time_ms: minute_ms + sale_idx as i64,
            kind: EventKind::Sale,
            affiliate_id: if campaign_id == 100 { 7 } else { 8 },
            campaign_id,
            sub1: if campaign_id == 100 { "fb".into() } else { String::new() },
            money: Some(
                edgetally_protocol::Money::parse(amount, edgetally_protocol::Currency::parse("USD").unwrap()).unwrap(),
            ),
            order_id: Some(order_id.into()),
            click_id: None,
            event_id: None,
            flag: None,
        })
        .collect();
    let quarantine = [QuarantineRow::new(minute_ms, "pixel", "bad_id", "bad affiliate_id", &format!("seq={sequence}"))];
    BatchFrame {
        edge_id: 3,
        epoch: 1,
        sequence,
        n_rollup_rows: 2,
        n_conversion_rows: conversions.len() as u32,
        n_quarantine_rows: 1,
        rollups_ipc: encode_ipc(&rollups_to_batch(rollups.iter().map(|(key, counts)| (key, counts)))).unwrap().into(),
        conversions_ipc: encode_ipc(&conversions_to_batch(&conversions)).unwrap().into(),
        quarantine_ipc: encode_ipc(&quarantine_to_batch(&quarantine)).unwrap().into(),
    }
    .encode()
    .unwrap()
}

/// Every answer a restart must reproduce: the three datasets over Flight,
/// and the money totals behind the rollups.
#[derive(Debug, PartialEq)]
struct Answers {
    rollups: Vec<arrow_array::RecordBatch>,
    conversions: Vec<arrow_array::RecordBatch>,
    quarantine: Vec<arrow_array::RecordBatch>,
    money: std::collections::BTreeMap<(RollupKey, edgetally_protocol::Currency), store::MoneyTotals>,
}

async fn answers(aggregator: &Aggregator) -> Answers {
    let mut flight = flight_client(aggregator).await;
    Answers {
        rollups: do_get(&mut flight, r#"{"dataset":"rollups"}"#).await,
        conversions: do_get(&mut flight, r#"{"dataset":"conversions"}"#).await,
        quarantine: do_get(&mut flight, r#"{"dataset":"quarantine"}"#).await,
        money: aggregator.store.read(|tables| tables.money.clone()),
    }
}

/// Rows of `answer`, all batches.
fn n_rows(answer: &[arrow_array::RecordBatch]) -> usize {
    answer.iter().map(arrow_array::RecordBatch::num_rows).sum()
}

async fn set_status(aggregator: &Aggregator, campaign_id: u32, order_id: &str, status: &str) {
    let mut flight = flight_client(aggregator).await;
    let body = serde_json::json!({"campaign_id": campaign_id, "order_id": order_id, "status": status}).to_string();
    let results: Vec<Bytes> = flight
        .do_action(arrow_flight::Action::new("set_conversion_status", body))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let result: serde_json::Value = serde_json::from_slice(&results[0]).unwrap();
    assert_eq!(result["status"].as_str(), Some(status), "{result}");
}

/// Rows per `(dataset, day=…)` of every Parquet file under the data
/// directory, read with the `parquet` crate's own reader (no code of ours).
fn parquet_rows(data_dir: &std::path::Path) -> std::collections::BTreeMap<(String, String), usize> {
    let mut rows = std::collections::BTreeMap::new();
    let parquet_dir = data_dir.join(partition::PARQUET_DIR_NAME);
    let Ok(datasets) = std::fs::read_dir(&parquet_dir) else { return rows };
    for dataset in datasets {
        let dataset = dataset.unwrap().path();
        for day in std::fs::read_dir(&dataset).unwrap() {
            let day = day.unwrap().path();
            for file in std::fs::read_dir(&day).unwrap() {
                let file = std::fs::File::open(file.unwrap().path()).unwrap();
                let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                    .unwrap()
                    .build()
                    .unwrap();
                let n_rows: usize = reader.map(|batch| batch.unwrap().num_rows()).sum();
                let name = |path: &std::path::Path| path.file_name().unwrap().to_str().unwrap().to_owned();
                *rows.entry((name(&dataset), name(&day))).or_default() += n_rows;
            }
        }
    }
    rows
}

#[track_caller]
fn check_parquet_rows(data_dir: &std::path::Path, expect: &[(&str, &str, usize)]) {
    let expect: std::collections::BTreeMap<(String, String), usize> =
        expect.iter().map(|&(dataset, day, n_rows)| ((dataset.to_owned(), format!("day={day}")), n_rows)).collect();
    assert_eq!(parquet_rows(data_dir), expect);
}

/// Two UTC days of batches with commissions and status changes, a
/// checkpoint, more batches and changes, then a crash with a leftover
/// partition planted: the restart (Parquet, then the log) answers exactly
/// as before, the files hold each day's rows, and the leftover is deleted
/// unread.
#[test]
fn restart_from_parquet_and_wal() {
    let data_dir = tempfile::tempdir().unwrap();
    let campaigns = data_dir.path().join("campaigns.json");
    std::fs::write(&campaigns, PARTITION_RULES).unwrap();
    let config = Config { campaigns: Some(campaigns), ..loopback_config(data_dir.path()) };
    let runtime = || tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    let crashed = runtime();
    let (before, leftover) = crashed.block_on(async {
        tokio::time::timeout(TEST_TIMEOUT, async {
            let aggregator = Aggregator::start(config.clone()).await.unwrap();
            let (endpoint, connection) = connect(&aggregator).await;
            for (sequence, day_ms, sales) in [
                (1, DAY_1_MS, &[(100, "a", "40.00"), (200, "b", "9.99")][..]),
                (2, DAY_2_MS, &[(100, "c", "12.34")][..]),
            ] {
                assert_eq!(send(&connection, &frame_on_day(sequence, day_ms, sales)).await.status, AckStatus::Apply);
            }
            set_status(&aggregator, 100, "a", "rejected").await;
            assert_eq!(aggregator.checkpointer.checkpoint().await.unwrap(), 2);
            check_parquet_rows(
                data_dir.path(),
                &[
                    ("conversions", "2026-11-23", 2),
                    ("conversions", "2026-11-24", 1),
                    ("quarantine", "2026-11-23", 1),
                    ("quarantine", "2026-11-24", 1),
                    ("rollups", "2026-11-23", 2),
                    ("rollups", "2026-11-24", 2),
                ],
            );
            // After the checkpoint: both days change again, only in the log.
            assert_eq!(
                send(&connection, &frame_on_day(3, DAY_2_MS, &[(200, "d", "1.00"), (100, "b", "5.00")])).await.status,
                AckStatus::Apply
            );
            assert_eq!(send(&connection, &frame_on_day(4, DAY_1_MS, &[])).await.status, AckStatus::Apply);
            set_status(&aggregator, 200, "b", "approved").await;
            set_status(&aggregator, 100, "c", "rejected").await;
            connection.close(0u32.into(), b"done");
            endpoint.wait_idle().await;
            let before = answers(&aggregator).await;
            assert_eq!((n_rows(&before.rollups), n_rows(&before.conversions), n_rows(&before.quarantine)), (4, 5, 4));
            // A checkpoint that wrote its files and crashed before its
            // manifest: a copy of day 1's ledger under a later generation.
            let manifest =
                snapshot::decode(&std::fs::read(data_dir.path().join(snapshot::SNAPSHOT_FILE_NAME)).unwrap()).unwrap();
            let conversions_day_1 = manifest
                .partitions
                .iter()
                .find(|partition| partition.dataset == partition::Dataset::Conversions)
                .unwrap();
            let leftover = partition::Partition { generation: 3, ..*conversions_day_1 }.path(data_dir.path());
            std::fs::copy(conversions_day_1.path(data_dir.path()), &leftover).unwrap();
            drop(aggregator);
            (before, leftover)
        })
        .await
        .expect("test finishes in time")
    });
    drop(crashed);

    runtime().block_on(async {
        tokio::time::timeout(TEST_TIMEOUT, async {
            let aggregator = Aggregator::start(config.clone()).await.unwrap();
            assert!(!leftover.exists(), "the unlisted file is deleted");
            let stats = aggregator.stats();
            // Two batches and two status changes after the checkpoint.
            assert_eq!(
                (stats.wal_records_replayed, stats.wal_records_corrupt, stats.partitions),
                (4, 0, 6),
                "{stats:?}"
            );
            let after = answers(&aggregator).await;
            assert_eq!(after.rollups, before.rollups);
            assert_eq!(after.quarantine, before.quarantine);
            assert_eq!(after.money, before.money);
            assert_eq!(after.conversions, before.conversions);
            assert_eq!(after, before);
            // The ledger as served: commissions and statuses, by order.
            assert_eq!(after.conversions.len(), 1);
            let conversions = &after.conversions[0];
            let orders = texts(conversions, "order_id");
            let statuses = texts(conversions, "status");
            let commissions =
                conversions.column_by_name("commission_minor").unwrap().as_primitive::<arrow_array::types::Int64Type>();
            let ledger: Vec<(String, String, i64)> = (0..conversions.num_rows())
                .map(|row_idx| (orders[row_idx].clone(), statuses[row_idx].clone(), commissions.value(row_idx)))
                .collect();
            assert_eq!(
                ledger,
                [
                    ("a".into(), "rejected".into(), 400),
                    ("b".into(), "approved".into(), 250),
                    ("c".into(), "rejected".into(), 123),
                    ("d".into(), "pending".into(), 250),
                    ("b".into(), "pending".into(), 50),
                ]
            );
            // Edge 3's marks came back: its old batches are skipped.
            send_all(&aggregator, 4..=4, AckStatus::Skip).await;
            // The next checkpoint rewrites both days and the files agree.
            aggregator.checkpointer.checkpoint().await.unwrap();
            check_parquet_rows(
                data_dir.path(),
                &[
                    ("conversions", "2026-11-23", 2),
                    ("conversions", "2026-11-24", 3),
                    ("quarantine", "2026-11-23", 2),
                    ("quarantine", "2026-11-24", 2),
                    ("rollups", "2026-11-23", 2),
                    ("rollups", "2026-11-24", 2),
                ],
            );
            aggregator.shutdown().await;
        })
        .await
        .expect("test finishes in time");
    });
}

/// Day 2025-01-01 is kept while retention is off; a restart with 30 days
/// drops it from answers and disk at the next checkpoint, late rows of it
/// are dropped and counted, and the cutoff survives a restart.
#[tokio::test]
async fn retention_drops_old_days() {
    tokio::time::timeout(TEST_TIMEOUT, retention_drops_old_days_inner()).await.expect("test finishes in time");
}

async fn retention_drops_old_days_inner() {
    let data_dir = tempfile::tempdir().unwrap();
    let forever = Config { retention_days: None, ..loopback_config(data_dir.path()) };
    let aggregator = Aggregator::start(forever).await.unwrap();
    let (endpoint, connection) = connect(&aggregator).await;
    for (sequence, day_ms, order_id) in [(1, OLD_DAY_MS, "old"), (2, DAY_2_MS, "new")] {
        let frame = frame_on_day(sequence, day_ms, &[(100, order_id, "10.00")]);
        assert_eq!(send(&connection, &frame).await.status, AckStatus::Apply);
    }
    connection.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    let both_days = answers(&aggregator).await;
    assert_eq!((n_rows(&both_days.rollups), n_rows(&both_days.conversions), n_rows(&both_days.quarantine)), (4, 2, 2));
    aggregator.shutdown().await;
    check_parquet_rows(
        data_dir.path(),
        &[
            ("conversions", "2025-01-01", 1),
            ("conversions", "2026-11-24", 1),
            ("quarantine", "2025-01-01", 1),
            ("quarantine", "2026-11-24", 1),
            ("rollups", "2025-01-01", 2),
            ("rollups", "2026-11-24", 2),
        ],
    );

    let thirty_days = Config { retention_days: Some(30), ..loopback_config(data_dir.path()) };
    let aggregator = Aggregator::start(thirty_days.clone()).await.unwrap();
    // Retention acts at checkpoints, not at start.
    assert_eq!(answers(&aggregator).await, both_days);
    aggregator.checkpointer.checkpoint().await.unwrap();
    let new_day = answers(&aggregator).await;
    assert_eq!((n_rows(&new_day.rollups), n_rows(&new_day.conversions), n_rows(&new_day.quarantine)), (2, 1, 1));
    assert_eq!(texts(&new_day.conversions[0], "order_id"), ["new"]);
    check_parquet_rows(
        data_dir.path(),
        &[("conversions", "2026-11-24", 1), ("quarantine", "2026-11-24", 1), ("rollups", "2026-11-24", 2)],
    );
    assert!(!data_dir.path().join("parquet/rollups/day=2025-01-01").exists());
    // A late batch of the dropped day: acknowledged, its rows dropped and
    // counted, the answers unchanged.
    send_all_frames(&aggregator, &[frame_on_day(3, OLD_DAY_MS, &[(100, "old", "10.00")])]).await;
    assert_eq!(answers(&aggregator).await, new_day);
    let stats = aggregator.stats();
    let partition_bytes: u64 = walk_files(&data_dir.path().join(partition::PARQUET_DIR_NAME))
        .iter()
        .map(|path| std::fs::metadata(path).unwrap().len())
        .sum();
    assert_eq!(
        (stats.retention_days_dropped, stats.retention_late_rows_dropped, stats.partitions, stats.partition_bytes),
        (1, 4, 3, partition_bytes)
    );
    check_samples(
        &scrape(&aggregator).await,
        &[
            ("edgetally_aggregator_retention_days_dropped_total", "1"),
            ("edgetally_aggregator_retention_late_rows_dropped_total", "4"),
            ("edgetally_aggregator_partitions", "3"),
            ("edgetally_aggregator_partition_bytes", &partition_bytes.to_string()),
        ],
    );
    aggregator.shutdown().await;

    // The cutoff is in the manifest: even with retention off again, the
    // dropped day stays closed.
    let aggregator = Aggregator::start(Config { retention_days: None, ..thirty_days }).await.unwrap();
    assert_eq!(answers(&aggregator).await, new_day);
    send_all_frames(&aggregator, &[frame_on_day(4, OLD_DAY_MS, &[(100, "old", "10.00")])]).await;
    assert_eq!(answers(&aggregator).await, new_day);
    assert_eq!(aggregator.stats().retention_late_rows_dropped, 4);
    aggregator.shutdown().await;
}

/// Sends `frames` of edge 3 on one connection, each applied.
async fn send_all_frames(aggregator: &Aggregator, frames: &[Vec<u8>]) {
    let (endpoint, connection) = connect(aggregator).await;
    for frame in frames {
        assert_eq!(send(&connection, frame).await.status, AckStatus::Apply);
    }
    connection.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
}

/// Every file under `dir`.
fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { files.extend(walk_files(&path)) } else { files.push(path) }
    }
    files
}

mod flight_sql;
