//! `edgetally-loadtest`: the load generator SREs size and verify EdgeTally
//! with, and the runner of the local stack.
//!
//! `run` sends a realistic mix open-loop at a target rate (or closed-loop at
//! full speed), reports latency and answers, and writes a ground-truth
//! ledger, and with `--flight` measures freshness on the aggregator's
//! follow stream; `verify` compares that ledger with the aggregator over Arrow
//! Flight; `stack` starts an aggregator, a collector and a trickle of
//! traffic on loopback; `query` prints what a Flight ticket returns.

mod freshness;
mod http1;
mod ledger;
mod load;
mod mix;
mod query;
mod report;
mod runner;
mod stack;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "edgetally-loadtest", version, about = "EdgeTally load generator, verifier and local stack")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send generated traffic to collectors and write a ground-truth ledger.
    Run(runner::RunArgs),
    /// Compare a ledger with what the aggregator counted; non-zero on a mismatch.
    Verify(verify::VerifyArgs),
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
    // The generator shares the machine with what it measures, so `run`
    // uses as few threads as asked; the stack runs two servers and gets two.
    let worker_threads = match &args.command {
        Command::Run(run) => run.threads.max(1),
        _ => 2,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(worker_threads).enable_all().build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match args.command {
            Command::Run(args) => runner::run(args).await,
            Command::Verify(args) => verify::run(args).await,
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
