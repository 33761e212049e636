//! Writes the seed corpus of every fuzz target to `corpus/<target>/`: a few
//! valid inputs each, built with the project's own encoders so they follow
//! the formats as they are today. Run from `fuzz/` after a format change:
//! `cargo run --example seeds` (any toolchain; nothing here is instrumented).

use std::fs;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use edgetally_collector::SpoolIo;
use edgetally_collector::spool::{JournalPosition, Spool, Through};
use edgetally_fuzz::{NOW_MS, click_keys};
use edgetally_protocol::batch::{conversions_to_batch, encode_ipc, quarantine_to_batch, rollups_to_wire_batch};
use edgetally_protocol::frame::AckStatus;
use edgetally_protocol::{
    Ack, BatchFrame, Click, ConfigSnapshot, ConversionRow, Currency, EventKind, Hello, HelloAck, Money, QuarantineRow,
    RollupCounts, RollupKey,
};

const CAMPAIGNS: &str = r#"{"campaigns": [{"id": 3, "landing_url": "https://shop.example/p?cid={click_id}&a={affiliate_id}&s={sub1}", "attribution_window_secs": 2592000}, {"id": 4, "landing_url": "http://x.example/{campaign_id}/{sub5}{unknown}"}]}"#;

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = corpus.join(target);
        fs::create_dir_all(&dir).expect("create the corpus directory");
        fs::write(dir.join(name), bytes).expect("write a seed");
    };

    let keys = click_keys();
    let click = Click { key_id: 1, edge_id: 2, time_ms: NOW_MS - 60_000, affiliate_id: 7, campaign_id: 3, nonce: 99 };
    let click_id = click.mint(&keys).expect("the seed click mints");
    write("click_id", "minted", click_id.as_bytes());

    let event = r#"{"kind":"sale","affiliate_id":7,"campaign_id":3,"amount":"49.90","currency":"EUR","order_id":"o-1","sub1":"news","time":"2026-11-24T09:59:00Z"}"#;
    write("query", "pixel", b"aff=7&cmp=3&sub1=newsletter&eid=e-1&ts=1795514340000");
    write(
        "query",
        "postback",
        format!("click_id={click_id}&kind=sale&amount=1.250&currency=BHD&order_id=o-2").as_bytes(),
    );
    write("query", "payload", format!("cb=1&d={}", URL_SAFE_NO_PAD.encode(event)).as_bytes());
    write("query", "bad", b"aff=0&cmp=x&amount=-1.5&currency=JPY&sub2=%F0%9F%98%80&kind=lead");

    write("json_body", "object", format!("\0{event}").as_bytes());
    write(
        "json_body",
        "array",
        br#" [{"kind":"click","affiliate_id":"7","campaign_id":3,"event_id":"e-9"},{"kind":"lead","affiliate_id":1,"campaign_id":2,"amount":12.5,"currency":"USD"},3,{"bogus":1}]"#,
    );
    write(
        "json_body",
        "ndjson",
        format!("\x01{event}\n{{\"kind\":\"impression\",\"affiliate_id\":1,\"campaign_id\":2,\"sub3\":null}}\n{{bad\n")
            .as_bytes(),
    );

    write("campaigns", "two", CAMPAIGNS.as_bytes());
    write("journal", "five-records", &edgetally_collector::fuzz_journal_seed());

    let rollups = encode_ipc(&rollups_to_wire_batch(
        [
            (
                RollupKey { minute_ms: NOW_MS, affiliate_id: 7, campaign_id: 3, sub1: "news".into() },
                RollupCounts::from_values([5, 2, 1, 0, 1, 0, 1, 0, 0, 0, 0]),
            ),
            (
                RollupKey { minute_ms: NOW_MS - 60_000, affiliate_id: 8, campaign_id: 3, sub1: String::new() },
                RollupCounts::from_values([1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]),
            ),
        ]
        .iter()
        .map(|(key, counts)| (key, counts)),
    ))
    .expect("rollups encode");
    let conversions = encode_ipc(&conversions_to_batch(&[
        ConversionRow {
            time_ms: NOW_MS,
            kind: EventKind::Sale,
            affiliate_id: 7,
            campaign_id: 3,
            sub1: "news".into(),
            money: Some(Money { minor_units: 4990, currency: Currency::parse("EUR").expect("EUR") }),
            order_id: Some("o-1".into()),
            click_id: Some(click_id.clone()),
            event_id: None,
            flag: None,
        },
        ConversionRow {
            time_ms: NOW_MS,
            kind: EventKind::Lead,
            affiliate_id: 8,
            campaign_id: 4,
            sub1: String::new(),
            money: None,
            order_id: None,
            click_id: None,
            event_id: Some("e-1".into()),
            flag: None,
        },
    ]))
    .expect("conversions encode");
    let quarantine = encode_ipc(&quarantine_to_batch(&[QuarantineRow::new(
        NOW_MS,
        "pixel",
        "bad_id",
        "bad affiliate_id",
        "aff=0&cmp=3",
    )]))
    .expect("quarantine encode");
    for (selector, name, ipc) in
        [(0u8, "rollups", &rollups), (1, "conversions", &conversions), (2, "quarantine", &quarantine)]
    {
        write("batch_ipc", name, &[&[selector][..], ipc].concat());
    }

    let batch_frame = |sequence: u64, with_rows: bool| {
        let (rollups_ipc, conversions_ipc, quarantine_ipc, n_rows) = if with_rows {
            (rollups.clone(), conversions.clone(), quarantine.clone(), [2, 2, 1])
        } else {
            (Vec::new(), Vec::new(), Vec::new(), [0, 0, 0])
        };
        BatchFrame {
            edge_id: 2,
            epoch: 1_795_514_000_000,
            sequence,
            n_rollup_rows: n_rows[0],
            n_conversion_rows: n_rows[1],
            n_quarantine_rows: n_rows[2],
            rollups_ipc: Bytes::from(rollups_ipc),
            conversions_ipc: Bytes::from(conversions_ipc),
            quarantine_ipc: Bytes::from(quarantine_ipc),
        }
    };
    let frame =
        |sequence: u64, with_rows: bool| batch_frame(sequence, with_rows).encode().expect("a seed frame encodes");
    let full = frame(1, true);
    let empty = frame(2, false);
    write("frame", "full", &full);
    write("frame", "empty", &empty);
    let version_2 = batch_frame(3, true).encode_version_2().expect("a seed frame encodes");
    write("frame", "full-version-2", &version_2);

    let hello = Hello { edge_id: 2, token: b"0123456789abcdef0123456789abcdef".to_vec() };
    write("control", "hello", &hello.encode().expect("the seed hello encodes"));
    write("control", "hello_ack", &HelloAck { accepted: true }.encode());
    let ack = Ack { edge_id: 2, epoch: 1_795_514_000_000, sequence: 1, status: AckStatus::Skip };
    write("control", "ack", &ack.encode());
    let snapshot = ConfigSnapshot::new(Bytes::from_static(CAMPAIGNS.as_bytes()));
    write("control", "snapshot", &snapshot.encode().expect("the seed snapshot encodes"));

    // The spool writes its own segment; the seed is that file.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (mut spool, _) = Spool::open(dir.path(), u64::MAX, SpoolIo::Std).expect("open a fresh spool");
    spool.append(&[Bytes::from(empty.clone())], Through::all(3), NOW_MS as u64).expect("spool a frame");
    let rows_only = Through::rows(JournalPosition { segment: 4, offset: 512 });
    spool
        .append(&[Bytes::from(frame(3, false)), Bytes::from(frame(4, false))], rows_only, NOW_MS as u64)
        .expect("spool two");
    drop(spool);
    let segment = fs::read(dir.path().join("00000000000000000001.spool")).expect("read the spool segment");
    write("spool", "two_records", &segment);
    // The same with a torn tail: the last record cut short.
    write("spool", "torn", &segment[..segment.len() - 7]);

    // Structured cases are built from any bytes; a few to start from.
    write("roundtrip", "zeros", &[0; 64]);
    write("roundtrip", "counting", &(0..=255).collect::<Vec<u8>>());
    write("roundtrip", "frame", &[&[0, 0, 0, 0][..], &empty].concat());

    // WAL records: `magic "ETW1" | len u32 | crc32 u32 | payload` (wal.rs).
    let record = |payload: &[u8]| {
        let mut record = b"ETW1".to_vec();
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        record.extend_from_slice(payload);
        record
    };
    let log = [record(&empty), record(&frame(3, false))].concat();
    write("wal", "two_records", &log);
    let mut damaged = [record(&empty), record(&frame(3, false)), record(&frame(4, false))].concat();
    damaged[20] ^= 0xff;
    damaged.extend_from_slice(&[0; 9]);
    write("wal", "damaged", &damaged);
}
