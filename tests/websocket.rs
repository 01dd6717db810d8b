//! WebSocket handshakes and tunnels through the proxy (SPEC "On the wire", "Errors").
//!
//! Handshake forwarding
//! - `echo_text_and_binary_through_proxy`
//! - `upstream_sees_handshake_headers_unchanged`
//! - `handshake_tokens_are_case_insensitive_across_header_lines`
//! - `only_the_websocket_upgrade_token_is_forwarded`
//! - `invalid_handshakes_get_400_and_never_reach_upstream`
//! - `upgrade_not_named_by_connection_is_plain_http`
//! - `h2c_upgrade_is_never_forwarded`
//! - `websocket_false_route_sends_plain_request`
//! - `allowed_origins_rejects_others_with_403`
//!
//! Checking the upstream's answer
//! - `upstream_101_with_wrong_or_missing_accept_is_502_and_no_tunnel`
//! - `upstream_101_without_upgrade_is_502`
//! - `upstream_101_to_plain_request_is_502`
//! - `refused_handshake_is_relayed_and_next_bytes_are_parsed_as_a_request`
//!
//! Tunnel
//! - `bytes_sent_with_the_handshake_reach_upstream_after_101`
//! - `backend_bytes_right_after_101_reach_client`
//! - `client_half_close_is_passed_upstream`
//! - `upstream_half_close_is_passed_to_client`
//! - `upstream_close_frame_reaches_client`
//! - `upstream_abrupt_close_closes_client`
//! - `idle_tunnel_is_closed_after_idle_timeout`
//! - `active_tunnel_outlives_idle_timeout`

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

fn ws_url(proxy: &TestProxy, path: &str) -> String {
    format!("ws://{}{path}", proxy.addr)
}

/// A backend that answers `200 plain` and records what it saw, for requests that must not
/// be upgraded (or must not arrive at all).
async fn plain_backend() -> HttpBackend {
    named_backend("plain").await
}

