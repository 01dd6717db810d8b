//! A real browser (Debian's Chromium, driven by playwright-core) loads a page over
//! `https://` through sluice, and the page's own script opens `wss://` back through sluice
//! and gets its echo: TLS termination, a certificate chain from a CA, SNI and the WebSocket
//! upgrade, as a browser does them.
//!
//! Needs `/usr/bin/chromium` (or `CHROMIUM`), `node`, and `npm ci --prefix tests/browser`;
//! `.ci/run` installs all three. Elsewhere the test says what is missing and passes, except
//! under CI, where a missing piece fails it.

mod support;

use std::path::Path;
use std::time::Duration;

use support::tls::*;
use support::*;

const PAGE: &str = r#"<!doctype html>
<title>loading</title>
<script>
  const ws = new WebSocket(`wss://${location.host}/ws`);
  ws.onopen = () => ws.send("hello from the browser");
  ws.onmessage = (event) => { document.title = "echo:" + event.data; };
  ws.onerror = () => { document.title = "error:websocket"; };
</script>
"#;

/// What is missing for a browser test here, if anything.
fn missing() -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!("no Chromium at {chromium}"));
    }
    let driver = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/browser/node_modules/playwright-core/package.json");
    if !driver.exists() {
        return Some("playwright-core is not installed (npm ci --prefix tests/browser)".into());
    }
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Some("no node".into());
    }
    None
}

#[tokio::test]
async fn a_browser_opens_wss_through_sluice() {
    if let Some(what) = missing() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must run the browser test: {what}"
        );
        eprintln!("skipped: {what}");
        return;
    }
    let ca = Ca::new("browser test CA");
    let dir = temp_dir("browser");
    let leaf = ca.leaf(&["app.example"]);
    leaf.write(&dir, "app");
    let page = http_backend(|_| async {
        http::Response::builder()
            .status(200)
            .header("content-type", "text/html; charset=utf-8")
            .body(full(PAGE))
            .expect("page")
    })
    .await;
    let ws = ws_echo_backend().await;
    let proxy = spawn_proxy(&format!(
        r#"
[[listener]]
addr = "127.0.0.1:0"
tls = {{ cert = "{}", key = "{}" }}

[upstream.page]
servers = ["{}"]

[upstream.ws]
servers = ["{}"]

[[route]]
upstream = "page"

[[route]]
path = "/ws"
upstream = "ws"
"#,
        dir.join("app.pem").display(),
        dir.join("app.key").display(),
        page.addr,
        ws.addr
    ))
    .await;

    let url = format!("https://app.example:{}/", proxy.addr.port());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/wss.mjs");
    let run = tokio::process::Command::new("node")
        .arg(&script)
        .arg(&url)
        .arg(&leaf.spki_sha256)
        .arg("MAP app.example 127.0.0.1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(40), run)
        .await
        .expect("the browser finished within 40 s")
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("title: echo:hello from the browser"),
        "the page got its echo over wss://\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );
    let handshakes = ws.handshakes();
    assert_eq!(handshakes.len(), 1);
    assert_eq!(handshakes[0]["x-forwarded-proto"], "https");
    assert_eq!(
        handshakes[0]["origin"],
        format!("https://app.example:{}", proxy.addr.port()).as_str()
    );
}

/// The admin dashboard in a real browser, under live traffic: the request numbers move,
/// and a server taken out by its health check shows as down within a few seconds.
#[tokio::test]
async fn the_dashboard_shows_live_numbers_and_a_server_going_down() {
    if let Some(what) = missing() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must run the browser test: {what}"
        );
        eprintln!("skipped: {what}");
        return;
    }
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let healthy = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&healthy);
    let sick = http_backend(move |req| {
        let flag = Arc::clone(&flag);
        async move {
            if req.uri.path() == "/health" && !flag.load(Ordering::SeqCst) {
                text(503, "down for maintenance")
            } else {
                text(200, "b")
            }
        }
    })
    .await;
    let steady = named_backend("a").await;
    let proxy = spawn_proxy(&format!(
        r#"
[[listener]]
addr = "127.0.0.1:0"

[admin]
addr = "127.0.0.1:0"

[upstream.app]
servers = ["{}", "{}"]
health_check = {{ path = "/health", interval = "200ms", timeout = "1s", healthy = 1, unhealthy = 1 }}

[[route]]
upstream = "app"
"#,
        steady.addr, sick.addr
    ))
    .await;
    let admin = proxy.admin.expect("admin address");

    // Live traffic for as long as the browser looks (bounded by the test's own timeout).
    let traffic = {
        let addr = proxy.addr;
        tokio::spawn(async move {
            loop {
                let mut client = RawClient::connect(addr).await;
                client
                    .send("GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
                    .await;
                let _ = client.try_read_response().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/dashboard.mjs");
    let mut child = tokio::process::Command::new("node")
        .arg(&script)
        .arg(format!("http://{admin}/"))
        .arg("app")
        .arg(sick.addr.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run node");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    use tokio::io::AsyncBufReadExt;
    let mut seen = Vec::new();
    let moving = tokio::time::timeout(Duration::from_secs(40), async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push(line.clone());
            if line == "moving" {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    if !moving {
        let out = child.wait_with_output().await.expect("node output");
        panic!(
            "the dashboard never showed the numbers moving\n--- stdout ---\n{}\n--- stderr ---\n{}",
            seen.join("\n"),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Take the server out: its health check fails from now on.
    healthy.store(false, Ordering::SeqCst);
    let down = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push(line.clone());
            if line == "down" {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .ok()
        .and_then(Result::ok);
    traffic.abort();
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = tokio::time::timeout(WAIT, err.read_to_string(&mut stderr)).await;
    }
    assert!(
        down && status.is_some_and(|s| s.success()),
        "the dashboard did not show {} down\n--- stdout ---\n{}\n--- stderr ---\n{stderr}",
        sick.addr,
        seen.join("\n")
    );
    proxy.shutdown().await;
}
