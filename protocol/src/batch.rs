//! What an edge ships: per-minute rollup rows and conversion rows, their
//! Arrow schemas, and their encoding as compressed Arrow IPC streams.
//!
//! Rollups are keyed by `(minute, affiliate_id, campaign_id, sub1)` and carry
//! counters, so their volume grows with keys rather than events.
//! Conversions are few and carry money, so they ship one row each.

use std::io::Cursor;
use std::sync::{Arc, LazyLock};

use arrow_array::builder::{
    Int64Builder, StringBuilder, StringDictionaryBuilder, TimestampMillisecondBuilder, UInt32Builder, UInt64Builder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, TimestampMillisecondType, UInt32Type, UInt64Type};
use arrow_array::{Array, ArrayRef, PrimitiveArray, RecordBatch, StringArray, UInt64Array};
use arrow_ipc::CompressionType;
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::{IpcWriteOptions, StreamWriter};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::event::{Event, EventKind};
use crate::fraud::{Flag, N_FLAGS};
use crate::money::{Currency, Money};

/// The key of a rollup row.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RollupKey {
    /// Start of the minute, Unix milliseconds UTC.
    pub minute_ms: i64,
    pub affiliate_id: u32,
    pub campaign_id: u32,
    /// Empty when the event carried no sub1.
    pub sub1: String,
}

/// Counters of one rollup row. Leads and sales are counted here and also
/// shipped as [`ConversionRow`]s, which carry their money. `duplicates`
/// counts events refused as repeats of one already counted, so they can be
/// watched without being paid. `unique_clicks` counts the clicks that were
/// not a repeat of the same visitor on the same affiliate and campaign
/// within the edge's uniqueness window. `flagged` counts, per [`Flag`],
/// accepted events a fraud rule flagged; they are in no other counter, so
/// the kind counters are clean traffic only (see `fraud.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RollupCounts {
    pub impressions: u64,
    pub clicks: u64,
    pub unique_clicks: u64,
    pub leads: u64,
    pub sales: u64,
    pub duplicates: u64,
    /// In [`Flag::ALL`] order.
    pub flagged: [u64; N_FLAGS],
}

/// How many counters a rollup row has: six, then one per flag.
pub const N_COUNTERS: usize = 6 + N_FLAGS;

// === impl RollupCounts ===

impl RollupCounts {
    /// Counter column names, in schema order and in the order of
    /// [`RollupCounts::values`]; the flagged ones are [`Flag::COLUMNS`].
    pub const COLUMNS: [&'static str; N_COUNTERS] = [
        "impressions",
        "clicks",
        "unique_clicks",
        "leads",
        "sales",
        "duplicates",
        "flagged_bot_user_agent",
        "flagged_click_flood",
        "flagged_fast_conversion",
        "flagged_no_click_id",
        "flagged_over_daily_cap",
    ];

    pub fn values(&self) -> [u64; N_COUNTERS] {
        let [bot, flood, fast, no_click, over_cap] = self.flagged;
        [
            self.impressions,
            self.clicks,
            self.unique_clicks,
            self.leads,
            self.sales,
            self.duplicates,
            bot,
            flood,
            fast,
            no_click,
            over_cap,
        ]
    }

    pub fn from_values(values: [u64; N_COUNTERS]) -> RollupCounts {
        let [impressions, clicks, unique_clicks, leads, sales, duplicates, bot, flood, fast, no_click, over_cap] =
            values;
        RollupCounts {
            impressions,
            clicks,
            unique_clicks,
            leads,
            sales,
            duplicates,
            flagged: [bot, flood, fast, no_click, over_cap],
        }
    }

    pub fn count(&mut self, kind: EventKind) {
        match kind {
            EventKind::Impression => self.impressions += 1,
            EventKind::Click => self.clicks += 1,
            EventKind::Lead => self.leads += 1,
            EventKind::Sale => self.sales += 1,
        }
    }

    /// Counts an event `flag` set apart, whatever its kind.
    pub fn count_flagged(&mut self, flag: Flag) {
        let counter = &mut self.flagged[flag.index()];
        *counter = counter.saturating_add(1);
    }

