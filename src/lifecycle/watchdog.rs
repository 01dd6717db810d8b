//! The systemd watchdog: `WATCHDOG=1` every half of `WATCHDOG_USEC`, for as long as
//! sluice still takes connections.
//!
//! With `WatchdogSec=` in the unit, systemd passes `WATCHDOG_USEC` (and `WATCHDOG_PID`) and
//! kills the service when no `WATCHDOG=1` arrives within that time; `Restart=on-failure`
//! then starts it again. A heartbeat is only worth something if it stops when the process
//! stops doing its job, so:
//! - it is sent by a task on the tokio runtime that serves, not by a thread of its own: a
//!   runtime whose threads are all blocked or spinning sends nothing;
//! - it is sent only while a liveness check holds (for `sluice run`, `Running::liveness`:
//!   the accept loop of every listener runs, and no drain has begun);
//! - it stops, and its task is gone, before `STOPPING=1` is sent, so none follows it;
//!   systemd stops watching once the service leaves its running state, and
//!   `TimeoutStopSec` bounds the drain instead.
//!
//! [`ping`] takes the socket, the interval and the liveness check as arguments, so that
//! the unit tests run it on a current-thread runtime: blocking that runtime's only thread
//! (or failing the check) silences it until the thread is released (or the check holds
//! again). Checked by breaking each rule in turn: a ping loop on a thread of its own, or
//! one that ignores the check, fails `pings_stop_while_the_runtime_is_wedged_and_resume_after`;
//! a [`Watchdog::stop`] that leaves the task running fails `no_ping_after_stop`.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::task::JoinHandle;

/// One datagram, as sd_notify(3) writes it.
const PING: &[u8] = b"WATCHDOG=1\n";

/// The shortest interval: the tokio timer's resolution (`WATCHDOG_USEC=1` would mean 0).
const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// A watchdog value that sluice ignores, with the watchdog off.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum Invalid {
    #[error("WATCHDOG_USEC={0:?} is not a positive number of microseconds")]
    Usec(String),
    #[error("WATCHDOG_PID={0:?} is not a process id")]
    Pid(String),
}

/// The ping task, when systemd asked for one.
pub(super) struct Watchdog {
    task: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts pinging `NOTIFY_SOCKET` if systemd asked this process for a watchdog, on the
    /// current tokio runtime. An invalid `WATCHDOG_USEC` or `WATCHDOG_PID` is logged once
    /// and leaves the watchdog off: sluice serves either way.
    pub(super) fn start(alive: impl Fn() -> bool + Send + 'static) -> Watchdog {
        let idle = Watchdog { task: None };
        let Some(socket) = std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty()) else {
            return idle;
        };
        let usec = std::env::var_os("WATCHDOG_USEC");
        let pid = std::env::var_os("WATCHDOG_PID");
        let interval = match interval(usec.as_deref(), pid.as_deref(), std::process::id()) {
            Ok(Some(interval)) => interval,
            Ok(None) => return idle,
            Err(err) => {
                tracing::warn!(problem = %err, "systemd watchdog off");
                return idle;
            }
        };
        tracing::info!(?interval, "systemd watchdog: pinging");
        Watchdog {
            task: Some(tokio::spawn(ping(PathBuf::from(socket), interval, alive))),
        }
    }

    /// Stops the pings and waits until the task is gone, so no ping follows `STOPPING=1`.
    pub(super) async fn stop(self) {
        if let Some(task) = self.task {
            task.abort();
            // Resolves once the task's future is dropped: it sends nothing after this.
            let _ = task.await;
        }
    }
}

