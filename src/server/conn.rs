//! One client connection: hyper's HTTP/1.1 server over the timed socket, with upgrades on.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::head::{ClientIo, Timeouts};
use super::Listening;
use crate::limits::{ConnPermit, Limits};
use crate::proxy::{self, ConnContext, Runtime};
use crate::shutdown::Shutdown;
use crate::stream::Stream;

/// hyper's default read-buffer ceiling (~400 KiB); raised only if a listener allows
/// larger request heads, so `max_header_bytes` is always the limit that answers `431`.
const DEFAULT_MAX_BUF: usize = 400 * 1024;

/// Serves a connection until it closes, becomes a tunnel (which runs on in its own task),
/// or the drain ends it.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    listening: Arc<Listening>,
    runtime: Arc<arc_swap::ArcSwap<Runtime>>,
    shutdown: Shutdown,
    permit: ConnPermit,
    limits: Arc<Limits>,
) {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(client = %peer, cause = %err, "cannot set TCP_NODELAY");
    }
    let listener = &listening.config;
    let (stream, proto) = match &listening.tls {
        None => (Stream::Plain(stream), "http"),
        Some(acceptor) => {
            // header_timeout bounds the TLS handshake too.
            let handshake = acceptor.accept(stream);
            let done = tokio::select! {
                done = tokio::time::timeout(listener.header_timeout, handshake) => done,
                () = shutdown.draining() => return,
            };
            match done {
                Ok(Ok(tls)) => (Stream::TlsServer(Box::new(tls)), "https"),
                Ok(Err(err)) => {
                    tracing::debug!(client = %peer, cause = %err, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(client = %peer, "TLS handshake timed out");
                    return;
                }
            }
        }
    };
    let (io, clock) = ClientIo::new(
        stream,
        Timeouts {
            header: listener.header_timeout,
            body: listener.body_timeout,
            send: listener.send_timeout,
        },
    );
    let context = Arc::new(ConnContext {
        peer,
        peer_ip: crate::proxy::headers::ip_value(peer.ip()),
        proto,
        clock,
        runtime,
        shutdown: shutdown.clone(),
        permit: std::sync::Mutex::new(Some(permit)),
        limits,
        client_socket: ClientIo::upgraded_socket,
    });
    let service = service_fn(move |req| {
        let context = Arc::clone(&context);
        async move { Ok::<_, Infallible>(proxy::handle(req, context).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(true)
        // Clients that shut down their write side after the request still get the answer.
        .half_close(true)
        // sluice times heads itself (ClientIo), to answer 408.
        .header_read_timeout(None)
        .max_header_size(listener.max_header_bytes)
        .max_buf_size(DEFAULT_MAX_BUF.max(listener.max_header_bytes.saturating_add(1024)));
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shutdown.draining() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                result = conn.as_mut() => result,
                () = shutdown.cut() => Ok(()),
            }
        }
    };
    if let Err(err) = result {
        tracing::debug!(client = %peer, cause = %err, "client connection ended with an error");
    }
}
