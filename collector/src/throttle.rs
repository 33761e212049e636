//! Per-client request rate limit, a token bucket per client IP (governor's
//! GCRA), for edges that clients reach directly.
//!
//! Memory is bounded: at most `tracked_max` client IPs are held. When the
//! table is full, IPs idle long enough to have refilled their bucket are
//! dropped (at most once a second); if it is still full, requests pass
//! unmetered and are counted until room frees up, because refusing real
//! visitors is worse for an affiliate network than letting a flood of
//! distinct addresses by for a moment.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Client IPs tracked at most: about 100 bytes each, so 10 MiB.
pub(crate) const TRACKED_MAX_DEFAULT: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Throttled {
    Allow,
    /// Over the rate: refuse with `429` (pixels: the GIF, uncounted).
    Limit,
    /// The table of tracked IPs is full: let through unmetered, count it.
    Untracked,
}

pub(crate) struct Throttle {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    tracked_max: usize,
    started: Instant,
    /// Milliseconds since `started` of the last clean-up.
    cleaned_ms: AtomicU64,
}

// === impl Throttle ===

impl Throttle {
    /// `per_second` requests per second per client IP, with bursts of `burst`.
    pub(crate) fn new(per_second: NonZeroU32, burst: NonZeroU32, tracked_max: usize) -> Throttle {
        let quota = Quota::per_second(per_second).allow_burst(burst);
        Throttle {
            limiter: RateLimiter::keyed(quota),
            tracked_max,
            started: Instant::now(),
            cleaned_ms: AtomicU64::new(0),
        }
    }

    pub(crate) fn check(&self, ip: IpAddr) -> Throttled {
        if self.limiter.len() >= self.tracked_max {
            let now_ms = self.started.elapsed().as_millis() as u64;
            let last_ms = self.cleaned_ms.load(Ordering::Relaxed);
            if now_ms >= last_ms + 1000
                && self.cleaned_ms.compare_exchange(last_ms, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_ok()
            {
                self.limiter.retain_recent();
                self.limiter.shrink_to_fit();
            }
            if self.limiter.len() >= self.tracked_max {
                return Throttled::Untracked;
            }
        }
        match self.limiter.check_key(&ip) {
            Ok(()) => Throttled::Allow,
            Err(_) => Throttled::Limit,
        }
    }
}

#[cfg(test)]
mod tests;
