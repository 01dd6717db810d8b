//! Upstreams that move: host names resolved again every `resolve_interval` through a real
//! DNS server on loopback (tests/support/dns.rs) whose answers the test changes.
//!
//! - `requests_and_tunnels_follow_a_moved_name`: new requests (pooled ones too) and new
//!   tunnels go to the new address; a tunnel opened before the move keeps echoing.
//! - `a_failing_resolver_keeps_the_last_addresses`.
//! - `a_name_that_does_not_resolve_yet_does_not_stop_sluice`: it starts, answers `502`,
//!   and serves once the name resolves (a pod started before its service has endpoints).

mod support;

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use support::dns::DnsServer;
use support::*;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// An HTTP backend on `ip:port` answering its `name`, counting requests.
async fn http_at(ip: Ipv4Addr, port: u16, name: &'static str) -> Arc<AtomicUsize> {
    let listener = TcpListener::bind((ip, port)).await.expect("bind backend");
    let count = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&count);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async move { Ok::<_, Infallible>(text(200, name)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    count
}

/// A WebSocket backend on `ip:port` that greets with `name`, then echoes.
async fn ws_at(ip: Ipv4Addr, port: u16, name: &'static str) {
    let listener = TcpListener::bind((ip, port)).await.expect("bind backend");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                if ws.send(Message::text(name)).await.is_err() {
                    return;
                }
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// A port free on both test addresses.
async fn shared_port() -> u16 {
    for _ in 0..20 {
        let a = TcpListener::bind((A, 0)).await.expect("bind");
        let port = a.local_addr().expect("addr").port();
        if TcpListener::bind((B, port)).await.is_ok() {
            return port;
        }
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3");
}

fn config(dns: SocketAddr, http_port: u16, ws_port: u16) -> String {
    format!(
        r#"
[proxy]
resolver = "{dns}"

[[listener]]
addr = "127.0.0.1:0"

[upstream.app]
servers = ["app.test:{http_port}"]
resolve_interval = "100ms"
connect_timeout = "1s"

[upstream.ws]
servers = ["ws.test:{ws_port}"]
resolve_interval = "100ms"
connect_timeout = "1s"

[[route]]
upstream = "app"

[[route]]
path = "/ws"
upstream = "ws"
"#
    )
}

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn tunnel(proxy: SocketAddr) -> (Client, String) {
    let (mut ws, _) = ws_connect(&format!("ws://{proxy}/ws"), &[])
        .await
        .expect("tunnel opens");
    let hello = within(WAIT, ws.next()).await.expect("hello").expect("read");
    (ws, hello.into_text().expect("text").as_str().to_owned())
}

#[tokio::test]
async fn requests_and_tunnels_follow_a_moved_name() {
    let dns = DnsServer::start().await;
    let (http_port, ws_port) = (shared_port().await, shared_port().await);
    let on_a = http_at(A, http_port, "a").await;
    let on_b = http_at(B, http_port, "b").await;
    ws_at(A, ws_port, "a").await;
    ws_at(B, ws_port, "b").await;
    dns.set("app.test", &[A]);
    dns.set("ws.test", &[A]);
    let proxy = spawn_proxy(&config(dns.addr, http_port, ws_port)).await;

    // A keep-alive client: its requests reuse a pooled upstream connection to a.
    let mut client = RawClient::connect(proxy.addr).await;
    for _ in 0..2 {
        client.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
        assert_eq!(client.read_response().await.body_str(), "a");
    }
    let (mut old, name) = tunnel(proxy.addr).await;
    assert_eq!(name, "a");

    // The names move to b.
    dns.set("app.test", &[B]);
    dns.set("ws.test", &[B]);
    eventually(WAIT, "plain requests follow the moved name", || async {
        http_get(proxy.addr, "h", "/").await.body_str() == "b"
    })
    .await;
    let a_before = on_a.load(Ordering::SeqCst);
    for _ in 0..3 {
        client.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
        assert_eq!(
            client.read_response().await.body_str(),
            "b",
            "pooled requests follow too: the old address's idle connections are closed"
        );
    }
    assert_eq!(on_a.load(Ordering::SeqCst), a_before);
    assert!(on_b.load(Ordering::SeqCst) >= 4);
    eventually(WAIT, "new tunnels follow the moved name", || async {
        tunnel(proxy.addr).await.1 == "b"
    })
    .await;

    // The tunnel opened before the move runs on, to a.
    let message = Message::text("still on a");
    within(WAIT, old.send(message.clone())).await.expect("send");
    assert_eq!(
        within(WAIT, old.next())
            .await
            .expect("open")
            .expect("frame"),
        message
    );
}

#[tokio::test]
async fn a_failing_resolver_keeps_the_last_addresses() {
    let dns = DnsServer::start().await;
    let (http_port, ws_port) = (shared_port().await, shared_port().await);
    http_at(A, http_port, "a").await;
    dns.set("app.test", &[A]);
    dns.set("ws.test", &[A]);
    let proxy = spawn_proxy(&config(dns.addr, http_port, ws_port)).await;
    assert_eq!(http_get(proxy.addr, "h", "/").await.body_str(), "a");

    dns.fail(true);
    dns.set("app.test", &[]);
    let seen = dns.queries();
    eventually(WAIT, "several lookups failed", || async {
        dns.queries() >= seen + 6
    })
    .await;
    for _ in 0..3 {
        assert_eq!(
            http_get(proxy.addr, "h", "/").await.body_str(),
            "a",
            "the last known address is kept"
        );
    }
}

#[tokio::test]
async fn a_name_that_does_not_resolve_yet_does_not_stop_sluice() {
    let dns = DnsServer::start().await;
    let (http_port, ws_port) = (shared_port().await, shared_port().await);
    http_at(B, http_port, "b").await;
    // Neither name resolves at start.
    let proxy = spawn_proxy(&config(dns.addr, http_port, ws_port)).await;
    assert_eq!(http_get(proxy.addr, "h", "/").await.status, 502);
    dns.set("app.test", &[B]);
    eventually(WAIT, "served once the name resolves", || async {
        http_get(proxy.addr, "h", "/").await.body_str() == "b"
    })
    .await;
}

#[tokio::test]
async fn check_warns_of_a_name_that_does_not_resolve() {
    let dns = DnsServer::start().await;
    dns.set("app.test", &[A]);
    let path = temp_config(
        "dns-check",
        &format!(
            r#"
[proxy]
resolver = "{}"

[[listener]]
addr = "127.0.0.1:8080"

[upstream.app]
servers = ["app.test:80", "typo.test:80"]

[[route]]
upstream = "app"
"#,
            dns.addr
        ),
    );
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "-c", path.to_str().expect("utf-8 path")])
        .output();
    let out = within(WAIT, out).await.expect("run check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a warning, not a problem: {stderr}"
    );
    assert!(
        stderr.contains("upstream.app.servers: warning: typo.test:80 does not resolve now"),
        "{stderr}"
    );
    assert!(!stderr.contains("app.test:80 does"), "{stderr}");
}

/// The next sd_notify message sluice sent.
async fn next_notice(notify: &tokio::net::UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = within(WAIT, notify.recv(&mut buf))
        .await
        .expect("notify message");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// A DNS server that never answers: lookups through it take their whole timeout.
async fn silent_resolver() -> (tokio::net::UdpSocket, SocketAddr) {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind silent DNS");
    let addr = socket.local_addr().expect("addr");
    (socket, addr)
}

#[tokio::test]
async fn a_sigterm_during_a_slow_reload_stops_at_once() {
    let backend = named_backend("ok").await;
    let (_silent, dns) = silent_resolver().await;
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let base = |servers: &str| {
        format!(
            r#"
[proxy]
resolver = "{dns}"
shutdown_timeout = "1s"

[[listener]]
addr = "{listen}"

[upstream.app]
servers = [{servers}]
connect_timeout = "20s"

[[route]]
upstream = "app"
"#
        )
    };
    let path = temp_config("slow-reload", &base(&format!("\"{}\"", backend.addr)));
    let socket_path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("slow-reload-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket_path);
    let notify = tokio::net::UnixDatagram::bind(&socket_path).expect("bind notify socket");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "-c", path.to_str().expect("utf-8 path")])
        .env("NOTIFY_SOCKET", &socket_path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sluice");
    let pid = child.id().expect("pid").to_string();
    assert!(next_notice(&notify).await.contains("READY=1"));

    // A reload whose lookup will not be answered for 20 s (its pool's connect_timeout).
    std::fs::write(&path, base("\"never.test:80\"")).expect("rewrite config");
    let kill = |signal: &str| {
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("run kill");
        assert!(status.success());
    };
    kill("-HUP");
    assert!(next_notice(&notify).await.contains("RELOADING=1"));
    let started = std::time::Instant::now();
    kill("-TERM");
    let status = within(WAIT, child.wait()).await.expect("exit status");
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "SIGTERM waited {:?} for the reload's DNS lookup",
        started.elapsed()
    );
    let _ = std::fs::remove_file(&socket_path);
}

#[tokio::test]
async fn a_reload_while_the_resolver_fails_keeps_the_last_addresses() {
    init_tracing();
    let dns = DnsServer::start().await;
    let (http_port, ws_port) = (shared_port().await, shared_port().await);
    http_at(A, http_port, "a").await;
    dns.set("app.test", &[A]);
    dns.set("ws.test", &[A]);
    let text = config(dns.addr, http_port, ws_port);
    let config =
        sluice::config::Config::from_toml(&text, std::path::Path::new("t.toml")).expect("valid");
    let server = sluice::server::Server::bind(config.clone())
        .await
        .expect("bind");
    let addr = server.local_addrs()[0];
    let running = server.start();
    assert_eq!(http_get(addr, "h", "/").await.body_str(), "a");

    dns.fail(true);
    running.reload(config).await.expect("reload");
    for _ in 0..3 {
        assert_eq!(
            http_get(addr, "h", "/").await.body_str(),
            "a",
            "the reload kept the address its lookup could not confirm"
        );
    }
    running.drain().await;
}
