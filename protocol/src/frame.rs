//! The binary frame that carries one sealed batch from an edge to the
//! aggregator, and the acknowledgement that answers it.
//!
//! A frame is a fixed 56-byte little-endian header followed by its payload:
//! three Arrow IPC streams (rollups, conversions, quarantine), each empty
//! when it has no rows, written one after the other and compressed together
//! as one zstd frame with [`FRAME_DICTIONARY`] (version 3). The header's
//! lengths are the streams' own; version 2 frames carry the streams as they
//! are, and still decode:
//!
//! ```text
//! magic "ETB1" | version u16 | reserved u16 | edge_id u32 | epoch u64 |
//! sequence u64 | n_rollup_rows u32 | n_conversion_rows u32 |
//! n_quarantine_rows u32 | rollups_len u32 | conversions_len u32 |
//! quarantine_len u32 | crc32 u32 | payloads
//! ```
//!
//! The CRC-32 covers the header up to the CRC field and the payload as
//! sent, so a frame torn or altered anywhere is refused before any
//! decompression or Arrow decoding.
//!
//! **Why one compressed payload.** Most frames are the flushes between two
//! rollup seals: a few dozen conversion rows and quarantine rows. As IPC
//! streams with per-buffer compression they cost about 10 KiB, nearly all
//! of it the schemas, the batch metadata and a zstd frame per buffer. One
//! zstd frame over the plain streams, primed with a dictionary that holds
//! those schemas and metadata, ships little but the rows.
//!
//! Before any frame, an edge opens one bidirectional **control stream** and
//! writes a [`Hello`] naming itself and carrying its token; the aggregator
//! answers with a [`HelloAck`] and then sends a [`ConfigSnapshot`] on it at
//! once and after every change. Frames go on streams opened after it.

use bytes::{Buf, BufMut, Bytes};

/// ALPN protocol of the edge-to-aggregator QUIC link; bumped whenever
/// either side could not read the other (version 2: the control stream and
/// its [`Hello`] come first; version 3: compressed frames). An edge offers
/// this one, so an aggregator too old to read its frames refuses the
/// connection and the batches wait in the edge's spool.
pub const ALPN: &[u8] = b"edgetally/3";
/// What an aggregator accepts: edges one version behind ship frames it
/// still reads.
pub const ALPN_ACCEPTED: [&[u8]; 2] = [ALPN, b"edgetally/2"];

pub const FRAME_MAGIC: [u8; 4] = *b"ETB1";
pub const ACK_MAGIC: [u8; 4] = *b"ETA1";
/// Version 3: the payload is compressed with [`FRAME_DICTIONARY`].
pub const FRAME_VERSION: u16 = 3;
/// Version 2: the payload is the three streams as they are.
pub const FRAME_VERSION_PLAIN: u16 = 2;
/// The zstd dictionary of version 3 payloads: plain IPC streams of a few
/// sample rows of each schema ([`frame_dictionary_sample`]), so a frame's
/// schemas and metadata compress to references into it. Both sides must
/// hold the same bytes: a change to it is a new frame version.
pub static FRAME_DICTIONARY: &[u8] = include_bytes!("frame/dictionary.bin");
/// zstd level of frame payloads up to [`FRAME_SMALL_BYTES`]: most frames
/// are a flush's few dozen rows, a few KiB, which the slower level
/// compresses about a tenth tighter in well under a millisecond.
const FRAME_ZSTD_LEVEL_SMALL: i32 = 12;
/// zstd level of larger payloads (a rollup seal of a minute's keys, tens
/// of MiB): zstd's default, fast enough not to hold up the uplink.
const FRAME_ZSTD_LEVEL: i32 = 3;
/// Largest payload compressed at [`FRAME_ZSTD_LEVEL_SMALL`].
const FRAME_SMALL_BYTES: usize = 256 * 1024;
pub const FRAME_HEADER_LEN: usize = 56;
pub const ACK_LEN: usize = 28;
pub const HELLO_MAGIC: [u8; 4] = *b"ETH1";
pub const HELLO_ACK_MAGIC: [u8; 4] = *b"ETK1";
/// Longest edge token: tokens are random strings of 32 to a few dozen bytes.
pub const HELLO_TOKEN_LEN_MAX: usize = 256;
/// The longest [`Hello`] on the wire.
pub const HELLO_LEN_MAX: usize = 10 + HELLO_TOKEN_LEN_MAX;
pub const HELLO_ACK_LEN: usize = 5;
pub const SNAPSHOT_MAGIC: [u8; 4] = *b"ETC1";
pub const SNAPSHOT_HEADER_LEN: usize = 20;
/// The largest configuration snapshot: tens of thousands of campaigns with
/// 2 KiB landing URLs still fit.
pub const SNAPSHOT_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The largest frame the aggregator reads. A 250 ms batch of one busy edge
/// holds at most tens of thousands of rollup keys (a few MiB compressed);
/// 64 MiB bounds the memory one misbehaving edge can make the aggregator
/// allocate per stream.
pub const FRAME_BYTES_MAX: usize = 64 * 1024 * 1024;

