//! The write-ahead log: every batch is appended here, and made durable,
//! before it is applied or acknowledged, so a restart replays what a crash
//! took from memory.
//!
//! The log is a directory of append-only segment files named by a
//! zero-padded 20-digit segment number (`00000000000000000001.wal`). A
//! segment is a run of records, all little-endian:
//!
//! ```text
//! magic "ETW1" | len u32 | crc32 u32 (of the payload) | payload (len bytes)
//! ```
//!
//! The payload is the frame exactly as the edge sent it; its header already
//! names the edge, epoch and sequence, so the record that carries a batch
//! also carries the edge's new high-water mark.
//!
//! **Group commit.** One writer thread owns the open segment. Appliers send
//! `(record, reply)` over a bounded queue ([`APPEND_QUEUE_MAX`]); the writer
//! takes whatever is queued, writes it with one `write(2)`, fsyncs once
//! (with `wal_fsync` off only the `write(2)` happens, which survives a
//! process crash but not a power loss) and only then answers every waiter.
//! A failed write or fsync stops the log for good: after a failed fsync the
//! kernel may have dropped the dirty pages, so nothing written since the
//! last good fsync can be trusted, and no batch is acknowledged again until
//! an operator restarts the aggregator, which replays what is really on
//! disk.
//!
//! **Apply order.** Each committed record gets a log sequence number in
//! file order. Appliers apply strictly in that order: [`Commit::turn`]
//! waits until every earlier record is applied (or given up), so the store
//! sees records in the order replay will read them. Batches of different
//! edges commute, but cross-edge conversion dedup (the first copy wins),
//! commission rule changes and status changes do not; applying in log
//! order makes a restart rebuild exactly the state that was served.
//!
//! **Settlement.** Each committed record is *unsettled* until its applier
//! has applied it to the store (or given up on it); the reply is a
//! [`Commit`] guard that settles the record when dropped. A snapshot waits
//! for every record of the segments it is about to delete to settle (see
//! `snapshot.rs`).
//!
//! **Recovery.** [`recover`] reads segments in order. A record whose header
//! or CRC is wrong is logged at ERROR, counted and skipped: the reader
//! resynchronises on the next magic that starts a record with a valid CRC,
//! so the records after the damage are not lost. Damage with no valid record
//! after it that looks like an interrupted append (a header or payload cut
//! off by the end of the file, or only zeros) is a *torn tail*: that record
//! was never acknowledged, since acks wait for the commit, so it is truncated
//! away and counted apart. After recovery, appends go to a fresh segment.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use edgetally_protocol::frame::{BatchFrame, FRAME_BYTES_MAX, FRAME_HEADER_LEN, FRAME_MAGIC};
use hdrhistogram::Histogram;
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{error, info, warn};

pub(crate) const RECORD_MAGIC: [u8; 4] = *b"ETW1";
pub(crate) const RECORD_HEADER_LEN: usize = 12;

/// A record's payload is one frame, so it is bounded like one.
pub(crate) const RECORD_PAYLOAD_MAX: usize = FRAME_BYTES_MAX;
const _: () = assert!(RECORD_PAYLOAD_MAX <= u32::MAX as usize);

/// Appends waiting for the writer. Each applier has at most one record in
/// the log at a time (a connection applies in order), so this only bounds
/// how many connections wait on a slow disk at once; the frames themselves
/// are already in memory, so the queue costs a few hundred bytes a slot.
/// A full queue blocks the applier, and through it the edge's connection.
pub(crate) const APPEND_QUEUE_MAX: usize = 64;

/// The writer stops gathering a group past this many bytes and commits it;
/// the buffer holds one group, so it costs at most this plus one record.
/// A few MiB per `write(2)` already amortises the fsync.
const GROUP_BYTES_TARGET: usize = 8 * 1024 * 1024;

/// A segment is closed and the next one started once it holds this much.
/// Recovery reads one segment at a time into memory, so this bounds that
/// memory: at most the target plus one group.
const SEGMENT_BYTES_TARGET: u64 = 64 * 1024 * 1024;

const SEGMENT_SUFFIX: &str = ".wal";
const SEGMENT_NAME_DIGITS: usize = 20;

