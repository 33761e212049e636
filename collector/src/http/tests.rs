//! The in-flight bound, and the client IP a trusted header names.

use super::*;

#[test]
fn in_flight_lets_in_up_to_its_bound_and_frees_on_drop() {
    let requests = InFlight::new(2);
    let first = requests.try_enter();
    let second = requests.try_enter();
    assert!(first.is_some() && second.is_some());
    assert_eq!(requests.len(), 2);
    // Past the bound, an attempt is refused and leaves the count as it was.
    for _ in 0..3 {
        assert!(requests.try_enter().is_none());
        assert_eq!(requests.len(), 2);
    }
    drop(first);
    assert_eq!(requests.len(), 1);
    let third = requests.try_enter();
    assert!(third.is_some());
    assert!(requests.try_enter().is_none());
    drop((second, third));
    assert_eq!(requests.len(), 0);
}

/// Threads racing at the bound, each holding what it got until all have
/// tried: exactly the bound gets in, and every count is given back.
#[test]
fn in_flight_holds_its_bound_across_threads() {
    const N_THREADS: usize = 8;
    let requests = InFlight::new(3);
    let (tried, n_admitted) = (std::sync::Barrier::new(N_THREADS), AtomicUsize::new(0));
    for _ in 0..50 {
        std::thread::scope(|scope| {
            for _ in 0..N_THREADS {
                scope.spawn(|| {
                    let guard = requests.try_enter();
                    n_admitted.fetch_add(usize::from(guard.is_some()), Ordering::SeqCst);
                    tried.wait();
                    drop(guard);
                });
            }
        });
        assert_eq!(n_admitted.swap(0, Ordering::SeqCst), 3);
        assert_eq!(requests.n_in_flight.load(Ordering::SeqCst), 0);
    }
}

#[test]
fn the_client_is_the_last_visible_address_of_the_header() {
    let ip = |text: &str| text.parse::<IpAddr>().unwrap();
    assert_eq!(forwarded_ip(b"203.0.113.9"), Some(ip("203.0.113.9")));
    assert_eq!(forwarded_ip(b"10.0.0.1, 198.51.100.4"), Some(ip("198.51.100.4")));
    assert_eq!(forwarded_ip(b"10.0.0.1,\t2001:db8::1 "), Some(ip("2001:db8::1")));
    // Not an address, or bytes a header string may not hold: the peer is
    // the client.
    assert_eq!(forwarded_ip(b"10.0.0.1, unknown"), None);
    assert_eq!(forwarded_ip(b""), None);
    assert_eq!(forwarded_ip("café, 198.51.100.4".as_bytes()), None);
    assert_eq!(forwarded_ip(b"198.51.100.4\x7f"), None);
}
