//! Signed click IDs: everything attribution needs, carried in the ID itself,
//! so any edge can attribute a conversion without a central look-up.
//!
//! A click ID is 36 bytes, base64url without padding (48 characters):
//!
//! ```text
//! version u8 | key_id u8 | edge_id u32 | time_ms u48 | affiliate_id u32 |
//! campaign_id u32 | nonce u32 | mac [u8; 12]
//! ```
//!
//! (integers little-endian). The MAC is keyed BLAKE3 over the first 24
//! bytes, truncated to 96 bits: forging one takes about 2^96 guesses, and
//! every guess costs the forger a request. Keys have an 8-bit id so they can
//! rotate: new clicks are signed with the current key while IDs signed with
//! an older key that is still configured keep verifying.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub const CLICK_ID_VERSION: u8 = 1;
/// Bytes of a decoded click ID.
pub const CLICK_ID_BYTES: usize = 36;
/// Characters of an encoded click ID.
pub const CLICK_ID_LEN: usize = 48;
const SIGNED_BYTES: usize = 24;
const MAC_BYTES: usize = CLICK_ID_BYTES - SIGNED_BYTES;
/// Click times are stored in 48 bits of milliseconds: until the year 10889.
const TIME_MS_MAX: i64 = (1 << 48) - 1;

const _: () = assert!(CLICK_ID_BYTES.is_multiple_of(3) && CLICK_ID_BYTES / 3 * 4 == CLICK_ID_LEN);
const _: () = assert!(MAC_BYTES == 12);

/// A 256-bit click-signing key.
#[derive(Clone, PartialEq, Eq)]
pub struct ClickKey(pub [u8; 32]);

impl fmt::Debug for ClickKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys never appear in logs or panic messages.
        f.write_str("ClickKey(..)")
    }
}

/// The keys an edge signs and verifies with.
#[derive(Debug, Clone)]
pub struct ClickKeys {
    current: u8,
    keys: Vec<(u8, ClickKey)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClickIdError {
    #[error("malformed click id: not base64url")]
    Malformed,
    #[error("truncated click id: {len} characters, expected {CLICK_ID_LEN}")]
    Truncated { len: usize },
    #[error("unsupported click id version {0}")]
    Version(u8),
    #[error("click id signed with unknown key {0}")]
    UnknownKey(u8),
    #[error("forged click id: signature does not verify")]
    Forged,
    #[error("click id expired: clicked {age_ms} ms ago, attribution window is {window_ms} ms")]
    Expired { age_ms: i64, window_ms: i64 },
    #[error("click id from the future: {ahead_ms} ms ahead of now")]
    Future { ahead_ms: i64 },
    #[error("click time {0} ms cannot be encoded")]
    TimeOutOfRange(i64),
    #[error("no click key configured with the current key id {0}")]
    NoCurrentKey(u8),
}

// === impl ClickIdError ===

impl ClickIdError {
    /// A short, bounded label for metrics and answers.
    pub fn reason(&self) -> &'static str {
        match self {
            ClickIdError::Malformed => "click_id_malformed",
            ClickIdError::Truncated { .. } => "click_id_truncated",
            ClickIdError::Version(_) => "click_id_version",
            ClickIdError::UnknownKey(_) => "click_id_unknown_key",
            ClickIdError::Forged => "click_id_forged",
            ClickIdError::Expired { .. } => "click_id_expired",
            ClickIdError::Future { .. } => "click_id_future",
            ClickIdError::TimeOutOfRange(_) | ClickIdError::NoCurrentKey(_) => "click_id_internal",
        }
    }
}

// === impl ClickKeys ===

impl ClickKeys {
    /// `current` signs new clicks and must be among `keys`.
    pub fn new(current: u8, keys: Vec<(u8, ClickKey)>) -> Result<ClickKeys, ClickIdError> {
        if !keys.iter().any(|(key_id, _)| *key_id == current) {
            return Err(ClickIdError::NoCurrentKey(current));
        }
        Ok(ClickKeys { current, keys })
    }

    pub fn current(&self) -> u8 {
        self.current
    }

