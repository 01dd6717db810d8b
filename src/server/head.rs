//! The client socket with sluice's own clocks: the request-head clock, the request-body
//! clock and the send clock.
//!
//! hyper's `header_read_timeout` closes the connection without an answer, but the SPEC wants
//! `408` (and HAProxy's habit of closing an idle keep-alive connection quietly). So the
//! socket is wrapped: while the connection waits for a request head, reads race a timer;
//! when it fires, a `408` is written straight to the socket (nothing else is being written
//! then) and the read fails, which makes hyper drop the connection.
//!
//! While a request body is being read, reads race `body_timeout` instead: when no byte
//! comes for that long the read fails with [`io::ErrorKind::TimedOut`], hyper hands that
//! error to the request body, and the handler answers `408` (or, if the response has
//! begun, the connection closes). The error is the client's: no upstream is blamed.
//!
//! Every write races `send_timeout`: a client that stops reading its response for that long
//! gets its connection closed, which drops the response body and with it the upstream
//! connection.
//!
//! The connection's requests drive the clock through [`HeadClock`]: the handler stops it
//! when a head has arrived, and the next head is timed once the response is done *and*
//! flushed *and* the request body has been read to its end (an upstream may answer before
//! the client has finished its upload). Once a connection becomes a tunnel the clock stays
//! stopped, and reads pass straight through (one relaxed atomic load each).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::clock::HeadClock;
use crate::proxy::error::raw_close_response;
use crate::stream::Stream;

static RESPONSE_408: LazyLock<Vec<u8>> =
    LazyLock::new(|| raw_close_response(StatusCode::REQUEST_TIMEOUT));

/// The client's timeouts, from its listener.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header: Duration,
    pub body: Duration,
    pub send: Duration,
}

/// A client stream (plain or TLS) whose reads time out while a request head or body is awaited, and
/// whose writes time out when the client stops reading.
pub struct ClientIo {
    stream: Stream,
    clock: HeadClock,
    timeouts: Timeouts,
    /// The head timer in odd epochs, the body timer in even ones; made on the first read
    /// that has to wait, so a connection whose request is there at once (a WebSocket
    /// handshake, most often) never allocates it.
    read_sleep: Option<Pin<Box<Sleep>>>,
    /// The epoch the read timer state belongs to.
    read_epoch: u32,
    /// The read timer is set for the current wait.
    read_armed: bool,
    /// Bytes arrived since the head timer was set: the client started a request.
    started: bool,
    /// Looks for `Content-Length` in the head being read.
    scan: LengthScan,
    /// The send timer, made on the first write that has to wait.
    write_sleep: Option<Pin<Box<Sleep>>>,
    /// The send timer is set for the current stalled write.
    write_armed: bool,
}

/// How far away "never" is: a valid duration too large for the clock (thousands of years)
/// is set as this, as tokio's own `sleep` does.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `now + timeout`, saturated at [`FAR_FUTURE`].
fn deadline(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout.min(FAR_FUTURE)).unwrap_or(now)
}

impl ClientIo {
    pub fn new(stream: Stream, timeouts: Timeouts) -> (ClientIo, HeadClock) {
        let clock = HeadClock::new();
        let io = ClientIo {
            stream,
            clock: clock.clone(),
            timeouts,
            read_sleep: None,
            read_epoch: 0,
            read_armed: false,
            started: false,
            scan: LengthScan::default(),
            write_sleep: None,
            write_armed: false,
        };
        (io, clock)
    }

    /// The plain socket, for a connection that has become a tunnel: its clock and timers
    /// are done with, and the tunnel should not carry them.
    pub fn into_stream(self) -> Stream {
        self.stream
    }

    /// The client's socket and the bytes hyper read past the handshake, once the
    /// connection upgraded; `None` if it is not one of ours (a bug, not a peer's doing).
    pub fn upgraded_socket(upgraded: hyper::upgrade::Upgraded) -> Option<(Stream, bytes::Bytes)> {
        let parts = upgraded
            .downcast::<hyper_util::rt::TokioIo<ClientIo>>()
            .ok()?;
        Some((parts.io.into_inner().into_stream(), parts.read_buf))
    }