    /// Events flagged by any rule.
    pub fn n_flagged(&self) -> u64 {
        self.flagged.iter().fold(0u64, |sum, n| sum.saturating_add(*n))
    }

    /// Adds another row's counters. Counters are u64 and saturate: reaching
    /// the bound would take centuries of traffic on one key.
    pub fn merge(&mut self, other: &RollupCounts) {
        let mut values = self.values();
        for (value, other) in values.iter_mut().zip(other.values()) {
            *value = value.saturating_add(other);
        }
        *self = RollupCounts::from_values(values);
    }
}

/// Input an edge refused, kept for review with its reason. Raw visitor IPs
/// are never part of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineRow {
    /// Receive time, Unix milliseconds UTC.
    pub time_ms: i64,
    /// Where it came in: `pixel`, `click`, `postback`, `conversion_pixel`,
    /// `events`, or `request` for a request refused before any event was
    /// read from it (its input is `METHOD target`).
    pub source: String,
    /// The bounded rejection reason, as in the edge's metrics.
    pub reason: String,
    /// The full rejection message.
    pub detail: String,
    /// The request's query string, at most [`QUARANTINE_INPUT_LEN_MAX`]
    /// bytes; empty for posted JSON items, whose text the parser consumed.
    pub input: String,
}

/// Longest quarantined input kept, in bytes: enough for any real pixel or
/// postback query, small enough that a flood of junk stays cheap to ship.
pub const QUARANTINE_INPUT_LEN_MAX: usize = 1024;
/// Longest rejection message kept, in bytes.
pub const QUARANTINE_DETAIL_LEN_MAX: usize = 256;

// === impl QuarantineRow ===

impl QuarantineRow {
    /// Builds a row, truncating text to its bound on a character boundary.
    pub fn new(time_ms: i64, source: &str, reason: &str, detail: &str, input: &str) -> QuarantineRow {
        QuarantineRow {
            time_ms,
            source: truncate(source, 32).to_owned(),
            reason: truncate(reason, 64).to_owned(),
            detail: truncate(detail, QUARANTINE_DETAIL_LEN_MAX).to_owned(),
            input: truncate(input, QUARANTINE_INPUT_LEN_MAX).to_owned(),
        }
    }
}

fn truncate(text: &str, len_max: usize) -> &str {
    if text.len() <= len_max {
        return text;
    }
    let mut end = len_max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// One conversion as shipped by an edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversionRow {
    pub time_ms: i64,
    pub kind: EventKind,
    pub affiliate_id: u32,
    pub campaign_id: u32,
    pub sub1: String,
    pub money: Option<Money>,
    pub order_id: Option<String>,
    pub click_id: Option<String>,
    pub event_id: Option<String>,
    /// The fraud rule that flagged it, if one did.
    pub flag: Option<Flag>,
}

// === impl ConversionRow ===

impl ConversionRow {
    pub fn from_event(event: &Event) -> ConversionRow {
        ConversionRow {
            time_ms: event.time_ms,
            kind: event.kind,
            affiliate_id: event.affiliate_id,
            campaign_id: event.campaign_id,
            sub1: event.sub1().to_owned(),
            money: event.money,
            order_id: event.order_id.as_ref().map(|id| id.as_str().to_owned()),
            click_id: event.click_id.as_ref().map(|id| id.as_str().to_owned()),
            event_id: event.event_id.as_ref().map(|id| id.as_str().to_owned()),
            flag: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("arrow ipc: {0}")]
    Arrow(#[from] ArrowError),
    #[error("schema mismatch: {0}")]
    Schema(String),
    #[error("bad value in column {column}: {reason}")]
    Value { column: &'static str, reason: String },
    #[error("malformed arrow ipc: {0}")]
    Malformed(String),
}

fn timestamp_utc() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// Schema of shipped rollup rows.
pub static ROLLUP_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(
        [
            Field::new("minute", timestamp_utc(), false),
            Field::new("affiliate_id", DataType::UInt32, false),
            Field::new("campaign_id", DataType::UInt32, false),
            Field::new("sub1", DataType::Utf8, false),
        ]
        .into_iter()
        .chain(RollupCounts::COLUMNS.map(|name| Field::new(name, DataType::UInt64, false)))
        .collect::<Vec<_>>(),
    ))
});

