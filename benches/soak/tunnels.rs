//! The client side: opens the tunnels through sluice, keeps one echo loop per tunnel going
//! until told to stop, then closes each tunnel with a WebSocket Close and waits for the
//! reply. Counts everything in [`Stats`].
//!
//! Accounting: a message counts as sent when the soak starts writing it, and each sent
//! message ends as exactly one of echoed (the same text came back), mismatched (other data
//! came back) or lost (no answer within [`STEP_TIMEOUT`], or the tunnel broke). A tunnel
//! has one message in flight at a time, so when the stop comes every tunnel finishes its
//! current echo first and `sent == echoed + mismatched + lost` at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{interval_at, timeout, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::Result;

/// The path the soak opens its WebSockets on (sluice's route is `/`).
const PATH: &str = "/soak";

/// How long one connect and handshake, one echo, or one closing handshake may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// How many failure messages are kept for the report.
const KEEP_ERRORS: usize = 5;

pub type Ws = WebSocketStream<TcpStream>;

/// Counters shared by every tunnel task.
#[derive(Default)]
pub struct Stats {
    pub sent: AtomicU64,
    pub echoed: AtomicU64,
    pub mismatched: AtomicU64,
    pub lost: AtomicU64,
    /// Tunnels whose echo task is running.
    pub live: AtomicU64,
    /// Tunnels that broke before the soak asked them to close.
    pub broke: AtomicU64,
    /// Tunnels closed with a Close answered by a Close.
    pub closed_clean: AtomicU64,
    /// Tunnels whose closing handshake failed or timed out.
    pub close_failed: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Stats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn note(&self, error: String) {
        if let Ok(mut errors) = self.errors.lock() {
            if errors.len() < KEEP_ERRORS {
                errors.push(error);
            }
        }
    }

    /// The first failures noted (at most [`KEEP_ERRORS`]).
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

/// Connects to `addr` and upgrades to a WebSocket, within [`STEP_TIMEOUT`].
async fn connect(addr: &str) -> Result<Ws> {
    let step = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        tcp.set_nodelay(true)
            .map_err(|e| format!("nodelay {addr}: {e}"))?;
        let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}{PATH}"), tcp)
            .await
            .map_err(|e| format!("handshake via {addr}: {e}"))?;
        Ok(ws)
    };
    timeout(STEP_TIMEOUT, step)
        .await
        .map_err(|_| format!("connect and handshake via {addr}: timed out"))?
}

/// Opens `count` tunnels, `parallel` handshakes at a time. Calls `progress(opened, failed)`
/// at least every `every` while it runs. Returns the open tunnels and the failures.
pub async fn open_all(
    addr: &str,
    count: usize,
    parallel: usize,
    every: Duration,
    mut progress: impl FnMut(usize, usize),
) -> (Vec<Ws>, Vec<String>) {
    let mut opened = Vec::with_capacity(count);
    let mut failed = Vec::new();
    let mut set = JoinSet::new();
    let mut next_report = Instant::now() + every;
    let mut started = 0;
    while started < count || !set.is_empty() {
        if started < count && set.len() < parallel {
            let addr = addr.to_owned();
            set.spawn(async move { connect(&addr).await });
            started += 1;
            continue;
        }
        match set.join_next().await {
            Some(Ok(Ok(ws))) => opened.push(ws),
            Some(Ok(Err(e))) => failed.push(e),
            Some(Err(e)) => failed.push(format!("connect task: {e}")),
            None => {}
        }
        if Instant::now() >= next_report {
            progress(opened.len(), failed.len());
            next_report = Instant::now() + every;
        }
    }
    (opened, failed)
}

/// How one echo went.
enum Echo {
    Matched,
    Mismatched(String),
    /// No answer, or the tunnel broke: the message is lost and the tunnel is over.
    Lost(String),
}

/// Sends `text` and waits for the next data message, within [`STEP_TIMEOUT`].
async fn echo_once(ws: &mut Ws, text: &str) -> Echo {
    let round = async {
        if let Err(e) = ws.send(Message::Text(text.to_owned())).await {
            return Echo::Lost(format!("send: {e}"));
        }
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(got))) if got == text => return Echo::Matched,
                Some(Ok(Message::Text(got))) => {
                    return Echo::Mismatched(format!("sent {text:?}, got {got:?}"))
                }
                Some(Ok(Message::Binary(got))) => {
                    return Echo::Mismatched(format!(
                        "sent {text:?}, got {} binary bytes",
                        got.len()
                    ))
                }
                // tungstenite answers Pings itself; neither side sends anything else.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(frame))) => {
                    return Echo::Lost(format!("closed by the peer while echoing: {frame:?}"))
                }
                Some(Err(e)) => return Echo::Lost(format!("receive: {e}")),
                None => return Echo::Lost("connection ended while echoing".into()),
            }
        }
    };
    match timeout(STEP_TIMEOUT, round).await {
        Ok(echo) => echo,
        Err(_) => Echo::Lost(format!("no echo within {STEP_TIMEOUT:?}")),
    }
}

/// One tunnel's life from here on: a numbered text message every `period` from `first`
/// on, each echo checked, until `stop`; then a Close and its answer. Keeps `stats`.
pub async fn run_tunnel(
    id: usize,
    mut ws: Ws,
    first: Instant,
    period: Duration,
    stop: CancellationToken,
    stats: Arc<Stats>,
) {
    let mut tick = interval_at(first, period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut seq: u64 = 0;
    let broke = loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break None,
            _ = tick.tick() => {}
        }
        seq += 1;
        let text = format!("soak tunnel {id} message {seq}");
        Stats::add(&stats.sent);
        match echo_once(&mut ws, &text).await {
            Echo::Matched => Stats::add(&stats.echoed),
            Echo::Mismatched(e) => {
                Stats::add(&stats.mismatched);
                stats.note(format!("tunnel {id}: {e}"));
            }
            Echo::Lost(e) => {
                Stats::add(&stats.lost);
                break Some(e);
            }
        }
    };
    match broke {
        Some(e) => {
            Stats::add(&stats.broke);
            stats.note(format!("tunnel {id} broke: {e}"));
        }
        None => match close(&mut ws).await {
            Ok(()) => Stats::add(&stats.closed_clean),
            Err(e) => {
                Stats::add(&stats.close_failed);
                stats.note(format!("tunnel {id} close: {e}"));
            }
        },
    }
    stats.live.fetch_sub(1, Ordering::Relaxed);
}

/// Sends Close 1000 and waits for the peer's Close, within [`STEP_TIMEOUT`].
async fn close(ws: &mut Ws) -> Result<()> {
    let handshake = async {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "soak over".into(),
        };
        ws.close(Some(frame))
            .await
            .map_err(|e| format!("send Close: {e}"))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) => return Ok(()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("waiting for the Close reply: {e}")),
                None => return Err("connection ended without a Close reply".into()),
            }
        }
    };
    timeout(STEP_TIMEOUT, handshake)
        .await
        .map_err(|_| format!("no Close reply within {STEP_TIMEOUT:?}"))?
}