const _: () = assert!(FRAME_HEADER_LEN < FRAME_BYTES_MAX);
const _: () = assert!(FRAME_BYTES_MAX <= u32::MAX as usize);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame too short: {len} bytes, header is {FRAME_HEADER_LEN}")]
    TooShort { len: usize },
    #[error("frame too large: {len} bytes, limit is {FRAME_BYTES_MAX}")]
    TooLarge { len: usize },
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported frame version {0}")]
    Version(u16),
    #[error("length mismatch: header announces {announced} payload bytes, frame has {actual}")]
    Length { announced: usize, actual: usize },
    #[error("crc mismatch: header says {expected:#010x}, content is {actual:#010x}")]
    Crc { expected: u32, actual: u32 },
    #[error("bad ack status {0}")]
    AckStatus(u8),
    #[error("hello token longer than {HELLO_TOKEN_LEN_MAX} bytes")]
    TokenTooLong,
    #[error("snapshot of {len} bytes, limit is {SNAPSHOT_BYTES_MAX}")]
    SnapshotTooLarge { len: usize },
    #[error("payload does not decompress: {0}")]
    Decompress(String),
    #[error("payload does not compress: {0}")]
    Compress(String),
}

/// One sealed batch of one edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchFrame {
    pub edge_id: u32,
    /// Bumped each time the edge starts; sequence numbers restart per epoch.
    pub epoch: u64,
    /// Starts at 1 within an epoch and grows by one per sealed batch.
    pub sequence: u64,
    pub n_rollup_rows: u32,
    pub n_conversion_rows: u32,
    pub n_quarantine_rows: u32,
    pub rollups_ipc: Bytes,
    pub conversions_ipc: Bytes,
    pub quarantine_ipc: Bytes,
}

// === impl BatchFrame ===

impl BatchFrame {
    /// Bytes of the three streams, uncompressed.
    pub fn payload_len(&self) -> usize {
        self.rollups_ipc.len() + self.conversions_ipc.len() + self.quarantine_ipc.len()
    }

