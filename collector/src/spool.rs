//! The spool: sealed batches on disk until the aggregator acknowledges them.
//!
//! Every sealed [`BatchFrame`](edgetally_protocol::BatchFrame) is appended
//! here, and the file synced, before it is sent; it stays until the
//! aggregator has acknowledged it. A restart sends everything the spool
//! still holds, in order, before anything new: the aggregator skips what it
//! applied already (at or below the edge's high-water mark), so a batch
//! acknowledged just before a crash costs a resend, never a double count.
//!
//! Files are segments named by a 20-digit number in `<data_dir>/spool/`,
//! oldest first. A record holds every frame of one seal, so a seal is spooled
//! whole or not at all:
//!
//! ```text
//! magic "ETS2" | len u32 | crc32 u32 |
//! journal_through u64 | rows_segment u64 | rows_offset u64 | sealed_ms u64 |
//! n_frames u32 | (frame_len u32 | frame) * n_frames
//! ```
//!
//! little-endian, with the CRC over everything after it. `journal_through`
//! names the last journal segment all of whose entries the seal holds, and
//! `(rows_segment, rows_offset)` the journal position before which it holds
//! every conversion and quarantine entry (see [`Through`] and `journal.rs`).
//! Records written before rows-only seals existed (magic `ETS1`, without
//! the rows position) still read. `sealed_ms` is when it was sealed (Unix milliseconds), for
//! the age of the oldest unacknowledged batch. Frames are acknowledged one by
//! one; a segment is deleted once all of its frames are. New records go to a
//! fresh segment on every start, so a segment is never appended to after a
//! crash left it torn. A frame read back for a resend is checked by its own
//! CRC at the aggregator.
//!
//! **Recovery:** a record whose CRC does not match is counted and skipped,
//! and reading resumes at the next magic that starts a record with a good
//! CRC, so the records around it are kept. A record cut short at the end of
//! a segment (a crash during the append) is counted as a torn tail; that
//! segment is truncated before its last good record's end.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::{Buf, BufMut, Bytes};
use edgetally_protocol::BatchFrame;

mod uring;

const MAGIC: [u8; 4] = *b"ETS2";
/// Records without the rows position.
const MAGIC_V1: [u8; 4] = *b"ETS1";
const RECORD_HEADER_LEN: usize = 12;
/// `journal_through`, the rows position, `sealed_ms` and `n_frames` before
/// the frames.
const PAYLOAD_PREFIX_LEN: usize = 36;
/// The same in a version 1 record: `journal_through`, `sealed_ms` and
/// `n_frames`.
const PAYLOAD_PREFIX_LEN_V1: usize = 20;

/// A place in the journal: a segment and a byte offset in it. An entry is
/// before it when it lies in an earlier segment, or earlier in the same one.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct JournalPosition {
    pub segment: u64,
    pub offset: u64,
}

/// What of the journal one spooled seal holds.
///
/// A full seal holds every entry of the segments it rotated away; a
/// rows-only seal holds the conversion rows (and their counts) and the
/// quarantine rows written before a position, and leaves the traffic
/// counters in the tally for a later full seal. A restart deletes the
/// segments at or below the highest `journal`, and replays the others
/// without the rows entries before the highest `rows`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Through {
    /// The last journal segment all of whose entries the seal holds; 0 for
    /// none.
    pub journal: u64,
    /// The position before which the seal holds every rows entry.
    pub rows: JournalPosition,
}

// === impl Through ===

impl Through {
    /// A full seal of every segment up to `journal_through`.
    pub fn all(journal_through: u64) -> Through {
        Through { journal: journal_through, rows: JournalPosition { segment: journal_through + 1, offset: 0 } }
    }

    /// A rows-only seal of the rows entries before `rows`.
    pub fn rows(rows: JournalPosition) -> Through {
        Through { journal: 0, rows }
    }

    fn merge(&mut self, other: Through) {
        self.journal = self.journal.max(other.journal);
        self.rows = self.rows.max(other.rows);
    }
}

