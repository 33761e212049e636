//! The journal: every change to the tally, written to a memory-mapped file
//! before the request that caused it is answered.
//!
//! The tally holds up to one flush interval of counts in memory; a collector
//! killed (`kill -9`, OOM, a panic) before the seal would lose events it had
//! already answered as accepted. So, under the tally's lock, each change is
//! also copied into a shared file mapping. The bytes are in the kernel's
//! page cache the moment the copy ends and survive the process; they reach
//! the disk with the kernel's writeback (a power loss can lose the last few
//! seconds; the spool, which is synced, cannot). A copy costs tens of
//! nanoseconds, where a `write(2)` per event would cost a system call.
//!
//! Files are fixed-size segments named by a 20-digit number in
//! `<data_dir>/journal/`, zero-filled when created. A record is
//! `len u32 | crc32 u32 | entry` (little-endian, CRC over the entry); a zero
//! length ends a segment's records.
//!
//! **Seal boundary:** when the tally is sealed, the journal is rotated under
//! the same lock, so the sealed batch holds exactly the entries of the
//! segments up to the one rotated away (`through`). The spool record of the
//! batch carries `through`; only once that record is synced are those
//! segments deleted. On start, segments at or below the highest `through`
//! in the spool are deleted (their batch is spooled) and the rest are
//! replayed into the tally. So an entry is either in the spool or replayed,
//! never both and never neither.
//!
//! **Rows-only seals:** conversions ship every flush, the traffic counters
//! only every rollup interval (see `uplink.rs`). A rows-only seal takes the
//! conversion rows with their counts and the quarantine rows out of the
//! tally without rotating the journal; its spool record carries the
//! journal [`JournalPosition`] it was taken at, and once that record is
//! synced a [`Entry::RowsSpooled`] marker with the same position is
//! appended here. The marker outlives the spool record, which may be
//! acknowledged and deleted long before the next full seal releases the
//! segments. On start, the highest position in either is the rows
//! boundary: the *rows entries* (a count of a lead or sale, which carries
//! its row, and a quarantine row) before it are skipped, and everything
//! else is replayed.
//!
//! **Hot path:** creating a segment (a file, its blocks, a directory sync,
//! the mapping, the page faults) takes milliseconds, which must not happen
//! under the tally's lock. The uplink prepares the next segment after every
//! seal, outside the lock ([`Tally::prepare_journal`]): the file is written
//! full of zeros and mapped with its pages populated, then handed over as the
//! spare. An append only falls back to creating a segment itself when no
//! spare is ready.
//!
//! **Bound:** at most `bytes_max` of segments. Past it, events are still
//! accepted and counted but no longer journaled (a crash would lose them);
//! they are counted, and `/readyz` reports it so a load balancer moves
//! traffic away. That only happens when the spool is full too, because the
//! journal is released with every spooled seal.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use bytes::{Buf, BufMut};
use edgetally_protocol::{ConversionRow, Currency, EventKind, Flag, Money, QuarantineRow, RollupKey};
use memmap2::MmapMut;

use crate::spool::{JournalPosition, Through};

const RECORD_HEADER_LEN: usize = 8;

/// Default size of one segment: about 30,000 events, a flush interval's
/// worth at 100,000 events/s. Every seal starts a new segment and the next
/// one is prepared (its pages populated) off the request path, so a small
/// segment keeps that background work small; a busier interval rolls into
/// a segment created on the spot.
pub(crate) const SEGMENT_BYTES_DEFAULT: usize = 2 * 1024 * 1024;
/// Default bound of all segments.
pub const JOURNAL_BYTES_MAX_DEFAULT: u64 = 1024 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io { path: String, source: io::Error },
}

/// One change to the tally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// An event counted under `key`, as clean or, with a `flag`, set
    /// apart; a conversion also adds its row (which carries the same flag).
    Count {
        key: RollupKey,
        kind: EventKind,
        unique: bool,
        flag: Option<Flag>,
        conversion: Option<ConversionRow>,
    },
    /// A repeat counted only as a duplicate of `key`.
    Duplicate {
        key: RollupKey,
    },
    Quarantine(QuarantineRow),
    /// The rows entries before this position are spooled.
    RowsSpooled(JournalPosition),
}

