//! Thread per core: one single-threaded tokio runtime per worker thread, each with its own
//! accept loops on `SO_REUSEPORT` sockets, so a connection, its upstream connections and
//! its tunnel live on one thread from accept to close.
//!
//! Why not tokio's work-stealing runtime: a proxy's tasks are short polls around one read
//! and one write, and the multi-threaded scheduler's bookkeeping around each of them (run
//! queues shared between threads, a timing statistic updated with a floating-point power
//! per batch of polls, cross-thread wake-ups) costs more than the poll itself. Counted with
//! callgrind on the proxy process (one connection, sequential operations), the same build
//! on a single-threaded runtime spends 20 % fewer user-space instructions per 64 B
//! WebSocket echo (7,079 → 5,665) and 4 % fewer per keep-alive request (31,840 → 30,660).
//! The price is balance: the kernel spreads new connections over the workers by a hash of
//! their addresses, and a connection never moves, so one busy tunnel cannot be taken over by
//! an idle thread (see the README, "Cores").
//!
//! The signal handling, reloads, health checks, DNS and the admin endpoint stay on the
//! main runtime, which `lifecycle` builds as before.

use std::io;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// The worker threads and their runtimes' handles.
pub struct Workers {
    handles: Vec<Handle>,
    threads: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

impl Workers {
    /// How many workers: `TOKIO_WORKER_THREADS` when set to a positive number (the
    /// variable tokio's own runtime reads), else one per CPU the process may run on.
    pub fn count() -> usize {
        std::env::var("TOKIO_WORKER_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
            .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
            .unwrap_or(1)
    }

    /// Starts `count` worker threads, each running a single-threaded runtime until
    /// [`Workers::stop`].
    ///
    /// # Errors
    /// The OS refuses a thread or an epoll instance; the workers started are stopped.
    pub fn start(count: usize) -> io::Result<Workers> {
        let mut workers = Workers {
            handles: Vec::with_capacity(count),
            threads: Vec::with_capacity(count),
            stop: CancellationToken::new(),
        };
        for n in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            workers.handles.push(runtime.handle().clone());
            let stop = workers.stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("sluice-worker-{n}"))
                .spawn(move || {
                    crate::upstream::connect::set_worker(n);
                    runtime.block_on(stop.cancelled_owned());
                });
            match thread {
                Ok(thread) => workers.threads.push(thread),
                Err(err) => {
                    workers.stop();
                    return Err(err);
                }
            }
        }
        Ok(workers)
    }

    /// The runtimes to spawn accept loops on.
    pub fn handles(&self) -> Vec<Handle> {
        self.handles.clone()
    }

    /// Stops every worker runtime (what still runs on it is dropped) and waits for the
    /// threads. Called after the drain, when nothing is left to serve.
    pub fn stop(mut self) {
        self.stop.cancel();
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
    }
}