/// A segment is closed and a new one started once it is this large, so an
/// acknowledged stretch of the spool is freed in pieces of about this size.
pub(crate) const SEGMENT_BYTES_TARGET: u64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("spool record at {path}:{offset} changed on disk since it was written")]
    Changed { path: String, offset: u64 },
    #[error("spool io_uring setup: {source}")]
    Uring { source: io::Error },
}

/// How the spool writes and syncs its records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SpoolIo {
    /// `pwrite` then `fdatasync`: two system calls per seal.
    #[default]
    Std,
    /// A write linked to an `fdatasync` in one io_uring submission. Measured
    /// no faster (see the README's performance section), so off by default.
    Uring,
}

/// A frame not yet acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub segment: u64,
    /// Where the frame's bytes start in the segment file.
    offset: u64,
    pub frame_len: u32,
    pub epoch: u64,
    pub sequence: u64,
    pub sealed_ms: u64,
}

/// What opening the spool found on disk.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// Frames read back.
    pub frames: u64,
    pub corrupt: u64,
    pub torn: u64,
    /// The highest journal segment and rows position of any readable
    /// record.
    pub through: Through,
}

struct Segment {
    id: u64,
    len: u64,
    /// Records of this segment still in `pending`.
    n_pending: usize,
}

pub struct Spool {
    dir: PathBuf,
    bytes_max: u64,
    /// Live segments, oldest first; the last is the one written to.
    segments: VecDeque<Segment>,
    /// The open file of the last segment, once something was written to it.
    writer: Option<File>,
    /// Writes and syncs through io_uring instead of `pwrite` + `fdatasync`.
    uring: Option<uring::UringWriter>,
    pending: VecDeque<Pending>,
    /// Records acknowledged out of order, by sequence within their epoch;
    /// removed from `pending` once everything before them is acknowledged.
    acked: Vec<(u64, u64)>,
}

// === impl Spool ===

impl Spool {
    /// Opens (creating) the spool in `dir` and reads back every record left
    /// unacknowledged by an earlier run.
    pub fn open(dir: &Path, bytes_max: u64, io: SpoolIo) -> Result<(Spool, Recovery), SpoolError> {
        let io_error = |source| SpoolError::Io { path: dir.display().to_string(), source };
        let uring = match io {
            SpoolIo::Std => None,
            SpoolIo::Uring => Some(uring::UringWriter::new().map_err(|source| SpoolError::Uring { source })?),
        };
        fs::create_dir_all(dir).map_err(io_error)?;
        let mut ids = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_error)? {
            let name = entry.map_err(io_error)?.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name.strip_suffix(".spool").and_then(|id| id.parse::<u64>().ok()) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let mut spool = Spool {
            dir: dir.to_owned(),
            bytes_max,
            segments: VecDeque::new(),
            writer: None,
            uring,
            pending: VecDeque::new(),
            acked: Vec::new(),
        };
        let mut recovery = Recovery::default();
        for &id in &ids {
            spool.recover_segment(id, &mut recovery)?;
        }
        // New records go to a fresh segment.
        let next = ids.last().map_or(1, |last| last + 1);
        spool.segments.push_back(Segment { id: next, len: 0, n_pending: 0 });
        Ok((spool, recovery))
    }

