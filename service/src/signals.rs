//! The signals a server binary answers: SIGTERM and SIGINT stop it
//! gracefully, SIGHUP reloads what can change without a restart.

use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: systemd's and most supervisors' stop.
    Terminate,
    /// SIGINT: Ctrl-C at a terminal.
    Interrupt,
    /// SIGHUP: reload settings, tokens and certificates.
    Hangup,
}

/// Handlers for the three signals, installed together so that none of them
/// still has its default action (which for each is to end the process)
/// once a binary has started serving.
pub struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

// === impl Signals ===

impl Signals {
    /// Installs the handlers; needs a tokio runtime.
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal to arrive.
    pub async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.terminate.recv() => Signal::Terminate,
            _ = self.interrupt.recv() => Signal::Interrupt,
            _ = self.hangup.recv() => Signal::Hangup,
        }
    }
}
