//! Creating, reloading and refusing key files.

use std::os::unix::fs::PermissionsExt;

use edgetally_protocol::Click;

use super::*;

#[test]
fn created_once_then_reused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("click-keys.json");
    let first = load_or_create(&path).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let second = load_or_create(&path).unwrap();
    let click = Click { key_id: 0, edge_id: 1, time_ms: 1, affiliate_id: 2, campaign_id: 3, nonce: 4 };
    let minted = click.mint(&first).unwrap();
    assert_eq!(Click::verify(&minted, &second).unwrap().affiliate_id, 2);
}

#[test]
fn bad_files_are_refused_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let secret = URL_SAFE_NO_PAD.encode([7u8; 32]);
    let cases = [
        (format!(r#"{{"current":1,"keys":{{"x":"{secret}"}}}}"#), "key ids are numbers"),
        (r#"{"current":1,"keys":{"1":"!!"}}"#.to_owned(), "not base64url"),
        (r#"{"current":1,"keys":{"1":"AAAA"}}"#.to_owned(), "must be 32 bytes"),
        (format!(r#"{{"current":2,"keys":{{"1":"{secret}"}}}}"#), "current key 2 is not among"),
        (format!(r#"{{"current":1,"keys":{{"1":"{secret}"}},"extra":1}}"#), "unknown field"),
    ];
    for (text, fragment) in cases {
        std::fs::write(&path, &text).unwrap();
        let error = load_or_create(&path).unwrap_err().to_string();
        assert!(error.contains(fragment), "{text}: {error}");
    }
}
