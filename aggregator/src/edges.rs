//! Which edges may ship: a token per edge id, from a JSON file.
//!
//! ```json
//! {"edges": [{"edge_id": 1, "token": "4f1c…(at least 16 characters)"}]}
//! ```
//!
//! An edge names itself and presents its token in the [`Hello`] on its
//! connection's control stream; an unknown edge id or a wrong token gets a
//! refusal and the connection is closed. Tokens are kept only as BLAKE3
//! hashes and compared in constant time, so neither a memory dump nor the
//! time a comparison takes gives a token away.
//!
//! [`Hello`]: edgetally_protocol::Hello

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use edgetally_protocol::frame::HELLO_TOKEN_LEN_MAX;
use serde::Deserialize;

use crate::token_hash::TokenHash;

/// Shortest token accepted in the file: 16 random characters are beyond
/// guessing over a network.
pub const EDGE_TOKEN_LEN_MIN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum EdgeTokensError {
    #[error("read {}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parse {}", path.display())]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("edge {edge_id}: token must be {EDGE_TOKEN_LEN_MIN} to {HELLO_TOKEN_LEN_MAX} bytes")]
    TokenLength { edge_id: u32 },
    #[error("edge {0} is listed twice")]
    Duplicate(u32),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    edges: Vec<EdgeFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EdgeFile {
    edge_id: u32,
    token: String,
}

/// The edges allowed to ship, by id.
#[derive(Clone, Default)]
pub struct EdgeTokens {
    hashes: HashMap<u32, TokenHash>,
}

impl std::fmt::Debug for EdgeTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<&u32> = self.hashes.keys().collect();
        ids.sort_unstable();
        f.debug_struct("EdgeTokens").field("edge_ids", &ids).finish()
    }
}

// === impl EdgeTokens ===

impl EdgeTokens {
    pub fn load(path: &Path) -> Result<EdgeTokens, EdgeTokensError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| EdgeTokensError::Read { path: path.to_owned(), source })?;
        let file: TokensFile =
            serde_json::from_str(&text).map_err(|source| EdgeTokensError::Parse { path: path.to_owned(), source })?;
        let mut tokens = EdgeTokens::default();
        for edge in file.edges {
            tokens.insert(edge.edge_id, edge.token.as_bytes())?;
        }
        Ok(tokens)
    }

    pub fn insert(&mut self, edge_id: u32, token: &[u8]) -> Result<(), EdgeTokensError> {
        if !(EDGE_TOKEN_LEN_MIN..=HELLO_TOKEN_LEN_MAX).contains(&token.len()) {
            return Err(EdgeTokensError::TokenLength { edge_id });
        }
        if self.hashes.insert(edge_id, TokenHash::of(token)).is_some() {
            return Err(EdgeTokensError::Duplicate(edge_id));
        }
        Ok(())
    }

    /// Whether `token` is the token of `edge_id`.
    pub fn check(&self, edge_id: u32, token: &[u8]) -> bool {
        let presented = TokenHash::of(token);
        self.hashes.get(&edge_id).is_some_and(|expected| expected.matches(&presented))
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    //! Loading and checking tokens.

    use super::*;

    #[test]
    fn load_and_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edges.json");
        std::fs::write(
            &path,
            r#"{"edges": [{"edge_id": 1, "token": "0123456789abcdef"}, {"edge_id": 2, "token": "fedcba9876543210-x"}]}"#,
        )
        .unwrap();
        let tokens = EdgeTokens::load(&path).unwrap();
        assert_eq!(tokens.len(), 2);
        assert!(tokens.check(1, b"0123456789abcdef"));
        assert!(tokens.check(2, b"fedcba9876543210-x"));
        assert!(!tokens.check(1, b"fedcba9876543210-x"), "another edge's token");
        assert!(!tokens.check(1, b"0123456789abcde"), "a prefix");
        assert!(!tokens.check(3, b"0123456789abcdef"), "an unknown edge");
        assert!(!format!("{tokens:?}").contains("0123"), "tokens never reach a log");
    }

    #[test]
    fn bad_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edges.json");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            EdgeTokens::load(&path).unwrap_err().to_string()
        };
        assert!(load(r#"{"edges": [{"edge_id": 1, "token": "short"}]}"#).contains("token must be 16 to 256 bytes"));
        assert!(
            load(r#"{"edges": [{"edge_id": 1, "token": "0123456789abcdef"}, {"edge_id": 1, "token": "0123456789abcdefg"}]}"#)
                .contains("edge 1 is listed twice")
        );
        assert!(load(r#"{"edges": [], "extra": 1}"#).starts_with("parse"));
    }
}
