//! Sequential operations on one connection at a time, for the counts (instructions and
//! system calls per operation): `gets` plain GETs on one keep-alive connection, then
//! `echoes` 64-byte echoes on one WebSocket, then `sessions` times connect, upgrade, one
//! 64-byte echo, close handshake, wait for the server's close. Each operation waits for
//! the previous one, so the proxy handles exactly one at a time. Result: how many of each
//! completed.

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use super::{connect, echo, runtime, DialArgs, Dialer, STEP_TIMEOUT};
use crate::child::report;
use crate::Result;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    dial: DialArgs,
    #[arg(long, default_value_t = 200)]
    gets: usize,
    #[arg(long, default_value_t = 200)]
    echoes: usize,
    #[arg(long, default_value_t = 200)]
    sessions: usize,
    #[arg(long, default_value_t = 64)]
    size: usize,
}

pub fn run(args: Args) -> Result<()> {
    let dialer = Dialer::new(&args.dial)?;
    runtime()?.block_on(async move {
        let payload = vec![0x5a; args.size];
        let step = |what: &'static str, i: usize| move |e: String| format!("{what} {i}: {e}");
        let mut http = Http::connect(&dialer.addr).await?;
        for i in 0..args.gets {
            http.get().await.map_err(step("GET", i))?;
        }
        drop(http);
        let mut ws = connect(&dialer).await?;
        for i in 0..args.echoes {
            echo(&mut ws, &payload).await.map_err(step("echo", i))?;
        }
        close(ws).await?;
        for i in 0..args.sessions {
            let mut ws = connect(&dialer).await.map_err(step("session", i))?;
            echo(&mut ws, &payload).await.map_err(step("session", i))?;
            close(ws).await.map_err(step("session", i))?;
        }
        report(&[
            ("gets", args.gets.to_string()),
            ("echoes", args.echoes.to_string()),
            ("sessions", args.sessions.to_string()),
        ]);
        Ok(())
    })
}

/// The close handshake, then the wait for the server's close.
async fn close(mut ws: super::Ws) -> Result<()> {
    ws.send(Message::Close(None))
        .await
        .map_err(|e| format!("close: {e}"))?;
    let drain = async { while let Some(Ok(_)) = ws.next().await {} };
    tokio::time::timeout(STEP_TIMEOUT, drain)
        .await
        .map_err(|_| "no close from the server within the step timeout".to_owned())
}

/// One HTTP/1.1 keep-alive connection, written and read by hand: a GET, then its answer
/// (headers and a `Content-Length` body).
struct Http {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Http {
    async fn connect(addr: &str) -> Result<Http> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("nodelay {addr}: {e}"))?;
        Ok(Http {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    async fn get(&mut self) -> Result<()> {
        tokio::time::timeout(STEP_TIMEOUT, self.get_inner())
            .await
            .map_err(|_| "no answer within the step timeout".to_owned())?
    }

    async fn get_inner(&mut self) -> Result<()> {
        self.stream
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                if !head.starts_with("http/1.1 200") {
                    return Err(format!("answer: {}", head.lines().next().unwrap_or("")));
                }
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or("answer without Content-Length")?;
                if self.buf.len() >= end + 4 + length {
                    return Ok(());
                }
            }
            let n = self
                .stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("closed by the proxy".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
