//! The body of a request on its way upstream, with its type erased.
//!
//! An upstream connection carries whatever body the layer above hands it (today the
//! client's request body, counted and timed by `proxy::body`), so `upstream` names only
//! this type and never the proxy's. Erasing costs one allocation and one indirect call per
//! frame, paid only by requests that have a body: a request without one (most GETs, every
//! WebSocket handshake) carries nothing and allocates nothing.

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

/// Why a body's stream broke, whatever produced it.
pub type BodyError = Box<dyn StdError + Send + Sync>;

type Erased = Pin<Box<dyn Body<Data = Bytes, Error = BodyError> + Send>>;

/// A request body sent upstream: none, or any streaming body.
pub struct OutgoingBody(Option<Erased>);

impl OutgoingBody {
    /// No body: the request ends with its head.
    pub fn empty() -> OutgoingBody {
        OutgoingBody(None)
    }

    /// A body streamed as its frames come.
    pub fn streaming<B>(body: B) -> OutgoingBody
    where
        B: Body<Data = Bytes, Error = BodyError> + Send + 'static,
    {
        OutgoingBody(Some(Box::pin(body)))
    }
}

impl fmt::Debug for OutgoingBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            None => "OutgoingBody::Empty",
            Some(_) => "OutgoingBody::Streaming",
        })
    }
}

impl Body for OutgoingBody {
    type Data = Bytes;
    type Error = BodyError;

    #[inline]
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.0.as_mut() {
            None => Poll::Ready(None),
            Some(body) => body.as_mut().poll_frame(cx),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(|body| body.is_end_stream())
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            None => SizeHint::with_exact(0),
            Some(body) => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn empty_ends_at_once_with_an_exact_zero_length() {
        let body = OutgoingBody::empty();
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
        let collected = body.collect().await.expect("an empty body cannot fail");
        assert!(collected.to_bytes().is_empty());
    }

    #[tokio::test]
    async fn streaming_passes_frames_and_hints_through() {
        let inner = Full::new(Bytes::from_static(b"hello")).map_err(|never| match never {});
        let body = OutgoingBody::streaming(inner);
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(5));
        let collected = body.collect().await.expect("a full body cannot fail");
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"hello"));
    }
}
