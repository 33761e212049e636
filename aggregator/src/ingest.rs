//! QUIC ingest: edges open one bidirectional stream per [`BatchFrame`],
//! write it and finish; the aggregator answers with one [`Ack`] and finishes.
//!
//! **Ordering invariant:** an edge sends its batches in sequence order, one
//! stream each, opened in that order on one connection. The high-water mark
//! only works if batches are applied in that order (applying 6 before 5
//! would make 5 look like a duplicate), so a connection's streams are read
//! and decoded concurrently but applied strictly in the order they were
//! opened, and a stream that fails before its frame is read whole closes the
//! connection, so nothing after it is applied; the edge then resends from
//! its spool on a new connection.
//!
//! A frame that cannot be decoded is refused ([`AckStatus::Refuse`]): the
//! same bytes can never succeed, so the edge must not resend them.
//!
//! **Durability invariant:** a batch is acknowledged `Apply` only after its
//! frame is committed to the write-ahead log (`wal.rs`), and it is applied
//! to the store only after that commit, so whatever a query or an ack has
//! seen survives a crash. The order for a decoded batch is: admission
//! against the store's mark (a batch at or below it is acked `Skip` with no
//! write), append and await the commit, apply (the store checks admission
//! again under its lock), ack.
//!
//! **Replay invariant:** replaying the log must reach the same state, so for
//! each edge the store must decide admission in log order. Live, an edge's
//! batches could otherwise be committed in one order and applied in another
//! by two connections of the same edge (an old one still draining while the
//! restarted edge sends a newer epoch). So admission, commit and apply of
//! one edge's batch run under one of [`EDGE_LOCK_STRIPES`] locks, chosen by
//! edge id. Across edges the order does not matter: marks are per edge and
//! rollups merge commutatively (conversion and quarantine rows may come
//! back interleaved differently between edges).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow_array::RecordBatch;
use bytes::Bytes;
use edgetally_protocol::batch::{
    BatchError, ConversionRow, QuarantineRow, RollupCounts, RollupKey, conversions_from_batch, decode_ipc,
    quarantine_from_batch, rollups_from_batch,
};
use edgetally_protocol::frame::{
    ALPN_ACCEPTED, Ack, AckStatus, BatchFrame, FRAME_BYTES_MAX, FrameError, HELLO_TOKEN_LEN_MAX, Hello, HelloAck,
};
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Connection, ConnectionError, Endpoint, Incoming, RecvStream, SendStream, VarInt};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::admin::{self, AdminRecord};
use crate::catalog::SnapshotReceiver;
use crate::edges::EdgeTokens;
use crate::store::{Admission, Batch, Store};
use crate::wal::{self, Wal, WalError};

/// Streams (so frames) one edge may have open at once. An edge pipelines a
/// few batches to hide the round trip, and more than 16 only adds memory:
/// quinn buffers up to one stream receive window (about 1.25 MB by default)
/// for each open stream. Because QUIC counts a stream until both sides are
/// done with it, this also bounds the tasks one connection can spawn.
const STREAMS_PER_CONNECTION_MAX: u32 = 16;

/// Receive window of one stream (one frame).
const STREAM_RECEIVE_WINDOW: u32 = 16 * 1024 * 1024;
/// Receive window of one edge connection: a few frames in flight.
const CONNECTION_RECEIVE_WINDOW: u32 = 64 * 1024 * 1024;
/// An edge connection silent this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Frames being read and decoded at once across all edges. Each may hold up
/// to `FRAME_BYTES_MAX` (64 MiB) plus its decoded rows, so 8 caps that at
/// about 512 MiB of frame bytes; more would not decode faster on the
/// two-core hosts the aggregator is sized for. A stream waiting for a permit
/// is not read, so QUIC flow control pushes back on its edge.
const FRAMES_IN_FLIGHT_MAX: usize = 8;

/// Edge connections open at once; past it new ones are refused. Each costs
/// little until it opens streams; the cap stops a flood of handshakes from
/// exhausting memory.
const CONNECTIONS_MAX: usize = 4096;

