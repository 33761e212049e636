//! The Flight SQL server: read-only SQL (DataFusion) over `rollups`,
//! `conversions` and `quarantine`, on a port of its own.
//!
//! Every request first passes [`Gate`], a tonic interceptor in front of
//! the whole service: it resolves the caller's [`Role`] from
//! `authorization: Bearer <token>` with the same [`FlightAuth`] as the
//! Flight port (or makes everyone an admin without one), refuses roles that
//! may not use SQL (`edge`), counts refusals in the shared [`Refusals`],
//! and hands the role to the handlers as a request extension. So no call,
//! implemented or not, answers anything to a caller without a role.
//!
//! Each query gets a session of its own whose only schema is
//! [`RoleTables`] for the caller's role: a table is `Query::whole(dataset)`
//! narrowed by [`scope`], the same function that narrows Flight tickets.
//! An affiliate's `rollups` and `conversions` hold its own rows only,
//! whatever the SQL says (the filter is applied before DataFusion sees a
//! row), and its `quarantine` is refused with `PERMISSION_DENIED`. Tables
//! are read from the store when a plan scans them ([`DatasetTable`]), so
//! planning (`GetFlightInfo`, prepared statements) copies nothing.
//!
//! Plans pass [`SQLOptions`] with DDL, DML and statements (`SET`) off before
//! they run: the SQL port cannot change anything. A statement's ticket and a
//! prepared statement's handle are the SQL text itself, planned again for
//! whoever redeems them, so the server keeps no per-statement state.
//! Prepared statements take no parameters. The metadata calls browsing
//! tools make (`GetCatalogs`, `GetDbSchemas`, `GetTables`, `GetTableTypes`,
//! `GetSqlInfo`) are answered from constants and the role's datasets; the
//! rest of Flight SQL (updates, ingest, transactions, Substrait, cancel,
//! keys, type info) is `UNIMPLEMENTED`.
//!
//! Bounds: [`SQL_QUERIES_MAX`] queries plan or run at once (more are
//! refused with `RESOURCE_EXHAUSTED`, not queued), operators that buffer
//! (aggregation, sort, join) share [`SQL_MEMORY_BYTES_MAX`] and never spill
//! to disk, a query's answer ends with `DEADLINE_EXCEEDED` after
//! [`SQL_QUERY_TIME_MAX`] (and frees its slot then, read or not), and the
//! SQL text is at most
//! [`REQUEST_BYTES_MAX`], like every Flight request.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::metadata::{GetCatalogsBuilder, SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::FlightSqlService;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
    CommandGetCatalogs, CommandGetDbSchemas, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables,
    CommandPreparedStatementQuery, CommandStatementQuery, ProstMessageExt, SqlInfo, SqlSupportedTransaction,
    TicketStatementQuery,
};
use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, IpcMessage, SchemaAsIpc, Ticket};
use arrow_ipc::writer::IpcWriteOptions;
use arrow_schema::{ArrowError, SchemaRef};
use bytes::Bytes;
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList, SchemaProvider, Session,
    TableProvider,
};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};
use tracing::debug;

use crate::auth::{Call, Denied, FlightTokens, Role, Unauthenticated};
use crate::flight_service::{
    AUTHORIZATION, FLIGHT_DATA_BYTES_MAX, Port, REQUEST_BYTES_MAX, Refusals, scope, status_message,
};
use crate::query::{Dataset, Query};
use crate::store::Store;

/// SQL queries planned or running at once, over all connections. Each one
/// holds a copy of the tables it scans (up to the whole store) while it
/// runs, so this bounds the copies to four stores' worth; a fifth query is
/// refused at once rather than queued, and the client retries.
const SQL_QUERIES_MAX: usize = 4;

/// Memory that buffering operators (aggregation, sort, join) of all
/// running queries may reserve together. A group-by over a day of rollups
/// by minute, affiliate and campaign needs a few MiB; 256 MiB leaves room
/// for wide ad-hoc queries while keeping a runaway one from taking the
/// host. Past it a query fails with `RESOURCE_EXHAUSTED`; nothing spills.
const SQL_MEMORY_BYTES_MAX: usize = 256 * 1024 * 1024;

