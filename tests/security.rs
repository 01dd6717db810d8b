//! Attacks on sluice as an edge proxy: each test sends an attacker's bytes to the real
//! proxy, asserts the SPEC's answer, and shows a good client served right after.
//!
//! - Slow or missing uploads are the client's fault: `408` from `body_timeout`, while
//!   `read_timeout` waits for the whole request and no server leaves the rotation.
//! - A client that stops reading is cut off by `send_timeout`, and its upstream connection
//!   is released.
//! - Host: absolute-form targets, repeated, missing and invalid `Host`.
//! - `Connection` cannot remove what sluice sets or checks; obs-text hides no token.
//! - Forwarding headers and their `_` spellings are never passed on from an untrusted peer.
//! - Dot-segments are resolved before routing; climbing above `/` is malformed.
//! - Framing: `Content-Length` with `Transfer-Encoding` and oversized chunk sizes are `400`;
//!   a response with both is re-framed; the head clock waits for an upload answered early.
//! - Upgrades: a refused upgrade's upstream connection is not reused; `HTTP2-Settings` is
//!   hop-by-hop; `max_tunnels_per_ip`.
//! - Limits survive a reload.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

fn two_servers(a: SocketAddr, b: SocketAddr, listener_extra: &str, route_extra: &str) -> String {
    format!(
        r#"
[[listener]]
addr = "127.0.0.1:0"
{listener_extra}

[upstream.app]
servers = ["{a}", "{b}"]

[[route]]
upstream = "app"
{route_extra}
"#
    )
}

/// The backends' names seen over `n` fresh requests.
async fn names_over(proxy: SocketAddr, n: usize) -> Vec<String> {
    let mut names = Vec::new();
    for _ in 0..n {
        let r = http_get(proxy, "h", "/").await;
        assert_eq!(r.status, 200, "{}", r.text());
        names.push(r.body_str());
    }
    names.sort();
    names.dedup();
    names
}

// ---------------------------------------------------------------------------------------
// Item 1: slow uploads.

#[tokio::test]
async fn slow_uploads_time_out_without_taking_the_pool_offline() {
    let a = named_backend("a").await;
    let b = named_backend("b").await;
    let proxy = spawn_proxy(&two_servers(
        a.addr,
        b.addr,
        r#"body_timeout = "400ms""#,
        r#"read_timeout = "300ms""#,
    ))
    .await;

    // Two uploads that stop half-way, on a pool whose servers fail after one failure.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut c = RawClient::connect(proxy.addr).await;
        c.send("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\nfirst bytes")
            .await;
        stalled.push(c);
    }
    // And one that promises a body with `Expect: 100-continue` and never sends it.
    let mut expecting = RawClient::connect(proxy.addr).await;
    expecting
        .send("PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n")
        .await;
    for c in &mut stalled {
        let r = c.read_response().await;
        assert_eq!(r.status, 408, "{}", r.text());
        assert_eq!(r.body_str(), "request timeout\n");
        c.read_to_close(WAIT).await;
    }
    let first = expecting.read_response().await;
    assert_eq!(first.status, 100, "{}", first.text());
    let timed_out = expecting.read_response().await;
    assert_eq!(timed_out.status, 408, "{}", timed_out.text());

    // Both servers are still in rotation: nobody blamed them for the clients' silence.
    assert_eq!(names_over(proxy.addr, 4).await, ["a", "b"]);

    // An upload that trickles for longer than read_timeout, each byte within body_timeout,
    // is served: read_timeout only starts once the whole request is sent.
    let mut slow = RawClient::connect(proxy.addr).await;
    slow.send("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 8\r\n\r\n")
        .await;
    for byte in b"trickled" {
        tokio::time::sleep(Duration::from_millis(100)).await;
        slow.send([*byte]).await;
    }
    let served = slow.read_response().await;
    assert_eq!(served.status, 200, "{}", served.text());
    let uploads: Vec<_> = a
        .seen()
        .into_iter()
        .chain(b.seen())
        .filter(|s| s.body == "trickled")
        .collect();
    assert_eq!(uploads.len(), 1, "the trickled body arrived whole");
    assert_eq!(names_over(proxy.addr, 4).await, ["a", "b"]);
}

