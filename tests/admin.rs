//! The admin endpoint (`[admin] addr`): `/metrics` counts what the proxy did with the
//! SPEC's names and labels, `/healthz` turns `503` when a drain starts, `/status` shows
//! listeners, routes and every server with its state, and the admin listener is bound at
//! start and on reload like the proxy's own.

mod support;

use futures_util::{SinkExt, StreamExt};
use support::dns::DnsServer;
use support::*;
use tokio_tungstenite::tungstenite::Message;

async fn get(addr: std::net::SocketAddr, path: &str, extra: &str) -> RawResponse {
    admin_get(addr, path, extra).await
}

async fn metrics(admin: std::net::SocketAddr) -> String {
    metrics_text(admin).await
}

async fn status(admin: std::net::SocketAddr) -> serde_json::Value {
    let response = get(admin, "/status", "").await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"));
    serde_json::from_str(&response.body_str())
        .unwrap_or_else(|e| panic!("/status is not JSON ({e}):\n{}", response.body_str()))
}

#[track_caller]
fn assert_sample(text: &str, series: &str, want: f64) {
    assert_eq!(sample(text, series), Some(want), "{series} in\n{text}");
}

fn admin_of(proxy: &TestProxy) -> std::net::SocketAddr {
    proxy.admin.expect("the config has [admin]")
}