/// The first segment of a log that never had one.
pub(crate) const FIRST_SEGMENT: u64 = 1;

/// fsync latencies are recorded in microseconds up to a minute with three
/// significant digits (about 30 KiB of histogram); a slower fsync is
/// recorded as a minute.
const FSYNC_LATENCY_MAX_US: u64 = 60_000_000;

/// Why the log could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("{op} {}: {source}", path.display())]
    Io { op: &'static str, path: PathBuf, source: io::Error },
    #[error("start the write-ahead log writer thread: {0}")]
    Thread(io::Error),
    #[error("write-ahead log stopped after a failed write or fsync; restart the aggregator to recover")]
    Failed,
    #[error("write-ahead log is closed")]
    Closed,
    #[error("record too large: payload is {len} bytes, limit is {RECORD_PAYLOAD_MAX}")]
    TooLarge { len: usize },
}

/// How the writer runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WalConfig {
    /// fsync each group before answering it.
    pub(crate) fsync: bool,
    /// Past this many live bytes, the writer asks for a snapshot.
    pub(crate) snapshot_wal_bytes: u64,
}

/// The handle appliers and the snapshotter use; the writer thread behind it
/// stops on [`Wal::close`] or when every handle is gone.
pub(crate) struct Wal {
    dir: PathBuf,
    requests: mpsc::Sender<Request>,
    shared: Arc<Shared>,
}

/// A committed record, unsettled until this is dropped: drop it once the
/// record's batch is applied to the store (or will never be).
#[must_use = "dropping a Commit settles its record"]
pub(crate) struct Commit {
    segment: u64,
    /// The record's place in apply order.
    lsn: u64,
    shared: Arc<Shared>,
}

/// What the log did since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WalStats {
    pub(crate) live_bytes: u64,
    pub(crate) n_fsyncs: u64,
    pub(crate) fsync_p50_us: u64,
    pub(crate) fsync_p99_us: u64,
    pub(crate) fsync_max_us: u64,
}

/// What recovery found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Recovery {
    /// Records read whole with a valid CRC.
    pub(crate) n_records: u64,
    /// Damaged spans skipped (one per resynchronisation).
    pub(crate) n_corrupt: u64,
    pub(crate) n_torn_tails: u64,
    /// Bytes of the segments kept.
    pub(crate) live_bytes: u64,
    /// Where appends go from now on.
    pub(crate) next_segment: u64,
}

/// One record as recovery hands it out.
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) segment: u64,
    pub(crate) offset: u64,
    pub(crate) payload: Bytes,
}

