//! The tunnel: after a checked `101`, bytes are copied both ways unchanged until one side
//! closes (a half-close is passed on), `idle_timeout` passes with no byte moving, or
//! `shutdown_timeout` cuts it.
//!
//! Tunnels are long-lived and mostly idle, so an idle tunnel holds no buffer: the copy
//! waits for readiness on the raw sockets, then reads into a per-thread scratch buffer and
//! writes straight on. Only bytes the destination could not take yet are kept, in a buffer
//! of their own that is freed once written. hyper's `Upgraded` is unwrapped to the plain
//! `TcpStream`s first, and the bytes hyper had already read past each head (RFC 9931: what
//! the client sent right after its handshake, or the server right after its `101`) are
//! forwarded before anything else, so nothing is lost.

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
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::metrics::RouteMetrics;
use crate::server::head::ClientIo;
use crate::server::limits::{ConnPermit, TunnelPermit};
use crate::shutdown::Shutdown;
use crate::stream::Stream;
use crate::upstream::Active;

/// One WebSocket tunnel about to open: who it is for and how long it may idle.
pub struct Tunnel {
    pub client: SocketAddr,
    /// The request's Host and target, copied out of hyper's read buffer (holding a slice of
    /// it would keep the whole buffer alive for the tunnel's life).
    pub host: Box<str>,
    pub path: Box<str>,
    pub route: Arc<str>,
    /// The route's counters: tunnels open and opened, bytes, duration.
    pub metrics: Arc<RouteMetrics>,
    pub server: Arc<str>,
    pub idle_timeout: Duration,
    /// Held until the tunnel closes: a tunnel counts against the connection limits.
    pub permit: Arc<ConnPermit>,
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
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Error => "error",
            End::Idle => "idle_timeout",
            End::Shutdown => "shutdown",
        }
    }
}

impl Tunnel {
    /// Waits for both upgrades, then copies until the tunnel ends, and logs it.
    pub async fn run(self, client: OnUpgrade, upstream: OnUpgrade, shutdown: Shutdown) {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(err) => {
                tracing::debug!(client = %self.client, route = &*self.route, cause = %err, "upgrade did not complete");
                return;
            }
        };
        let (Some((client, from_client)), Some((upstream, from_upstream))) =
            (client_socket(client), upstream_socket(upstream))
        else {
            // Both types are fixed by this crate; reaching this is a bug, not a peer's doing.
            tracing::error!(client = %self.client, route = &*self.route, "tunnel sockets are not plain TCP");
            return;
        };
        let start = Instant::now();
        self.metrics.tunnel_opened();
        let activity = Activity {
            reads: AtomicU64::new(0),
        };
        let mut copy = Copy {
            client,
            upstream,
            up: Direction::new(from_client, &self.metrics.bytes_in),
            down: Direction::new(from_upstream, &self.metrics.bytes_out),
            activity: &activity,
            metrics: &self.metrics,
            up_done: false,
            down_done: false,
        };
        let idle = activity.idle(self.idle_timeout);
        let cut = shutdown.cut();
        tokio::pin!(idle, cut);
        let mut wakes: Option<Wakes> = None;
        let end = std::future::poll_fn(|cx| {
            let wakes = match &mut wakes {
                Some(wakes) if wakes.task.will_wake(cx.waker()) => wakes,
                // First poll, or the task's waker changed: register everything anew.
                slot => slot.insert(Wakes::new(cx.waker())),
            };
            match copy.poll(wakes) {
                Poll::Ready(Ok(())) => return Poll::Ready(Ok(End::Closed)),
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => {}
            }
            if Wakes::take(&wakes.timers.0) {
                let mut cx = Context::from_waker(&wakes.timers.1);
                if cut.as_mut().poll(&mut cx).is_ready() {
                    return Poll::Ready(Ok(End::Shutdown));
                }
                if idle.as_mut().poll(&mut cx).is_ready() {
                    return Poll::Ready(Ok(End::Idle));
                }
            }
            Poll::Pending
        })
        .await
        .unwrap_or_else(|err| {
            tracing::debug!(client = %self.client, route = &*self.route, cause = %err, "tunnel ended with an error");
            End::Error
        });
        self.metrics.tunnel_closed(start.elapsed());
        tracing::info!(
            target: "access",
            kind = "tunnel",
            client = %self.client,
            host = &*self.host,
            path = &*self.path,
            status = 101,
            route = &*self.route,
            server = &*self.server,
            duration_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
            bytes_in = copy.up.bytes,
            bytes_out = copy.down.bytes,
            end = end.as_str(),
        );
    }
}

