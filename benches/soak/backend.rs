//! The echo backend: a tokio-tungstenite WebSocket server on `127.0.0.1:0` that sends every
//! data message back as it came. It runs as a child process of the soak (the same binary,
//! `--backend`), so that its descriptors (one per tunnel) count against its own limit and
//! not the soak client's. It prints `ready ADDR` once listening, and exits when its stdin
//! closes (the soak finished or died) or after `--max-life` seconds.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::Result;

pub fn run(max_life: Duration) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("backend runtime: {e}"))?;
    rt.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| format!("backend: bind 127.0.0.1:0: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("backend: local address: {e}"))?;
        let mut stdout = tokio::io::stdout();
        stdout
            .write_all(format!("ready {addr}\n").as_bytes())
            .await
            .and(stdout.flush().await)
            .map_err(|e| format!("backend: stdout: {e}"))?;
        tokio::select! {
            () = accept_loop(listener) => {}
            () = stdin_closed() => {}
            () = tokio::time::sleep(max_life) => eprintln!("backend: --max-life passed; exiting"),
        }
        Ok(())
    })
}

/// Accepts connections, each on its own task. Accept errors (running out of descriptors)
/// are logged, at most once a second, and retried after a pause.
async fn accept_loop(listener: TcpListener) {
    let mut last_log: Option<tokio::time::Instant> = None;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(echo(stream));
            }
            Err(e) => {
                let due = match last_log {
                    None => true,
                    Some(t) => t.elapsed() >= Duration::from_secs(1),
                };
                if due {
                    eprintln!("backend: accept: {e}");
                    last_log = Some(tokio::time::Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn echo(stream: TcpStream) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    // Echo data messages; keep polling after a Close so tungstenite sends its reply.
    while let Some(Ok(msg)) = ws.next().await {
        if matches!(msg, Message::Text(_) | Message::Binary(_)) && ws.send(msg).await.is_err() {
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
