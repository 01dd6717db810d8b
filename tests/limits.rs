//! Client-side limits: head timeout and size, malformed requests, connection limits
//! (SPEC `[[listener]]`, `[proxy]`, "Errors").
//!
//! - `partial_head_gets_408_after_header_timeout_then_close`
//! - `silent_new_connection_gets_408_after_header_timeout`
//! - `idle_keepalive_connection_is_closed_quietly_at_header_timeout`
//! - `oversized_head_gets_431`
//! - `malformed_request_line_gets_400`
//! - `max_connections_third_connection_gets_503`
//! - `max_connections_per_ip_second_connection_gets_503`
//! - `an_open_tunnel_holds_its_per_ip_connection_slot`
//! - `slowloris_does_not_block_other_clients`

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;

/// One listener with `listener_extra`, `[proxy]` with `proxy_extra`, one backend answering
/// `200 ok`.
async fn limited_proxy(proxy_extra: &str, listener_extra: &str) -> (TestProxy, HttpBackend) {
    let backend = named_backend("ok").await;
    let proxy = spawn_proxy(&format!(
        r#"
[proxy]
{proxy_extra}

[[listener]]
addr = "127.0.0.1:0"
{listener_extra}

[upstream.app]
servers = ["{}"]

[[route]]
upstream = "app"
"#,
        backend.addr
    ))
    .await;
    (proxy, backend)
}

/// A client connection that has completed one request and is held open (keep-alive).
async fn held_connection(addr: SocketAddr) -> RawClient {
    let mut c = RawClient::connect(addr).await;
    c.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let r = c.read_response().await;
    assert_eq!(r.status, 200, "{}", r.text());
    c
}

/// Asserts the connection gets `503` with the standard body and is then closed.
async fn assert_503_and_closed(addr: SocketAddr) {
    let mut c = RawClient::connect(addr).await;
    // The proxy may answer at accept, before reading; a failed write is fine then.
    let _ =
        tokio::io::AsyncWriteExt::write_all(&mut c.stream, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .await;
    let r = c.read_response().await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.body_str(), "service unavailable\n");
    c.read_to_close(WAIT).await;
}

#[tokio::test]
async fn partial_head_gets_408_after_header_timeout_then_close() {
    let (proxy, backend) = limited_proxy("", r#"header_timeout = "1s""#).await;

    let mut c = RawClient::connect(proxy.addr).await;
    let start = Instant::now();
    c.send("GET / HTTP/1.1\r\nHost: h\r\nX-Slow: ").await;
    let r = c.read_response().await;
    let took = start.elapsed();
    assert_eq!(r.status, 408, "{}", r.text());
    assert_eq!(r.body_str(), "request timeout\n");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "408 after {took:?}"
    );
    c.read_to_close(Duration::from_secs(5)).await;
    assert_eq!(backend.count(), 0);
}

