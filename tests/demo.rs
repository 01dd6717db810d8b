//! `sluice demo`, started in-process on port 0:
//! - `GET /` through the proxy returns the page;
//! - two WebSocket connections through the proxy are answered by different backends
//!   (round robin), each echo prefixed with the backend's name;
//! - stopping drains and returns.
//!
//! Every wait is bounded.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Upper bound for any single step; generous, since CI machines can be slow.
const STEP: Duration = Duration::from_secs(10);

async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(STEP, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {STEP:?}: {what}"),
    }
}

async fn get_page(addr: SocketAddr) -> (StatusCode, String, String) {
    let stream = within("connect to the proxy", TcpStream::connect(addr))
        .await
        .expect("connect to the demo proxy");
    let (mut sender, conn) = within(
        "HTTP/1.1 handshake",
        hyper::client::conn::http1::handshake(TokioIo::new(stream)),
    )
    .await
    .expect("client handshake");
    tokio::spawn(conn);
    let req = Request::get("/")
        .header(header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .expect("build request");
    let res = within("response to GET /", sender.send_request(req))
        .await
        .expect("response to GET /");
    let status = res.status();
    let content_type = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = within("body of GET /", res.into_body().collect())
        .await
        .expect("read body")
        .to_bytes();
    let body = String::from_utf8(body.to_vec()).expect("page is UTF-8");
    (status, content_type, body)
}

/// Opens a WebSocket through the proxy, sends `text`, returns the echo, and closes cleanly.
async fn echo_once(addr: SocketAddr, text: &str) -> String {
    let (mut ws, response) = within(
        "WebSocket handshake through the proxy",
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws")),
    )
    .await
    .expect("WebSocket handshake");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    within("send", ws.send(Message::Text(text.to_owned())))
        .await
        .expect("send text");
    let reply = loop {
        let msg = within("echo", ws.next())
            .await
            .expect("connection closed before the echo")
            .expect("read echo");
        match msg {
            Message::Text(reply) => break reply,
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    };
    within("close", ws.close(None)).await.expect("send Close");
    within("close handshake", async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    reply
}

#[tokio::test]
async fn demo_serves_the_page_and_alternates_backends() {
    let demo = within(
        "demo start",
        sluice::demo::start("127.0.0.1:0".parse().expect("addr")),
    )
    .await
    .expect("demo starts");
    let addr = demo.addr();
    assert_ne!(addr.port(), 0, "the bound address is reported");

    let (status, content_type, body) = get_page(addr).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        content_type.starts_with("text/html"),
        "content-type was {content_type:?}"
    );
    assert!(body.contains("<title>sluice demo</title>"), "page: {body}");
    assert!(body.contains("data-sluice-demo"), "page: {body}");
    // The page links to the live dashboard, which the admin endpoint serves.
    let admin = demo.admin_addr();
    assert!(
        body.contains(&format!("href=\"http://{admin}/\"")),
        "page: {body}"
    );
    let (status, content_type, dashboard) = get_page(admin).await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/html"), "{content_type}");
    assert!(dashboard.contains("status"), "{dashboard}");

    let first = echo_once(addr, "x").await;
    let second = echo_once(addr, "x").await;
    let mut replies = [first, second];
    replies.sort();
    assert_eq!(replies, ["backend A: x", "backend B: x"]);

    within("demo stop", demo.stop()).await;
}

#[tokio::test]
async fn the_dashboard_goes_next_to_the_proxy_or_anywhere_free() {
    // A port whose next one is taken.
    let (listen, _next) = loop {
        let next = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = next.local_addr().expect("addr").port();
        let listen: SocketAddr = ([127, 0, 0, 1], port - 1).into();
        if std::net::TcpListener::bind(listen).is_ok() {
            break (listen, next);
        }
    };
    let demo = within("demo start", sluice::demo::start(listen))
        .await
        .expect("demo starts although the port after it is taken");
    assert_eq!(demo.addr(), listen);
    let admin = demo.admin_addr();
    assert_ne!(admin.port(), listen.port() + 1);
    let (status, _, _) = get_page(admin).await;
    assert_eq!(status, StatusCode::OK);
    within("demo stop", demo.stop()).await;
}

#[tokio::test]
async fn demo_reports_a_busy_listen_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let addr = taken.local_addr().expect("local addr");
    let result = within("demo start", sluice::demo::start(addr)).await;
    let err = result.expect_err("the address is taken");
    assert!(
        err.to_string().contains(&addr.to_string()),
        "the error names the address: {err}"
    );
}
