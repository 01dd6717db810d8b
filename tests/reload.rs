//! Reload and systemd, through the real binary.
//!
//! - `sighup_swaps_routes_and_listeners_while_tunnels_carry_on`: SIGHUP binds a new
//!   listener, closes a removed one, sends requests to the new route's pool, and an open
//!   tunnel keeps working throughout.
//! - `failed_reload_keeps_the_running_config`: an invalid file on SIGHUP is logged and the
//!   old config keeps serving.
//! - `notify_socket_hears_ready_reloading_and_stopping`: with `NOTIFY_SOCKET`, systemd is
//!   told `READY=1`, `RELOADING=1` … `READY=1` around a reload, and `STOPPING=1`.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio_tungstenite::tungstenite::Message;

fn config(listen: SocketAddr, http: SocketAddr, ws: SocketAddr) -> String {
    format!(
        r#"
[proxy]
shutdown_timeout = "1s"

[[listener]]
addr = "{listen}"

[upstream.http]
servers = ["{http}"]

[upstream.ws]
servers = ["{ws}"]

[[route]]
path = "/"
upstream = "http"

[[route]]
path = "/ws"
upstream = "ws"
"#
    )
}

fn rewrite(path: &Path, text: &str) {
    std::fs::write(path, text).expect("rewrite config");
}

async fn body_at(addr: SocketAddr) -> Option<String> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    drop(stream);
    Some(http_get(addr, "h", "/").await.body_str())
}

#[tokio::test]
async fn sighup_swaps_routes_and_listeners_while_tunnels_carry_on() {
    let one = named_backend("one").await;
    let two = named_backend("two").await;
    let ws = ws_echo_backend().await;
    let first: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let second: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();

    let path = temp_config("reload", &config(first, one.addr, ws.addr));
    let mut daemon = Daemon::start(&["run", "-c", path.to_str().unwrap()]);
    daemon.wait_listening(first).await;
    assert_eq!(http_get(first, "h", "/").await.body_str(), "one");

    let (mut tunnel, _) = ws_connect(&format!("ws://{first}/ws"), &[])
        .await
        .expect("tunnel opens");
    within(WAIT, tunnel.send(Message::text("before")))
        .await
        .unwrap();
    let echoed = within(WAIT, tunnel.next()).await.unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "before");

    rewrite(&path, &config(second, two.addr, ws.addr));
    daemon.sighup();
    eventually(WAIT, "the new listener serves the new pool", || async {
        body_at(second).await.as_deref() == Some("two")
    })
    .await;
    eventually(WAIT, "the removed listener is closed", || async {
        tokio::net::TcpStream::connect(first).await.is_err()
    })
    .await;

    // The tunnel opened before the reload still carries messages.
    within(WAIT, tunnel.send(Message::text("after")))
        .await
        .unwrap();
    let echoed = within(WAIT, tunnel.next()).await.unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "after");
    assert_eq!(
        one.count(),
        1,
        "the old pool got a request after the reload"
    );

    drop(tunnel);
    daemon.sigterm();
    let exit = daemon.wait_exit(WAIT).await;
    assert_eq!(exit.code, Some(0), "{exit}");
    assert!(exit.stderr.contains("reloaded"), "{exit}");
}

#[tokio::test]
async fn failed_reload_keeps_the_running_config() {
    let one = named_backend("one").await;
    let ws = ws_echo_backend().await;
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();

    let path = temp_config("reload-bad", &config(listen, one.addr, ws.addr));
    let mut daemon = Daemon::start(&["run", "-c", path.to_str().unwrap()]);
    daemon.wait_listening(listen).await;

    rewrite(
        &path,
        &config(listen, one.addr, ws.addr).replace("upstream = \"http\"", "upstream = \"nope\""),
    );
    daemon.sighup();
    // Give the reload a moment to be refused, then the old config must still answer.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(http_get(listen, "h", "/").await.body_str(), "one");

    daemon.sigterm();
    let exit = daemon.wait_exit(WAIT).await;
    assert_eq!(exit.code, Some(0), "{exit}");
    assert!(
        exit.stderr.contains("reload failed") && exit.stderr.contains("no upstream named"),
        "the refused reload was not logged with its problem{exit}"
    );
}

#[tokio::test]
async fn notify_socket_hears_ready_reloading_and_stopping() {
    let one = named_backend("one").await;
    let ws = ws_echo_backend().await;
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let path = temp_config("notify", &config(listen, one.addr, ws.addr));

    let socket_path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("notify-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket_path);
    let socket = tokio::net::UnixDatagram::bind(&socket_path).expect("bind notify socket");

    let bin = env!("CARGO_BIN_EXE_sluice");
    let mut child = tokio::process::Command::new(bin)
        .args(["run", "-c", path.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &socket_path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sluice");
    let pid = child.id().expect("pid").to_string();

    let next = || {
        let socket = &socket;
        async move {
            let mut buf = [0u8; 512];
            let n = within(WAIT, socket.recv(&mut buf)).await.expect("recv");
            // One datagram, one `KEY=VALUE` per line.
            String::from_utf8_lossy(&buf[..n]).trim_end().to_owned()
        }
    };
    assert_eq!(next().await, "READY=1");
    // Ready means listening.
    assert_eq!(http_get(listen, "h", "/").await.status, 200);

    let kill = |signal: &str| {
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("run kill");
        assert!(status.success());
    };
    kill("-HUP");
    let reloading = next().await;
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "got {reloading:?}"
    );
    assert_eq!(next().await, "READY=1");
    kill("-TERM");
    assert_eq!(next().await, "STOPPING=1");
    let status = within(WAIT, child.wait()).await.expect("wait");
    assert_eq!(status.code(), Some(0));
    let _ = std::fs::remove_file(&socket_path);
}