    /// Encodes a version 3 frame: the streams compressed together.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let plain_len = self.payload_len();
        if plain_len > FRAME_BYTES_MAX {
            return Err(FrameError::TooLarge { len: plain_len });
        }
        let mut plain = Vec::with_capacity(plain_len);
        plain.extend_from_slice(&self.rollups_ipc);
        plain.extend_from_slice(&self.conversions_ipc);
        plain.extend_from_slice(&self.quarantine_ipc);
        let level = if plain_len <= FRAME_SMALL_BYTES { FRAME_ZSTD_LEVEL_SMALL } else { FRAME_ZSTD_LEVEL };
        let payload = zstd::bulk::Compressor::with_dictionary(level, FRAME_DICTIONARY)
            .and_then(|mut compressor| compressor.compress(&plain))
            .map_err(|error| FrameError::Compress(error.to_string()))?;
        let len = FRAME_HEADER_LEN + payload.len();
        if len > FRAME_BYTES_MAX {
            return Err(FrameError::TooLarge { len });
        }
        let mut out = Vec::with_capacity(len);
        self.put_header(&mut out, FRAME_VERSION, &[&payload]);
        out.put_slice(&payload);
        debug_assert_eq!(out.len(), len);
        Ok(out)
    }

    /// Encodes a version 2 frame, the streams as they are, as edges before
    /// compressed frames wrote them: for tests of what still decodes.
    #[doc(hidden)]
    pub fn encode_version_2(&self) -> Result<Vec<u8>, FrameError> {
        let len = FRAME_HEADER_LEN + self.payload_len();
        if len > FRAME_BYTES_MAX {
            return Err(FrameError::TooLarge { len });
        }
        let mut out = Vec::with_capacity(len);
        self.put_header(
            &mut out,
            FRAME_VERSION_PLAIN,
            &[&self.rollups_ipc, &self.conversions_ipc, &self.quarantine_ipc],
        );
        out.put_slice(&self.rollups_ipc);
        out.put_slice(&self.conversions_ipc);
        out.put_slice(&self.quarantine_ipc);
        Ok(out)
    }

    /// Writes the header of `version`, its CRC over it and `payload`.
    fn put_header(&self, out: &mut Vec<u8>, version: u16, payload: &[&[u8]]) {
        out.put_slice(&FRAME_MAGIC);
        out.put_u16_le(version);
        out.put_u16_le(0);
        out.put_u32_le(self.edge_id);
        out.put_u64_le(self.epoch);
        out.put_u64_le(self.sequence);
        out.put_u32_le(self.n_rollup_rows);
        out.put_u32_le(self.n_conversion_rows);
        out.put_u32_le(self.n_quarantine_rows);
        // All fit: their sum is checked against FRAME_BYTES_MAX by the
        // callers.
        out.put_u32_le(self.rollups_ipc.len() as u32);
        out.put_u32_le(self.conversions_ipc.len() as u32);
        out.put_u32_le(self.quarantine_ipc.len() as u32);
        let mut crc = crc32fast::Hasher::new();
        crc.update(out);
        for part in payload {
            crc.update(part);
        }
        out.put_u32_le(crc.finalize());
    }

    /// The `(edge_id, epoch, sequence)` a frame's header states, read without
    /// checking anything else (magic, version, CRC): for naming a frame in an
    /// index or a log line before, or without, decoding it. `None` when the
    /// bytes are too short to hold them.
    pub fn peek_ids(frame: &[u8]) -> Option<(u32, u64, u64)> {
        let mut header = frame.get(8..28)?;
        Some((header.get_u32_le(), header.get_u64_le(), header.get_u64_le()))
    }

    /// Decodes a version 3 or version 2 frame. A version 3 payload is
    /// decompressed into at most the streams' announced length, itself at
    /// most [`FRAME_BYTES_MAX`], so a small frame cannot make the reader
    /// allocate more.
    pub fn decode(frame: Bytes) -> Result<BatchFrame, FrameError> {
        let len = frame.len();
        if len < FRAME_HEADER_LEN {
            return Err(FrameError::TooShort { len });
        }
        if len > FRAME_BYTES_MAX {
            return Err(FrameError::TooLarge { len });
        }
        let mut header = &frame[..FRAME_HEADER_LEN];
        if header.copy_to_bytes(4)[..] != FRAME_MAGIC {
            return Err(FrameError::BadMagic);
        }
        let version = header.get_u16_le();
        if version != FRAME_VERSION && version != FRAME_VERSION_PLAIN {
            return Err(FrameError::Version(version));
        }
        let _reserved = header.get_u16_le();
        let edge_id = header.get_u32_le();
        let epoch = header.get_u64_le();
        let sequence = header.get_u64_le();
        let n_rollup_rows = header.get_u32_le();
        let n_conversion_rows = header.get_u32_le();
        let n_quarantine_rows = header.get_u32_le();
        let rollups_len = header.get_u32_le() as usize;
        let conversions_len = header.get_u32_le() as usize;
        let quarantine_len = header.get_u32_le() as usize;
        let expected = header.get_u32_le();
        let announced = rollups_len + conversions_len + quarantine_len;
        let actual = len - FRAME_HEADER_LEN;
        if version == FRAME_VERSION_PLAIN && announced != actual {
            return Err(FrameError::Length { announced, actual });
        }
        if announced > FRAME_BYTES_MAX {
            return Err(FrameError::TooLarge { len: announced });
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&frame[..FRAME_HEADER_LEN - 4]);
        crc.update(&frame[FRAME_HEADER_LEN..]);
        let actual = crc.finalize();
        if actual != expected {
            return Err(FrameError::Crc { expected, actual });
        }
        let payload = if version == FRAME_VERSION_PLAIN {
            frame.slice(FRAME_HEADER_LEN..)
        } else {
            let plain = zstd::bulk::Decompressor::with_dictionary(FRAME_DICTIONARY)
                .and_then(|mut decompressor| decompressor.decompress(&frame[FRAME_HEADER_LEN..], announced))
                .map_err(|error| FrameError::Decompress(error.to_string()))?;
            if plain.len() != announced {
                return Err(FrameError::Length { announced, actual: plain.len() });
            }
            Bytes::from(plain)
        };
        let conversions_at = rollups_len;
        let quarantine_at = conversions_at + conversions_len;
        Ok(BatchFrame {
            edge_id,
            epoch,
            sequence,
            n_rollup_rows,
            n_conversion_rows,
            n_quarantine_rows,
            rollups_ipc: payload.slice(..conversions_at),
            conversions_ipc: payload.slice(conversions_at..quarantine_at),
            quarantine_ipc: payload.slice(quarantine_at..),
        })
    }
}

