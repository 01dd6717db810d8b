//! Reloads that remember: a server that stays in its pool keeps its health state and its
//! count of open requests and tunnels across a reload.
//!
//! - `least_conn_counts_survive_a_reload`: tunnels opened before a reload still count, so
//!   the server added by the reload gets the new ones.
//! - `a_server_marked_down_stays_down_across_a_reload`: through the real binary; passive
//!   health is not reset by SIGHUP.
//! - `a_handshake_storm_spreads_under_least_conn`: least_conn counts a server when it is
//!   picked, so a storm of handshakes to a pool with a slow-to-connect server spreads.

mod support;

use std::net::SocketAddr;
use std::path::Path;

use support::*;

fn least_conn(servers: &[SocketAddr]) -> String {
    least_conn_with(servers, "")
}

/// A least_conn pool of `servers`, with `extra` lines in its `[upstream.app]` table.
fn least_conn_with(servers: &[SocketAddr], extra: &str) -> String {
    let list = servers
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
[[listener]]
addr = "127.0.0.1:0"

[upstream.app]
servers = [{list}]
balance = "least_conn"
{extra}

[[route]]
upstream = "app"
"#
    )
}

#[tokio::test]
async fn least_conn_counts_survive_a_reload() {
    init_tracing();
    let a = named_ws_backend("a").await;
    let b = named_ws_backend("b").await;
    let first = sluice::config::Config::from_toml(&least_conn(&[a.addr]), Path::new("t.toml"))
        .expect("valid");
    let server = sluice::server::Server::bind(first).await.expect("bind");
    let addr = server.local_addrs()[0];
    let running = server.start();

    let mut held = Vec::new();
    for _ in 0..3 {
        let (tunnel, name) = open_tunnel(addr).await;
        assert_eq!(name, "a");
        held.push(tunnel);
    }
    // The reload adds b. a keeps its three open tunnels: the next three go to b.
    let second =
        sluice::config::Config::from_toml(&least_conn(&[a.addr, b.addr]), Path::new("t.toml"))
            .expect("valid");
    running.reload(second).await.expect("reload");
    let mut after = Vec::new();
    for _ in 0..3 {
        let (tunnel, name) = open_tunnel(addr).await;
        after.push(name);
        held.push(tunnel);
    }
    assert_eq!(
        after,
        ["b", "b", "b"],
        "a's open tunnels still count after the reload"
    );
    drop(held);
    running.drain().await;
}

#[tokio::test]
async fn a_server_marked_down_stays_down_across_a_reload() {
    let up = named_backend("up").await;
    let down = dead_addr().await;
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let text = |extra: &str| {
        format!(
            r#"
[[listener]]
addr = "{listen}"

[upstream.app]
servers = ["{down}", "{up}"]
max_fails = 1
fail_timeout = "1h"

[[route]]
upstream = "app"
{extra}
"#,
            up = up.addr
        )
    };
    let path = temp_config("reload-health", &text(""));
    let mut daemon = Daemon::start(&["run", "-c", path.to_str().expect("utf-8 path")]);
    daemon.wait_listening(listen).await;
    // Round robin tries the dead server within two requests; it is then out for an hour.
    for _ in 0..4 {
        assert_eq!(http_get(listen, "h", "/").await.body_str(), "up");
    }
    // A reload that changes the route but keeps both servers in the pool.
    std::fs::write(&path, text(r#"set_headers = { "X-Generation" = "2" }"#))
        .expect("rewrite config");
    let status = std::process::Command::new("kill")
        .args(["-HUP", &daemon.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    eventually(WAIT, "the reloaded route is in force", || async {
        assert_eq!(http_get(listen, "h", "/").await.body_str(), "up");
        up.seen()
            .last()
            .is_some_and(|s| s.header("x-generation") == Some("2"))
    })
    .await;
    for _ in 0..6 {
        assert_eq!(http_get(listen, "h", "/").await.body_str(), "up");
    }
    daemon.sigterm();
    let exit = daemon.wait_exit(WAIT).await;
    assert_eq!(exit.code, Some(0), "{exit}");
    assert!(
        exit.stderr.contains("reloaded"),
        "the reload happened{exit}"
    );
    let tries = exit.stderr.matches("upstream connect failed").count();
    assert_eq!(
        tries, 1,
        "the dead server was tried once, before the reload, and never again{exit}"
    );
}

/// A storm of handshakes to a pool where one server's connects are slow: least_conn counts
/// each server from the moment it is picked, so the storm spreads instead of piling onto
/// the server that looked idlest while its connects were still under way.
#[tokio::test]
async fn a_handshake_storm_spreads_under_least_conn() {
    use std::sync::atomic::Ordering;
    use support::tls::{tls_backend, write, Ca};

    init_tracing();
    let ca = Ca::new("storm CA");
    let dir = support::tls::temp_dir("storm");
    let ca_file = write(&dir, "ca.pem", &ca.pem());
    let a = tls_backend(&ca.leaf(&["backend.internal"])).await;
    let b = tls_backend(&ca.leaf(&["backend.internal"])).await;
    let tls = format!(
        r#"tls = {{ ca = "{}", server_name = "backend.internal" }}"#,
        ca_file.display()
    );
    let pool = |servers: &[SocketAddr]| least_conn_with(servers, &tls);
    let first =
        sluice::config::Config::from_toml(&pool(&[b.addr]), Path::new("t.toml")).expect("valid");
    let server = sluice::server::Server::bind(first).await.expect("bind");
    let addr = server.local_addrs()[0];
    let running = server.start();
    let url = format!("ws://{addr}/ws");

    // b holds four tunnels; then a joins, and a's connects take 300 ms.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(ws_connect(&url, &[]).await.expect("tunnel").0);
    }
    assert_eq!(b.handshakes.load(Ordering::SeqCst), 4);
    let second = sluice::config::Config::from_toml(&pool(&[a.addr, b.addr]), Path::new("t.toml"))
        .expect("valid");
    running.reload(second).await.expect("reload");
    a.handshake_delay_ms.store(300, Ordering::SeqCst);

    // Eight handshakes at once.
    let storm: Vec<_> = (0..8).map(|_| ws_connect(&url, &[])).collect();
    for opened in futures_util::future::join_all(storm).await {
        held.push(opened.expect("tunnel in the storm").0);
    }
    let (on_a, on_b) = (
        a.handshakes.load(Ordering::SeqCst),
        b.handshakes.load(Ordering::SeqCst) - 4,
    );
    assert_eq!(on_a + on_b, 8);
    assert!(
        on_b >= 1 && on_a <= 7,
        "the storm piled onto a: {on_a} on a, {on_b} on b (a's picks must count at once)"
    );
    drop(held);
    running.drain().await;
}
