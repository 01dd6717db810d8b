//! Closed-loop WebSocket echo: `conns` connections each send a message, wait for its echo,
//! and repeat until `secs` have passed. Result: echoed messages and the elapsed time.

use std::time::Duration;

use tokio::time::Instant;

use super::{echo, first_error, open_many, runtime, DialArgs, Dialer};
use crate::child::{ready_then_wait_for_go, report};
use crate::Result;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    dial: DialArgs,
    #[arg(long, default_value_t = 50)]
    conns: usize,
    #[arg(long, default_value_t = 64)]
    size: usize,
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
}

pub fn run(args: Args) -> Result<()> {
    let dialer = Dialer::new(&args.dial)?;
    runtime()?.block_on(async move {
        let (conns, failed) = open_many(&dialer, args.conns, args.conns).await;
        if conns.len() < args.conns {
            return Err(format!(
                "opened {} of {} connections: {}",
                conns.len(),
                args.conns,
                first_error(&failed)
            ));
        }
        ready_then_wait_for_go(&format!("conns={}", conns.len()))?;
        let payload = vec![0x5a; args.size];
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(args.secs);
        let mut set = tokio::task::JoinSet::new();
        for mut ws in conns {
            let payload = payload.clone();
            set.spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    if let Err(e) = echo(&mut ws, &payload).await {
                        return (n, Some(e));
                    }
                    n += 1;
                }
                (n, None)
            });
        }
        let mut messages = 0;
        let mut errors = Vec::new();
        while let Some(done) = set.join_next().await {
            match done {
                Ok((n, err)) => {
                    messages += n;
                    errors.extend(err);
                }
                Err(e) => errors.push(format!("task: {e}")),
            }
        }
        let secs = start.elapsed().as_secs_f64();
        report(&[
            ("messages", messages.to_string()),
            ("secs", format!("{secs:.3}")),
            ("errors", errors.len().to_string()),
            ("first_error", first_error(&errors)),
        ]);
        Ok(())
    })
}
