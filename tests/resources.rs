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

/// Connections waiting in the accept queue of the loopback listener on `port` (the
/// `rx_queue` of a listening socket in `/proc/net/tcp`).
fn accept_queue(port: u16) -> Option<usize> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (addr, state, queues) = (fields.get(1)?, fields.get(3)?, fields.get(4)?);
        if *addr != local || *state != "0A" {
            return None;
        }
        let rx = queues.split(':').nth(1)?;
        usize::from_str_radix(rx, 16).ok()
    })
}

/// Descriptors the process holds now.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
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
    // One worker: the test reads the accept queue of the listener's one socket (with a
    // worker per core, each has a socket of its own and its own queue).
    let child = tokio::process::Command::new("bash")
        .args(["-c", &script])
        .env("RUST_LOG", "info")
        .env("TOKIO_WORKER_THREADS", "1")
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
    let pid = daemon.pid();
    let idle_fds = open_fds(pid);
    assert_eq!(http_get(listen, "h", "/").await.status, 200);
    // That exchange's two sockets are closed before the descriptors run out, so no
    // descriptor frees up behind the test's back.
    eventually(
        WAIT,
        "the first exchange's sockets are closed",
        || async move { open_fds(pid) <= idle_fds },
    )
    .await;

    // Hold more connections than descriptors are left: the rest wait in the backlog.
    let started = Instant::now();
    let mut held = Vec::new();
    for _ in 0..60 {
        held.push(RawClient::connect(listen).await);
    }
    eventually(
        WAIT,
        "sluice holds every descriptor it may",
        || async move { open_fds(pid) >= 48 },
    )
    .await;
    // A request on an accepted connection needs one more descriptor upstream: sluice has
    // none, says 503, and does not blame the server. (A socket the test closed earlier may
    // still free one descriptor late; that request is served, and the next one tried once
    // sluice is full again.)
    let port = listen.port();
    let mut queued = accept_queue(port).expect("the listener is in /proc/net/tcp");
    let mut refused = None;
    for client in held.iter_mut().take(8) {
        client.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
        let r = client.read_response().await;
        match r.status {
            503 => {
                refused = Some(r);
                break;
            }
            200 => {
                // The exchange's upstream socket is closed now; sluice is full again
                // once its accept loop has taken the freed descriptor for a waiting
                // connection.
                let before = queued;
                eventually(WAIT, "sluice takes the freed descriptor", || async move {
                    accept_queue(port).is_some_and(|q| q < before)
                })
                .await;
                queued = accept_queue(port).unwrap_or(0);
            }
            _ => panic!(
                "neither served nor refused for lack of descriptors: {}",
                r.text()
            ),
        }
    }
    let refused = refused.expect("a request with no descriptor left is answered 503");
    assert_eq!(refused.body_str(), "service unavailable\n");
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
