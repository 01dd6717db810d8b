//! The client socket with sluice's own request-head clock.
//!
//! hyper's `header_read_timeout` closes the connection without an answer, but the SPEC wants
//! `408` (and HAProxy's habit of closing an idle keep-alive connection quietly). So the
//! socket is wrapped: while the connection waits for a request head, reads race a timer;
//! when it fires, a `408` is written straight to the socket (nothing else is being written
//! then) and the read fails, which makes hyper drop the connection.
//!
//! The connection's requests drive the clock through [`HeadClock`]: the handler stops it
//! when a head has arrived, and the response body starts it again when the response is done.
//! Once a connection becomes a tunnel the clock stays stopped, and reads pass straight
//! through (one relaxed atomic load each).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::proxy::error::raw_close_response;

static RESPONSE_408: LazyLock<Vec<u8>> =
    LazyLock::new(|| raw_close_response(StatusCode::REQUEST_TIMEOUT));

/// Which phase a connection is in: odd epochs wait for a request head, even ones serve a
/// request (or a tunnel). Epoch 1 is the first request of the connection.
///
/// A finished response first marks the clock *flushing*; the epoch turns odd only once the
/// socket has been flushed after that. hyper may drop a body before it has written the
/// response head (an empty body is dropped at once), and until the answer is on the wire
/// the connection is not waiting for anything.
#[derive(Debug, Clone)]
pub struct HeadClock(Arc<ClockState>);

#[derive(Debug)]
struct ClockState {
    epoch: AtomicU32,
    flushing: AtomicBool,
}

impl HeadClock {
    fn new() -> HeadClock {
        HeadClock(Arc::new(ClockState {
            epoch: AtomicU32::new(1),
            flushing: AtomicBool::new(false),
        }))
    }

    fn epoch(&self) -> u32 {
        self.0.epoch.load(Ordering::Relaxed)
    }

    /// A request head has arrived: stop the clock.
    pub fn request_started(&self) {
        self.0.flushing.store(false, Ordering::Relaxed);
        let _ = self
            .0
            .epoch
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |e| {
                (e % 2 == 1).then_some(e.wrapping_add(1))
            });
    }

    /// The response is complete; the clock starts for the next head once it is flushed.
    pub fn response_done(&self) {
        self.0.flushing.store(true, Ordering::Relaxed);
    }

    /// The socket was flushed: if a response had completed, time the next head.
    fn flushed(&self) {
        if self.0.flushing.load(Ordering::Relaxed) && self.0.flushing.swap(false, Ordering::Relaxed)
        {
            let _ = self
                .0
                .epoch
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |e| {
                    // Skip 1 on wrap-around: it marks the first request only.
                    (e % 2 == 0).then_some(if e == u32::MAX - 1 {
                        3
                    } else {
                        e.wrapping_add(1)
                    })
                });
        }
    }
}

/// A client TCP stream whose reads time out while a request head is awaited.
pub struct ClientIo {
    stream: TcpStream,
    clock: HeadClock,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    /// The waiting epoch the timer was last set for.
    armed: u32,
    /// Bytes arrived since the timer was set: the client started a request.
    started: bool,
}

impl ClientIo {
    pub fn new(stream: TcpStream, timeout: Duration) -> (ClientIo, HeadClock) {
        let clock = HeadClock::new();
        let io = ClientIo {
            stream,
            clock: clock.clone(),
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            armed: 1,
            started: false,
        };
        (io, clock)
    }

    /// The plain socket, for a connection that has become a tunnel: its clock and timer
    /// are done with, and the tunnel should not carry them.
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let epoch = this.clock.epoch();
        if epoch % 2 == 0 {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        if epoch != this.armed {
            this.armed = epoch;
            this.started = false;
            // `sleep` saturates a deadline too far for the clock; reset wants an Instant.
            match Instant::now().checked_add(this.timeout) {
                Some(deadline) => this.sleep.as_mut().reset(deadline),
                None => this.sleep.set(tokio::time::sleep(this.timeout)),
            }
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.started = true;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if this.sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if this.started || epoch == 1 {
                    // Best effort: the socket's send buffer is empty between requests, so
                    // this short write goes through at once or the client is gone anyway.
                    let _ = this.stream.try_write(&RESPONSE_408);
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request head timeout",
                    )))
                } else {
                    // An idle keep-alive connection: close quietly, as at end of stream.
                    Poll::Ready(Ok(()))
                }
            }
            ready => ready,
        }
    }
}

impl ClientIo {
    /// hyper answers a request head it cannot parse (`400`, `431`, `414`, …) itself, with an
    /// empty body, and closes. Such an answer is the only thing ever written while the
    /// connection waits for a head (every parsed head reaches the handler first), so there
    /// it is replaced by sluice's own answer for the same status, with its one-line body.
    /// Returns the length to report as written, or `None` for an ordinary write.
    fn replace_parse_error(&self, first: &[u8], total: usize) -> Option<usize> {
        if self.clock.epoch() % 2 == 0 {
            return None;
        }
        let status = first
            .strip_prefix(b"HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| StatusCode::from_bytes(code).ok())?;
        // Best effort, as for 408: a short write on an idle socket, and the connection
        // closes right after.
        let _ = self.stream.try_write(&raw_close_response(status));
        Some(total)
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(written) = self.replace_parse_error(buf, buf.len()) {
            return Poll::Ready(Ok(written));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        let total = bufs.iter().map(|b| b.len()).sum();
        if let Some(written) = self.replace_parse_error(first, total) {
            return Poll::Ready(Ok(written));
        }
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.stream).poll_flush(cx);
        if matches!(flushed, Poll::Ready(Ok(()))) {
            self.clock.flushed();
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_phases() {
        let clock = HeadClock::new();
        assert_eq!(clock.epoch(), 1);
        clock.request_started();
        assert_eq!(clock.epoch(), 2);
        clock.request_started();
        assert_eq!(clock.epoch(), 2, "starting twice changes nothing");
        clock.response_done();
        assert_eq!(
            clock.epoch(),
            2,
            "still serving until the answer is flushed"
        );
        clock.flushed();
        assert_eq!(clock.epoch(), 3);
        clock.flushed();
        assert_eq!(
            clock.epoch(),
            3,
            "a flush without a response changes nothing"
        );
        clock.response_done();
        clock.request_started();
        clock.flushed();
        assert_eq!(clock.epoch(), 4, "a new request cancels a pending flip");
    }
}
