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
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use crate::proxy::error::raw_close_response;
use crate::stream::Stream;

static RESPONSE_408: LazyLock<Vec<u8>> =
    LazyLock::new(|| raw_close_response(StatusCode::REQUEST_TIMEOUT));

/// The response is complete (its body ended or was dropped).
const RESPONSE_DONE: u8 = 1;
/// The socket was flushed after the response was complete: the answer is on the wire.
const FLUSHED: u8 = 2;
/// The request body has not been read to its end yet.
const BODY_PENDING: u8 = 4;

/// How a request body ended, as far as the handler needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    /// Read to its end, or there was none.
    Complete,
    /// Still arriving.
    Pending,
    /// No byte came for `body_timeout`: `408`.
    TimedOut,
    /// The client's framing was broken (a bad chunk, a connection closed mid-body): `400`.
    Broken,
}

impl BodyEnd {
    fn from_u8(v: u8) -> BodyEnd {
        match v {
            1 => BodyEnd::Pending,
            2 => BodyEnd::TimedOut,
            3 => BodyEnd::Broken,
            _ => BodyEnd::Complete,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            BodyEnd::Complete => 0,
            BodyEnd::Pending => 1,
            BodyEnd::TimedOut => 2,
            BodyEnd::Broken => 3,
        }
    }
}

/// Which phase a connection is in: odd epochs wait for a request head, even ones serve a
/// request (or a tunnel). Epoch 1 is the first request of the connection.
///
/// The epoch turns odd again only when three things hold: the response is complete, the
/// socket has been flushed after that (hyper may drop a body before it has written the
/// response head, and until the answer is on the wire the connection is not waiting for
/// anything), and the request body has been read to its end. Whichever of the three comes
/// last turns it.
#[derive(Debug, Clone)]
pub struct HeadClock(Arc<ClockState>);

#[derive(Debug)]
struct ClockState {
    epoch: AtomicU32,
    /// `RESPONSE_DONE | FLUSHED | BODY_PENDING` bits for the current request.
    flags: AtomicU8,
    /// How the current request's body ended ([`BodyEnd`]).
    body: AtomicU8,
    /// Wakes the handler when the request body is complete (its `read_timeout` starts).
    body_done: Notify,
    /// The current head carried `Content-Length` (hyper drops it when `Transfer-Encoding`
    /// is present too, so only the socket sees it).
    saw_content_length: AtomicBool,
}

impl HeadClock {
    fn new() -> HeadClock {
        HeadClock(Arc::new(ClockState {
            epoch: AtomicU32::new(1),
            flags: AtomicU8::new(0),
            body: AtomicU8::new(BodyEnd::Complete.as_u8()),
            body_done: Notify::new(),
            saw_content_length: AtomicBool::new(false),
        }))
    }

    fn epoch(&self) -> u32 {
        self.0.epoch.load(Ordering::Relaxed)
    }

    /// A request head has arrived: stop the clock. `has_body`: a body follows the head.
    pub fn request_started(&self, has_body: bool) {
        let (flags, body) = if has_body {
            (BODY_PENDING, BodyEnd::Pending)
        } else {
            (0, BodyEnd::Complete)
        };
        self.0.body.store(body.as_u8(), Ordering::Relaxed);
        self.0.flags.store(flags, Ordering::Release);
        let _ = self
            .0
            .epoch
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |e| {
                (e % 2 == 1).then_some(e.wrapping_add(1))
            });
    }

    /// Whether the current request's head carried a `Content-Length` line; asked once per
    /// request, so a stale answer never reaches the next one.
    pub fn take_saw_content_length(&self) -> bool {
        self.0.saw_content_length.swap(false, Ordering::Relaxed)
    }

    /// The response is complete; the clock starts for the next head once it is flushed
    /// and the request body is done.
    pub fn response_done(&self) {
        self.set(RESPONSE_DONE);
    }

    /// The socket was flushed: if a response had completed, it is on the wire.
    fn flushed(&self) {
        let flags = self.0.flags.load(Ordering::Relaxed);
        if flags & RESPONSE_DONE != 0 && flags & FLUSHED == 0 {
            self.set(FLUSHED);
        }
    }

    /// The request body ended: completely, or broken (`end` says which). A body dropped
    /// before its end counts as complete here: hyper then drains or closes the connection.
    pub fn body_ended(&self, end: BodyEnd) {
        let _ = self.0.body.compare_exchange(
            BodyEnd::Pending.as_u8(),
            end.as_u8(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        self.clear_body_pending();
        self.0.body_done.notify_waiters();
    }

    /// How the current request's body ended so far.
    pub fn body_end(&self) -> BodyEnd {
        BodyEnd::from_u8(self.0.body.load(Ordering::Relaxed))
    }

    fn body_pending(&self) -> bool {
        self.0.flags.load(Ordering::Relaxed) & BODY_PENDING != 0
    }

    /// Resolves once the request body has been read to its end (at once without a body).
    pub async fn body_sent(&self) {
        loop {
            let notified = self.0.body_done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.body_pending() {
                return;
            }
            notified.await;
        }
    }

    /// Sets `bit`; if that completes the request (done, flushed, body read), starts
    /// timing the next head.
    fn set(&self, bit: u8) {
        self.update(|flags| flags | bit);
    }

    fn clear_body_pending(&self) {
        self.update(|flags| flags & !BODY_PENDING);
    }

    fn update(&self, change: impl Fn(u8) -> u8) {
        let complete = RESPONSE_DONE | FLUSHED;
        let previous = self
            .0
            .flags
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |flags| {
                let next = change(flags);
                // Completed: the flags reset, and only this caller turns the epoch.
                Some(if next == complete { 0 } else { next })
            })
            .unwrap_or_else(|flags| flags);
        if change(previous) == complete {
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
    /// The head timer in odd epochs, the body timer in even ones.
    read_sleep: Pin<Box<Sleep>>,
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
            read_sleep: Box::pin(tokio::time::sleep_until(deadline(timeouts.header))),
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

    /// Sets the read timer to `timeout` from now, once per wait, and polls it.
    fn read_timer_fired(&mut self, timeout: Duration, cx: &mut Context<'_>) -> bool {
        if !self.read_armed {
            self.read_armed = true;
            self.read_sleep.as_mut().reset(deadline(timeout));
        }
        self.read_sleep.as_mut().poll(cx).is_ready()
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
                            this.clock
                                .0
                                .saw_content_length
                                .store(true, Ordering::Relaxed);
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
