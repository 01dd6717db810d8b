//! The process's own resources: file descriptors.
//!
//! At start sluice raises its soft `RLIMIT_NOFILE` to the hard limit (every tunnel holds
//! two descriptors). When it runs out anyway, that is sluice's shortage, not a peer's
//! fault: accept loops pause, upstream connects fail with `503` without marking the server
//! down, and the shortage is logged at most once a second however many sockets hit it.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the new soft limit.
///
/// # Errors
/// The OS refused to read or set the limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// Whether `err` means the process (or the system) has no descriptor or buffer to spare:
/// EMFILE, ENFILE, ENOBUFS or ENOMEM.
pub fn is_exhaustion(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(23 | 24 | 105 | 12))
}

/// Shortest gap between two "out of descriptors" log lines.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// Logs a shortage, at most once a second for the whole process.
pub fn report_exhaustion(during: &'static str, err: &io::Error) {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    static LAST_MS: AtomicU64 = AtomicU64::new(0);
    let epoch = *EPOCH.get_or_init(Instant::now);
    // +1 so the very first report is never mistaken for "logged at 0 ms".
    let now = u64::try_from(epoch.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let last = LAST_MS.load(Ordering::Relaxed);
    let every = u64::try_from(LOG_EVERY.as_millis()).unwrap_or(u64::MAX);
    if last != 0 && now.saturating_sub(last) < every {
        return;
    }
    if LAST_MS
        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
    {
        tracing::error!(
            during,
            cause = %err,
            "out of file descriptors: refusing new connections until some close"
        );
    }
}
