//! The tunnel: after a checked `101`, bytes are copied both ways unchanged until one side
//! closes (a half-close is passed on), `idle_timeout` passes with no byte moving, or
//! `shutdown_timeout` cuts it.
//!
//! Tunnels are long-lived and mostly idle, so an idle tunnel holds no buffer: the copy
//! waits for readiness on the raw sockets, then reads into a per-thread scratch buffer and
//! writes straight on. Only bytes the destination could not take yet are kept, in a buffer
//! of their own that is freed once written. The tunnel gets both sides as plain streams
//! (hyper's `Upgraded` unwrapped by their owners, [`crate::server`] and
//! [`crate::upstream::connect`]) with the bytes hyper had already read past each head
//! (RFC 9931: what the client sent right after its handshake, or the server right after
//! its `101`), which are forwarded before anything else, so nothing is lost.
//!
//! Why the loop is shaped this way, measured with callgrind per 64 B echo through one
//! tunnel (client → sluice → echo backend and back; 6 system calls either way):
//! - No clock read per read: the idle timeout counts reads and looks at the count 16 times
//!   per `idle_timeout` (7,164 → 6,959 instructions).
//! - One waker per wake-up reason while bytes move: a wake-up polls only the direction
//!   whose socket fired, and the idle timer and shutdown cut only when they fired, instead
//!   of `select!` polling everything (6,959 → 5,735). Over TLS both directions are polled.
//! - An idle tunnel drops those wakers (they cost memory per tunnel) and goes back to the
//!   task's own waker. What is left per echo is tokio's: task poll and wake-up, the timer
//!   driver's clock reads on each park, and readiness registration.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::frames::{Frames, Sender};
use crate::limits::{ConnPermit, TunnelPermit};
use crate::metrics::{CloseCode, RouteMetrics};
use crate::shutdown::Shutdown;
use crate::stream::Stream;
use crate::upstream::Active;

/// One WebSocket tunnel about to open: who it is for and how long it may idle.
pub struct Tunnel {
    pub client: SocketAddr,
    /// The request's Host and then its target, copied out of hyper's read buffer in one
    /// allocation (holding a slice of it would keep the whole buffer alive for the
    /// tunnel's life); the Host is its first `host_len` bytes.
    pub host_target: Box<str>,
    pub host_len: usize,
    pub route: Arc<str>,
    /// The route's counters: tunnels open and opened, bytes, duration.
    pub metrics: Arc<RouteMetrics>,
    pub server: Arc<str>,
    pub idle_timeout: Duration,
    /// The route's `max_message_bytes`.
    pub max_message_bytes: Option<u64>,
    /// The route's `ping_interval`.
    pub ping_interval: Option<Duration>,
    /// Held until the tunnel closes: a tunnel counts against the connection limits. Taken
    /// over from its connection, which has none left once it upgraded.
    pub permit: Option<ConnPermit>,
    /// Held until the tunnel closes: its place under `max_tunnels_per_ip`.
    pub tunnel_permit: Option<TunnelPermit>,
    /// Held until the tunnel closes: a tunnel counts as open on its server (`least_conn`).
    pub active: Active,
}

/// Why a tunnel ended, for the log.
#[derive(Debug, Clone, Copy)]
enum End {
    Closed,
    Error,
    Idle,
    Shutdown,
    /// Its server was marked `drain`.
    Drain,
    /// A message went over `max_message_bytes`; the side that sent it.
    TooBig(Initiator),
    /// A side sent nothing for a `ping_interval` after sluice pinged it.
    Dead,
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Error => "error",
            End::Idle => "idle_timeout",
            End::Shutdown => "shutdown",
            End::Drain => "server_drain",
            End::TooBig(_) => "max_message_bytes",
            End::Dead => "ping_timeout",
        }
    }
}