    fn recover_segment(&mut self, id: u64, recovery: &mut Recovery) -> Result<(), SpoolError> {
        let path = self.segment_path(id);
        let io_error = |source| SpoolError::Io { path: path.display().to_string(), source };
        let bytes = fs::read(&path).map_err(io_error)?;
        let scan = scan_records(&bytes);
        recovery.corrupt += scan.corrupt;
        if scan.torn {
            recovery.torn += 1;
            tracing::warn!(path = %path.display(), offset = scan.end, "Spool segment has a torn tail; truncating it.");
        }
        if scan.truncate {
            let file = OpenOptions::new().write(true).open(&path).map_err(io_error)?;
            file.set_len(scan.end as u64).map_err(io_error)?;
            file.sync_all().map_err(io_error)?;
        }
        if scan.corrupt > 0 {
            tracing::error!(path = %path.display(), n_corrupt = scan.corrupt, "Spool segment has corrupt records; they are skipped.");
        }
        let n_pending = scan.frames.len();
        for frame in scan.frames {
            recovery.frames += 1;
            self.pending.push_back(Pending { segment: id, ..frame });
        }
        recovery.through.merge(scan.through);
        if n_pending == 0 {
            fs::remove_file(&path).map_err(io_error)?;
            return Ok(());
        }
        self.segments.push_back(Segment { id, len: scan.end as u64, n_pending });
        Ok(())
    }

    /// Appends the frames of one seal as one record and syncs it to disk.
    pub fn append(&mut self, frames: &[Bytes], through: Through, sealed_ms: u64) -> Result<Vec<Pending>, SpoolError> {
        let current = self.segments.back().expect("the spool always has a current segment");
        if current.len >= SEGMENT_BYTES_TARGET {
            let id = current.id + 1;
            self.writer = None;
            self.segments.push_back(Segment { id, len: 0, n_pending: 0 });
        }
        let segment = self.segments.back_mut().expect("the spool always has a current segment");
        let path = self.dir.join(segment_name(segment.id));
        let io_error = |source| SpoolError::Io { path: path.display().to_string(), source };
        if self.writer.is_none() {
            let file = OpenOptions::new().create(true).write(true).truncate(false).open(&path).map_err(io_error)?;
            // The new file's name must survive a crash too.
            File::open(&self.dir).and_then(|dir| dir.sync_all()).map_err(io_error)?;
            self.writer = Some(file);
        }
        let writer = self.writer.as_ref().expect("opened above");
        let record = encode_record(frames, through, sealed_ms);
        let offset = segment.len;
        let written = match self.uring.as_mut() {
            Some(uring) => uring.write_all_and_sync(writer, offset, &record),
            None => writer.write_all_at(&record, offset).and_then(|()| writer.sync_data()),
        };
        if let Err(source) = written {
            // The file may now end in part of this record; start a new
            // segment so the next append does not follow a torn record.
            self.writer = None;
            let id = segment.id + 1;
            self.segments.push_back(Segment { id, len: 0, n_pending: 0 });
            return Err(io_error(source));
        }
        segment.len += record.len() as u64;
        let Decoded::Record(mut record) = decode_record(&record) else {
            unreachable!("a record just encoded decodes");
        };
        for pending in &mut record.frames {
            pending.segment = segment.id;
            pending.offset += offset;
        }
        segment.n_pending += record.frames.len();
        self.pending.extend(record.frames.iter().copied());
        Ok(record.frames)
    }

    /// Reads a pending frame back.
    pub fn read(&self, pending: &Pending) -> Result<Bytes, SpoolError> {
        let path = self.segment_path(pending.segment);
        let io_error = |source| SpoolError::Io { path: path.display().to_string(), source };
        let file = File::open(&path).map_err(io_error)?;
        let mut frame = vec![0; pending.frame_len as usize];
        file.read_exact_at(&mut frame, pending.offset).map_err(io_error)?;
        if frame_ids(&frame) != (pending.epoch, pending.sequence) {
            return Err(SpoolError::Changed { path: path.display().to_string(), offset: pending.offset });
        }
        Ok(frame.into())
    }

