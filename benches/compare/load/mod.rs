//! The load generators: WebSocket clients on tokio-tungstenite, over TCP or over TLS
//! (tokio-rustls, with `--tls-ca`), and a TLS handshake client; one thread each (they are
//! pinned to the load core next to the backends). Each is a subcommand of the bench binary
//! and speaks the `ready` / `go` / `result` protocol of [`crate::child`].

pub mod echo;
pub mod idle;
pub mod latency;
pub mod seq;
pub mod storm;
pub mod tls;

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::Result;

/// The path every proxy routes to the WebSocket backend.
pub const WS_PATH: &str = "/ws";

/// How long one connect, handshake or echo may take before it counts as failed.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

pub type Ws = WebSocketStream<Conn>;

/// A single-threaded runtime: the load core is shared with the backends.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))
}

/// Where the WebSocket load goes, as the command line of a load generator says it.
#[derive(clap::Args)]
pub struct DialArgs {
    /// `IP:PORT` of the proxy (or of the backend, for the direct baseline).
    #[arg(long)]
    addr: String,
    /// Speak TLS (`wss://`), trusting the CA in this PEM file; every handshake is a full
    /// one (no resumption).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
}

/// How to open one WebSocket: the address, and the TLS client when it is `wss://`.
#[derive(Clone)]
pub struct Dialer {
    addr: String,
    tls: Option<TlsConnector>,
}

impl Dialer {
    pub fn new(args: &DialArgs) -> Result<Dialer> {
        let tls = match &args.tls_ca {
            Some(ca) => Some(TlsConnector::from(crate::tls::client_config(ca, false)?)),
            None => None,
        };
        Ok(Dialer {
            addr: args.addr.clone(),
            tls,
        })
    }

    /// TCP, then TLS when it is `wss://`.
    async fn stream(&self) -> Result<Conn> {
        let addr = &self.addr;
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        tcp.set_nodelay(true)
            .map_err(|e| format!("nodelay {addr}: {e}"))?;
        match &self.tls {
            None => Ok(Conn::Plain(tcp)),
            Some(tls) => {
                let stream = tls
                    .connect(crate::tls::server_name(), tcp)
                    .await
                    .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
                Ok(Conn::Tls(Box::new(stream)))
            }
        }
    }
}

/// Connects and upgrades to a WebSocket on [`WS_PATH`].
pub async fn connect(dialer: &Dialer) -> Result<Ws> {
    let addr = &dialer.addr;
    let step = async {
        let stream = dialer.stream().await?;
        let url = match stream {
            Conn::Plain(_) => format!("ws://{addr}{WS_PATH}"),
            Conn::Tls(_) => format!("wss://{addr}{WS_PATH}"),
        };
        let (ws, _) = tokio_tungstenite::client_async(url, stream)
            .await
            .map_err(|e| format!("handshake via {addr}: {e}"))?;
        Ok(ws)
    };
    tokio::time::timeout(STEP_TIMEOUT, step)
        .await
        .map_err(|_| format!("connect and handshake via {addr}: timed out"))?
}

/// A client connection: plain TCP, or TLS over TCP.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Sends one binary message and waits for its echo.
pub async fn echo(ws: &mut Ws, payload: &[u8]) -> Result<()> {
    ws.send(Message::Binary(payload.to_vec()))
        .await
        .map_err(|e| format!("send: {e}"))?;
    match tokio::time::timeout(STEP_TIMEOUT, ws.next()).await {
        Ok(Some(Ok(Message::Binary(got)))) if got.len() == payload.len() => Ok(()),
        Ok(Some(Ok(other))) => Err(format!("unexpected answer: {other:?}")),
        Ok(Some(Err(e))) => Err(format!("receive: {e}")),
        Ok(None) => Err("closed by the peer".into()),
        Err(_) => Err("no echo within the step timeout".into()),
    }
}

/// Opens `count` connections, `parallel` at a time; returns the open ones and the failures.
pub async fn open_many(dialer: &Dialer, count: usize, parallel: usize) -> (Vec<Ws>, Vec<String>) {
    let mut opened = Vec::with_capacity(count);
    let mut failed = Vec::new();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..count {
        if set.len() >= parallel {
            collect(set.join_next().await, &mut opened, &mut failed);
        }
        let dialer = dialer.clone();
        set.spawn(async move { connect(&dialer).await });
    }
    while let Some(done) = set.join_next().await {
        collect(Some(done), &mut opened, &mut failed);
    }
    (opened, failed)
}

fn collect(
    done: Option<std::result::Result<Result<Ws>, tokio::task::JoinError>>,
    opened: &mut Vec<Ws>,
    failed: &mut Vec<String>,
) {
    match done {
        Some(Ok(Ok(ws))) => opened.push(ws),
        Some(Ok(Err(e))) => failed.push(e),
        Some(Err(e)) => failed.push(format!("task: {e}")),
        None => {}
    }
}

/// The first distinct failure messages, for a `result` line (no spaces, so it stays one field).
pub fn first_error(failed: &[String]) -> String {
    failed
        .first()
        .map(|e| e.replace(char::is_whitespace, "_"))
        .unwrap_or_else(|| "-".into())
}
