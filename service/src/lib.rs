//! What EdgeTally's two server binaries, the collector and the aggregator,
//! share to run as services on real hosts: the TOML settings file merged
//! with their flags ([`settings`]), log set-up with a rate limit on
//! warnings ([`logs`]), systemd's readiness, reload and watchdog protocol
//! ([`notify`]), the signals they answer ([`signals`]) and the `main`
//! that ties them together ([`process`]).
//!
//! It holds no EdgeTally logic: nothing here knows an event, a batch or a
//! port. The load generator does not use it; it is a tool, not a service.

pub mod logs;
pub mod notify;
pub mod process;
pub mod settings;
pub mod signals;
