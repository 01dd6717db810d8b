//! The per-connection request clock: which phase a client connection is in (waiting for a
//! head, reading a body, answering), shared by the socket that times it
//! ([`crate::server::head`]) and the request handler that moves it on ([`crate::proxy`]).
//!
//! The handler stops the head clock when a head has arrived, and the next head is timed
//! once the response is done *and* flushed *and* the request body has been read to its
//! end (an upstream may answer before the client has finished its upload).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

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
    pub(crate) fn new() -> HeadClock {
        HeadClock(Arc::new(ClockState {
            epoch: AtomicU32::new(1),
            flags: AtomicU8::new(0),
            body: AtomicU8::new(BodyEnd::Complete.as_u8()),
            body_done: Notify::new(),
            saw_content_length: AtomicBool::new(false),
        }))
    }

    pub(crate) fn epoch(&self) -> u32 {
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
    /// The socket saw a `Content-Length` line in the head being read.
    pub(crate) fn saw_content_length(&self) {
        self.0.saw_content_length.store(true, Ordering::Relaxed);
    }

    pub fn take_saw_content_length(&self) -> bool {
        self.0.saw_content_length.swap(false, Ordering::Relaxed)
    }

    /// The response is complete; the clock starts for the next head once it is flushed
    /// and the request body is done.
    pub fn response_done(&self) {
        self.set(RESPONSE_DONE);
    }

    /// The socket was flushed: if a response had completed, it is on the wire.
    pub(crate) fn flushed(&self) {
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

    pub(crate) fn body_pending(&self) -> bool {
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
