//! Shared helpers for the integration tests, so each test reads like a scenario.
//!
//! Everything binds `127.0.0.1:0`, and every wait goes through [`within`] so a broken proxy
//! makes a test fail with a message instead of hanging.
//!
//! - [`spawn_proxy`]: the proxy in-process on port 0 ([`TestProxy`]).
//! - [`http_backend`] / [`named_backend`]: hyper servers that record every request ([`Seen`]).
//! - [`ws_backend`] / [`ws_echo_backend`]: tokio-tungstenite servers with scripted behaviour.
//! - [`raw_backend`]: a `TcpListener` running a script per connection, for exact bytes.
//! - [`RawClient`], [`raw_request`], [`http_get`]: a client that writes raw bytes and parses
//!   the responses itself.
//! - [`dead_addr`], [`Blackhole`]: an address that refuses, one whose connects hang.
//! - [`Daemon`]: the real `sluice` binary, for lifecycle tests.
#![allow(dead_code)]

pub mod dns;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::Location;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use sluice::config::Config;
use sluice::server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as WsRequest, Response as WsResponse,
};
use tokio_tungstenite::tungstenite::Message;

/// The longest any single wait may take in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `fut`, panicking (with the caller's location) if it takes longer than `dur`.
#[track_caller]
pub fn within<F: Future>(dur: Duration, fut: F) -> impl Future<Output = F::Output> {
    let at = Location::caller();
    async move {
        match tokio::time::timeout(dur, fut).await {
            Ok(v) => v,
            Err(_) => panic!("timed out after {dur:?} (waiting at {at})"),
        }
    }
}

/// Logs from the proxy go to the test's captured output; `RUST_LOG` picks the level.
pub fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

// ---------------------------------------------------------------------------------------
// The proxy, in-process.

/// A running proxy. Dropping it triggers its shutdown.
pub struct TestProxy {
    /// The first listener's address.
    pub addr: SocketAddr,
    /// Every listener's address, in config order.
    pub addrs: Vec<SocketAddr>,
    /// The `[admin]` endpoint's address, when the config has one.
    pub admin: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestProxy {
    /// Triggers the shutdown without waiting for it (the drain runs in the background).
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Waits (bounded by `dur`) for `Server::run` to return after [`TestProxy::stop`].
    #[track_caller]
    pub fn finished(mut self, dur: Duration) -> impl Future<Output = ()> {
        let at = Location::caller();
        let task = self.task.take();
        self.stop();
        async move {
            if let Some(task) = task {
                match tokio::time::timeout(dur, task).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => panic!("Server::run panicked: {e} (waiting at {at})"),
                    Err(_) => panic!("Server::run did not return within {dur:?} (at {at})"),
                }
            }
        }
    }

    /// Triggers the shutdown and waits for `Server::run` to return (bounded).
    pub async fn shutdown(self) {
        self.finished(WAIT).await
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Validates `toml` (as if read from `test.toml`), binds it and runs it in the background.
pub async fn spawn_proxy(toml: &str) -> TestProxy {
    init_tracing();
    let config = Config::from_toml(toml, Path::new("test.toml"))
        .unwrap_or_else(|e| panic!("test config is invalid:\n{e}\n--- config ---\n{toml}"));
    let server = within(WAIT, Server::bind(config))
        .await
        .unwrap_or_else(|e| panic!("Server::bind failed: {e}\n--- config ---\n{toml}"));
    let addrs = server.local_addrs();
    let admin = server.admin_addr();
    assert!(!addrs.is_empty(), "Server::bind reported no listener");
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    TestProxy {
        addr: addrs[0],
        addrs,
        admin,
        stop: Some(tx),
        task: Some(task),
    }
}

/// The usual test config: one listener on port 0, one upstream `app` with `servers`, one
/// route to it; `route_extra` is added to the route table (e.g. `path = "/ws"`).
pub fn one_route(servers: &[SocketAddr], route_extra: &str) -> String {
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

[[route]]
upstream = "app"
{route_extra}
"#
    )
}

// ---------------------------------------------------------------------------------------
// HTTP backends (hyper).

/// One request as an HTTP backend received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The backend's own number for the TCP connection the request came on (0, 1, …).
    pub conn: usize,
    pub peer: SocketAddr,
}

