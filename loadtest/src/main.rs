//! `edgetally-loadtest`: runs the local stack, generates traffic, and reads
//! rollups back over Arrow Flight.
//!
//! `stack` starts an aggregator and a collector in this process on loopback,
//! feeds the collector a trickle of generated traffic and prints where
//! everything listens. `query` prints what a Flight ticket returns.

mod query;
mod stack;
mod traffic;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "edgetally-loadtest", version, about = "EdgeTally local stack and traffic generator")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start aggregator, collector and a trickle of traffic on loopback.
    Stack(stack::StackArgs),
    /// Run a Flight ticket against an aggregator and print the result.
    Query(query::QueryArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match args.command {
            Command::Stack(args) => stack::run(args).await,
            Command::Query(args) => query::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
