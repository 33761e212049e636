//! Flight SQL against the whole aggregator in-process: batches shipped over
//! QUIC, then read back with arrow-flight's Flight SQL client, as an admin,
//! as an affiliate (its own rows, whatever the SQL), and refused.

use arrow_flight::FlightInfo;
use arrow_flight::error::FlightError;
use arrow_flight::sql::client::FlightSqlServiceClient;
use edgetally_protocol::money::{Currency, Money};
use tonic::Code;

use super::*;

/// Campaign 1 pays CPA 12.50 USD per sale; campaign 2 pays 7.5% of the
/// sale.
const RULES: &str = r#"{"campaigns": [
  {"id": 1, "landing_url": "https://shop.example/1", "payout": {"type": "cpa", "amount": "12.50", "currency": "USD"}},
  {"id": 2, "landing_url": "https://shop.example/2", "payout": {"type": "revshare", "percent": "7.5"}}
]}"#;

/// 2026-11-23T10:00:01Z and a day later.
const DAY_0_MS: i64 = 1_795_514_401_000 - 86_400_000;
const DAY_1_MS: i64 = 1_795_514_401_000;

/// `frame()` as batch `sequence`, its conversions replaced by sales
/// `(time_ms, affiliate_id, campaign_id, order_id, amount, currency)`.
fn frame_with_sales(sequence: u64, sales: &[(i64, u32, u32, &str, &str, &str)]) -> Vec<u8> {
    let rows: Vec<ConversionRow> = sales
        .iter()
        .map(|&(time_ms, affiliate_id, campaign_id, order_id, amount, currency)| ConversionRow {
            time_ms,
            kind: EventKind::Sale,
            affiliate_id,
            campaign_id,
            sub1: String::new(),
            money: Some(Money::parse(amount, Currency::parse(currency).unwrap()).unwrap()),
            order_id: Some(order_id.to_owned()),
            click_id: None,
            event_id: None,
            flag: None,
        })
        .collect();
    frame_of_conversions(sequence, &rows)
}

async fn sql_client(aggregator: &Aggregator, token: Option<&str>) -> FlightSqlServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", aggregator.flight_sql_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = FlightSqlServiceClient::new(channel);
    if let Some(token) = token {
        client.set_header("authorization", format!("Bearer {token}"));
    }
    client
}

/// The answer to `sql`, every value as arrow prints it, row by row; or the
/// status it was refused with.
async fn query(
    client: &mut FlightSqlServiceClient<tonic::transport::Channel>,
    sql: &str,
) -> Result<Vec<Vec<String>>, tonic::Status> {
    let info = client.execute(sql.to_owned(), None).await.map_err(status)?;
    let ticket = info.endpoint[0].ticket.clone().expect("an endpoint has a ticket");
    let batches: Vec<arrow_array::RecordBatch> =
        client.do_get(ticket).await.map_err(status)?.try_collect().await.map_err(status)?;
    Ok(rows(&batches))
}

/// The rows of the flight `info` describes.
async fn fetch(client: &mut FlightSqlServiceClient<tonic::transport::Channel>, info: FlightInfo) -> Vec<Vec<String>> {
    let ticket = info.endpoint[0].ticket.clone().expect("an endpoint has a ticket");
    let batches: Vec<arrow_array::RecordBatch> = client.do_get(ticket).await.unwrap().try_collect().await.unwrap();
    rows(&batches)
}

/// The tables a client is shown: catalog, schema, name and type.
async fn tables(client: &mut FlightSqlServiceClient<tonic::transport::Channel>) -> Vec<Vec<String>> {
    let command = arrow_flight::sql::CommandGetTables { include_schema: true, ..Default::default() };
    let info = client.get_tables(command).await.unwrap();
    let mut rows = fetch(client, info).await;
    for row in &mut rows {
        // The fifth column is the table's schema as Arrow IPC.
        assert!(row.len() == 5 && !row[4].is_empty(), "{row:?}");
        row.truncate(4);
    }
    rows
}

fn rows(batches: &[arrow_array::RecordBatch]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for batch in batches {
        for row_idx in 0..batch.num_rows() {
            let row = batch
                .columns()
                .iter()
                .map(|column| arrow_cast::display::array_value_to_string(column, row_idx).unwrap())
                .collect();
            rows.push(row);
        }
    }
    rows
}

