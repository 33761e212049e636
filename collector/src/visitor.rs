//! Visitor hashes: who clicked, without keeping who it was.
//!
//! A raw visitor IP never leaves the process and is never logged. It is
//! reduced at once to a 64-bit keyed BLAKE3 hash of the IP and the user agent,
//! under a key derived from a random per-process secret and the UTC day, so
//! hashes cannot be reversed by trying all IPv4 addresses, cannot be joined
//! across days, and mean nothing outside this process. The hash only answers
//! "has this visitor clicked this affiliate's campaign lately?" (unique
//! clicks).

use std::net::IpAddr;

use rand::RngCore;

const DAY_MS: i64 = 86_400_000;

pub(crate) struct VisitorHasher {
    secret: [u8; 32],
}

impl Default for VisitorHasher {
    fn default() -> VisitorHasher {
        VisitorHasher::new()
    }
}

// === impl VisitorHasher ===

impl VisitorHasher {
    pub(crate) fn new() -> VisitorHasher {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        VisitorHasher { secret }
    }

    /// The visitor hash of `ip` and `user_agent` on the UTC day of `now_ms`.
    pub(crate) fn hash(&self, ip: IpAddr, user_agent: &[u8], now_ms: i64) -> u64 {
        let day = now_ms.div_euclid(DAY_MS);
        let day_key = blake3::keyed_hash(&self.secret, &day.to_le_bytes());
        let mut hasher = blake3::Hasher::new_keyed(day_key.as_bytes());
        match ip {
            IpAddr::V4(ip) => hasher.update(&ip.octets()),
            IpAddr::V6(ip) => hasher.update(&ip.octets()),
        };
        hasher.update(user_agent);
        let digest = hasher.finalize();
        // The first eight bytes of a 32-byte digest always exist.
        u64::from_le_bytes(digest.as_bytes()[..8].try_into().expect("digest has 32 bytes"))
    }
}

#[cfg(test)]
mod tests;