impl Tunnel {
    /// Opens the tunnel (counted from here) on both sides' streams and the bytes hyper read
    /// past each head: the copy state that [`Tunnel::run`] then drives.
    ///
    /// Built apart from `run`, and both borrowed rather than moved, because an async fn
    /// stores its by-value arguments beside its locals for its whole life: a tunnel, its
    /// streams and its copy state would each be held twice by every idle tunnel's task.
    pub fn open<'a>(
        &'a self,
        (client, from_client): (Stream, Bytes),
        (upstream, from_upstream): (Stream, Bytes),
        activity: &'a Activity,
    ) -> Copy<'a> {
        self.metrics.tunnel_opened();
        Copy {
            client,
            upstream,
            up: Direction::new(
                from_client,
                (Sender::Client, self.max_message_bytes),
                &self.metrics.bytes_in,
                &self.metrics.messages_in,
            ),
            down: Direction::new(
                from_upstream,
                (Sender::Server, self.max_message_bytes),
                &self.metrics.bytes_out,
                &self.metrics.messages_out,
            ),
            activity,
            metrics: &self.metrics,
            up_done: false,
            down_done: false,
            first: None,
            sent_code: None,
        }
    }

    /// Copies between the two sides until the tunnel ends, and logs it. `copy` is what
    /// [`Tunnel::open`] made of this tunnel, and `activity` what it counts reads in.
    pub async fn run(&self, copy: &mut Copy<'_>, activity: &Activity, shutdown: &Shutdown) {
        let start = Instant::now();
        let (mut idle, idle_sleep) = Idle::new(self.idle_timeout, activity);
        let cut = shutdown.cut();
        let drained = self.active.drained();
        tokio::pin!(idle_sleep, cut, drained);
        let mut pinger = self.ping_interval.map(Pinger::new);
        // While bytes move, one waker per wake-up reason; an idle tunnel goes back to the
        // task's own waker (polling everything on a wake-up), so it holds no more memory.
        // Inline rather than boxed: one allocation fewer per tunnel that moved bytes lately.
        let mut wakes: Option<Wakes> = None;
        // `activity.reads` when the tunnel last went idle, and at the idle timer's last tick.
        let mut quiet_reads = 0;
        let mut tick_reads = 0;
        let end = std::future::poll_fn(|cx| {
            let reads = activity.reads.load(Ordering::Relaxed);
            let stale = wakes.as_ref().is_some_and(|w| !w.up.0.task.will_wake(cx.waker()));
            if stale || (wakes.is_none() && reads != quiet_reads) {
                // All flags start set, so everything is polled (and registered) now.
                wakes = Some(Wakes::new(cx.waker()));
            }
            if let Poll::Ready(result) = copy.poll(cx, wakes.as_ref()) {
                return Poll::Ready(result.map(|()| copy.ended()));
            }
            let timers = match wakes.as_ref() {
                Some(w) => Wakes::take(&w.timers.0),
                None => true,
            };
            if !timers {
                return Poll::Pending;
            }
            let reads = activity.reads.load(Ordering::Relaxed);
            if wakes.is_some() && reads == tick_reads {
                // Nothing moved since the idle timer's last tick: back to the task's
                // waker, which everything registers with again right now.
                wakes = None;
                quiet_reads = reads;
                if let Poll::Ready(result) = copy.poll(cx, None) {
                    return Poll::Ready(result.map(|()| copy.ended()));
                }
            }
            tick_reads = reads;
            let mut cx = Context::from_waker(wakes.as_ref().map_or(cx.waker(), |w| &w.timers.1));
            if cut.as_mut().poll(&mut cx).is_ready() {
                return Poll::Ready(Ok(End::Shutdown));
            }
            if idle.poll(idle_sleep.as_mut(), &mut cx, activity).is_ready() {
                return Poll::Ready(Ok(End::Idle));
            }
            if drained.as_mut().poll(&mut cx).is_ready() {
                return Poll::Ready(Ok(End::Drain));
            }
            if let Some(pinger) = pinger.as_mut() {
                while pinger.timer.poll_tick(&mut cx).is_ready() {
                    if pinger.tick(copy) {
                        return Poll::Ready(Ok(End::Dead));
                    }
                }
                // A Ping just queued is written now.
                if let Poll::Ready(result) = copy.poll(&mut Context::from_waker(cx.waker()), None) {
                    return Poll::Ready(result.map(|()| copy.ended()));
                }
            }
            Poll::Pending
        })
        .await
        .unwrap_or_else(|err| {
            tracing::debug!(client = %self.client, route = &*self.route, cause = %err, "tunnel ended with an error");
            End::Error
        });
        // The closing handshake's state (two frames, its timer) is boxed while it runs:
        // inline, it would widen every tunnel's task by its size for the tunnel's life.
        let codes = match end {
            End::Idle | End::Shutdown | End::Drain | End::Dead => Some((GOING_AWAY, GOING_AWAY)),
            // The sender gets 1009, the other side 1001.
            End::TooBig(Initiator::Client) => Some((TOO_BIG, GOING_AWAY)),
            End::TooBig(_) => Some((GOING_AWAY, TOO_BIG)),
            End::Closed | End::Error => None,
        };
        if let Some((to_client, to_upstream)) = codes {
            Box::pin(copy.close_with(to_client, to_upstream)).await;
        }
        self.metrics.tunnel_closed(start.elapsed());
        let (code, initiator) = copy.close(end);
        self.metrics.tunnel_ended(code, initiator);
        tracing::info!(
            target: "access",
            kind = "tunnel",
            client = %self.client,
            host = self.host_target.get(..self.host_len).unwrap_or("-"),
            path = self.host_target.get(self.host_len..).unwrap_or("-"),
            status = 101,
            route = &*self.route,
            server = &*self.server,
            duration_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
            bytes_in = copy.up.bytes,
            bytes_out = copy.down.bytes,
            messages_in = copy.up.frames.messages(),
            messages_out = copy.down.frames.messages(),
            close_code = %code,
            close_initiator = initiator,
            end = end.as_str(),
        );
    }
}