// === impl Entry ===

impl Entry {
    /// Whether a rows-only seal takes this entry: a count that carries a
    /// conversion row (the tally keeps its counts with the row) or a
    /// quarantine row. A conversion refused as a duplicate is only a
    /// traffic counter.
    pub(crate) fn is_rows(&self) -> bool {
        match self {
            Entry::Count { conversion, .. } => conversion.is_some(),
            Entry::Quarantine(_) => true,
            Entry::Duplicate { .. } | Entry::RowsSpooled(_) => false,
        }
    }

    /// The entry as the tally would have written it.
    pub(crate) fn as_entry_ref(&self) -> EntryRef<'_> {
        match self {
            Entry::Count { key, kind, unique, flag, conversion } => {
                EntryRef::Count { key, kind: *kind, unique: *unique, flag: *flag, conversion: conversion.as_ref() }
            }
            Entry::Duplicate { key } => EntryRef::Duplicate { key },
            Entry::Quarantine(row) => EntryRef::Quarantine(row),
            Entry::RowsSpooled(position) => EntryRef::RowsSpooled(*position),
        }
    }
}

/// An [`Entry`] by reference, as the tally writes it.
pub(crate) enum EntryRef<'a> {
    Count {
        key: &'a RollupKey,
        kind: EventKind,
        unique: bool,
        flag: Option<Flag>,
        conversion: Option<&'a ConversionRow>,
    },
    Duplicate {
        key: &'a RollupKey,
    },
    Quarantine(&'a QuarantineRow),
    RowsSpooled(JournalPosition),
}

/// What opening the journal found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct JournalRecovery {
    /// Entries read back to replay into the tally.
    pub(crate) replayed: u64,
    /// Records whose CRC matched but whose entry could not be read.
    pub(crate) unreadable: u64,
    /// Segments deleted because the spool holds their batch.
    pub(crate) released: u64,
    /// Rows entries not replayed because a rows-only seal spooled them.
    pub(crate) rows_spooled: u64,
}

struct Active {
    id: u64,
    map: MmapMut,
    at: usize,
}

pub(crate) struct Journal {
    dir: PathBuf,
    segment_bytes: usize,
    bytes_max: u64,
    /// Segments on disk, oldest first (the active one last).
    live: VecDeque<u64>,
    active: Option<Active>,
    /// A prepared segment, not yet in `live`.
    spare: Option<Active>,
    /// The id handed out by [`Journal::reserve_spare`] and not yet
    /// installed.
    reserved: Option<u64>,
    next_id: u64,
    /// Set when a segment could not be created; cleared at the next
    /// rotation, so a failing disk costs one attempt per seal, not per event.
    failed: bool,
    scratch: Vec<u8>,
}

// === impl Journal ===