/// How long one query may run, from its plan to its last batch. Queries
/// over the in-memory store take milliseconds; a minute only stops
/// mistakes such as `generate_series(1, 1e12)` from holding a slot of
/// [`SQL_QUERIES_MAX`] forever.
const SQL_QUERY_TIME_MAX: Duration = Duration::from_secs(60);

/// Batches of one answer computed ahead of its reader. Two keep the query
/// busy while the previous batch is encoded and sent; each is at most
/// DataFusion's batch size (8,192 rows).
const ANSWER_QUEUE_BATCHES_MAX: usize = 2;

/// The only table type: every table is a dataset.
const TABLE_TYPE: &str = "TABLE";

/// What `GetSqlInfo` answers: who we are, and that SQL here only reads,
/// without Substrait, transactions or cancellation.
static SQL_INFO: LazyLock<SqlInfoData> = LazyLock::new(|| {
    let mut builder = SqlInfoDataBuilder::new();
    builder.append(SqlInfo::FlightSqlServerName, "EdgeTally aggregator");
    builder.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    builder.append(SqlInfo::FlightSqlServerArrowVersion, "59");
    builder.append(SqlInfo::FlightSqlServerReadOnly, true);
    builder.append(SqlInfo::FlightSqlServerSql, true);
    builder.append(SqlInfo::FlightSqlServerSubstrait, false);
    builder.append(SqlInfo::FlightSqlServerTransaction, SqlSupportedTransaction::None as i32);
    builder.append(SqlInfo::FlightSqlServerCancel, false);
    builder.append(SqlInfo::FlightSqlServerStatementTimeout, SQL_QUERY_TIME_MAX.as_millis() as i32);
    // Every value above is a type SqlInfoData encodes.
    builder.build().expect("sql info builds")
});

/// The catalog and schema every table is in; DataFusion's defaults, so
/// `rollups`, `public.rollups` and `datafusion.public.rollups` all work.
const CATALOG_NAME: &str = "datafusion";
const SCHEMA_NAME: &str = "public";