#[tokio::test]
async fn silent_new_connection_gets_408_after_header_timeout() {
    let (proxy, _backend) = limited_proxy("", r#"header_timeout = "1s""#).await;

    let mut c = RawClient::connect(proxy.addr).await;
    let r = c.read_response().await;
    assert_eq!(r.status, 408, "{}", r.text());
    assert_eq!(r.body_str(), "request timeout\n");
    c.read_to_close(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn idle_keepalive_connection_is_closed_quietly_at_header_timeout() {
    let (proxy, _backend) = limited_proxy("", r#"header_timeout = "1s""#).await;

    let mut c = held_connection(proxy.addr).await;
    let start = Instant::now();
    let rest = c.read_to_close(Duration::from_secs(5)).await;
    let took = start.elapsed();
    assert!(
        rest.is_empty(),
        "an idle keep-alive connection got bytes: {:?}",
        String::from_utf8_lossy(&rest)
    );
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
}

#[tokio::test]
async fn oversized_head_gets_431() {
    let (proxy, backend) = limited_proxy("", "max_header_bytes = 2048").await;

    let small = format!(
        "GET / HTTP/1.1\r\nHost: h\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(1500)
    );
    let r = raw_response(proxy.addr, small).await;
    assert_eq!(
        r.status,
        200,
        "a 1.5 KiB head is within the limit: {}",
        r.text()
    );

    let big = format!(
        "GET / HTTP/1.1\r\nHost: h\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(4096)
    );
    let r = raw_response(proxy.addr, big).await;
    assert_eq!(r.status, 431, "{}", r.text());
    assert_eq!(r.body_str(), "request header fields too large\n");

    // Many small headers adding up past the limit count too.
    let mut many = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
    for i in 0..100 {
        many.push_str(&format!("X-H{i}: {}\r\n", "b".repeat(30)));
    }
    many.push_str("\r\n");
    let r = raw_response(proxy.addr, many).await;
    assert_eq!(r.status, 431, "{}", r.text());
    assert_eq!(backend.count(), 1);
}

#[tokio::test]
async fn malformed_request_line_gets_400() {
    let (proxy, backend) = limited_proxy("", "").await;

    for bad in [
        "this is not http\r\n\r\n",
        "GET / HTTP/1.1 extra\r\nHost: h\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nNo colon here\r\n\r\n",
    ] {
        let mut c = RawClient::connect(proxy.addr).await;
        c.send(bad).await;
        let r = c.read_response().await;
        assert_eq!(r.status, 400, "{bad:?}: {}", r.text());
        assert_eq!(r.body_str(), "bad request\n", "{bad:?}");
    }
    assert_eq!(backend.count(), 0);
}

#[tokio::test]
async fn max_connections_third_connection_gets_503() {
    let (proxy, _backend) = limited_proxy("max_connections = 2", "").await;

    let first = held_connection(proxy.addr).await;
    let _second = held_connection(proxy.addr).await;
    assert_503_and_closed(proxy.addr).await;

    // A closed connection frees its place.
    drop(first);
    eventually(WAIT, "a new connection is served after one closed", || {
        is_served(proxy.addr)
    })
    .await;
}

#[tokio::test]
async fn max_connections_per_ip_second_connection_gets_503() {
    let (proxy, _backend) = limited_proxy("max_connections_per_ip = 1", "").await;

    let first = held_connection(proxy.addr).await;
    assert_503_and_closed(proxy.addr).await;

    drop(first);
    eventually(WAIT, "a new connection is served after one closed", || {
        is_served(proxy.addr)
    })
    .await;
}

#[tokio::test]
async fn slowloris_does_not_block_other_clients() {
    let (proxy, backend) = limited_proxy("", r#"header_timeout = "5s""#).await;

    let mut slow = Vec::new();
    for i in 0..5 {
        let mut c = RawClient::connect(proxy.addr).await;
        c.send(format!("GET /slow{i} HTTP/1.1\r\nHost: h\r\nX-A: "))
            .await;
        slow.push(c);
    }
    let start = Instant::now();
    let r = within(Duration::from_secs(2), http_get(proxy.addr, "h", "/fast")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(backend.count(), 1);
    // The slow ones are still waiting (not yet timed out, not served).
    let (got, closed) = slow[0].idle_read(Duration::from_millis(100)).await;
    assert!(got.is_empty() && !closed);
}

#[tokio::test]
async fn an_open_tunnel_holds_its_per_ip_connection_slot() {
    let backend = ws_echo_backend().await;
    let proxy = spawn_proxy(&format!(
        r#"
[proxy]
max_connections_per_ip = 1

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

    let (ws, _) = ws_connect(&format!("ws://{}/", proxy.addr), &[])
        .await
        .expect("handshake");
    assert_503_and_closed(proxy.addr).await;

    drop(ws);
    eventually(
        WAIT,
        "a new connection is served after the tunnel closed",
        || is_served(proxy.addr),
    )
    .await;
}