/// What the writer thread is asked to do.
enum Request {
    Append {
        record: Bytes,
        reply: oneshot::Sender<Result<Commit, WalError>>,
    },
    /// Start a new segment unless the open one is empty; answers the
    /// segment every later append goes to.
    Rotate {
        reply: oneshot::Sender<Result<u64, WalError>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// What the writer and the handles share.
struct Shared {
    live_bytes: AtomicU64,
    /// Committed records not yet settled, by segment.
    unsettled: Mutex<BTreeMap<u64, u64>>,
    settled: Notify,
    fsync_latency: Mutex<FsyncLatency>,
    failed: AtomicBool,
    /// The apply order of committed records.
    sequencer: Sequencer,
}

/// Hands out turns to apply in log order. Log sequence numbers are
/// assigned by the writer at commit, from 0 in each run.
struct Sequencer {
    /// Records whose applier finished (or gave up) while an earlier one
    /// was still pending; at most the records in flight, a few hundred.
    state: Mutex<SequencerState>,
    /// The next record to apply.
    next: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct SequencerState {
    next: u64,
    done_early: std::collections::BTreeSet<u64>,
}

struct FsyncLatency {
    histogram_us: Histogram<u64>,
    sum_us: u64,
}

/// The writer thread's state.
struct Writer {
    dir: PathBuf,
    config: WalConfig,
    segment: u64,
    file: File,
    segment_bytes: u64,
    /// The log sequence number of the next record committed.
    next_lsn: u64,
    /// The group being gathered, and who waits for it.
    group: Vec<u8>,
    waiters: Vec<oneshot::Sender<Result<Commit, WalError>>>,
    shared: Arc<Shared>,
    snapshot_due: mpsc::Sender<()>,
}

/// One thing the reader found in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scanned {
    Record {
        offset: usize,
        payload: Range<usize>,
    },
    /// `offset..end` is damaged; a valid record starts at `end` or the
    /// segment ends there.
    Corrupt {
        offset: usize,
        end: usize,
        reason: Damage,
    },
    /// Everything from `offset` on is an interrupted append.
    TornTail {
        offset: usize,
    },
}

/// What is wrong at a record's offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Damage {
    /// Fewer bytes left than a record header.
    Short,
    Magic,
    TooLarge {
        len: usize,
    },
    /// The header announces more payload than the segment holds.
    Incomplete {
        len: usize,
    },
    Crc {
        expected: u32,
        actual: u32,
    },
}

// === impl Wal ===

impl Wal {
    /// Starts the writer thread on a fresh segment `next_segment` in `dir`.
    /// `live_bytes` is what recovery kept; `snapshot_due` gets a message
    /// whenever the live bytes pass `config.snapshot_wal_bytes`.
    pub(crate) fn start(
        dir: &Path,
        next_segment: u64,
        live_bytes: u64,
        config: WalConfig,
        snapshot_due: mpsc::Sender<()>,
    ) -> Result<Wal, WalError> {
        let shared = Arc::new(Shared {
            live_bytes: AtomicU64::new(live_bytes),
            unsettled: Mutex::new(BTreeMap::new()),
            settled: Notify::new(),
            fsync_latency: Mutex::new(FsyncLatency {
                histogram_us: Histogram::new_with_bounds(1, FSYNC_LATENCY_MAX_US, 3)
                    .expect("constant histogram bounds are valid"),
                sum_us: 0,
            }),
            failed: AtomicBool::new(false),
            sequencer: Sequencer { state: Mutex::default(), next: tokio::sync::watch::Sender::new(0) },
        });
        let file = create_segment(dir, next_segment, config.fsync)?;
        if live_bytes > config.snapshot_wal_bytes {
            // Recovery kept more than the limit: snapshot soon. The channel
            // is the caller's and new, so a full one means it is asked for.
            let _ = snapshot_due.try_send(());
        }
        let writer = Writer {
            dir: dir.to_owned(),
            config,
            segment: next_segment,
            file,
            segment_bytes: 0,
            next_lsn: 0,
            group: Vec::new(),
            waiters: Vec::new(),
            shared: shared.clone(),
            snapshot_due,
        };
        let (requests, requests_rx) = mpsc::channel(APPEND_QUEUE_MAX);
        std::thread::Builder::new()
            .name("edgetally-wal".to_owned())
            .spawn(move || writer.run(requests_rx))
            .map_err(WalError::Thread)?;
        Ok(Wal { dir: dir.to_owned(), requests, shared })
    }

    /// Appends `record` and waits for it to be committed (written, and
    /// fsynced when configured).
    pub(crate) async fn append(&self, record: Bytes) -> Result<Commit, WalError> {
        if record.len() > RECORD_PAYLOAD_MAX {
            return Err(WalError::TooLarge { len: record.len() });
        }
        let (reply, reply_rx) = oneshot::channel();
        let permit = self.requests.reserve().await.map_err(|_| WalError::Closed)?;
        permit.send(Request::Append { record, reply });
        // A dropped reply means the writer stopped.
        reply_rx.await.map_err(|_| WalError::Closed)?
    }

    /// Closes the open segment (unless it is empty) and answers the segment
    /// number every later append goes to: all records appended before the
    /// call are in lower segments.
    pub(crate) async fn rotate(&self) -> Result<u64, WalError> {
        let (reply, reply_rx) = oneshot::channel();
        let permit = self.requests.reserve().await.map_err(|_| WalError::Closed)?;
        permit.send(Request::Rotate { reply });
        reply_rx.await.map_err(|_| WalError::Closed)?
    }