/// Schema of rollup rows as an edge ships them: [`ROLLUP_SCHEMA`] with
/// `sub1` dictionary-encoded. An edge's batch repeats a few sub IDs over
/// thousands of rows, so each row carries a small index instead of the
/// text; with the rows sorted by key, this about halves a rollup row's
/// compressed bytes (see the README's shipping figures).
pub static ROLLUP_WIRE_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let fields = ROLLUP_SCHEMA
        .fields()
        .iter()
        .map(|field| match field.name().as_str() {
            "sub1" => Arc::new(Field::new("sub1", sub1_dictionary(), false)),
            _ => field.clone(),
        })
        .collect::<Vec<_>>();
    Arc::new(Schema::new(fields))
});

fn sub1_dictionary() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// Schema of shipped conversion rows.
pub static CONVERSION_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("time", timestamp_utc(), false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("affiliate_id", DataType::UInt32, false),
        Field::new("campaign_id", DataType::UInt32, false),
        Field::new("sub1", DataType::Utf8, false),
        Field::new("amount_minor", DataType::Int64, true),
        Field::new("currency", DataType::Utf8, true),
        Field::new("order_id", DataType::Utf8, true),
        Field::new("click_id", DataType::Utf8, true),
        Field::new("event_id", DataType::Utf8, true),
        Field::new("flag", DataType::Utf8, true),
    ]))
});

/// Schema of shipped quarantine rows.
pub static QUARANTINE_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("time", timestamp_utc(), false),
        Field::new("source", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("detail", DataType::Utf8, false),
        Field::new("input", DataType::Utf8, false),
    ]))
});

/// Builds the Arrow batch of quarantine rows.
pub fn quarantine_to_batch(rows: &[QuarantineRow]) -> RecordBatch {
    let n_rows = rows.len();
    let mut time = TimestampMillisecondBuilder::with_capacity(n_rows).with_timezone("UTC");
    let mut texts: [StringBuilder; 4] = std::array::from_fn(|_| StringBuilder::with_capacity(n_rows, n_rows * 32));
    for row in rows {
        time.append_value(row.time_ms);
        for (builder, text) in texts.iter_mut().zip([&row.source, &row.reason, &row.detail, &row.input]) {
            builder.append_value(text);
        }
    }
    let mut columns: Vec<ArrayRef> = vec![Arc::new(time.finish())];
    columns.extend(texts.iter_mut().map(|builder| Arc::new(builder.finish()) as ArrayRef));
    // The columns are built above in schema order with matching types.
    RecordBatch::try_new(QUARANTINE_SCHEMA.clone(), columns).expect("columns follow QUARANTINE_SCHEMA")
}

/// Reads quarantine rows back, truncating text to the bounds again.
pub fn quarantine_from_batch(batch: &RecordBatch) -> Result<Vec<QuarantineRow>, BatchError> {
    check_schema(batch, &QUARANTINE_SCHEMA)?;
    let time = batch.column(0).as_primitive::<TimestampMillisecondType>();
    let text = |column_idx: usize| batch.column(column_idx).as_string::<i32>();
    let (source, reason, detail, input) = (text(1), text(2), text(3), text(4));
    Ok((0..batch.num_rows())
        .map(|row_idx| {
            QuarantineRow::new(
                time.value(row_idx),
                source.value(row_idx),
                reason.value(row_idx),
                detail.value(row_idx),
                input.value(row_idx),
            )
        })
        .collect())
}

/// Builds the Arrow batch of rollup rows, as the aggregator stores them.
pub fn rollups_to_batch<'a>(rows: impl ExactSizeIterator<Item = (&'a RollupKey, &'a RollupCounts)>) -> RecordBatch {
    rollups_batch(rows, false)
}

/// Builds the Arrow batch of rollup rows as an edge ships them
/// ([`ROLLUP_WIRE_SCHEMA`]). Rows sorted by key compress best.
pub fn rollups_to_wire_batch<'a>(
    rows: impl ExactSizeIterator<Item = (&'a RollupKey, &'a RollupCounts)>,
) -> RecordBatch {
    rollups_batch(rows, true)
}