/// The bytes [`FRAME_DICTIONARY`] holds: plain IPC streams of a few rows of
/// each schema, as an edge writes them. A test checks the two agree, and
/// `EDGETALLY_WRITE_FRAME_DICTIONARY=1 cargo test -p edgetally-protocol
/// frame_dictionary` writes the file anew (with a new [`FRAME_VERSION`]).
pub fn frame_dictionary_sample() -> Vec<u8> {
    use crate::batch::{
        ConversionRow, QuarantineRow, RollupCounts, RollupKey, conversions_to_batch, encode_ipc_plain,
        quarantine_to_batch, rollups_to_wire_batch,
    };
    use crate::event::EventKind;
    use crate::money::{Currency, Money};
    let minute_ms = 1_798_761_600_000;
    let rollups: Vec<(RollupKey, RollupCounts)> = [(1, 1, ""), (1, 2, "s1"), (7, 3, "s2")]
        .into_iter()
        .map(|(affiliate_id, campaign_id, sub1): (u32, u32, &str)| {
            let key = RollupKey { minute_ms, affiliate_id, campaign_id, sub1: sub1.to_owned() };
            (key, RollupCounts { impressions: 12, clicks: 1, unique_clicks: 1, ..RollupCounts::default() })
        })
        .collect();
    let usd = Currency::parse("USD").expect("USD is a currency");
    let conversions: Vec<ConversionRow> = [EventKind::Lead, EventKind::Sale]
        .into_iter()
        .map(|kind| ConversionRow {
            time_ms: minute_ms + 1_234,
            kind,
            affiliate_id: 7,
            campaign_id: 3,
            sub1: "s2".into(),
            money: (kind == EventKind::Sale).then_some(Money { minor_units: 4_990, currency: usd }),
            order_id: Some("order-1".into()),
            click_id: Some("AQEBAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()),
            event_id: None,
            flag: None,
        })
        .collect();
    let quarantine = [
        QuarantineRow::new(minute_ms, "pixel", "bad_id", "bad affiliate_id: expected a decimal integer", "aff=x&cmp=1"),
        QuarantineRow::new(minute_ms, "events", "invalid_json", "invalid json: Syntax at character 1", ""),
        QuarantineRow::new(minute_ms, "postback", "click_id_forged", "forged click id: signature does not verify", ""),
        QuarantineRow::new(minute_ms, "request", "body_too_large", "body too large: limit is 1048576 bytes", "POST /"),
    ];
    let mut sample = Vec::new();
    for ipc in [
        encode_ipc_plain(&rollups_to_wire_batch(rollups.iter().map(|(key, counts)| (key, counts)))),
        encode_ipc_plain(&conversions_to_batch(&conversions)),
        encode_ipc_plain(&quarantine_to_batch(&quarantine)),
    ] {
        sample.extend_from_slice(&ipc.expect("sample rows encode"));
    }
    sample
}

/// What the aggregator did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckStatus {
    /// Applied now.
    Apply,
    /// At or below the edge's high-water mark: applied before, not again.
    Skip,
    /// Refused as malformed; resending the same bytes cannot succeed.
    Refuse,
}

