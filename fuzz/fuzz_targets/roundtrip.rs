//! Structured fuzzing (`Arbitrary`) of every encoder with a decoder: a
//! value built from the fuzzer's fields encodes, decodes to the same value,
//! and (for frames) its payloads go through the aggregator's checks.
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use edgetally_fuzz::Rows;
use edgetally_protocol::frame::AckStatus;
use edgetally_protocol::frame::HELLO_TOKEN_LEN_MAX;
use edgetally_protocol::{
    Ack, BatchFrame, Click, ConfigSnapshot, Hello, HelloAck, QuarantineRow, RollupCounts, RollupKey,
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Case {
    Frame { edge_id: u32, epoch: u64, sequence: u64, n_rows: [u32; 3], payloads: [Vec<u8>; 3] },
    Hello { edge_id: u32, token: Vec<u8> },
    Ack { edge_id: u32, epoch: u64, sequence: u64, status: u8, accepted: bool },
    Snapshot { body: Vec<u8> },
    Click { key_id: bool, edge_id: u32, time_ms: u64, affiliate_id: u32, campaign_id: u32, nonce: u32 },
    Rollups(Vec<(i64, u32, u32, String, [u64; edgetally_protocol::batch::N_COUNTERS])>),
    Quarantine(Vec<(i64, String, String, String, String)>),
}

fuzz_target!(|case: Case| {
    edgetally_fuzz::let_arrow_panics_unwind();
    match case {
        Case::Frame { edge_id, epoch, sequence, n_rows, payloads } => {
            let [rollups_ipc, conversions_ipc, quarantine_ipc] = payloads.map(Bytes::from);
            let frame = BatchFrame {
                edge_id,
                epoch,
                sequence,
                n_rollup_rows: n_rows[0],
                n_conversion_rows: n_rows[1],
                n_quarantine_rows: n_rows[2],
                rollups_ipc,
                conversions_ipc,
                quarantine_ipc,
            };
            let encoded = frame.encode().expect("fuzz inputs are far below the frame limit");
            let decoded = BatchFrame::decode(Bytes::from(encoded)).expect("an encoded frame decodes");
            assert_eq!(decoded, frame);
            edgetally_fuzz::check_frame_payloads(&decoded);
        }
        Case::Hello { edge_id, token } => {
            let hello = Hello { edge_id, token };
            match hello.encode() {
                Ok(encoded) => assert_eq!(Hello::decode(&encoded).expect("an encoded hello decodes"), hello),
                Err(_) => assert!(hello.token.len() > HELLO_TOKEN_LEN_MAX),
            }
        }
        Case::Ack { edge_id, epoch, sequence, status, accepted } => {
            let status = match status % 3 {
                0 => AckStatus::Apply,
                1 => AckStatus::Skip,
                _ => AckStatus::Refuse,
            };
            let ack = Ack { edge_id, epoch, sequence, status };
            assert_eq!(Ack::decode(&ack.encode()), Ok(ack));
            let hello_ack = HelloAck { accepted };
            assert_eq!(HelloAck::decode(&hello_ack.encode()), Ok(hello_ack));
        }
        Case::Snapshot { body } => {
            let snapshot = ConfigSnapshot::new(Bytes::from(body));
            let encoded = snapshot.encode().expect("fuzz inputs are far below the snapshot limit");
            let (header, body) = encoded.split_first_chunk().expect("a header first");
            let header = ConfigSnapshot::decode_header(header).expect("an encoded header decodes");
            let decoded = ConfigSnapshot::from_parts(header, Bytes::copy_from_slice(body)).expect("and its body");
            assert_eq!(decoded, snapshot);
        }
        Case::Click { key_id, edge_id, time_ms, affiliate_id, campaign_id, nonce } => {
            let keys = edgetally_fuzz::click_keys();
            // Minting signs with the current key whatever the click says.
            let click = Click {
                key_id: if key_id { 1 } else { 2 },
                edge_id,
                time_ms: (time_ms & ((1 << 48) - 1)) as i64,
                affiliate_id,
                campaign_id,
                nonce,
            };
            let text = click.mint(&keys).expect("48-bit times mint");
            assert_eq!(Click::verify(&text, &keys), Ok(Click { key_id: keys.current(), ..click }));
        }
        Case::Rollups(rows) => {
            let rows: Vec<(RollupKey, RollupCounts)> = rows
                .into_iter()
                .map(|(minute_ms, affiliate_id, campaign_id, sub1, counts)| {
                    (RollupKey { minute_ms, affiliate_id, campaign_id, sub1 }, RollupCounts::from_values(counts))
                })
                .collect();
            let rows = Rows::Rollups(rows);
            assert_eq!(edgetally_fuzz::reencode(&rows), rows);
        }
        Case::Quarantine(rows) => {
            let rows = rows
                .into_iter()
                .map(|(time_ms, source, reason, detail, input)| {
                    QuarantineRow::new(time_ms, &source, &reason, &detail, &input)
                })
                .collect();
            let rows = Rows::Quarantine(rows);
            assert_eq!(edgetally_fuzz::reencode(&rows), rows);
        }
    }
});
