//! The backends every proxy forwards to: a hyper HTTP/1.1 server answering any request with
//! a small fixed body, and a tokio-tungstenite WebSocket echo server. One process, one
//! thread (it is pinned to the load core), until stdin closes or `max_life` passes.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::Result;

/// The plain HTTP answer: 64 bytes.
pub const BODY: &[u8; 64] = b"sluice bench: a small plain HTTP body, sixty-four bytes long...\n";

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    http_port: u16,
    #[arg(long)]
    ws_port: u16,
    /// Upper bound on the process's life, in seconds.
    #[arg(long, default_value_t = 3600)]
    max_life: u64,
}

pub fn run(args: Args) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(async move {
        let http = TcpListener::bind(("127.0.0.1", args.http_port))
            .await
            .map_err(|e| format!("backend: bind HTTP port {}: {e}", args.http_port))?;
        let ws = TcpListener::bind(("127.0.0.1", args.ws_port))
            .await
            .map_err(|e| format!("backend: bind WebSocket port {}: {e}", args.ws_port))?;
        println!("ready http={} ws={}", args.http_port, args.ws_port);
        tokio::select! {
            () = accept_loop(http, serve_http) => {}
            () = accept_loop(ws, serve_ws) => {}
            () = stdin_closed() => {}
            () = tokio::time::sleep(Duration::from_secs(args.max_life)) => {}
        }
        Ok(())
    })
}

/// Accepts connections and hands each to `serve` on its own task. Accept errors (such as
/// running out of descriptors) are logged and retried after a pause.
async fn accept_loop<F, Fut>(listener: TcpListener, serve: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream));
            }
            Err(e) => {
                eprintln!("backend: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_http(stream: TcpStream) {
    let service = service_fn(|_req: Request<hyper::body::Incoming>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(BODY))))
    });
    let _ = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn serve_ws(stream: TcpStream) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    // Echo data frames; keep polling after a Close so tungstenite sends its reply.
    while let Some(Ok(msg)) = ws.next().await {
        if matches!(msg, Message::Binary(_) | Message::Text(_)) && ws.send(msg).await.is_err() {
            return;
        }
    }
}

async fn stdin_closed() {
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}
