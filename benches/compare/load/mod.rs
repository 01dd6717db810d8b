//! The load generators: WebSocket clients on tokio-tungstenite, one thread each (they are
//! pinned to the load core next to the backends). Each is a subcommand of the bench binary
//! and speaks the `ready` / `go` / `result` protocol of [`crate::child`].

pub mod echo;
pub mod idle;
pub mod latency;
pub mod storm;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::Result;

/// The path every proxy routes to the WebSocket backend.
pub const WS_PATH: &str = "/ws";

/// How long one connect, handshake or echo may take before it counts as failed.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

pub type Ws = WebSocketStream<TcpStream>;

/// A single-threaded runtime: the load core is shared with the backends.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))
}

/// Connects to `addr` (`IP:PORT`) and upgrades to a WebSocket on [`WS_PATH`].
pub async fn connect(addr: &str) -> Result<Ws> {
    let step = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        tcp.set_nodelay(true)
            .map_err(|e| format!("nodelay {addr}: {e}"))?;
        let url = format!("ws://{addr}{WS_PATH}");
        let (ws, _) = tokio_tungstenite::client_async(url, tcp)
            .await
            .map_err(|e| format!("handshake via {addr}: {e}"))?;
        Ok(ws)
    };
    tokio::time::timeout(STEP_TIMEOUT, step)
        .await
        .map_err(|_| format!("connect and handshake via {addr}: timed out"))?
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
pub async fn open_many(addr: &str, count: usize, parallel: usize) -> (Vec<Ws>, Vec<String>) {
    let mut opened = Vec::with_capacity(count);
    let mut failed = Vec::new();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..count {
        if set.len() >= parallel {
            collect(set.join_next().await, &mut opened, &mut failed);
        }
        let addr = addr.to_owned();
        set.spawn(async move { connect(&addr).await });
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
