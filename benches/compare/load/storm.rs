//! Handshake storm: connect, upgrade, one echo, close; `total` times with `inflight` at once.
//! Result: completed handshakes, failures and the elapsed time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;

use super::{connect, echo, first_error, runtime, DialArgs, Dialer, STEP_TIMEOUT};
use crate::child::{ready_then_wait_for_go, report};
use crate::Result;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    dial: DialArgs,
    #[arg(long, default_value_t = 10_000)]
    total: usize,
    #[arg(long, default_value_t = 50)]
    inflight: usize,
    #[arg(long, default_value_t = 16)]
    size: usize,
    /// Upper bound on the whole storm, in seconds.
    #[arg(long, default_value_t = 120.0)]
    max_secs: f64,
}

pub fn run(args: Args) -> Result<()> {
    let dialer = Dialer::new(&args.dial)?;
    runtime()?.block_on(async move {
        ready_then_wait_for_go(&format!("total={}", args.total))?;
        let next = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(args.max_secs);
        let payload: Arc<[u8]> = vec![0x5a; args.size].into();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..args.inflight {
            let (next, dialer, payload) = (next.clone(), dialer.clone(), payload.clone());
            let total = args.total;
            set.spawn(async move {
                let (mut ok, mut errors) = (0u64, Vec::new());
                while next.fetch_add(1, Ordering::Relaxed) < total && Instant::now() < deadline {
                    match one(&dialer, &payload).await {
                        Ok(()) => ok += 1,
                        Err(e) => errors.push(e),
                    }
                }
                (ok, errors)
            });
        }
        let (mut ok, mut errors) = (0u64, Vec::new());
        while let Some(done) = set.join_next().await {
            match done {
                Ok((n, errs)) => {
                    ok += n;
                    errors.extend(errs);
                }
                Err(e) => errors.push(format!("task: {e}")),
            }
        }
        let secs = start.elapsed().as_secs_f64();
        report(&[
            ("handshakes", ok.to_string()),
            ("secs", format!("{secs:.3}")),
            ("errors", errors.len().to_string()),
            ("first_error", first_error(&errors)),
        ]);
        Ok(())
    })
}

/// One connection's life: handshake, echo, close handshake, wait for the server's close.
async fn one(dialer: &Dialer, payload: &[u8]) -> Result<()> {
    let mut ws = connect(dialer).await?;
    echo(&mut ws, payload).await?;
    ws.send(tokio_tungstenite::tungstenite::Message::Close(None))
        .await
        .map_err(|e| format!("close: {e}"))?;
    let drain = async { while let Some(Ok(_)) = ws.next().await {} };
    tokio::time::timeout(STEP_TIMEOUT, drain)
        .await
        .map_err(|_| "no close from the server within the step timeout".to_owned())
}
