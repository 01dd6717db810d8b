//! The bodies sluice streams: the client's request body on its way upstream, and the
//! response body on its way back, which also returns the upstream connection to its pool,
//! re-arms the client's head timer, and writes the access-log line when it ends.
//!
//! Neither buffers: each frame is passed on as it arrives.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::clock::{BodyEnd, HeadClock};
use crate::metrics::RouteMetrics;
use crate::upstream::body::BodyError;
use crate::upstream::connect::{IdlePool, Sender};
use crate::upstream::Active;

/// What the access log says about one request. Created only when the `access` target is
/// enabled, so a proxy with the access log off pays nothing for it.
#[derive(Debug)]
pub struct Access {
    start: Instant,
    client: SocketAddr,
    method: Method,
    host: Option<HeaderValue>,
    uri: Uri,
    route: OnceLock<Arc<str>>,
    server: OnceLock<Arc<str>>,
    status: AtomicU16,
    bytes_in: AtomicU64,
}

impl Access {
    pub fn new(client: SocketAddr, method: Method, host: Option<HeaderValue>, uri: Uri) -> Access {
        Access {
            start: Instant::now(),
            client,
            method,
            host,
            uri,
            route: OnceLock::new(),
            server: OnceLock::new(),
            status: AtomicU16::new(0),
            bytes_in: AtomicU64::new(0),
        }
    }

    pub fn set_route(&self, route: &Arc<str>) {
        let _ = self.route.set(Arc::clone(route));
    }

    pub fn set_server(&self, server: &Arc<str>) {
        let _ = self.server.set(Arc::clone(server));
    }

    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::Relaxed);
    }

    /// Writes the line for the request.
    pub fn log(&self, bytes_out: u64) {
        let host = self
            .host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .unwrap_or("-");
        tracing::info!(
            target: "access",
            client = %self.client,
            method = %self.method,
            host,
            path = %self.uri,
            status = self.status.load(Ordering::Relaxed),
            route = self.route.get().map_or("-", |r| &**r),
            server = self.server.get().map_or("-", |s| &**s),
            duration_ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX),
            bytes_in = self.bytes_in.load(Ordering::Relaxed),
            bytes_out,
        );
    }
}

/// The client's request body, streamed upstream unchanged (hyper re-frames it). It tells
/// the connection's clock when it has been read to its end (the upstream's `read_timeout`
/// starts then, and the next head's clock may start) or how it broke.
pub struct RequestBody {
    inner: Incoming,
    access: Option<Arc<Access>>,
    /// Set while the body is still arriving; taken when it ends.
    clock: Option<HeadClock>,
}

impl RequestBody {
    /// `clock` is the connection's. Only a request that has a body gets one: a request
    /// without goes upstream as [`crate::upstream::body::OutgoingBody::empty`].
    pub fn new(inner: Incoming, access: Option<Arc<Access>>, clock: HeadClock) -> RequestBody {
        RequestBody {
            inner,
            access,
            clock: Some(clock),
        }
    }

    fn ended(&mut self, end: BodyEnd) {
        if let Some(clock) = self.clock.take() {
            clock.body_ended(end);
        }
    }
}

/// Why a client's body failed: the socket's body timer ([`crate::clock`])
/// fails reads with `TimedOut`; anything else is the client's broken framing or a
/// connection closed mid-body.
fn body_failure(err: &hyper::Error) -> BodyEnd {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return BodyEnd::TimedOut;
            }
        }
        source = cause.source();
    }
    BodyEnd::Broken
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(access)) = (frame.data_ref(), &self.access) {
                    access
                        .bytes_in
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                if self.inner.is_end_stream() {
                    self.ended(BodyEnd::Complete);
                }
            }
            Poll::Ready(None) => self.ended(BodyEnd::Complete),
            Poll::Ready(Some(Err(err))) => {
                let end = body_failure(err);
                self.ended(end);
            }
            Poll::Pending => {}
        }
        polled.map_err(BodyError::from)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        // Dropped before its end (the upstream stopped reading): hyper drains what is left
        // or closes the connection, so nothing more is awaited from this body.
        self.ended(BodyEnd::Complete);
    }
}

