//! The stop signal of the controller process.

/// SIGTERM or SIGINT, heard by one listener for the life of the process: a signal
/// between two phases (waiting to lead, filling caches, reconciling) is never lost.
#[derive(Clone)]
pub struct Stop(tokio::sync::watch::Receiver<bool>);

impl Stop {
    /// Starts listening; call once, as the controller starts.
    pub fn on_signal() -> Self {
        let (requested, listener) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            stop_requested().await;
            let _ = requested.send(true);
        });
        Self(listener)
    }

    /// Resolves once a stop was requested.
    pub async fn requested(self) {
        let mut listener = self.0;
        // An error means the listener task is gone, which only a stop does.
        let _ = listener.wait_for(|stop| *stop).await;
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn stop_requested() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut terminate) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
