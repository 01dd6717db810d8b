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