fn rollups_batch<'a>(
    rows: impl ExactSizeIterator<Item = (&'a RollupKey, &'a RollupCounts)>,
    dictionary: bool,
) -> RecordBatch {
    let n_rows = rows.len();
    let mut minute = TimestampMillisecondBuilder::with_capacity(n_rows).with_timezone("UTC");
    let mut affiliate_id = UInt32Builder::with_capacity(n_rows);
    let mut campaign_id = UInt32Builder::with_capacity(n_rows);
    let mut sub1 = if dictionary {
        Sub1Builder::Dictionary(StringDictionaryBuilder::new())
    } else {
        Sub1Builder::Plain(StringBuilder::with_capacity(n_rows, n_rows * 8))
    };
    let mut counters: [UInt64Builder; N_COUNTERS] = std::array::from_fn(|_| UInt64Builder::with_capacity(n_rows));
    for (key, counts) in rows {
        minute.append_value(key.minute_ms);
        affiliate_id.append_value(key.affiliate_id);
        campaign_id.append_value(key.campaign_id);
        match &mut sub1 {
            Sub1Builder::Plain(builder) => builder.append_value(&key.sub1),
            Sub1Builder::Dictionary(builder) => {
                builder.append_value(&key.sub1);
            }
        }
        for (builder, value) in counters.iter_mut().zip(counts.values()) {
            builder.append_value(value);
        }
    }
    let (sub1, schema): (ArrayRef, &SchemaRef) = match &mut sub1 {
        Sub1Builder::Plain(builder) => (Arc::new(builder.finish()), &ROLLUP_SCHEMA),
        Sub1Builder::Dictionary(builder) => (Arc::new(builder.finish()), &ROLLUP_WIRE_SCHEMA),
    };
    let mut columns: Vec<ArrayRef> =
        vec![Arc::new(minute.finish()), Arc::new(affiliate_id.finish()), Arc::new(campaign_id.finish()), sub1];
    columns.extend(counters.iter_mut().map(|builder| Arc::new(builder.finish()) as ArrayRef));
    // The columns are built above in schema order with matching types.
    RecordBatch::try_new(schema.clone(), columns).expect("columns follow the rollup schema")
}

enum Sub1Builder {
    Plain(StringBuilder),
    Dictionary(StringDictionaryBuilder<Int32Type>),
}

/// A read `sub1` column, as text or dictionary-encoded.
enum Sub1Column<'a> {
    Plain(&'a StringArray),
    Dictionary { keys: &'a PrimitiveArray<Int32Type>, values: &'a StringArray },
}

impl Sub1Column<'_> {
    fn value(&self, row_idx: usize) -> &str {
        match self {
            Sub1Column::Plain(column) => column.value(row_idx),
            // The IPC reader validated every key against the values, and
            // the column has no nulls (checked with the schema).
            Sub1Column::Dictionary { keys, values } => values.value(keys.value(row_idx) as usize),
        }
    }
}

/// Reads rollup rows back from an Arrow batch of [`ROLLUP_SCHEMA`] or
/// [`ROLLUP_WIRE_SCHEMA`].
pub fn rollups_from_batch(batch: &RecordBatch) -> Result<Vec<(RollupKey, RollupCounts)>, BatchError> {
    let dictionary =
        matches!(batch.schema_ref().fields().get(3).map(|field| field.data_type()), Some(DataType::Dictionary(..)));
    check_schema(batch, if dictionary { &ROLLUP_WIRE_SCHEMA } else { &ROLLUP_SCHEMA })?;
    let minute = batch.column(0).as_primitive::<TimestampMillisecondType>();
    let affiliate_id = batch.column(1).as_primitive::<UInt32Type>();
    let campaign_id = batch.column(2).as_primitive::<UInt32Type>();
    let sub1 = if dictionary {
        let dictionary = batch.column(3).as_dictionary::<Int32Type>();
        Sub1Column::Dictionary { keys: dictionary.keys(), values: dictionary.values().as_string::<i32>() }
    } else {
        Sub1Column::Plain(batch.column(3).as_string::<i32>())
    };
    let counters: [&UInt64Array; N_COUNTERS] =
        std::array::from_fn(|counter_idx| batch.column(4 + counter_idx).as_primitive::<UInt64Type>());
    Ok((0..batch.num_rows())
        .map(|row_idx| {
            let key = RollupKey {
                minute_ms: minute.value(row_idx),
                affiliate_id: affiliate_id.value(row_idx),
                campaign_id: campaign_id.value(row_idx),
                sub1: sub1.value(row_idx).to_owned(),
            };
            let counts = RollupCounts::from_values(counters.map(|counter| counter.value(row_idx)));
            (key, counts)
        })
        .collect())
}

