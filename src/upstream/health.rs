//! Passive health, with nginx's semantics: `max_fails` failures within `fail_timeout` take a
//! server out for `fail_timeout`.
//!
//! Only failures to *reach* a server count (connect errors and connect timeouts): an answer
//! the server chose to give, even a `5xx` or a refused upgrade, says it is alive.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Milliseconds since the first call, a cheap monotonic clock shared by every server so
/// "down until" fits in an atomic.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The pool's rule: how many failures within how long take a server out, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct FailPolicy {
    max_fails: u32,
    fail_timeout_ms: u64,
}

impl FailPolicy {
    pub fn new(max_fails: u32, fail_timeout: Duration) -> FailPolicy {
        FailPolicy {
            max_fails,
            fail_timeout_ms: u64::try_from(fail_timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// Failure accounting for one server; kept across reloads (see `state`), while the
/// [`FailPolicy`] comes from the current config.
#[derive(Debug, Default)]
pub struct HealthState {
    /// `now_ms()` before which the server is skipped; 0 when it is up. Read on every pick,
    /// so it is an atomic rather than behind the mutex.
    down_until: AtomicU64,
    /// (failures counted, when the counting window opened). Touched only on failures.
    window: Mutex<(u32, u64)>,
}

impl HealthState {
    /// Whether the server may be picked now.
    pub fn is_available(&self) -> bool {
        let until = self.down_until.load(Ordering::Relaxed);
        until == 0 || now_ms() >= until
    }

    /// Records a failure to reach the server; returns true when this one took it down.
    pub fn record_failure(&self, policy: FailPolicy) -> bool {
        if policy.max_fails == 0 {
            return false;
        }
        let now = now_ms();
        // A poisoned lock only means another thread panicked mid-update of two integers;
        // the numbers are still usable.
        let mut window = self
            .window
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (fails, opened) = &mut *window;
        if *fails == 0 || now.saturating_sub(*opened) >= policy.fail_timeout_ms {
            *fails = 0;
            *opened = now;
        }
        *fails += 1;
        if *fails >= policy.max_fails {
            *fails = 0;
            self.down_until.store(
                now.saturating_add(policy.fail_timeout_ms).max(1),
                Ordering::Relaxed,
            );
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_failure_takes_a_server_down_with_max_fails_1() {
        let p = FailPolicy::new(1, Duration::from_secs(10));
        let h = HealthState::default();
        assert!(h.is_available());
        assert!(h.record_failure(p));
        assert!(!h.is_available());
    }

    #[test]
    fn max_fails_counts_within_the_window() {
        let p = FailPolicy::new(3, Duration::from_secs(10));
        let h = HealthState::default();
        assert!(!h.record_failure(p));
        assert!(!h.record_failure(p));
        assert!(h.is_available());
        assert!(h.record_failure(p));
        assert!(!h.is_available());
    }

    #[test]
    fn max_fails_0_never_takes_a_server_down() {
        let p = FailPolicy::new(0, Duration::from_secs(10));
        let h = HealthState::default();
        for _ in 0..10 {
            assert!(!h.record_failure(p));
        }
        assert!(h.is_available());
    }

    #[test]
    fn a_server_comes_back_after_fail_timeout() {
        let p = FailPolicy::new(1, Duration::from_millis(20));
        let h = HealthState::default();
        h.record_failure(p);
        assert!(!h.is_available());
        std::thread::sleep(Duration::from_millis(40));
        assert!(h.is_available());
    }
}