#[tokio::test]
async fn metrics_count_requests_tunnels_bytes_and_rejections() {
    let http = named_backend("a").await;
    let ws = ws_echo_backend().await;
    let proxy = spawn_proxy(&format!(
        r#"
[[listener]]
addr = "127.0.0.1:0"

[admin]
addr = "127.0.0.1:0"

[upstream.web]
servers = ["{}"]

[upstream.ws]
servers = ["{}"]

[[route]]
path = "/"
upstream = "web"

[[route]]
path = "/ws"
upstream = "ws"
allowed_origins = ["https://good.example"]
"#,
        http.addr, ws.addr
    ))
    .await;
    let admin = admin_of(&proxy);

    for _ in 0..3 {
        let response = get(proxy.addr, "/x", "").await;
        assert_eq!(response.status, 200);
    }
    let (mut tunnel, _) = ws_connect(
        &format!("ws://{}/ws", proxy.addr),
        &[("origin", "https://good.example")],
    )
    .await
    .expect("handshake");
    tunnel.send(Message::text("hello")).await.expect("send");
    let echo = within(WAIT, tunnel.next())
        .await
        .expect("echo")
        .expect("read");
    assert_eq!(echo.into_text().expect("text").as_str(), "hello");

    let text = metrics(admin).await;
    assert_sample(
        &text,
        r#"sluice_requests_total{route="/",status="200"}"#,
        3.0,
    );
    assert_sample(
        &text,
        r#"sluice_requests_total{route="/ws",status="101"}"#,
        1.0,
    );
    assert_sample(&text, r#"sluice_active_tunnels{route="/ws"}"#, 1.0);
    assert_sample(&text, r#"sluice_tunnels_total{route="/ws"}"#, 1.0);
    // A masked 5-byte text frame is 11 bytes; the echo, unmasked, 7.
    assert_sample(
        &text,
        r#"sluice_tunnel_bytes_total{route="/ws",direction="in"}"#,
        11.0,
    );
    assert_sample(
        &text,
        r#"sluice_tunnel_bytes_total{route="/ws",direction="out"}"#,
        7.0,
    );
    // The request duration histogram has every request whose response ended.
    assert!(
        sample(&text, "sluice_request_duration_seconds_count").is_some_and(|n| n >= 3.0),
        "{text}"
    );
    assert!(text.contains(r#"sluice_request_duration_seconds_bucket{le="+Inf"}"#));
    assert!(sample(&text, "sluice_request_duration_seconds_sum").is_some());
    // This scrape's own connection is one of them, and the tunnel another.
    assert!(
        sample(&text, "sluice_active_connections").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert_sample(
        &text,
        &format!(
            r#"sluice_upstream_server_up{{upstream="ws",server="{}"}}"#,
            ws.addr
        ),
        1.0,
    );

    // Refused handshakes, by reason.
    let refused = ws_connect(
        &format!("ws://{}/ws", proxy.addr),
        &[("origin", "https://evil.example")],
    )
    .await;
    assert!(refused.is_err(), "a foreign Origin must be refused");
    let mut raw = RawClient::connect(proxy.addr).await;
    raw.send(
        handshake("/ws", "app", "Origin: https://good.example\r\n")
            .replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 12"),
    )
    .await;
    assert_eq!(raw.read_response().await.status, 400);

    tunnel.close(None).await.expect("close");
    drop(tunnel);
    let closed = eventually(WAIT, "the tunnel is counted closed", || async {
        let text = metrics(admin).await;
        sample(&text, r#"sluice_active_tunnels{route="/ws"}"#) == Some(0.0)
            && sample(&text, "sluice_tunnel_duration_seconds_count") == Some(1.0)
    });
    closed.await;
    let text = metrics(admin).await;
    assert_sample(
        &text,
        r#"sluice_handshake_rejections_total{route="/ws",reason="origin"}"#,
        1.0,
    );
    assert_sample(
        &text,
        r#"sluice_handshake_rejections_total{route="/ws",reason="invalid_handshake"}"#,
        1.0,
    );
    assert_sample(
        &text,
        r#"sluice_requests_total{route="/ws",status="403"}"#,
        1.0,
    );
    assert_sample(
        &text,
        r#"sluice_requests_total{route="/ws",status="400"}"#,
        1.0,
    );

    // Classic text format by default; OpenMetrics for a scraper that asks for it.
    let classic = get(admin, "/metrics", "").await;
    assert_eq!(
        classic.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(classic
        .body_str()
        .contains("# TYPE sluice_requests_total counter"));
    assert!(!classic.body_str().contains("# EOF"));
    let open = get(
        admin,
        "/metrics",
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n",
    )
    .await;
    assert!(open
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/openmetrics-text")));
    assert!(open.body_str().contains("# TYPE sluice_requests counter"));
    assert!(open.body_str().ends_with("# EOF\n"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn refusals_by_the_upstream_and_connect_errors_are_counted() {
    let refusing = http_backend(|_| async { text(400, "no websocket here") }).await;
    let bad_accept = raw_backend(|mut stream| async move {
        if read_head(&mut stream).await.is_some() {
            use tokio::io::AsyncWriteExt;
            let _ = stream
                .write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                      Connection: Upgrade\r\nSec-WebSocket-Accept: d3Jvbmc=\r\n\r\n",
                )
                .await;
        }
    })
    .await;
    let dead = dead_addr().await;
    let proxy = spawn_proxy(&format!(
        r#"
[[listener]]
addr = "127.0.0.1:0"

[admin]
addr = "127.0.0.1:0"

[upstream.refusing]
servers = ["{}"]

[upstream.bad]
servers = ["{}"]

[upstream.dead]
servers = ["{dead}"]
connect_timeout = "1s"

[[route]]
path = "/refusing"
upstream = "refusing"

[[route]]
path = "/bad"
upstream = "bad"

[[route]]
path = "/dead"
upstream = "dead"
"#,
        refusing.addr, bad_accept.addr
    ))
    .await;
    let admin = admin_of(&proxy);
    for (path, status) in [("/refusing", 400), ("/bad", 502), ("/dead", 502)] {
        let mut raw = RawClient::connect(proxy.addr).await;
        raw.send(handshake(path, "app", "")).await;
        assert_eq!(raw.read_response().await.status, status, "{path}");
    }
    let text = metrics(admin).await;
    for (route, reason) in [
        ("/refusing", "upstream_refused"),
        ("/bad", "bad_accept"),
        ("/dead", "upstream_unavailable"),
    ] {
        assert_sample(
            &text,
            &format!(r#"sluice_handshake_rejections_total{{route="{route}",reason="{reason}"}}"#),
            1.0,
        );
    }
    assert_sample(
        &text,
        &format!(r#"sluice_upstream_connect_errors_total{{upstream="dead",server="{dead}"}}"#),
        1.0,
    );
    // max_fails = 1: the failed connect took it out.
    assert_sample(
        &text,
        &format!(r#"sluice_upstream_server_up{{upstream="dead",server="{dead}"}}"#),
        0.0,
    );
    assert_sample(
        &text,
        &format!(
            r#"sluice_upstream_server_up{{upstream="refusing",server="{}"}}"#,
            refusing.addr
        ),
        1.0,
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn healthz_turns_503_when_a_drain_starts_and_the_admin_closes_after_it() {
    let ws = named_ws_backend("a").await;
    let mut proxy = spawn_proxy(&format!(
        r#"
[proxy]
shutdown_timeout = "30s"

[[listener]]
addr = "127.0.0.1:0"

[admin]
addr = "127.0.0.1:0"

[upstream.app]
servers = ["{}"]

[[route]]
upstream = "app"
"#,
        ws.addr
    ))
    .await;
    let admin = admin_of(&proxy);
    let healthy = get(admin, "/healthz", "").await;
    assert_eq!((healthy.status, healthy.body_str().as_str()), (200, "ok\n"));
    assert_eq!(status(admin).await["draining"], false);

    // An open tunnel keeps the drain going.
    let (mut tunnel, _) = open_tunnel(proxy.addr).await;
    proxy.stop();
    eventually(WAIT, "/healthz answers 503", || async {
        get(admin, "/healthz", "").await.status == 503
    })
    .await;
    assert_eq!(status(admin).await["draining"], true);
    // The tunnel still works while the load balancer is told to go away.
    tunnel
        .send(Message::text("still here"))
        .await
        .expect("send");
    let echo = within(WAIT, tunnel.next())
        .await
        .expect("echo")
        .expect("read");
    assert_eq!(echo.into_text().expect("text").as_str(), "still here");

    tunnel.close(None).await.expect("close");
    drop(tunnel);
    proxy.finished(WAIT).await;
    eventually(
        WAIT,
        "the admin listener closes after the drain",
        || async { tokio::net::TcpStream::connect(admin).await.is_err() },
    )
    .await;
}

#[tokio::test]
async fn status_shows_listeners_routes_and_every_server_with_its_state() {
    let live = named_ws_backend("live").await;
    let unhealthy = http_backend(|_| async { text(500, "sick") }).await;
    let dead = dead_addr().await;
    let dns = DnsServer::start().await;
    let proxy = spawn_proxy(&format!(
        r#"
[proxy]
resolver = "{}"

[[listener]]
addr = "127.0.0.1:0"

[admin]
addr = "127.0.0.1:0"

[upstream.app]
servers = ["{}", "{dead}", "nowhere.test:80"]
balance = "least_conn"
connect_timeout = "1s"

[upstream.checked]
servers = ["{}"]
health_check = {{ path = "/health", interval = "100ms", timeout = "1s", healthy = 1, unhealthy = 1 }}

[[route]]
path = "/"
upstream = "app"

[[route]]
host = "checked.example"
path = "/c"
upstream = "checked"
websocket = false
"#,
        dns.addr, live.addr, unhealthy.addr
    ))
    .await;
    let admin = admin_of(&proxy);

    // Least-conn sends the first tunnel to one of the two addresses; the dead one fails
    // its connect (and is marked down) and the tunnel goes to the live one.
    let (mut tunnel, name) = open_tunnel(proxy.addr).await;
    assert_eq!(name, "live");
    let (mut second, _) = open_tunnel(proxy.addr).await;

    let server = |status: &serde_json::Value, pool: &str, server: &str| {
        status["upstreams"]
            .as_array()
            .and_then(|pools| pools.iter().find(|p| p["name"] == pool))
            .and_then(|p| p["servers"].as_array())
            .and_then(|servers| servers.iter().find(|s| s["server"] == server))
            .cloned()
            .unwrap_or_else(|| panic!("no server {server} in pool {pool}:\n{status:#}"))
    };
    eventually(
        WAIT,
        "the active check takes the sick server out",
        || async {
            server(&status(admin).await, "checked", &unhealthy.addr.to_string())["state"]
                == "down_active"
        },
    )
    .await;
    let doc = status(admin).await;
    assert_eq!(doc["listeners"][0]["addr"], proxy.addr.to_string());
    assert_eq!(doc["listeners"][0]["tls"], false);
    assert_eq!(doc["tunnels"]["open"], 2);
    assert_eq!(doc["totals"]["tunnels"], 2);
    assert!(doc["connections"]["open"].as_u64().is_some_and(|n| n >= 2));
    assert_eq!(doc["connections"]["max"], 65536);
    assert_eq!(doc["config"]["path"], "test.toml");
    assert!(doc["pid"].as_u64().is_some());
    let routes = doc["routes"].as_array().expect("routes");
    let checked = routes
        .iter()
        .find(|r| r["name"] == "checked.example/c")
        .expect("host route");
    assert_eq!(checked["host"], "checked.example");
    assert_eq!(checked["upstream"], "checked");
    assert_eq!(checked["websocket"], false);
    let root = routes
        .iter()
        .find(|r| r["name"] == "/")
        .expect("root route");
    assert_eq!(root["tunnels_open"], 2);

    let up = server(&doc, "app", &live.addr.to_string());
    assert_eq!(up["state"], "up");
    assert_eq!(up["open_tunnels"], 2);
    assert_eq!(up["open_requests"], 0);
    assert_eq!(up["open_connections"], 2);
    assert_eq!(up["addr"], live.addr.to_string());
    let down = server(&doc, "app", &dead.to_string());
    assert_eq!(down["state"], "down_passive");
    assert_eq!(down["connect_errors"], 1);
    let unresolved = server(&doc, "app", "nowhere.test:80");
    assert_eq!(unresolved["state"], "unresolved");
    assert_eq!(unresolved["addr"], serde_json::Value::Null);
    let pool = doc["upstreams"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "app"))
        .expect("pool app");
    assert_eq!(pool["balance"], "least_conn");

    // The dashboard is served from the binary.
    let page = get(admin, "/", "").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page.body_str().contains("status"));
    assert_eq!(get(admin, "/nope", "").await.status, 404);
    let mut post = RawClient::connect(admin).await;
    post.send("POST /healthz HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n")
        .await;
    assert_eq!(post.read_response().await.status, 405);
    // The admin endpoint is not served on the proxy's listener.
    let on_proxy = get(proxy.addr, "/metrics", "").await;
    assert!(!on_proxy.body_str().contains("sluice_requests"));

    tunnel.close(None).await.expect("close");
    second.close(None).await.expect("close");
    drop((tunnel, second));
    proxy.shutdown().await;
}

fn daemon_config(admin: u16, listener: u16, upstream: std::net::SocketAddr) -> String {
    format!(
        r#"
[[listener]]
addr = "127.0.0.1:{listener}"

[admin]
addr = "127.0.0.1:{admin}"

[upstream.app]
servers = ["{upstream}"]

[[route]]
upstream = "app"
"#
    )
}

#[tokio::test]
async fn reloads_rebind_the_admin_listener_and_are_recorded() {
    let backend = named_backend("a").await;
    let (first, second, listener) = (free_port(), free_port(), free_port());
    let path = temp_config(
        "admin-reload",
        &daemon_config(first, listener, backend.addr),
    );
    let config = path.to_str().expect("utf-8 path");
    let mut daemon = Daemon::start(&["run", "--config", config]);
    let first_addr: std::net::SocketAddr = ([127, 0, 0, 1], first).into();
    daemon.wait_listening(first_addr).await;
    let doc = status(first_addr).await;
    assert_eq!(doc["reloads"].as_array().map(Vec::len), Some(0));
    assert_eq!(doc["config"]["path"], config);
    let loaded = doc["config"]["loaded_ms"].as_u64().expect("loaded_ms");

    // An invalid file: recorded as failed, with the problem; the admin stays.
    std::fs::write(&path, "[[listener]]\naddr = 7\n").expect("write");
    daemon.sighup();
    eventually(WAIT, "a failed reload is recorded", || async {
        status(first_addr).await["reloads"][0]["result"] == "failed"
    })
    .await;
    let doc = status(first_addr).await;
    let error = doc["reloads"][0]["error"].as_str().expect("error text");
    assert!(
        error.contains("listener") && error.contains(":2:"),
        "{error}"
    );
    assert_eq!(doc["config"]["loaded_ms"].as_u64(), Some(loaded));
    assert_sample(
        &metrics(first_addr).await,
        r#"sluice_config_reloads_total{result="failed"}"#,
        1.0,
    );

    // The admin moves: the new address answers, the old one is closed.
    std::fs::write(&path, daemon_config(second, listener, backend.addr)).expect("write");
    daemon.sighup();
    let second_addr: std::net::SocketAddr = ([127, 0, 0, 1], second).into();
    daemon.wait_listening(second_addr).await;
    let doc = status(second_addr).await;
    assert_eq!(doc["reloads"][0]["result"], "ok");
    assert_eq!(doc["reloads"][1]["result"], "failed");
    assert!(doc["config"]["loaded_ms"].as_u64() >= Some(loaded));
    eventually(WAIT, "the old admin address is closed", || async {
        tokio::net::TcpStream::connect(first_addr).await.is_err()
    })
    .await;

    // An admin address that cannot be bound: the reload fails and everything stays.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_port = taken.local_addr().expect("addr").port();
    std::fs::write(&path, daemon_config(taken_port, listener, backend.addr)).expect("write");
    daemon.sighup();
    eventually(WAIT, "the failed bind is recorded", || async {
        status(second_addr).await["reloads"][0]["result"] == "failed"
    })
    .await;
    let doc = status(second_addr).await;
    let error = doc["reloads"][0]["error"].as_str().expect("error");
    assert!(error.contains("cannot listen on"), "{error}");
    let text = metrics(second_addr).await;
    assert_sample(&text, r#"sluice_config_reloads_total{result="ok"}"#, 1.0);
    assert_sample(
        &text,
        r#"sluice_config_reloads_total{result="failed"}"#,
        2.0,
    );
    let proxied = get(([127, 0, 0, 1], listener).into(), "/", "").await;
    assert_eq!(proxied.status, 200);

    daemon.sigterm();
    let exit = daemon.wait_exit(WAIT).await;
    assert_eq!(exit.code, Some(0), "{exit}");
}

#[tokio::test]
async fn an_admin_address_in_use_stops_the_start() {
    let backend = named_backend("a").await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let path = temp_config(
        "admin-taken",
        &daemon_config(port, free_port(), backend.addr),
    );
    let daemon = Daemon::start(&["run", "--config", path.to_str().expect("utf-8")]);
    let exit = daemon.wait_exit(WAIT).await;
    assert_eq!(exit.code, Some(1), "{exit}");
    assert!(
        exit.stderr
            .lines()
            .any(|l| l.starts_with(&format!("sluice: cannot listen on 127.0.0.1:{port}"))),
        "{exit}"
    );
}

/// The admin listener serves at most 64 connections at once: a 65th is not answered
/// while 64 are held open, and is served as soon as one of them closes. The proxy's own
/// listener is not affected by a full admin endpoint.
#[tokio::test]
async fn the_admin_endpoint_serves_64_connections_at_once_and_the_next_when_one_closes() {
    let http = named_backend("a").await;
    let proxy = spawn_proxy(&format!(
        r#"
[[listener]]
addr = "127.0.0.1:0"

[admin]
addr = "127.0.0.1:0"

[upstream.app]
servers = ["{}"]

[[route]]
upstream = "app"
"#,
        http.addr
    ))
    .await;
    let admin = admin_of(&proxy);
    let healthz = "GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n";

    // 64 keep-alive connections, each answered once and then held open (well within the
    // admin's 10 s head timeout).
    let mut held = Vec::new();
    for _ in 0..64 {
        let mut client = RawClient::connect(admin).await;
        client.send(healthz).await;
        assert_eq!(client.read_response().await.status, 200);
        held.push(client);
    }

    let mut waiting = RawClient::connect(admin).await;
    waiting.send(healthz).await;
    let (early, closed) = waiting
        .idle_read(std::time::Duration::from_millis(300))
        .await;
    assert!(
        early.is_empty() && !closed,
        "a 65th admin connection was served while 64 were open: {:?}",
        String::from_utf8_lossy(&early)
    );
    // The proxy serves its own clients meanwhile.
    assert_eq!(http_get(proxy.addr, "app", "/").await.status, 200);

    drop(held.pop());
    let served = waiting.read_response().await;
    assert_eq!((served.status, served.body_str().as_str()), (200, "ok\n"));
    drop(held);
    proxy.shutdown().await;
}