/// The aggregator's answer to one batch, by sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub edge_id: u32,
    pub epoch: u64,
    pub sequence: u64,
    pub status: AckStatus,
}

// === impl Ack ===

impl Ack {
    pub fn encode(&self) -> [u8; ACK_LEN] {
        let mut out = [0u8; ACK_LEN];
        let mut buf = &mut out[..];
        buf.put_slice(&ACK_MAGIC);
        buf.put_u32_le(self.edge_id);
        buf.put_u64_le(self.epoch);
        buf.put_u64_le(self.sequence);
        buf.put_u8(match self.status {
            AckStatus::Apply => 0,
            AckStatus::Skip => 1,
            AckStatus::Refuse => 2,
        });
        out
    }

    pub fn decode(mut bytes: &[u8]) -> Result<Ack, FrameError> {
        if bytes.len() != ACK_LEN {
            return Err(FrameError::Length { announced: ACK_LEN, actual: bytes.len() });
        }
        if bytes.copy_to_bytes(4)[..] != ACK_MAGIC {
            return Err(FrameError::BadMagic);
        }
        let edge_id = bytes.get_u32_le();
        let epoch = bytes.get_u64_le();
        let sequence = bytes.get_u64_le();
        let status = match bytes.get_u8() {
            0 => AckStatus::Apply,
            1 => AckStatus::Skip,
            2 => AckStatus::Refuse,
            other => return Err(FrameError::AckStatus(other)),
        };
        Ok(Ack { edge_id, epoch, sequence, status })
    }
}

/// The first message of an edge's connection: who it is and its token.
///
/// ```text
/// magic "ETH1" | edge_id u32 | token_len u16 | token
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Hello {
    pub edge_id: u32,
    pub token: Vec<u8>,
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a secret: never in logs.
        f.debug_struct("Hello").field("edge_id", &self.edge_id).field("token", &"<redacted>").finish()
    }
}

// === impl Hello ===

impl Hello {
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        if self.token.len() > HELLO_TOKEN_LEN_MAX {
            return Err(FrameError::TokenTooLong);
        }
        let mut out = Vec::with_capacity(10 + self.token.len());
        out.put_slice(&HELLO_MAGIC);
        out.put_u32_le(self.edge_id);
        out.put_u16_le(self.token.len() as u16);
        out.put_slice(&self.token);
        Ok(out)
    }

    pub fn decode(mut bytes: &[u8]) -> Result<Hello, FrameError> {
        if bytes.len() < 10 {
            return Err(FrameError::TooShort { len: bytes.len() });
        }
        if bytes.copy_to_bytes(4)[..] != HELLO_MAGIC {
            return Err(FrameError::BadMagic);
        }
        let edge_id = bytes.get_u32_le();
        let token_len = bytes.get_u16_le() as usize;
        if token_len > HELLO_TOKEN_LEN_MAX {
            return Err(FrameError::TokenTooLong);
        }
        if bytes.len() != token_len {
            return Err(FrameError::Length { announced: token_len, actual: bytes.len() });
        }
        Ok(Hello { edge_id, token: bytes.to_vec() })
    }
}