    /// Sets the read timer to `timeout` from now, once per wait, and polls it.
    fn read_timer_fired(&mut self, timeout: Duration, cx: &mut Context<'_>) -> bool {
        match self.read_sleep.as_mut() {
            Some(sleep) if !self.read_armed => sleep.as_mut().reset(deadline(timeout)),
            Some(_) => {}
            None => self.read_sleep = Some(Box::pin(tokio::time::sleep_until(deadline(timeout)))),
        }
        self.read_armed = true;
        self.read_sleep
            .as_mut()
            .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready())
    }

    /// A write that made no progress races the send timer; one that did disarms it.
    fn timed_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.write_armed = false;
            return polled;
        }
        let timeout = self.timeouts.send;
        let sleep = self
            .write_sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline(timeout))));
        if !self.write_armed {
            self.write_armed = true;
            sleep.as_mut().reset(deadline(timeout));
        }
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "send timeout: the client stopped reading",
            )));
        }
        Poll::Pending
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
        if epoch != this.read_epoch {
            this.read_epoch = epoch;
            this.read_armed = false;
            this.started = false;
            this.scan = LengthScan::default();
        }
        let waiting_for_head = epoch % 2 == 1;
        if !waiting_for_head && !this.clock.body_pending() {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if !new.is_empty() {
                    if waiting_for_head {
                        this.started = true;
                        if this.scan.feed(new) {
                            this.clock.saw_content_length();
                        }
                    } else {
                        // A byte of the body: the next wait starts its own clock.
                        this.read_armed = false;
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if waiting_for_head => {
                if !this.read_timer_fired(this.timeouts.header, cx) {
                    return Poll::Pending;
                }
                if this.started || epoch == 1 {
                    // Best effort: the socket's send buffer is empty between requests, so
                    // this short write goes through at once or the client is gone anyway.
                    this.stream.write_now(&RESPONSE_408);
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request head timeout",
                    )))
                } else {
                    // An idle keep-alive connection: close quietly, as at end of stream.
                    Poll::Ready(Ok(()))
                }
            }
            Poll::Pending => {
                if !this.read_timer_fired(this.timeouts.body, cx) {
                    return Poll::Pending;
                }
                // hyper passes this to the request body; the handler answers for it.
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request body timeout",
                )))
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
    fn replace_parse_error(&mut self, first: &[u8], total: usize) -> Option<usize> {
        if self.clock.epoch() % 2 == 0 {
            return None;
        }
        let status = first
            .strip_prefix(b"HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| StatusCode::from_bytes(code).ok())?;
        // Best effort, as for 408: a short write on an idle socket, and the connection
        // closes right after.
        self.stream.write_now(&raw_close_response(status));
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
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.timed_write(cx, polled)
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
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.timed_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.stream).poll_flush(cx);
        if matches!(flushed, Poll::Ready(Ok(()))) {
            self.clock.flushed();
        }
        self.timed_write(cx, flushed)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Finds a `Content-Length:` line in a request head fed to it in pieces, stopping at the
/// blank line that ends the head. hyper drops `Content-Length` when `Transfer-Encoding` is
/// present too, but the SPEC calls that pair malformed (`400`), so the raw head is watched.
/// It hops from line to line with `memchr`, so a head costs little more than one pass.
#[derive(Debug, Default)]
struct LengthScan {
    /// Bytes of the current line seen so far (it may span several reads).
    col: usize,
    /// The current line no longer matches `content-length:`.
    mismatch: bool,
    /// The current line began with `\r`.
    first_cr: bool,
    /// A line with content (the request line) has been seen.
    seen_line: bool,
    done: bool,
}

const CONTENT_LENGTH_LINE: &[u8] = b"content-length:";

impl LengthScan {
    /// Feeds the next bytes; true when a `Content-Length` line was found in them.
    fn feed(&mut self, data: &[u8]) -> bool {
        let mut found = false;
        let mut rest = data;
        while !self.done && !rest.is_empty() {
            let (line, next) = match memchr::memchr(b'\n', rest) {
                Some(end) => (&rest[..end], Some(&rest[end + 1..])),
                None => (rest, None),
            };
            if !self.mismatch && self.col < CONTENT_LENGTH_LINE.len() {
                let want = &CONTENT_LENGTH_LINE[self.col..];
                let n = want.len().min(line.len());
                if !line[..n].eq_ignore_ascii_case(&want[..n]) {
                    self.mismatch = true;
                } else if n == want.len() {
                    // The whole name and its colon: a header line (not the request line).
                    found |= self.seen_line;
                    self.mismatch = true;
                }
            }
            if self.col == 0 {
                self.first_cr = line.first() == Some(&b'\r');
            }
            self.col += line.len();
            let Some(next) = next else {
                break;
            };
            let blank = self.col == 0 || (self.col == 1 && self.first_cr);
            if blank && self.seen_line {
                self.done = true;
            }
            self.seen_line |= !blank;
            self.col = 0;
            self.mismatch = false;
            rest = next;
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::BodyEnd;

    fn flip(clock: &HeadClock) {
        clock.response_done();
        clock.flushed();
    }

    #[test]
    fn clock_phases() {
        let clock = HeadClock::new();
        assert_eq!(clock.epoch(), 1);
        clock.request_started(false);
        assert_eq!(clock.epoch(), 2);
        clock.request_started(false);
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
        clock.request_started(false);
        clock.flushed();
        assert_eq!(clock.epoch(), 4, "a new request cancels a pending flip");
    }

    #[test]
    fn the_head_clock_waits_for_the_request_body() {
        let clock = HeadClock::new();
        clock.request_started(true);
        assert_eq!(clock.body_end(), BodyEnd::Pending);
        flip(&clock);
        assert_eq!(clock.epoch(), 2, "the upload is still arriving");
        clock.body_ended(BodyEnd::Complete);
        assert_eq!(
            clock.epoch(),
            3,
            "the body's end starts the next head's clock"
        );
        assert_eq!(clock.body_end(), BodyEnd::Complete);

        clock.request_started(true);
        clock.body_ended(BodyEnd::TimedOut);
        assert_eq!(clock.body_end(), BodyEnd::TimedOut);
        assert_eq!(clock.epoch(), 4);
        flip(&clock);
        assert_eq!(clock.epoch(), 5);
    }

    #[test]
    fn content_length_lines_are_found_across_pieces() {
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConTent-LENGTH: 5\r\n\r\n";
        for split in 0..head.len() {
            let mut scan = LengthScan::default();
            let found = scan.feed(&head[..split]) | scan.feed(&head[split..]);
            assert!(found, "split at {split}");
        }
        let mut scan = LengthScan::default();
        assert!(!scan.feed(b"GET / HTTP/1.1\r\nX-Content-Length: 5\r\n\r\nContent-Length: 5\r\n"));
        let mut scan = LengthScan::default();
        assert!(!scan.feed(b"\r\nGET /content-length: HTTP/1.1\r\nHost: a\r\n\r\n"));
        let mut scan = LengthScan::default();
        assert!(scan.feed(b"\r\nPUT / HTTP/1.1\r\ncontent-length:1\r\n\r\nx"));
    }
}
