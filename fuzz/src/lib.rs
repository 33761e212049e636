//! Checks shared by the fuzz targets in `fuzz_targets/`: each takes input
//! that came from outside a process, must never panic on it, and where the
//! input decodes checks a property (mostly that encoding what was decoded
//! gives the input back).
//!
//! The targets are thin: the checks live here so that the seed generator
//! (`examples/seeds.rs`) and the targets agree on formats.

use bytes::Bytes;
use edgetally_collector::ingest::{self, Item};
use edgetally_protocol::batch::{
    conversions_from_batch, conversions_to_batch, decode_ipc, encode_ipc, quarantine_from_batch, quarantine_to_batch,
    rollups_from_batch, rollups_to_batch,
};
use edgetally_protocol::event::{RawEvent, SUB_FIELDS};
use edgetally_protocol::{BatchFrame, ClickKey, ClickKeys, Event, EventKind, Money};

/// The receive time every target validates events at: 2026-11-24T10:00:00Z,
/// so seeds with fixed times stay inside the event-time window.
pub const NOW_MS: i64 = 1_795_514_400_000;

/// The key set click IDs are verified against: key 1 current, key 2 an
/// older one still listed.
pub fn click_keys() -> ClickKeys {
    // Two ids, the current among them: `new` cannot fail.
    ClickKeys::new(1, vec![(1, ClickKey([7; 32])), (2, ClickKey([9; 32]))]).expect("current key 1 is listed")
}

// === query strings and JSON ===

/// The fields of a raw event in a fixed order, by their query names.
pub fn raw_fields<'r>(raw: &'r RawEvent<'_>) -> [(&'static str, Option<&'r str>); 14] {
    [
        ("aff", raw.affiliate_id.as_deref()),
        ("cmp", raw.campaign_id.as_deref()),
        ("kind", raw.kind.as_deref()),
        ("eid", raw.event_id.as_deref()),
        ("ts", raw.time.as_deref()),
        ("click_id", raw.click_id.as_deref()),
        ("amount", raw.amount.as_deref()),
        ("currency", raw.currency.as_deref()),
        ("order_id", raw.order_id.as_deref()),
        ("sub1", raw.subs[0].as_deref()),
        ("sub2", raw.subs[1].as_deref()),
        ("sub3", raw.subs[2].as_deref()),
        ("sub4", raw.subs[3].as_deref()),
        ("sub5", raw.subs[4].as_deref()),
    ]
}

/// A pixel's query string: parses, validates, and the fields read back
/// from their own re-encoding; a `d=` payload goes through the JSON path.
pub fn check_query(query: &str) {
    let raw = ingest::parse_query(query);
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (name, value) in raw_fields(&raw) {
        if let Some(value) = value {
            serializer.append_pair(name, value);
        }
    }
    let encoded = serializer.finish();
    let again = ingest::parse_query(&encoded);
    assert_eq!(raw_fields(&raw), raw_fields(&again), "query fields changed through {encoded:?}");
    check_event(&raw, Some(EventKind::Impression));

    match ingest::pixel_payload(query) {
        None | Some(Err(_)) => {}
        Some(Ok(mut payload)) => check_json_item(ingest::parse_event(&mut payload)),
    }
}

/// A body of `POST /v1/events`: every item is an event or a rejection.
pub fn check_body(body: &mut [u8], ndjson: bool) {
    match ingest::parse_body(body, ndjson) {
        Ok(items) => {
            assert!(items.len() <= ingest::BATCH_ITEMS_MAX, "{} items", items.len());
            for item in items {
                check_json_item(item);
            }
        }
        Err(error) => {
            // Errors render without panicking, as the answer does.
            let _ = error.to_string();
        }
    }
}

/// One JSON item: validated, and its fields read back from their own
/// JSON re-encoding.
pub fn check_json_item(item: Item<'_>) {
    let raw = match item {
        Item::Event(raw) => raw,
        Item::Invalid { reason, detail } => {
            assert!(!reason.is_empty() && !detail.is_empty());
            return;
        }
    };
    let json_names = [
        "affiliate_id",
        "campaign_id",
        "kind",
        "event_id",
        "time",
        "click_id",
        "amount",
        "currency",
        "order_id",
        SUB_FIELDS[0],
        SUB_FIELDS[1],
        SUB_FIELDS[2],
        SUB_FIELDS[3],
        SUB_FIELDS[4],
    ];
    let mut object = serde_json::Map::new();
    for (name, (_, value)) in json_names.iter().zip(raw_fields(&raw)) {
        if let Some(value) = value {
            object.insert((*name).to_owned(), serde_json::Value::String(value.to_owned()));
        }
    }
    let mut encoded = serde_json::to_vec(&serde_json::Value::Object(object)).expect("a map of strings encodes");
    let text = String::from_utf8_lossy(&encoded).into_owned();
    match ingest::parse_event(&mut encoded) {
        Item::Event(again) => assert_eq!(raw_fields(&raw), raw_fields(&again), "json fields changed through {text}"),
        Item::Invalid { reason, detail } => panic!("re-encoded item {text} rejected: {reason}: {detail}"),
    }
    check_event(&raw, None);
}

