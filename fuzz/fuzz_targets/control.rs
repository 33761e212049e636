//! Fuzzes the control stream's messages: `Hello::decode`, `HelloAck::decode`,
//! `Ack::decode` and `ConfigSnapshot::decode_header` with `from_parts`.
//! Whatever decodes encodes back to the same bytes.
#![no_main]

use bytes::Bytes;
use edgetally_protocol::frame::{SNAPSHOT_HEADER_LEN, SnapshotHeader};
use edgetally_protocol::{Ack, ConfigSnapshot, Hello, HelloAck};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(hello) = Hello::decode(data) {
        assert_eq!(hello.encode().expect("a decoded token is within bounds"), data);
    }
    if let Ok(hello_ack) = HelloAck::decode(data) {
        assert_eq!(hello_ack.encode(), data);
    }
    if let Ok(ack) = Ack::decode(data) {
        // Bytes 25..28 are padding, ignored on decode and written as zeros.
        if data[25..] == [0, 0, 0] {
            assert_eq!(ack.encode(), data);
        }
        assert_eq!(Ack::decode(&ack.encode()), Ok(ack));
    }
    if let Some((header, body)) = data.split_first_chunk::<SNAPSHOT_HEADER_LEN>() {
        if let Ok(header) = ConfigSnapshot::decode_header(header) {
            let SnapshotHeader { len, .. } = header;
            if let Ok(snapshot) = ConfigSnapshot::from_parts(header, Bytes::copy_from_slice(body)) {
                assert_eq!(snapshot.body.len(), len);
                assert_eq!(snapshot.encode().expect("a decoded body is within bounds"), data);
            }
        }
    }
});
