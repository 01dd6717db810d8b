//! The systemd watchdog (SPEC "Lifecycle", systemd), on the real binary with `NOTIFY_SOCKET`
//! bound to a datagram socket in the test's temp dir:
//!
//! - `pings_from_ready_through_a_reload_until_stopping`: with `WATCHDOG_USEC`, `WATCHDOG=1`
//!   follows `READY=1`, goes on around and after a reload, and stops before `STOPPING=1`:
//!   none is sent during the drain, which an open tunnel keeps going for a second.
//! - `no_pings_without_watchdog_usec` and `no_pings_for_another_process`: without
//!   `WATCHDOG_USEC`, or with a `WATCHDOG_PID` that is not sluice's, nothing is sent but
//!   `READY=1`, `RELOADING=1`, `READY=1` and `STOPPING=1`.
//! - `an_invalid_watchdog_usec_is_ignored_with_one_warning`.
//!
//! The in-process side (a wedged runtime sends nothing) is in `src/lifecycle/watchdog.rs`.
//! Where a test shows that no ping comes, it watches for [`QUIET`], five intervals of the
//! 100 ms a ping would come at: that is the observation, not a wait for something to happen.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::net::UnixDatagram;
use tokio_tungstenite::tungstenite::Message;

/// Pings every 100 ms.
const WATCHDOG_USEC: &str = "200000";
/// How long "no ping" is watched for: five intervals.
const QUIET: Duration = Duration::from_millis(500);
const PING: &str = "WATCHDOG=1";

fn config(listen: SocketAddr, ws: SocketAddr) -> String {
    format!(
        r#"
[proxy]
shutdown_timeout = "1s"

[[listener]]
addr = "{listen}"

[upstream.ws]
servers = ["{ws}"]

[[route]]
upstream = "ws"
"#
    )
}

/// The socket systemd would listen on, and what sluice sends it.
struct Notify {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Notify {
    fn bind(name: &str) -> Notify {
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{name}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        Notify { socket, path }
    }

    /// The next message, one `KEY=VALUE` per line.
    async fn next(&self) -> String {
        let mut buf = [0u8; 512];
        let n = within(WAIT, self.socket.recv(&mut buf))
            .await
            .expect("recv");
        String::from_utf8_lossy(&buf[..n]).trim_end().to_owned()
    }

    /// The next message that is not a ping, and how many pings came before it.
    async fn next_after_pings(&self) -> (String, usize) {
        let mut pings = 0;
        loop {
            let message = self.next().await;
            if message != PING {
                return (message, pings);
            }
            pings += 1;
        }
    }

    /// Whatever arrives within `window`.
    async fn quiet(&self, window: Duration) -> Option<String> {
        let mut buf = [0u8; 512];
        match tokio::time::timeout(window, self.socket.recv(&mut buf)).await {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n.expect("recv")]).into_owned()),
            Err(_) => None,
        }
    }

    /// What was sent and not read yet (all of it, once the sender has exited).
    fn rest(&self) -> Vec<String> {
        let mut buf = [0u8; 512];
        let mut rest = Vec::new();
        while let Ok(n) = self.socket.try_recv(&mut buf) {
            rest.push(String::from_utf8_lossy(&buf[..n]).trim_end().to_owned());
        }
        rest
    }
}

impl Drop for Notify {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `sluice run -c CONFIG` with `NOTIFY_SOCKET` and `env`, and no watchdog variable of the
/// test's own environment.
fn start(config: &std::path::Path, notify: &Notify, env: &[(&str, &str)]) -> Daemon {
    let bin = env!("CARGO_BIN_EXE_sluice");
    let config = config.to_str().expect("utf-8 path");
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(["run", "-c", config])
        .env("RUST_LOG", "info")
        .env("NOTIFY_SOCKET", &notify.path)
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (key, value) in env {
        cmd.env(key, value);
    }
    let child = cmd.spawn().expect("spawn sluice");
    Daemon {
        child,
        cmd: format!("{env:?} {bin} run -c {config}"),
    }
}

#[tokio::test]
async fn pings_from_ready_through_a_reload_until_stopping() {
    let ws = ws_echo_backend().await;
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let path = temp_config("watchdog", &config(listen, ws.addr));
    let notify = Notify::bind("watchdog");
    let daemon = start(&path, &notify, &[("WATCHDOG_USEC", WATCHDOG_USEC)]);

    assert_eq!(notify.next().await, "READY=1");
    for _ in 0..3 {
        assert_eq!(notify.next().await, PING);
    }

    // Pings may come between RELOADING=1 and READY=1: the reload does not stop them.
    daemon.sighup();
    let (reloading, _) = notify.next_after_pings().await;
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "got {reloading:?}"
    );
    assert_eq!(notify.next_after_pings().await.0, "READY=1");
    for _ in 0..3 {
        assert_eq!(notify.next().await, PING);
    }