/// Whether bytes moved, for the idle timeout: each read bumps a counter, and the idle
/// timer looks at it every `timeout / IDLE_CHECKS`. No clock is read per read.
#[derive(Default)]
pub struct Activity {
    reads: AtomicU64,
}

/// How many times per `idle_timeout` the idle timer looks for movement: a silent tunnel is
/// closed between `idle_timeout` and `idle_timeout * (1 + 1 / IDLE_CHECKS)` after its last
/// byte, and a tunnel costs `IDLE_CHECKS` timer wake-ups per `idle_timeout`.
const IDLE_CHECKS: u32 = 16;

impl Activity {
    fn touch(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
    }
}

/// The idle timeout: resolves once nothing has moved for `timeout`, looking at
/// [`Activity`] every `timeout / IDLE_CHECKS`. Its timer is kept apart (pinned by the
/// caller) and the rest is a plain struct, rather than an async fn, because an async fn
/// keeps its arguments beside its locals: this is held by every idle tunnel.
struct Idle {
    step: Duration,
    /// Ticks in a row that must see nothing move; 0 closes at the first poll (a zero
    /// timeout).
    needed: u32,
    /// Ticks in a row that saw nothing move. A tick that sees movement comes after it,
    /// so the tunnel is never closed early, and at most one `step` late.
    quiet: u32,
    /// `Activity::reads` at the last tick.
    seen: u64,
    /// The timeout is too large for the clock: it never fires.
    never: bool,
}

impl Idle {
    /// The check and its timer, first due a `step` from now.
    fn new(timeout: Duration, activity: &Activity) -> (Idle, tokio::time::Sleep) {
        let step = (timeout / IDLE_CHECKS).max(Duration::from_millis(1));
        // `step` is at least 1 ms and at least `timeout / IDLE_CHECKS`: this is at most
        // `IDLE_CHECKS + 1` unless the timeout is under 16 ms.
        let needed = timeout.as_nanos().div_ceil(step.as_nanos());
        let idle = Idle {
            step,
            needed: u32::try_from(needed).unwrap_or(u32::MAX),
            quiet: 0,
            seen: activity.reads.load(Ordering::Relaxed),
            never: Instant::now().checked_add(timeout).is_none(),
        };
        (idle, tokio::time::sleep(step))
    }