    /// Marks the record `(epoch, sequence)` acknowledged, and deletes every
    /// segment left without unacknowledged records. Returns how many records
    /// left the front of [`Spool::pending`].
    ///
    /// A segment that cannot be deleted is logged and forgotten: a restart
    /// resends its batches, which the aggregator skips.
    pub fn ack(&mut self, epoch: u64, sequence: u64) -> usize {
        if !self.pending.iter().any(|pending| (pending.epoch, pending.sequence) == (epoch, sequence)) {
            return 0;
        }
        let n_before = self.pending.len();
        self.acked.push((epoch, sequence));
        while let Some(front) = self.pending.front() {
            let Some(at) = self.acked.iter().position(|&ids| ids == (front.epoch, front.sequence)) else { break };
            self.acked.swap_remove(at);
            let segment_id = front.segment;
            self.pending.pop_front();
            if let Some(segment) = self.segments.iter_mut().find(|segment| segment.id == segment_id) {
                segment.n_pending -= 1;
            }
        }
        // Every segment but the current one is deleted once drained.
        while self.segments.len() > 1 && self.segments.front().is_some_and(|segment| segment.n_pending == 0) {
            let segment = self.segments.pop_front().expect("checked above");
            let path = self.segment_path(segment.id);
            if let Err(error) = fs::remove_file(&path) {
                tracing::warn!(%error, path = %path.display(), "Could not delete an acknowledged spool segment.");
            }
        }
        n_before - self.pending.len()
    }

    /// Ends the spool at shutdown: when everything was acknowledged, the
    /// segments left (the current one keeps acknowledged records until it
    /// fills) are deleted, so the next start has nothing to resend.
    pub fn close(self) {
        if !self.pending.is_empty() {
            return;
        }
        drop(self.writer);
        for segment in &self.segments {
            let path = self.dir.join(segment_name(segment.id));
            match fs::remove_file(&path) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => {
                    tracing::warn!(%error, path = %path.display(), "Could not delete a drained spool segment.");
                }
                _ => {}
            }
        }
    }

    /// Records not yet acknowledged, oldest first.
    pub fn pending(&self) -> impl ExactSizeIterator<Item = &Pending> {
        self.pending.iter()
    }

    /// Bytes of every live segment.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|segment| segment.len).sum()
    }

    /// True once the spool holds its bound: the uplink stops sealing and
    /// the tally keeps counting in memory.
    pub fn is_full(&self) -> bool {
        self.bytes() >= self.bytes_max
    }

    fn segment_path(&self, id: u64) -> PathBuf {
        self.dir.join(segment_name(id))
    }
}

fn segment_name(id: u64) -> String {
    format!("{id:020}.spool")
}

/// Edge epoch and sequence from a frame header (zeros for a frame too short
/// to have them, which the aggregator refuses anyway).
fn frame_ids(frame: &[u8]) -> (u64, u64) {
    BatchFrame::peek_ids(frame).map_or((0, 0), |(_, epoch, sequence)| (epoch, sequence))
}

fn encode_record(frames: &[Bytes], through: Through, sealed_ms: u64) -> Vec<u8> {
    let payload_len = PAYLOAD_PREFIX_LEN + frames.iter().map(|frame| 4 + frame.len()).sum::<usize>();
    let mut record = Vec::with_capacity(RECORD_HEADER_LEN + payload_len);
    record.put_slice(&MAGIC);
    // A seal's frames are at most a few times FRAME_BYTES_MAX (64 MiB), far
    // below u32::MAX.
    record.put_u32_le(payload_len as u32);
    record.put_u32_le(0);
    record.put_u64_le(through.journal);
    record.put_u64_le(through.rows.segment);
    record.put_u64_le(through.rows.offset);
    record.put_u64_le(sealed_ms);
    record.put_u32_le(frames.len() as u32);
    for frame in frames {
        record.put_u32_le(frame.len() as u32);
        record.put_slice(frame);
    }
    let crc = crc32fast::hash(&record[RECORD_HEADER_LEN..]);
    record[8..12].copy_from_slice(&crc.to_le_bytes());
    record
}

/// One good record; frame offsets are relative to the record's start.
struct Record {
    through: Through,
    frames: Vec<Pending>,
    len: usize,
}

enum Decoded {
    Record(Record),
    /// Fewer bytes than the record announces.
    Short,
    Bad,
}

