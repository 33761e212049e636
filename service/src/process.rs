//! The `main` both server binaries run: settings, logs, then either
//! `--check-config` or the service on a multi-threaded tokio runtime, and
//! the exit code an operator and systemd read (0 ran and stopped cleanly,
//! 1 failed at run time, 2 a bad configuration).

use std::ffi::OsString;
use std::fmt::Display;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use crate::logs::{self, LogFormat, Throttle};
use crate::notify;
use crate::settings::{self, Loaded};
use crate::signals::{Signal, Signals};

/// What [`main`] needs to know of a binary's arguments.
pub trait ServiceArgs: CommandFactory + FromArgMatches {
    fn log_format(&self) -> LogFormat;
    /// Whether `--check-config` was given.
    fn check_config(&self) -> bool;
}

/// Loads the settings from the process's arguments (exits 2 on a bad one,
/// printing why), installs the logs, then runs `check` and prints what it
/// checked, or runs `run` to its end. Errors print with `{:#}` (anyhow
/// prints its whole chain: "bind quic on …: Address in use").
pub fn main<A, E, F>(
    check: impl FnOnce(&A) -> Result<Vec<String>, E>,
    run: impl FnOnce(Vec<OsString>, Loaded<A>, Throttle) -> F,
) -> ExitCode
where
    A: ServiceArgs,
    E: Display,
    F: Future<Output = Result<(), E>>,
{
    let argv: Vec<OsString> = std::env::args_os().collect();
    let loaded = settings::load::<A>(&argv).unwrap_or_else(|error| error.exit());
    let throttle = logs::init(loaded.args.log_format());
    if loaded.args.check_config() {
        return match check(&loaded.args) {
            Ok(checked) => {
                let file =
                    loaded.file.as_ref().map_or("no settings file".to_owned(), |path| path.display().to_string());
                println!("configuration ok ({file}); checked: {}", checked.join(", "));
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::from(2)
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: start tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(argv, loaded, throttle)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the settings again for a reload (the file may have changed) and
/// warns of each changed setting not in `reloaded`, which waits for the
/// next start. `None` when they do not load: that is logged, and nothing
/// changes.
pub fn reload_settings<A: CommandFactory + FromArgMatches>(
    argv: &[OsString],
    started: &Loaded<A>,
    reloaded: &[&str],
) -> Option<Loaded<A>> {
    let newer = match settings::load::<A>(argv) {
        Ok(newer) => newer,
        Err(error) => {
            tracing::error!(%error, "Reload refused: the settings do not load; nothing changed.");
            return None;
        }
    };
    for setting in started.changed(&newer) {
        if !reloaded.contains(&setting.as_str()) {
            tracing::warn!(%setting, "Setting changed; it takes effect at the next start.");
        }
    }
    Some(newer)
}

/// Serves until a stop: tells systemd the service is ready (with `status`),
/// pings its watchdog, and on each SIGHUP runs `reload` between
/// `RELOADING=1` and `READY=1`. Returns on SIGTERM or SIGINT, once
/// `STOPPING=1` is said; the caller then shuts down.
pub async fn until_stopped(mut signals: Signals, status: &str, mut reload: impl FnMut()) {
    notify::ready(status);
    tokio::spawn(notify::watchdog());
    loop {
        match signals.next().await {
            Signal::Hangup => {
                notify::reloading();
                reload();
                notify::ready(status);
            }
            signal => {
                tracing::info!(?signal, "Shutting down.");
                break;
            }
        }
    }
    notify::stopping();
}
