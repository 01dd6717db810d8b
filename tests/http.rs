//! Plain HTTP through the proxy: routing, bodies, and the headers on the wire (SPEC "On the
//! wire" → "Towards the upstream" / "Towards the client").
//!
//! Routing
//! - `routes_by_host_exact_and_wildcard_ignoring_port_and_case`
//! - `routes_by_longest_segment_boundary_prefix`
//! - `host_route_beats_hostless_route`
//! - `no_route_is_404_with_short_body`
//! - `strip_prefix_removes_matched_prefix_and_keeps_query`
//!
//! Bodies
//! - `large_request_and_response_bodies_pass_intact`
//! - `chunked_request_body_reaches_backend`
//! - `request_body_is_streamed_before_client_finishes`
//! - `response_body_is_streamed_before_backend_finishes`
//!
//! Request headers upstream
//! - `upstream_request_is_http11_with_hop_by_hop_removed`
//! - `http10_client_is_sent_upstream_as_http11`
//! - `keepalive_zero_sends_connection_close`
//! - `forged_forwarding_headers_from_untrusted_peer_are_replaced`
//! - `forwarding_headers_from_trusted_peer_are_appended_and_kept`
//! - `host_header_preserve_upstream_and_fixed`
//! - `set_headers_are_applied_last`
//! - `connection_cannot_remove_the_headers_sluice_sets`
//!
//! Connections and responses
//! - `sequential_requests_reuse_one_pooled_upstream_connection`
//! - `keepalive_zero_uses_a_new_upstream_connection_each_time`
//! - `hop_by_hop_response_headers_are_removed`

mod support;

use std::net::SocketAddr;
use std::sync::Mutex;

use bytes::Bytes;
use support::*;
use tokio::io::AsyncWriteExt;

/// Sends `GET path` with `Host: host` and returns the body of a `200`.
async fn body_of(proxy: SocketAddr, host: &str, path: &str) -> String {
    let r = http_get(proxy, host, path).await;
    assert_eq!(r.status, 200, "GET {host}{path}: {}", r.text());
    r.body_str()
}

/// A proxy with one backend and one route (`route_extra` added to it); the backend answers
/// `200 ok` and records what it saw.
async fn proxy_to_recorder(route_extra: &str) -> (TestProxy, HttpBackend) {
    let backend = named_backend("ok").await;
    let proxy = spawn_proxy(&one_route(&[backend.addr], route_extra)).await;
    (proxy, backend)
}

// ---------------------------------------------------------------------------------------
// Routing

#[tokio::test]
async fn routes_by_host_exact_and_wildcard_ignoring_port_and_case() {
    let exact = named_backend("exact").await;
    let wild = named_backend("wild").await;
    let any = named_backend("any").await;
    let proxy = spawn_proxy(&format!(
        r#"
[[listener]]
addr = "127.0.0.1:0"

[upstream.exact]
servers = ["{}"]
[upstream.wild]
servers = ["{}"]
[upstream.any]
servers = ["{}"]

[[route]]
upstream = "any"

[[route]]
host = "a.example"
upstream = "exact"

[[route]]
host = "*.b.example"
upstream = "wild"
"#,
        exact.addr, wild.addr, any.addr
    ))
    .await;

    assert_eq!(body_of(proxy.addr, "a.example", "/").await, "exact");
    assert_eq!(body_of(proxy.addr, "A.Example:8080", "/").await, "exact");
    assert_eq!(body_of(proxy.addr, "x.b.example", "/").await, "wild");
    assert_eq!(body_of(proxy.addr, "X.B.EXAMPLE:1", "/").await, "wild");
    // The wildcard needs a label before its suffix, as in nginx.
    assert_eq!(body_of(proxy.addr, "b.example", "/").await, "any");
    assert_eq!(body_of(proxy.addr, "other.example", "/").await, "any");
    assert_eq!(body_of(proxy.addr, "xa.example", "/").await, "any");
}