/// Whether a WebSocket read result means the connection ended (not a data message).
fn is_end(next: &Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> bool {
    matches!(next, None | Some(Err(_)) | Some(Ok(Message::Close(_))))
}

// ---------------------------------------------------------------------------------------
// Handshake forwarding

#[tokio::test]
async fn echo_text_and_binary_through_proxy() {
    let backend = ws_echo_backend().await;
    let proxy = spawn_proxy(&one_route(&[backend.addr], r#"path = "/ws""#)).await;

    let (mut ws, resp) = ws_connect(&ws_url(&proxy, "/ws/chat"), &[])
        .await
        .expect("handshake through the proxy");
    assert_eq!(resp.status(), 101);

    let messages = [
        Message::Text("hello".into()),
        Message::Binary(vec![0, 1, 2, 255]),
        Message::Text("ünïcødé".into()),
        Message::Binary(vec![7; 70_000]),
        Message::Text("last".into()),
    ];
    for m in &messages {
        within(WAIT, ws.send(m.clone())).await.unwrap();
    }
    for m in &messages {
        let got = within(WAIT, ws.next()).await;
        assert_eq!(got.expect("stream ended").expect("read"), *m);
    }
    within(WAIT, ws.close(None)).await.unwrap();
    while let Some(Ok(_)) = within(WAIT, ws.next()).await {}
    drop(ws);
    assert_eq!(backend.count(), 1);
    // With the tunnel closed on both sides, nothing holds the drain up.
    within(Duration::from_secs(3), proxy.shutdown()).await;
}

#[tokio::test]
async fn upstream_sees_handshake_headers_unchanged() {
    let backend = ws_echo_backend().await;
    let proxy = spawn_proxy(&one_route(&[backend.addr], "")).await;

    let mut client = RawClient::connect(proxy.addr).await;
    client
        .send(
            "GET /chat?room=1 HTTP/1.1\r\n\
             Host: app.example\r\n\
             Connection: keep-alive, Upgrade\r\n\
             Upgrade: websocket\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: chat, superchat\r\n\
             Origin: https://app.example\r\n\
             Cookie: session=abc; theme=dark\r\n\
             X-Custom: kept\r\n\
             \r\n",
        )
        .await;
    let r = client.read_response().await;
    assert_eq!(r.status, 101, "{}", r.text());
    assert_eq!(r.header("sec-websocket-accept"), Some(KEY_ACCEPT));
    assert!(r
        .header("upgrade")
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket")));

    let seen = &backend.handshakes()[0];
    let get = |name: &str| {
        seen.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(get("upgrade").len(), 1, "{seen:?}");
    assert!(
        get("upgrade")[0].eq_ignore_ascii_case("websocket"),
        "{seen:?}"
    );
    assert_eq!(get("connection").len(), 1, "{seen:?}");
    assert!(
        get("connection")[0].eq_ignore_ascii_case("upgrade"),
        "{seen:?}"
    );
    assert_eq!(get("sec-websocket-key"), [KEY]);
    assert_eq!(get("sec-websocket-version"), ["13"]);
    assert_eq!(get("sec-websocket-protocol"), ["chat, superchat"]);
    assert_eq!(get("origin"), ["https://app.example"]);
    assert_eq!(get("cookie"), ["session=abc; theme=dark"]);
    assert_eq!(get("x-custom"), ["kept"]);
    assert_eq!(get("host"), ["app.example"]);
    assert_eq!(get("x-forwarded-for"), ["127.0.0.1"]);
}

#[tokio::test]
async fn handshake_tokens_are_case_insensitive_across_header_lines() {
    let backend = ws_echo_backend().await;
    let proxy = spawn_proxy(&one_route(&[backend.addr], "")).await;

    let mut client = RawClient::connect(proxy.addr).await;
    client
        .send(format!(
            "GET / HTTP/1.1\r\nHost: h\r\n\
             Connection: keep-alive\r\nConnection: UPGRADE\r\n\
             Upgrade: WebSocket\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ))
        .await;
    let r = client.read_response().await;
    assert_eq!(r.status, 101, "{}", r.text());
    assert_eq!(r.header("sec-websocket-accept"), Some(KEY_ACCEPT));

    // The tunnel works.
    client.send(client_frame(1, b"hi")).await;
    assert_eq!(client.read_exact(4).await, server_frame(1, b"hi"));
}

#[tokio::test]
async fn only_the_websocket_upgrade_token_is_forwarded() {
    let backend = ws_echo_backend().await;
    let proxy = spawn_proxy(&one_route(&[backend.addr], "")).await;

    let mut client = RawClient::connect(proxy.addr).await;
    client
        .send(format!(
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n\
             Upgrade: h2c, websocket\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ))
        .await;
    let r = client.read_response().await;
    assert_eq!(r.status, 101, "{}", r.text());
    let seen = &backend.handshakes()[0];
    let upgrades: Vec<_> = seen.get_all("upgrade").iter().collect();
    assert_eq!(upgrades.len(), 1, "{seen:?}");
    assert!(upgrades[0]
        .to_str()
        .unwrap()
        .eq_ignore_ascii_case("websocket"));
}

#[tokio::test]
async fn invalid_handshakes_get_400_and_never_reach_upstream() {
    let backend = plain_backend().await;
    let proxy = spawn_proxy(&one_route(&[backend.addr], "")).await;

    let asks = "Upgrade: websocket\r\nConnection: Upgrade\r\n";
    let cases = [
        (
            "missing key",
            format!("GET / HTTP/1.1\r\nHost: h\r\n{asks}Sec-WebSocket-Version: 13\r\n\r\n"),
        ),
        (
            "key of 8 bytes",
            format!(
                "GET / HTTP/1.1\r\nHost: h\r\n{asks}Sec-WebSocket-Key: dG9vc2hvcnQ=\r\n\
                 Sec-WebSocket-Version: 13\r\n\r\n"
            ),
        ),
        (
            "key not base64",
            format!(
                "GET / HTTP/1.1\r\nHost: h\r\n{asks}Sec-WebSocket-Key: !!not*base64!!!!!!!!!!==\r\n\
                 Sec-WebSocket-Version: 13\r\n\r\n"
            ),
        ),
        (
            "version 8",
            format!(
                "GET / HTTP/1.1\r\nHost: h\r\n{asks}Sec-WebSocket-Key: {KEY}\r\n\
                 Sec-WebSocket-Version: 8\r\n\r\n"
            ),
        ),
        (
            "missing version",
            format!("GET / HTTP/1.1\r\nHost: h\r\n{asks}Sec-WebSocket-Key: {KEY}\r\n\r\n"),
        ),
        (
            "POST",
            format!(
                "POST / HTTP/1.1\r\nHost: h\r\n{asks}Sec-WebSocket-Key: {KEY}\r\n\
                 Sec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n"
            ),
        ),
    ];
    for (what, req) in cases {
        let r = raw_response(proxy.addr, req).await;
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        assert_eq!(r.body_str(), "bad request\n", "{what}");
    }
    assert_eq!(backend.count(), 0, "{:#?}", backend.seen());
}

#[tokio::test]
async fn upgrade_not_named_by_connection_is_plain_http() {
    let backend = plain_backend().await;
    let proxy = spawn_proxy(&one_route(&[backend.addr], "")).await;

    let r = raw_response(
        proxy.addr,
        format!(
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body_str(), "plain");

    let seen = backend.only();
    assert!(seen.header("upgrade").is_none(), "{:?}", seen.headers);
    assert_eq!(
        seen.header_joined("connection").as_deref(),
        Some("keep-alive")
    );
    // End-to-end headers still go through.
    assert_eq!(seen.header("sec-websocket-key"), Some(KEY));
}

#[tokio::test]
async fn h2c_upgrade_is_never_forwarded() {
    let backend = plain_backend().await;
    let proxy = spawn_proxy(&one_route(&[backend.addr], "")).await;

    let r = raw_response(
        proxy.addr,
        "GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
         HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body_str(), "plain");

    let seen = backend.only();
    assert!(seen.header("upgrade").is_none(), "{:?}", seen.headers);
    assert!(
        seen.header("http2-settings").is_none(),
        "{:?}",
        seen.headers
    );
    assert_eq!(
        seen.header_joined("connection").as_deref(),
        Some("keep-alive")
    );
}

#[tokio::test]
async fn websocket_false_route_sends_plain_request() {
    let backend = plain_backend().await;
    let proxy = spawn_proxy(&one_route(&[backend.addr], "websocket = false")).await;

    let r = raw_response(proxy.addr, handshake("/", "h", "")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body_str(), "plain");

    let seen = backend.only();
    assert!(seen.header("upgrade").is_none(), "{:?}", seen.headers);
    assert_eq!(
        seen.header_joined("connection").as_deref(),
        Some("keep-alive")
    );
}

#[tokio::test]
async fn allowed_origins_rejects_others_with_403() {
    let backend = ws_echo_backend().await;
    let proxy = spawn_proxy(&one_route(
        &[backend.addr],
        r#"allowed_origins = ["https://good.example"]"#,
    ))
    .await;

    let r = raw_response(
        proxy.addr,
        handshake("/", "h", "Origin: https://evil.example\r\n"),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.body_str(), "origin not allowed\n");
    assert_eq!(backend.count(), 0);

    let (mut ws, _) = ws_connect(&ws_url(&proxy, "/"), &[("Origin", "https://good.example")])
        .await
        .expect("allowed origin is let through");
    within(WAIT, ws.send(Message::Text("ok".into())))
        .await
        .unwrap();
    let got = within(WAIT, ws.next()).await;
    assert_eq!(got.unwrap().unwrap(), Message::Text("ok".into()));
    assert_eq!(backend.count(), 1);
}

// ---------------------------------------------------------------------------------------
// Checking the upstream's answer

/// A raw backend answering each request with `answer(head)`, then reporting every byte it
/// receives afterwards (for up to 1 s) on the returned channel.
async fn scripted_backend(
    answer: fn(&str) -> String,
) -> (RawBackend, mpsc::UnboundedReceiver<Vec<u8>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let backend = raw_backend(move |mut s| {
        let tx = tx.clone();
        async move {
            let Some((head, mut after)) = read_head(&mut s).await else {
                return;
            };
            let _ = s.write_all(answer(&head).as_bytes()).await;
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let mut chunk = [0u8; 1024];
                while let Ok(n) = s.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    after.extend_from_slice(&chunk[..n]);
                }
            })
            .await;
            let _ = tx.send(after);
        }
    })
    .await;
    (backend, rx)
}

#[tokio::test]
async fn upstream_101_with_wrong_or_missing_accept_is_502_and_no_tunnel() {
    let answers: [fn(&str) -> String; 2] = [
        |_| {
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n"
                .to_owned()
        },
        |_| {
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                .to_owned()
        },
    ];
    for (i, answer) in answers.into_iter().enumerate() {
        let (backend, mut after) = scripted_backend(answer).await;
        let proxy = spawn_proxy(&one_route(&[backend.addr], "")).await;

        let mut client = RawClient::connect(proxy.addr).await;
        client.send(handshake("/", "h", "")).await;
        let r = client.read_response().await;
        assert_eq!(r.status, 502, "case {i}: {}", r.text());
        assert_eq!(r.body_str(), "bad gateway\n", "case {i}");

        // Whatever the client sends now must not be tunnelled to the backend.
        let _ = client.stream.write_all(b"tunnel-bytes").await;
        let got = within(WAIT, after.recv()).await.unwrap();
        assert!(
            find(&got, b"tunnel-bytes").is_none(),
            "case {i}: bytes were tunnelled after a bad 101: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
}

#[tokio::test]
async fn upstream_101_without_upgrade_is_502() {
    let (backend, _after) = scripted_backend(|head| {
        let key = head_value(head, "sec-websocket-key").unwrap_or("");
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            accept_for(key)
        )
    })
    .await;
    let proxy = spawn_proxy(&one_route(&[backend.addr], "")).await;

    let r = raw_response(proxy.addr, handshake("/", "h", "")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.body_str(), "bad gateway\n");
}

#[tokio::test]
async fn upstream_101_to_plain_request_is_502() {
    let (backend, mut after) = scripted_backend(|_| {
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
            .to_owned()
    })
    .await;
    let proxy = spawn_proxy(&one_route(&[backend.addr], "")).await;

    let mut client = RawClient::connect(proxy.addr).await;
    client.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let r = client.read_response().await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.body_str(), "bad gateway\n");

    let _ = client.stream.write_all(b"tunnel-bytes").await;
    let got = within(WAIT, after.recv()).await.unwrap();
    assert!(find(&got, b"tunnel-bytes").is_none());
}

#[tokio::test]
async fn refused_handshake_is_relayed_and_next_bytes_are_parsed_as_a_request() {
    // See: the "WebSocket smuggling" hole (tunnelling on a non-101 answer).
    let backend = http_backend(|seen| async move {
        if seen.headers.contains_key("upgrade") {
            text(403, "refused")
        } else {
            text(200, "second")
        }
    })
    .await;
    let proxy = spawn_proxy(&one_route(&[backend.addr], "")).await;

    // The handshake and a second request in one write, before any answer.
    let mut client = RawClient::connect(proxy.addr).await;
    let smuggled = "GET /internal HTTP/1.1\r\nHost: h\r\nX-Marker: after-handshake\r\n\r\n";
    client
        .send(format!("{}{smuggled}", handshake("/", "h", "")))
        .await;

    let first = client.read_response().await;
    assert_eq!(first.status, 403, "{}", first.text());
    assert_eq!(first.body_str(), "refused");
    let second = client.read_response().await;
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(second.body_str(), "second");

    // The second request went through the proxy's rewriting: it was parsed, not copied.
    backend.wait_for(2).await;
    let seen = backend.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_eq!(seen[1].uri.path(), "/internal");
    assert_eq!(seen[1].header("x-marker"), Some("after-handshake"));
    assert_eq!(seen[1].header_all("x-forwarded-for"), ["127.0.0.1"]);
    assert!(seen[1].header("upgrade").is_none());
}

// ---------------------------------------------------------------------------------------
// Tunnel

#[tokio::test]
async fn bytes_sent_with_the_handshake_reach_upstream_after_101() {
    // See: pingora `test_upgrade_body_after_101`; RFC 9931.
    let payload: &[u8] = b"\x00pipelined bytes\x01\x02\xff right after the handshake";
    let (tx, mut rx) = mpsc::unbounded_channel();
    let backend = raw_backend(move |mut s| {
        let tx = tx.clone();
        async move {
            let Some((head, early)) = read_head(&mut s).await else {
                return;
            };
            // Nothing may arrive before the 101 was sent.
            let _ = tx.send(("early", early));
            let _ = s.write_all(good_101(&head).as_bytes()).await;
            let mut got = Vec::new();
            let mut chunk = [0u8; 1024];
            let _ = tokio::time::timeout(WAIT, async {
                while got.len() < payload.len() {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&chunk[..n]),
                    }
                }
            })
            .await;
            let _ = tx.send(("tunnel", got));
        }
    })
    .await;
    let proxy = spawn_proxy(&one_route(&[backend.addr], "")).await;

    let mut client = RawClient::connect(proxy.addr).await;
    let mut bytes = handshake("/", "h", "").into_bytes();
    bytes.extend_from_slice(payload);
    client.send(bytes).await;

    let r = client.read_response().await;
    assert_eq!(r.status, 101, "{}", r.text());
    let (_, early) = within(WAIT, rx.recv()).await.unwrap();
    assert!(
        early.is_empty(),
        "bytes reached the upstream before its 101: {:?}",
        String::from_utf8_lossy(&early)
    );
    let (_, got) = within(WAIT, rx.recv()).await.unwrap();
    assert_eq!(got, payload, "pipelined bytes lost or changed");
}

#[tokio::test]
async fn backend_bytes_right_after_101_reach_client() {
    // The 101 and the first frame leave the backend in one write.
    let backend = raw_backend(|mut s| async move {
        let Some((head, _)) = read_head(&mut s).await else {
            return;
        };
        let mut out = good_101(&head).into_bytes();
        out.extend(server_frame(1, b"welcome"));
        let _ = s.write_all(&out).await;
        let _ = read_head(&mut s).await; // hold the connection
    })
    .await;
    let proxy = spawn_proxy(&one_route(&[backend.addr], "")).await;

    let mut client = RawClient::connect(proxy.addr).await;
    client.send(handshake("/", "h", "")).await;
    let r = client.read_response().await;
    assert_eq!(r.status, 101, "{}", r.text());
    assert_eq!(r.header("sec-websocket-accept"), Some(KEY_ACCEPT));
    let frame = server_frame(1, b"welcome");
    assert_eq!(client.read_exact(frame.len()).await, frame);

    // And with a real client: the welcome message comes first.
    let backend = ws_backend(WsBehaviour {
        on_open: vec![Message::Text("welcome".into())],
        end_after: None,
    })
    .await;
    let proxy = spawn_proxy(&one_route(&[backend.addr], "")).await;
    let (mut ws, _) = ws_connect(&ws_url(&proxy, "/"), &[]).await.unwrap();
    let got = within(WAIT, ws.next()).await;
    assert_eq!(got.unwrap().unwrap(), Message::Text("welcome".into()));
}

#[tokio::test]
async fn client_half_close_is_passed_upstream() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let backend = raw_backend(move |mut s| {
        let tx = tx.clone();
        async move {
            let Some((head, _)) = read_head(&mut s).await else {
                return;
            };
            let _ = s.write_all(good_101(&head).as_bytes()).await;
            let mut got = Vec::new();
            // Reads to EOF: only a passed-on half-close ends this.
            let eof = tokio::time::timeout(WAIT, s.read_to_end(&mut got)).await;
            let _ = tx.send((got, eof.is_ok()));
            let _ = s.write_all(b"sent after your EOF").await;
            let _ = s.shutdown().await;
        }
    })
    .await;
    let proxy = spawn_proxy(&one_route(&[backend.addr], "")).await;

    let mut client = RawClient::connect(proxy.addr).await;
    client.send(handshake("/", "h", "")).await;
    assert_eq!(client.read_response().await.status, 101);
    client.send("last words").await;
    client.shutdown_write().await;

    let (got, saw_eof) = within(WAIT, rx.recv()).await.unwrap();
    assert!(saw_eof, "the backend never saw EOF");
    assert_eq!(got, b"last words");
    assert_eq!(client.read_to_close(WAIT).await, b"sent after your EOF");
}

#[tokio::test]
async fn upstream_half_close_is_passed_to_client() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let backend = raw_backend(move |mut s| {
        let tx = tx.clone();
        async move {
            let Some((head, _)) = read_head(&mut s).await else {
                return;
            };
            let _ = s.write_all(good_101(&head).as_bytes()).await;
            let _ = s.write_all(b"goodbye").await;
            let _ = s.shutdown().await; // half-close: still reading
            let mut got = Vec::new();
            let eof = tokio::time::timeout(WAIT, s.read_to_end(&mut got)).await;
            let _ = tx.send((got, eof.is_ok()));
        }
    })
    .await;
    let proxy = spawn_proxy(&one_route(&[backend.addr], "")).await;

    let mut client = RawClient::connect(proxy.addr).await;
    client.send(handshake("/", "h", "")).await;
    assert_eq!(client.read_response().await.status, 101);
    assert_eq!(client.read_to_close(WAIT).await, b"goodbye");

    // The client can still talk after the backend's EOF.
    client.send("still here").await;
    client.shutdown_write().await;
    let (got, saw_eof) = within(WAIT, rx.recv()).await.unwrap();
    assert_eq!(got, b"still here");
    assert!(saw_eof);
}

#[tokio::test]
async fn upstream_close_frame_reaches_client() {
    let backend = ws_backend(WsBehaviour {
        on_open: vec![],
        end_after: Some((1, Ending::CloseFrame)),
    })
    .await;
    let proxy = spawn_proxy(&one_route(&[backend.addr], "")).await;

    let (mut ws, _) = ws_connect(&ws_url(&proxy, "/"), &[]).await.unwrap();
    within(WAIT, ws.send(Message::Text("one".into())))
        .await
        .unwrap();
    let echo = within(WAIT, ws.next()).await;
    assert_eq!(echo.unwrap().unwrap(), Message::Text("one".into()));
    let close = within(WAIT, ws.next()).await;
    assert!(
        matches!(close, Some(Ok(Message::Close(_)))),
        "expected the backend's Close frame, got {close:?}"
    );
    let end = within(WAIT, ws.next()).await;
    assert!(is_end(&end), "stream still open after close: {end:?}");
}

#[tokio::test]
async fn upstream_abrupt_close_closes_client() {
    let backend = ws_backend(WsBehaviour {
        on_open: vec![],
        end_after: Some((1, Ending::Abrupt)),
    })
    .await;
    let proxy = spawn_proxy(&one_route(&[backend.addr], "")).await;

    let (mut ws, _) = ws_connect(&ws_url(&proxy, "/"), &[]).await.unwrap();
    within(WAIT, ws.send(Message::Text("one".into())))
        .await
        .unwrap();
    let echo = within(WAIT, ws.next()).await;
    assert_eq!(echo.unwrap().unwrap(), Message::Text("one".into()));
    let end = within(WAIT, ws.next()).await;
    assert!(
        matches!(end, None | Some(Err(_))),
        "client side not closed after the backend dropped: {end:?}"
    );
}

#[tokio::test]
async fn idle_tunnel_is_closed_after_idle_timeout() {
    let backend = ws_echo_backend().await;
    let proxy = spawn_proxy(&one_route(&[backend.addr], r#"idle_timeout = "1s""#)).await;

    let (mut ws, _) = ws_connect(&ws_url(&proxy, "/"), &[]).await.unwrap();
    let start = Instant::now();
    let end = within(Duration::from_secs(5), ws.next()).await;
    let idle = start.elapsed();
    assert!(is_end(&end), "expected the tunnel to close, got {end:?}");
    assert!(
        idle >= Duration::from_millis(900),
        "closed after {idle:?}, before idle_timeout"
    );
}

#[tokio::test]
async fn active_tunnel_outlives_idle_timeout() {
    let backend = ws_echo_backend().await;
    let proxy = spawn_proxy(&one_route(&[backend.addr], r#"idle_timeout = "1s""#)).await;

    let (mut ws, _) = ws_connect(&ws_url(&proxy, "/"), &[]).await.unwrap();
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < Duration::from_millis(2100) {
        let m = Message::Text(format!("tick {i}"));
        within(WAIT, ws.send(m.clone())).await.unwrap();
        let got = within(WAIT, ws.next()).await;
        assert_eq!(
            got.expect("tunnel closed while active")
                .expect("tunnel broke while active"),
            m,
            "after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        i += 1;
    }
    assert!(i >= 6);
}
