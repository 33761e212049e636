//! Logs: `tracing` to stderr as text (colored only at a terminal) or as
//! one JSON object per line (`--log-format json`, for log shippers), with
//! `RUST_LOG` choosing levels (default `info`).
//!
//! Warnings and errors are rate-limited per call site: at most
//! [`LINES_PER_WINDOW`] lines from one site in each [`WINDOW`]. A flood of
//! refused connections or bad frames, which an attacker controls, then
//! costs a few lines, not a full disk; [`Throttle::report`] says every
//! window how many lines were held back and where, and
//! [`suppressed_total`] counts them for `/metrics`. Info and below are not
//! limited: nothing an outside client sends logs at those levels by
//! default.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::callsite::Identifier;
use tracing::subscriber::Interest;
use tracing::{Level, Metadata};
use tracing_subscriber::filter::FilterExt;
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Lines one call site may log per window: enough to see what is wrong
/// (each line carries its fields), few enough that a flood at wire speed
/// writes one line a second.
pub const LINES_PER_WINDOW: u32 = 10;

/// The rate limit's window, and how often held-back lines are reported.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Lines held back by every [`Throttle`] of the process since it started:
/// the `log_lines_suppressed_total` counter of both binaries' `/metrics`.
static SUPPRESSED_TOTAL: AtomicU64 = AtomicU64::new(0);

/// See [`SUPPRESSED_TOTAL`].
pub fn suppressed_total() -> u64 {
    SUPPRESSED_TOTAL.load(Ordering::Relaxed)
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields` (with
    /// `message`), `target`.
    Json,
}

/// Installs the global subscriber and returns its rate limit, whose
/// [`Throttle::report`] the binary runs. Call once, first thing.
pub fn init(format: LogFormat) -> Throttle {
    let throttle = Throttle::new(LINES_PER_WINDOW, WINDOW, Arc::new(Instant::now));
    let levels = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let text = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            // Colors only for a person at a terminal, not for journald or files.
            let layer = text.with_ansi(std::io::stderr().is_terminal());
            tracing_subscriber::registry().with(layer.with_filter(levels().and(throttle.clone()))).init();
        }
        LogFormat::Json => {
            let layer = text.json().with_current_span(false);
            tracing_subscriber::registry().with(layer.with_filter(levels().and(throttle.clone()))).init();
        }
    }
    throttle
}

/// The time source of a [`Throttle`]; tests move it by hand.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// A per-call-site rate limit on warnings and errors, as a layer filter.
/// Its table holds one entry per call site that has logged, so it is
/// bounded by the number of `warn!` and `error!` lines in the binary.
#[derive(Clone)]
pub struct Throttle {
    state: Arc<Mutex<HashMap<Identifier, Site>>>,
    lines_per_window: u32,
    window: Duration,
    clock: Clock,
}

struct Site {
    /// `file:line` of the call site, for the report.
    name: String,
    window_start: Instant,
    n_logged: u32,
    /// Held back since the last report.
    n_suppressed: u64,
}

// === impl Throttle ===

impl Throttle {
    pub fn new(lines_per_window: u32, window: Duration, clock: Clock) -> Throttle {
        Throttle { state: Arc::default(), lines_per_window, window, clock }
    }

    fn limited(metadata: &Metadata<'_>) -> bool {
        // `Level` orders by verbosity: ERROR < WARN < INFO.
        metadata.is_event() && *metadata.level() <= Level::WARN
    }

    /// Whether one more line from this call site fits its window.
    fn admit(&self, metadata: &Metadata<'_>) -> bool {
        let now = (self.clock)();
        let mut sites = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let site = sites.entry(metadata.callsite()).or_insert_with(|| Site {
            name: format!("{}:{}", metadata.file().unwrap_or("?"), metadata.line().unwrap_or(0)),
            window_start: now,
            n_logged: 0,
            n_suppressed: 0,
        });
        if now.duration_since(site.window_start) >= self.window {
            site.window_start = now;
            site.n_logged = 0;
        }
        if site.n_logged < self.lines_per_window {
            site.n_logged += 1;
            true
        } else {
            site.n_suppressed += 1;
            SUPPRESSED_TOTAL.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// The lines held back since the last call, by call site (sorted), and
    /// resets their counts.
    pub fn take_suppressed(&self) -> Vec<(String, u64)> {
        let mut sites = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut held: Vec<(String, u64)> = sites
            .values_mut()
            .filter(|site| site.n_suppressed > 0)
            .map(|site| (site.name.clone(), std::mem::take(&mut site.n_suppressed)))
            .collect();
        held.sort();
        held
    }

    /// Logs, once per window in which lines were held back, how many and
    /// from where; never resolves. Run it on the binary's runtime.
    pub async fn report(self) {
        let mut ticks = tokio::time::interval(self.window);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let held = self.take_suppressed();
            if held.is_empty() {
                continue;
            }
            let n_suppressed: u64 = held.iter().map(|(_, n_lines)| n_lines).sum();
            let sites = held.iter().map(|(site, n_lines)| format!("{site} ({n_lines})")).collect::<Vec<_>>().join(", ");
            tracing::warn!(n_suppressed, %sites, "Log lines held back by the rate limit.");
        }
    }
}

impl<S> Filter<S> for Throttle {
    fn enabled(&self, metadata: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        !Throttle::limited(metadata) || self.admit(metadata)
    }

    fn callsite_enabled(&self, metadata: &'static Metadata<'static>) -> Interest {
        // A limited site must be asked about each event; others never.
        if Throttle::limited(metadata) { Interest::sometimes() } else { Interest::always() }
    }
}

#[cfg(test)]
mod tests;