#[tokio::test]
async fn routes_by_longest_segment_boundary_prefix() {
    let root = named_backend("root").await;
    let ws = named_backend("ws").await;
    let deep = named_backend("deep").await;
    let proxy = spawn_proxy(&format!(
        r#"
[[listener]]
addr = "127.0.0.1:0"

[upstream.root]
servers = ["{}"]
[upstream.ws]
servers = ["{}"]
[upstream.deep]
servers = ["{}"]

[[route]]
path = "/ws"
upstream = "ws"

[[route]]
path = "/ws/deep"
upstream = "deep"

[[route]]
path = "/"
upstream = "root"
"#,
        root.addr, ws.addr, deep.addr
    ))
    .await;

    let cases = [
        ("/", "root"),
        ("/ws", "ws"),
        ("/ws/", "ws"),
        ("/ws/x", "ws"),
        ("/ws?x=1", "ws"),
        ("/wsx", "root"),
        ("/ws/deep", "deep"),
        ("/ws/deep/1", "deep"),
        ("/ws/deeper", "ws"),
        ("/other", "root"),
    ];
    for (path, want) in cases {
        assert_eq!(body_of(proxy.addr, "h", path).await, want, "path {path}");
    }
}

#[tokio::test]
async fn host_route_beats_hostless_route() {
    let long = named_backend("hostless-long-path").await;
    let host = named_backend("host-root").await;
    let proxy = spawn_proxy(&format!(
        r#"
[[listener]]
addr = "127.0.0.1:0"

[upstream.long]
servers = ["{}"]
[upstream.host]
servers = ["{}"]

[[route]]
path = "/api/long"
upstream = "long"

[[route]]
host = "a.example"
upstream = "host"
"#,
        long.addr, host.addr
    ))
    .await;

    assert_eq!(
        body_of(proxy.addr, "a.example", "/api/long/x").await,
        "host-root"
    );
    assert_eq!(
        body_of(proxy.addr, "other.example", "/api/long/x").await,
        "hostless-long-path"
    );
}

#[tokio::test]
async fn no_route_is_404_with_short_body() {
    let backend = named_backend("a").await;
    let proxy = spawn_proxy(&one_route(&[backend.addr], r#"host = "a.example""#)).await;

    let r = http_get(proxy.addr, "b.example", "/").await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.body_str(), "no route\n");
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(backend.count(), 0);
}

#[tokio::test]
async fn strip_prefix_removes_matched_prefix_and_keeps_query() {
    let (proxy, backend) = proxy_to_recorder("path = \"/api\"\nstrip_prefix = true").await;

    let cases = [
        ("/api/x", "/x"),
        ("/api/x/y", "/x/y"),
        ("/api", "/"),
        ("/api/", "/"),
        ("/api/x?q=1&r=2", "/x?q=1&r=2"),
        ("/api?q=1", "/?q=1"),
    ];
    for (i, (sent, want)) in cases.iter().enumerate() {
        body_of(proxy.addr, "h", sent).await;
        let seen = &backend.seen()[i];
        assert_eq!(seen.uri.to_string(), *want, "client sent {sent}");
    }
}

// ---------------------------------------------------------------------------------------
// Bodies

#[tokio::test]
async fn large_request_and_response_bodies_pass_intact() {
    // The backend answers with the request body, reversed, so both directions carry 4 MiB.
    let backend = http_backend(|seen| async move {
        let mut body = seen.body.to_vec();
        body.reverse();
        http::Response::new(full(body))
    })
    .await;
    let proxy = spawn_proxy(&one_route(&[backend.addr], "")).await;

    let body: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut req = format!(
        "POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    // The backend answers only once it has the whole body, so nothing is read meanwhile.
    let mut client = RawClient::connect(proxy.addr).await;
    within(WAIT, client.send(&req)).await;
    let resp = client.read_response().await;

    assert_eq!(resp.status, 200);
    let seen = backend.only();
    assert_eq!(seen.method, http::Method::POST);
    assert_eq!(seen.body.len(), body.len());
    assert!(seen.body == body, "request body changed on the way");
    let mut reversed = body.clone();
    reversed.reverse();
    assert_eq!(resp.body.len(), reversed.len());
    assert!(resp.body == reversed, "response body changed on the way");
}

#[tokio::test]
async fn chunked_request_body_reaches_backend() {
    let (proxy, backend) = proxy_to_recorder("").await;

    let r = raw_response(
        proxy.addr,
        "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n",
    )
    .await;

    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(backend.only().body, Bytes::from_static(b"hello world"));
}

#[tokio::test]
async fn request_body_is_streamed_before_client_finishes() {
    // The backend reports when the first part of the body arrives, then waits for the rest.
    let (got_first, mut first_rx) = tokio::sync::mpsc::channel::<()>(1);
    let backend = raw_backend(move |mut s| {
        let got_first = got_first.clone();
        async move {
            let Some((_head, mut rest)) = read_head(&mut s).await else {
                return;
            };
            let mut chunk = [0u8; 1024];
            while find(&rest, b"first-part").is_none() {
                let n = tokio::io::AsyncReadExt::read(&mut s, &mut chunk)
                    .await
                    .unwrap_or(0);
                if n == 0 {
                    return;
                }
                rest.extend_from_slice(&chunk[..n]);
            }
            let _ = got_first.send(()).await;
            while find(&rest, b"last-part").is_none() {
                let n = tokio::io::AsyncReadExt::read(&mut s, &mut chunk)
                    .await
                    .unwrap_or(0);
                if n == 0 {
                    return;
                }
                rest.extend_from_slice(&chunk[..n]);
            }
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
                .await;
        }
    })
    .await;
    let proxy = spawn_proxy(&one_route(&[backend.addr], "")).await;

    let mut client = RawClient::connect(proxy.addr).await;
    client
        .send("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\na\r\nfirst-part\r\n")
        .await;
    within(WAIT, first_rx.recv())
        .await
        .expect("backend saw the first part of the body before the client finished it");
    client.send("9\r\nlast-part\r\n0\r\n\r\n").await;
    let r = client.read_response().await;
    assert_eq!((r.status, r.body_str().as_str()), (200, "done"));
}

#[tokio::test]
async fn response_body_is_streamed_before_backend_finishes() {
    // The backend sends "first", then waits until the test has seen it before finishing.
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let go_rx = Mutex::new(Some(go_rx));
    let backend = http_backend(move |_| {
        let go = go_rx.lock().unwrap().take();
        async move {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"first;")).await;
                if let Some(go) = go {
                    let _ = go.await;
                }
                let _ = tx.send(Bytes::from_static(b"second")).await;
            });
            http::Response::new(body)
        }
    })
    .await;
    let proxy = spawn_proxy(&one_route(&[backend.addr], "")).await;

    let mut client = RawClient::connect(proxy.addr).await;
    client.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
    client.read_until(b"first;").await;
    go_tx.send(()).unwrap();
    client.read_until(b"second").await;
}