/// The client's socket and the bytes hyper read past the handshake.
fn client_socket(upgraded: Upgraded) -> Option<(Stream, Bytes)> {
    let parts = upgraded.downcast::<TokioIo<ClientIo>>().ok()?;
    Some((parts.io.into_inner().into_stream(), parts.read_buf))
}

/// The upstream's socket and the bytes hyper read past its `101`.
fn upstream_socket(upgraded: Upgraded) -> Option<(Stream, Bytes)> {
    let parts = upgraded.downcast::<TokioIo<Stream>>().ok()?;
    Some((parts.io.into_inner(), parts.read_buf))
}

/// Whether bytes moved, for the idle timeout: each read bumps a counter, and the idle
/// timer looks at it every `timeout / IDLE_CHECKS`. No clock is read per read.
struct Activity {
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

    /// Resolves once nothing has moved for `timeout`. A timeout too large for the clock
    /// never fires.
    async fn idle(&self, timeout: Duration) {
        let step = (timeout / IDLE_CHECKS).max(Duration::from_millis(1));
        let mut seen = self.reads.load(Ordering::Relaxed);
        // A check that sees movement comes after it, so the quiet time measured from here
        // is never longer than the real one: the tunnel is never closed early.
        let mut quiet_since = Instant::now();
        loop {
            let Some(deadline) = quiet_since.checked_add(timeout) else {
                return std::future::pending().await;
            };
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            let next = now.checked_add(step).map_or(deadline, |t| t.min(deadline));
            tokio::time::sleep_until(next).await;
            let reads = self.reads.load(Ordering::Relaxed);
            if reads != seen {
                seen = reads;
                quiet_since = Instant::now();
            }
        }
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
}

impl Direction {
    /// `counted` is the byte counter this direction adds to; the bytes hyper read ahead
    /// are counted here.
    fn new(pre_read: Bytes, counted: &Counter) -> Direction {
        counted.inc_by(pre_read.len() as u64);
        Direction {
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
        counted: &Counter,
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
                activity.touch();
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
struct Copy<'a> {
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
}

impl Copy<'_> {
    /// Polls the directions whose sockets woke the task (both at first). Over TLS, a read
    /// may also write (and register the write side's waker), so any wake-up polls both.
    fn poll(&mut self, wakes: &Wakes) -> Poll<io::Result<()>> {
        let mut up = Wakes::take(&wakes.up.0);
        let mut down = Wakes::take(&wakes.down.0);
        if !matches!(
            (&self.client, &self.upstream),
            (Stream::Plain(_), Stream::Plain(_))
        ) {
            up |= down;
            down = up;
        }
        if up && !self.up_done {
            let mut cx = Context::from_waker(&wakes.up.1);
            let poll = self.up.poll(
                &mut cx,
                &mut self.client,
                &mut self.upstream,
                self.activity,
                &self.metrics.bytes_in,
            );
            match poll {
                Poll::Ready(Ok(())) => self.up_done = true,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => {}
            }
        }
        if down && !self.down_done {
            let mut cx = Context::from_waker(&wakes.down.1);
            let poll = self.down.poll(
                &mut cx,
                &mut self.upstream,
                &mut self.client,
                self.activity,
                &self.metrics.bytes_out,
            );
            match poll {
                Poll::Ready(Ok(())) => self.down_done = true,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => {}
            }
        }
        if self.up_done && self.down_done {
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
    /// The task's own waker, which every flag wakes after setting itself.
    task: Waker,
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
            task: task.clone(),
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
