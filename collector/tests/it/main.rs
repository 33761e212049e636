//! Collector tests against the real `edgetally-collector` binary on a
//! loopback port, spoken to over real HTTP.

mod clicks;
mod dedup;
mod lean;
mod lifecycle;
mod limits;
mod malformed;
mod quality;
mod support;