/// How long one frame may take to arrive once its read has started. A
/// 64 MiB frame at 100 Mbit/s takes about 5 s; a stream slower than this is
/// holding one of the few frame permits hostage.
const FRAME_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Locks that serialise admission, commit and apply per edge (see the replay
/// invariant above), striped by edge id so their number stays fixed however
/// many edge ids arrive. Two edges in one stripe wait for each other; with
/// 64 stripes and the few dozen edges an aggregator serves, that is rare, and
/// a stripe costs a few dozen bytes.
const EDGE_LOCK_STRIPES: usize = 64;

/// QUIC application close code: the aggregator is shutting down.
pub(crate) const CLOSE_SHUTDOWN: VarInt = VarInt::from_u32(0);
/// QUIC application close code: a stream failed mid-frame, so later frames
/// of the connection cannot be applied in order.
const CLOSE_STREAM_FAILED: VarInt = VarInt::from_u32(1);
/// QUIC application close code: the edge is unknown or its token wrong.
pub(crate) const CLOSE_UNAUTHENTICATED: VarInt = VarInt::from_u32(3);
/// How long an edge has to send its [`Hello`] once connected.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// QUIC stream stop code: the frame is larger than `FRAME_BYTES_MAX`.
const STOP_TOO_LARGE: VarInt = VarInt::from_u32(2);

/// Why a stream's frame was refused or its stream failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IngestError {
    #[error("frame larger than the limit of {FRAME_BYTES_MAX} bytes")]
    TooLarge,
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    #[error("{payload} payload: {source}")]
    Payload { payload: &'static str, source: BatchError },
    #[error("{payload} row count mismatch: header says {announced}, payload has {actual}")]
    RowCount { payload: &'static str, announced: u32, actual: usize },
    #[error("sequence 0 is below the first sequence 1")]
    SequenceZero,
    #[error("read frame: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("read frame: incomplete after {} ms", FRAME_READ_TIMEOUT.as_millis())]
    ReadTimeout,
    #[error("write ack: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("finish ack: {0}")]
    Finish(#[from] quinn::ClosedStream),
    #[error("task: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("write-ahead log: {0}")]
    Wal(#[from] WalError),
    #[error("frame of another edge on the connection of edge {authenticated}")]
    OtherEdge { authenticated: u32 },
}

/// Counters of what ingest did since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) batches_applied: u64,
    pub(crate) batches_skipped: u64,
    pub(crate) batches_refused: u64,
    pub(crate) edges_refused: u64,
    pub(crate) rollup_rows_applied: u64,
    pub(crate) conversion_rows_applied: u64,
}

/// What replaying the write-ahead log did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Replay {
    pub(crate) recovery: wal::Recovery,
    /// Records whose CRC was sound but whose frame did not decode.
    pub(crate) n_undecodable: u64,
    pub(crate) n_applied: u64,
    pub(crate) n_skipped: u64,
}

/// What ingest shares between its tasks.
pub(crate) struct Ingest {
    store: Arc<Store>,
    /// `None`: every edge is accepted (no tokens configured). A reload
    /// replaces the tokens; edges already connected stay connected.
    edge_tokens: Option<std::sync::RwLock<EdgeTokens>>,
    /// The configuration every edge connection sends on its control stream.
    snapshots: SnapshotReceiver,
    pub(crate) edges_refused: AtomicU64,
    wal: Arc<Wal>,
    edge_locks: Box<[tokio::sync::Mutex<()>]>,
    frames_in_flight: Semaphore,
    batches_applied: AtomicU64,
    batches_skipped: AtomicU64,
    batches_refused: AtomicU64,
    rollup_rows_applied: AtomicU64,
    conversion_rows_applied: AtomicU64,
}

/// A frame's identity as its header states it, echoed in the ack.
#[derive(Debug, Clone, Copy, Default)]
struct FrameIds {
    edge_id: u32,
    epoch: u64,
    sequence: u64,
}

/// What reading and decoding one stream gave.
enum Received {
    /// The decoded batch, and the frame's bytes as received for the log.
    Batch { batch: Batch, frame: Bytes },
    /// The frame is malformed. `ids` are zeros when even its header could
    /// not be decoded; the edge knows its frame by the stream anyway.
    Refuse { ids: FrameIds, error: IngestError },
}

/// The QUIC server config: TLS 1.3 with ring only, our ALPN, and the stream
/// limits above.
pub(crate) fn server_config(
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<quinn::ServerConfig, crate::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(cert_chain, key)?;
    tls.alpn_protocols = ALPN_ACCEPTED.iter().map(|alpn| alpn.to_vec()).collect();
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(VarInt::from_u32(STREAMS_PER_CONNECTION_MAX));
    // Frames need an answer, so edges only ever open bidirectional streams.
    transport.max_concurrent_uni_streams(VarInt::from_u32(0));
    // Flow control sized for frames, not web pages: a stream may carry a
    // whole 16 MiB frame without waiting for window updates (quinn's
    // default of 1.25 MB would cap a 100 ms link at 12.5 MB/s per stream),
    // and the connection a few of them. The frame permits above still bound
    // what is buffered across all edges.
    transport.stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW));
    transport.receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW));
    // An edge keeps its connection open between batches (it sends
    // keep-alives every 5 s); one silent for this long is gone.
    transport.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("idle timeout fits QUIC's range")));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Accepts edge connections until the endpoint is closed.