/// Builds the Arrow batch of conversion rows.
pub fn conversions_to_batch<'a, I>(rows: I) -> RecordBatch
where
    I: IntoIterator<Item = &'a ConversionRow>,
    I::IntoIter: ExactSizeIterator,
{
    let rows = rows.into_iter();
    let n_rows = rows.len();
    let mut time = TimestampMillisecondBuilder::with_capacity(n_rows).with_timezone("UTC");
    let mut kind = StringBuilder::with_capacity(n_rows, n_rows * 5);
    let mut affiliate_id = UInt32Builder::with_capacity(n_rows);
    let mut campaign_id = UInt32Builder::with_capacity(n_rows);
    let mut amount_minor = Int64Builder::with_capacity(n_rows);
    let mut strings: [StringBuilder; 6] = std::array::from_fn(|_| StringBuilder::with_capacity(n_rows, n_rows * 16));
    for row in rows {
        time.append_value(row.time_ms);
        kind.append_value(row.kind.as_str());
        affiliate_id.append_value(row.affiliate_id);
        campaign_id.append_value(row.campaign_id);
        amount_minor.append_option(row.money.map(|money| money.minor_units));
        let [sub1, currency, order_id, click_id, event_id, flag] = &mut strings;
        sub1.append_value(&row.sub1);
        currency.append_option(row.money.map(|money| money.currency.code().to_owned()));
        order_id.append_option(row.order_id.as_deref());
        click_id.append_option(row.click_id.as_deref());
        event_id.append_option(row.event_id.as_deref());
        flag.append_option(row.flag.map(Flag::as_str));
    }
    let [sub1, currency, order_id, click_id, event_id, flag] = &mut strings;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(time.finish()),
        Arc::new(kind.finish()),
        Arc::new(affiliate_id.finish()),
        Arc::new(campaign_id.finish()),
        Arc::new(sub1.finish()),
        Arc::new(amount_minor.finish()),
        Arc::new(currency.finish()),
        Arc::new(order_id.finish()),
        Arc::new(click_id.finish()),
        Arc::new(event_id.finish()),
        Arc::new(flag.finish()),
    ];
    // The columns are built above in schema order with matching types.
    RecordBatch::try_new(CONVERSION_SCHEMA.clone(), columns).expect("columns follow CONVERSION_SCHEMA")
}