// ---------------------------------------------------------------------------------------
// Request headers upstream

#[tokio::test]
async fn upstream_request_is_http11_with_hop_by_hop_removed() {
    let (proxy, backend) = proxy_to_recorder("").await;

    let r = raw_response(
        proxy.addr,
        "GET /h?x=1 HTTP/1.1\r\n\
         Host: app.example\r\n\
         Connection: keep-alive, X-Drop-Me\r\n\
         X-Drop-Me: secret\r\n\
         Keep-Alive: timeout=5\r\n\
         Proxy-Connection: keep-alive\r\n\
         TE: trailers\r\n\
         Trailer: X-Checksum\r\n\
         Upgrade: h2c\r\n\
         X-Custom: kept\r\n\
         Cookie: a=b\r\n\
         \r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let seen = backend.only();
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(seen.method, http::Method::GET);
    assert_eq!(seen.uri.to_string(), "/h?x=1");
    for gone in [
        "x-drop-me",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ] {
        assert!(
            seen.header(gone).is_none(),
            "{gone} reached the upstream: {:?}",
            seen.headers
        );
    }
    assert_eq!(
        seen.header_joined("connection").as_deref(),
        Some("keep-alive")
    );
    assert_eq!(seen.header_all("host"), ["app.example"]);
    assert_eq!(seen.header("x-custom"), Some("kept"));
    assert_eq!(seen.header("cookie"), Some("a=b"));
    assert_eq!(seen.header_all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.header_all("x-forwarded-proto"), ["http"]);
    assert_eq!(seen.header_all("x-forwarded-host"), ["app.example"]);
    assert_eq!(seen.header_all("x-real-ip"), ["127.0.0.1"]);
}

#[tokio::test]
async fn http10_client_is_sent_upstream_as_http11() {
    let (proxy, backend) = proxy_to_recorder("").await;

    let mut client = RawClient::connect(proxy.addr).await;
    client
        .send("GET /old HTTP/1.0\r\nHost: old.example\r\n\r\n")
        .await;
    let r = client.read_response().await;
    assert_eq!(r.status, 200, "{}", r.text());

    let seen = backend.only();
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(seen.header("host"), Some("old.example"));
    assert_eq!(
        seen.header_joined("connection").as_deref(),
        Some("keep-alive")
    );
}

#[tokio::test]
async fn keepalive_zero_sends_connection_close() {
    let backend = named_backend("ok").await;
    let proxy = spawn_proxy(&format!(
        r#"
[[listener]]
addr = "127.0.0.1:0"

[upstream.app]
servers = ["{}"]
keepalive = 0

[[route]]
upstream = "app"
"#,
        backend.addr
    ))
    .await;

    body_of(proxy.addr, "h", "/").await;
    let seen = backend.only();
    assert_eq!(seen.header_joined("connection").as_deref(), Some("close"));
    assert!(seen.header("upgrade").is_none());
}

#[tokio::test]
async fn forged_forwarding_headers_from_untrusted_peer_are_replaced() {
    let (proxy, backend) = proxy_to_recorder("").await;

    let r = raw_response(
        proxy.addr,
        "GET / HTTP/1.1\r\n\
         Host: real.example\r\n\
         X-Forwarded-For: 1.2.3.4\r\n\
         X-Forwarded-For: 5.6.7.8\r\n\
         X-Forwarded-Proto: https\r\n\
         X-Forwarded-Host: evil.example\r\n\
         X-Real-IP: 1.2.3.4\r\n\
         Forwarded: for=1.2.3.4;proto=https\r\n\
         \r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let seen = backend.only();
    assert_eq!(seen.header_all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.header_all("x-forwarded-proto"), ["http"]);
    assert_eq!(seen.header_all("x-forwarded-host"), ["real.example"]);
    assert_eq!(seen.header_all("x-real-ip"), ["127.0.0.1"]);
    assert!(seen.header("forwarded").is_none(), "{:?}", seen.headers);
}

#[tokio::test]
async fn forwarding_headers_from_trusted_peer_are_appended_and_kept() {
    let backend = named_backend("ok").await;
    let proxy = spawn_proxy(&format!(
        r#"
[proxy]
trusted_proxies = ["127.0.0.1/32"]

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

    let r = raw_response(
        proxy.addr,
        "GET / HTTP/1.1\r\n\
         Host: inner.example\r\n\
         X-Forwarded-For: 1.2.3.4\r\n\
         X-Forwarded-Proto: https\r\n\
         X-Forwarded-Host: outer.example\r\n\
         X-Real-IP: 1.2.3.4\r\n\
         Forwarded: for=1.2.3.4;proto=https\r\n\
         \r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let seen = backend.only();
    assert_eq!(
        seen.header_joined("x-forwarded-for").as_deref(),
        Some("1.2.3.4, 127.0.0.1")
    );
    assert_eq!(seen.header_all("x-forwarded-proto"), ["https"]);
    assert_eq!(seen.header_all("x-forwarded-host"), ["outer.example"]);
    assert_eq!(seen.header_all("x-real-ip"), ["1.2.3.4"]);
    assert_eq!(seen.header("forwarded"), Some("for=1.2.3.4;proto=https"));

    // Without the headers, a trusted peer gets them set like anyone else.
    body_of(proxy.addr, "inner.example", "/").await;
    let seen = &backend.seen()[1];
    assert_eq!(seen.header_all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.header_all("x-forwarded-proto"), ["http"]);
    assert_eq!(seen.header_all("x-forwarded-host"), ["inner.example"]);
    assert_eq!(seen.header_all("x-real-ip"), ["127.0.0.1"]);
}

#[tokio::test]
async fn host_header_preserve_upstream_and_fixed() {
    let backend = named_backend("ok").await;
    let proxy = spawn_proxy(&format!(
        r#"
[[listener]]
addr = "127.0.0.1:0"

[upstream.app]
servers = ["{}"]

[[route]]
path = "/preserve"
upstream = "app"

[[route]]
path = "/upstream"
upstream = "app"
host_header = "upstream"

[[route]]
path = "/fixed"
upstream = "app"
host_header = "internal.example"
"#,
        backend.addr
    ))
    .await;

    body_of(proxy.addr, "Client.Example:8443", "/preserve").await;
    body_of(proxy.addr, "client.example", "/upstream").await;
    body_of(proxy.addr, "client.example", "/fixed").await;

    let seen = backend.seen();
    assert_eq!(seen[0].header_all("host"), ["Client.Example:8443"]);
    assert_eq!(seen[1].header_all("host"), [backend.addr.to_string()]);
    assert_eq!(seen[2].header_all("host"), ["internal.example"]);
    // X-Forwarded-Host is the client's Host whatever is sent as Host.
    assert_eq!(seen[1].header_all("x-forwarded-host"), ["client.example"]);
    assert_eq!(seen[2].header_all("x-forwarded-host"), ["client.example"]);
}

#[tokio::test]
async fn set_headers_are_applied_last() {
    let (proxy, backend) = proxy_to_recorder(
        r#"set_headers = { "X-Forwarded-Proto" = "https", "X-Extra" = "from-sluice", "X-Real-IP" = "10.9.9.9" }"#,
    )
    .await;

    let r = raw_response(
        proxy.addr,
        "GET / HTTP/1.1\r\nHost: h\r\nX-Extra: from-client\r\nX-Other: o\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let seen = backend.only();
    assert_eq!(seen.header_all("x-extra"), ["from-sluice"]);
    assert_eq!(seen.header_all("x-forwarded-proto"), ["https"]);
    assert_eq!(seen.header_all("x-real-ip"), ["10.9.9.9"]);
    assert_eq!(seen.header("x-other"), Some("o"));
    assert_eq!(seen.header_all("x-forwarded-for"), ["127.0.0.1"]);
}

#[tokio::test]
async fn connection_naming_the_headers_sluice_sets_is_malformed() {
    let (proxy, backend) = proxy_to_recorder("").await;

    let r = raw_response(
        proxy.addr,
        "GET / HTTP/1.1\r\nHost: h\r\n\
         Connection: X-Forwarded-For, X-Real-IP, X-Forwarded-Proto, X-Forwarded-Host\r\n\
         X-Forwarded-For: 6.6.6.6\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(
        backend.count(),
        0,
        "a malformed request never reaches the upstream"
    );

    let good = http_get(proxy.addr, "h", "/").await;
    assert_eq!(good.status, 200);
    let seen = backend.only();
    assert_eq!(seen.header_all("x-forwarded-for"), ["127.0.0.1"]);
}

// ---------------------------------------------------------------------------------------
// Connections and responses

#[tokio::test]
async fn sequential_requests_reuse_one_pooled_upstream_connection() {
    let (proxy, backend) = proxy_to_recorder("").await;

    // Two different client connections, one after the other.
    body_of(proxy.addr, "h", "/1").await;
    body_of(proxy.addr, "h", "/2").await;

    let seen = backend.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].conn, seen[1].conn,
        "the second request did not reuse the pooled upstream connection"
    );
    assert_eq!(backend.connections(), 1);
    // Idle pooled and client connections do not hold the drain up.
    within(std::time::Duration::from_secs(3), proxy.shutdown()).await;
}

#[tokio::test]
async fn keepalive_zero_uses_a_new_upstream_connection_each_time() {
    let backend = named_backend("ok").await;
    let proxy = spawn_proxy(&format!(
        r#"
[[listener]]
addr = "127.0.0.1:0"

[upstream.app]
servers = ["{}"]
keepalive = 0

[[route]]
upstream = "app"
"#,
        backend.addr
    ))
    .await;

    // Same client connection for both: the upstream side still must not be reused.
    let mut client = RawClient::connect(proxy.addr).await;
    client.send("GET /1 HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert_eq!(client.read_response().await.status, 200);
    client.send("GET /2 HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert_eq!(client.read_response().await.status, 200);

    let seen = backend.seen();
    assert_eq!(seen.len(), 2);
    assert_ne!(seen[0].conn, seen[1].conn);
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_removed() {
    let backend = raw_backend(|mut s| async move {
        if read_head(&mut s).await.is_none() {
            return;
        }
        let _ = s
            .write_all(
                b"HTTP/1.1 200 OK\r\n\
                  Content-Length: 2\r\n\
                  Connection: X-Secret\r\n\
                  X-Secret: s\r\n\
                  Keep-Alive: timeout=5\r\n\
                  Proxy-Connection: keep-alive\r\n\
                  Upgrade: h2c\r\n\
                  Trailer: X-Checksum\r\n\
                  X-Kept: k\r\n\
                  \r\n\
                  ok",
            )
            .await;
        // Hold the connection open a while, like a keep-alive server.
        let _ = read_head(&mut s).await;
    })
    .await;
    let proxy = spawn_proxy(&one_route(&[backend.addr], "")).await;

    let r = http_get(proxy.addr, "h", "/").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body_str(), "ok");
    assert_eq!(r.header("x-kept"), Some("k"));
    for gone in [
        "x-secret",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "trailer",
    ] {
        assert!(
            !r.has_header(gone),
            "{gone} reached the client:\n{}",
            r.head
        );
    }
    if let Some(conn) = r.header("connection") {
        assert!(
            !conn.to_ascii_lowercase().contains("x-secret"),
            "Connection relayed: {conn}"
        );
    }
}