    /// Waits until every record committed to a segment below `segment` is
    /// settled.
    pub(crate) async fn settled_below(&self, segment: u64) {
        loop {
            let notified = self.shared.settled.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so a settle in between wakes us.
            notified.as_mut().enable();
            if self.shared.n_unsettled_below(segment) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Deletes every segment below `segment`; answers how many it deleted.
    pub(crate) fn remove_segments_below(&self, segment: u64) -> Result<usize, WalError> {
        let mut n_removed = 0;
        for (number, path) in list_segments(&self.dir)? {
            if number >= segment {
                break;
            }
            let len =
                fs::metadata(&path).map_err(|source| WalError::Io { op: "stat", path: path.clone(), source })?.len();
            fs::remove_file(&path).map_err(|source| WalError::Io { op: "remove", path: path.clone(), source })?;
            self.shared.live_bytes.fetch_sub(len, Ordering::Relaxed);
            n_removed += 1;
        }
        Ok(n_removed)
    }

    /// Commits what is queued, closes the segment and stops the writer;
    /// later appends fail with [`WalError::Closed`].
    pub(crate) async fn close(&self) {
        let (reply, reply_rx) = oneshot::channel();
        if let Ok(permit) = self.requests.reserve().await {
            permit.send(Request::Close { reply });
            // An error means the writer had stopped already.
            let _ = reply_rx.await;
        }
    }

    /// Whether a write or fsync failed, which stops the log.
    pub(crate) fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::Relaxed)
    }

    pub(crate) fn stats(&self) -> WalStats {
        let latency = self.shared.lock_fsync_latency();
        let histogram = &latency.histogram_us;
        let quantile = |quantile| if histogram.is_empty() { 0 } else { histogram.value_at_quantile(quantile) };
        WalStats {
            live_bytes: self.shared.live_bytes.load(Ordering::Relaxed),
            n_fsyncs: histogram.len(),
            fsync_p50_us: quantile(0.5),
            fsync_p99_us: quantile(0.99),
            fsync_max_us: if histogram.is_empty() { 0 } else { histogram.max() },
        }
    }

