//! The in-flight bound.

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

/// Threads racing at the bound never have more let in at once than it
/// allows, and every count is given back.
#[test]
fn in_flight_holds_its_bound_across_threads() {
    let requests = InFlight::new(3);
    let (n_admitted, n_peak) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..20_000 {
                    if let Some(guard) = requests.try_enter() {
                        let n_now = n_admitted.fetch_add(1, Ordering::SeqCst) + 1;
                        n_peak.fetch_max(n_now, Ordering::SeqCst);
                        n_admitted.fetch_sub(1, Ordering::SeqCst);
                        drop(guard);
                    }
                }
            });
        }
    });
    assert!((1..=3).contains(&n_peak.load(Ordering::SeqCst)), "{n_peak:?}");
    assert_eq!(requests.len(), 0);
    assert_eq!(requests.n_in_flight.load(Ordering::SeqCst), 0);
}
