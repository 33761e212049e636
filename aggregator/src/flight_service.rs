//! The Arrow Flight server: `ListFlights`, `GetFlightInfo`, `GetSchema` and
//! `DoGet` over the datasets in the store.
//!
//! A ticket, and the command of a flight descriptor, is the JSON that
//! [`crate::ticket`] parses. Every error becomes a [`Status`] in one
//! exhaustive match, [`into_status`].
//!
//! `DoAction` `set_conversion_status` (body: the JSON of
//! [`StatusChange`]) changes a conversion's status, logged like a batch;
//! its result is the conversion as it now stands, as one JSON object.
//!
//! With a [`FlightAuth`] every call first resolves its caller's [`Role`]
//! from `authorization: Bearer <token>` and checks that the role may make
//! the call at all ([`AggregatorFlight::authorize`]); then every query is
//! narrowed to what the role may read ([`scope`]): an affiliate's to its
//! own rows. Refusals are `UNAUTHENTICATED` (no, wrong or expired token)
//! or `PERMISSION_DENIED` (out of scope), counted by reason. Without a
//! `FlightAuth` every caller is an admin.
//!
//! A ticket with `"follow":true` is answered by a stream that stays open
//! (`follow.rs`): its schema first, then a batch per applied batch with
//! matching rows. It ends only with an error: `DATA_LOSS` when the
//! follower lagged, `UNAVAILABLE` at shutdown; `RESOURCE_EXHAUSTED` refuses
//! a follower past `follow::FOLLOWERS_MAX`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest,
    HandshakeResponse, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use arrow_ipc::writer::IpcWriteOptions;
use arrow_schema::ArrowError;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

use crate::admin::{self, AdminError};
use crate::auth::{Call, Denied, FlightTokens, Role, Unauthenticated};
use crate::follow::{self, FollowError, Followers};
use crate::ledger::{Conversion, StatusChange, StatusChangeError};
use crate::query::{Dataset, Query};
use crate::store::Store;
use crate::ticket::{self, TicketError};
use crate::wal::Wal;

/// Target size of one `FlightData` message. Arrow splits batches to stay
/// near it, which keeps each message well under tonic's default 4 MiB
/// decoding limit on the client side.
pub(crate) const FLIGHT_DATA_BYTES_MAX: usize = 2 * 1024 * 1024;

/// Largest request message accepted. Requests are tickets and descriptors
/// of a few hundred bytes; tonic's default of 4 MiB is far more than needed.
pub(crate) const REQUEST_BYTES_MAX: usize = 64 * 1024;

/// Concurrent requests on one HTTP/2 connection. Each `DoGet` holds its
/// whole answer in memory while it streams, so this bounds what one client
/// can make the server hold at once.
pub(crate) const STREAMS_PER_CONNECTION_MAX: u32 = 16;

/// Longest error message sent to a client; a JSON parser's message can
/// quote the input.
const STATUS_MESSAGE_BYTES_MAX: usize = 512;

/// The metadata key of the bearer token (gRPC metadata keys are lowercase).
pub(crate) const AUTHORIZATION: &str = "authorization";