pub(crate) async fn serve(endpoint: Endpoint, ingest: Arc<Ingest>) {
    while let Some(incoming) = endpoint.accept().await {
        if endpoint.open_connections() >= CONNECTIONS_MAX {
            warn!(peer = %incoming.remote_address(), connections_max = CONNECTIONS_MAX, "Edge connection refused: too many open.");
            incoming.refuse();
            continue;
        }
        tokio::spawn(serve_connection(incoming, ingest.clone()));
    }
    debug!("QUIC endpoint closed.");
}

async fn serve_connection(incoming: Incoming, ingest: Arc<Ingest>) {
    let peer = incoming.remote_address();
    let connection = match incoming.await {
        Ok(connection) => connection,
        Err(error) => {
            info!(%error, peer = %peer, "Edge handshake failed.");
            return;
        }
    };
    let (edge_id, control) = match authenticate(&connection, &ingest).await {
        Ok(authenticated) => authenticated,
        Err(reason) => {
            ingest.edges_refused.fetch_add(1, Ordering::Relaxed);
            warn!(peer = %peer, %reason, "Edge refused.");
            connection.close(CLOSE_UNAUTHENTICATED, b"unknown edge or wrong token");
            return;
        }
    };
    debug!(peer = %peer, edge_id, "Edge connected.");
    let control = tokio::spawn(send_snapshots(control, ingest.snapshots.clone(), peer, edge_id));
    // Bounded by the stream limit: a queued stream is still open, so the
    // edge cannot have more than this many waiting here.
    let (queue_tx, queue_rx) = mpsc::channel(STREAMS_PER_CONNECTION_MAX as usize);
    let applier = tokio::spawn(apply_in_order(queue_rx, connection.clone(), peer, edge_id, ingest.clone()));
    loop {
        let (send, recv) = match connection.accept_bi().await {
            Ok(streams) => streams,
            Err(ConnectionError::ApplicationClosed(_) | ConnectionError::LocallyClosed) => {
                debug!(peer = %peer, "Edge disconnected.");
                break;
            }
            Err(error) => {
                info!(%error, peer = %peer, "Edge connection lost.");
                break;
            }
        };
        let receive = tokio::spawn(receive(recv, ingest.clone()));
        if queue_tx.send((send, receive)).await.is_err() {
            // The applier stopped, and closed the connection as it did.
            break;
        }
    }
    drop(queue_tx);
    if let Err(error) = applier.await {
        warn!(%error, peer = %peer, "Ingest applier failed.");
    }
    control.abort();
}

/// Sends the configuration snapshot on the control stream at once and after
/// every change, until the connection ends.
async fn send_snapshots(mut control: SendStream, mut snapshots: SnapshotReceiver, peer: SocketAddr, edge_id: u32) {
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        if let Some(snapshot) = snapshot {
            let bytes = match snapshot.encode() {
                Ok(bytes) => bytes,
                Err(error) => {
                    warn!(%error, "Campaign snapshot not sendable.");
                    return;
                }
            };
            if let Err(error) = control.write_all(&bytes).await {
                debug!(%error, peer = %peer, edge_id, "Control stream closed.");
                return;
            }
            debug!(peer = %peer, edge_id, version = snapshot.version, "Campaign snapshot sent.");
        }
        if snapshots.changed().await.is_err() {
            // No more changes will come; keep the stream open.
            return std::future::pending().await;
        }
    }
}