impl Seen {
    /// The header's value; panics if it is not valid text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("header value is not text"))
    }

    /// Every value of the header, in order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().expect("header value is not text").to_owned())
            .collect()
    }

    /// The header's values joined as one comma list (how several lines are read).
    pub fn header_joined(&self, name: &str) -> Option<String> {
        let all = self.header_all(name);
        (!all.is_empty()).then(|| all.join(", "))
    }
}

pub type TestBody = BoxBody<Bytes, Infallible>;

/// A complete body.
pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into()).boxed()
}

/// A response with a text body.
pub fn text(status: u16, body: &str) -> Response<TestBody> {
    Response::builder()
        .status(status)
        .body(full(body.to_owned()))
        .expect("valid response")
}

/// A streaming body fed by the returned sender; it ends when the sender is dropped.
pub fn channel_body() -> (mpsc::Sender<Bytes>, TestBody) {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    (tx, BodyExt::boxed(StreamBody::new(stream)))
}

/// A recording HTTP/1.1 backend.
pub struct HttpBackend {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    conns: Arc<AtomicUsize>,
    notify: Arc<tokio::sync::Notify>,
}

impl HttpBackend {
    /// Every request received so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The only request received so far; panics if there is not exactly one.
    pub fn only(&self) -> Seen {
        let seen = self.seen();
        assert_eq!(
            seen.len(),
            1,
            "expected exactly one upstream request: {seen:#?}"
        );
        seen.into_iter().next().unwrap()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests arrived (bounded by [`WAIT`]).
    pub async fn wait_for(&self, n: usize) {
        within(WAIT, async {
            loop {
                let notified = self.notify.notified();
                if self.count() >= n {
                    return;
                }
                notified.await;
            }
        })
        .await
    }
}

/// Starts a backend whose `handler` answers each request (body already read and recorded).
pub async fn http_backend<H, F>(handler: H) -> HttpBackend
where
    H: Fn(Seen) -> F + Send + Sync + 'static,
    F: Future<Output = Response<TestBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let conns = Arc::new(AtomicUsize::new(0));
    let notify = Arc::new(tokio::sync::Notify::new());
    let handler = Arc::new(handler);
    let backend = HttpBackend {
        addr,
        seen: seen.clone(),
        conns: conns.clone(),
        notify: notify.clone(),
    };
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let conn = conns.fetch_add(1, Ordering::SeqCst);
            let (seen, notify, handler) = (seen.clone(), notify.clone(), handler.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (seen, notify, handler) = (seen.clone(), notify.clone(), handler.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = match body.collect().await {
                            Ok(b) => b.to_bytes(),
                            Err(_) => Bytes::from_static(b"<body read error>"),
                        };
                        let s = Seen {
                            method: parts.method,
                            uri: parts.uri,
                            version: parts.version,
                            headers: parts.headers,
                            body,
                            conn,
                            peer,
                        };
                        seen.lock().unwrap().push(s.clone());
                        notify.notify_waiters();
                        Ok::<_, Infallible>(handler(s).await)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    backend
}

/// A backend answering every request `200` with its `name` as the body.
pub async fn named_backend(name: &'static str) -> HttpBackend {
    http_backend(move |_| async move { text(200, name) }).await
}

// ---------------------------------------------------------------------------------------
// WebSocket backends (tokio-tungstenite).

/// How a WebSocket backend ends a connection after its scripted number of messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Sends a Close frame and waits for the client's.
    CloseFrame,
    /// Drops the TCP connection without a Close frame.
    Abrupt,
}

/// A WebSocket backend's script.
#[derive(Debug, Clone, Default)]
pub struct WsBehaviour {
    /// Sent right after the handshake, before reading anything.
    pub on_open: Vec<Message>,
    /// After this many messages were received (and echoed), end the connection this way.
    pub end_after: Option<(usize, Ending)>,
}

/// A recording WebSocket backend.
pub struct WsBackend {
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<HeaderMap>>>,
}

impl WsBackend {
    /// The request headers of every handshake received so far.
    pub fn handshakes(&self) -> Vec<HeaderMap> {
        self.heads.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.heads.lock().unwrap().len()
    }
}

/// A WebSocket server that echoes every text and binary message.
pub async fn ws_echo_backend() -> WsBackend {
    ws_backend(WsBehaviour::default()).await
}

/// A WebSocket echo server following `behaviour`.
// tungstenite's handshake callback type fixes the large `Err` variant.
#[allow(clippy::result_large_err)]
pub async fn ws_backend(behaviour: WsBehaviour) -> WsBackend {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let backend = WsBackend {
        addr,
        heads: heads.clone(),
    };
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (heads, behaviour) = (heads.clone(), behaviour.clone());
            tokio::spawn(async move {
                let record = |req: &WsRequest, resp: WsResponse| {
                    heads.lock().unwrap().push(req.headers().clone());
                    Ok::<_, ErrorResponse>(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
                    return;
                };
                for m in behaviour.on_open {
                    if ws.send(m).await.is_err() {
                        return;
                    }
                }
                let mut received = 0;
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Text(_) | Message::Binary(_) => {
                            received += 1;
                            if ws.send(msg).await.is_err() {
                                return;
                            }
                        }
                        Message::Close(_) => break,
                        _ => {}
                    }
                    match behaviour.end_after {
                        Some((n, Ending::Abrupt)) if received >= n => return,
                        Some((n, Ending::CloseFrame)) if received >= n => {
                            let _ = ws.close(None).await;
                            // Drain until the client's Close (bounded, so nothing hangs).
                            let _ = tokio::time::timeout(WAIT, async {
                                while let Some(Ok(_)) = ws.next().await {}
                            })
                            .await;
                            return;
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    backend
}

/// Connects a WebSocket client to `url` (e.g. `ws://127.0.0.1:1234/ws`) with extra headers.
pub async fn ws_connect(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request()?;
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    within(WAIT, tokio_tungstenite::connect_async(req)).await
}

/// A WebSocket backend that greets every tunnel with `name`, then echoes.
pub async fn named_ws_backend(name: &str) -> WsBackend {
    ws_backend(WsBehaviour {
        on_open: vec![Message::text(name)],
        end_after: None,
    })
    .await
}

/// A WebSocket client over plain TCP.
pub type WsClient =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Opens a tunnel through the proxy at `/` and returns it with the name its backend (a
/// [`named_ws_backend`]) greeted it with.
pub async fn open_tunnel(proxy: SocketAddr) -> (WsClient, String) {
    let (mut ws, _) = ws_connect(&format!("ws://{proxy}/"), &[])
        .await
        .expect("tunnel opens");
    let hello = within(WAIT, ws.next()).await.expect("hello").expect("read");
    let name = hello.into_text().expect("text").as_str().to_owned();
    (ws, name)
}

/// The `Sec-WebSocket-Accept` that answers `key` (RFC 6455 §4.2.2).
pub fn accept_for(key: &str) -> String {
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes())
}

/// A valid client key (base64 of 16 bytes) and its accept value.
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const KEY_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A WebSocket handshake request for `path` with `Host: host`, plus `extra` header lines
/// (each ending in `\r\n`).
pub fn handshake(path: &str, host: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// A client (masked) WebSocket frame with a payload under 126 bytes.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut out = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// A server (unmasked) WebSocket frame with a payload under 126 bytes.
pub fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut out = vec![0x80 | opcode, payload.len() as u8];
    out.extend_from_slice(payload);
    out
}

// ---------------------------------------------------------------------------------------
// Raw backends.

/// A backend that runs a script on each accepted connection.
pub struct RawBackend {
    pub addr: SocketAddr,
    conns: Arc<AtomicUsize>,
}

impl RawBackend {
    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
}

/// Starts a raw backend; `script` runs for each accepted connection (use [`read_head`]).
pub async fn raw_backend<S, F>(script: S) -> RawBackend
where
    S: Fn(TcpStream) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let backend = RawBackend {
        addr,
        conns: conns.clone(),
    };
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            conns.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(script(stream));
        }
    });
    backend
}

/// Reads a request or response head (through the blank line). Returns the head as text and
/// whatever bytes came after it. `None` if the peer closed first.
pub async fn read_head(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            return Some((head, buf[end + 4..].to_vec()));
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The value of `name` in a raw head (first match, case-insensitive).
pub fn head_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A `101` that correctly answers a handshake whose head is `head`.
pub fn good_101(head: &str) -> String {
    let key = head_value(head, "sec-websocket-key").expect("handshake without key");
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_for(key)
    )
}

/// An address nothing listens on: connects to it are refused.
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// A loopback listener whose accept queue is full, so further connects to it hang (Linux
/// drops the SYN of a connection that finds the queue full). Keep it alive while in use.
pub struct Blackhole {
    pub addr: SocketAddr,
    _listener: socket2::Socket,
    _fillers: Vec<std::net::TcpStream>,
}

impl Blackhole {
    pub fn new() -> Blackhole {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
        socket.bind(&bind.into()).unwrap();
        socket.listen(0).unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        // With a backlog of 0 the queue holds one connection; fill it.
        let mut fillers = Vec::new();
        for _ in 0..2 {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(s) => fillers.push(s),
                Err(_) => break,
            }
        }
        Blackhole {
            addr,
            _listener: socket,
            _fillers: fillers,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The raw client.

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// The head as received, status line through the blank line.
    pub head: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The whole response as text, for messages and `raw_request`.
    pub fn text(&self) -> String {
        format!("{}{}", self.head, self.body_str())
    }
}

/// A TCP client that writes raw bytes and parses responses itself. Every read is bounded.
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let stream = within(WAIT, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        RawClient {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream
            .write_all(bytes.as_ref())
            .await
            .expect("client write");
    }

    /// Stops sending (TCP half-close); reading still works.
    pub async fn shutdown_write(&mut self) {
        self.stream.shutdown().await.expect("client shutdown");
    }

    /// Reads more bytes into the buffer; false on EOF or error (reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Reads one complete response (bounded by [`WAIT`]).
    #[track_caller]
    pub fn read_response(&mut self) -> impl Future<Output = RawResponse> + '_ {
        let at = Location::caller();
        async move {
            match tokio::time::timeout(WAIT, self.read_response_inner()).await {
                Ok(Some(r)) => r,
                Ok(None) => panic!(
                    "connection closed before a complete response (at {at}); got: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
                Err(_) => panic!(
                    "no complete response within {WAIT:?} (at {at}); got: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        }
    }

    /// Reads one complete response, or `None` if the connection ends first.
    pub async fn try_read_response(&mut self) -> Option<RawResponse> {
        within(WAIT, self.read_response_inner()).await
    }

    async fn read_response_inner(&mut self) -> Option<RawResponse> {
        let end = loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                break end + 4;
            }
            if !self.fill().await {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let mut resp = RawResponse {
            status,
            head,
            headers,
            body: Vec::new(),
        };
        if status < 200 || status == 204 || status == 304 {
            return Some(resp);
        }
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        break i;
                    }
                    if !self.fill().await {
                        return None;
                    }
                };
                let line = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
                let size_hex = line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size_hex, 16)
                    .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
                if size == 0 {
                    // Trailers (if any), then the empty line that ends the message.
                    loop {
                        if let Some(i) = find(&self.buf[line_end..], b"\r\n\r\n") {
                            self.buf.drain(..line_end + i + 4);
                            return Some(resp);
                        }
                        if !self.fill().await {
                            return None;
                        }
                    }
                }
                let need = line_end + 2 + size + 2;
                while self.buf.len() < need {
                    if !self.fill().await {
                        return None;
                    }
                }
                resp.body
                    .extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
                self.buf.drain(..need);
            }
        }
        if let Some(len) = resp.header("content-length") {
            let len: usize = len.parse().expect("bad content-length");
            while self.buf.len() < len {
                if !self.fill().await {
                    return None;
                }
            }
            resp.body = self.buf.drain(..len).collect();
            return Some(resp);
        }
        // Delimited by close.
        while self.fill().await {}
        resp.body = std::mem::take(&mut self.buf);
        Some(resp)
    }