    /// The fsync latencies as cumulative-free Prometheus buckets: for each
    /// upper bound in microseconds, the fsyncs above the previous bound and
    /// at most this one, then the rest as `+Inf`; with the sum and count in
    /// microseconds. Bucket edges are as precise as the histogram (three
    /// significant digits).
    pub(crate) fn fsync_buckets(&self, bounds_us: &[u64]) -> (Vec<(u64, u64)>, u64, u64) {
        let latency = self.shared.lock_fsync_latency();
        let histogram = &latency.histogram_us;
        (crate::metrics::histogram_buckets(histogram, bounds_us), latency.sum_us, histogram.len())
    }
}

// === impl Commit ===

impl Commit {
    /// Waits until every record committed before this one is applied or
    /// given up. Apply, then drop the commit, which passes the turn on.
    pub(crate) async fn turn(&self) {
        let mut next = self.shared.sequencer.next.subscribe();
        // The sender lives in `shared`, which `self` holds: never closed.
        let _ = next.wait_for(|&next| next >= self.lsn).await;
    }
}

impl Drop for Commit {
    fn drop(&mut self) {
        self.shared.sequencer.done(self.lsn);
        self.shared.settle(self.segment);
    }
}

// === impl Sequencer ===

impl Sequencer {
    fn done(&self, lsn: u64) {
        // Only sets and counters change under the lock; a poisoned state
        // is still consistent.
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if lsn != state.next {
            state.done_early.insert(lsn);
            return;
        }
        state.next += 1;
        loop {
            let next = state.next;
            if !state.done_early.remove(&next) {
                break;
            }
            state.next += 1;
        }
        self.next.send_replace(state.next);
    }
}

// === impl Shared ===

impl Shared {
    fn lock_unsettled(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, u64>> {
        // The critical sections only add and subtract; a panic cannot leave
        // the map half-updated in a way that matters more than the panic.
        self.unsettled.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_fsync_latency(&self) -> std::sync::MutexGuard<'_, FsyncLatency> {
        // Only records and reads numbers; a poisoned histogram is still fine.
        self.fsync_latency.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn n_unsettled_below(&self, segment: u64) -> u64 {
        self.lock_unsettled().range(..segment).map(|(_, n_records)| n_records).sum()
    }

    fn settle(&self, segment: u64) {
        {
            let mut unsettled = self.lock_unsettled();
            if let Some(n_records) = unsettled.get_mut(&segment) {
                *n_records -= 1;
                if *n_records == 0 {
                    unsettled.remove(&segment);
                }
            }
        }
        self.settled.notify_waiters();
    }
}

// === impl Writer ===

impl Writer {
    fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        while let Some(first) = requests.blocking_recv() {
            let mut next = Some(first);
            while let Some(request) = next.take() {
                match request {
                    Request::Append { record, reply } => self.push(record, reply),
                    Request::Rotate { reply } => {
                        let rotated = self.commit().and_then(|()| self.rotate_if_used());
                        // The snapshotter may have given up waiting.
                        let _ = reply.send(rotated);
                    }
                    Request::Close { reply } => {
                        // A failure was answered to its waiters already.
                        let _ = self.commit();
                        let _ = reply.send(());
                        return;
                    }
                }
                if self.group.len() < GROUP_BYTES_TARGET {
                    next = requests.try_recv().ok();
                }
            }
            // Answered to its waiters; the log is stopped after a failure.
            let _ = self.commit();
        }
    }

    fn push(&mut self, record: Bytes, reply: oneshot::Sender<Result<Commit, WalError>>) {
        if self.shared.failed.load(Ordering::Relaxed) {
            let _ = reply.send(Err(WalError::Failed));
            return;
        }
        if self.segment_bytes + self.group.len() as u64 >= SEGMENT_BYTES_TARGET
            && let Err(error) = self.commit().and_then(|()| self.rotate_if_used())
        {
            // The log is stopped; the waiters of the group heard why.
            let _ = reply.send(Err(error));
            return;
        }
        let len = u32::try_from(record.len()).expect("Wal::append checked the length against RECORD_PAYLOAD_MAX");
        self.group.extend_from_slice(&RECORD_MAGIC);
        self.group.extend_from_slice(&len.to_le_bytes());
        self.group.extend_from_slice(&crc32fast::hash(&record).to_le_bytes());
        self.group.extend_from_slice(&record);
        self.waiters.push(reply);
    }

    /// Writes and syncs the group, then answers its waiters.
    fn commit(&mut self) -> Result<(), WalError> {
        if self.waiters.is_empty() {
            return Ok(());
        }
        let written = self.write_group();
        let waiters = std::mem::take(&mut self.waiters);
        let n_records = waiters.len() as u64;
        let group_len = self.group.len() as u64;
        self.group.clear();
        if let Err(error) = written {
            self.shared.failed.store(true, Ordering::Relaxed);
            error!(%error, segment = self.segment, n_records, "Write-ahead log write failed; no batch is acknowledged until a restart.");
            for waiter in waiters {
                let _ = waiter.send(Err(WalError::Failed));
            }
            return Err(error);
        }
        self.segment_bytes += group_len;
        self.shared.live_bytes.fetch_add(group_len, Ordering::Relaxed);
        // Registered before any waiter hears of its commit, so a snapshot
        // that rotates after this sees these records as unsettled.
        *self.shared.lock_unsettled().entry(self.segment).or_default() += n_records;
        for waiter in waiters {
            let commit = Commit { segment: self.segment, lsn: self.next_lsn, shared: self.shared.clone() };
            self.next_lsn += 1;
            // A waiter that left gets its commit dropped here, which settles
            // the record and passes its turn: its batch will not be applied
            // by this run, and its edge, never acknowledged, sends it again.
            let _ = waiter.send(Ok(commit));
        }
        if self.shared.live_bytes.load(Ordering::Relaxed) > self.config.snapshot_wal_bytes {
            // Full means a snapshot is already asked for; closed means the
            // snapshotter stopped, at shutdown.
            let _ = self.snapshot_due.try_send(());
        }
        Ok(())
    }

    fn write_group(&mut self) -> Result<(), WalError> {
        let path = segment_path(&self.dir, self.segment);
        self.file.write_all(&self.group).map_err(|source| WalError::Io { op: "write", path: path.clone(), source })?;
        if self.config.fsync {
            let started = Instant::now();
            self.file.sync_data().map_err(|source| WalError::Io { op: "fsync", path, source })?;
            let elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            let mut latency = self.shared.lock_fsync_latency();
            latency.histogram_us.saturating_record(elapsed_us.max(1));
            latency.sum_us = latency.sum_us.saturating_add(elapsed_us);
        }
        Ok(())
    }

    fn rotate_if_used(&mut self) -> Result<u64, WalError> {
        if self.segment_bytes > 0 {
            let next = self.segment + 1;
            let created = create_segment(&self.dir, next, self.config.fsync);
            match created {
                Ok(file) => {
                    self.file = file;
                    self.segment = next;
                    self.segment_bytes = 0;
                }
                Err(error) => {
                    self.shared.failed.store(true, Ordering::Relaxed);
                    error!(%error, segment = next, "Write-ahead log rotation failed; no batch is acknowledged until a restart.");
                    return Err(error);
                }
            }
        }
        Ok(self.segment)
    }
}

/// Creates segment `number`, failing if it exists: a segment is only ever
/// written by the run that created it.
fn create_segment(dir: &Path, number: u64, fsync: bool) -> Result<File, WalError> {
    let path = segment_path(dir, number);
    let file = OpenOptions::new().append(true).create_new(true).open(&path).map_err(|source| WalError::Io {
        op: "create",
        path: path.clone(),
        source,
    })?;
    if fsync {
        // The file's name must survive a power loss before any record in
        // it is acknowledged.
        sync_dir(dir)?;
    }
    Ok(file)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|dir| dir.sync_all()).map_err(|source| WalError::Io {
        op: "fsync directory",
        path: dir.to_owned(),
        source,
    })
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:0width$}{SEGMENT_SUFFIX}", width = SEGMENT_NAME_DIGITS))
}