#[derive(Debug, thiserror::Error)]
pub(crate) enum FlightServiceError {
    #[error("bad ticket: {0}")]
    Ticket(#[from] TicketError),
    #[error("flight descriptor must be a cmd holding ticket json, got a path")]
    DescriptorPath,
    #[error("build answer: {0}")]
    Arrow(#[from] ArrowError),
    #[error("encode answer: {0}")]
    Encode(#[from] FlightError),
    #[error("query task: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("{0} is not supported yet")]
    Unsupported(&'static str),
    #[error("follow: {0}")]
    Follow(#[from] FollowError),
    #[error("unknown action {0:?}: expected {SET_CONVERSION_STATUS}")]
    UnknownAction(String),
    #[error("bad status change: {0}")]
    StatusChange(#[from] StatusChangeError),
    #[error("no conversion has that key")]
    NoConversion,
    #[error("{0}")]
    Admin(#[from] AdminError),
    #[error("unauthenticated: {0}")]
    Unauthenticated(#[from] Unauthenticated),
    #[error("permission denied: {0}")]
    PermissionDenied(#[from] Denied),
}

/// Flight calls refused since start, by reason; read by the metrics.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    unauthenticated: AtomicU64,
    permission_denied: AtomicU64,
}

/// The action that changes a conversion's status.
pub(crate) const SET_CONVERSION_STATUS: &str = "set_conversion_status";

/// Maps an error to its gRPC status, truncating the message.
pub(crate) fn into_status(error: FlightServiceError) -> Status {
    let message = status_message(&error);
    match error {
        FlightServiceError::Ticket(_) | FlightServiceError::DescriptorPath => Status::invalid_argument(message),
        FlightServiceError::Arrow(_) | FlightServiceError::Task(_) => Status::internal(message),
        // A status the client sent through the encoder stays what it was.
        FlightServiceError::Encode(FlightError::Tonic(status)) => *status,
        FlightServiceError::Encode(_) => Status::internal(message),
        FlightServiceError::Unsupported(_) => Status::unimplemented(message),
        FlightServiceError::Follow(FollowError::TooMany) => Status::resource_exhausted(message),
        FlightServiceError::Follow(FollowError::Stopped) => Status::unavailable(message),
        FlightServiceError::Follow(FollowError::Lagged { .. }) => Status::data_loss(message),
        FlightServiceError::Follow(FollowError::Arrow(_)) => Status::internal(message),
        FlightServiceError::UnknownAction(_) | FlightServiceError::StatusChange(_) => Status::invalid_argument(message),
        FlightServiceError::NoConversion => Status::not_found(message),
        FlightServiceError::Admin(_) => Status::unavailable(message),
        FlightServiceError::Unauthenticated(_) => Status::unauthenticated(message),
        FlightServiceError::PermissionDenied(_) => Status::permission_denied(message),
    }
}

/// `error`'s message, cut to [`STATUS_MESSAGE_BYTES_MAX`] bytes.
pub(crate) fn status_message(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    if message.len() > STATUS_MESSAGE_BYTES_MAX {
        let mut end = STATUS_MESSAGE_BYTES_MAX;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

/// Serves Flight on `port` until `shutdown` completes. Follow streams
/// never end by themselves: call `Store::stop_publishing` first so they do.
/// `auth: None` lets every caller in as an admin.
pub(crate) async fn serve(
    port: Port,
    store: Arc<Store>,
    wal: Arc<Wal>,
    followers: Arc<Followers>,
    auth: Option<Arc<FlightTokens>>,
    refusals: Arc<Refusals>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let flight = AggregatorFlight { store, wal, followers, auth, refusals };
    let service = FlightServiceServer::new(flight).max_decoding_message_size(REQUEST_BYTES_MAX);
    let (mut server, incoming) = port.server()?;
    server.add_service(service).serve_with_incoming_shutdown(incoming, shutdown).await
}

/// A bound Flight or Flight SQL port and the TLS it serves, if any.
pub(crate) struct Port {
    pub(crate) listener: TcpListener,
    pub(crate) tls: Option<ServerTlsConfig>,
}

impl Port {
    /// The gRPC server both Flight services run on, with their bounds
    /// and TLS, and the connections it accepts.
    pub(crate) fn server(self) -> Result<(Server, TcpIncoming), tonic::transport::Error> {
        let mut server = Server::builder().max_concurrent_streams(STREAMS_PER_CONNECTION_MAX);
        if let Some(tls) = self.tls {
            server = server.tls_config(tls)?;
        }
        Ok((server, TcpIncoming::from(self.listener).with_nodelay(Some(true))))
    }
}

struct AggregatorFlight {
    store: Arc<Store>,
    wal: Arc<Wal>,
    followers: Arc<Followers>,
    auth: Option<Arc<FlightTokens>>,
    refusals: Arc<Refusals>,
}

// === impl Refusals ===

impl Refusals {
    pub(crate) fn n_unauthenticated(&self) -> u64 {
        self.unauthenticated.load(Ordering::Relaxed)
    }

    pub(crate) fn n_permission_denied(&self) -> u64 {
        self.permission_denied.load(Ordering::Relaxed)
    }

    pub(crate) fn count_unauthenticated(&self) {
        self.unauthenticated.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_permission_denied(&self) {
        self.permission_denied.fetch_add(1, Ordering::Relaxed);
    }
}

// === impl AggregatorFlight ===

impl AggregatorFlight {
    /// The caller's role, if it may make `call` at all. Every method asks
    /// this first.
    fn authorize<T>(&self, request: &Request<T>, call: Call) -> Result<Role, FlightServiceError> {
        let role = match &self.auth {
            None => Role::Admin,
            Some(auth) => {
                let authorization = request.metadata().get(AUTHORIZATION).map(|value| value.as_bytes());
                auth.current().authenticate(authorization)?
            }
        };
        role.admit(call)?;
        Ok(role)
    }

    /// The status for `error`, counting refusals.
    fn status(&self, call: Call, error: FlightServiceError) -> Status {
        match &error {
            FlightServiceError::Unauthenticated(_) => self.refusals.count_unauthenticated(),
            FlightServiceError::PermissionDenied(_) => self.refusals.count_permission_denied(),
            _ => return into_status(error),
        }
        debug!(%error, call = call.as_str(), "Flight call refused.");
        into_status(error)
    }

    /// What a call that is not implemented answers: a refusal if the
    /// caller may not make it, else `UNIMPLEMENTED`.
    fn unsupported<T>(&self, request: &Request<T>, call: Call) -> Status {
        let error = match self.authorize(request, call) {
            Ok(_) => FlightServiceError::Unsupported(call.as_str()),
            Err(error) => error,
        };
        self.status(call, error)
    }

    /// Describes the flight of `descriptor` as `role` may read it: the
    /// endpoint's ticket carries the narrowed query, so it reads the same
    /// whoever redeems it.
    fn flight_info(descriptor: FlightDescriptor, role: Role) -> Result<FlightInfo, FlightServiceError> {
        let asked = query_of(&descriptor)?;
        let mut query = asked.clone();
        scope(role, &mut query)?;
        let ticket = if query == asked { descriptor.cmd.clone() } else { ticket::render(&query).into() };
        let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket));
        Ok(FlightInfo::new().try_with_schema(&query.schema())?.with_endpoint(endpoint).with_descriptor(descriptor))
    }

    /// Every dataset `role` may read, whole (as far as it may).
    fn list(&self, request: &Request<Criteria>) -> Result<Vec<Result<FlightInfo, Status>>, FlightServiceError> {
        let role = self.authorize(request, Call::ListFlights)?;
        let mut infos = Vec::with_capacity(Dataset::ALL.len());
        for dataset in Dataset::ALL {
            let mut query = Query::whole(dataset);
            if scope(role, &mut query).is_err() {
                continue;
            }
            let descriptor = FlightDescriptor::new_cmd(ticket::render(&query));
            infos.push(Ok(AggregatorFlight::flight_info(descriptor, role)?));
        }
        Ok(infos)
    }

    fn schema(&self, request: &Request<FlightDescriptor>) -> Result<SchemaResult, FlightServiceError> {
        let role = self.authorize(request, Call::GetSchema)?;
        let mut query = query_of(request.get_ref())?;
        scope(role, &mut query)?;
        Ok(SchemaAsIpc::new(&query.schema(), &IpcWriteOptions::default()).try_into()?)
    }

    /// Streams the answer to the ticket; an empty answer still carries its
    /// schema. A follow ticket's stream stays open.
    async fn answer(
        &self,
        request: &Request<Ticket>,
    ) -> Result<<Self as FlightService>::DoGetStream, FlightServiceError> {
        let role = self.authorize(request, Call::DoGet)?;
        let mut query = ticket::parse(&request.get_ref().ticket)?;
        scope(role, &mut query)?;
        if query.follow {
            return self.follow(query);
        }
        let schema = query.schema();
        // Aggregating holds the store lock; keep it off the async workers.
        let store = self.store.clone();
        let answer = tokio::task::spawn_blocking(move || query.execute(&store)).await??;
        debug!(n_rows = answer.iter().map(arrow_array::RecordBatch::num_rows).sum::<usize>(), "DoGet answered.");
        let batches = answer.into_iter().map(Ok);
        let encoded = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .with_max_flight_data_size(FLIGHT_DATA_BYTES_MAX)
            .build(stream::iter(batches))
            .map_err(|error| into_status(error.into()));
        Ok(encoded.boxed())
    }

    /// Subscribes before answering, so every batch applied once the client
    /// has the response is in the stream.
    fn follow(&self, query: Query) -> Result<<Self as FlightService>::DoGetStream, FlightServiceError> {
        let slot = self.followers.admit()?;
        let feed = self.store.follow().ok_or(FollowError::Stopped)?;
        let schema = query.schema();
        debug!(dataset = query.dataset.as_str(), n_followers = self.followers.n_followers(), "Follower subscribed.");
        let batches = follow::stream(query, feed, slot, self.followers.clone())
            .map_err(|error| FlightError::Tonic(Box::new(into_status(error.into()))));
        let encoded = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .with_max_flight_data_size(FLIGHT_DATA_BYTES_MAX)
            .build(batches)
            .map_err(|error| into_status(error.into()));
        Ok(encoded.boxed())
    }
}

/// A conversion as the JSON result of an action.
fn conversion_json(conversion: &Conversion) -> Vec<u8> {
    let row = &conversion.row;
    let commission = &conversion.commission;
    let json = serde_json::json!({
        "affiliate_id": row.affiliate_id,
        "campaign_id": row.campaign_id,
        "kind": row.kind.as_str(),
        "order_id": row.order_id,
        "click_id": row.click_id,
        "event_id": row.event_id,
        "amount_minor": row.money.map(|money| money.minor_units),
        "currency": row.money.map(|money| money.currency.code().to_owned()),
        "status": conversion.status.as_str(),
        "flag": row.flag.map(|flag| flag.as_str()),
        "commission_minor": commission.amount_minor,
        "commission_currency": commission.currency.map(|currency| currency.code().to_owned()),
        "rule": commission.rule.as_str(),
        "parent_affiliate_id": commission.parent_affiliate_id,
        "parent_commission_minor": commission.parent_amount_minor,
    });
    // A JSON value always serializes.
    serde_json::to_vec(&json).expect("json value serializes")
}

/// Narrows `query` to what `role` may read, or refuses it. An affiliate
/// reads its own rows of `rollups` and `conversions`: a query without an
/// affiliate becomes one for the caller's, a query for another affiliate
/// is refused, and so is `quarantine`, whose rows have no trusted
/// affiliate.
pub(crate) fn scope(role: Role, query: &mut Query) -> Result<(), Denied> {
    match role {
        Role::Admin => Ok(()),
        Role::Edge => Err(Denied::Dataset { role, dataset: query.dataset.as_str() }),
        Role::Affiliate(own_id) => match query.dataset {
            // An affiliate's alerts are the findings on its own keys: the
            // filter leaves out every finding without an affiliate.
            Dataset::Rollups | Dataset::Conversions | Dataset::Alerts => match query.affiliate_id {
                None => {
                    query.affiliate_id = Some(own_id);
                    Ok(())
                }
                Some(affiliate_id) if affiliate_id == own_id => Ok(()),
                Some(affiliate_id) => Err(Denied::OtherAffiliate { role, affiliate_id }),
            },
            Dataset::Quarantine => Err(Denied::Quarantine { role }),
        },
    }
}

fn query_of(descriptor: &FlightDescriptor) -> Result<Query, FlightServiceError> {
    if descriptor.r#type() != DescriptorType::Cmd {
        return Err(FlightServiceError::DescriptorPath);
    }
    Ok(ticket::parse(&descriptor.cmd)?)
}

#[tonic::async_trait]
impl FlightService for AggregatorFlight {
    type HandshakeStream = BoxStream<'static, Result<HandshakeResponse, Status>>;
    type ListFlightsStream = BoxStream<'static, Result<FlightInfo, Status>>;
    type DoGetStream = BoxStream<'static, Result<FlightData, Status>>;
    type DoPutStream = BoxStream<'static, Result<PutResult, Status>>;
    type DoActionStream = BoxStream<'static, Result<arrow_flight::Result, Status>>;
    type ListActionsStream = BoxStream<'static, Result<ActionType, Status>>;
    type DoExchangeStream = BoxStream<'static, Result<FlightData, Status>>;

    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(self.unsupported(&request, Call::Handshake))
    }

    /// Lists every dataset the caller may read, whole; the criteria are
    /// ignored.
    async fn list_flights(&self, request: Request<Criteria>) -> Result<Response<Self::ListFlightsStream>, Status> {
        let infos = self.list(&request).map_err(|error| self.status(Call::ListFlights, error))?;
        Ok(Response::new(stream::iter(infos).boxed()))
    }

    async fn get_flight_info(&self, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        let info = self
            .authorize(&request, Call::GetFlightInfo)
            .and_then(|role| AggregatorFlight::flight_info(request.into_inner(), role));
        info.map(Response::new).map_err(|error| self.status(Call::GetFlightInfo, error))
    }

    async fn poll_flight_info(&self, request: Request<FlightDescriptor>) -> Result<Response<PollInfo>, Status> {
        Err(self.unsupported(&request, Call::PollFlightInfo))
    }

    async fn get_schema(&self, request: Request<FlightDescriptor>) -> Result<Response<SchemaResult>, Status> {
        self.schema(&request).map(Response::new).map_err(|error| self.status(Call::GetSchema, error))
    }

    async fn do_get(&self, request: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        self.answer(&request).await.map(Response::new).map_err(|error| self.status(Call::DoGet, error))
    }

    async fn do_put(&self, request: Request<Streaming<FlightData>>) -> Result<Response<Self::DoPutStream>, Status> {
        Err(self.unsupported(&request, Call::DoPut))
    }

    async fn do_action(&self, request: Request<Action>) -> Result<Response<Self::DoActionStream>, Status> {
        self.authorize(&request, Call::DoAction).map_err(|error| self.status(Call::DoAction, error))?;
        let action = request.into_inner();
        if action.r#type != SET_CONVERSION_STATUS {
            return Err(into_status(FlightServiceError::UnknownAction(action.r#type)));
        }
        let change = StatusChange::parse(&action.body).map_err(|error| into_status(error.into()))?;
        let conversion = admin::set_status(&self.wal, &self.store, change)
            .await
            .map_err(|error| into_status(error.into()))?
            .ok_or_else(|| into_status(FlightServiceError::NoConversion))?;
        let body = conversion_json(&conversion);
        let result = arrow_flight::Result { body: body.into() };
        Ok(Response::new(stream::once(async { Ok(result) }).boxed()))
    }

    async fn list_actions(&self, request: Request<Empty>) -> Result<Response<Self::ListActionsStream>, Status> {
        self.authorize(&request, Call::ListActions).map_err(|error| self.status(Call::ListActions, error))?;
        let action = ActionType {
            r#type: SET_CONVERSION_STATUS.to_owned(),
            description: "Set a conversion's status (pending, approved, rejected); body: \
                          {\"campaign_id\":3,\"order_id\":\"A-1\",\"status\":\"rejected\"}"
                .to_owned(),
        };
        Ok(Response::new(stream::once(async { Ok(action) }).boxed()))
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(self.unsupported(&request, Call::DoExchange))
    }
}

#[cfg(test)]
mod tests;
