//! Turning the operating system's stop requests into a [`CancellationToken`].
//!
//! Libraries never listen for signals: their `run` takes a token and, once it is
//! cancelled, stops taking work, finishes what is in flight, commits and returns. Only the
//! binary creates the token, with [`signal_token`], whose task is the single place in the
//! workspace that may end the process on its own (see its docs). To bound a piece of work
//! by the token, use [`CancellationToken::run_until_cancelled`] or a `select!` branch on
//! [`CancellationToken::cancelled`].

use tokio::signal::unix::{Signal, SignalKind, signal};
pub use tokio_util::sync::CancellationToken;

/// Exit code when a second signal arrives while draining: 128 + SIGINT, the code shells
/// report for an interrupted program, for SIGTERM too so "gave up draining" has one code.
pub const EXIT_CODE_FORCED: i32 = 130;

/// A token cancelled at the first SIGTERM (Kubernetes stopping the Pod) or SIGINT (Ctrl-C).
///
/// For binaries only, called once from `main` inside the Tokio runtime. The first signal
/// is logged and cancels the token; the process then drains and exits 0 on its own. A
/// *second* signal while draining means the operator has lost patience: the process exits
/// immediately with [`EXIT_CODE_FORCED`] (130), skipping the rest of the drain. Exiting from
/// here is deliberate and the only such place: a library must not end the process.
///
/// If the handlers cannot be installed (a runtime built without the I/O driver), this is
/// logged as an error and the token is returned anyway; signals then keep their default
/// action and end the process at once.
///
/// # Panics
///
/// Outside a Tokio runtime, like [`tokio::spawn`].
pub fn signal_token() -> CancellationToken {
    let token = CancellationToken::new();
    // Installed here rather than in the task, so a signal arriving before the task first
    // runs is already caught.
    match StopSignals::install() {
        Ok(mut signals) => {
            let cancel = token.clone();
            tokio::spawn(async move {
                let Some(first) = signals.recv().await else {
                    return;
                };
                tracing::info!(
                    signal = first,
                    "shutdown requested; draining (send another signal to exit at once)"
                );
                cancel.cancel();
                let Some(second) = signals.recv().await else {
                    return;
                };
                tracing::warn!(
                    signal = second,
                    exit_code = EXIT_CODE_FORCED,
                    "second signal while draining; exiting without finishing the drain"
                );
                std::process::exit(EXIT_CODE_FORCED);
            });
        }
        Err(error) => tracing::error!(
            error = %error,
            "cannot install SIGTERM/SIGINT handlers; a signal will end the process without draining"
        ),
    }
    token
}

/// The two signals that ask a process to stop.
struct StopSignals {
    terminate: Signal,
    interrupt: Signal,
}

impl StopSignals {
    fn install() -> std::io::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// The name of the next signal, or `None` once the runtime is shutting down.
    async fn recv(&mut self) -> Option<&'static str> {
        tokio::select! {
            Some(()) = self.terminate.recv() => Some("SIGTERM"),
            Some(()) = self.interrupt.recv() => Some("SIGINT"),
            else => None,
        }
    }
}
