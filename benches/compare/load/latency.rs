//! WebSocket echo at a fixed rate: `conns` connections share `rate` messages/s, each on its
//! own timer. Every message carries the time it was sent; the echo's arrival gives its round
//! trip. The first `warmup` seconds are not recorded. Result: percentiles in µs.
//!
//! Tokio's timers tick in milliseconds, so sends leave in small bursts on each tick (about
//! `rate / 1000` per tick), and latency is counted from the actual send, not the schedule:
//! fine at a moderate rate that nothing here saturates, not a coordinated-omission-safe
//! measurement of an overloaded system.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

use super::{first_error, open_many, runtime, DialArgs, Dialer, STEP_TIMEOUT};
use crate::child::{ready_then_wait_for_go, report};
use crate::Result;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    dial: DialArgs,
    #[arg(long, default_value_t = 10)]
    conns: usize,
    /// Messages per second, all connections together.
    #[arg(long, default_value_t = 5000)]
    rate: u32,
    #[arg(long, default_value_t = 64)]
    size: usize,
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
}

pub fn run(args: Args) -> Result<()> {
    let dialer = Dialer::new(&args.dial)?;
    runtime()?.block_on(async move {
        let (conns, failed) = open_many(&dialer, args.conns, args.conns).await;
        if conns.len() < args.conns || args.conns == 0 || args.rate == 0 {
            return Err(format!(
                "opened {} of {} connections: {}",
                conns.len(),
                args.conns,
                first_error(&failed)
            ));
        }
        ready_then_wait_for_go(&format!("conns={}", conns.len()))?;
        let period = Duration::from_secs_f64(args.conns as f64 / f64::from(args.rate));
        let per_conn = (args.secs / period.as_secs_f64()).floor() as u64;
        let base = Instant::now();
        let warmup = Duration::from_secs_f64(args.warmup);
        let size = args.size.max(8);
        let mut set = tokio::task::JoinSet::new();
        for (k, ws) in conns.into_iter().enumerate() {
            let offset = period.mul_f64(k as f64 / args.conns as f64);
            set.spawn(one_connection(
                ws,
                base + offset,
                period,
                per_conn,
                size,
                base,
                warmup,
            ));
        }
        let mut all = Vec::new();
        let mut errors = Vec::new();
        while let Some(done) = set.join_next().await {
            match done {
                Ok((lat, err)) => {
                    all.extend(lat);
                    errors.extend(err);
                }
                Err(e) => errors.push(format!("task: {e}")),
            }
        }
        all.sort_unstable();
        let pct = |p: f64| -> String {
            if all.is_empty() {
                return "nan".into();
            }
            let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
            format!("{:.1}", all[i] as f64 / 1000.0)
        };
        report(&[
            ("samples", all.len().to_string()),
            ("p50_us", pct(0.50)),
            ("p90_us", pct(0.90)),
            ("p99_us", pct(0.99)),
            ("p999_us", pct(0.999)),
            ("errors", errors.len().to_string()),
            ("first_error", first_error(&errors)),
        ]);
        Ok(())
    })
}

/// Sends `count` messages, one per `period` from `first`, and collects the round trips (ns)
/// of those sent after `warmup`.
async fn one_connection(
    ws: super::Ws,
    first: Instant,
    period: Duration,
    count: u64,
    size: usize,
    base: Instant,
    warmup: Duration,
) -> (Vec<u64>, Option<String>) {
    let (mut tx, mut rx) = ws.split();
    let writer = async move {
        let mut tick = tokio::time::interval_at(first, period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut payload = vec![0u8; size];
        for _ in 0..count {
            tick.tick().await;
            let sent = base.elapsed().as_nanos() as u64;
            payload[..8].copy_from_slice(&sent.to_le_bytes());
            tx.send(Message::Binary(payload.clone()))
                .await
                .map_err(|e| format!("send: {e}"))?;
        }
        Ok::<_, String>(tx)
    };
    let reader = async move {
        let mut lat = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let msg = match tokio::time::timeout(STEP_TIMEOUT, rx.next()).await {
                Ok(Some(Ok(Message::Binary(m)))) if m.len() >= 8 => m,
                Ok(Some(Ok(_))) => return (lat, Some("unexpected message".to_owned())),
                Ok(Some(Err(e))) => return (lat, Some(format!("receive: {e}"))),
                Ok(None) => return (lat, Some("closed by the peer".to_owned())),
                Err(_) => return (lat, Some("no echo within the step timeout".to_owned())),
            };
            let now = base.elapsed().as_nanos() as u64;
            let mut stamp = [0u8; 8];
            stamp.copy_from_slice(&msg[..8]);
            let sent = u64::from_le_bytes(stamp);
            if Duration::from_nanos(sent) >= warmup {
                lat.push(now.saturating_sub(sent));
            }
        }
        (lat, None)
    };
    let (written, (lat, read_err)) = tokio::join!(writer, reader);
    (lat, read_err.or(written.err()))
}