#[derive(Debug, thiserror::Error)]
pub(crate) enum FlightSqlError {
    #[error("unauthenticated: {0}")]
    Unauthenticated(#[from] Unauthenticated),
    #[error("permission denied: {0}")]
    PermissionDenied(#[from] Denied),
    #[error("sql is read-only here: {0}")]
    ReadOnly(DataFusionError),
    #[error("{0}")]
    Sql(DataFusionError),
    #[error("too many sql queries at once: the limit is {SQL_QUERIES_MAX}, retry later")]
    Busy,
    #[error("sql query ran longer than the limit of {} s", SQL_QUERY_TIME_MAX.as_secs())]
    TooSlow,
    #[error("statement handle is not utf-8 sql text")]
    Handle,
    #[error("build answer: {0}")]
    Arrow(#[from] ArrowError),
    #[error("build metadata answer: {0}")]
    Metadata(FlightError),
    #[error("no role on the request: the auth interceptor did not run")]
    NoRole,
}

/// The tonic interceptor in front of every Flight SQL call: resolves the
/// caller's role, refuses callers without one or whose role may not use
/// SQL, and leaves the role in the request's extensions.
#[derive(Clone)]
struct Gate {
    auth: Option<Arc<FlightTokens>>,
    refusals: Arc<Refusals>,
}

/// The Flight SQL service. Stateless per statement: handles are SQL text.
struct AggregatorFlightSql {
    store: Arc<Store>,
    /// Shared by every session: its memory pool is what
    /// [`SQL_MEMORY_BYTES_MAX`] bounds.
    runtime: Arc<RuntimeEnv>,
    queries: Arc<SqlSlots>,
    refusals: Arc<Refusals>,
}

/// The [`SQL_QUERIES_MAX`] slots queries plan and run in, and how often a
/// query found none; read by the metrics.
#[derive(Debug)]
pub(crate) struct SqlSlots {
    semaphore: Arc<Semaphore>,
    n_refused: AtomicU64,
}

/// The tables one role sees: the datasets [`scope`] lets it read, each
/// narrowed to its rows.
struct RoleTables {
    role: Role,
    store: Arc<Store>,
}

/// One dataset as a table, already narrowed to a role: `query` is
/// `Query::whole(dataset)` after [`scope`].
struct DatasetTable {
    query: Query,
    store: Arc<Store>,
}

/// A plan ready to run, with the slot of [`SQL_QUERIES_MAX`] it holds.
struct Planned {
    context: SessionContext,
    plan: LogicalPlan,
    permit: OwnedSemaphorePermit,
}

/// Maps an error to its gRPC status, truncating the message.
fn into_status(error: FlightSqlError) -> Status {
    let message = status_message(&error);
    match error {
        FlightSqlError::Unauthenticated(_) => Status::unauthenticated(message),
        FlightSqlError::PermissionDenied(_) => Status::permission_denied(message),
        FlightSqlError::ReadOnly(_) | FlightSqlError::Handle => Status::invalid_argument(message),
        FlightSqlError::Sql(error) => sql_status(&error, message),
        FlightSqlError::Busy => Status::resource_exhausted(message),
        FlightSqlError::TooSlow => Status::deadline_exceeded(message),
        FlightSqlError::Arrow(_) | FlightSqlError::Metadata(_) | FlightSqlError::NoRole => Status::internal(message),
    }
}

/// The status of a DataFusion error, by its innermost DataFusion cause.
/// DataFusion's error type has variants behind features we do not enable,
/// hence the catch-all: what is not named here is the server's fault.
fn sql_status(error: &DataFusionError, message: String) -> Status {
    match error.find_root() {
        // The query's own text: syntax, unknown tables or columns, types,
        // features DataFusion does not have, and what its expressions do
        // with the data at run time (bad arguments, overflow, casts).
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_)
        | DataFusionError::Configuration(_)
        | DataFusionError::Execution(_) => Status::invalid_argument(message),
        DataFusionError::ArrowError(arrow, _) => match arrow.as_ref() {
            ArrowError::DivideByZero
            | ArrowError::CastError(_)
            | ArrowError::ParseError(_)
            | ArrowError::ComputeError(_)
            | ArrowError::ArithmeticOverflow(_)
            | ArrowError::InvalidArgumentError(_) => Status::invalid_argument(message),
            _ => Status::internal(message),
        },
        DataFusionError::ResourcesExhausted(_) => Status::resource_exhausted(message),
        _ => Status::internal(message),
    }
}

/// What SQL may do here: query, nothing else. Checked on every plan
/// before it runs.
fn read_only() -> SQLOptions {
    SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false)
}

/// Serves Flight SQL on `port` until `shutdown` completes, with `runtime`
/// from [`runtime_env`] and `queries` counted in `SqlSlots`. `auth: None`
/// lets every caller in as an admin.
pub(crate) async fn serve(
    port: Port,
    store: Arc<Store>,
    runtime: Arc<RuntimeEnv>,
    queries: Arc<SqlSlots>,
    auth: Option<Arc<FlightTokens>>,
    refusals: Arc<Refusals>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let service = AggregatorFlightSql { store, runtime, queries, refusals: refusals.clone() };
    let service = FlightServiceServer::new(service).max_decoding_message_size(REQUEST_BYTES_MAX);
    let (mut server, incoming) = port.server()?;
    server
        .add_service(InterceptedService::new(service, Gate { auth, refusals }))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// The runtime every session shares: a memory pool of
/// [`SQL_MEMORY_BYTES_MAX`], and no disk (nothing spills, no temp files).
pub(crate) fn runtime_env() -> Result<Arc<RuntimeEnv>, DataFusionError> {
    runtime_env_with(SQL_MEMORY_BYTES_MAX)
}

fn runtime_env_with(memory_bytes_max: usize) -> Result<Arc<RuntimeEnv>, DataFusionError> {
    RuntimeEnvBuilder::new()
        .with_memory_limit(memory_bytes_max, 1.0)
        .with_disk_manager_builder(DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled))
        .build_arc()
}

// === impl SqlSlots ===

impl SqlSlots {
    pub(crate) fn new() -> SqlSlots {
        SqlSlots { semaphore: Arc::new(Semaphore::new(SQL_QUERIES_MAX)), n_refused: AtomicU64::new(0) }
    }

