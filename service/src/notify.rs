//! systemd's service notification protocol (`sd_notify(3)`): `READY=1`
//! once a binary serves, `RELOADING=1` while it applies a SIGHUP,
//! `STOPPING=1` when it starts to shut down, and `WATCHDOG=1` pings at
//! half the unit's `WatchdogSec=`.
//!
//! A message is one datagram on systemd's socket, sent with a blocking
//! call: systemd reads its socket at once, so the call returns at once.
//!
//! Without `NOTIFY_SOCKET` in the environment (not started by systemd with
//! `Type=notify`) every call does nothing. A message that cannot be sent
//! is logged and otherwise ignored: systemd's view of the service is not a
//! reason to stop serving.

use std::time::Duration;

use sd_notify::NotifyState;

/// Tells systemd the service is up, with a one-line status for
/// `systemctl status`.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd a reload has begun; `ready` ends it.
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send(&states);
}

/// Tells systemd the service is shutting down.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
}

/// Pings systemd's watchdog at half its interval for as long as it is
/// polled; never resolves. Without `WatchdogSec=` it only waits. Run it on
/// the runtime whose liveness it vouches for: a stalled runtime stops the
/// pings, and systemd restarts the service.
pub async fn watchdog() {
    let Some(interval) = watchdog_interval() else {
        return std::future::pending().await;
    };
    let mut ticks = tokio::time::interval(interval / 2);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        send(&[NotifyState::Watchdog]);
    }
}

/// The watchdog interval systemd asks for, as `sd_watchdog_enabled(3)`
/// reads it: `WATCHDOG_USEC`, unless `WATCHDOG_PID` names another process
/// (the variables were inherited). Unlike the `sd-notify` crate's
/// `watchdog_enabled`, a missing `WATCHDOG_PID` does not turn it off.
fn watchdog_interval() -> Option<Duration> {
    let interval_us: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok().filter(|&interval_us| interval_us > 0)?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    Some(Duration::from_micros(interval_us))
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(false, states) {
        tracing::warn!(%error, "Could not notify systemd.");
    }
}
