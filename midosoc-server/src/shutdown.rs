//! Stopping cleanly: waiting for SIGINT or SIGTERM, and telling the parts
//! that hold requests to let them go.

use tokio::sync::watch;

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM.
pub(crate) async fn signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };

    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();

    tokio::select! {
        () = interrupt => tracing::info!(signal = "SIGINT", "shutting down"),
        () = terminate => tracing::info!(signal = "SIGTERM", "shutting down"),
    }
}

/// A switch flipped once when the gateway starts to stop.
#[derive(Clone, Debug)]
pub(crate) struct Shutdown {
    sender: watch::Sender<bool>,
}

impl Shutdown {
    /// A switch not yet flipped.
    pub(crate) fn new() -> Self {
        Self { sender: watch::Sender::new(false) }
    }

    /// Flips the switch; everyone watching is told at once.
    pub(crate) fn trigger(&self) {
        self.sender.send_replace(true);
    }

    /// A receiver that sees the switch flip.
    pub(crate) fn watch(&self) -> watch::Receiver<bool> {
        self.sender.subscribe()
    }

    /// Resolves once the switch is flipped.
    pub(crate) async fn triggered(&self) {
        let mut receiver = self.watch();
        // An error means the sender is gone, which only happens at exit.
        let _ = receiver.wait_for(|stopping| *stopping).await;
    }
}