    /// Queries planning or running now.
    pub(crate) fn n_running(&self) -> u64 {
        (SQL_QUERIES_MAX - self.semaphore.available_permits()) as u64
    }

    /// Queries refused since start because every slot was taken.
    pub(crate) fn n_refused(&self) -> u64 {
        self.n_refused.load(Ordering::Relaxed)
    }
}

// === impl Gate ===

impl Gate {
    fn authorize(&self, request: &Request<()>) -> Result<Role, FlightSqlError> {
        let role = match &self.auth {
            None => Role::Admin,
            Some(auth) => {
                let authorization = request.metadata().get(AUTHORIZATION).map(|value| value.as_bytes());
                auth.current().authenticate(authorization)?
            }
        };
        role.admit(Call::FlightSql)?;
        Ok(role)
    }
}

impl tonic::service::Interceptor for Gate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        match self.authorize(&request) {
            Ok(role) => {
                request.extensions_mut().insert(role);
                Ok(request)
            }
            Err(error) => Err(refuse(&self.refusals, error)),
        }
    }
}

/// The status for `error`, counting refusals.
fn refuse(refusals: &Refusals, error: FlightSqlError) -> Status {
    match &error {
        FlightSqlError::Unauthenticated(_) => refusals.count_unauthenticated(),
        FlightSqlError::PermissionDenied(_) => refusals.count_permission_denied(),
        _ => return into_status(error),
    }
    debug!(%error, call = Call::FlightSql.as_str(), "Flight SQL call refused.");
    into_status(error)
}

/// The role [`Gate`] found for the request.
fn role_of<T>(request: &Request<T>) -> Result<Role, FlightSqlError> {
    request.extensions().get::<Role>().copied().ok_or(FlightSqlError::NoRole)
}

// === impl FlightSqlError ===

impl From<DataFusionError> for FlightSqlError {
    /// A refusal from [`RoleTables`] stays a refusal, wherever DataFusion
    /// wrapped it.
    fn from(error: DataFusionError) -> FlightSqlError {
        if let DataFusionError::External(inner) = error.find_root()
            && let Some(denied) = inner.downcast_ref::<Denied>()
        {
            return FlightSqlError::PermissionDenied(denied.clone());
        }
        FlightSqlError::Sql(error)
    }
}

// === impl AggregatorFlightSql ===

impl AggregatorFlightSql {
    /// A slot of [`SQL_QUERIES_MAX`], or `Busy`.
    fn admit(&self) -> Result<OwnedSemaphorePermit, FlightSqlError> {
        self.queries.semaphore.clone().try_acquire_owned().map_err(|_| {
            self.queries.n_refused.fetch_add(1, Ordering::Relaxed);
            FlightSqlError::Busy
        })
    }

    /// A session for `role`: fresh per query, so nothing one query sets or
    /// registers is seen by another, and its only tables are `role`'s.
    fn session(&self, role: Role) -> Result<SessionContext, FlightSqlError> {
        let config = SessionConfig::new()
            .with_create_default_catalog_and_schema(false)
            .with_default_catalog_and_schema(CATALOG_NAME, SCHEMA_NAME)
            .with_information_schema(false);
        let catalog = MemoryCatalogProvider::new();
        catalog.register_schema(SCHEMA_NAME, Arc::new(RoleTables { role, store: self.store.clone() }))?;
        let catalogs = MemoryCatalogProviderList::new();
        catalogs.register_catalog(CATALOG_NAME.to_owned(), Arc::new(catalog));
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(self.runtime.clone())
            .with_catalog_list(Arc::new(catalogs))
            .with_default_features()
            .build();
        Ok(SessionContext::new_with_state(state))
    }

