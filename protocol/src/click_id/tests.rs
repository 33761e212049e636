//! Minting, verifying, tampering and rotation.

use super::*;

fn key_set(current: u8, ids: &[u8]) -> ClickKeys {
    ClickKeys::new(current, ids.iter().map(|id| (*id, ClickKey([*id; 32]))).collect()).unwrap()
}

fn click() -> Click {
    Click { key_id: 0, edge_id: 7, time_ms: 1_790_000_000_123, affiliate_id: 4_000_000_000, campaign_id: 42, nonce: 99 }
}

#[test]
fn round_trip_is_fixed_length() {
    let keys = key_set(1, &[1]);
    let text = click().mint(&keys).unwrap();
    assert_eq!(text.len(), CLICK_ID_LEN);
    assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    assert_eq!(Click::verify(&text, &keys).unwrap(), Click { key_id: 1, ..click() });
}

fn check(text: &str, keys: &ClickKeys, expect: &str) {
    assert_eq!(Click::verify(text, keys).map(|_| ()).map_err(|error| error.reason()), Err(expect), "{text}");
}

#[test]
fn tampering_is_refused_with_its_reason() {
    let keys = key_set(1, &[1]);
    let text = click().mint(&keys).unwrap();
    check(&text[..CLICK_ID_LEN - 1], &keys, "click_id_truncated");
    check(&format!("{text}A"), &keys, "click_id_truncated");
    check(&format!("{}*", &text[..CLICK_ID_LEN - 1]), &keys, "click_id_malformed");
    // Every changed character of the payload or the MAC breaks the signature,
    // except those that change the version or key id, which say so.
    for char_idx in 0..CLICK_ID_LEN {
        let mut tampered = text.clone().into_bytes();
        tampered[char_idx] = if tampered[char_idx] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        let reason = Click::verify(&tampered, &keys).map(|_| ()).map_err(|error| error.reason());
        let expected: &[&str] = match char_idx {
            0 | 1 => &["click_id_version", "click_id_unknown_key"],
            2 => &["click_id_unknown_key", "click_id_forged"],
            _ => &["click_id_forged"],
        };
        assert!(expected.contains(&reason.unwrap_err()), "char {char_idx}: {reason:?}");
    }
    // A click signed with a key this edge does not have.
    let other = key_set(9, &[9]);
    check(&click().mint(&other).unwrap(), &keys, "click_id_unknown_key");
    // Same key id, different secret: forged.
    let impostor = ClickKeys::new(1, vec![(1, ClickKey([2; 32]))]).unwrap();
    check(&click().mint(&impostor).unwrap(), &keys, "click_id_forged");
}

#[test]
fn rotation_keeps_old_ids_verifying() {
    let before = key_set(1, &[1]);
    let old_id = click().mint(&before).unwrap();
    let after = key_set(2, &[1, 2]);
    let new_id = click().mint(&after).unwrap();
    assert_eq!(Click::verify(&old_id, &after).unwrap().key_id, 1);
    assert_eq!(Click::verify(&new_id, &after).unwrap().key_id, 2);
    check(&new_id, &before, "click_id_unknown_key");
    let retired = key_set(2, &[2]);
    check(&old_id, &retired, "click_id_unknown_key");
    assert!(matches!(ClickKeys::new(3, vec![(1, ClickKey([1; 32]))]), Err(ClickIdError::NoCurrentKey(3))));
}

#[test]
fn attribution_window() {
    let click = click();
    let day_ms = 86_400_000;
    assert_eq!(click.check_window(click.time_ms + day_ms, day_ms), Ok(()));
    assert_eq!(
        click.check_window(click.time_ms + day_ms + 1, day_ms),
        Err(ClickIdError::Expired { age_ms: day_ms + 1, window_ms: day_ms })
    );
    assert_eq!(click.check_window(click.time_ms - 1000, day_ms), Ok(()));
    assert_eq!(
        click.check_window(click.time_ms - 10 * 60_000, day_ms).map_err(|error| error.reason()),
        Err("click_id_future")
    );
    assert!(Click { time_ms: -1, ..click }.mint(&key_set(1, &[1])).is_err());
}
