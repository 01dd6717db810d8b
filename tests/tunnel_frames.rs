//! Tunnels followed frame by frame, with real tokio-tungstenite peers: data messages are
//! counted each way (`sluice_tunnel_messages_total`), and each closed tunnel is counted by
//! its Close code and who closed first (`sluice_tunnel_closes_total`). A byte stream that
//! is not WebSocket framing after a valid `101` is relayed unchanged.

mod support;

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

async fn metrics(admin: SocketAddr) -> String {
    metrics_text(admin).await
}

/// Waits until `/metrics` counts one closed tunnel on route `/` with Close `code` (or
/// `none`) and `initiator`.
async fn wait_for_close(admin: SocketAddr, what: &'static str, code: &str, initiator: &str) {
    let series =
        format!(r#"sluice_tunnel_closes_total{{route="/",code="{code}",initiator="{initiator}"}}"#);
    eventually(WAIT, what, || async {
        sample(&metrics(admin).await, &series) == Some(1.0)
    })
    .await;
}

fn config(backend: SocketAddr) -> String {
    config_with(backend, "")
}

/// One listener, the admin endpoint, and one route to `backend` with `route_keys` added.
fn config_with(backend: SocketAddr, route_keys: &str) -> String {
    format!(
        r#"
[[listener]]
addr = "127.0.0.1:0"

[admin]
addr = "127.0.0.1:0"

[upstream.app]
servers = ["{backend}"]

[[route]]
upstream = "app"
{route_keys}
"#
    )
}

#[tokio::test]
async fn messages_are_counted_each_way_and_a_client_close_by_its_code() {
    let backend = ws_echo_backend().await;
    let proxy = spawn_proxy(&config(backend.addr)).await;
    let admin = proxy.admin.expect("admin");
    let (mut ws, _) = ws_connect(&format!("ws://{}/", proxy.addr), &[])
        .await
        .expect("handshake");
    for text in ["one", "two", "three"] {
        ws.send(Message::text(text)).await.expect("send");
        let echo = within(WAIT, ws.next()).await.expect("echo").expect("read");
        assert_eq!(echo.into_text().expect("text").as_str(), text);
    }
    // A large binary message: one message, however many reads it takes.
    ws.send(Message::binary(vec![7u8; 200_000]))
        .await
        .expect("send");
    let echo = within(WAIT, ws.next()).await.expect("echo").expect("read");
    assert_eq!(echo.into_data().len(), 200_000);
    ws.send(Message::Ping(b"p".to_vec())).await.expect("ping");
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .expect("close");
    // Read until the server's Close and the end of the stream.
    let _ = within(WAIT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    drop(ws);
    wait_for_close(admin, "the tunnel's close is counted", "1000", "client").await;
    // /status (and the dashboard) list closes by code and initiator.
    let doc: serde_json::Value =
        serde_json::from_str(&admin_get(admin, "/status", "").await.body_str()).expect("JSON");
    assert_eq!(
        doc["totals"]["closes"],
        serde_json::json!([{ "code": "1000", "initiator": "client", "count": 1 }])
    );
    assert_eq!(doc["totals"]["messages_in"], 4);
    let text = metrics(admin).await;
    // Control frames (the Ping, the Pong, the Closes) are not messages.
    assert_eq!(
        sample(
            &text,
            r#"sluice_tunnel_messages_total{route="/",direction="in"}"#
        ),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"sluice_tunnel_messages_total{route="/",direction="out"}"#
        ),
        Some(4.0),
        "{text}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_upstream_close_is_counted_as_the_upstreams() {
    let backend = ws_backend(WsBehaviour {
        on_open: Vec::new(),
        end_after: Some((1, Ending::CloseFrame)),
    })
    .await;
    let proxy = spawn_proxy(&config(backend.addr)).await;
    let admin = proxy.admin.expect("admin");
    let (mut ws, _) = ws_connect(&format!("ws://{}/", proxy.addr), &[])
        .await
        .expect("handshake");
    ws.send(Message::text("last")).await.expect("send");
    // The echo, then the server's Close (without a code); tungstenite answers it.
    let _ = within(WAIT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    drop(ws);
    // A Close without a status code is reported as 1005 (RFC 6455 §7.4.1).
    wait_for_close(admin, "the upstream's close is counted", "1005", "upstream").await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn bytes_that_are_not_websocket_framing_are_relayed_unchanged() {
    const GARBAGE: &[u8] = b"this is not a websocket frame \xff\x00\x81";
    let backend = raw_backend(|mut stream| async move {
        if let Some((head, _)) = read_head(&mut stream).await {
            let _ = stream.write_all(good_101(&head).as_bytes()).await;
            let _ = stream.write_all(GARBAGE).await;
            let _ = stream.shutdown().await;
        }
    })
    .await;
    let proxy = spawn_proxy(&config(backend.addr)).await;
    let admin = proxy.admin.expect("admin");
    let mut client = RawClient::connect(proxy.addr).await;
    client.send(handshake("/", "app", "")).await;
    let response = client.read_response().await;
    assert_eq!(response.status, 101);
    let rest = client.read_to_close(WAIT).await;
    assert_eq!(rest, GARBAGE);
    drop(client);
    wait_for_close(
        admin,
        "the tunnel is counted closed, with no Close code",
        "none",
        "upstream",
    )
    .await;
    let text = metrics(admin).await;
    assert_eq!(
        sample(
            &text,
            r#"sluice_tunnel_messages_total{route="/",direction="out"}"#
        ),
        Some(0.0),
        "{text}"
    );
    proxy.shutdown().await;
}

/// A WebSocket backend that reports the Close code each connection receives.
async fn close_reporting_backend() -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Option<u16>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if let Message::Close(frame) = &message {
                        let _ = tx.send(frame.as_ref().map(|f| u16::from(f.code)));
                    } else if (message.is_text() || message.is_binary())
                        && ws.send(message).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// What the client's side of the tunnel sees next: the Close code sluice sent.
async fn client_close_code(ws: &mut WsClient) -> Option<u16> {
    loop {
        match within(WAIT, ws.next()).await {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("the client got no Close frame: {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_idle_timeout_sends_1001_to_both_sides() {
    let (backend, mut closes) = close_reporting_backend().await;
    let proxy = spawn_proxy(&config_with(backend, "idle_timeout = \"300ms\"")).await;
    let admin = proxy.admin.expect("admin");
    let (mut ws, _) = ws_connect(&format!("ws://{}/", proxy.addr), &[])
        .await
        .expect("handshake");
    ws.send(Message::text("before the quiet"))
        .await
        .expect("send");
    let echo = within(WAIT, ws.next()).await.expect("echo").expect("read");
    assert_eq!(echo.into_text().expect("text").as_str(), "before the quiet");
    // Nothing more: the idle timeout ends the tunnel with a clean Close each way.
    assert_eq!(client_close_code(&mut ws).await, Some(1001));
    let upstream_got = within(WAIT, closes.recv())
        .await
        .expect("the backend's report");
    assert_eq!(upstream_got, Some(1001));
    drop(ws);
    wait_for_close(
        admin,
        "the close is counted as sluice's, with 1001",
        "1001",
        "sluice",
    )
    .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_drain_sends_1001_to_both_sides_at_shutdown_timeout() {
    let (backend, mut closes) = close_reporting_backend().await;
    let mut proxy = spawn_proxy(&format!(
        r#"
[proxy]
shutdown_timeout = "300ms"

[[listener]]
addr = "127.0.0.1:0"

[upstream.app]
servers = ["{backend}"]

[[route]]
upstream = "app"
"#
    ))
    .await;
    let (mut ws, _) = ws_connect(&format!("ws://{}/", proxy.addr), &[])
        .await
        .expect("handshake");
    ws.send(Message::text("hi")).await.expect("send");
    let _ = within(WAIT, ws.next()).await.expect("echo").expect("read");
    proxy.stop();
    assert_eq!(client_close_code(&mut ws).await, Some(1001));
    let upstream_got = within(WAIT, closes.recv())
        .await
        .expect("the backend's report");
    assert_eq!(upstream_got, Some(1001));
    drop(ws);
    proxy.finished(WAIT).await;
}

fn drain_config(listen: u16, admin: u16, a: SocketAddr, b: SocketAddr, drain_b: bool) -> String {
    let b = if drain_b {
        format!(r#"{{ addr = "{b}", drain = true }}"#)
    } else {
        format!(r#""{b}""#)
    };
    format!(
        r#"
[[listener]]
addr = "127.0.0.1:{listen}"

[admin]
addr = "127.0.0.1:{admin}"

[upstream.app]
servers = ["{a}", {b}]
drain_timeout = "500ms"

[[route]]
upstream = "app"
"#
    )
}

async fn server_status(admin: SocketAddr, server: SocketAddr) -> serde_json::Value {
    let doc: serde_json::Value =
        serde_json::from_str(&admin_get(admin, "/status", "").await.body_str()).expect("JSON");
    doc["upstreams"][0]["servers"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["server"] == server.to_string()))
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// `drain = true` on a server, applied by a reload: it gets no new tunnels, its tunnels
/// are closed with 1001 within `drain_timeout`, and the rest of the pool keeps its own.
#[tokio::test]
async fn a_drained_server_closes_its_tunnels_with_1001_and_gets_no_new_ones() {
    let a = named_ws_backend("a").await;
    let b = named_ws_backend("b").await;
    let (listen, admin) = (free_port(), free_port());
    let path = temp_config("drain", &drain_config(listen, admin, a.addr, b.addr, false));
    let mut daemon = Daemon::start(&["run", "-c", path.to_str().expect("utf-8")]);
    let proxy: SocketAddr = ([127, 0, 0, 1], listen).into();
    let admin: SocketAddr = ([127, 0, 0, 1], admin).into();
    daemon.wait_listening(proxy).await;
    daemon.wait_listening(admin).await;

    // Round robin: one tunnel on each server.
    let (mut first, first_name) = open_tunnel(proxy).await;
    let (mut second, second_name) = open_tunnel(proxy).await;
    let mut names = [first_name.clone(), second_name];
    names.sort();
    assert_eq!(names, ["a", "b"]);
    let (on_a, on_b) = if first_name == "a" {
        (&mut first, &mut second)
    } else {
        (&mut second, &mut first)
    };

    std::fs::write(
        &path,
        drain_config(listen, admin.port(), a.addr, b.addr, true),
    )
    .expect("write");
    daemon.sighup();
    // The drained server's tunnel gets a clean Close within drain_timeout.
    assert_eq!(client_close_code(on_b).await, Some(1001));
    assert_eq!(server_status(admin, b.addr).await["state"], "draining");
    // The other server's tunnel carries on.
    on_a.send(Message::text("still here")).await.expect("send");
    let echo = within(WAIT, on_a.next())
        .await
        .expect("echo")
        .expect("read");
    assert_eq!(echo.into_text().expect("text").as_str(), "still here");
    // New tunnels go to the rest of the pool only.
    for _ in 0..3 {
        let (mut ws, name) = open_tunnel(proxy).await;
        assert_eq!(name, "a");
        let _ = ws.close(None).await;
    }
    eventually(WAIT, "the drained server holds no tunnel", || async {
        server_status(admin, b.addr).await["open_tunnels"] == 0
    })
    .await;
    assert_eq!(server_status(admin, a.addr).await["state"], "up");

    drop((first, second));
    daemon.sigterm();
    let exit = daemon.wait_exit(WAIT).await;
    assert_eq!(exit.code, Some(0), "{exit}");
}

/// `max_message_bytes`: the frame that crosses the limit is not passed on, nor anything
/// after it; the sender gets Close 1009 and the other side Close 1001.
#[tokio::test]
async fn a_message_over_max_message_bytes_gets_1009_and_never_reaches_the_other_side() {
    let (backend, mut closes) = close_reporting_backend().await;
    let proxy = spawn_proxy(&config_with(backend, "max_message_bytes = 100")).await;
    let admin = proxy.admin.expect("admin");
    let (mut ws, _) = ws_connect(&format!("ws://{}/", proxy.addr), &[])
        .await
        .expect("handshake");
    ws.send(Message::text("a".repeat(100))).await.expect("send");
    let echo = within(WAIT, ws.next()).await.expect("echo").expect("read");
    assert_eq!(
        echo.into_text().expect("text").len(),
        100,
        "at the limit, it passes"
    );
    ws.send(Message::text("b".repeat(101))).await.expect("send");
    // The next thing the client gets is the Close: the big message never reached the
    // backend, so no echo of it comes back.
    match within(WAIT, ws.next()).await {
        Some(Ok(Message::Close(frame))) => {
            assert_eq!(frame.map(|f| u16::from(f.code)), Some(1009));
        }
        other => panic!("expected Close 1009, got {other:?}"),
    }
    let upstream_got = within(WAIT, closes.recv())
        .await
        .expect("the backend's report");
    assert_eq!(upstream_got, Some(1001));
    drop(ws);
    wait_for_close(
        admin,
        "the close is counted as sluice's 1009",
        "1009",
        "sluice",
    )
    .await;
    let text = metrics(admin).await;
    assert_eq!(
        sample(
            &text,
            r#"sluice_tunnel_messages_total{route="/",direction="in"}"#
        ),
        Some(1.0),
        "{text}"
    );
    proxy.shutdown().await;
}

/// `ping_interval`: a side that stops reading and sending is pinged, found dead after
/// another interval, and the tunnel is closed (Close 1001 to the other side); a side that
/// answers the pings is not.
#[tokio::test]
async fn ping_interval_finds_a_half_open_client_and_spares_a_live_one() {
    let (backend, mut closes) = close_reporting_backend().await;
    let proxy = spawn_proxy(&config_with(backend, "ping_interval = \"200ms\"")).await;
    let admin = proxy.admin.expect("admin");

    // A live client: tokio-tungstenite answers each Ping as it reads.
    let (live, _) = ws_connect(&format!("ws://{}/", proxy.addr), &[])
        .await
        .expect("handshake");
    let (mut live_tx, mut live_rx) = live.split();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = live_rx.next().await {
            let _ = seen_tx.send(message);
        }
    });

    // A half-open client: it completes the handshake, then neither reads nor sends.
    let mut dead = RawClient::connect(proxy.addr).await;
    dead.send(handshake("/", "app", "")).await;
    assert_eq!(dead.read_response().await.status, 101);

    // The dead client's tunnel is closed: its upstream gets Close 1001.
    let upstream_got = within(WAIT, closes.recv())
        .await
        .expect("the backend's report");
    assert_eq!(upstream_got, Some(1001));
    wait_for_close(
        admin,
        "the dead tunnel is counted closed by sluice",
        "1001",
        "sluice",
    )
    .await;

    // The live client was pinged too, answered, and still works.
    let mut pings = 0;
    while pings < 3 {
        match within(WAIT, seen.recv()).await {
            Some(Message::Ping(_)) => pings += 1,
            Some(_) => {}
            None => panic!("the live client's tunnel closed"),
        }
    }
    live_tx.send(Message::text("alive")).await.expect("send");
    loop {
        match within(WAIT, seen.recv()).await {
            Some(Message::Text(text)) => {
                assert_eq!(text.as_str(), "alive");
                break;
            }
            // The upstream's answers to sluice's pings come through as they are.
            Some(Message::Ping(_) | Message::Pong(_)) => {}
            other => panic!("expected the echo, got {other:?}"),
        }
    }
    drop(live_tx);
    reader.abort();
    drop(dead);
    proxy.shutdown().await;
}

/// A tunnel whose upstream does not speak WebSocket framing gets nothing of sluice's own
/// when sluice ends it (here by `idle_timeout`): no Close frame either way, the sockets
/// are just closed.
#[tokio::test]
async fn a_tunnel_that_is_not_websocket_gets_no_close_frame() {
    const GARBAGE: &[u8] = b"not a frame \xff\xfe";
    let (got_tx, mut got) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let backend = raw_backend(move |mut stream| {
        let got_tx = got_tx.clone();
        async move {
            use tokio::io::AsyncReadExt;
            if let Some((head, _)) = read_head(&mut stream).await {
                let _ = stream.write_all(good_101(&head).as_bytes()).await;
                let _ = stream.write_all(GARBAGE).await;
                // Everything that comes after, until sluice closes the connection.
                let mut rest = Vec::new();
                let _ = within(WAIT, stream.read_to_end(&mut rest)).await;
                let _ = got_tx.send(rest);
            }
        }
    })
    .await;
    let proxy = spawn_proxy(&format!(
        r#"
[[listener]]
addr = "127.0.0.1:0"

[upstream.app]
servers = ["{}"]

[[route]]
upstream = "app"
idle_timeout = "300ms"
"#,
        backend.addr
    ))
    .await;
    let mut client = RawClient::connect(proxy.addr).await;
    client.send(handshake("/", "app", "")).await;
    assert_eq!(client.read_response().await.status, 101);
    // The garbage, and then the end: no Close frame after it.
    assert_eq!(client.read_to_close(WAIT).await, GARBAGE);
    let upstream_got = within(WAIT, got.recv())
        .await
        .expect("the backend's report");
    assert!(upstream_got.is_empty(), "the upstream got {upstream_got:?}");
    proxy.shutdown().await;
}
