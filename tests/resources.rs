//! Running out of file descriptors, on the real binary started under a low
//! `RLIMIT_NOFILE`: sluice raises its soft limit to the hard one, keeps running when the
//! hard limit is reached, logs that at most once a second, blames no upstream for it, and
//! serves again as soon as connections close.

mod support;

use std::time::{Duration, Instant};

use support::*;

/// Reads `Max open files` (soft, hard) from `/proc/PID/limits`.
fn open_files_limit(pid: u32) -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut numbers = line
        .split_whitespace()
        .filter_map(|w| w.parse::<u64>().ok());
    Some((numbers.next()?, numbers.next()?))
}

#[tokio::test]
async fn out_of_descriptors_sluice_keeps_running_and_blames_no_server() {
    let backend = named_backend("ok").await;
    let listen: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let path = temp_config(
        "fds",
        &format!(
            r#"
[[listener]]
addr = "{listen}"

[upstream.app]
servers = ["{}"]
max_fails = 1
fail_timeout = "1h"
keepalive = 0

[[route]]
upstream = "app"
"#,
            backend.addr
        ),
    );
    // The soft limit starts at 16 and the hard one at 48; sluice must raise the first.
    let bin = env!("CARGO_BIN_EXE_sluice");
    let script = format!(
        "ulimit -Sn 16 && ulimit -Hn 48 && exec {bin} run -c {}",
        path.display()
    );
    let child = tokio::process::Command::new("bash")
        .args(["-c", &script])
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sluice under a low descriptor limit");
    let mut daemon = Daemon {
        child,
        cmd: script.clone(),
    };
    daemon.wait_listening(listen).await;
    assert_eq!(
        open_files_limit(daemon.pid()),
        Some((48, 48)),
        "the soft limit is raised to the hard limit"
    );
    assert_eq!(http_get(listen, "h", "/").await.status, 200);

    // Hold more connections than descriptors are left: the rest wait in the backlog.
    let started = Instant::now();
    let mut held = Vec::new();
    for _ in 0..60 {
        held.push(RawClient::connect(listen).await);
    }
    let pid = daemon.pid();
    eventually(WAIT, "sluice holds every descriptor it may", || async move {
        std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count) >= 48
    })
    .await;
    // A request on the first (accepted) connection needs one more descriptor upstream:
    // sluice has none, says 503, and does not blame the server.
    held[0].send("GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let refused = held[0].read_response().await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    // Stay out of descriptors for a while, so the log has a chance to repeat itself.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        daemon.child.try_wait().ok().flatten().is_none(),
        "sluice is still running"
    );

    drop(held);
    eventually(WAIT, "served again once connections close", || async {
        let Ok(Ok(stream)) = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(listen),
        )
        .await
        else {
            return false;
        };
        drop(stream);
        let r = http_get(listen, "h", "/").await;
        assert_ne!(r.status, 502, "the server was marked down: {}", r.text());
        r.status == 200
    })
    .await;
    let exhausted_for = started.elapsed();

    daemon.sigterm();
    let exit = daemon.wait_exit(WAIT).await;
    assert_eq!(exit.code, Some(0), "{exit}");
    let reports = exit
        .stderr
        .lines()
        .filter(|l| l.contains("out of file descriptors: refusing new connections"))
        .count();
    assert!(reports >= 1, "the shortage is logged{exit}");
    let most = usize::try_from(exhausted_for.as_secs()).unwrap_or(usize::MAX) + 1;
    assert!(
        reports <= most,
        "logged {reports} times in {exhausted_for:?}: at most once a second{exit}"
    );
    assert!(
        !exit.stderr.contains("marked_down=true"),
        "no server was marked down{exit}"
    );
}
