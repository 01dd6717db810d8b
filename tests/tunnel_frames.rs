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
    let mut client = RawClient::connect(admin).await;
    client
        .send("GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .await;
    client.read_response().await.body_str()
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

fn config(backend: SocketAddr) -> String {
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
    eventually(WAIT, "the tunnel's close is counted", || async {
        let text = metrics(admin).await;
        sample(
            &text,
            r#"sluice_tunnel_closes_total{route="/",code="1000",initiator="client"}"#,
        ) == Some(1.0)
    })
    .await;
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
    eventually(WAIT, "the upstream's close is counted", || async {
        let text = metrics(admin).await;
        // A Close without a status code is reported as 1005 (RFC 6455 §7.4.1).
        sample(
            &text,
            r#"sluice_tunnel_closes_total{route="/",code="1005",initiator="upstream"}"#,
        ) == Some(1.0)
    })
    .await;
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
    eventually(
        WAIT,
        "the tunnel is counted closed, with no Close code",
        || async {
            let text = metrics(admin).await;
            sample(
                &text,
                r#"sluice_tunnel_closes_total{route="/",code="none",initiator="upstream"}"#,
            ) == Some(1.0)
        },
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
    let proxy = spawn_proxy(&format!(
        r#"
[[listener]]
addr = "127.0.0.1:0"

[admin]
addr = "127.0.0.1:0"

[upstream.app]
servers = ["{backend}"]

[[route]]
upstream = "app"
idle_timeout = "300ms"
"#
    ))
    .await;
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
    eventually(
        WAIT,
        "the close is counted as sluice's, with 1001",
        || async {
            let text = metrics(admin).await;
            sample(
                &text,
                r#"sluice_tunnel_closes_total{route="/",code="1001",initiator="sluice"}"#,
            ) == Some(1.0)
        },
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