#[tokio::test]
async fn an_upload_answered_early_gets_no_stray_408() {
    // The backend answers as soon as it has the head, then reads the body to its end.
    let backend = raw_backend(|mut s| async move {
        let Some((head, mut body)) = read_head(&mut s).await else {
            return;
        };
        let len: usize = head_value(&head, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly")
            .await;
        let mut chunk = [0u8; 1024];
        while body.len() < len {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
        // Then serve one more request on the same connection, if it comes.
        if read_head(&mut s).await.is_some() {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext")
                .await;
        }
    })
    .await;
    let mut toml = one_route(&[backend.addr], "");
    toml = toml.replace(
        "addr = \"127.0.0.1:0\"",
        "addr = \"127.0.0.1:0\"\nheader_timeout = \"200ms\"\nbody_timeout = \"5s\"",
    );
    let proxy = spawn_proxy(&toml).await;

    let mut c = RawClient::connect(proxy.addr).await;
    c.send("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n\r\nabc")
        .await;
    let r = c.read_response().await;
    assert_eq!(r.body_str(), "early");
    // One more byte of the body, then a pause longer than header_timeout: the body is
    // still due, so this is no request head being slow, and no 408 may come.
    c.send("d").await;
    let (stray, closed) = c.idle_read(Duration::from_millis(600)).await;
    assert!(
        stray.is_empty() && !closed,
        "nothing may be written while the body is still arriving: {:?} (closed: {closed})",
        String::from_utf8_lossy(&stray)
    );
    c.send("ef").await;
    c.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let next = c.read_response().await;
    assert_eq!(next.status, 200, "{}", next.text());
}

// ---------------------------------------------------------------------------------------
// Item 7: a client that never reads.

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_and_its_upstream_released() {
    let (released_tx, mut released) = mpsc::unbounded_channel::<usize>();
    // The backend streams a body far larger than every socket buffer on the way, and says
    // when its connection is closed under it.
    let backend = raw_backend(move |mut s| {
        let released_tx = released_tx.clone();
        async move {
            if read_head(&mut s).await.is_none() {
                return;
            }
            let total: usize = 1 << 30;
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n");
            if s.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0;
            while sent < total {
                if s.write_all(&chunk).await.is_err() {
                    let _ = released_tx.send(sent);
                    return;
                }
                sent += chunk.len();
            }
        }
    })
    .await;
    let mut toml = one_route(&[backend.addr], "");
    toml = toml.replace(
        "addr = \"127.0.0.1:0\"",
        "addr = \"127.0.0.1:0\"\nsend_timeout = \"300ms\"",
    );
    let proxy = spawn_proxy(&toml).await;

    let mut reader = RawClient::connect(proxy.addr).await;
    reader.send("GET /big HTTP/1.1\r\nHost: h\r\n\r\n").await;
    // Never read: the proxy's writes stall, and after send_timeout it gives up.
    let sent = within(WAIT, released.recv())
        .await
        .expect("the upstream connection is closed");
    assert!(sent < 1 << 30, "the backend was cut off mid-body");
    // The client's socket is closed too: draining it ends in EOF or a reset.
    let _ = within(WAIT, async {
        let mut sink = vec![0u8; 1 << 20];
        loop {
            match reader.stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    // The proxy serves others as before.
    let mut other = RawClient::connect(proxy.addr).await;
    other.send("GET /other HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let head = other.read_until(b"\r\n\r\n").await;
    assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
}

// ---------------------------------------------------------------------------------------
// Items 2 and 3: Host.

#[tokio::test]
async fn an_absolute_form_target_is_the_host_upstream_too() {
    let public = http_backend(|_| async { text(200, "public") }).await;
    let internal = http_backend(|_| async { text(200, "internal") }).await;
    let proxy = spawn_proxy(&format!(
        r#"
[[listener]]
addr = "127.0.0.1:0"

[upstream.public]
servers = ["{}"]

[upstream.internal]
servers = ["{}"]

[[route]]
host = "public.example"
upstream = "public"

[[route]]
host = "internal.example"
upstream = "internal"
"#,
        public.addr, internal.addr
    ))
    .await;

    let r = raw_response(
        proxy.addr,
        "GET http://public.example/app/x?q=1 HTTP/1.1\r\nHost: internal.example\r\n\r\n",
    )
    .await;
    assert_eq!(r.body_str(), "public");
    let seen = public.only();
    assert_eq!(seen.header_all("host"), ["public.example"]);
    assert_eq!(seen.header_all("x-forwarded-host"), ["public.example"]);
    assert_eq!(seen.uri, "/app/x?q=1", "sent upstream in origin form");
    assert_eq!(internal.count(), 0);
}

#[tokio::test]
async fn repeated_missing_and_invalid_hosts_are_malformed() {
    let backend = named_backend("ok").await;
    let proxy = spawn_proxy(&one_route(&[backend.addr], "")).await;

    for (what, request) in [
        (
            "two Host lines",
            "GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        ),
        ("no Host", "GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n"),
        (
            "a path in Host",
            "GET / HTTP/1.1\r\nHost: a.example/evil\r\n\r\n",
        ),
        (
            "userinfo in Host",
            "GET / HTTP/1.1\r\nHost: user@a.example\r\n\r\n",
        ),
        (
            "a bad port",
            "GET / HTTP/1.1\r\nHost: a.example:http\r\n\r\n",
        ),
        ("an empty Host", "GET / HTTP/1.1\r\nHost:\r\n\r\n"),
        (
            "userinfo in the target",
            "GET http://user@a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
        ),
    ] {
        let mut c = RawClient::connect(proxy.addr).await;
        c.send(request).await;
        let r = c.read_response().await;
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        assert_eq!(r.body_str(), "bad request\n", "{what}");
        // The connection is closed after the 400.
        c.read_to_close(WAIT).await;
    }
    assert_eq!(
        backend.count(),
        0,
        "no malformed request reached the upstream"
    );

    // HTTP/1.0 may omit Host; it goes upstream with the server's address.
    let old = raw_response(proxy.addr, "GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(old.status, 200, "{}", old.text());
    assert_eq!(
        backend.only().header_all("host"),
        [backend.addr.to_string()]
    );
    assert_eq!(http_get(proxy.addr, "[::1]:8080", "/").await.status, 200);
}

// ---------------------------------------------------------------------------------------
// Item 4: Connection.

#[tokio::test]
async fn connection_cannot_remove_what_sluice_sets_or_checks() {
    let ws = ws_echo_backend().await;
    let proxy = spawn_proxy(&one_route(
        &[ws.addr],
        r#"allowed_origins = ["https://app.example"]"#,
    ))
    .await;

    for (what, request) in [
        ("Host", "GET / HTTP/1.1\r\nHost: h\r\nConnection: host\r\n\r\n".to_owned()),
        (
            "Origin",
            handshake(
                "/",
                "h",
                "Origin: https://app.example\r\nConnection: Upgrade, Origin\r\n",
            ),
        ),
        (
            "Sec-WebSocket-Key",
            handshake(
                "/",
                "h",
                "Origin: https://app.example\r\nConnection: Upgrade, Sec-WebSocket-Key\r\n",
            ),
        ),
        (
            "Content-Length",
            "POST / HTTP/1.1\r\nHost: h\r\nConnection: content-length\r\nContent-Length: 2\r\n\r\nhi"
                .to_owned(),
        ),
        (
            "True-Client-IP",
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: true_client_ip\r\n\r\n".to_owned(),
        ),
    ] {
        let r = raw_response(proxy.addr, request).await;
        assert_eq!(r.status, 400, "Connection naming {what}: {}", r.text());
    }
    // Two Origins: the check would read one and the upstream might read the other.
    let two = raw_response(
        proxy.addr,
        handshake(
            "/",
            "h",
            "Origin: https://app.example\r\nOrigin: https://evil.example\r\n",
        ),
    )
    .await;
    assert_eq!(two.status, 403, "{}", two.text());
    assert_eq!(ws.count(), 0, "no such handshake reached the upstream");

    // The right handshake still opens a tunnel.
    let (_tunnel, response) = ws_connect(
        &format!("ws://{}/", proxy.addr),
        &[("Origin", "https://app.example")],
    )
    .await
    .expect("a valid handshake opens a tunnel");
    assert_eq!(response.status(), 101);
}

#[tokio::test]
async fn an_obs_text_byte_hides_no_connection_token() {
    let (proxy, backend) = {
        let backend = http_backend(|_| async { text(200, "ok") }).await;
        (spawn_proxy(&one_route(&[backend.addr], "")).await, backend)
    };
    let mut request = b"GET / HTTP/1.1\r\nHost: h\r\nConnection: \xff\xfe, X-Secret\r\n".to_vec();
    request.extend_from_slice(b"X-Secret: hop\r\nX-Kept: end-to-end\r\n\r\n");
    let r = raw_response(proxy.addr, request).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = backend.only();
    assert_eq!(
        seen.header("x-secret"),
        None,
        "named in Connection: hop-by-hop"
    );
    assert_eq!(seen.header("x-kept"), Some("end-to-end"));
}

// ---------------------------------------------------------------------------------------
// Item 5: forwarding headers.

#[tokio::test]
async fn forged_forwarding_headers_and_their_underscore_spellings_are_dropped() {
    let backend = http_backend(|_| async { text(200, "ok") }).await;
    let proxy = spawn_proxy(&one_route(&[backend.addr], "")).await;
    let r = raw_response(
        proxy.addr,
        "GET / HTTP/1.1\r\nHost: h\r\n\
         X-Forwarded-Port: 443\r\nX-Forwarded-Prefix: /admin\r\nX-Forwarded-Ssl: on\r\n\
         X-Forwarded-Scheme: https\r\nX_Forwarded_For: 6.6.6.6\r\nX-Real_IP: 6.6.6.6\r\n\
         True-Client-IP: 6.6.6.6\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\n\
         X-Other: kept\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = backend.only();
    let forwarding: Vec<(String, String)> = seen
        .headers
        .iter()
        .filter(|(name, _)| {
            let folded = name.as_str().replace('_', "-");
            folded.starts_with("x-forwarded-")
                || ["x-real-ip", "true-client-ip", "forwarded"].contains(&folded.as_str())
        })
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_owned()))
        .collect();
    let mut want = vec![
        ("x-forwarded-for".to_owned(), "127.0.0.1".to_owned()),
        ("x-forwarded-proto".to_owned(), "http".to_owned()),
        ("x-forwarded-host".to_owned(), "h".to_owned()),
        ("x-real-ip".to_owned(), "127.0.0.1".to_owned()),
    ];
    let mut got = forwarding;
    got.sort();
    want.sort();
    assert_eq!(got, want, "only sluice's own forwarding headers");
    assert_eq!(seen.header("x-other"), Some("kept"));
}

// ---------------------------------------------------------------------------------------
// Item 6: dot-segments.

#[tokio::test]
async fn dot_segments_cannot_cross_a_route_prefix() {
    let app = http_backend(|_| async { text(200, "app") }).await;
    let proxy = spawn_proxy(&one_route(&[app.addr], r#"path = "/app""#)).await;

    for target in ["/app/../secret", "/app/%2e%2e/secret", "/app/.%2E/secret"] {
        let r = http_get(proxy.addr, "h", target).await;
        assert_eq!(r.status, 404, "{target} is /secret, which no route serves");
    }
    for target in [
        "/..",
        "/app/../../etc/passwd",
        "/%2e%2e/x",
        "/app/..%2fsecret",
        "/app/..%5Csecret",
        "/app/..;/secret",
    ] {
        let mut c = RawClient::connect(proxy.addr).await;
        c.send(format!("GET {target} HTTP/1.1\r\nHost: h\r\n\r\n"))
            .await;
        let r = c.read_response().await;
        assert_eq!(r.status, 400, "{target} climbs above /");
        c.read_to_close(WAIT).await;
    }
    assert_eq!(app.count(), 0);

    let r = http_get(proxy.addr, "h", "/app/./x/../y?a=../b").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        app.only().uri,
        "/app/y?a=../b",
        "normal path, query as sent"
    );
}

// ---------------------------------------------------------------------------------------
// Item 10: framing.

#[tokio::test]
async fn framing_attacks_are_malformed() {
    let backend = http_backend(|_| async { text(200, "ok") }).await;
    let proxy = spawn_proxy(&one_route(&[backend.addr], "")).await;

    for (what, request) in [
        (
            "Content-Length before Transfer-Encoding",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "Content-Length after Transfer-Encoding",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\ncontent-length: 4\r\n\r\n0\r\n\r\n",
        ),
        (
            "a chunk size over 64 bits",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1FFFFFFFFFFFFFFFF\r\nx\r\n0\r\n\r\n",
        ),
        (
            "a Transfer-Encoding that does not end in chunked",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        ),
        (
            "differing Content-Lengths",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        ),
    ] {
        let mut c = RawClient::connect(proxy.addr).await;
        c.send(request).await;
        let r = c.read_response().await;
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        c.read_to_close(WAIT).await;
    }
    assert!(
        backend
            .seen()
            .iter()
            .all(|s| s.body.is_empty() || s.body == "<body read error>"),
        "no malformed body was delivered whole"
    );
    assert_eq!(http_get(proxy.addr, "h", "/").await.status, 200);
}

#[tokio::test]
async fn a_response_with_both_framings_is_reframed() {
    let backend = raw_backend(|mut s| async move {
        if read_head(&mut s).await.is_some() {
            let _ = s
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
                      a\r\n0123456789\r\n0\r\n\r\n",
                )
                .await;
        }
    })
    .await;
    let proxy = spawn_proxy(&one_route(&[backend.addr], "")).await;
    let r = http_get(proxy.addr, "h", "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "0123456789", "{}", r.text());
    assert!(!r.has_header("content-length"), "{}", r.text());
}

// ---------------------------------------------------------------------------------------
// Item 10: upgrades.

#[tokio::test]
async fn a_refused_upgrade_connection_is_not_reused() {
    let backend = http_backend(|seen| async move {
        if seen.header("upgrade").is_some() {
            text(403, "no websocket here")
        } else {
            text(200, "plain")
        }
    })
    .await;
    let proxy = spawn_proxy(&one_route(&[backend.addr], "")).await;
    let mut c = RawClient::connect(proxy.addr).await;
    c.send(handshake("/", "h", "")).await;
    let refused = c.read_response().await;
    assert_eq!(refused.status, 403);
    c.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let plain = c.read_response().await;
    assert_eq!(plain.body_str(), "plain");
    let seen = backend.seen();
    assert_eq!(seen.len(), 2);
    assert_ne!(
        seen[0].conn, seen[1].conn,
        "the refused handshake's upstream connection went back to the pool"
    );
}

#[tokio::test]
async fn http2_settings_is_never_forwarded() {
    let backend = http_backend(|_| async { text(200, "ok") }).await;
    let proxy = spawn_proxy(&one_route(&[backend.addr], "")).await;
    for request in [
        "GET / HTTP/1.1\r\nHost: h\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
         HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    ] {
        assert_eq!(raw_response(proxy.addr, request).await.status, 200);
    }
    for seen in backend.seen() {
        assert_eq!(seen.header("http2-settings"), None);
        assert_eq!(seen.header("upgrade"), None);
    }
}

#[tokio::test]
async fn tunnels_per_ip_are_limited_but_plain_requests_are_not() {
    let ws = ws_echo_backend().await;
    let mut toml = one_route(&[ws.addr], "");
    toml = format!("[proxy]\nmax_tunnels_per_ip = 1\n{toml}");
    let proxy = spawn_proxy(&toml).await;
    let url = format!("ws://{}/", proxy.addr);
    let (first, _) = ws_connect(&url, &[]).await.expect("the first tunnel opens");
    let second = raw_response(proxy.addr, handshake("/", "h", "")).await;
    assert_eq!(second.status, 503, "{}", second.text());
    drop(first);
    eventually(WAIT, "the closed tunnel frees its slot", || async {
        ws_connect(&url, &[]).await.is_ok()
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Item 8: limits across reloads.

#[tokio::test]
async fn a_reload_does_not_reset_the_connection_limits() {
    init_tracing();
    let backend = named_backend("ok").await;
    let toml = format!(
        "[proxy]\nmax_connections = 4\n{}",
        one_route(&[backend.addr], "")
    );
    let config =
        sluice::config::Config::from_toml(&toml, Path::new("t.toml")).expect("valid config");
    let server = sluice::server::Server::bind(config.clone())
        .await
        .expect("bind");
    let addr = server.local_addrs()[0];
    let running = server.start();

    // Four connections held open (each has finished one request, so each is accepted).
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = RawClient::connect(addr).await;
        c.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
        assert_eq!(c.read_response().await.status, 200);
        held.push(c);
    }
    for round in 0..2 {
        running.reload(config.clone()).await.expect("reload");
        let refused = raw_response(addr, "GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
        assert_eq!(
            refused.status, 503,
            "after reload {round}: connections opened before it still count"
        );
    }
    held.pop();
    eventually(WAIT, "a closed connection frees its slot", || async {
        is_served(addr).await
    })
    .await;
    drop(held);
    running.drain().await;
}