fn status(error: FlightError) -> tonic::Status {
    match error {
        FlightError::Tonic(status) => *status,
        other => panic!("not a status: {other:?}"),
    }
}

/// `rows` as owned strings, for comparing with [`query`]'s answer.
fn expect(rows: &[&[&str]]) -> Vec<Vec<String>> {
    rows.iter().map(|row| row.iter().map(|value| (*value).to_owned()).collect()).collect()
}

#[track_caller]
fn check_refused(answer: Result<Vec<Vec<String>>, tonic::Status>, code: Code, message: &str) {
    let status = answer.expect_err("refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(message), "{status:?} should say {message:?}");
}

#[tokio::test]
async fn sql_sums_what_was_shipped() {
    tokio::time::timeout(TEST_TIMEOUT, sql_sums_what_was_shipped_inner()).await.expect("test finishes in time");
}

async fn sql_sums_what_was_shipped_inner() {
    let data_dir = tempfile::tempdir().unwrap();
    let campaigns = data_dir.path().join("campaigns.json");
    std::fs::write(&campaigns, RULES).unwrap();
    let config = Config { campaigns: Some(campaigns), ..loopback_config(data_dir.path()) };
    let aggregator = Aggregator::start(config).await.unwrap();
    assert_ne!(aggregator.flight_sql_addr().port(), 0);
    let (endpoint, connection) = connect(&aggregator).await;
    let sales = [
        (DAY_0_MS, 7, 1, "s-1", "100.00", "USD"),
        (DAY_1_MS, 7, 1, "s-2", "50.00", "USD"),
        (DAY_1_MS + 1_000, 7, 1, "s-3", "5.00", "USD"),
        (DAY_0_MS, 9, 2, "s-4", "200.00", "EUR"),
        (DAY_0_MS + 1_000, 9, 2, "s-5", "40.00", "EUR"),
        (DAY_1_MS, 9, 2, "s-6", "1000", "JPY"),
    ];
    assert_eq!(send(&connection, &frame_with_sales(1, &sales[..3])).await.status, AckStatus::Apply);
    assert_eq!(send(&connection, &frame_with_sales(2, &sales[3..])).await.status, AckStatus::Apply);

    // No tokens configured: every caller is an admin.
    let mut client = sql_client(&aggregator, None).await;
    let impressions = "SELECT affiliate_id, SUM(impressions) AS impressions, SUM(clicks) AS clicks \
                       FROM rollups GROUP BY affiliate_id ORDER BY affiliate_id";
    // Two batches of `frame()`'s rollups: 40 + 2 impressions of affiliate
    // 7 and 9 of affiliate 8 each. Affiliate 9 has money (its sales) but
    // no counters in those rollups.
    let by_affiliate = expect(&[&["7", "84", "8"], &["8", "18", "0"], &["9", "0", "0"]]);
    assert_eq!(query(&mut client, impressions).await.unwrap(), by_affiliate);
    let commissions = "SELECT affiliate_id, date_trunc('day', time) AS day, commission_currency, \
                       SUM(commission_minor) AS commission_minor, COUNT(*) AS n_sales \
                       FROM conversions GROUP BY 1, 2, 3 ORDER BY 1, 2, 3";
    // CPA: 1250 US cents per sale; revshare: 7.5% of 20000 and 4000 euro
    // cents, and of 1000 yen (no minor unit).
    assert_eq!(
        query(&mut client, commissions).await.unwrap(),
        expect(&[
            &["7", "2026-11-23T00:00:00Z", "USD", "1250", "1"],
            &["7", "2026-11-24T00:00:00Z", "USD", "2500", "2"],
            &["9", "2026-11-23T00:00:00Z", "EUR", "1800", "2"],
            &["9", "2026-11-24T00:00:00Z", "JPY", "75", "1"],
        ])
    );
    assert_eq!(query(&mut client, "SELECT COUNT(*) FROM quarantine").await.unwrap(), expect(&[&["2"]]));

    // A prepared statement answers the same.
    let mut prepared = client.prepare(impressions.to_owned(), None).await.unwrap();
    assert_eq!(prepared.dataset_schema().unwrap().field(1).name(), "impressions");
    let info = prepared.execute().await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let batches: Vec<_> = client.do_get(ticket).await.unwrap().try_collect().await.unwrap();
    assert_eq!(rows(&batches), by_affiliate);
    prepared.close().await.unwrap();

    // Metadata for tools that browse: one catalog, one schema, the three
    // tables (sorted by name), and a server that says it only reads.
    let info = client.get_catalogs().await.unwrap();
    assert_eq!(fetch(&mut client, info).await, expect(&[&["datafusion"]]));
    let info = client.get_db_schemas(Default::default()).await.unwrap();
    assert_eq!(fetch(&mut client, info).await, expect(&[&["datafusion", "public"]]));
    assert_eq!(
        tables(&mut client).await,
        expect(&[
            &["datafusion", "public", "alerts", "TABLE"],
            &["datafusion", "public", "conversions", "TABLE"],
            &["datafusion", "public", "quarantine", "TABLE"],
            &["datafusion", "public", "rollups", "TABLE"],
        ])
    );
    let info = client.get_table_types().await.unwrap();
    assert_eq!(fetch(&mut client, info).await, expect(&[&["TABLE"]]));
    let info = client.get_sql_info(vec![arrow_flight::sql::SqlInfo::FlightSqlServerReadOnly]).await.unwrap();
    assert_eq!(fetch(&mut client, info).await, expect(&[&["3", "{bool_value=true}"]]));

    connection.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    aggregator.shutdown().await;
}

#[tokio::test]
async fn sql_is_read_only_and_errors_are_statuses() {
    tokio::time::timeout(TEST_TIMEOUT, sql_is_read_only_and_errors_are_statuses_inner())
        .await
        .expect("test finishes in time");
}

async fn sql_is_read_only_and_errors_are_statuses_inner() {
    let data_dir = tempfile::tempdir().unwrap();
    let aggregator = Aggregator::start(loopback_config(data_dir.path())).await.unwrap();
    let mut client = sql_client(&aggregator, None).await;
    let cases = [
        ("DROP TABLE rollups", "sql is read-only here"),
        ("INSERT INTO rollups SELECT * FROM rollups", "sql is read-only here"),
        ("DELETE FROM conversions", "sql is read-only here"),
        ("CREATE TABLE copy AS SELECT * FROM rollups", "sql is read-only here"),
        ("CREATE VIEW v AS SELECT 1", "sql is read-only here"),
        ("COPY rollups TO 'rollups.csv'", "sql is read-only here"),
        ("SET datafusion.execution.batch_size = 1", "sql is read-only here"),
        ("SELEC 1", "SQL error"),
        ("SELECT nope FROM rollups", "nope"),
        ("SELECT * FROM nowhere", "nowhere"),
        ("SELECT date_trunc('fortnight', minute) FROM rollups", "fortnight"),
    ];
    for (sql, message) in cases {
        check_refused(query(&mut client, sql).await, Code::InvalidArgument, message);
    }
    // Nothing was written anywhere: the tables are as they were.
    assert_eq!(query(&mut client, "SELECT COUNT(*) FROM rollups").await.unwrap(), expect(&[&["0"]]));
    assert!(!std::path::Path::new("rollups.csv").exists());
    aggregator.shutdown().await;
}

#[tokio::test]
async fn sql_scopes_rows_by_role() {
    tokio::time::timeout(TEST_TIMEOUT, sql_scopes_rows_by_role_inner()).await.expect("test finishes in time");
}

async fn sql_scopes_rows_by_role_inner() {
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
    let leads = [(7, "o-1"), (8, "o-2"), (7, "o-3"), (9, "o-4")];
    assert_eq!(send(&connection, &frame_with_conversions(1, &leads)).await.status, AckStatus::Apply);

    let mut admin = sql_client(&aggregator, Some(FLIGHT_ADMIN_TOKEN)).await;
    assert_eq!(
        query(&mut admin, "SELECT affiliate_id, COUNT(*) FROM conversions GROUP BY 1 ORDER BY 1").await.unwrap(),
        expect(&[&["7", "2"], &["8", "1"], &["9", "1"]])
    );
    assert_eq!(query(&mut admin, "SELECT COUNT(*) FROM quarantine").await.unwrap(), expect(&[&["1"]]));

    // The affiliate's tables hold its rows only, whatever the SQL asks.
    let mut affiliate = sql_client(&aggregator, Some(FLIGHT_AFFILIATE_7_TOKEN)).await;
    let all = query(&mut affiliate, "SELECT affiliate_id, order_id FROM conversions ORDER BY order_id").await;
    assert_eq!(all.unwrap(), expect(&[&["7", "o-1"], &["7", "o-3"]]));
    let star = query(&mut affiliate, "SELECT * FROM conversions").await.unwrap();
    assert_eq!(star.len(), 2);
    assert_eq!(
        query(&mut affiliate, "SELECT affiliate_id, SUM(impressions) FROM rollups GROUP BY 1").await.unwrap(),
        expect(&[&["7", "42"]])
    );
    let other = "SELECT COUNT(*) FROM conversions WHERE affiliate_id = 8 OR affiliate_id <> 7";
    assert_eq!(query(&mut affiliate, other).await.unwrap(), expect(&[&["0"]]));
    let sneaky =
        "SELECT COUNT(*) FROM datafusion.public.rollups r JOIN conversions c ON r.affiliate_id <> c.affiliate_id";
    assert_eq!(query(&mut affiliate, sneaky).await.unwrap(), expect(&[&["0"]]));
    let quarantine = "permission denied: affiliate:7 may not read quarantine: its rows have no trusted affiliate";
    check_refused(query(&mut affiliate, "SELECT * FROM quarantine").await, Code::PermissionDenied, quarantine);
    check_refused(
        query(&mut affiliate, "SELECT 1 FROM conversions WHERE order_id IN (SELECT reason FROM quarantine)").await,
        Code::PermissionDenied,
        quarantine,
    );
    check_refused(query(&mut affiliate, "DROP TABLE conversions").await, Code::InvalidArgument, "read-only");
    assert_eq!(
        tables(&mut affiliate).await,
        expect(&[
            &["datafusion", "public", "alerts", "TABLE"],
            &["datafusion", "public", "conversions", "TABLE"],
            &["datafusion", "public", "rollups", "TABLE"],
        ])
    );

    // Edges may not use SQL; callers without a valid token learn nothing.
    let mut edge = sql_client(&aggregator, Some(FLIGHT_EDGE_TOKEN)).await;
    check_refused(
        query(&mut edge, "SELECT 1").await,
        Code::PermissionDenied,
        "permission denied: edge may not call flight_sql",
    );
    for token in [None, Some("wrong-token-0123456789abcdefghijklmnop")] {
        let mut client = sql_client(&aggregator, token).await;
        check_refused(query(&mut client, "SELECT 1").await, Code::Unauthenticated, "unauthenticated");
        // Even calls the server does not implement.
        let error = client.get_catalogs().await.map_err(status).unwrap_err();
        assert_eq!(error.code(), Code::Unauthenticated, "{error:?}");
        // A ticket from someone else is no way in either.
        let ticket = admin.execute("SELECT 1".to_owned(), None).await.unwrap().endpoint[0].ticket.clone().unwrap();
        let error = client.do_get(ticket).await.map_err(status).unwrap_err();
        assert_eq!(error.code(), Code::Unauthenticated, "{error:?}");
    }

    // 3 calls by each of 2 callers without a valid token; 1 by the edge
    // and 2 quarantine reads by the affiliate.
    let stats = aggregator.stats();
    assert_eq!((stats.flight_refused_unauthenticated, stats.flight_refused_permission_denied), (6, 3));
    assert_eq!((stats.flight_sql_queries, stats.flight_sql_queries_refused), (0, 0));
    check_samples(
        &scrape(&aggregator).await,
        &[
            ("edgetally_aggregator_flight_refused_total{reason=\"unauthenticated\"}", "6"),
            ("edgetally_aggregator_flight_refused_total{reason=\"permission_denied\"}", "3"),
            ("edgetally_aggregator_flight_sql_queries", "0"),
            ("edgetally_aggregator_flight_sql_queries_refused_total", "0"),
        ],
    );
    connection.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    aggregator.shutdown().await;
}
