//! Start, drain and exit: the real `sluice` binary (SPEC "Command line", "Lifecycle",
//! "Access log") and `Server::run`'s drain in-process.
//!
//! The binary cannot report a port-0 address back, so these tests take a free port by
//! binding `127.0.0.1:0` and releasing it just before starting sluice.
//!
//! Binary
//! - `serves_then_exits_0_quickly_on_sigterm_when_idle`
//! - `sigterm_drains_an_open_tunnel_until_shutdown_timeout`
//! - `address_in_use_exits_1_with_one_line`
//! - `json_log_format_writes_json_lines_with_an_access_line`
//! - `sigint_drains_too_and_log_format_goes_before_the_subcommand`
//!
//! In-process
//! - `drain_completes_in_flight_request_and_refuses_new_connections`

mod support;

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio_tungstenite::tungstenite::Message;

/// A config for the binary: a listener on a free loopback port, everything to `backend`.
fn binary_config(backend: SocketAddr, proxy_extra: &str) -> (SocketAddr, String) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = format!(
        r#"
[proxy]
{proxy_extra}

[[listener]]
addr = "{addr}"

[upstream.app]
servers = ["{backend}"]

[[route]]
upstream = "app"
"#
    );
    (addr, text)
}

/// Starts `sluice run -c FILE` (plus `extra` args) and waits until it listens.
async fn start_daemon(name: &str, config: &str, addr: SocketAddr, extra: &[&str]) -> Daemon {
    let path = temp_config(name, config);
    let path = path.to_str().unwrap().to_owned();
    let mut args = vec!["run", "-c", path.as_str()];
    args.extend_from_slice(extra);
    let mut daemon = Daemon::start(&args);
    daemon.wait_listening(addr).await;
    daemon
}

#[tokio::test]
async fn serves_then_exits_0_quickly_on_sigterm_when_idle() {
    let backend = named_backend("from-backend").await;
    let (addr, config) = binary_config(backend.addr, "");
    let daemon = start_daemon("serves", &config, addr, &[]).await;

    let r = http_get(addr, "h", "/").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body_str(), "from-backend");

    let start = Instant::now();
    daemon.sigterm();
    let exit = daemon.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(exit.code, Some(0), "{exit}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?} to exit with nothing open{exit}",
        start.elapsed()
    );
}

#[tokio::test]
async fn sigterm_drains_an_open_tunnel_until_shutdown_timeout() {
    let backend = ws_echo_backend().await;
    let (addr, config) = binary_config(backend.addr, r#"shutdown_timeout = "2s""#);
    let daemon = start_daemon("drain-tunnel", &config, addr, &[]).await;

    let (mut ws, _) = ws_connect(&format!("ws://{addr}/"), &[])
        .await
        .expect("handshake");
    within(WAIT, ws.send(Message::Text("before".into())))
        .await
        .unwrap();
    let got = within(WAIT, ws.next()).await;
    assert_eq!(got.unwrap().unwrap(), Message::Text("before".into()));

    let signalled = Instant::now();
    daemon.sigterm();

    // New connections are refused (or answered 503) while draining...
    eventually(
        Duration::from_secs(2),
        "new connections are refused",
        || async move { !is_served(addr).await },
    )
    .await;
    // ...while the open tunnel still works.
    assert!(
        signalled.elapsed() < Duration::from_millis(1500),
        "too slow to check the tunnel inside the drain window"
    );
    within(WAIT, ws.send(Message::Text("during".into())))
        .await
        .expect("tunnel still open during the drain");
    let got = within(WAIT, ws.next()).await;
    assert_eq!(
        got.expect("tunnel closed early")
            .expect("tunnel broke early"),
        Message::Text("during".into())
    );

    // At shutdown_timeout the tunnel is closed and the process exits 0.
    let end = within(Duration::from_secs(6), ws.next()).await;
    let closed_after = signalled.elapsed();
    assert!(
        matches!(end, None | Some(Err(_)) | Some(Ok(Message::Close(_)))),
        "expected the tunnel to close, got {end:?}"
    );
    assert!(
        closed_after >= Duration::from_millis(1500),
        "tunnel closed {closed_after:?} after SIGTERM, before shutdown_timeout"
    );
    let exit = daemon.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(exit.code, Some(0), "{exit}");
}

#[tokio::test]
async fn address_in_use_exits_1_with_one_line() {
    let backend = named_backend("x").await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let config = format!(
        r#"
[[listener]]
addr = "{addr}"

[upstream.app]
servers = ["{}"]

[[route]]
upstream = "app"
"#,
        backend.addr
    );
    let path = temp_config("in-use", &config);

    let daemon = Daemon::start(&["run", "-c", path.to_str().unwrap()]);
    let exit = daemon.wait_exit(WAIT).await;
    assert_eq!(exit.code, Some(1), "{exit}");
    let lines: Vec<&str> = exit
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr{exit}");
    assert!(
        lines[0].contains(&addr.port().to_string()),
        "the line should name the address{exit}"
    );
    assert!(
        lines[0].to_ascii_lowercase().contains("in use"),
        "the line should say the address is in use{exit}"
    );
    drop(taken);
}

/// A config file with one listener on a free port and one route to `backend`.
fn one_route_on_a_free_port(name: &str, backend: SocketAddr) -> (SocketAddr, std::path::PathBuf) {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let config = format!(
        r#"
[[listener]]
addr = "{addr}"

[upstream.app]
servers = ["{backend}"]

[[route]]
upstream = "app"
"#
    );
    (addr, temp_config(name, &config))
}

/// `sluice run -c PATH` with two workers (`TOKIO_WORKER_THREADS=2`).
fn two_workers(path: &std::path::Path, which: &str) -> Daemon {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "-c", path.to_str().expect("a UTF-8 temp path")])
        .env("TOKIO_WORKER_THREADS", "2")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sluice");
    Daemon {
        child,
        cmd: format!("sluice run ({which}, 2 workers)"),
    }
}

