//! The Flight SQL service's bounds, driven directly: queries at once, the
//! memory pool, the deadline, and statuses of SQL that cannot run.

use std::sync::Arc;

use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::{StreamExt, TryStreamExt};
use tonic::Code;

use super::*;

fn service(memory_bytes_max: usize) -> AggregatorFlightSql {
    AggregatorFlightSql {
        store: Arc::new(Store::default()),
        runtime: runtime_env_with(memory_bytes_max).unwrap(),
        queries: Arc::new(SqlSlots::new()),
        refusals: Arc::default(),
    }
}

/// The status `sql` ends with as an admin's query, whether refused at once
/// or while streaming.
async fn code(service: &AggregatorFlightSql, sql: &str) -> Code {
    match service.answer(Role::Admin, sql).await {
        Err(error) => into_status(error).code(),
        Ok(stream) => stream.try_collect::<Vec<_>>().await.map_or_else(|status| status.code(), |_| Code::Ok),
    }
}

#[tokio::test]
async fn queries_at_once_are_bounded() {
    let service = service(SQL_MEMORY_BYTES_MAX);
    // Thirteen batches each: more than an answer queues ahead of its
    // reader, so these queries wait, holding their slots, until read.
    let long = "SELECT * FROM generate_series(1, 100000)";
    let mut held = Vec::new();
    for _ in 0..SQL_QUERIES_MAX {
        held.push(service.answer(Role::Admin, long).await.unwrap());
    }
    assert_eq!(service.queries.n_running(), 4);
    assert_eq!(code(&service, "SELECT 1").await, Code::ResourceExhausted);
    let error = service.answer(Role::Admin, "SELECT 1").await.err().unwrap();
    assert_eq!(error.to_string(), "too many sql queries at once: the limit is 4, retry later");
    // Planning alone takes a slot too.
    assert!(matches!(service.schema(Role::Admin, "SELECT 1").await, Err(FlightSqlError::Busy)));
    assert_eq!(service.queries.n_refused(), 3);
    // One answer read to the end and one dropped free their slots.
    let finished = held.pop().unwrap();
    finished.try_collect::<Vec<_>>().await.unwrap();
    drop(held.pop());
    for _ in 0..100 {
        if service.queries.n_running() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(service.queries.n_running(), 2);
    assert_eq!(code(&service, "SELECT 1").await, Code::Ok);
}

#[tokio::test]
async fn memory_pool_bounds_a_query() {
    let sql = "SELECT value, COUNT(*) FROM generate_series(1, 1000000) GROUP BY value";
    assert_eq!(code(&service(1024 * 1024), sql).await, Code::ResourceExhausted);
    assert_eq!(code(&service(SQL_MEMORY_BYTES_MAX), sql).await, Code::Ok);
}

/// On real time with a short deadline: tokio's paused clock needs its
/// `test-util` feature, which would rebuild every crate on tokio,
/// DataFusion included, for the tests alone.
#[tokio::test]
async fn answers_end_at_the_deadline_read_or_not() {
    let queries = Arc::new(Semaphore::new(1));
    let permit = queries.clone().try_acquire_owned().unwrap();
    let schema = Arc::new(arrow_schema::Schema::empty());
    let never: SendableRecordBatchStream = Box::pin(RecordBatchStreamAdapter::new(schema, futures::stream::pending()));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(100);
    let mut batches = until(never, deadline, permit);
    // Nobody reads, and still the slot is free once the deadline passed.
    tokio::time::sleep_until(deadline + std::time::Duration::from_millis(50)).await;
    assert_eq!(queries.available_permits(), 1);
    let Some(Err(FlightError::Tonic(status))) = batches.next().await else { panic!("the deadline ends the answer") };
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(status.message(), "sql query ran longer than the limit of 60 s");
    assert!(batches.next().await.is_none());
}

#[tokio::test]
async fn sql_that_cannot_run_is_invalid_argument() {
    let service = service(SQL_MEMORY_BYTES_MAX);
    let nested = format!("SELECT {}1{}", "(".repeat(10_000), ")".repeat(10_000));
    let cases = [
        nested.as_str(),
        "SELECT 1 / 0",
        "SELECT CAST('x' AS INT)",
        "SELECT 1; SELECT 2",
        "",
        "EXPLAIN DROP TABLE rollups",
    ];
    for sql in cases {
        assert_eq!(code(&service, sql).await, Code::InvalidArgument, "{sql}");
    }
    // Nothing leaked a slot.
    assert_eq!(service.queries.n_running(), 0);
}
