//! The click-signing keys file.
//!
//! ```json
//! {"current": 2, "keys": {"1": "<32 bytes, base64url>", "2": "<…>"}}
//! ```
//!
//! Every edge of a network must hold the same keys so that any edge can
//! verify a click minted at another. To rotate: add a key, make it current
//! on every edge, and remove the old one once the longest attribution window
//! has passed. When no file exists, the collector creates one with a random
//! key (fine for one edge; copy it to the others).

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use edgetally_protocol::{ClickKey, ClickKeys};
use rand::RngCore;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ClickKeysError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("writing {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("parsing {path}: {source}")]
    Json { path: String, source: serde_json::Error },
    #[error("key {key_id} in {path}: {reason}")]
    Key { path: String, key_id: String, reason: &'static str },
    #[error("{path}: current key {current} is not among the keys")]
    NoCurrent { path: String, current: u8 },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    current: u8,
    keys: std::collections::BTreeMap<String, String>,
}

/// Loads the keys at `path`, creating the file with one random key when it
/// does not exist.
pub fn load_or_create(path: &Path) -> Result<ClickKeys, ClickKeysError> {
    let shown = || path.display().to_string();
    if !path.exists() {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let file = KeysFile { current: 1, keys: [("1".to_owned(), URL_SAFE_NO_PAD.encode(secret))].into() };
        // Serializing a map of strings cannot fail.
        let text = serde_json::to_string_pretty(&file).expect("keys serialize");
        crate::write_atomic(path, text.as_bytes(), 0o600)
            .map_err(|source| ClickKeysError::Write { path: shown(), source })?;
        tracing::info!(path = %path.display(), "Created a click-signing key.");
    }
    load(path)
}

/// Loads the keys at `path`, which must exist.
pub fn load(path: &Path) -> Result<ClickKeys, ClickKeysError> {
    let shown = || path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ClickKeysError::Read { path: shown(), source })?;
    let file: KeysFile =
        serde_json::from_str(&text).map_err(|source| ClickKeysError::Json { path: shown(), source })?;
    let mut keys = Vec::with_capacity(file.keys.len());
    for (key_id, secret) in &file.keys {
        let key_error = |reason| ClickKeysError::Key { path: shown(), key_id: key_id.clone(), reason };
        let id: u8 = key_id.parse().map_err(|_| key_error("key ids are numbers from 0 to 255"))?;
        let bytes = URL_SAFE_NO_PAD.decode(secret).map_err(|_| key_error("secret is not base64url"))?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| key_error("secret must be 32 bytes"))?;
        keys.push((id, ClickKey(bytes)));
    }
    ClickKeys::new(file.current, keys).map_err(|_| ClickKeysError::NoCurrent { path: shown(), current: file.current })
}

#[cfg(test)]
mod tests;