/// Reads the edge's [`Hello`] from the first stream and checks its token
/// (every edge is accepted when no tokens are configured). Returns the
/// edge's id and the control stream's sending half, which the connection
/// keeps for what it sends the edge later.
async fn authenticate(connection: &Connection, ingest: &Ingest) -> Result<(u32, SendStream), String> {
    let hello = async {
        let (send, mut recv) = connection.accept_bi().await.map_err(|error| format!("no control stream: {error}"))?;
        let mut bytes = vec![0u8; 10];
        recv.read_exact(&mut bytes).await.map_err(|error| format!("reading hello: {error}"))?;
        let token_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        if token_len > HELLO_TOKEN_LEN_MAX {
            return Err(format!("hello token of {token_len} bytes, limit {HELLO_TOKEN_LEN_MAX}"));
        }
        bytes.resize(10 + token_len, 0);
        recv.read_exact(&mut bytes[10..]).await.map_err(|error| format!("reading hello: {error}"))?;
        let hello = Hello::decode(&bytes).map_err(|error| format!("bad hello: {error}"))?;
        Ok((hello, send))
    };
    let (hello, mut send) = tokio::time::timeout(HELLO_TIMEOUT, hello)
        .await
        .map_err(|_| format!("no hello within {} s", HELLO_TIMEOUT.as_secs()))??;
    let accepted = ingest.edge_tokens.as_ref().is_none_or(|tokens| {
        // Poisoned only by a panic during a swap, which cannot leave a torn
        // value.
        tokens.read().unwrap_or_else(std::sync::PoisonError::into_inner).check(hello.edge_id, &hello.token)
    });
    // A refused edge may not read the answer before the close; it sees the
    // close code either way.
    let _ = send.write_all(&HelloAck { accepted }.encode()).await;
    if !accepted {
        return Err(format!("edge {} is unknown or its token is wrong", hello.edge_id));
    }
    Ok((hello.edge_id, send))
}

/// Applies and acknowledges a connection's frames in stream order.
async fn apply_in_order(
    mut queue_rx: mpsc::Receiver<(SendStream, JoinHandle<Result<Received, IngestError>>)>,
    connection: Connection,
    peer: SocketAddr,
    edge_id: u32,
    ingest: Arc<Ingest>,
) {
    while let Some((mut send, receive)) = queue_rx.recv().await {
        let received = match receive.await.map_err(IngestError::from).and_then(|received| received) {
            Ok(received) => received,
            Err(error) => {
                warn!(%error, peer = %peer, "Batch stream failed; closing the connection to keep batches in order.");
                connection.close(CLOSE_STREAM_FAILED, b"stream failed");
                return;
            }
        };
        let received = match received {
            Received::Batch { batch, .. } if batch.edge_id != edge_id => {
                let ids = FrameIds { edge_id: batch.edge_id, epoch: batch.epoch, sequence: batch.sequence };
                Received::Refuse { ids, error: IngestError::OtherEdge { authenticated: edge_id } }
            }
            received => received,
        };
        let ack = match received {
            Received::Batch { batch, frame } => {
                let ids = FrameIds { edge_id: batch.edge_id, epoch: batch.epoch, sequence: batch.sequence };
                match ingest.apply(batch, frame).await {
                    Ok(status) => ids.ack(status),
                    Err(error) => {
                        warn!(%error, peer = %peer, "Batch apply failed; closing the connection.");
                        connection.close(CLOSE_STREAM_FAILED, b"apply failed");
                        return;
                    }
                }
            }
            Received::Refuse { ids, error } => {
                ingest.batches_refused.fetch_add(1, Ordering::Relaxed);
                warn!(%error, peer = %peer, edge_id = ids.edge_id, epoch = ids.epoch, sequence = ids.sequence, "Batch refused.");
                ids.ack(AckStatus::Refuse)
            }
        };
        // The batch is settled whether or not the ack arrives: an edge that
        // misses it resends and gets `Skip`, so a failure here is no reason
        // to stop the connection.
        if let Err(error) = send_ack(&mut send, ack).await {
            debug!(%error, peer = %peer, "Ack not delivered.");
        }
    }
}

/// Reads one stream's frame to its end and decodes it.
async fn receive(mut recv: RecvStream, ingest: Arc<Ingest>) -> Result<Received, IngestError> {
    // The semaphore lives as long as `ingest` and is never closed.
    let _permit = ingest.frames_in_flight.acquire().await.expect("frame semaphore is never closed");
    let bytes = match tokio::time::timeout(FRAME_READ_TIMEOUT, recv.read_to_end(FRAME_BYTES_MAX)).await {
        Err(_elapsed) => return Err(IngestError::ReadTimeout),
        Ok(Err(quinn::ReadToEndError::Read(error))) => return Err(error.into()),
        Ok(Err(quinn::ReadToEndError::TooLong)) => {
            // Fails only if the stream is gone already, which is as good.
            let _ = recv.stop(STOP_TOO_LARGE);
            return Ok(Received::Refuse { ids: FrameIds::default(), error: IngestError::TooLarge });
        }
        Ok(Ok(bytes)) => bytes,
    };
    // Decompressing and decoding Arrow is CPU work of up to tens of
    // milliseconds; it must not stall the runtime's workers.
    Ok(tokio::task::spawn_blocking(move || decode(Bytes::from(bytes))).await?)
}