impl Journal {
    /// Opens the journal in `dir`: deletes the segments whose batches the
    /// spool holds (at or below `spooled.journal`) and reads back the
    /// entries of the others for the tally to replay, but for the rows
    /// entries before the rows boundary (the later of `spooled.rows` and
    /// the journal's own markers).
    pub(crate) fn open(
        dir: &Path,
        segment_bytes: usize,
        bytes_max: u64,
        spooled: Through,
    ) -> Result<(Journal, Vec<Entry>, JournalRecovery), JournalError> {
        let spooled_through = spooled.journal;
        let io_error = |path: &Path, source| JournalError::Io { path: path.display().to_string(), source };
        fs::create_dir_all(dir).map_err(|source| io_error(dir, source))?;
        let mut ids = Vec::new();
        for entry in fs::read_dir(dir).map_err(|source| io_error(dir, source))? {
            let name = entry.map_err(|source| io_error(dir, source))?.file_name();
            if let Some(id) = name.to_string_lossy().strip_suffix(".journal").and_then(|id| id.parse::<u64>().ok()) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let mut recovery = JournalRecovery::default();
        let mut read = Vec::new();
        let mut rows_boundary = spooled.rows;
        let mut live = VecDeque::new();
        for &id in &ids {
            let path = dir.join(segment_name(id));
            if id <= spooled_through {
                fs::remove_file(&path).map_err(|source| io_error(&path, source))?;
                recovery.released += 1;
                continue;
            }
            let bytes = fs::read(&path).map_err(|source| io_error(&path, source))?;
            for (offset, payload) in records(&bytes) {
                match decode_entry(payload) {
                    Some(Entry::RowsSpooled(position)) => rows_boundary = rows_boundary.max(position),
                    Some(entry) => read.push((JournalPosition { segment: id, offset: offset as u64 }, entry)),
                    None => {
                        tracing::error!(path = %path.display(), "Journal entry unreadable; skipped.");
                        recovery.unreadable += 1;
                    }
                }
            }
            live.push_back(id);
        }
        let mut entries = Vec::with_capacity(read.len());
        for (position, entry) in read {
            if position < rows_boundary && entry.is_rows() {
                recovery.rows_spooled += 1;
            } else {
                entries.push(entry);
                recovery.replayed += 1;
            }
        }
        let next_id = ids.last().map_or(1, |last| last + 1).max(spooled_through + 1);
        let journal = Journal {
            dir: dir.to_owned(),
            segment_bytes: segment_bytes.max(64 * 1024),
            bytes_max,
            live,
            active: None,
            spare: None,
            reserved: None,
            next_id,
            failed: false,
            scratch: Vec::with_capacity(2048),
        };
        Ok((journal, entries, recovery))
    }

    /// Writes one entry; false when it could not be (the bound is reached or
    /// a segment could not be created).
    pub(crate) fn append(&mut self, entry: EntryRef<'_>) -> bool {
        self.scratch.clear();
        self.scratch.put_u64_le(0);
        encode_entry(&mut self.scratch, &entry);
        let payload_len = self.scratch.len() - RECORD_HEADER_LEN;
        let crc = crc32fast::hash(&self.scratch[RECORD_HEADER_LEN..]);
        // Entries are a few KiB at most (bounded strings).
        self.scratch[..4].copy_from_slice(&(payload_len as u32).to_le_bytes());
        self.scratch[4..8].copy_from_slice(&crc.to_le_bytes());
        let len = self.scratch.len();
        let fits = self.active.as_ref().is_some_and(|active| active.at + len <= active.map.len());
        if !fits && !self.open_segment(len) {
            return false;
        }
        let active = self.active.as_mut().expect("a segment with room was opened above");
        active.map[active.at..active.at + len].copy_from_slice(&self.scratch);
        active.at += len;
        true
    }

    fn open_segment(&mut self, len: usize) -> bool {
        if self.failed || len > self.segment_bytes {
            return false;
        }
        if (self.live.len() as u64 + 1) * self.segment_bytes as u64 > self.bytes_max {
            return false;
        }
        // Segment ids must grow in the order segments are written, or a
        // seal's `through` would not cover what it holds.
        if let Some(spare) = self.spare.take()
            && self.live.back().is_none_or(|&last| spare.id > last)
        {
            self.live.push_back(spare.id);
            self.active = Some(spare);
            return true;
        }
        let id = self.next_id;
        let path = self.dir.join(segment_name(id));
        match map_segment(&path, self.segment_bytes, false) {
            Ok(map) => {
                self.next_id += 1;
                self.live.push_back(id);
                self.active = Some(Active { id, map, at: 0 });
                true
            }
            Err(error) => {
                tracing::error!(%error, path = %path.display(), "Could not create a journal segment; events are not journaled until the next seal.");
                self.failed = true;
                self.active = None;
                false
            }
        }
    }

    /// Ends the seal's stretch of the journal: every entry written so far is
    /// in segments at or below the returned id, and later entries go above.
    pub(crate) fn rotate(&mut self) -> u64 {
        self.failed = false;
        match self.active.take() {
            Some(active) if active.at == 0 => {
                let through = active.id - 1;
                self.active = Some(active);
                through
            }
            Some(active) => active.id,
            None => self.next_id - 1,
        }
    }

    /// Where the next entry goes, or somewhere between the last entry
    /// written and it: every entry written so far is before it, and every
    /// later one at or after it.
    pub(crate) fn position(&self) -> JournalPosition {
        match (&self.active, self.live.back()) {
            (Some(active), _) => JournalPosition { segment: active.id, offset: active.at as u64 },
            // The last segment was rotated away; later segments have
            // higher ids.
            (None, Some(&last)) => JournalPosition { segment: last + 1, offset: 0 },
            // Nothing on disk to skip.
            (None, None) => JournalPosition::default(),
        }
    }

    /// Picks the id of the next spare segment, if one is wanted; the caller
    /// creates it with [`prepare_segment`] outside the lock and hands it to
    /// [`Journal::install_spare`].
    pub(crate) fn reserve_spare(&mut self) -> Option<(u64, PathBuf, usize)> {
        if self.spare.is_some() || self.reserved.is_some() {
            return None;
        }
        if (self.live.len() as u64 + 1) * self.segment_bytes as u64 > self.bytes_max {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.reserved = Some(id);
        Some((id, self.dir.join(segment_name(id)), self.segment_bytes))
    }

    /// Takes a prepared segment as the spare; returns its path when it came
    /// too late to be used (a segment with a higher id was created inline
    /// meanwhile), for the caller to delete.
    pub(crate) fn install_spare(&mut self, id: u64, map: Option<MmapMut>) -> Option<PathBuf> {
        self.reserved = None;
        let map = map?;
        if self.live.back().is_some_and(|&last| last > id) {
            return Some(self.dir.join(segment_name(id)));
        }
        self.spare = Some(Active { id, map, at: 0 });
        None
    }

    /// Forgets the segments at or below `through` and returns their paths,
    /// for the caller to delete outside the tally's lock.
    pub(crate) fn release(&mut self, through: u64) -> Vec<PathBuf> {
        let mut paths = Vec::new();
        while let Some(&id) = self.live.front() {
            if id > through || self.active.as_ref().is_some_and(|active| active.id == id) {
                break;
            }
            self.live.pop_front();
            paths.push(self.dir.join(segment_name(id)));
        }
        paths
    }

    /// Bytes of the segments on disk.
    pub(crate) fn bytes(&self) -> u64 {
        self.live.len() as u64 * self.segment_bytes as u64
    }
}

/// Creates a segment and maps it with its pages populated, so appends to it
/// take no page faults, and syncs the directory so its name survives a crash
/// of the host.
pub(crate) fn prepare_segment(path: &Path, segment_bytes: usize) -> io::Result<MmapMut> {
    let map = map_segment(path, segment_bytes, true)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(map)
}

/// Creates a zero-filled (sparse) segment file and maps it shared. Only the
/// pages written to take disk blocks.
#[allow(unsafe_code)]
fn map_segment(path: &Path, segment_bytes: usize, populate: bool) -> io::Result<MmapMut> {
    let file = OpenOptions::new().read(true).write(true).create_new(true).open(path)?;
    file.set_len(segment_bytes as u64)?;
    // SAFETY: a mapping is undefined behaviour to read or write if another
    // process truncates or rewrites the file meanwhile. The file was just
    // created here (`create_new`) in the collector's data directory, which
    // the collector holds an exclusive lock on for its whole life (see
    // `lock_data_dir` in lib.rs), and it is never truncated while mapped: it is
    // only deleted (which keeps the mapping valid) after the mapping is
    // dropped.
    let mut options = memmap2::MmapOptions::new();
    if populate {
        options.populate();
    }
    unsafe { options.map_mut(&file) }
}

/// The journal's reader as a start after a crash runs it, on `bytes` as the
/// one segment in the empty directory `dir`; for `fuzz/fuzz_targets/journal.rs`.
/// Panics where a property fails: every entry read back encodes to a record
/// that reads back the same; a second start finds the same entries (reading
/// changes nothing); the reopened journal still appends. Returns the
/// number of entries read.
#[doc(hidden)]
pub fn fuzz_segment(dir: &Path, bytes: &[u8]) -> usize {
    fs::write(dir.join(segment_name(1)), bytes).expect("write the segment");
    let (journal, entries, recovery) =
        Journal::open(dir, 64 * 1024, u64::MAX, Through::default()).expect("a directory with one segment opens");
    drop(journal);
    let decoded: Vec<(JournalPosition, Option<Entry>)> = records(bytes)
        .map(|(offset, payload)| (JournalPosition { segment: 1, offset: offset as u64 }, decode_entry(payload)))
        .collect();
    let boundary = decoded
        .iter()
        .filter_map(|(_, entry)| match entry {
            Some(Entry::RowsSpooled(position)) => Some(*position),
            _ => None,
        })
        .max()
        .unwrap_or_default();
    let replayed: Vec<Entry> = decoded
        .iter()
        .filter_map(|(position, entry)| entry.clone().map(|entry| (position, entry)))
        .filter(|(position, entry)| {
            let spooled = **position < boundary && entry.is_rows();
            !matches!(entry, Entry::RowsSpooled(_)) && !spooled
        })
        .map(|(_, entry)| entry)
        .collect();
    assert_eq!(recovery.unreadable as usize, decoded.iter().filter(|(_, entry)| entry.is_none()).count());
    assert_eq!(entries, replayed, "markers and the rows entries before them are not replayed");
    let mut encoded = Vec::new();
    for entry in decoded.iter().filter_map(|(_, entry)| entry.as_ref()) {
        encoded.clear();
        encode_entry(&mut encoded, &entry.as_entry_ref());
        assert_eq!(decode_entry(&encoded).as_ref(), Some(entry), "an entry survives its own round trip");
    }
    let (mut journal, again, _) = Journal::open(dir, 64 * 1024, u64::MAX, Through::default()).expect("reopens");
    assert_eq!(again, entries, "a second start reads the same entries");
    let key = RollupKey { minute_ms: 60_000, affiliate_id: 1, campaign_id: 2, sub1: String::new() };
    assert!(journal.append(EntryRef::Duplicate { key: &key }), "the reopened journal appends");
    drop(journal);
    let (_, after, _) = Journal::open(dir, 64 * 1024, u64::MAX, Through::default()).expect("reopens after an append");
    assert_eq!(after.len(), entries.len() + 1);
    assert_eq!(after.last(), Some(&Entry::Duplicate { key }));
    entries.len()
}

/// A segment of a few records of each kind followed by the zeros that end
/// it, as a journal writes them: the seed of the journal fuzz target.
#[doc(hidden)]
pub fn fuzz_seed_segment() -> Vec<u8> {
    let key = RollupKey { minute_ms: 1_795_514_400_000, affiliate_id: 7, campaign_id: 9, sub1: "fb".into() };
    let sale = ConversionRow {
        time_ms: 1_795_514_401_234,
        kind: EventKind::Sale,
        affiliate_id: 7,
        campaign_id: 9,
        sub1: "fb".into(),
        money: Currency::parse("BHD").ok().map(|currency| Money { minor_units: 12_345, currency }),
        order_id: Some("o-1".into()),
        click_id: None,
        event_id: Some("e-1".into()),
        flag: None,
    };
    let held = ConversionRow { order_id: Some("o-2".into()), flag: Some(Flag::NoClickId), ..sale.clone() };
    let quarantine = QuarantineRow::new(1_795_514_400_000, "pixel", "bad_id", "bad affiliate_id", "aff=x");
    let mut segment = Vec::new();
    let mut payload = Vec::new();
    let (mut n_records, mut third_end) = (0, 0);
    for entry in [
        EntryRef::Count { key: &key, kind: EventKind::Impression, unique: false, flag: None, conversion: None },
        EntryRef::Count { key: &key, kind: EventKind::Click, unique: true, flag: None, conversion: None },
        EntryRef::Count { key: &key, kind: EventKind::Sale, unique: false, flag: None, conversion: Some(&sale) },
        EntryRef::Count {
            key: &key,
            kind: EventKind::Click,
            unique: false,
            flag: Some(Flag::BotUserAgent),
            conversion: None,
        },
        EntryRef::Count { key: &key, kind: EventKind::Sale, unique: false, flag: held.flag, conversion: Some(&held) },
        EntryRef::Duplicate { key: &key },
        EntryRef::Quarantine(&quarantine),
        // A rows-only seal spooled the first sale (the third record) and
        // nothing after it.
        EntryRef::RowsSpooled(JournalPosition { segment: 1, offset: 0 }),
    ] {
        let entry = match entry {
            EntryRef::RowsSpooled(_) => EntryRef::RowsSpooled(JournalPosition { segment: 1, offset: third_end }),
            entry => entry,
        };
        payload.clear();
        encode_entry(&mut payload, &entry);
        segment.put_u32_le(payload.len() as u32);
        segment.put_u32_le(crc32fast::hash(&payload));
        segment.extend_from_slice(&payload);
        n_records += 1;
        if n_records == 3 {
            third_end = segment.len() as u64;
        }
    }
    segment.resize(segment.len() + 64, 0);
    segment
}

fn segment_name(id: u64) -> String {
    format!("{id:020}.journal")
}

/// The payloads of a segment's good records, up to the first zero length or
/// bad CRC (a record a crash cut short).
/// Each comes with its record's offset in the segment.
fn records(bytes: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let mut header = bytes.get(at..at + RECORD_HEADER_LEN)?;
        let len = header.get_u32_le() as usize;
        let crc = header.get_u32_le();
        if len == 0 {
            return None;
        }
        let payload = bytes.get(at + RECORD_HEADER_LEN..at + RECORD_HEADER_LEN + len)?;
        if crc32fast::hash(payload) != crc {
            return None;
        }
        let offset = at;
        at += RECORD_HEADER_LEN + len;
        Some((offset, payload))
    })
}

