//! `sluice demo`: the product working, in one command.
//!
//! Two WebSocket echo backends ("backend A" and "backend B") run inside the process on
//! `127.0.0.1:0`, and an ordinary [`Server`] built from an embedded config sits in front of
//! them with one round-robin pool and one route `/`. Each backend serves a small page on
//! `GET /` and, on a WebSocket upgrade at any path, echoes every text message prefixed with
//! its name (`backend A: hello`). The page opens its WebSockets through the proxy, so each
//! reply shows which backend the proxy picked.
//!
//! The backends accept the upgrade themselves, as an application behind sluice would: they
//! check the handshake, answer `101` with the `Sec-WebSocket-Accept` derived from the key
//! (RFC 6455 §4.2.2), and then speak WebSocket over hyper's `Upgraded` I/O.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::lifecycle::StartError;
use crate::server::{Server, SetupError};

/// The page each backend serves on `GET /`.
const PAGE: &str = include_str!("demo.html");

/// Where the page's link to the dashboard goes; filled in when the page is served.
const DASHBOARD_SLOT: &str = "{{dashboard}}";

/// The names the two backends put in front of every echo.
const BACKEND_NAMES: [&str; 2] = ["backend A", "backend B"];

/// How long the proxy lets open tunnels run after a stop. The backends close their
/// WebSockets at the same moment, so tunnels normally end at once; this only bounds a
/// browser that never answers the Close frame.
const SHUTDOWN_TIMEOUT: &str = "3s";

/// How long a backend waits for a peer to acknowledge its Close frame, or for a plain HTTP
/// connection to finish its current response, when the demo stops.
const BACKEND_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A running demo: the proxy and its two backends. Dropping it stops everything without
/// waiting; [`Demo::stop`] stops and waits.
#[derive(Debug)]
pub struct Demo {
    /// The proxy's bound address (the one to open in a browser).
    addr: SocketAddr,
    /// The backends' bound addresses, A then B.
    backends: [SocketAddr; 2],
    /// The admin endpoint (dashboard, metrics, status).
    admin: SocketAddr,
    /// Cancelled to stop the proxy (drain) and the backends.
    stop: CancellationToken,
    /// The proxy's `run` task; it returns once drained.
    proxy: JoinHandle<()>,
    /// Backend accept loops, their connections and their WebSocket echo loops.
    backend_tasks: TaskTracker,
}

impl Demo {
    /// The proxy's bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin endpoint's bound address: its `/` is the live dashboard.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The backends' bound addresses: `backend A`, then `backend B`.
    pub fn backend_addrs(&self) -> [SocketAddr; 2] {
        self.backends
    }