    /// Ready once `needed` ticks in a row saw no read.
    fn poll(
        &mut self,
        mut sleep: Pin<&mut tokio::time::Sleep>,
        cx: &mut Context<'_>,
        activity: &Activity,
    ) -> Poll<()> {
        if self.needed == 0 {
            return Poll::Ready(());
        }
        while !self.never {
            std::task::ready!(sleep.as_mut().poll(cx));
            let reads = activity.reads.load(Ordering::Relaxed);
            if reads == self.seen {
                self.quiet += 1;
                if self.quiet >= self.needed {
                    return Poll::Ready(());
                }
            } else {
                self.seen = reads;
                self.quiet = 0;
            }
            match sleep.deadline().checked_add(self.step) {
                Some(next) => sleep.as_mut().reset(next),
                None => self.never = true,
            }
        }
        Poll::Pending
    }
}

/// Scratch space for one read, per worker thread. 64 KiB covers a large WebSocket frame
/// in one read while costing one allocation per thread rather than one per tunnel.
const SCRATCH: usize = 64 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH]);
}

/// How many reads one direction may do in one poll before yielding, so a firehose tunnel
/// cannot starve the other tasks of its worker thread.
const READS_PER_POLL: usize = 16;

/// One direction of the copy.
struct Direction {
    /// Bytes read but not yet written: hyper's pre-read bytes at first, later whatever the
    /// destination could not take at once. Empty (and unallocated) almost always.
    pending: Bytes,
    /// The source reached end of stream.
    eof: bool,
    /// The destination's write side is shut down (the end of stream passed on).
    finished: bool,
    bytes: u64,
    /// The WebSocket framing of what passes, followed as it passes.
    frames: Frames,
    /// sluice wrote a Close frame of its own into this direction.
    close_sent: bool,
}

impl Direction {
    /// `counted` is the byte counter this direction adds to; the bytes hyper read ahead
    /// are counted here.
    fn new(
        pre_read: Bytes,
        (sender, limit): (Sender, Option<u64>),
        counted: &Counter,
        messages: &Counter,
    ) -> Direction {
        counted.inc_by(pre_read.len() as u64);
        let mut frames = Frames::new(sender).with_limit(limit);
        frames.feed(&pre_read);
        messages.inc_by(frames.messages());
        Direction {
            frames,
            bytes: pre_read.len() as u64,
            // A copy, even of nothing: hyper's `Bytes` is a view into its whole read
            // buffer, which it would keep alive for the tunnel's life.
            pending: if pre_read.is_empty() {
                Bytes::new()
            } else {
                Bytes::copy_from_slice(&pre_read)
            },
            eof: false,
            finished: false,
            close_sent: false,
        }
    }

    /// Writes what is pending, and then, at the next frame boundary, `close` (nothing that
    /// follows the boundary is passed on: a Close is the last frame a side may send).
    /// Done once the Close is written, or when the direction cannot have one: its source
    /// ended, its destination was shut down, or its bytes are not WebSocket framing.
    fn poll_insert(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut Stream,
        dst: &mut Stream,
        close: &[u8],
    ) -> Poll<io::Result<()>> {
        loop {
            while !self.pending.is_empty() {
                let n = std::task::ready!(Pin::new(&mut *dst).poll_write(cx, &self.pending))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pending.advance(n);
            }
            if self.close_sent || self.finished || self.eof || self.frames.is_broken() {
                return Poll::Ready(Ok(()));
            }
            // A cut over the limit is at a frame boundary too.
            if self.frames.at_boundary() || self.frames.is_over() {
                self.pending = Bytes::copy_from_slice(close);
                self.close_sent = true;
                continue;
            }
            // Mid-frame: the rest of this frame goes on, then the Close.
            let moved = SCRATCH_BUF.with_borrow_mut(|buf| -> Poll<io::Result<()>> {
                let mut read = ReadBuf::new(buf);
                std::task::ready!(Pin::new(&mut *src).poll_read(cx, &mut read))?;
                let data = read.filled();
                if data.is_empty() {
                    self.eof = true;
                } else {
                    let n = self.frames.feed_to_boundary(data);
                    self.bytes += n as u64;
                    self.pending = Bytes::copy_from_slice(&data[..n]);
                }
                Poll::Ready(Ok(()))
            });
            std::task::ready!(moved)?;
        }
    }

