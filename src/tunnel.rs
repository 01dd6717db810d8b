//! The tunnel: after a checked `101`, bytes are copied both ways unchanged until one side
//! closes (a half-close is passed on), `idle_timeout` passes with no byte moving, or
//! `shutdown_timeout` cuts it.
//!
//! Both sides are hyper's `Upgraded`, which first yields any bytes read past the handshake
//! (RFC 9931: what the client sent right after its handshake, or the server right after its
//! `101`), so nothing is lost. `copy_bidirectional` already passes half-closes on; a thin
//! I/O adapter adds what it lacks: an activity stamp for the idle timer and byte counts.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Uri};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::server::limits::ConnPermit;
use crate::shutdown::Shutdown;

/// One WebSocket tunnel about to open: who it is for and how long it may idle.
pub struct Tunnel {
    pub client: SocketAddr,
    pub host: Option<HeaderValue>,
    pub uri: Uri,
    pub route: Arc<str>,
    pub server: Arc<str>,
    pub idle_timeout: Duration,
    /// Held until the tunnel closes: a tunnel counts against the connection limits.
    pub permit: Arc<ConnPermit>,
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
        let start = Instant::now();
        let activity = Activity {
            start,
            last_ms: AtomicU64::new(0),
        };
        let mut client = Metered::new(TokioIo::new(client), &activity);
        let mut upstream = Metered::new(TokioIo::new(upstream), &activity);
        let end = tokio::select! {
            result = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match result {
                Ok(_) => End::Closed,
                Err(err) => {
                    tracing::debug!(client = %self.client, route = &*self.route, cause = %err, "tunnel ended with an error");
                    End::Error
                }
            },
            () = activity.idle(self.idle_timeout) => End::Idle,
            () = shutdown.cut() => End::Shutdown,
        };
        tracing::info!(
            target: "access",
            kind = "tunnel",
            client = %self.client,
            host = self.host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("-"),
            path = %self.uri,
            status = 101,
            route = &*self.route,
            server = &*self.server,
            duration_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
            bytes_in = client.bytes,
            bytes_out = upstream.bytes,
            end = end.as_str(),
        );
    }
}

/// When a byte last moved in either direction, in milliseconds since the tunnel opened.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `timeout`.
    async fn idle(&self, timeout: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = self.start + last + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// Counts the bytes read from one side and stamps activity.
struct Metered<'a, T> {
    io: T,
    activity: &'a Activity,
    bytes: u64,
}

impl<'a, T> Metered<'a, T> {
    fn new(io: T, activity: &'a Activity) -> Self {
        Metered {
            io,
            activity,
            bytes: 0,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.bytes += read as u64;
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