    fn key(&self, key_id: u8) -> Option<&ClickKey> {
        self.keys.iter().find(|(id, _)| *id == key_id).map(|(_, key)| key)
    }
}

/// What a click ID says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Click {
    pub key_id: u8,
    pub edge_id: u32,
    /// Click time, Unix milliseconds UTC.
    pub time_ms: i64,
    pub affiliate_id: u32,
    pub campaign_id: u32,
    /// Random per click, so two clicks in the same millisecond differ.
    pub nonce: u32,
}

// === impl Click ===

impl Click {
    /// Signs this click with the current key (its `key_id` is replaced by
    /// it) and encodes it.
    pub fn mint(&self, keys: &ClickKeys) -> Result<String, ClickIdError> {
        if !(0..=TIME_MS_MAX).contains(&self.time_ms) {
            return Err(ClickIdError::TimeOutOfRange(self.time_ms));
        }
        let key = keys.key(keys.current).ok_or(ClickIdError::NoCurrentKey(keys.current))?;
        let mut bytes = [0u8; CLICK_ID_BYTES];
        bytes[0] = CLICK_ID_VERSION;
        bytes[1] = keys.current;
        bytes[2..6].copy_from_slice(&self.edge_id.to_le_bytes());
        bytes[6..12].copy_from_slice(&self.time_ms.to_le_bytes()[..6]);
        bytes[12..16].copy_from_slice(&self.affiliate_id.to_le_bytes());
        bytes[16..20].copy_from_slice(&self.campaign_id.to_le_bytes());
        bytes[20..24].copy_from_slice(&self.nonce.to_le_bytes());
        let mac = blake3::keyed_hash(&key.0, &bytes[..SIGNED_BYTES]);
        bytes[SIGNED_BYTES..].copy_from_slice(&mac.as_bytes()[..MAC_BYTES]);
        Ok(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Decodes a click ID and checks its signature; the attribution window is
    /// checked separately by [`Click::check_window`].
    pub fn verify(text: &str, keys: &ClickKeys) -> Result<Click, ClickIdError> {
        if text.len() != CLICK_ID_LEN {
            return Err(ClickIdError::Truncated { len: text.len() });
        }
        let mut bytes = [0u8; CLICK_ID_BYTES];
        let n_decoded = URL_SAFE_NO_PAD.decode_slice(text, &mut bytes).map_err(|_| ClickIdError::Malformed)?;
        if n_decoded != CLICK_ID_BYTES {
            return Err(ClickIdError::Malformed);
        }
        if bytes[0] != CLICK_ID_VERSION {
            return Err(ClickIdError::Version(bytes[0]));
        }
        let key_id = bytes[1];
        let key = keys.key(key_id).ok_or(ClickIdError::UnknownKey(key_id))?;
        let mac = blake3::keyed_hash(&key.0, &bytes[..SIGNED_BYTES]);
        if !constant_time_eq::constant_time_eq(&mac.as_bytes()[..MAC_BYTES], &bytes[SIGNED_BYTES..]) {
            return Err(ClickIdError::Forged);
        }
        let u32_at = |offset: usize| {
            u32::from_le_bytes([bytes[offset], bytes[offset + 1], bytes[offset + 2], bytes[offset + 3]])
        };
        let mut time = [0u8; 8];
        time[..6].copy_from_slice(&bytes[6..12]);
        Ok(Click {
            key_id,
            edge_id: u32_at(2),
            time_ms: i64::from_le_bytes(time),
            affiliate_id: u32_at(12),
            campaign_id: u32_at(16),
            nonce: u32_at(20),
        })
    }

    /// Checks that a conversion at `conversion_ms` falls within
    /// `window_ms` after the click, allowing the same clock skew as event
    /// times for clicks that seem to lie ahead.
    pub fn check_window(&self, conversion_ms: i64, window_ms: i64) -> Result<(), ClickIdError> {
        let age_ms = conversion_ms.saturating_sub(self.time_ms);
        if age_ms < -crate::event::EVENT_TIME_FUTURE_MS_MAX {
            return Err(ClickIdError::Future { ahead_ms: -age_ms });
        }
        if age_ms > window_ms {
            return Err(ClickIdError::Expired { age_ms, window_ms });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