    /// Plans `sql` for `role` and checks that it only reads.
    async fn plan(&self, role: Role, sql: &str) -> Result<Planned, FlightSqlError> {
        let permit = self.admit()?;
        let context = self.session(role)?;
        let plan = context.state().create_logical_plan(sql).await?;
        read_only().verify_plan(&plan).map_err(FlightSqlError::ReadOnly)?;
        Ok(Planned { context, plan, permit })
    }

    /// The schema of the answer to `sql`, as `role` would get it.
    async fn schema(&self, role: Role, sql: &str) -> Result<SchemaRef, FlightSqlError> {
        let planned = self.plan(role, sql).await?;
        Ok(planned.plan.schema().inner().clone())
    }

    /// Describes the flight of `sql`; its one endpoint's ticket is
    /// `ticket`, which names the SQL again.
    async fn flight_info(
        &self,
        role: Role,
        sql: &str,
        descriptor: FlightDescriptor,
        ticket: Bytes,
    ) -> Result<FlightInfo, FlightSqlError> {
        let schema = self.schema(role, sql).await?;
        let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket));
        Ok(FlightInfo::new().try_with_schema(&schema)?.with_endpoint(endpoint).with_descriptor(descriptor))
    }

    /// Runs `sql` for `role` and streams its answer.
    async fn answer(&self, role: Role, sql: &str) -> Result<<Self as FlightService>::DoGetStream, FlightSqlError> {
        let deadline = tokio::time::Instant::now() + SQL_QUERY_TIME_MAX;
        let Planned { context, plan, permit } = self.plan(role, sql).await?;
        let dataframe = context.execute_logical_plan(plan).await?;
        let schema = dataframe.schema().inner().clone();
        let batches = dataframe.execute_stream().await?;
        debug!(%role, "Flight SQL query started.");
        let encoded = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .with_max_flight_data_size(FLIGHT_DATA_BYTES_MAX)
            .build(until(batches, deadline, permit))
            .map_err(|error| match error {
                // A status from the query stays what it was.
                FlightError::Tonic(status) => *status,
                other => into_status(FlightSqlError::Sql(DataFusionError::External(Box::new(other)))),
            });
        Ok(encoded.boxed())
    }

    /// The status for `error`, counting refusals.
    fn status(&self, error: FlightSqlError) -> Status {
        refuse(&self.refusals, error)
    }
}

/// `batches`, ended by `DEADLINE_EXCEEDED` at `deadline`. A task of its
/// own runs the query into a queue of [`ANSWER_QUEUE_BATCHES_MAX`]
/// batches, holding `permit` until the query ends, fails, its reader goes
/// away or the deadline passes, whichever is first: a client that stops
/// reading cannot keep a slot past the deadline. Dropping DataFusion's
/// stream stops the query's own tasks.
fn until(
    batches: SendableRecordBatchStream,
    deadline: tokio::time::Instant,
    permit: OwnedSemaphorePermit,
) -> BoxStream<'static, Result<RecordBatch, FlightError>> {
    let flight_error = |error: FlightSqlError| FlightError::Tonic(Box::new(into_status(error)));
    let (queue, answer) = mpsc::channel(ANSWER_QUEUE_BATCHES_MAX);
    tokio::spawn(async move {
        let mut batches = batches;
        let run = async {
            while let Some(batch) = batches.next().await {
                let failed = batch.is_err();
                if queue.send(batch.map_err(|error| flight_error(error.into()))).await.is_err() || failed {
                    return;
                }
            }
        };
        let in_time = tokio::time::timeout_at(deadline, run).await.is_ok();
        drop(batches);
        drop(permit);
        if !in_time {
            // Waits for room without holding a slot; ends if the reader
            // is gone.
            let _ = queue.send(Err(flight_error(FlightSqlError::TooSlow))).await;
        }
    });
    stream::unfold(answer, |mut answer| async move { answer.recv().await.map(|batch| (batch, answer)) }).boxed()
}