/// Reads conversion rows back from an Arrow batch of [`CONVERSION_SCHEMA`],
/// checking again every rule the edge applied when it built them.
pub fn conversions_from_batch(batch: &RecordBatch) -> Result<Vec<ConversionRow>, BatchError> {
    check_schema(batch, &CONVERSION_SCHEMA)?;
    let time = batch.column(0).as_primitive::<TimestampMillisecondType>();
    let kind = batch.column(1).as_string::<i32>();
    let affiliate_id = batch.column(2).as_primitive::<UInt32Type>();
    let campaign_id = batch.column(3).as_primitive::<UInt32Type>();
    let sub1 = batch.column(4).as_string::<i32>();
    let amount_minor = batch.column(5).as_primitive::<Int64Type>();
    let currency = batch.column(6).as_string::<i32>();
    let optional = |column_idx: usize, row_idx: usize| {
        let column = batch.column(column_idx).as_string::<i32>();
        column.is_valid(row_idx).then(|| column.value(row_idx).to_owned())
    };
    let mut rows = Vec::with_capacity(batch.num_rows());
    for row_idx in 0..batch.num_rows() {
        let kind = EventKind::parse(kind.value(row_idx))
            .filter(EventKind::is_conversion)
            .ok_or_else(|| BatchError::Value { column: "kind", reason: "not a conversion kind".into() })?;
        let money = match (amount_minor.is_valid(row_idx), currency.is_valid(row_idx)) {
            (false, false) => None,
            (true, true) => {
                let currency = Currency::parse(currency.value(row_idx))
                    .map_err(|error| BatchError::Value { column: "currency", reason: error.to_string() })?;
                let minor_units = amount_minor.value(row_idx);
                if !(0..=crate::money::AMOUNT_MINOR_MAX).contains(&minor_units) {
                    return Err(BatchError::Value {
                        column: "amount_minor",
                        reason: format!("{minor_units} out of bounds"),
                    });
                }
                Some(Money { minor_units, currency })
            }
            _ => {
                return Err(BatchError::Value {
                    column: "amount_minor",
                    reason: "amount and currency must both be set".into(),
                });
            }
        };
        let flag = match optional(10, row_idx) {
            None => None,
            Some(text) => Some(
                Flag::parse(&text)
                    .ok_or_else(|| BatchError::Value { column: "flag", reason: format!("unknown flag {text:?}") })?,
            ),
        };
        rows.push(ConversionRow {
            time_ms: time.value(row_idx),
            kind,
            affiliate_id: affiliate_id.value(row_idx),
            campaign_id: campaign_id.value(row_idx),
            sub1: sub1.value(row_idx).to_owned(),
            money,
            order_id: optional(7, row_idx),
            click_id: optional(8, row_idx),
            event_id: optional(9, row_idx),
            flag,
        });
    }
    Ok(rows)
}

fn check_schema(batch: &RecordBatch, expect: &Schema) -> Result<(), BatchError> {
    let actual = batch.schema();
    let same = actual.fields().len() == expect.fields().len()
        && actual.fields().iter().zip(expect.fields()).all(|(actual, expect)| {
            actual.name() == expect.name()
                && actual.data_type() == expect.data_type()
                && (expect.is_nullable() || !actual.is_nullable())
        });
    if !same {
        return Err(BatchError::Schema(format!("expected {expect:?}, got {actual:?}")));
    }
    // A non-nullable field can still carry nulls in a hand-made IPC stream.
    for (column, field) in batch.columns().iter().zip(expect.fields()) {
        if !field.is_nullable() && column.null_count() > 0 {
            return Err(BatchError::Value { column: "non-nullable", reason: format!("{} has nulls", field.name()) });
        }
    }
    Ok(())
}

/// Encodes one batch as an Arrow IPC stream with zstd-compressed buffers.
pub fn encode_ipc(batch: &RecordBatch) -> Result<Vec<u8>, BatchError> {
    encode_ipc_with(batch, Some(CompressionType::ZSTD))
}

/// Encodes one batch as an Arrow IPC stream without compression, for a
/// frame, whose payload is compressed whole (see `frame.rs`).
pub fn encode_ipc_plain(batch: &RecordBatch) -> Result<Vec<u8>, BatchError> {
    encode_ipc_with(batch, None)
}

fn encode_ipc_with(batch: &RecordBatch, compression: Option<CompressionType>) -> Result<Vec<u8>, BatchError> {
    let options = IpcWriteOptions::default().try_with_compression(compression)?;
    let mut writer = StreamWriter::try_new_with_options(Vec::new(), batch.schema_ref(), options)?;
    writer.write(batch)?;
    writer.finish()?;
    Ok(writer.into_inner()?)
}

/// The most bytes one buffer of an IPC message may announce once
/// decompressed: the largest string data an `i32`-offset column can address,
/// and for a `u64` column 268 million rows, beyond any batch this process
/// could hold. zstd allocates what a compressed buffer announces before it
/// decompresses, so without this bound a few bytes could ask for terabytes
/// and abort the process.
pub const IPC_BUFFER_DECODED_BYTES_MAX: usize = i32::MAX as usize;