    /// Reads until `n` bytes are buffered after any parsed response, and returns them.
    #[track_caller]
    pub fn read_exact(&mut self, n: usize) -> impl Future<Output = Vec<u8>> + '_ {
        let at = Location::caller();
        async move {
            let ok = within(WAIT, async {
                while self.buf.len() < n {
                    if !self.fill().await {
                        return false;
                    }
                }
                true
            })
            .await;
            assert!(
                ok,
                "connection closed after {} of {n} bytes (at {at}): {:?}",
                self.buf.len(),
                String::from_utf8_lossy(&self.buf)
            );
            self.buf.drain(..n).collect()
        }
    }

    /// Reads until the buffer contains `needle`; returns everything up to and including it.
    #[track_caller]
    pub fn read_until(&mut self, needle: &[u8]) -> impl Future<Output = Vec<u8>> + '_ {
        let at = Location::caller();
        let needle = needle.to_vec();
        async move {
            let ok = within(WAIT, async {
                loop {
                    if find(&self.buf, &needle).is_some() {
                        return true;
                    }
                    if !self.fill().await {
                        return false;
                    }
                }
            })
            .await;
            assert!(
                ok,
                "connection closed before {:?} arrived (at {at}); got {:?}",
                String::from_utf8_lossy(&needle),
                String::from_utf8_lossy(&self.buf)
            );
            let end = find(&self.buf, &needle).unwrap() + needle.len();
            self.buf.drain(..end).collect()
        }
    }

    /// Reads to EOF (bounded by `dur`) and returns what came (including anything buffered).
    #[track_caller]
    pub fn read_to_close(&mut self, dur: Duration) -> impl Future<Output = Vec<u8>> + '_ {
        let at = Location::caller();
        async move {
            let done = tokio::time::timeout(dur, async { while self.fill().await {} }).await;
            assert!(
                done.is_ok(),
                "connection still open after {dur:?} (at {at}); got {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            std::mem::take(&mut self.buf)
        }
    }

    /// Waits `dur` and returns whatever arrived meanwhile, and whether the peer closed.
    /// For asserting that something does *not* happen.
    pub async fn idle_read(&mut self, dur: Duration) -> (Vec<u8>, bool) {
        let closed = tokio::time::timeout(dur, async { while self.fill().await {} })
            .await
            .is_ok();
        (std::mem::take(&mut self.buf), closed)
    }
}