/// Decodes a frame and both of its payloads, checking the row counts its
/// header announces (the edge checked them on encode; this is the second
/// check).
fn decode(bytes: Bytes) -> Received {
    let frame = match BatchFrame::decode(bytes.clone()) {
        Ok(frame) => frame,
        Err(error) => return Received::Refuse { ids: FrameIds::default(), error: error.into() },
    };
    let ids = FrameIds { edge_id: frame.edge_id, epoch: frame.epoch, sequence: frame.sequence };
    match decode_payloads(&frame) {
        Ok((rollups, conversions, quarantine)) => Received::Batch {
            batch: Batch {
                edge_id: frame.edge_id,
                epoch: frame.epoch,
                sequence: frame.sequence,
                rollups,
                conversions,
                quarantine,
            },
            frame: bytes,
        },
        Err(error) => Received::Refuse { ids, error },
    }
}

/// A frame's rollup rows, conversion rows and quarantine rows.
type Rows = (Vec<(RollupKey, RollupCounts)>, Vec<ConversionRow>, Vec<QuarantineRow>);

fn decode_payloads(frame: &BatchFrame) -> Result<Rows, IngestError> {
    if frame.sequence == 0 {
        return Err(IngestError::SequenceZero);
    }
    let rollups = decode_rows("rollups", &frame.rollups_ipc, frame.n_rollup_rows, rollups_from_batch)?;
    let conversions =
        decode_rows("conversions", &frame.conversions_ipc, frame.n_conversion_rows, conversions_from_batch)?;
    let quarantine = decode_rows("quarantine", &frame.quarantine_ipc, frame.n_quarantine_rows, quarantine_from_batch)?;
    Ok((rollups, conversions, quarantine))
}

/// Decodes one IPC payload; an empty payload means no rows.
fn decode_rows<T>(
    payload: &'static str,
    ipc: &[u8],
    announced: u32,
    rows_from_batch: impl Fn(&RecordBatch) -> Result<Vec<T>, BatchError>,
) -> Result<Vec<T>, IngestError> {
    let mut rows = Vec::new();
    if !ipc.is_empty() {
        let batches = decode_ipc(ipc).map_err(|source| IngestError::Payload { payload, source })?;
        for batch in &batches {
            rows.extend(rows_from_batch(batch).map_err(|source| IngestError::Payload { payload, source })?);
        }
    }
    if rows.len() != announced as usize {
        return Err(IngestError::RowCount { payload, announced, actual: rows.len() });
    }
    Ok(rows)
}

async fn send_ack(send: &mut SendStream, ack: Ack) -> Result<(), IngestError> {
    send.write_all(&ack.encode()).await?;
    send.finish()?;
    Ok(())
}

// === impl Ingest ===

impl Ingest {
    /// Replaces the edge tokens; false when the aggregator runs without
    /// any (accepting every edge), which only a restart changes.
    pub(crate) fn replace_edge_tokens(&self, tokens: EdgeTokens) -> bool {
        let Some(current) = &self.edge_tokens else { return false };
        *current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = tokens;
        true
    }