/// How often to ping, from `WATCHDOG_USEC` and `WATCHDOG_PID` as sd_watchdog_enabled(3)
/// reads them: `Ok(None)` when there is no watchdog, or it is another process's.
///
/// `sd_notify::watchdog_enabled` is not used: it reads an invalid value as no value (a
/// typo would turn the watchdog off in silence) and `0` as a zero timeout.
fn interval(
    usec: Option<&OsStr>,
    pid: Option<&OsStr>,
    own_pid: u32,
) -> Result<Option<Duration>, Invalid> {
    let Some(usec) = usec else {
        return Ok(None);
    };
    if let Some(pid) = pid {
        let text = pid.to_string_lossy();
        match text.parse::<u32>() {
            Ok(pid) if pid == own_pid => {}
            Ok(_) => return Ok(None),
            Err(_) => return Err(Invalid::Pid(text.into_owned())),
        }
    }
    let text = usec.to_string_lossy();
    match text.parse::<u64>() {
        Ok(usec) if usec > 0 => Ok(Some((Duration::from_micros(usec) / 2).max(MIN_INTERVAL))),
        _ => Err(Invalid::Usec(text.into_owned())),
    }
}

/// Sends `WATCHDOG=1` to the datagram socket at `socket` now and then every `interval`,
/// each time only if `alive()` holds. Runs until dropped (or its task is aborted).
///
/// It is a future, not a thread, on purpose: if the runtime polling it is wedged, no ping
/// goes out and systemd's watchdog fires.
pub(super) async fn ping(socket: PathBuf, interval: Duration, alive: impl Fn() -> bool) {
    let mut was_alive = true;
    let mut was_sent = true;
    loop {
        let is_alive = alive();
        if is_alive {
            match send(&socket, PING).await {
                Ok(()) => was_sent = true,
                Err(err) => {
                    if was_sent {
                        tracing::warn!(cause = %err, "cannot send the systemd watchdog ping");
                    }
                    was_sent = false;
                }
            }
            if !was_alive {
                tracing::info!("accepting on every listener again: watchdog pings resume");
            }
        } else if was_alive {
            tracing::error!(
                "a listener no longer accepts connections: watchdog pings withheld, \
                 so systemd restarts sluice"
            );
        }
        was_alive = is_alive;
        tokio::time::sleep(interval).await;
    }
}