/// Where a response body comes from.
enum Source {
    /// An upstream response; its connection goes back to the pool when the body ends.
    Upstream {
        body: Incoming,
        release: Option<(Arc<IdlePool>, Sender)>,
        /// The request counts as open on its server until the body is done.
        _active: Active,
    },
    /// A short body sluice wrote itself (an error line), or none.
    Fixed(Option<Bytes>),
}

/// The body of every response sluice sends.
pub struct ResponseBody {
    source: Source,
    bytes_out: u64,
    access: Option<Arc<Access>>,
    /// Re-armed when the response is done, so the next request head is timed.
    clock: Option<HeadClock>,
    /// When the request head arrived, and where its duration is recorded when done.
    timing: Option<(Instant, Arc<RouteMetrics>)>,
}

impl ResponseBody {
    /// A relayed upstream body. `release` is the connection to pool once the body ends.
    pub fn upstream(
        body: Incoming,
        release: Option<(Arc<IdlePool>, Sender)>,
        active: Active,
    ) -> ResponseBody {
        ResponseBody {
            source: Source::Upstream {
                body,
                release,
                _active: active,
            },
            bytes_out: 0,
            access: None,
            clock: None,
            timing: None,
        }
    }

    pub fn fixed(text: &'static str) -> ResponseBody {
        ResponseBody {
            source: Source::Fixed(Some(Bytes::from_static(text.as_bytes()))),
            bytes_out: 0,
            access: None,
            clock: None,
            timing: None,
        }
    }

    pub fn empty() -> ResponseBody {
        ResponseBody {
            source: Source::Fixed(None),
            bytes_out: 0,
            access: None,
            clock: None,
            timing: None,
        }
    }

    /// Logs the request when the body is done (or dropped).
    pub fn with_access(mut self, access: Option<Arc<Access>>) -> ResponseBody {
        self.access = access;
        self
    }

    /// Records the request's duration in `metrics` when the body is done (or dropped).
    pub fn with_timing(mut self, started: Instant, metrics: Arc<RouteMetrics>) -> ResponseBody {
        self.timing = Some((started, metrics));
        self
    }

    /// Starts the head timer for the next request when the body is done (or dropped).
    pub fn with_clock(mut self, clock: Option<HeadClock>) -> ResponseBody {
        self.clock = clock;
        self
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        match &mut this.source {
            Source::Upstream { body, release, .. } => {
                let polled = Pin::new(body).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            this.bytes_out += data.len() as u64;
                        }
                    }
                    Poll::Ready(None) => {
                        if let Some((pool, sender)) = release.take() {
                            pool.put(sender);
                        }
                    }
                    _ => {}
                }
                polled
            }
            Source::Fixed(bytes) => match bytes.take() {
                Some(data) => {
                    this.bytes_out += data.len() as u64;
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                None => Poll::Ready(None),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Upstream { body, .. } => body.is_end_stream(),
            Source::Fixed(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Upstream { body, .. } => body.size_hint(),
            Source::Fixed(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Source::Fixed(None) => SizeHint::with_exact(0),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // hyper stops polling a body whose length is used up without waiting for the final
        // `None`; the exchange is complete all the same, so the connection is reusable.
        if let Source::Upstream { body, release, .. } = &mut self.source {
            if body.is_end_stream() {
                if let Some((pool, sender)) = release.take() {
                    pool.put(sender);
                }
            }
        }
        if let Some(clock) = &self.clock {
            clock.response_done();
        }
        if let Some((started, metrics)) = &self.timing {
            metrics.request_took(started.elapsed());
        }
        if let Some(access) = &self.access {
            access.log(self.bytes_out);
        }
    }
}
