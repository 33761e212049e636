//! How the aggregator keeps a secret token: as its BLAKE3 hash, compared in
//! constant time.
//!
//! Edge tokens (`edges.rs`) and Flight bearer tokens (`auth.rs`) are both
//! kept this way, so neither a memory dump nor the time a comparison takes
//! gives a token away. Hashing first also makes every comparison 32 bytes
//! long, whatever the length of what a client presents.

/// The BLAKE3 hash of a token.
#[derive(Clone, Copy)]
pub(crate) struct TokenHash([u8; 32]);

// === impl TokenHash ===

impl TokenHash {
    pub(crate) fn of(token: &[u8]) -> TokenHash {
        TokenHash(*blake3::hash(token).as_bytes())
    }

    /// Whether both hashes are of the same token, in time independent of
    /// where they differ.
    pub(crate) fn matches(&self, other: &TokenHash) -> bool {
        constant_time_eq::constant_time_eq_32(&self.0, &other.0)
    }
}

impl std::fmt::Debug for TokenHash {
    /// Never prints the hash: a hash of a short or guessable token can be
    /// searched for.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHash(…)")
    }
}
