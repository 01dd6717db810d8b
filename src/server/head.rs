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
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::proxy::error::raw_close_response;

static RESPONSE_408: LazyLock<Vec<u8>> = LazyLock::new(|| raw_close_response(StatusCode::REQUEST_TIMEOUT));

/// Which phase a connection is in: odd epochs wait for a request head, even ones serve a
/// request (or a tunnel). Epoch 1 is the first request of the connection.
#[derive(Debug, Clone)]
pub struct HeadClock(Arc<AtomicU32>);

impl HeadClock {
    fn new() -> HeadClock {
        HeadClock(Arc::new(AtomicU32::new(1)))
    }

    fn epoch(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }

    /// A request head has arrived: stop the clock.
    pub fn request_started(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |e| (e % 2 == 1).then_some(e.wrapping_add(1)));
    }

    /// The response is done: time the next head.
    pub fn response_done(&self) {
        let _ = self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |e| {
            // Skip 1 on wrap-around: it marks the first request only.
            (e % 2 == 0).then_some(if e == u32::MAX - 1 { 3 } else { e.wrapping_add(1) })
        });
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
}

impl AsyncRead for ClientIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let epoch = this.clock.epoch();
        if epoch % 2 == 0 {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        if epoch != this.armed {
            this.armed = epoch;
            this.started = false;
            this.sleep.as_mut().reset(Instant::now() + this.timeout);
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
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "request head timeout")))
                } else {
                    // An idle keep-alive connection: close quietly, as at end of stream.
                    Poll::Ready(Ok(()))
                }
            }
            ready => ready,
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
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
        assert_eq!(clock.epoch(), 3);
        clock.response_done();
        assert_eq!(clock.epoch(), 3, "done twice changes nothing");
    }
}
