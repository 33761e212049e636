//! Visitor hashes are stable within a day and differ across days, visitors
//! and processes.

use super::*;

const NOON_MS: i64 = 1_790_000_000_000 / DAY_MS * DAY_MS + DAY_MS / 2;

#[test]
fn stable_within_a_day_only() {
    let hasher = VisitorHasher::new();
    let ip: IpAddr = "203.0.113.7".parse().unwrap();
    let same_day = hasher.hash(ip, b"Mozilla/5.0", NOON_MS);
    assert_eq!(hasher.hash(ip, b"Mozilla/5.0", NOON_MS + 3_600_000), same_day);
    assert_ne!(hasher.hash(ip, b"Mozilla/5.0", NOON_MS + DAY_MS), same_day);
    assert_ne!(hasher.hash(ip, b"curl/8", NOON_MS), same_day);
    assert_ne!(hasher.hash("203.0.113.8".parse().unwrap(), b"Mozilla/5.0", NOON_MS), same_day);
    assert_ne!(hasher.hash("2001:db8::7".parse().unwrap(), b"Mozilla/5.0", NOON_MS), same_day);
    assert_ne!(VisitorHasher::new().hash(ip, b"Mozilla/5.0", NOON_MS), same_day);
}
