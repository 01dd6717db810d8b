//! Every way a request can fail, and the one mapping from failure to response.
//!
//! The variants name the SPEC's "Errors" table; [`ProxyError::status`] and
//! [`status_body`] are the only places a status or an error body is chosen, and the unit
//! test pins each row.

use http::StatusCode;

use crate::metrics::Rejection;
use crate::upstream::connect::ConnectError;

/// Why sluice answers a request itself instead of relaying the upstream's answer.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route")]
    NoRoute,
    /// A request sluice does not proxy, such as `CONNECT` (a reverse proxy is no forward
    /// proxy; nginx answers it `400` too).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("invalid WebSocket handshake: {0}")]
    InvalidHandshake(&'static str),
    #[error("origin not allowed")]
    OriginNotAllowed,
    #[error("no server available")]
    NoServerAvailable,
    /// Every candidate was tried and none could be reached; the last failure decides 502/504.
    #[error("every server failed, last: {0}")]
    AllServersFailed(#[source] ConnectError),
    #[error("no response head within {0:?}")]
    ResponseTimeout(std::time::Duration),
    /// The request was sent, or partly sent, and the exchange broke: never retried.
    #[error("upstream exchange failed: {0}")]
    Upstream(#[source] hyper::Error),
    #[error("upstream answered 101 with a bad {0}")]
    BadSwitch(&'static str),
    #[error("upstream answered 101 to a request that was not a handshake")]
    UnexpectedSwitch,
    #[error("draining")]
    Draining,
    /// The client sent no byte of its request body for `body_timeout`.
    #[error("request body timeout")]
    BodyTimeout,
    /// `max_tunnels_per_ip` reached for the client's address.
    #[error("too many tunnels from this address")]
    TooManyTunnels,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::InvalidHandshake(_) | ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::OriginNotAllowed => StatusCode::FORBIDDEN,
            ProxyError::NoServerAvailable
            | ProxyError::Upstream(_)
            | ProxyError::BadSwitch(_)
            | ProxyError::UnexpectedSwitch => StatusCode::BAD_GATEWAY,
            ProxyError::AllServersFailed(ConnectError::Timeout(_))
            | ProxyError::ResponseTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::AllServersFailed(ConnectError::NoDescriptors(_))
            | ProxyError::Draining
            | ProxyError::TooManyTunnels => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::AllServersFailed(_) => StatusCode::BAD_GATEWAY,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// Whether the connection closes after this answer: after a malformed request or a
    /// timed-out body, what follows on the connection cannot be trusted to be a request.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            ProxyError::BadRequest(_) | ProxyError::InvalidHandshake(_) | ProxyError::BodyTimeout
        )
    }

    /// The `reason` label of `sluice_handshake_rejections_total` when this failure ends a
    /// WebSocket handshake.
    pub fn rejection(&self) -> Option<Rejection> {
        match self {
            ProxyError::InvalidHandshake(_) => Some(Rejection::InvalidHandshake),
            ProxyError::OriginNotAllowed => Some(Rejection::Origin),
            ProxyError::BadSwitch(_) => Some(Rejection::BadAccept),
            ProxyError::TooManyTunnels => Some(Rejection::TunnelLimit),
            ProxyError::NoServerAvailable
            | ProxyError::AllServersFailed(_)
            | ProxyError::ResponseTimeout(_)
            | ProxyError::Upstream(_)
            | ProxyError::UnexpectedSwitch => Some(Rejection::UpstreamUnavailable),
            ProxyError::Draining => Some(Rejection::Draining),
            ProxyError::NoRoute | ProxyError::BadRequest(_) | ProxyError::BodyTimeout => None,
        }
    }
}

/// The one-line body sluice sends with a status of its own.
pub fn status_body(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad request\n",
        403 => "origin not allowed\n",
        404 => "no route\n",
        408 => "request timeout\n",
        414 => "uri too long\n",
        431 => "request header fields too large\n",
        502 => "bad gateway\n",
        503 => "service unavailable\n",
        504 => "gateway timeout\n",
        505 => "http version not supported\n",
        _ => "error\n",
    }
}

/// A complete `Connection: close` response, for answers written straight to a socket
/// before or instead of HTTP parsing (connection limits, head timeout).
pub fn raw_close_response(status: StatusCode) -> Vec<u8> {
    let body = status_body(status);
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
        body
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_spec_error_table() {
        let io = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let rows: Vec<(ProxyError, u16)> = vec![
            (ProxyError::OriginNotAllowed, 403),
            (ProxyError::InvalidHandshake("x"), 400),
            (ProxyError::NoRoute, 404),
            (ProxyError::BadRequest("CONNECT"), 400),
            (ProxyError::NoServerAvailable, 502),
            (ProxyError::AllServersFailed(ConnectError::Io(io())), 502),
            (
                ProxyError::AllServersFailed(ConnectError::Timeout(Duration::from_secs(1))),
                504,
            ),
            (ProxyError::ResponseTimeout(Duration::from_secs(1)), 504),
            (ProxyError::Draining, 503),
            (ProxyError::BadSwitch("Sec-WebSocket-Accept"), 502),
            (ProxyError::UnexpectedSwitch, 502),
            (ProxyError::BodyTimeout, 408),
            (ProxyError::TooManyTunnels, 503),
            (
                ProxyError::AllServersFailed(ConnectError::NoDescriptors(io())),
                503,
            ),
        ];
        for (err, status) in rows {
            assert_eq!(err.status().as_u16(), status, "{err}");
        }
    }

    #[test]
    fn raw_responses_are_complete() {
        let raw =
            String::from_utf8(raw_close_response(StatusCode::REQUEST_TIMEOUT)).unwrap_or_default();
        assert_eq!(
            raw,
            "HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 16\r\nconnection: close\r\n\r\nrequest timeout\n"
        );
    }
}