    /// Whether sluice may put a frame of its own into this direction now: nothing is
    /// waiting to be written, the destination is open, and the source is between frames.
    fn can_insert(&self) -> bool {
        self.pending.is_empty()
            && !self.close_sent
            && !self.finished
            && !self.eof
            && self.frames.at_boundary()
    }

    /// Reads (and drops) what the source still sends, until its Close, its end, or
    /// anything that is not framing: the closing handshake's other half.
    fn poll_closing_reply(&mut self, cx: &mut Context<'_>, src: &mut Stream) -> Poll<()> {
        loop {
            if self.eof || self.frames.is_broken() || self.frames.close().is_some() {
                return Poll::Ready(());
            }
            let read = SCRATCH_BUF.with_borrow_mut(|buf| {
                let mut read = ReadBuf::new(buf);
                match Pin::new(&mut *src).poll_read(cx, &mut read) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(_)) => Poll::Ready(true),
                    Poll::Ready(Ok(())) => {
                        let data = read.filled();
                        self.frames.feed(data);
                        Poll::Ready(data.is_empty())
                    }
                }
            });
            if std::task::ready!(read) {
                self.eof = true;
            }
        }
    }

    /// Moves bytes from `src` to `dst` until one would block or the source ends.
    ///
    /// `poll_read` rather than `try_read`: after a read shorter than the buffer, tokio
    /// knows the socket is drained and waits for the next readiness event, where
    /// `try_read` would need one more (failing) read to learn it: a syscall per message.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut Stream,
        dst: &mut Stream,
        activity: &Activity,
        (counted, messages): (&Counter, &Counter),
    ) -> Poll<io::Result<()>> {
        let mut reads = 0;
        loop {
            if !self.pending.is_empty() {
                while !self.pending.is_empty() {
                    let n = std::task::ready!(Pin::new(&mut *dst).poll_write(cx, &self.pending))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    self.pending.advance(n);
                }
                // An emptied view still holds its allocation.
                self.pending = Bytes::new();
            }
            if self.frames.is_over() {
                // What came before the cut is written; the tunnel closes now.
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                if !self.finished {
                    // The other direction may still be talking: pass the half-close on.
                    match std::task::ready!(Pin::new(&mut *dst).poll_shutdown(cx)) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                    self.finished = true;
                }
                return Poll::Ready(Ok(()));
            }
            if reads == READS_PER_POLL {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            reads += 1;
            let moved = SCRATCH_BUF.with_borrow_mut(|buf| -> Poll<io::Result<()>> {
                let mut read = ReadBuf::new(buf);
                std::task::ready!(Pin::new(&mut *src).poll_read(cx, &mut read))?;
                let data = read.filled();
                if data.is_empty() {
                    self.eof = true;
                    return Poll::Ready(Ok(()));
                }
                self.bytes += data.len() as u64;
                counted.inc_by(data.len() as u64);
                let before = self.frames.messages();
                let passed = self.frames.feed_limited(data);
                let completed = self.frames.messages() - before;
                if completed != 0 {
                    messages.inc_by(completed);
                }
                activity.touch();
                // Over `max_message_bytes`: nothing from the crossing frame on goes on.
                let data = &data[..passed];
                let written = match Pin::new(&mut *dst).poll_write(cx, data) {
                    Poll::Ready(Ok(written)) => written,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => 0,
                };
                if written < data.len() {
                    // The destination is slow: keep the rest until it can take it.
                    self.pending = Bytes::copy_from_slice(&data[written..]);
                }
                Poll::Ready(Ok(()))
            });
            std::task::ready!(moved)?;
        }
    }
}

