//! Idle tunnels: on `go`, opens `count` WebSockets (`parallel` handshakes at a time), sends
//! one echo on each so every tunnel has carried data, reports, then holds them all without
//! traffic until stdin closes (or `max_hold` passes).

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use super::{echo, first_error, open_many, runtime, DialArgs, Dialer};
use crate::child::{ready_then_wait_for_go, report};
use crate::Result;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    dial: DialArgs,
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    #[arg(long, default_value_t = 100)]
    parallel: usize,
    /// Upper bound on holding the tunnels, in seconds.
    #[arg(long, default_value_t = 300)]
    max_hold: u64,
}

pub fn run(args: Args) -> Result<()> {
    let dialer = Dialer::new(&args.dial)?;
    runtime()?.block_on(async move {
        ready_then_wait_for_go(&format!("count={}", args.count))?;
        let start = Instant::now();
        let (mut open, mut failed) = open_many(&dialer, args.count, args.parallel).await;
        let payload = [0x5a; 16];
        let mut kept = Vec::with_capacity(open.len());
        for mut ws in open.drain(..) {
            match echo(&mut ws, &payload).await {
                Ok(()) => kept.push(ws),
                Err(e) => failed.push(e),
            }
        }
        report(&[
            ("open", kept.len().to_string()),
            ("failed", failed.len().to_string()),
            ("secs", format!("{:.3}", start.elapsed().as_secs_f64())),
            ("first_error", first_error(&failed)),
        ]);
        let hold = async {
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 64];
            while let Ok(n) = stdin.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(args.max_hold), hold).await;
        drop(kept);
        Ok(())
    })
}