/// The aggregator's answer to a [`Hello`]: `magic "ETK1" | accepted u8`.
/// A refused edge's connection is closed right after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloAck {
    pub accepted: bool,
}

// === impl HelloAck ===

impl HelloAck {
    pub fn encode(&self) -> [u8; HELLO_ACK_LEN] {
        let mut out = [0u8; HELLO_ACK_LEN];
        out[..4].copy_from_slice(&HELLO_ACK_MAGIC);
        out[4] = u8::from(self.accepted);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<HelloAck, FrameError> {
        if bytes.len() != HELLO_ACK_LEN {
            return Err(FrameError::Length { announced: HELLO_ACK_LEN, actual: bytes.len() });
        }
        if bytes[..4] != HELLO_ACK_MAGIC {
            return Err(FrameError::BadMagic);
        }
        match bytes[4] {
            0 => Ok(HelloAck { accepted: false }),
            1 => Ok(HelloAck { accepted: true }),
            other => Err(FrameError::AckStatus(other)),
        }
    }
}

/// The aggregator's configuration for its edges (today the campaign
/// snapshot, JSON as `campaigns.rs` reads it), sent on the control stream:
///
/// ```text
/// magic "ETC1" | version u64 | len u32 | crc32 u32 | body
/// ```
///
/// `version` names the content (a hash of it), so an edge can tell a resend
/// of what it has from a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSnapshot {
    pub version: u64,
    pub body: Bytes,
}

/// A decoded [`ConfigSnapshot`] header: the body follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotHeader {
    pub version: u64,
    pub len: usize,
    crc: u32,
}

// === impl ConfigSnapshot ===

impl ConfigSnapshot {
    /// A snapshot of `body`, its version a hash of the content.
    pub fn new(body: Bytes) -> ConfigSnapshot {
        let hash = blake3::hash(&body);
        let version = u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"));
        ConfigSnapshot { version, body }
    }

    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        if self.body.len() > SNAPSHOT_BYTES_MAX {
            return Err(FrameError::SnapshotTooLarge { len: self.body.len() });
        }
        let mut out = Vec::with_capacity(SNAPSHOT_HEADER_LEN + self.body.len());
        out.put_slice(&SNAPSHOT_MAGIC);
        out.put_u64_le(self.version);
        out.put_u32_le(self.body.len() as u32);
        out.put_u32_le(crc32fast::hash(&self.body));
        out.put_slice(&self.body);
        Ok(out)
    }

    pub fn decode_header(header: &[u8; SNAPSHOT_HEADER_LEN]) -> Result<SnapshotHeader, FrameError> {
        if header[..4] != SNAPSHOT_MAGIC {
            return Err(FrameError::BadMagic);
        }
        let mut header = &header[4..];
        let version = header.get_u64_le();
        let len = header.get_u32_le() as usize;
        let crc = header.get_u32_le();
        if len > SNAPSHOT_BYTES_MAX {
            return Err(FrameError::SnapshotTooLarge { len });
        }
        Ok(SnapshotHeader { version, len, crc })
    }

    /// The snapshot of a header and the body read after it.
    pub fn from_parts(header: SnapshotHeader, body: Bytes) -> Result<ConfigSnapshot, FrameError> {
        if body.len() != header.len {
            return Err(FrameError::Length { announced: header.len, actual: body.len() });
        }
        let actual = crc32fast::hash(&body);
        if actual != header.crc {
            return Err(FrameError::Crc { expected: header.crc, actual });
        }
        Ok(ConfigSnapshot { version: header.version, body })
    }
}

#[cfg(test)]
mod tests;