/// Writes `bytes` on a new connection and returns the first response as text (bounded).
pub async fn raw_request(addr: SocketAddr, bytes: impl AsRef<[u8]>) -> String {
    raw_response(addr, bytes).await.text()
}

/// Writes `bytes` on a new connection and parses the first response (bounded).
pub async fn raw_response(addr: SocketAddr, bytes: impl AsRef<[u8]>) -> RawResponse {
    let mut c = RawClient::connect(addr).await;
    c.send(bytes).await;
    c.read_response().await
}

/// `GET path` with `Host: host` on a new connection.
pub async fn http_get(addr: SocketAddr, host: &str, path: &str) -> RawResponse {
    raw_response(addr, format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n")).await
}

/// Asserts a new connection to `addr` is not served: refused, closed without an answer, or
/// answered `503`.
pub async fn assert_not_served(addr: SocketAddr) {
    assert!(
        !is_served(addr).await,
        "a new connection to {addr} was still served"
    );
}

/// Whether a new connection to `addr` gets a non-503 answer to `GET /`.
pub async fn is_served(addr: SocketAddr) -> bool {
    let Ok(Ok(stream)) = tokio::time::timeout(WAIT, TcpStream::connect(addr)).await else {
        return false;
    };
    let mut c = RawClient {
        stream,
        buf: Vec::new(),
    };
    if c.stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    match c.try_read_response().await {
        Some(r) => r.status != 503,
        None => false,
    }
}

/// Polls `cond` every 50 ms until it holds, for at most `dur`.
#[track_caller]
pub fn eventually<C, F>(dur: Duration, what: &'static str, mut cond: C) -> impl Future<Output = ()>
where
    C: FnMut() -> F,
    F: Future<Output = bool>,
{
    let at = Location::caller();
    async move {
        let deadline = tokio::time::Instant::now() + dur;
        loop {
            if cond().await {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("{what}: still not true after {dur:?} (at {at})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// The real binary.

/// A free loopback port: bind port 0, note it, release it.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Writes `text` to a fresh file under the test target's temp dir.
pub fn temp_config(name: &str, text: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!(
        "{name}-{}-{}.toml",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::write(&path, text).unwrap();
    path
}

/// The `sluice` binary running as a child process. Killed on drop if still running.
pub struct Daemon {
    pub child: tokio::process::Child,
    pub cmd: String,
}

/// What a finished [`Daemon`] left behind.
#[derive(Debug)]
pub struct Exit {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub cmd: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "\n--- command ---\n{}\n--- exit code ---\n{:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmd, self.code, self.stdout, self.stderr
        )
    }
}

impl Daemon {
    /// Starts `sluice ARGS…` with stdout and stderr captured.
    pub fn start(args: &[&str]) -> Daemon {
        let bin = env!("CARGO_BIN_EXE_sluice");
        let cmd = format!("{bin} {}", args.join(" "));
        let child = tokio::process::Command::new(bin)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd}: {e}"));
        Daemon { child, cmd }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("daemon already reaped")
    }

    /// Sends SIGHUP with `kill -HUP PID`: reload.
    pub fn sighup(&self) {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -HUP failed");
    }

    /// Sends SIGTERM with `kill -TERM PID`.
    pub fn sigterm(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit within `dur` and collects its output. On timeout it is
    /// killed and the test fails with its output.
    pub async fn wait_exit(self, dur: Duration) -> Exit {
        let Daemon { mut child, cmd } = self;
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let out = tokio::spawn(async move {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s).await;
            s
        });
        let err = tokio::spawn(async move {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s).await;
            s
        });
        let status = tokio::time::timeout(dur, child.wait()).await;
        let timed_out = status.is_err();
        if timed_out {
            let _ = child.kill().await;
        }
        let exit = Exit {
            code: match status {
                Ok(Ok(s)) => s.code(),
                _ => None,
            },
            stdout: within(WAIT, out).await.unwrap_or_default(),
            stderr: within(WAIT, err).await.unwrap_or_default(),
            cmd,
        };
        assert!(!timed_out, "process did not exit within {dur:?}{exit}");
        exit
    }

    /// Waits until `addr` accepts connections; fails with the process's output if it exits
    /// or does not listen within [`WAIT`].
    pub async fn wait_listening(&mut self, addr: SocketAddr) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if TcpStream::connect(addr).await.is_ok() {
                return;
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.start_kill();
        let cmd = self.cmd.clone();
        let exit = Daemon {
            child: std::mem::replace(
                &mut self.child,
                tokio::process::Command::new("true").spawn().unwrap(),
            ),
            cmd,
        }
        .wait_exit(WAIT)
        .await;
        panic!("sluice never listened on {addr}{exit}");
    }
}

// ---------------------------------------------------------------------------------------
// The admin endpoint.

/// `GET path` on `addr` with extra header lines (each ending in `\r\n`); the response.
pub async fn admin_get(addr: SocketAddr, path: &str, extra: &str) -> RawResponse {
    let mut client = RawClient::connect(addr).await;
    client
        .send(format!(
            "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n{extra}\r\n"
        ))
        .await;
    client.read_response().await
}

/// The admin endpoint's `/metrics`, in the classic text format.
pub async fn metrics_text(admin: SocketAddr) -> String {
    let response = admin_get(admin, "/metrics", "").await;
    assert_eq!(response.status, 200, "{}", response.text());
    response.body_str()
}

/// The value of the sample written exactly `series` (name and labels), if present.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}
