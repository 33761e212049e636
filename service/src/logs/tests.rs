//! The warning rate limit, on a subscriber that writes into a buffer and a
//! clock moved by hand.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;

use super::Throttle;

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buffer {
    fn lines_with(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap()).lines().filter(|line| line.contains(needle)).count()
    }
}

struct Fixture {
    buffer: Buffer,
    throttle: Throttle,
    now: Arc<Mutex<Instant>>,
}

fn fixture(lines_per_window: u32) -> Fixture {
    let now = Arc::new(Mutex::new(Instant::now()));
    let clock_now = now.clone();
    let clock = Arc::new(move || *clock_now.lock().unwrap());
    let throttle = Throttle::new(lines_per_window, Duration::from_secs(10), clock);
    Fixture { buffer: Buffer::default(), throttle, now }
}

impl Fixture {
    fn run(&self, body: impl FnOnce()) {
        let buffer = self.buffer.clone();
        let layer = tracing_subscriber::fmt::layer().with_ansi(false).with_writer(move || buffer.clone());
        let subscriber = tracing_subscriber::registry().with(layer.with_filter(self.throttle.clone()));
        tracing::subscriber::with_default(subscriber, body);
    }

    fn advance(&self, by: Duration) {
        *self.now.lock().unwrap() += by;
    }
}

fn refuse(n: u32) {
    for attempt in 0..n {
        tracing::warn!(attempt, "Edge refused.");
    }
}

#[test]
fn a_flood_from_one_site_is_cut_to_the_window_and_counted() {
    let fixture = fixture(10);
    let suppressed_before = super::suppressed_total();
    fixture.run(|| refuse(25));
    assert_eq!(fixture.buffer.lines_with("Edge refused."), 10);
    // Other tests' throttles may add to the process-wide total meanwhile.
    assert!(super::suppressed_total() >= suppressed_before + 15);
    let held = fixture.throttle.take_suppressed();
    assert_eq!(held.len(), 1, "{held:?}");
    assert!(held[0].0.ends_with("logs/tests.rs:61"), "{held:?}");
    assert_eq!(held[0].1, 15);
    assert!(fixture.throttle.take_suppressed().is_empty(), "counts reset once taken");
}

#[test]
fn the_next_window_logs_again() {
    let fixture = fixture(3);
    fixture.run(|| refuse(5));
    fixture.advance(Duration::from_secs(9));
    fixture.run(|| refuse(1));
    assert_eq!(fixture.buffer.lines_with("Edge refused."), 3, "still the first window");
    fixture.advance(Duration::from_secs(1));
    fixture.run(|| refuse(5));
    assert_eq!(fixture.buffer.lines_with("Edge refused."), 6);
    assert_eq!(fixture.throttle.take_suppressed()[0].1, 2 + 1 + 2);
}

#[test]
fn sites_are_limited_apart_and_info_is_not_limited() {
    let fixture = fixture(2);
    fixture.run(|| {
        for _ in 0..5 {
            tracing::error!("Spool write failed.");
            tracing::warn!("Batch refused.");
            tracing::info!("Batch applied.");
        }
    });
    assert_eq!(fixture.buffer.lines_with("Spool write failed."), 2);
    assert_eq!(fixture.buffer.lines_with("Batch refused."), 2);
    assert_eq!(fixture.buffer.lines_with("Batch applied."), 5);
    let held: Vec<u64> = fixture.throttle.take_suppressed().into_iter().map(|(_, n_lines)| n_lines).collect();
    assert_eq!(held, [3, 3]);
}