/// The SQL text of a statement handle or ticket.
fn sql_of(handle: &Bytes) -> Result<&str, FlightSqlError> {
    std::str::from_utf8(handle).map_err(|_| FlightSqlError::Handle)
}

type DoGetStream = Pin<Box<dyn futures::Stream<Item = Result<arrow_flight::FlightData, Status>> + Send + 'static>>;

/// The flight of a metadata command: its answer's `schema`, and the
/// command itself as the ticket.
fn metadata_info(
    command: &impl ProstMessageExt,
    schema: &arrow_schema::Schema,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(command.as_any().encode_to_vec()));
    let info = FlightInfo::new().try_with_schema(schema).map_err(|error| into_status(error.into()))?;
    Ok(Response::new(info.with_endpoint(endpoint).with_descriptor(descriptor)))
}

/// One metadata batch as a `DoGet` answer.
fn metadata_answer(batch: Result<RecordBatch, FlightError>) -> Result<Response<DoGetStream>, Status> {
    let batch = batch.map_err(|error| into_status(FlightSqlError::Metadata(error)))?;
    let encoded = FlightDataEncoderBuilder::new()
        .with_schema(batch.schema())
        .build(stream::once(async { Ok(batch) }))
        .map_err(|error| match error {
            FlightError::Tonic(status) => *status,
            other => Status::internal(other.to_string()),
        });
    Ok(Response::new(encoded.boxed()))
}

/// The tables `role` may read, as `GetTables` lists them.
fn tables_of(role: Role, query: CommandGetTables) -> Result<RecordBatch, FlightError> {
    let mut builder = query.into_builder();
    for dataset in Dataset::ALL {
        let mut table = Query::whole(dataset);
        if scope(role, &mut table).is_ok() {
            builder.append(CATALOG_NAME, SCHEMA_NAME, dataset.as_str(), TABLE_TYPE, &table.schema())?;
        }
    }
    builder.build()
}

#[tonic::async_trait]
impl FlightSqlService for AggregatorFlightSql {
    type FlightService = AggregatorFlightSql;

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let role = role_of(&request).map_err(into_status)?;
        let ticket = TicketStatementQuery { statement_handle: query.query.clone().into() };
        let ticket = ticket.as_any().encode_to_vec().into();
        let info = self.flight_info(role, &query.query, request.into_inner(), ticket).await;
        info.map(Response::new).map_err(|error| self.status(error))
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let role = role_of(&request).map_err(into_status)?;
        let sql = sql_of(&query.prepared_statement_handle).map_err(into_status)?;
        let ticket = query.as_any().encode_to_vec().into();
        let info = self.flight_info(role, sql, request.into_inner(), ticket).await;
        info.map(Response::new).map_err(|error| self.status(error))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let role = role_of(&request).map_err(into_status)?;
        let sql = sql_of(&ticket.statement_handle).map_err(into_status)?;
        self.answer(role, sql).await.map(Response::new).map_err(|error| self.status(error))
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let role = role_of(&request).map_err(into_status)?;
        let sql = sql_of(&query.prepared_statement_handle).map_err(into_status)?;
        self.answer(role, sql).await.map(Response::new).map_err(|error| self.status(error))
    }

    /// Plans the SQL (so errors show now, as clients expect) and hands it
    /// back as the handle; no parameters.
    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let role = role_of(&request).map_err(into_status)?;
        let schema = self.schema(role, &query.query).await.map_err(|error| self.status(error))?;
        let IpcMessage(dataset_schema) = SchemaAsIpc::new(&schema, &IpcWriteOptions::default())
            .try_into()
            .map_err(|error: ArrowError| into_status(error.into()))?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: query.query.into(),
            dataset_schema,
            parameter_schema: Bytes::new(),
        })
    }

    /// Nothing to free: the handle is the SQL text.
    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        role_of(&request).map_err(into_status)?;
        Ok(())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        metadata_info(&query, &GetCatalogsBuilder::new().schema(), request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        builder.append(CATALOG_NAME);
        metadata_answer(builder.build())
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        metadata_info(&query, &schema, request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        builder.append(CATALOG_NAME, SCHEMA_NAME);
        metadata_answer(builder.build())
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        metadata_info(&query, &schema, request.into_inner())
    }

    /// The tables the caller's role may read: an affiliate's list has no
    /// `quarantine`.
    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let role = role_of(&request).map_err(into_status)?;
        metadata_answer(tables_of(role, query))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        metadata_info(&query, &schema, request.into_inner())
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        builder.append(TABLE_TYPE);
        metadata_answer(builder.build())
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        metadata_info(&query, &SQL_INFO.schema(), request.into_inner())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        metadata_answer(query.into_builder(&SQL_INFO).build())
    }

    /// The server's own [`SQL_INFO`] is fixed; nothing to register.
    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