/// Both directions of a tunnel; done when both have passed their end of stream on.
pub struct Copy<'a> {
    client: Stream,
    upstream: Stream,
    /// Client → upstream.
    up: Direction,
    /// Upstream → client.
    down: Direction,
    activity: &'a Activity,
    metrics: &'a RouteMetrics,
    up_done: bool,
    down_done: bool,
    /// Who ended the tunnel first: the first side to send a Close frame, or else the
    /// first to end its stream.
    first: Option<Initiator>,
    /// The code sluice closed with, if it did (1009 when a message was too big).
    sent_code: Option<u16>,
}

/// Who started closing a tunnel: the `initiator` of `sluice_tunnel_closes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Initiator {
    Client,
    Upstream,
    Sluice,
}

impl Initiator {
    fn as_str(self) -> &'static str {
        match self {
            Initiator::Client => "client",
            Initiator::Upstream => "upstream",
            Initiator::Sluice => "sluice",
        }
    }
}

/// Half-open detection (`ping_interval`): every interval, a side that sent nothing since
/// the last tick is sent a Ping at the next frame boundary towards it; a side that still
/// sent nothing at the tick after is dead. Activity is the bytes each side sent, so any
/// frame (a Pong, or data) keeps it alive; the Pongs go on to the other side as they are.
struct Pinger {
    timer: tokio::time::Interval,
    /// Bytes the client and the upstream had sent at the last tick.
    seen: [u64; 2],
    /// Pinged at the last tick, and silent since.
    pinged: [bool; 2],
}

impl Pinger {
    fn new(every: Duration) -> Pinger {
        let start = Instant::now() + every;
        let mut timer = tokio::time::interval_at(start, every);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Pinger {
            timer,
            seen: [0; 2],
            pinged: [false; 2],
        }
    }

    /// One tick: pings each silent side; `true` when a pinged side is still silent.
    fn tick(&mut self, copy: &mut Copy<'_>) -> bool {
        if copy.up.frames.is_broken() || copy.down.frames.is_broken() {
            // Not WebSocket framing: nothing of sluice's own goes into it.
            return false;
        }
        let sent = [copy.up.bytes, copy.down.bytes];
        for (side, now) in sent.into_iter().enumerate() {
            if now != self.seen[side] {
                self.seen[side] = now;
                self.pinged[side] = false;
                continue;
            }
            if self.pinged[side] {
                return true;
            }
            // The client is pinged through the upstream-to-client direction, unmasked; the
            // upstream through the other, masked as a client's frames are.
            let (towards, ping) = if side == 0 {
                (&mut copy.down, ping_frame(None))
            } else {
                (&mut copy.up, ping_frame(Some(mask_key())))
            };
            if towards.can_insert() {
                towards.pending = Bytes::from(ping);
                self.pinged[side] = true;
            }
        }
        false
    }
}

/// An empty Ping frame, masked with `mask` (towards the upstream) or not.
fn ping_frame(mask: Option<[u8; 4]>) -> Vec<u8> {
    match mask {
        None => vec![0x89, 0x00],
        Some(key) => vec![0x89, 0x80, key[0], key[1], key[2], key[3]],
    }
}

/// `1001 Going Away`: sluice's Close code when it ends a tunnel itself (RFC 6455 §7.4.1).
const GOING_AWAY: u16 = 1001;

/// `1009 Message Too Big`: to the side that sent a message over `max_message_bytes`.
const TOO_BIG: u16 = 1009;