    // An open tunnel keeps the drain going until shutdown_timeout (1 s, ten intervals).
    let (mut tunnel, _) = ws_connect(&format!("ws://{listen}/"), &[])
        .await
        .expect("tunnel opens");
    within(WAIT, tunnel.send(Message::text("hi")))
        .await
        .unwrap();
    let echoed = within(WAIT, tunnel.next()).await.unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "hi");

    daemon.sigterm();
    assert_eq!(notify.next_after_pings().await.0, "STOPPING=1");
    let exit = daemon.wait_exit(WAIT).await;
    assert_eq!(exit.code, Some(0), "{exit}");
    assert!(
        exit.stderr.contains("shutdown_timeout reached"),
        "the drain was not held open by the tunnel{exit}"
    );
    // sluice has exited: everything it sent is in the queue.
    assert_eq!(notify.rest(), Vec::<String>::new(), "sent after STOPPING=1");
}

/// READY=1, no ping for [`QUIET`], a reload with nothing between RELOADING=1 and READY=1,
/// and STOPPING=1 as the last message.
async fn no_pings(daemon: Daemon, notify: &Notify) -> Exit {
    assert_eq!(notify.next().await, "READY=1");
    assert_eq!(notify.quiet(QUIET).await, None);
    daemon.sighup();
    assert!(notify.next().await.starts_with("RELOADING=1\n"));
    assert_eq!(notify.next().await, "READY=1");
    daemon.sigterm();
    assert_eq!(notify.next().await, "STOPPING=1");
    let exit = daemon.wait_exit(WAIT).await;
    assert_eq!(exit.code, Some(0), "{exit}");
    assert_eq!(notify.rest(), Vec::<String>::new(), "sent after STOPPING=1");
    exit
}

#[tokio::test]
async fn no_pings_without_watchdog_usec() {
    let ws = ws_echo_backend().await;
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let path = temp_config("no-watchdog", &config(listen, ws.addr));
    let notify = Notify::bind("no-watchdog");
    let exit = no_pings(start(&path, &notify, &[]), &notify).await;
    assert!(!exit.stderr.contains("systemd watchdog"), "{exit}");
}

#[tokio::test]
async fn no_pings_for_another_process() {
    let ws = ws_echo_backend().await;
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let path = temp_config("other-watchdog", &config(listen, ws.addr));
    let notify = Notify::bind("other-watchdog");
    // This test's own pid: alive, and not sluice's.
    let other = std::process::id().to_string();
    let env = [("WATCHDOG_USEC", WATCHDOG_USEC), ("WATCHDOG_PID", &other)];
    let exit = no_pings(start(&path, &notify, &env), &notify).await;
    assert!(!exit.stderr.contains("systemd watchdog"), "{exit}");
}

#[tokio::test]
async fn an_invalid_watchdog_usec_is_ignored_with_one_warning() {
    let ws = ws_echo_backend().await;
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let path = temp_config("bad-watchdog", &config(listen, ws.addr));
    for (i, value) in ["0", "30s"].into_iter().enumerate() {
        let notify = Notify::bind(&format!("bad-watchdog-{i}"));
        let daemon = start(&path, &notify, &[("WATCHDOG_USEC", value)]);
        let exit = no_pings(daemon, &notify).await;
        let warning = format!("WATCHDOG_USEC=\"{value}\" is not a positive number");
        assert_eq!(exit.stderr.matches(&warning).count(), 1, "{exit}");
        assert!(exit.stderr.contains("systemd watchdog off"), "{exit}");
    }
}