/// With a worker per core, each worker has its own `SO_REUSEPORT` socket on a listener's
/// address; a second sluice on the same address must still be refused, not share it.
#[tokio::test]
async fn a_second_sluice_on_the_same_address_exits_1() {
    let backend = named_backend("x").await;
    let (addr, path) = one_route_on_a_free_port("twice", backend.addr);
    let mut first = two_workers(&path, "first");
    first.wait_listening(addr).await;
    let second = two_workers(&path, "second");
    let exit = second.wait_exit(WAIT).await;
    assert_eq!(exit.code, Some(1), "{exit}");
    assert!(exit.stderr.contains("in use"), "{exit}");
    // The first one still serves.
    let r = http_get(addr, "h", "/").await;
    assert_eq!(r.status, 200);
    first.sigterm();
    let exit = first.wait_exit(WAIT).await;
    assert_eq!(exit.code, Some(0), "{exit}");
}

/// Idle upstream connections are kept per worker: with two workers, requests that arrive
/// one after another on new client connections (spread over both workers' sockets by the
/// kernel) reuse at most one upstream connection per worker.
#[tokio::test]
async fn two_workers_reuse_their_own_idle_upstream_connections() {
    let backend = named_backend("x").await;
    let (addr, path) = one_route_on_a_free_port("pools", backend.addr);
    let mut daemon = two_workers(&path, "pools");
    daemon.wait_listening(addr).await;
    // wait_listening's probe connections carry no request, so they open nothing upstream.
    for i in 0..20 {
        let r = http_get(addr, "h", &format!("/{i}")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(backend.count(), 20);
    assert!(
        (1..=2).contains(&backend.connections()),
        "20 requests one after another opened {} upstream connections; with keep-alive, \
         each of the 2 workers should have reused its own",
        backend.connections()
    );
    daemon.sigterm();
    let exit = daemon.wait_exit(WAIT).await;
    assert_eq!(exit.code, Some(0), "{exit}");
}

#[tokio::test]
async fn json_log_format_writes_json_lines_with_an_access_line() {
    let backend = ws_echo_backend().await;
    // The tunnel below is closed before SIGTERM; the short timeout only bounds a failure.
    let (addr, config) = binary_config(backend.addr, r#"shutdown_timeout = "3s""#);
    let daemon = start_daemon("json-log", &config, addr, &["--log-format", "json"]).await;

    // A plain request (the echo backend refuses it, which is still an answer to log)...
    let r = http_get(addr, "json.example", "/hello?x=1").await;
    assert_ne!(r.status, 503, "{}", r.text());
    // ...and a tunnel, closed cleanly from the client side.
    let (mut ws, _) = ws_connect(&format!("ws://{addr}/chat"), &[])
        .await
        .expect("handshake");
    within(WAIT, ws.send(Message::Text("x".into())))
        .await
        .unwrap();
    within(WAIT, ws.next()).await.unwrap().unwrap();
    within(WAIT, ws.close(None)).await.unwrap();
    while let Some(Ok(_)) = within(WAIT, ws.next()).await {}
    drop(ws);

    daemon.sigterm();
    let exit = daemon.wait_exit(WAIT).await;
    assert_eq!(exit.code, Some(0), "{exit}");

    let mut access = Vec::new();
    for line in exit.stderr.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}{exit}"));
        assert!(v.is_object(), "not a JSON object: {line}");
        if v["target"] == "access" {
            access.push(v);
        }
    }
    let hit = access
        .iter()
        .find(|v| {
            let path = v["path"].as_str().unwrap_or_default();
            path.starts_with("/hello")
        })
        .unwrap_or_else(|| panic!("no access line for /hello{exit}"));
    let status = &hit["status"];
    let want = r.status;
    assert!(
        status.as_u64() == Some(u64::from(want)) || status.as_str() == Some(&want.to_string()),
        "access line status {status}, the client got {want}: {hit}"
    );
    assert_eq!(hit["method"], "GET", "{hit}");
    for field in [
        "client",
        "host",
        "route",
        "server",
        "duration_ms",
        "bytes_in",
        "bytes_out",
    ] {
        assert!(!hit[field].is_null(), "access line lacks {field}: {hit}");
    }
    let tunnel = access
        .iter()
        .find(|v| v["kind"] == "tunnel")
        .unwrap_or_else(|| panic!("no access line for the tunnel{exit}"));
    assert!(
        tunnel["path"]
            .as_str()
            .unwrap_or_default()
            .starts_with("/chat"),
        "{tunnel}"
    );
}

#[tokio::test]
async fn sigint_drains_too_and_log_format_goes_before_the_subcommand() {
    let backend = named_backend("ok").await;
    let (addr, config) = binary_config(backend.addr, "");
    let path = temp_config("sigint", &config);
    let path = path.to_str().unwrap().to_owned();
    let mut daemon = Daemon::start(&["--log-format", "json", "run", "-c", &path]);
    daemon.wait_listening(addr).await;
    assert_eq!(http_get(addr, "h", "/").await.status, 200);

    let status = std::process::Command::new("kill")
        .args(["-INT", &daemon.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let exit = daemon.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(exit.code, Some(0), "{exit}");
    for line in exit.stderr.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not a JSON line: {line:?}{exit}"
        );
    }
}

#[tokio::test]
async fn drain_completes_in_flight_request_and_refuses_new_connections() {
    // The first request waits until the test releases it; later ones answer at once.
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let release_rx = Mutex::new(Some(release_rx));
    let backend = http_backend(move |_| {
        let wait = release_rx.lock().unwrap().take();
        async move {
            if let Some(wait) = wait {
                let _ = wait.await;
                return text(200, "slow done");
            }
            text(200, "fast")
        }
    })
    .await;
    let mut proxy = spawn_proxy(&format!(
        r#"
[proxy]
shutdown_timeout = "5s"

[[listener]]
addr = "127.0.0.1:0"

[upstream.app]
servers = ["{}"]

[[route]]
upstream = "app"
"#,
        backend.addr
    ))
    .await;
    let addr = proxy.addr;

    let mut slow = RawClient::connect(addr).await;
    slow.send("GET /slow HTTP/1.1\r\nHost: h\r\n\r\n").await;
    backend.wait_for(1).await;

    proxy.stop();
    eventually(
        WAIT,
        "new connections are refused while draining",
        || async move { !is_served(addr).await },
    )
    .await;

    release_tx.send(()).unwrap();
    let r = slow.read_response().await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body_str(), "slow done");
    proxy.finished(WAIT).await;
    assert!(!is_served(addr).await);
}