/// How long sluice waits for a frame boundary to put its Close at, and then for each side's
/// Close in return (the SPEC's one second each).
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// A Close frame with `code`: unmasked towards the client, masked towards the upstream
/// (RFC 6455 §5.3: a client masks every frame, and sluice speaks to the upstream as one).
fn close_frame(code: u16, mask: Option<[u8; 4]>) -> Vec<u8> {
    let payload = code.to_be_bytes();
    match mask {
        None => vec![0x88, 0x02, payload[0], payload[1]],
        Some(key) => vec![
            0x88,
            0x82,
            key[0],
            key[1],
            key[2],
            key[3],
            payload[0] ^ key[0],
            payload[1] ^ key[1],
        ],
    }
}

/// A masking key nobody on the path can predict (RFC 6455 §5.3), from the standard
/// library's randomly seeded hasher.
fn mask_key() -> [u8; 4] {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u8(0);
    let bits = hasher.finish().to_le_bytes();
    [bits[0], bits[1], bits[2], bits[3]]
}

impl Copy<'_> {
    /// Why the copy finished: both sides closed, or a message went over the limit.
    fn ended(&self) -> End {
        if self.up.frames.is_over() {
            End::TooBig(Initiator::Client)
        } else if self.down.frames.is_over() {
            End::TooBig(Initiator::Upstream)
        } else {
            End::Closed
        }
    }

    /// Ends the tunnel from sluice's side: a Close with `code` to each side at the next
    /// frame boundary of that direction (a direction that reaches none within a second is
    /// closed without one), then up to a second for each side's Close in return. A side
    /// that already closed, or whose bytes are not WebSocket framing, gets none.
    async fn close_with(&mut self, to_client: u16, to_upstream: u16) {
        if self.first.is_none() {
            self.first = Some(Initiator::Sluice);
        }
        if self.up.frames.is_broken() || self.down.frames.is_broken() {
            // Not WebSocket framing (one side speaks something else): sluice adds nothing.
            return;
        }
        self.sent_code = Some(to_client.max(to_upstream));
        let to_upstream = close_frame(to_upstream, Some(mask_key()));
        let to_client = close_frame(to_client, None);
        let inserted = std::future::poll_fn(|cx| {
            let up = self
                .up
                .poll_insert(cx, &mut self.client, &mut self.upstream, &to_upstream);
            let down = self
                .down
                .poll_insert(cx, &mut self.upstream, &mut self.client, &to_client);
            match (up, down) {
                (Poll::Ready(_), Poll::Ready(_)) => Poll::Ready(()),
                _ => Poll::Pending,
            }
        });
        let _ = tokio::time::timeout(CLOSE_WAIT, inserted).await;
        let replies = std::future::poll_fn(|cx| {
            let up = self.up.poll_closing_reply(cx, &mut self.client);
            let down = self.down.poll_closing_reply(cx, &mut self.upstream);
            match (up, down) {
                (Poll::Ready(()), Poll::Ready(())) => Poll::Ready(()),
                _ => Poll::Pending,
            }
        });
        let _ = tokio::time::timeout(CLOSE_WAIT, replies).await;
    }

    /// After a direction was polled: notes its side as the initiator if it sent the first
    /// Close frame, or ended its stream first.
    fn note_close(&mut self, side: Initiator) {
        let direction = match side {
            Initiator::Client => &self.up,
            _ => &self.down,
        };
        let other = match side {
            Initiator::Client => &self.down,
            _ => &self.up,
        };
        let closed = direction.frames.close().is_some() && other.frames.close().is_none();
        let ended_first = self.first.is_none() && direction.eof && !other.eof;
        if closed || ended_first {
            self.first = Some(side);
        }
    }

    /// The Close code and who sent it first, for the metrics and the access log: the
    /// initiator's Close code (`1005` for a Close without one), or `none` when the tunnel
    /// ended without a Close frame. A tunnel sluice ended (idle, shutdown) without either
    /// side closing was ended by sluice.
    fn close(&self, end: End) -> (CloseCode, &'static str) {
        let by_frame = [
            (Initiator::Client, self.up.frames.close()),
            (Initiator::Upstream, self.down.frames.close()),
        ];
        let first = self.first.or_else(|| {
            by_frame
                .iter()
                .find(|(_, close)| close.is_some())
                .map(|(side, _)| *side)
        });
        let initiator = match (first, end) {
            (Some(side), _) => side,
            (None, End::Idle | End::Shutdown | End::Drain | End::TooBig(_) | End::Dead) => {
                Initiator::Sluice
            }
            (None, End::Closed | End::Error) => Initiator::Client,
        };
        let sent = self
            .sent_code
            .filter(|_| self.up.close_sent || self.down.close_sent)
            .map(Some);
        let code = by_frame
            .iter()
            .find(|(side, _)| *side == initiator)
            .and_then(|(_, close)| *close)
            .or(if initiator == Initiator::Sluice {
                sent
            } else {
                None
            })
            .map(|code| code.unwrap_or(1005));
        let code = CloseCode(code);
        (code, initiator.as_str())
    }

    /// Polls the directions whose sockets woke the task (all of them without `wakes`, or
    /// when the flags are new). Over TLS, a read may also write (and register the write
    /// side's waker), so there any wake-up polls both.
    fn poll(&mut self, cx: &mut Context<'_>, wakes: Option<&Wakes>) -> Poll<io::Result<()>> {
        let (mut up, mut down) = wakes.map_or((true, true), |w| {
            (Wakes::take(&w.up.0), Wakes::take(&w.down.0))
        });
        if !matches!(
            (&self.client, &self.upstream),
            (Stream::Plain(_), Stream::Plain(_))
        ) {
            up |= down;
            down = up;
        }
        if up && !self.up_done {
            let mut cx = Context::from_waker(wakes.map_or(cx.waker(), |w| &w.up.1));
            let poll = self.up.poll(
                &mut cx,
                &mut self.client,
                &mut self.upstream,
                self.activity,
                (&self.metrics.bytes_in, &self.metrics.messages_in),
            );
            self.note_close(Initiator::Client);
            match poll {
                Poll::Ready(Ok(())) => self.up_done = true,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => {}
            }
        }
        if down && !self.down_done {
            let mut cx = Context::from_waker(wakes.map_or(cx.waker(), |w| &w.down.1));
            let poll = self.down.poll(
                &mut cx,
                &mut self.upstream,
                &mut self.client,
                self.activity,
                (&self.metrics.bytes_out, &self.metrics.messages_out),
            );
            self.note_close(Initiator::Upstream);
            match poll {
                Poll::Ready(Ok(())) => self.down_done = true,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => {}
            }
        }
        let over = self.up.frames.is_over() || self.down.frames.is_over();
        if over || (self.up_done && self.down_done) {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

/// Why the tunnel's task was woken, so that a wake-up polls only what caused it: a
/// direction whose sockets had no event is not polled (its wakers stay registered), nor
/// are the idle timer and the shutdown cut unless they fired.
struct Wakes {
    /// The client's read side or the upstream's write side.
    up: (Arc<Flag>, Waker),
    /// The upstream's read side or the client's write side.
    down: (Arc<Flag>, Waker),
    /// The idle timer or the shutdown cut.
    timers: (Arc<Flag>, Waker),
}

impl Wakes {
    /// All flags start set: the first poll registers everything.
    fn new(task: &Waker) -> Wakes {
        let flag = || {
            let flag = Arc::new(Flag {
                set: AtomicBool::new(true),
                task: task.clone(),
            });
            let waker = Waker::from(Arc::clone(&flag));
            (flag, waker)
        };
        Wakes {
            up: flag(),
            down: flag(),
            timers: flag(),
        }
    }

    /// Whether the flag was set, clearing it.
    fn take(flag: &Flag) -> bool {
        flag.set.load(Ordering::Relaxed) && flag.set.swap(false, Ordering::Acquire)
    }
}

/// A waker that records that it was used, then wakes the task.
struct Flag {
    set: AtomicBool,
    /// The task's own waker, which the flag wakes after setting itself; `up`'s is also
    /// what a poll compares with the task's current waker to see the flags are stale.
    task: Waker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.set.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}