/// Decodes an Arrow IPC stream into its batches.
///
/// The bytes come from an edge, so they may be anything. Before arrow-ipc
/// reads them, [`check_ipc_lengths`] checks every length the stream
/// announces against the bytes present and [`IPC_BUFFER_DECODED_BYTES_MAX`]:
/// arrow-ipc 59 allocates what a message announces before reading it, and
/// what a compressed buffer announces before decompressing it. It also
/// panics on some malformed streams instead of returning an error (found by
/// the `batch_ipc` and `frame` fuzz targets: a validity bitmap shorter than
/// its array, among others), so the decoding runs under `catch_unwind` and
/// such a stream is refused like any other malformed one. This relies on
/// panics unwinding, the workspace's setting; nothing outside the closure is
/// touched while it runs.
pub fn decode_ipc(bytes: &[u8]) -> Result<Vec<RecordBatch>, BatchError> {
    check_ipc_lengths(bytes)?;
    let decode = || -> Result<Vec<RecordBatch>, BatchError> {
        let reader = StreamReader::try_new(Cursor::new(bytes), None)?;
        Ok(reader.collect::<Result<Vec<_>, _>>()?)
    };
    std::panic::catch_unwind(decode).unwrap_or_else(|panic| Err(BatchError::Malformed(panic_message(&*panic))))
}

/// The message of a panic caught by `catch_unwind`, cut to 200 characters
/// for an error that names it.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("no message");
    message.chars().take(200).collect()
}

/// Walks the messages of an IPC stream (`[0xFFFFFFFF] len i32 | metadata |
/// body`, until a zero length or the end) and checks, without decoding any
/// data, that each metadata and body lies within `bytes`, that each buffer
/// lies within its body, and that no compressed buffer announces more than
/// [`IPC_BUFFER_DECODED_BYTES_MAX`] decompressed bytes.
fn check_ipc_lengths(bytes: &[u8]) -> Result<(), BatchError> {
    let malformed = |reason: String| Err(BatchError::Malformed(reason));
    let i32_at = |at: usize| bytes.get(at..at + 4).map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")));
    let mut at = 0;
    while at < bytes.len() {
        let Some(mut meta_len) = i32_at(at) else { return malformed(format!("message length cut off at {at}")) };
        at += 4;
        if meta_len == -1 {
            // The continuation marker; the length follows.
            let Some(len) = i32_at(at) else { return malformed(format!("message length cut off at {at}")) };
            meta_len = len;
            at += 4;
        }
        if meta_len == 0 {
            return Ok(());
        }
        let Some(meta) = usize::try_from(meta_len).ok().and_then(|len| bytes.get(at..at.checked_add(len)?)) else {
            return malformed(format!("metadata of {meta_len} bytes at {at} runs past the stream's {}", bytes.len()));
        };
        at += meta.len();
        let message = arrow_ipc::root_as_message(meta)
            .map_err(|error| BatchError::Malformed(format!("message metadata at {at}: {error}")))?;
        let body_len = message.bodyLength();
        let Some(body) = usize::try_from(body_len).ok().and_then(|len| bytes.get(at..at.checked_add(len)?)) else {
            return malformed(format!("body of {body_len} bytes at {at} runs past the stream's {}", bytes.len()));
        };
        at += body.len();
        let batch = message.header_as_record_batch().or_else(|| message.header_as_dictionary_batch()?.data());
        let Some(batch) = batch else { continue };
        let compressed = batch.compression().is_some();
        for buffer in batch.buffers().iter().flatten() {
            let (offset, len) = (buffer.offset(), buffer.length());
            let Some(data) = usize::try_from(offset)
                .ok()
                .zip(usize::try_from(len).ok())
                .and_then(|(offset, len)| body.get(offset..offset.checked_add(len)?))
            else {
                return malformed(format!("buffer of {len} bytes at {offset} runs past its body's {}", body.len()));
            };
            // A compressed buffer starts with its decompressed length (-1:
            // stored as is).
            if let Some(prefix) = data.get(..8).filter(|_| compressed) {
                let decoded_len = i64::from_le_bytes(prefix.try_into().expect("8 bytes"));
                if decoded_len != -1 && !(0..=IPC_BUFFER_DECODED_BYTES_MAX as i64).contains(&decoded_len) {
                    return malformed(format!(
                        "buffer announces {decoded_len} decompressed bytes, limit is {IPC_BUFFER_DECODED_BYTES_MAX}"
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
