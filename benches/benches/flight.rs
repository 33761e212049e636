//! Reading a large ledger back from a running aggregator on loopback: a
//! `DoGet` of the whole `conversions` dataset over Arrow Flight, and a
//! group-by over it through Flight SQL (commission per affiliate per day
//! per currency, as finance asks for it).
//!
//! The ledger is `synthetic_ledger` (10 million conversions, or
//! `EDGETALLY_BENCH_ROWS`), sealed in Parquet by `seed_data_dir` and loaded
//! by the aggregator at start as after a restart. Throughput is in the
//! bytes of Arrow IPC on the wire; rows per second are printed alongside.
//! `benches/doget.sh` compares the same read with pyarrow reading the
//! partition file directly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::{FlightData, Ticket};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use edgetally_aggregator::{Aggregator, Config};
use edgetally_benches::{ledger_rules, synthetic_ledger};
use futures::{StreamExt, TryStreamExt};
use tonic::transport::Channel;

const ROWS_DEFAULT: usize = 10_000_000;

const GROUP_BY: &str = "SELECT affiliate_id, date_trunc('day', time) AS day, commission_currency, \
     SUM(commission_minor) AS commission_minor, SUM(parent_commission_minor) AS parent_commission_minor \
     FROM conversions WHERE status <> 'rejected' GROUP BY 1, 2, 3";

fn config(data_dir: std::path::PathBuf) -> Config {
    let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
    Config {
        data_dir,
        quic_listen: loopback,
        flight_listen: loopback,
        flight_sql_listen: loopback,
        http_listen: loopback,
        tls_cert: None,
        tls_key: None,
        tls_names: Vec::new(),
        wal_fsync: true,
        snapshot_wal_bytes: edgetally_aggregator::SNAPSHOT_WAL_BYTES_DEFAULT,
        retention_days: None,
        edge_tokens: None,
        campaigns: None,
        flight_auth: None,
        flight_tls: None,
        dashboard: edgetally_aggregator::DashboardConfig {
            report_tz: edgetally_aggregator::REPORT_TZ_DEFAULT.into(),
            exchange_rates: None,
        },
        edge_silent: None,
    }
}

/// Reads the whole conversions dataset: (rows, bytes of Arrow IPC).
async fn do_get(channel: Channel) -> (u64, u64) {
    let ticket = Ticket::new(r#"{"dataset": "conversions"}"#);
    let mut client = FlightServiceClient::new(channel).max_decoding_message_size(usize::MAX);
    let n_bytes = Arc::new(AtomicU64::new(0));
    let counted = n_bytes.clone();
    let data = client.do_get(ticket).await.unwrap().into_inner().map_err(FlightError::from).inspect_ok(
        move |data: &FlightData| {
            counted.fetch_add((data.data_header.len() + data.data_body.len()) as u64, Ordering::Relaxed);
        },
    );
    let batches = FlightRecordBatchStream::new_from_flight_data(data);
    let n_rows = batches.try_fold(0, |n_rows, batch| async move { Ok(n_rows + batch.num_rows() as u64) }).await;
    (n_rows.unwrap(), n_bytes.load(Ordering::Relaxed))
}

/// Runs [`GROUP_BY`]: the rows of its answer.
async fn group_by(channel: Channel) -> usize {
    let mut client = FlightSqlServiceClient::new(channel);
    let info = client.execute(GROUP_BY.to_owned(), None).await.unwrap();
    let mut n_rows = 0;
    for endpoint in info.endpoint {
        let mut batches = client.do_get(endpoint.ticket.unwrap()).await.unwrap();
        while let Some(batch) = batches.next().await {
            n_rows += batch.unwrap().num_rows();
        }
    }
    n_rows
}

fn flight(criterion: &mut Criterion) {
    let n_rows = std::env::var("EDGETALLY_BENCH_ROWS").map_or(ROWS_DEFAULT, |rows| rows.parse().unwrap());
    let day_ms = 86_400_000;
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let data_dir = dir.path().join("aggregator");
    let ledger = synthetic_ledger(n_rows, (now_ms / day_ms - 1) * day_ms);
    edgetally_aggregator::seed_data_dir(&data_dir, ledger_rules().into(), 1, ledger).unwrap();

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let aggregator = runtime.block_on(Aggregator::start(config(data_dir))).unwrap();
    let connect =
        |addr: SocketAddr| runtime.block_on(Channel::from_shared(format!("http://{addr}")).unwrap().connect()).unwrap();
    let (flight, flight_sql) = (connect(aggregator.flight_addr()), connect(aggregator.flight_sql_addr()));

    let started = Instant::now();
    let (n_read, n_bytes) = runtime.block_on(do_get(flight.clone()));
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(n_read, n_rows as u64, "the DoGet answers every conversion");
    eprintln!(
        "flight/do_get_conversions: {n_read} rows, {:.1} MB of Arrow IPC; first read {:.2} s, {:.0} rows/s",
        n_bytes as f64 / 1e6,
        elapsed,
        n_read as f64 / elapsed
    );

    let mut group = criterion.benchmark_group("flight");
    group.sample_size(10).measurement_time(Duration::from_secs(30));
    group.throughput(Throughput::Bytes(n_bytes));
    group.bench_function("do_get_conversions", |bench| bench.iter(|| runtime.block_on(do_get(flight.clone()))));
    group.throughput(Throughput::Elements(n_rows as u64));
    group.bench_function("sql_commission_by_affiliate_day", |bench| {
        bench.iter(|| runtime.block_on(group_by(flight_sql.clone())))
    });
    group.finish();
    runtime.block_on(aggregator.shutdown());
}

criterion_group!(benches, flight);
criterion_main!(benches);
