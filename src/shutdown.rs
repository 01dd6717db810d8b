//! Draining: one small type that says "stop accepting" and tracks what is still running.
//!
//! Tunnels outlive hyper's connection future (once a connection upgrades, hyper's serving
//! future is finished), so hyper's graceful shutdown cannot see them. Every connection task
//! *and* every tunnel task is spawned through [`Shutdown::spawn`], so draining waits for all
//! of them, and cuts whatever is left when `shutdown_timeout` runs out.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long cut tasks get to close after `shutdown_timeout` before the process stops
/// waiting for them: a tunnel takes up to a second to reach a frame boundary for its
/// Close and up to a second for the Close in return.
const CUT_GRACE: Duration = Duration::from_secs(3);

/// Shared drain state; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    draining: CancellationToken,
    /// Read on every request (503 while draining), so a plain flag beside the token.
    draining_flag: AtomicBool,
    cut: CancellationToken,
    tasks: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining_flag.load(Ordering::Relaxed)
    }

    /// Resolves when draining begins: accept loops stop, connections finish their request.
    pub async fn draining(&self) {
        self.inner.draining.cancelled().await;
    }

    /// Resolves when `shutdown_timeout` has run out: tunnels and requests are closed.
    pub async fn cut(&self) {
        self.inner.cut.cancelled().await;
    }

    /// Runs a connection or tunnel task that draining waits for.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.inner.tasks.spawn(task);
    }

    /// Starts draining and waits until every tracked task has finished, or `timeout` has
    /// passed; then cuts what is left and waits briefly for it to close.
    pub async fn drain(&self, timeout: Duration) {
        self.inner.draining_flag.store(true, Ordering::Relaxed);
        self.inner.draining.cancel();
        self.inner.tasks.close();
        if tokio::time::timeout(timeout, self.inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::info!(
                remaining = self.inner.tasks.len(),
                "shutdown_timeout reached, closing remaining connections and tunnels"
            );
            self.inner.cut.cancel();
            let _ = tokio::time::timeout(CUT_GRACE, self.inner.tasks.wait()).await;
        }
    }
}