const TAG_COUNT: u8 = 1;
const TAG_DUPLICATE: u8 = 2;
const TAG_QUARANTINE: u8 = 3;
/// A count with a fraud flag: the same as [`TAG_COUNT`] with the flag's
/// index after `unique`. Unflagged counts keep the older tag, so a journal
/// written before flags existed still replays.
const TAG_COUNT_FLAGGED: u8 = 4;
const TAG_ROWS_SPOOLED: u8 = 5;

fn encode_entry(out: &mut Vec<u8>, entry: &EntryRef<'_>) {
    match entry {
        EntryRef::Count { key, kind, unique, flag, conversion } => {
            out.put_u8(if flag.is_some() { TAG_COUNT_FLAGGED } else { TAG_COUNT });
            put_key(out, key);
            out.put_u8(*kind as u8);
            out.put_u8(u8::from(*unique));
            if let Some(flag) = flag {
                out.put_u8(flag.index() as u8);
            }
            match conversion {
                None => out.put_u8(0),
                Some(row) => {
                    out.put_u8(1);
                    put_conversion(out, row);
                }
            }
        }
        EntryRef::Duplicate { key } => {
            out.put_u8(TAG_DUPLICATE);
            put_key(out, key);
        }
        EntryRef::Quarantine(row) => {
            out.put_u8(TAG_QUARANTINE);
            out.put_i64_le(row.time_ms);
            for text in [&row.source, &row.reason, &row.detail, &row.input] {
                put_str(out, text);
            }
        }
        EntryRef::RowsSpooled(position) => {
            out.put_u8(TAG_ROWS_SPOOLED);
            out.put_u64_le(position.segment);
            out.put_u64_le(position.offset);
        }
    }
}