/// The segment files in `dir`, in order. Other files are left alone.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let entries = fs::read_dir(dir).map_err(|source| WalError::Io { op: "list", path: dir.to_owned(), source })?;
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| WalError::Io { op: "list", path: dir.to_owned(), source })?;
        let name = entry.file_name();
        let Some(number) = name.to_str().and_then(parse_segment_name) else {
            continue;
        };
        segments.push((number, entry.path()));
    }
    segments.sort_unstable();
    Ok(segments)
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_NAME_DIGITS || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Reads the log in `dir` (created if missing): deletes segments below
/// `from_segment` (left by a truncation that a crash interrupted), hands
/// every sound record of the others to `on_record` in order, logs and
/// skips damage, and truncates torn tails.
pub(crate) fn recover(dir: &Path, from_segment: u64, mut on_record: impl FnMut(Record)) -> Result<Recovery, WalError> {
    fs::create_dir_all(dir).map_err(|source| WalError::Io { op: "create", path: dir.to_owned(), source })?;
    let mut recovery = Recovery { next_segment: from_segment.max(FIRST_SEGMENT), ..Recovery::default() };
    for (number, path) in list_segments(dir)? {
        if number < from_segment {
            info!(segment = number, "Removing a write-ahead log segment the snapshot covers.");
            fs::remove_file(&path).map_err(|source| WalError::Io { op: "remove", path: path.clone(), source })?;
            continue;
        }
        let bytes =
            Bytes::from(fs::read(&path).map_err(|source| WalError::Io { op: "read", path: path.clone(), source })?);
        let mut kept_len = bytes.len() as u64;
        for scanned in scan(&bytes) {
            match scanned {
                Scanned::Record { offset, payload } => {
                    recovery.n_records += 1;
                    on_record(Record { segment: number, offset: offset as u64, payload: bytes.slice(payload) });
                }
                Scanned::Corrupt { offset, end, reason } => {
                    recovery.n_corrupt += 1;
                    let ids = peek_frame_ids(&bytes[offset..end]);
                    error!(
                        segment = number,
                        offset,
                        n_bytes = end - offset,
                        ?reason,
                        edge_id = ids.map(|ids| ids.0),
                        epoch = ids.map(|ids| ids.1),
                        sequence = ids.map(|ids| ids.2),
                        "Write-ahead log record corrupt; skipped. Its batch is lost unless a snapshot holds it."
                    );
                }
                Scanned::TornTail { offset } => {
                    recovery.n_torn_tails += 1;
                    warn!(
                        segment = number,
                        offset,
                        n_bytes = bytes.len() - offset,
                        "Write-ahead log ends in an interrupted append; truncating it."
                    );
                    truncate(&path, offset as u64)?;
                    kept_len = offset as u64;
                }
            }
        }
        recovery.live_bytes += kept_len;
        recovery.next_segment = recovery.next_segment.max(number + 1);
    }
    Ok(recovery)
}

