//! Upstream selection: weighted round robin, failover, passive health, backups, and the
//! 502/504 answers when no server can answer (SPEC `[upstream.NAME]`, "Errors").
//!
//! - `round_robin_alternates_plain_requests`
//! - `round_robin_alternates_tunnels`
//! - `weights_3_to_1_give_3_to_1`
//! - `refused_server_is_skipped_and_the_request_succeeds`
//! - `max_fails_keeps_a_failed_server_out_for_fail_timeout`
//! - `max_fails_zero_keeps_trying_the_failed_server`
//! - `backup_is_used_only_when_primaries_are_down`
//! - `all_servers_down_is_502`
//! - `connect_timeout_is_504`
//! - `read_timeout_is_504`
//! - `request_already_sent_is_never_retried`
//! - `least_conn_sends_new_tunnels_to_the_server_with_fewest_open`
//! - `hash_sends_a_key_to_one_server_and_independent_proxies_agree`
//! - `health_checks_take_a_failing_server_out_and_bring_it_back`
//!
//! Connect timeouts are produced on loopback only, with [`Blackhole`]: a listener whose
//! accept queue is full, so the kernel drops further SYNs and connects hang (Linux only:
//! those tests are compiled for Linux alone).

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use support::*;
use tokio_tungstenite::tungstenite::Message;

/// `GET /` and the body of the `200`.
async fn pick(proxy: SocketAddr) -> String {
    let r = http_get(proxy, "h", "/").await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.body_str()
}

/// One upstream `app` with `servers` (TOML array items, verbatim) and `upstream_extra` keys.
fn pool(servers: &str, upstream_extra: &str, route_extra: &str) -> String {
    format!(
        r#"
[[listener]]
addr = "127.0.0.1:0"

[upstream.app]
servers = [{servers}]
{upstream_extra}

[[route]]
upstream = "app"
{route_extra}
"#
    )
}