fn decode_record(bytes: &[u8]) -> Decoded {
    if bytes.len() < RECORD_HEADER_LEN {
        return Decoded::Short;
    }
    let mut header = &bytes[..RECORD_HEADER_LEN];
    let prefix_len = match header[..4].try_into().expect("4 bytes") {
        MAGIC => PAYLOAD_PREFIX_LEN,
        MAGIC_V1 => PAYLOAD_PREFIX_LEN_V1,
        _ => return Decoded::Bad,
    };
    header.advance(4);
    let payload_len = header.get_u32_le() as usize;
    let crc = header.get_u32_le();
    if payload_len < prefix_len {
        return Decoded::Bad;
    }
    let Some(payload) = bytes.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + payload_len) else {
        return Decoded::Short;
    };
    if crc32fast::hash(payload) != crc {
        return Decoded::Bad;
    }
    let mut rest = payload;
    let through = if prefix_len == PAYLOAD_PREFIX_LEN_V1 {
        Through::all(rest.get_u64_le())
    } else {
        let journal = rest.get_u64_le();
        let rows = JournalPosition { segment: rest.get_u64_le(), offset: rest.get_u64_le() };
        Through { journal, rows }
    };
    let sealed_ms = rest.get_u64_le();
    let n_frames = rest.get_u32_le();
    let mut frames = Vec::with_capacity(n_frames.min(1024) as usize);
    for _ in 0..n_frames {
        if rest.remaining() < 4 {
            return Decoded::Bad;
        }
        let frame_len = rest.get_u32_le();
        let Some(frame) = rest.get(..frame_len as usize) else { return Decoded::Bad };
        let (epoch, sequence) = frame_ids(frame);
        let offset = (RECORD_HEADER_LEN + payload_len - rest.remaining()) as u64;
        frames.push(Pending { segment: 0, offset, frame_len, epoch, sequence, sealed_ms });
        rest.advance(frame_len as usize);
    }
    if rest.has_remaining() {
        return Decoded::Bad;
    }
    Decoded::Record(Record { through, frames, len: RECORD_HEADER_LEN + payload_len })
}

struct Scan {
    frames: Vec<Pending>,
    through: Through,
    corrupt: u64,
    /// The last record was cut short.
    torn: bool,
    /// Nothing good follows `end`: the segment is cut back to it.
    truncate: bool,
    /// Where the last good record ends.
    end: usize,
}

/// Reads every good record of a segment's bytes.
fn scan_records(bytes: &[u8]) -> Scan {
    let mut scan =
        Scan { frames: Vec::new(), through: Through::default(), corrupt: 0, torn: false, truncate: false, end: 0 };
    let mut at = 0;
    while at < bytes.len() {
        match decode_record(&bytes[at..]) {
            Decoded::Record(record) => {
                scan.through.merge(record.through);
                scan.frames.extend(
                    record.frames.into_iter().map(|frame| Pending { offset: frame.offset + at as u64, ..frame }),
                );
                at += record.len;
                scan.end = at;
            }
            Decoded::Short if next_record(bytes, at + 1).is_none() => {
                // Nothing good follows: the append of this record was cut
                // short.
                scan.torn = true;
                scan.truncate = true;
                return scan;
            }
            Decoded::Short | Decoded::Bad => {
                scan.corrupt += 1;
                match next_record(bytes, at + 1) {
                    Some(next) => at = next,
                    None => {
                        // The rest is garbage; keep it out of the segment so
                        // it is not scanned again.
                        scan.truncate = true;
                        return scan;
                    }
                }
            }
        }
    }
    scan
}

/// The offset of the next good record at or after `from`.
fn next_record(bytes: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while let Some(found) = bytes.get(at..)?.windows(4).position(|window| window == MAGIC || window == MAGIC_V1) {
        at += found;
        if matches!(decode_record(&bytes[at..]), Decoded::Record { .. }) {
            return Some(at);
        }
        at += 1;
    }
    None
}

#[cfg(test)]
mod tests;
