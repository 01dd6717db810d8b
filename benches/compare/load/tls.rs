//! TLS handshakes: `total` connections, `inflight` at once. Each connects, does a TLS 1.3
//! handshake, sends one HTTP/1.1 request (`GET /`, answered with 64 bytes by the HTTP
//! backend), reads the answer, sends close_notify and its FIN, and waits for the server to
//! close. Result: completed connections, how many handshakes were full and how many
//! resumed, failures, the elapsed time, and what was negotiated.
//!
//! Without `--resume` the client keeps no sessions: every handshake is full (ECDHE and
//! the server's certificate signature). With `--resume` each of the `inflight` tasks has a
//! client config of its own (its own ticket store) and does one full handshake before
//! `ready`, outside the measured window; after that, each of its connections offers a
//! ticket from the previous ones, and `handshake_kind()` says whether the server took it.
//! A TLS 1.3 ticket is used once; every server here sends new ones after each handshake,
//! so the store does not run dry (the result's `full` count shows it if it does).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::HandshakeKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::{first_error, runtime, STEP_TIMEOUT};
use crate::child::{ready_then_wait_for_go, report};
use crate::tls::{client_config, describe, server_name, SERVER_NAME};
use crate::Result;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    addr: String,
    /// The CA (PEM) the proxies' certificate is signed by.
    #[arg(long)]
    tls_ca: PathBuf,
    #[arg(long, default_value_t = 5000)]
    total: usize,
    #[arg(long, default_value_t = 50)]
    inflight: usize,
    /// Resume: offer the session tickets of earlier connections.
    #[arg(long)]
    resume: bool,
    /// Upper bound on the whole run, in seconds.
    #[arg(long, default_value_t = 120.0)]
    max_secs: f64,
}

/// What one task did.
#[derive(Default)]
struct Tally {
    full: u64,
    resumed: u64,
    errors: Vec<String>,
    negotiated: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    runtime()?.block_on(async move {
        let inflight = args.inflight.max(1);
        // One connector for all without resumption; one per task with it, warmed up by one
        // full handshake so that every measured connection has a ticket to offer.
        let mut connectors = Vec::with_capacity(inflight);
        if args.resume {
            for _ in 0..inflight {
                connectors.push(TlsConnector::from(client_config(&args.tls_ca, true)?));
            }
            let mut warm = tokio::task::JoinSet::new();
            for connector in connectors.clone() {
                let addr = args.addr.clone();
                warm.spawn(async move { one(&connector, &addr).await });
            }
            while let Some(done) = warm.join_next().await {
                done.map_err(|e| format!("warm-up task: {e}"))?
                    .map_err(|e| format!("warm-up handshake: {e}"))?;
            }
        } else {
            let shared = TlsConnector::from(client_config(&args.tls_ca, false)?);
            connectors.resize(inflight, shared);
        }
        ready_then_wait_for_go(&format!("total={} resume={}", args.total, args.resume))?;
        let next = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(args.max_secs);
        let mut set = tokio::task::JoinSet::new();
        for connector in connectors {
            let (next, addr, total) = (next.clone(), args.addr.clone(), args.total);
            set.spawn(async move {
                let mut tally = Tally::default();
                while next.fetch_add(1, Ordering::Relaxed) < total && Instant::now() < deadline {
                    match one(&connector, &addr).await {
                        Ok((kind, negotiated)) => {
                            if kind == Some(HandshakeKind::Resumed) {
                                tally.resumed += 1;
                            } else {
                                tally.full += 1;
                            }
                            tally.negotiated.get_or_insert(negotiated);
                        }
                        Err(e) => tally.errors.push(e),
                    }
                }
                tally
            });
        }
        let mut all = Tally::default();
        while let Some(done) = set.join_next().await {
            match done {
                Ok(t) => {
                    all.full += t.full;
                    all.resumed += t.resumed;
                    all.errors.extend(t.errors);
                    if all.negotiated.is_none() {
                        all.negotiated = t.negotiated;
                    }
                }
                Err(e) => all.errors.push(format!("task: {e}")),
            }
        }
        let secs = start.elapsed().as_secs_f64();
        report(&[
            ("handshakes", (all.full + all.resumed).to_string()),
            ("full", all.full.to_string()),
            ("resumed", all.resumed.to_string()),
            ("secs", format!("{secs:.3}")),
            ("errors", all.errors.len().to_string()),
            ("tls", all.negotiated.unwrap_or_else(|| "-".into())),
            ("first_error", first_error(&all.errors)),
        ]);
        Ok(())
    })
}

/// One connection's life: handshake, one request and its answer, close_notify, and the
/// server's close. Returns the kind of handshake and what was negotiated.
async fn one(connector: &TlsConnector, addr: &str) -> Result<(Option<HandshakeKind>, String)> {
    let step = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        tcp.set_nodelay(true)
            .map_err(|e| format!("nodelay {addr}: {e}"))?;
        let mut tls = connector
            .connect(server_name(), tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let (kind, negotiated) = {
            let conn = tls.get_ref().1;
            (conn.handshake_kind(), describe(conn))
        };
        let request = format!("GET / HTTP/1.1\r\nHost: {SERVER_NAME}\r\n\r\n");
        tls.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send request: {e}"))?;
        read_response(&mut tls).await?;
        tls.shutdown()
            .await
            .map_err(|e| format!("close_notify: {e}"))?;
        // The server's close_notify reads as the end; a close without one, or a reset,
        // ends it too.
        let mut sink = [0u8; 256];
        while let Ok(n) = tls.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
        Ok((kind, negotiated))
    };
    tokio::time::timeout(STEP_TIMEOUT, step)
        .await
        .map_err(|_| "connection not done within the step timeout".to_owned())?
}

/// Reads one response with a `Content-Length` body; fails unless its status is 200.
async fn read_response(tls: &mut TlsStream<TcpStream>) -> Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = tls
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read response: {e}"))?;
        if n == 0 {
            return Err("closed before a whole response".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]);
        let status = head.lines().next().unwrap_or_default();
        if status.split_whitespace().nth(1) != Some("200") {
            return Err(format!("answer: {status}"));
        }
        let length = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .ok_or_else(|| format!("answer without Content-Length: {status}"))?;
        if buf.len() >= end + 4 + length {
            return Ok(());
        }
    }
}