/// Validation never panics; money that validates prints and parses back.
pub fn check_event(raw: &RawEvent<'_>, default_kind: Option<EventKind>) {
    match Event::validate(raw, default_kind, NOW_MS) {
        Ok(event) => {
            if let Some(money) = event.money {
                let printed = money.to_string();
                let (amount, _code) = printed.split_once(' ').expect("money prints as `amount code`");
                assert_eq!(Money::parse(amount, money.currency).ok(), Some(money), "money printed as {printed}");
            }
            let _ = event.minute_ms();
        }
        Err(error) => {
            assert!(!error.reason().is_empty());
            let _ = error.to_string();
        }
    }
}

// === frames and Arrow payloads ===

/// The rows of one Arrow IPC payload, as the aggregator reads them.
#[derive(Debug, PartialEq)]
pub enum Rows {
    Rollups(Vec<(edgetally_protocol::RollupKey, edgetally_protocol::RollupCounts)>),
    Conversions(Vec<edgetally_protocol::ConversionRow>),
    Quarantine(Vec<edgetally_protocol::QuarantineRow>),
}

/// Which payload of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    Rollups,
    Conversions,
    Quarantine,
}

/// Decodes one IPC payload into rows as the aggregator does (`ingest.rs`
/// `decode_rows`); rows that decode encode and decode to the same rows.
pub fn check_payload(payload: Payload, ipc: &[u8]) -> Option<Rows> {
    let batches = decode_ipc(ipc).ok()?;
    let rows = match payload {
        Payload::Rollups => {
            let mut rows = Vec::new();
            for batch in &batches {
                rows.extend(rollups_from_batch(batch).ok()?);
            }
            Rows::Rollups(rows)
        }
        Payload::Conversions => {
            let mut rows = Vec::new();
            for batch in &batches {
                rows.extend(conversions_from_batch(batch).ok()?);
            }
            Rows::Conversions(rows)
        }
        Payload::Quarantine => {
            let mut rows = Vec::new();
            for batch in &batches {
                rows.extend(quarantine_from_batch(batch).ok()?);
            }
            Rows::Quarantine(rows)
        }
    };
    let again = reencode(&rows);
    assert_eq!(rows, again, "rows changed through an IPC round trip");
    Some(rows)
}

/// Rows through `*_to_batch`, `encode_ipc`, `decode_ipc` and `*_from_batch`.
pub fn reencode(rows: &Rows) -> Rows {
    let batch = match rows {
        Rows::Rollups(rows) => rollups_to_batch(rows.iter().map(|(key, counts)| (key, counts))),
        Rows::Conversions(rows) => conversions_to_batch(rows),
        Rows::Quarantine(rows) => quarantine_to_batch(rows),
    };
    let ipc = encode_ipc(&batch).expect("a batch of the schema encodes");
    let batches = decode_ipc(&ipc).expect("what encode_ipc wrote decodes");
    let reason = "rows this crate built read back";
    match rows {
        Rows::Rollups(_) => Rows::Rollups(batches.iter().flat_map(|b| rollups_from_batch(b).expect(reason)).collect()),
        Rows::Conversions(_) => {
            Rows::Conversions(batches.iter().flat_map(|b| conversions_from_batch(b).expect(reason)).collect())
        }
        Rows::Quarantine(_) => {
            Rows::Quarantine(batches.iter().flat_map(|b| quarantine_from_batch(b).expect(reason)).collect())
        }
    }
}

/// A whole frame as the aggregator receives it: the header decodes and
/// re-encodes to the same bytes, and each payload decodes (or is refused)
/// without panicking.
pub fn check_frame(bytes: &[u8]) {
    let Ok(frame) = BatchFrame::decode(Bytes::copy_from_slice(bytes)) else { return };
    let encoded = frame.encode().expect("a decoded frame is within bounds");
    // Not byte for byte: a version 2 frame comes back as version 3, and a
    // payload compressed otherwise than this encoder does decodes all the
    // same. What it holds comes back.
    assert_eq!(BatchFrame::decode(Bytes::from(encoded)).as_ref(), Ok(&frame), "frame changed through a round trip");
    check_frame_payloads(&frame);
}

/// Lets panics that arrow raises and `decode_ipc` catches unwind quietly.
///
/// libfuzzer-sys installs a panic hook that aborts at once, before
/// `decode_ipc`'s `catch_unwind` can turn arrow-ipc's panics on malformed
/// streams into errors. This hook keeps that abort for every panic outside
/// the arrow crates; an arrow panic unwinds, and one that nothing catches
/// still reaches libfuzzer-sys's own `catch_unwind`, which aborts. Call it
/// at the top of every target that decodes Arrow.
pub fn let_arrow_panics_unwind() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let abort_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_arrow = info.location().is_some_and(|location| location.file().contains("/arrow-"));
            if !in_arrow {
                abort_hook(info);
            }
        }));
    });
}

/// The payloads of a decoded frame, each checked like the aggregator's
/// `decode_payloads` (an empty payload means no rows).
pub fn check_frame_payloads(frame: &BatchFrame) {
    for (payload, ipc) in [
        (Payload::Rollups, &frame.rollups_ipc),
        (Payload::Conversions, &frame.conversions_ipc),
        (Payload::Quarantine, &frame.quarantine_ipc),
    ] {
        if !ipc.is_empty() {
            check_payload(payload, ipc);
        }
    }
}