/// One datagram to `socket`. Non-blocking: a full receive queue at the service manager
/// waits here, in this task, without holding a runtime thread.
async fn send(socket: &Path, message: &[u8]) -> io::Result<()> {
    let datagram = tokio::net::UnixDatagram::unbound()?;
    datagram.connect(socket)?;
    datagram.send(message).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{mpsc, Arc};

    /// The longest any wait may take.
    const WAIT: Duration = Duration::from_secs(10);
    const INTERVAL: Duration = Duration::from_millis(20);
    /// How long "no ping" is watched for: ten intervals.
    const QUIET: Duration = Duration::from_millis(200);

    fn os(s: &str) -> Option<&OsStr> {
        Some(OsStr::new(s))
    }

    #[test]
    fn half_of_watchdog_usec_for_this_process_only() {
        let half = Duration::from_millis(100);
        assert_eq!(interval(os("200000"), None, 7), Ok(Some(half)));
        assert_eq!(interval(os("200000"), os("7"), 7), Ok(Some(half)));
        assert_eq!(interval(os("200000"), os("8"), 7), Ok(None));
        assert_eq!(interval(None, None, 7), Ok(None));
        assert_eq!(interval(None, os("7"), 7), Ok(None));
        assert_eq!(interval(os("1"), None, 7), Ok(Some(MIN_INTERVAL)));
        // Far beyond any timer: tokio caps a sleep at about 30 years, no overflow.
        assert!(interval(os("18446744073709551615"), None, 7).is_ok());
    }

    #[test]
    fn invalid_values_turn_the_watchdog_off() {
        assert_eq!(
            interval(os("0"), None, 7),
            Err(Invalid::Usec("0".to_owned()))
        );
        assert_eq!(
            interval(os("30s"), None, 7),
            Err(Invalid::Usec("30s".to_owned()))
        );
        assert_eq!(interval(os(""), None, 7), Err(Invalid::Usec(String::new())));
        assert_eq!(
            interval(os("-5"), None, 7),
            Err(Invalid::Usec("-5".to_owned()))
        );
        assert_eq!(
            interval(os("200000"), os("me"), 7),
            Err(Invalid::Pid("me".to_owned()))
        );
    }

    /// A datagram socket bound in the temp dir, removed on drop.
    struct Receiver {
        socket: UnixDatagram,
        path: PathBuf,
    }

    impl Receiver {
        fn bind() -> Receiver {
            static N: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "sluice-watchdog-{}-{}.sock",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            let _ = std::fs::remove_file(&path);
            let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
            Receiver { socket, path }
        }

        /// The next datagram within `within`, or `None`.
        fn next(&self, within: Duration) -> Option<String> {
            self.socket
                .set_read_timeout(Some(within))
                .expect("read timeout");
            let mut buf = [0u8; 64];
            match self.socket.recv(&mut buf) {
                Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    None
                }
                Err(err) => panic!("recv: {err}"),
            }
        }

        fn ping(&self) {
            assert_eq!(self.next(WAIT).as_deref(), Some("WATCHDOG=1\n"), "no ping");
        }

        /// What was sent so far and not yet read.
        fn queued(&self) -> Vec<String> {
            self.socket.set_nonblocking(true).expect("non-blocking");
            let mut buf = [0u8; 64];
            let mut queued = Vec::new();
            while let Ok(n) = self.socket.recv(&mut buf) {
                queued.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            self.socket.set_nonblocking(false).expect("blocking");
            queued
        }
    }

    impl Drop for Receiver {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// The runtime under test runs on a thread of its own; the test thread is outside it
    /// and can watch the socket while that runtime is blocked.
    #[test]
    fn pings_stop_while_the_runtime_is_wedged_and_resume_after() {
        let receiver = Receiver::bind();
        let alive = Arc::new(AtomicBool::new(true));
        let (wedge, mut wedges) = tokio::sync::mpsc::unbounded_channel::<()>();
        let (wedged_tx, wedged) = mpsc::channel::<()>();
        let (release, released) = mpsc::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let socket = receiver.path.clone();
        let check = Arc::clone(&alive);
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                tokio::spawn(ping(socket, INTERVAL, move || check.load(Ordering::SeqCst)));
                while wedges.recv().await.is_some() {
                    // Blocks the runtime's only thread until released (at most WAIT).
                    let _ = wedged_tx.send(());
                    let _ = released.recv_timeout(WAIT);
                }
            });
        });
        let wedge_now = || {
            wedge.send(()).expect("runtime thread alive");
            wedged.recv_timeout(WAIT).expect("the runtime blocks");
            // What was sent before the wedge began.
            receiver.queued();
        };

        for _ in 0..3 {
            receiver.ping();
        }

        // Wedged: no ping for ten intervals; released: pings again.
        wedge_now();
        assert_eq!(receiver.next(QUIET), None, "a ping from a wedged runtime");
        release.send(()).expect("release");
        receiver.ping();
        receiver.ping();

        // The check fails (set while wedged, so no ping is under way): no pings, though
        // the runtime runs; it holds again: pings again.
        wedge_now();
        alive.store(false, Ordering::SeqCst);
        release.send(()).expect("release");
        assert_eq!(receiver.next(QUIET), None, "a ping while not alive");
        alive.store(true, Ordering::SeqCst);
        receiver.ping();

        drop(wedge);
        thread.join().expect("runtime thread");
    }

    /// Once [`Watchdog::stop`] has returned, no ping follows, though the runtime runs on.
    #[test]
    fn no_ping_after_stop() {
        let receiver = Receiver::bind();
        let (stop, stop_now) = tokio::sync::oneshot::channel::<()>();
        let (stopped_tx, stopped) = mpsc::channel::<()>();
        let (finish, finished) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let socket = receiver.path.clone();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let watchdog = Watchdog {
                    task: Some(tokio::spawn(ping(socket, INTERVAL, || true))),
                };
                let _ = stop_now.await;
                watchdog.stop().await;
                let _ = stopped_tx.send(());
                let _ = finished.await;
            });
        });

        receiver.ping();
        stop.send(()).expect("runtime thread alive");
        stopped.recv_timeout(WAIT).expect("stop returns");
        // What was sent before stop returned.
        receiver.queued();
        assert_eq!(receiver.next(QUIET), None, "a ping after stop");

        let _ = finish.send(());
        thread.join().expect("runtime thread");
    }
}
