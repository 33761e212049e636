//! The per-IP bucket and its memory bound.

use super::*;

fn ip(last: u8) -> IpAddr {
    IpAddr::from([192, 0, 2, last])
}

#[test]
fn bursts_then_limits_per_ip() {
    let throttle = Throttle::new(NonZeroU32::new(1).unwrap(), NonZeroU32::new(3).unwrap(), 100);
    let verdicts: Vec<Throttled> = (0..5).map(|_| throttle.check(ip(1))).collect();
    assert_eq!(verdicts, [Throttled::Allow, Throttled::Allow, Throttled::Allow, Throttled::Limit, Throttled::Limit]);
    // Another client has its own bucket.
    assert_eq!(throttle.check(ip(2)), Throttled::Allow);
}

#[test]
fn a_full_table_lets_new_ips_through_untracked() {
    let throttle = Throttle::new(NonZeroU32::new(1).unwrap(), NonZeroU32::new(1).unwrap(), 2);
    assert_eq!(throttle.check(ip(1)), Throttled::Allow);
    assert_eq!(throttle.check(ip(2)), Throttled::Allow);
    // Both buckets are empty (not yet refilled), so nothing can be dropped.
    assert_eq!(throttle.check(ip(3)), Throttled::Untracked);
    assert_eq!(throttle.check(ip(1)), Throttled::Untracked);
}