#[tokio::test]
async fn round_robin_alternates_plain_requests() {
    let a = named_backend("a").await;
    let b = named_backend("b").await;
    let proxy = spawn_proxy(&pool(&format!(r#""{}", "{}""#, a.addr, b.addr), "", "")).await;

    let mut picks = Vec::new();
    for _ in 0..6 {
        picks.push(pick(proxy.addr).await);
    }
    for w in picks.windows(2) {
        assert_ne!(w[0], w[1], "not alternating: {picks:?}");
    }
    assert_eq!((a.count(), b.count()), (3, 3));
}

#[tokio::test]
async fn round_robin_alternates_tunnels() {
    let a = ws_backend(WsBehaviour {
        on_open: vec![Message::Text("a".into())],
        end_after: None,
    })
    .await;
    let b = ws_backend(WsBehaviour {
        on_open: vec![Message::Text("b".into())],
        end_after: None,
    })
    .await;
    let proxy = spawn_proxy(&pool(&format!(r#""{}", "{}""#, a.addr, b.addr), "", "")).await;

    let mut picks = Vec::new();
    let mut open = Vec::new();
    for _ in 0..4 {
        let (mut ws, _) = ws_connect(&format!("ws://{}/", proxy.addr), &[])
            .await
            .expect("handshake");
        let hello = within(WAIT, ws.next()).await.unwrap().unwrap();
        picks.push(hello.into_text().unwrap());
        open.push(ws); // tunnels stay open: each one still counts as one pick
    }
    for w in picks.windows(2) {
        assert_ne!(w[0], w[1], "not alternating: {picks:?}");
    }
    assert_eq!((a.count(), b.count()), (2, 2));
}

#[tokio::test]
async fn weights_3_to_1_give_3_to_1() {
    let heavy = named_backend("heavy").await;
    let light = named_backend("light").await;
    let proxy = spawn_proxy(&pool(
        &format!(
            r#"{{ addr = "{}", weight = 3 }}, {{ addr = "{}", weight = 1 }}"#,
            heavy.addr, light.addr
        ),
        "",
        "",
    ))
    .await;

    let mut picks = Vec::new();
    for _ in 0..8 {
        picks.push(pick(proxy.addr).await);
    }
    assert_eq!((heavy.count(), light.count()), (6, 2), "{picks:?}");
    // Smooth weighted round robin spreads the light server's turns out.
    for w in picks.windows(2) {
        assert!(
            !(w[0] == "light" && w[1] == "light"),
            "light server picked twice in a row: {picks:?}"
        );
    }
}

#[tokio::test]
async fn refused_server_is_skipped_and_the_request_succeeds() {
    let dead = dead_addr().await;
    let live = named_backend("live").await;
    let proxy = spawn_proxy(&pool(&format!(r#""{dead}", "{}""#, live.addr), "", "")).await;

    for _ in 0..4 {
        assert_eq!(pick(proxy.addr).await, "live");
    }
    assert_eq!(live.count(), 4);
}

/// Times `n` sequential requests that must all succeed via `live`.
async fn timed_picks(proxy: SocketAddr, n: usize) -> Vec<Duration> {
    let mut times = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        assert_eq!(pick(proxy).await, "live");
        times.push(start.elapsed());
    }
    times
}

#[cfg(target_os = "linux")] // Blackhole relies on Linux dropping SYNs
#[tokio::test]
async fn max_fails_keeps_a_failed_server_out_for_fail_timeout() {
    // Every attempt on the blackholed server costs a full connect_timeout, so the number
    // of slow requests counts the attempts on it.
    let hole = Blackhole::new();
    let live = named_backend("live").await;
    let proxy = spawn_proxy(&pool(
        &format!(r#""{}", "{}""#, hole.addr, live.addr),
        "connect_timeout = \"400ms\"\nmax_fails = 1\nfail_timeout = \"10s\"",
        "",
    ))
    .await;

    let times = timed_picks(proxy.addr, 6).await;
    let slow = times
        .iter()
        .filter(|t| **t >= Duration::from_millis(350))
        .count();
    assert_eq!(
        slow, 1,
        "the failed server should be tried once, then skipped: {times:?}"
    );
}

#[cfg(target_os = "linux")] // Blackhole relies on Linux dropping SYNs
#[tokio::test]
async fn max_fails_zero_keeps_trying_the_failed_server() {
    let hole = Blackhole::new();
    let live = named_backend("live").await;
    let proxy = spawn_proxy(&pool(
        &format!(r#""{}", "{}""#, hole.addr, live.addr),
        "connect_timeout = \"300ms\"\nmax_fails = 0",
        "",
    ))
    .await;

    let times = timed_picks(proxy.addr, 4).await;
    let slow = times
        .iter()
        .filter(|t| **t >= Duration::from_millis(250))
        .count();
    // Two of four at least (an ordered candidate list); four if every request starts at
    // the same server as nginx's retry walk does.
    assert!(
        slow >= 2,
        "with max_fails = 0 the failed server must still be tried: {times:?}"
    );
}

#[tokio::test]
async fn backup_is_used_only_when_primaries_are_down() {
    // Primaries up: the backup gets nothing.
    let p1 = named_backend("p1").await;
    let p2 = named_backend("p2").await;
    let backup = named_backend("backup").await;
    let proxy = spawn_proxy(&pool(
        &format!(
            r#""{}", "{}", {{ addr = "{}", backup = true }}"#,
            p1.addr, p2.addr, backup.addr
        ),
        "",
        "",
    ))
    .await;
    for _ in 0..6 {
        assert_ne!(pick(proxy.addr).await, "backup");
    }
    assert_eq!(backup.count(), 0);

    // Primaries down: the backup answers.
    let dead1 = dead_addr().await;
    let dead2 = dead_addr().await;
    let proxy = spawn_proxy(&pool(
        &format!(
            r#""{dead1}", {{ addr = "{}", backup = true }}, "{dead2}""#,
            backup.addr
        ),
        "",
        "",
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(pick(proxy.addr).await, "backup");
    }
}

#[tokio::test]
async fn all_servers_down_is_502() {
    let dead1 = dead_addr().await;
    let dead2 = dead_addr().await;
    let proxy = spawn_proxy(&pool(&format!(r#""{dead1}", "{dead2}""#), "", "")).await;

    for _ in 0..2 {
        let r = http_get(proxy.addr, "h", "/").await;
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(r.body_str(), "bad gateway\n");
    }
    // A WebSocket handshake too.
    let r = raw_response(proxy.addr, handshake("/", "h", "")).await;
    assert_eq!(r.status, 502, "{}", r.text());
}

#[cfg(target_os = "linux")] // Blackhole relies on Linux dropping SYNs
#[tokio::test]
async fn connect_timeout_is_504() {
    let hole = Blackhole::new();
    let proxy = spawn_proxy(&pool(
        &format!(r#""{}""#, hole.addr),
        "connect_timeout = \"300ms\"",
        "",
    ))
    .await;

    let start = Instant::now();
    let r = http_get(proxy.addr, "h", "/").await;
    let took = start.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.body_str(), "gateway timeout\n");
    assert!(
        took >= Duration::from_millis(250),
        "answered after {took:?}"
    );
}

#[tokio::test]
async fn read_timeout_is_504() {
    // Accepts and reads the request, never answers (until the test ends).
    let silent = raw_backend(|mut s| async move {
        let _ = read_head(&mut s).await;
        let _ = read_head(&mut s).await;
    })
    .await;
    let proxy = spawn_proxy(&pool(
        &format!(r#""{}""#, silent.addr),
        "",
        "read_timeout = \"500ms\"",
    ))
    .await;

    let start = Instant::now();
    let r = http_get(proxy.addr, "h", "/").await;
    let took = start.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.body_str(), "gateway timeout\n");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(5),
        "answered after {took:?}"
    );
    // A request already sent upstream is never retried.
    assert_eq!(silent.connections(), 1);
}

#[tokio::test]
async fn request_already_sent_is_never_retried() {
    // Reads the request, then hangs up without answering: not a connect failure.
    let dropper = raw_backend(|mut s| async move {
        let _ = read_head(&mut s).await;
    })
    .await;
    let live = named_backend("live").await;
    let proxy = spawn_proxy(&pool(
        &format!(r#""{}", "{}""#, dropper.addr, live.addr),
        "",
        "",
    ))
    .await;

    // Round robin sends one of the two requests to each server.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(http_get(proxy.addr, "h", "/").await.status);
    }
    statuses.sort();
    assert_eq!(statuses, [200, 502]);
    assert_eq!(live.count(), 1, "the dropped request was retried on live");
    assert_eq!(
        dropper.connections(),
        1,
        "the dropped request was sent again"
    );
}

/// A WebSocket backend that says its name as its first message.
#[tokio::test]
async fn least_conn_sends_new_tunnels_to_the_server_with_fewest_open() {
    let a = named_ws_backend("a").await;
    let b = named_ws_backend("b").await;
    let proxy = spawn_proxy(&format!(
        r#"
[[listener]]
addr = "127.0.0.1:0"

[upstream.app]
servers = ["{}", "{}"]
balance = "least_conn"

[[route]]
upstream = "app"
"#,
        a.addr, b.addr
    ))
    .await;

    // Four tunnels spread two and two: each goes to the server with fewer open.
    let mut tunnels = Vec::new();
    for _ in 0..4 {
        tunnels.push(open_tunnel(proxy.addr).await);
    }
    let on_a = tunnels.iter().filter(|(_, name)| name == "a").count();
    assert_eq!(on_a, 2, "four tunnels did not spread two and two");

    // Close both tunnels on "a" (close handshake, then the end of the stream).
    let (mut to_a, keep): (Vec<_>, Vec<_>) = tunnels.into_iter().partition(|(_, n)| n == "a");
    for (ws, _) in &mut to_a {
        within(WAIT, ws.close(None)).await.expect("close");
        while let Some(Ok(_)) = within(WAIT, ws.next()).await {}
    }
    drop(to_a);
    // The proxy ends a tunnel when both sides have closed; give its tasks a moment to
    // see the last end of stream.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // "a" has none open, "b" two: the next two tunnels both go to "a". Round robin would
    // send one of them to "b".
    let (_t5, fifth) = open_tunnel(proxy.addr).await;
    let (_t6, sixth) = open_tunnel(proxy.addr).await;
    assert_eq!((fifth.as_str(), sixth.as_str()), ("a", "a"));
    drop(keep);
}

/// `GET /` as user `user` (header `X-User`), and the body of the answer.
async fn pick_as(proxy: SocketAddr, user: &str) -> String {
    let response = raw_response(
        proxy,
        format!("GET / HTTP/1.1\r\nHost: h\r\nX-User: {user}\r\n\r\n"),
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.text());
    response.body_str()
}

#[tokio::test]
async fn hash_sends_a_key_to_one_server_and_independent_proxies_agree() {
    let a = named_backend("a").await;
    let b = named_backend("b").await;
    let config = format!(
        r#"
[[listener]]
addr = "127.0.0.1:0"

[upstream.app]
servers = ["{}", "{}"]
balance = "hash"
hash_key = "header:X-User"

[[route]]
upstream = "app"
"#,
        a.addr, b.addr
    );
    let first = spawn_proxy(&config).await;
    let second = spawn_proxy(&config).await;

    let mut spread = std::collections::BTreeMap::new();
    for n in 0..24 {
        let user = format!("user-{n}");
        let chosen = pick_as(first.addr, &user).await;
        for _ in 0..2 {
            assert_eq!(pick_as(first.addr, &user).await, chosen, "{user} moved");
        }
        assert_eq!(
            pick_as(second.addr, &user).await,
            chosen,
            "another instance sent {user} elsewhere"
        );
        *spread.entry(chosen).or_insert(0) += 1;
    }
    assert_eq!(
        spread.len(),
        2,
        "24 keys all went to one server: {spread:?}"
    );

    // Without the key the request is still served (balanced round robin).
    let plain = raw_response(first.addr, "GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert_eq!(plain.status, 200);
}

#[tokio::test]
async fn health_checks_take_a_failing_server_out_and_bring_it_back() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let healthy = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&healthy);
    let a = http_backend(move |seen| {
        let up = flag.load(Ordering::SeqCst);
        async move {
            match (seen.uri.path(), up) {
                ("/healthz", true) => text(200, "ok"),
                ("/healthz", false) => text(503, "down"),
                _ => text(200, "a"),
            }
        }
    })
    .await;
    let b = named_backend("b").await;
    let proxy = spawn_proxy(&format!(
        r#"
[[listener]]
addr = "127.0.0.1:0"

[upstream.app]
servers = ["{}", "{}"]
max_fails = 0
health_check = {{ path = "/healthz", interval = "100ms", timeout = "1s", healthy = 2, unhealthy = 2 }}

[[route]]
upstream = "app"
"#,
        a.addr, b.addr
    ))
    .await;

    // Both in: round robin reaches "a".
    eventually(WAIT, "\"a\" serves while healthy", || async {
        pick(proxy.addr).await == "a"
    })
    .await;

    // "a" starts failing its checks: after two failures it gets no more requests.
    healthy.store(false, Ordering::SeqCst);
    eventually(WAIT, "\"a\" is taken out", || async {
        let mut picks = Vec::new();
        for _ in 0..4 {
            picks.push(pick(proxy.addr).await);
        }
        picks.iter().all(|p| p == "b")
    })
    .await;
    let served_by_a = a.seen().iter().filter(|s| s.uri.path() == "/").count();
    for _ in 0..6 {
        assert_eq!(pick(proxy.addr).await, "b");
    }
    assert_eq!(
        a.seen().iter().filter(|s| s.uri.path() == "/").count(),
        served_by_a,
        "a server taken out still got requests"
    );
    let probe = a
        .seen()
        .into_iter()
        .find(|s| s.uri.path() == "/healthz")
        .expect("a health check reached the backend");
    assert_eq!(probe.method, http::Method::GET);
    assert_eq!(probe.headers["host"], a.addr.to_string().as_str());

    // Passing again: back in after two passes.
    healthy.store(true, Ordering::SeqCst);
    eventually(WAIT, "\"a\" comes back", || async {
        pick(proxy.addr).await == "a"
    })
    .await;
}