fn decode_entry(mut bytes: &[u8]) -> Option<Entry> {
    let entry = match get_u8(&mut bytes)? {
        tag @ (TAG_COUNT | TAG_COUNT_FLAGGED) => {
            let key = get_key(&mut bytes)?;
            let kind = *EventKind::ALL.get(get_u8(&mut bytes)? as usize)?;
            let unique = get_u8(&mut bytes)? == 1;
            let flag = match tag {
                TAG_COUNT_FLAGGED => Some(*Flag::ALL.get(get_u8(&mut bytes)? as usize)?),
                _ => None,
            };
            let conversion = match get_u8(&mut bytes)? {
                0 => None,
                1 => Some(ConversionRow { flag, ..get_conversion(&mut bytes)? }),
                _ => return None,
            };
            Entry::Count { key, kind, unique, flag, conversion }
        }
        TAG_DUPLICATE => Entry::Duplicate { key: get_key(&mut bytes)? },
        TAG_ROWS_SPOOLED => {
            Entry::RowsSpooled(JournalPosition { segment: get_u64(&mut bytes)?, offset: get_u64(&mut bytes)? })
        }
        TAG_QUARANTINE => {
            let time_ms = get_i64(&mut bytes)?;
            Entry::Quarantine(QuarantineRow {
                time_ms,
                source: get_str(&mut bytes)?,
                reason: get_str(&mut bytes)?,
                detail: get_str(&mut bytes)?,
                input: get_str(&mut bytes)?,
            })
        }
        _ => return None,
    };
    bytes.is_empty().then_some(entry)
}