    /// Stops accepting, closes the backends' WebSockets, lets the proxy drain (bounded by
    /// its `shutdown_timeout`), and waits for every task to end.
    pub async fn stop(mut self) {
        self.stop.cancel();
        self.backend_tasks.close();
        if let Err(err) = (&mut self.proxy).await {
            tracing::warn!(cause = %err, "demo proxy task ended abnormally");
        }
        self.backend_tasks.wait().await;
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts both backends and the proxy in front of them, listening on `listen` (port 0
/// allowed; see [`Demo::addr`] for the bound address).
///
/// # Errors
/// A backend cannot bind on `127.0.0.1:0`, the embedded config is refused, or the proxy
/// cannot bind `listen`.
pub async fn start(listen: SocketAddr) -> Result<Demo, StartError> {
    let stop = CancellationToken::new();
    let backend_tasks = TaskTracker::new();
    // Any early return below stops the backends already started.
    let stop_on_error = stop.clone().drop_guard();

    // Set once the admin endpoint is bound; the page links to its dashboard.
    let dashboard: Arc<OnceLock<String>> = Arc::default();
    let mut backends = [SocketAddr::from((Ipv4Addr::LOCALHOST, 0)); 2];
    for (slot, name) in backends.iter_mut().zip(BACKEND_NAMES) {
        let bind_to = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let listener = TcpListener::bind(bind_to)
            .await
            .map_err(|source| StartError::Bind {
                addr: bind_to,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: bind_to,
            source,
        })?;
        tracing::info!(backend = name, %addr, "demo backend listening");
        backend_tasks.spawn(serve_backend(
            Backend {
                name,
                dashboard: Arc::clone(&dashboard),
            },
            listener,
            stop.clone(),
            backend_tasks.clone(),
        ));
        *slot = addr;
    }

    // The dashboard on loopback next to the proxy's port (8081 beside 8080), or on any
    // free port when that one is taken.
    let preferred = admin_addr(listen);
    let server = match bind_demo(listen, backends, preferred).await {
        Err(StartError::Server(SetupError::Bind { addr, .. }))
            if addr == preferred && preferred.port() != 0 =>
        {
            bind_demo(listen, backends, SocketAddr::new(preferred.ip(), 0)).await?
        }
        bound => bound?,
    };
    let addr = server.local_addrs().first().copied().unwrap_or(listen);
    let admin = server.admin_addr().unwrap_or(preferred);
    let _ = dashboard.set(format!("http://{admin}/"));
    let proxy = tokio::spawn(server.run(stop.clone().cancelled_owned()));
    stop_on_error.disarm();

    Ok(Demo {
        addr,
        backends,
        admin,
        stop,
        proxy,
        backend_tasks,
    })
}

/// Runs the demo on `listen` until Ctrl-C (SIGINT) or SIGTERM, then drains and returns.
///
/// # Errors
/// The runtime or the signal handlers cannot be set up, or [`start`] fails.
pub fn run(listen: SocketAddr) -> Result<(), StartError> {
    crate::lifecycle::tokio_runtime()?.block_on(async move {
        let stop = crate::lifecycle::stop_signal()?;
        let demo = start(listen).await?;
        println!(
            "sluice demo: open http://{}/ in a browser",
            browsable(demo.addr())
        );
        println!(
            "sluice demo: live dashboard at http://{}/ (metrics at /metrics, status at /status)",
            demo.admin_addr()
        );
        stop.await;
        demo.stop().await;
        Ok(())
    })
}

async fn bind_demo(
    listen: SocketAddr,
    backends: [SocketAddr; 2],
    admin: SocketAddr,
) -> Result<Server, StartError> {
    let text = demo_config(listen, backends, admin);
    let config = Config::from_toml(&text, Path::new("sluice-demo.toml"))?;
    Ok(Server::bind(config).await?)
}

/// Where the demo's admin endpoint goes: loopback (it shows the proxy's internals), on the
/// port after the proxy's, or any free port when the proxy's is chosen by the OS.
fn admin_addr(listen: SocketAddr) -> SocketAddr {
    let ip = if listen.is_ipv6() {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    };
    let port = match listen.port() {
        0 | u16::MAX => 0,
        port => port + 1,
    };
    SocketAddr::new(ip, port)
}

/// The proxy config the demo runs: exactly what a user would write for two backends.
fn demo_config(listen: SocketAddr, backends: [SocketAddr; 2], admin: SocketAddr) -> String {
    format!(
        r#"[proxy]
shutdown_timeout = "{SHUTDOWN_TIMEOUT}"

[[listener]]
addr = "{listen}"

[admin]
addr = "{admin}"

[upstream.demo]
servers = ["{a}", "{b}"]
balance = "round_robin"

[[route]]
path = "/"
upstream = "demo"
"#,
        a = backends[0],
        b = backends[1],
    )
}

/// The address to print for a browser: a wildcard bind (`0.0.0.0`, `[::]`) is reachable
/// on loopback, and a browser cannot open the wildcard address itself everywhere.
fn browsable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
}

/// One demo backend: its name, and where the page's dashboard link points.
#[derive(Clone)]
struct Backend {
    name: &'static str,
    dashboard: Arc<OnceLock<String>>,
}

/// One backend's accept loop. An accept error is logged and the loop goes on (after a
/// short pause, so that running out of file descriptors does not spin).
async fn serve_backend(
    backend: Backend,
    listener: TcpListener,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                tasks.spawn(serve_connection(
                    backend.clone(),
                    stream,
                    stop.clone(),
                    tasks.clone(),
                ));
            }
            Err(err) => {
                tracing::warn!(backend = backend.name, cause = %err, "demo backend accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One HTTP/1.1 connection to a backend, upgrades allowed.
async fn serve_connection(
    backend: Backend,
    stream: TcpStream,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let name = backend.name;
    let service = {
        let stop = stop.clone();
        service_fn(move |req| {
            let response = handle(&backend, req, &stop, &tasks);
            async move { Ok::<_, Infallible>(response) }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(BACKEND_CLOSE_TIMEOUT, conn.as_mut()).await {
                Ok(result) => result,
                Err(_elapsed) => return,
            }
        }
    };
    if let Err(err) = result {
        tracing::debug!(backend = name, cause = %err, "demo backend connection ended");
    }
}

/// Answers one request: a WebSocket handshake is accepted and echoed, `GET /` gets the
/// page, anything else `404`.
fn handle(
    backend: &Backend,
    mut req: Request<Incoming>,
    stop: &CancellationToken,
    tasks: &TaskTracker,
) -> Response<Full<Bytes>> {
    let name = backend.name;
    if wants_websocket(&req) {
        let Some(accept) = handshake_accept(&req) else {
            return text(StatusCode::BAD_REQUEST, "bad request\n");
        };
        let Ok(accept) = HeaderValue::from_str(&accept) else {
            return text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        let stop = stop.clone();
        tasks.spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let ws = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        None,
                    )
                    .await;
                    echo(name, ws, stop).await;
                }
                Err(err) => {
                    tracing::debug!(backend = name, cause = %err, "demo upgrade failed");
                }
            }
        });
        let mut res = Response::new(Full::new(Bytes::new()));
        *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = res.headers_mut();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        return res;
    }
    let is_page = matches!(req.uri().path(), "/" | "/index.html");
    match (req.method(), is_page) {
        (&Method::GET | &Method::HEAD, true) => {
            let dashboard = backend.dashboard.get().map_or("", String::as_str);
            let page = PAGE.replace(DASHBOARD_SLOT, dashboard);
            let mut res = Response::new(Full::new(Bytes::from(page)));
            let headers = res.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            res
        }
        (_, true) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        (_, false) => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Whether the request asks for a WebSocket (its `Upgrade` lists `websocket`).
fn wants_websocket<B>(req: &Request<B>) -> bool {
    req.headers()
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("websocket"))
}

/// The `Sec-WebSocket-Accept` for a valid handshake (`GET`, version 13, a key), or `None`.
fn handshake_accept<B>(req: &Request<B>) -> Option<String> {
    if req.method() != Method::GET {
        return None;
    }
    let version = req.headers().get(header::SEC_WEBSOCKET_VERSION)?;
    if version.as_bytes() != b"13" {
        return None;
    }
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY)?;
    Some(derive_accept_key(key.as_bytes()))
}

/// Echoes every text message as `NAME: text` (binary messages unchanged) until the peer
/// closes or the demo stops, in which case a Close frame is sent first.
async fn echo<S>(name: &'static str, mut ws: WebSocketStream<S>, stop: CancellationToken)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => {
                close_within(&mut ws, BACKEND_CLOSE_TIMEOUT).await;
                return;
            }
            next = ws.next() => next,
        };
        let reply = match next {
            Some(Ok(Message::Text(text))) => Message::Text(format!("{name}: {text}")),
            Some(Ok(Message::Binary(data))) => Message::Binary(data),
            // Pings are answered by the protocol layer; a Close is answered the same way,
            // after which the stream ends.
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Close(_))) | None => return,
            Some(Err(err)) => {
                tracing::debug!(backend = name, cause = %err, "demo WebSocket ended");
                return;
            }
        };
        if let Err(err) = ws.send(reply).await {
            tracing::debug!(backend = name, cause = %err, "demo WebSocket send failed");
            return;
        }
    }
}