/// Recovers the log in `dir` as a start does (from the first segment on)
/// and returns the payload of every sound record, in order. Only for the
/// fuzz target of the reader (`fuzz/fuzz_targets/wal.rs`), which runs
/// outside this crate; the aggregator calls [`recover`].
#[doc(hidden)]
pub fn recover_payloads(dir: &Path) -> Result<Vec<Bytes>, WalError> {
    let mut payloads = Vec::new();
    recover(dir, FIRST_SEGMENT, |record| payloads.push(record.payload))?;
    Ok(payloads)
}

fn truncate(path: &Path, len: u64) -> Result<(), WalError> {
    let file = OpenOptions::new().write(true).open(path).map_err(|source| WalError::Io {
        op: "open",
        path: path.to_owned(),
        source,
    })?;
    file.set_len(len).and_then(|()| file.sync_all()).map_err(|source| WalError::Io {
        op: "truncate",
        path: path.to_owned(),
        source,
    })
}

/// Splits one segment's bytes into records, damage and a torn tail.
pub(crate) fn scan(bytes: &[u8]) -> Vec<Scanned> {
    let mut found = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        match parse_record(bytes, offset) {
            Ok(payload) => {
                offset = payload.end;
                found.push(Scanned::Record { offset: payload.start - RECORD_HEADER_LEN, payload });
            }
            Err(reason) => match find_record(bytes, offset + 1) {
                Some(end) => {
                    found.push(Scanned::Corrupt { offset, end, reason });
                    offset = end;
                }
                None => {
                    let interrupted = matches!(reason, Damage::Short | Damage::Incomplete { .. })
                        || bytes[offset..].iter().all(|&byte| byte == 0);
                    found.push(if interrupted {
                        Scanned::TornTail { offset }
                    } else {
                        Scanned::Corrupt { offset, end: bytes.len(), reason }
                    });
                    break;
                }
            },
        }
    }
    found
}

/// The payload range of the record at `offset`, if it is sound.
fn parse_record(bytes: &[u8], offset: usize) -> Result<Range<usize>, Damage> {
    let Some(header) = bytes.get(offset..offset + RECORD_HEADER_LEN) else {
        return Err(Damage::Short);
    };
    if header[..4] != RECORD_MAGIC {
        return Err(Damage::Magic);
    }
    let len = u32::from_le_bytes(header[4..8].try_into().expect("a 4-byte slice")) as usize;
    let expected = u32::from_le_bytes(header[8..12].try_into().expect("a 4-byte slice"));
    if len > RECORD_PAYLOAD_MAX {
        return Err(Damage::TooLarge { len });
    }
    let payload = offset + RECORD_HEADER_LEN..offset + RECORD_HEADER_LEN + len;
    let Some(payload_bytes) = bytes.get(payload.clone()) else {
        return Err(Damage::Incomplete { len });
    };
    let actual = crc32fast::hash(payload_bytes);
    if actual != expected {
        return Err(Damage::Crc { expected, actual });
    }
    Ok(payload)
}

/// The offset of the first sound record at or after `from`.
fn find_record(bytes: &[u8], from: usize) -> Option<usize> {
    let mut from = from;
    while from + RECORD_HEADER_LEN <= bytes.len() {
        let found = bytes[from..].windows(RECORD_MAGIC.len()).position(|window| window == RECORD_MAGIC)?;
        let offset = from + found;
        if parse_record(bytes, offset).is_ok() {
            return Some(offset);
        }
        from = offset + 1;
    }
    None
}

/// `(edge_id, epoch, sequence)` from a damaged record's frame header, when
/// the bytes after the record header still look like one.
fn peek_frame_ids(record: &[u8]) -> Option<(u32, u64, u64)> {
    let frame = record.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + FRAME_HEADER_LEN)?;
    if frame[..4] != FRAME_MAGIC {
        return None;
    }
    BatchFrame::peek_ids(frame)
}

#[cfg(test)]
mod tests;
