//! Fuzzes the click-ID decoder (`Click::verify`) against a fixed key set:
//! an ID that verifies is minted back to the same text. The same bytes,
//! read as click fields, are minted and must verify to the same click.
#![no_main]

use edgetally_protocol::{Click, ClickKey, ClickKeys};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = edgetally_fuzz::click_keys();
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(click) = Click::verify(text, &keys) {
            // Re-sign with the key the ID names, which is listed since it verified.
            let key = if click.key_id == 1 { [7; 32] } else { [9; 32] };
            let signer = ClickKeys::new(click.key_id, vec![(click.key_id, ClickKey(key))]).expect("key listed");
            assert_eq!(click.mint(&signer).expect("a verified click mints"), text);
            let _ = click.check_window(edgetally_fuzz::NOW_MS, 30 * 24 * 3600 * 1000);
        }
    }
    if data.len() >= 22 {
        let u32_at = |at: usize| u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"));
        let mut time = [0u8; 8];
        time[..6].copy_from_slice(&data[16..22]);
        let click = Click {
            key_id: 1,
            edge_id: u32_at(0),
            time_ms: i64::from_le_bytes(time),
            affiliate_id: u32_at(4),
            campaign_id: u32_at(8),
            nonce: u32_at(12),
        };
        let text = click.mint(&keys).expect("48-bit times mint");
        assert_eq!(Click::verify(&text, &keys), Ok(click));
    }
});