fn put_key(out: &mut Vec<u8>, key: &RollupKey) {
    out.put_i64_le(key.minute_ms);
    out.put_u32_le(key.affiliate_id);
    out.put_u32_le(key.campaign_id);
    put_str(out, &key.sub1);
}

fn get_key(bytes: &mut &[u8]) -> Option<RollupKey> {
    Some(RollupKey {
        minute_ms: get_i64(bytes)?,
        affiliate_id: get_u32(bytes)?,
        campaign_id: get_u32(bytes)?,
        sub1: get_str(bytes)?,
    })
}

fn put_conversion(out: &mut Vec<u8>, row: &ConversionRow) {
    out.put_i64_le(row.time_ms);
    out.put_u8(row.kind as u8);
    out.put_u32_le(row.affiliate_id);
    out.put_u32_le(row.campaign_id);
    put_str(out, &row.sub1);
    match &row.money {
        None => out.put_u8(0),
        Some(money) => {
            out.put_u8(1);
            out.put_i64_le(money.minor_units);
            out.put_slice(money.currency.code().as_bytes());
        }
    }
    for text in [&row.order_id, &row.click_id, &row.event_id] {
        match text {
            None => out.put_u8(0),
            Some(text) => {
                out.put_u8(1);
                put_str(out, text);
            }
        }
    }
}

