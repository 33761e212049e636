//! Edge-to-center tests: the real `edgetally-aggregator` and
//! `edgetally-collector` binaries on loopback ports with temporary data
//! directories, fed over HTTP and read back over Arrow Flight.
//!
//! These tests run the binaries that `cargo build --workspace --bins` put
//! next to this test executable; the README's test command builds them first.

mod alerts;
mod buckets;
mod commissions;
mod control;
mod crash;
mod dashboard;
mod flight_auth;
mod fraud;
mod lifecycle;
mod loadgen;
mod spine;
mod support;
mod tidy;