    pub(crate) fn new(
        store: Arc<Store>,
        wal: Arc<Wal>,
        edge_tokens: Option<EdgeTokens>,
        snapshots: SnapshotReceiver,
    ) -> Ingest {
        Ingest {
            store,
            edge_tokens: edge_tokens.map(std::sync::RwLock::new),
            snapshots,
            edges_refused: AtomicU64::new(0),
            wal,
            edge_locks: (0..EDGE_LOCK_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            frames_in_flight: Semaphore::new(FRAMES_IN_FLIGHT_MAX),
            batches_applied: AtomicU64::new(0),
            batches_skipped: AtomicU64::new(0),
            batches_refused: AtomicU64::new(0),
            rollup_rows_applied: AtomicU64::new(0),
            conversion_rows_applied: AtomicU64::new(0),
        }
    }

    pub(crate) fn counts(&self) -> Counts {
        Counts {
            batches_applied: self.batches_applied.load(Ordering::Relaxed),
            batches_skipped: self.batches_skipped.load(Ordering::Relaxed),
            batches_refused: self.batches_refused.load(Ordering::Relaxed),
            edges_refused: self.edges_refused.load(Ordering::Relaxed),
            rollup_rows_applied: self.rollup_rows_applied.load(Ordering::Relaxed),
            conversion_rows_applied: self.conversion_rows_applied.load(Ordering::Relaxed),
        }
    }

    /// Commits `frame` to the log unless the edge's mark skips it, then
    /// applies `batch` to the store off the async workers (merging tens of
    /// thousands of keys takes milliseconds) and counts the outcome.
    async fn apply(&self, batch: Batch, frame: Bytes) -> Result<AckStatus, IngestError> {
        let (edge_id, epoch, sequence) = (batch.edge_id, batch.epoch, batch.sequence);
        let (n_rollup_rows, n_conversion_rows) = (batch.rollups.len() as u64, batch.conversions.len() as u64);
        let _edge_lock = self.edge_locks[edge_id as usize % EDGE_LOCK_STRIPES].lock().await;
        let admission = match self.store.admit(edge_id, epoch, sequence) {
            Admission::Skip => Admission::Skip,
            Admission::Apply => {
                let commit = self.wal.append(frame).await?;
                commit.turn().await;
                let store = self.store.clone();
                // The commit is dropped in the task, after the apply, even if
                // this future is dropped meanwhile: it settles the record
                // (a snapshot that waits for it includes it) and passes the
                // turn on.
                tokio::task::spawn_blocking(move || {
                    let admission = store.apply(batch);
                    drop(commit);
                    admission
                })
                .await?
            }
        };
        Ok(match admission {
            Admission::Apply => {
                self.batches_applied.fetch_add(1, Ordering::Relaxed);
                self.rollup_rows_applied.fetch_add(n_rollup_rows, Ordering::Relaxed);
                self.conversion_rows_applied.fetch_add(n_conversion_rows, Ordering::Relaxed);
                debug!(edge_id, epoch, sequence, n_rollup_rows, n_conversion_rows, "Batch applied.");
                AckStatus::Apply
            }
            Admission::Skip => {
                self.batches_skipped.fetch_add(1, Ordering::Relaxed);
                debug!(edge_id, epoch, sequence, "Batch skipped: at or below the high-water mark.");
                AckStatus::Skip
            }
        })
    }
}

/// Rebuilds `store` from the log in `dir`, segments `from_segment` on:
/// each record's frame is decoded as ingest decodes it and applied with
/// admission, so records the snapshot holds already are skipped. A record
/// whose frame does not decode is logged at ERROR, counted and skipped.
pub(crate) fn replay(dir: &std::path::Path, from_segment: u64, store: &Store) -> Result<Replay, WalError> {
    let mut replay = Replay::default();
    replay.recovery = wal::recover(dir, from_segment, |record| match admin::decode(&record.payload) {
        Some(Ok(AdminRecord::Rules(rules))) => {
            store.set_rules(rules);
            replay.n_applied += 1;
        }
        Some(Ok(AdminRecord::Status(change))) => {
            store.set_status(&change.key, change.status);
            replay.n_applied += 1;
        }
        Some(Err(error)) => {
            replay.n_undecodable += 1;
            tracing::error!(
                %error,
                segment = record.segment,
                offset = record.offset,
                "Write-ahead log admin record does not decode; skipped."
            );
        }
        None => replay_batch(record, store, &mut replay),
    })?;
    Ok(replay)
}

fn replay_batch(record: wal::Record, store: &Store, replay: &mut Replay) {
    match decode(record.payload) {
        Received::Batch { batch, .. } => match store.apply(batch) {
            Admission::Apply => replay.n_applied += 1,
            Admission::Skip => replay.n_skipped += 1,
        },
        Received::Refuse { ids, error } => {
            replay.n_undecodable += 1;
            tracing::error!(
                %error,
                segment = record.segment,
                offset = record.offset,
                edge_id = ids.edge_id,
                epoch = ids.epoch,
                sequence = ids.sequence,
                "Write-ahead log record does not decode; skipped. Its batch is lost unless a snapshot holds it."
            );
        }
    }
}

// === impl FrameIds ===

impl FrameIds {
    fn ack(self, status: AckStatus) -> Ack {
        Ack { edge_id: self.edge_id, epoch: self.epoch, sequence: self.sequence, status }
    }
}

#[cfg(test)]
mod tests;