fn get_conversion(bytes: &mut &[u8]) -> Option<ConversionRow> {
    let time_ms = get_i64(bytes)?;
    let kind = *EventKind::ALL.get(get_u8(bytes)? as usize)?;
    let affiliate_id = get_u32(bytes)?;
    let campaign_id = get_u32(bytes)?;
    let sub1 = get_str(bytes)?;
    let money = match get_u8(bytes)? {
        0 => None,
        1 => {
            let minor_units = get_i64(bytes)?;
            let code = bytes.get(..3)?;
            let currency = Currency::parse(std::str::from_utf8(code).ok()?).ok()?;
            bytes.advance(3);
            Some(Money { minor_units, currency })
        }
        _ => return None,
    };
    let mut optional = || match get_u8(bytes)? {
        0 => Some(None),
        1 => get_str(bytes).map(Some),
        _ => None,
    };
    let order_id = optional()?;
    let click_id = optional()?;
    let event_id = optional()?;
    Some(ConversionRow {
        time_ms,
        kind,
        affiliate_id,
        campaign_id,
        sub1,
        money,
        order_id,
        click_id,
        event_id,
        flag: None,
    })
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    // Every string the tally holds is bounded well below 4 GiB.
    out.put_u32_le(text.len() as u32);
    out.put_slice(text.as_bytes());
}

fn get_str(bytes: &mut &[u8]) -> Option<String> {
    let len = get_u32(bytes)? as usize;
    let text = std::str::from_utf8(bytes.get(..len)?).ok()?.to_owned();
    bytes.advance(len);
    Some(text)
}

fn get_u8(bytes: &mut &[u8]) -> Option<u8> {
    (bytes.remaining() >= 1).then(|| bytes.get_u8())
}

fn get_u32(bytes: &mut &[u8]) -> Option<u32> {
    (bytes.remaining() >= 4).then(|| bytes.get_u32_le())
}

fn get_u64(bytes: &mut &[u8]) -> Option<u64> {
    (bytes.remaining() >= 8).then(|| bytes.get_u64_le())
}

fn get_i64(bytes: &mut &[u8]) -> Option<i64> {
    (bytes.remaining() >= 8).then(|| bytes.get_i64_le())
}

#[cfg(test)]
mod tests;