// === impl RoleTables ===

impl fmt::Debug for RoleTables {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoleTables").field("role", &self.role).finish_non_exhaustive()
    }
}

#[tonic::async_trait]
impl SchemaProvider for RoleTables {
    /// The datasets the role may read.
    fn table_names(&self) -> Vec<String> {
        Dataset::ALL
            .into_iter()
            .filter(|&dataset| scope(self.role, &mut Query::whole(dataset)).is_ok())
            .map(|dataset| dataset.as_str().to_owned())
            .collect()
    }

    /// The dataset `name` narrowed to the role, or the refusal: a table the
    /// role may not read is refused by name rather than reported missing,
    /// so the caller learns why.
    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        let Some(dataset) = Dataset::parse(name) else {
            return Ok(None);
        };
        let mut query = Query::whole(dataset);
        scope(self.role, &mut query).map_err(|denied| DataFusionError::External(Box::new(denied)))?;
        Ok(Some(Arc::new(DatasetTable { query, store: self.store.clone() })))
    }

    fn table_exist(&self, name: &str) -> bool {
        Dataset::parse(name).is_some()
    }
}

// === impl DatasetTable ===

impl fmt::Debug for DatasetTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatasetTable").field("query", &self.query).finish_non_exhaustive()
    }
}

#[tonic::async_trait]
impl TableProvider for DatasetTable {
    fn schema(&self) -> SchemaRef {
        self.query.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Reads the dataset, narrowed to the role, into in-memory batches
    /// dealt round-robin over the session's partitions: this copies the
    /// dataset (the role's part of it) for every query that scans it.
    /// Filters and limits are left to DataFusion, which applies them on top.
    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        let (query, store) = (self.query.clone(), self.store.clone());
        // Reading holds the store lock; keep it off the async workers.
        let batches = tokio::task::spawn_blocking(move || query.execute(&store))
            .await
            .map_err(|error| DataFusionError::ExecutionJoin(Box::new(error)))??;
        // An empty dataset still scans as one empty batch, so expressions
        // are checked (an unknown `date_trunc` unit is an error) whether or
        // not there are rows yet.
        let batches = if batches.is_empty() { vec![RecordBatch::new_empty(self.schema())] } else { batches };
        let mut partitions = vec![Vec::new(); state.config().target_partitions().max(1)];
        let n_partitions = partitions.len();
        for (batch_idx, batch) in batches.into_iter().enumerate() {
            partitions[batch_idx % n_partitions].push(batch);
        }
        Ok(MemorySourceConfig::try_new_exec(&partitions, self.schema(), projection.cloned())?)
    }
}

#[cfg(test)]
mod tests;