/// Sends a Close frame and waits, at most `limit`, for the peer's.
async fn close_within<S>(ws: &mut WebSocketStream<S>, limit: Duration)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let closing = async {
        if ws.close(None).await.is_err() {
            return;
        }
        while let Some(Ok(_)) = ws.next().await {}
    };
    drop(tokio::time::timeout(limit, closing).await);
}

/// A one-line plain-text response.
fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_both_backends_and_the_listener() {
        let listen = "127.0.0.1:8080".parse().expect("addr");
        let text = demo_config(
            listen,
            [
                "127.0.0.1:4001".parse().expect("addr"),
                "127.0.0.1:4002".parse().expect("addr"),
            ],
            admin_addr(listen),
        );
        assert!(text.contains(r#"addr = "127.0.0.1:8080""#));
        assert!(text.contains(r#"addr = "127.0.0.1:8081""#));
        assert!(text.contains(r#"servers = ["127.0.0.1:4001", "127.0.0.1:4002"]"#));
    }

    #[test]
    fn embedded_config_is_valid() {
        let text = demo_config(
            "127.0.0.1:0".parse().expect("addr"),
            [
                "127.0.0.1:4001".parse().expect("addr"),
                "127.0.0.1:4002".parse().expect("addr"),
            ],
            "127.0.0.1:0".parse().expect("addr"),
        );
        if let Err(err) = Config::from_toml(&text, Path::new("sluice-demo.toml")) {
            panic!("the demo config is refused:\n{err}");
        }
    }

    #[test]
    fn ipv6_listen_address_is_bracketed() {
        let listen = "[::1]:8080".parse().expect("addr");
        let text = demo_config(
            listen,
            ["127.0.0.1:1".parse().expect("addr"); 2],
            admin_addr(listen),
        );
        assert!(text.contains(r#"addr = "[::1]:8080""#));
        assert!(text.contains(r#"addr = "[::1]:8081""#));
    }

    #[test]
    fn wildcard_binds_print_a_loopback_url() {
        let v4: SocketAddr = "0.0.0.0:8080".parse().expect("addr");
        let v6: SocketAddr = "[::]:8080".parse().expect("addr");
        let other: SocketAddr = "192.0.2.1:8080".parse().expect("addr");
        assert_eq!(browsable(v4).to_string(), "127.0.0.1:8080");
        assert_eq!(browsable(v6).to_string(), "[::1]:8080");
        assert_eq!(browsable(other), other);
    }

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        let req = Request::builder()
            .method(Method::GET)
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_VERSION, "13")
            .header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==")
            .body(())
            .expect("request");
        assert!(wants_websocket(&req));
        assert_eq!(
            handshake_accept(&req).as_deref(),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
    }

    #[test]
    fn page_is_self_contained() {
        assert!(PAGE.contains("data-sluice-demo"));
        assert!(PAGE.contains(DASHBOARD_SLOT));
        assert!(!PAGE.contains("src=\"http"));
        assert!(!PAGE.contains("href=\"http"));
    }
}
